//! Checks of a route's `[routes.validate]` table and the `[schema_registry]` it may need, and
//! the compilation of its JSON Schema files: once, when the configuration loads, so that
//! `ricochet check` reports a missing or broken schema with its key path and `run` never
//! compiles one per message.

use http::HeaderValue;

use super::{redact_url, BodyFormat, Config, ConfigError, RouteConfig, RouteFile, ValidateConfig};
use crate::validate::json::JsonSchema;

/// The `validate` table of one route, as written.
pub(super) fn route(route: &RouteFile, push: &mut impl FnMut(&str, String)) {
    let Some(validate) = &route.validate else {
        return;
    };
    request(validate, push);
    let Some(response) = &validate.response else {
        return;
    };
    match response.format {
        Some(BodyFormat::JsonSchema) if response.schema.is_none() => push(
            "validate.response.schema",
            "required with format = \"json_schema\"".into(),
        ),
        Some(BodyFormat::Avro) if response.subject.is_none() => push(
            "validate.response.subject",
            "required with format = \"avro\": the subject whose versions a response may use"
                .into(),
        ),
        Some(BodyFormat::Avro) if response.encode.is_some() => push(
            "validate.response.encode",
            "format = \"avro\" expects the service to answer Avro; encode = \"avro\" expects JSON: choose one".into(),
        ),
        _ => {}
    }
    if response.schema.is_some() && response.format != Some(BodyFormat::JsonSchema) {
        push(
            "validate.response.schema",
            "only used with format = \"json_schema\"".into(),
        );
    }
    if response.encode.is_some() && response.subject.is_none() {
        push(
            "validate.response.subject",
            "required with encode = \"avro\": the subject whose schema encodes the reply".into(),
        );
    }
    if response.subject.is_some()
        && response.encode.is_none()
        && response.format != Some(BodyFormat::Avro)
    {
        push(
            "validate.response.subject",
            "only used with format = \"avro\" or encode = \"avro\"".into(),
        );
    }
    if response.version.is_some() && response.encode.is_none() {
        push(
            "validate.response.version",
            "only used with encode = \"avro\"".into(),
        );
    }
    if response.format.is_none() && response.encode.is_none() {
        push(
            "validate.response",
            "names neither a format to check nor an encoding".into(),
        );
    }
}

fn request(validate: &ValidateConfig, push: &mut impl FnMut(&str, String)) {
    match validate.format {
        Some(BodyFormat::JsonSchema) if validate.schema.is_none() => push(
            "validate.schema",
            "required with format = \"json_schema\"".into(),
        ),
        _ => {}
    }
    if validate.schema.is_some() && validate.format != Some(BodyFormat::JsonSchema) {
        push(
            "validate.schema",
            "only used with format = \"json_schema\"".into(),
        );
    }
    for key in ["subject", "decode"] {
        let set = match key {
            "subject" => validate.subject.is_some(),
            _ => validate.decode.is_some(),
        };
        if set && validate.format != Some(BodyFormat::Avro) {
            push(
                &format!("validate.{key}"),
                "only used with format = \"avro\"".into(),
            );
        }
    }
    for content_type in &validate.content_types {
        if content_type.trim().is_empty() || HeaderValue::from_str(content_type).is_err() {
            push(
                "validate.content_types",
                format!("{content_type:?} is not a media type"),
            );
        }
    }
    if validate.max_headers == Some(0) {
        push("validate.max_headers", "must be at least 1".into());
    }
    if validate.max_header_bytes.is_some_and(|b| b.bytes() == 0) {
        push(
            "validate.max_header_bytes",
            "must be greater than zero".into(),
        );
    }
}

/// Reads and compiles the route's JSON Schemas into `route.schemas`.
pub(super) fn compile(index: usize, route: &mut RouteConfig) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let Some(validate) = &route.validate else {
        return errors;
    };
    let mut load = |key: &str, path: &std::path::Path| match JsonSchema::load(path) {
        Ok(schema) => Some(schema),
        Err(e) => {
            errors.push(ConfigError::new(
                format!("routes[{index}].{key}"),
                e.to_string(),
            ));
            None
        }
    };
    let request = (validate.schema.as_deref()).and_then(|p| load("validate.schema", p));
    let response = (validate.response.as_ref())
        .and_then(|r| r.schema.as_deref())
        .and_then(|p| load("validate.response.schema", p));
    route.schemas.request = request;
    route.schemas.response = response;
    errors
}

/// Avro needs the registry; the registry's URL must be one ricochet can use.
pub(super) fn registry(routes: &[(usize, RouteConfig)], config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if let Some(registry) = &config.schema_registry {
        if let Err(message) = check_url(&registry.url) {
            errors.push(ConfigError::new("schema_registry.url", message));
        }
        if registry.timeout.is_zero() {
            errors.push(ConfigError::new(
                "schema_registry.timeout",
                "must be greater than zero",
            ));
        }
        return errors;
    }
    for (index, route) in routes {
        let Some(validate) = &route.validate else {
            continue;
        };
        let response = validate.response.as_ref();
        let key = if validate.format == Some(BodyFormat::Avro) {
            "validate.format"
        } else if response.is_some_and(|r| r.format == Some(BodyFormat::Avro)) {
            "validate.response.format"
        } else if response.is_some_and(|r| r.encode.is_some()) {
            "validate.response.encode"
        } else {
            continue;
        };
        errors.push(ConfigError::new(
            format!("routes[{index}].{key}"),
            "Avro needs a [schema_registry] with its url",
        ));
    }
    errors
}

fn check_url(url: &str) -> Result<(), String> {
    let shown = redact_url(url);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https is not supported yet: use http://".into()),
        _ => return Err(format!("{shown:?} must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} has no host"));
    }
    if uri.authority().is_none_or(|a| a.as_str().contains('@')) {
        return Err("credentials in the URL are not supported".into());
    }
    if uri.query().is_some() {
        return Err(format!("{shown:?} must not have a query"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    /// The problems of a route with this `[routes.validate]` body (and `top`-level text).
    fn problems(top: &str, validate: &str) -> Vec<String> {
        let text = format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:1\"\n{top}\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/p\"\n[routes.validate]\n{validate}\n"
        );
        match load_str(&text, Vec::new()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const REGISTRY: &str = "[schema_registry]\nurl = \"http://127.0.0.1:8081\"";

    #[test]
    fn each_misplaced_or_missing_key_is_reported_with_its_path() {
        let cases = [
            (
                "",
                "format = \"json_schema\"",
                "routes[0].validate.schema: required",
            ),
            (
                REGISTRY,
                "format = \"avro\"\nschema = \"x.json\"",
                "routes[0].validate.schema: only used",
            ),
            (
                "",
                "decode = \"json\"",
                "routes[0].validate.decode: only used",
            ),
            (
                "",
                "content_types = [\"\"]",
                "routes[0].validate.content_types:",
            ),
            ("", "max_headers = 0", "routes[0].validate.max_headers:"),
            (
                "",
                "max_header_bytes = 0",
                "routes[0].validate.max_header_bytes:",
            ),
            ("", "format = \"xml\"", "routes[0].validate.format:"),
            (
                "",
                "[routes.validate.response]",
                "routes[0].validate.response: names neither",
            ),
            (
                REGISTRY,
                "[routes.validate.response]\nencode = \"avro\"",
                "routes[0].validate.response.subject: required",
            ),
            (
                REGISTRY,
                "[routes.validate.response]\nformat = \"avro\"\nsubject = \"s\"\nencode = \"avro\"",
                "routes[0].validate.response.encode:",
            ),
            (
                REGISTRY,
                "[routes.validate.response]\nformat = \"avro\"\nsubject = \"s\"\nversion = 2",
                "routes[0].validate.response.version:",
            ),
            (
                "",
                "[routes.validate.response]\nencode = \"avro\"\nsubject = \"s\"",
                "routes[0].validate.response.encode: Avro needs a [schema_registry]",
            ),
            (
                "[schema_registry]\nurl = \"https://u:secret@r:8081\"",
                "format = \"avro\"",
                "schema_registry.url: https is not supported",
            ),
            (
                "[schema_registry]\nurl = \"http://u:secret@r:8081\"",
                "format = \"avro\"",
                "schema_registry.url: credentials",
            ),
        ];
        for (top, validate, expected) in cases {
            let found = problems(top, validate);
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{validate:?}: expected {expected:?} in {found:?}"
            );
            assert!(!found.iter().any(|p| p.contains("secret")), "{found:?}");
        }
    }

    #[test]
    fn a_valid_table_loads() {
        assert_eq!(problems(REGISTRY, "format = \"avro\"\nsubject = \"orders-value\"\ndecode = \"json\"\ncontent_types = [\"application/octet-stream\"]\n[routes.validate.response]\nencode = \"avro\"\nsubject = \"replies-value\"\nversion = 3"), Vec::<String>::new());
    }
}
