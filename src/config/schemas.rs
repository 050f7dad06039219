//! A route's `[routes.validate]` table and the `[schema_registry]` it may need: their types
//! and checks. The JSON Schema files they name are compiled by `settings` (with
//! `validate::json`), once, when the configuration loads.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

use super::{defaults, redact_url, ByteSize, Config, ConfigError, RouteConfig};

/// The Confluent-compatible schema registry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// `http://host:port[/base/path]`.
    pub url: String,
    /// Timeout of one registry request (connect, send, whole answer).
    #[serde(default = "defaults::registry_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long the latest version of a subject (for encoding replies) is used before it is
    /// asked for again. Schemas by id are cached for good: an id never changes its schema.
    #[serde(
        default = "defaults::registry_latest_refresh",
        with = "humantime_serde"
    )]
    pub latest_refresh: Duration,
}

/// `[routes.validate]`: what a request must be. Checked before the service is called; a
/// request that fails gets a 400 error reply listing the violations and, on a durable
/// source, is dead-lettered at once with reason `validation`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// The body's format; absent: only the header and content-type rules apply.
    #[serde(default)]
    pub format: Option<BodyFormat>,
    /// `format = "json_schema"`: the JSON Schema file (draft 2020-12 or 7).
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// `format = "avro"`: only schema ids that are versions of this registry subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// `format = "avro"`: `"json"` hands the service the record as JSON.
    #[serde(default)]
    pub decode: Option<Decode>,
    /// Media types a request may have (`Content-Type`, or the route's `content_type`);
    /// empty: any.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Most headers a request may carry.
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// Most bytes all header names and values of a request may take together.
    #[serde(default)]
    pub max_header_bytes: Option<ByteSize>,
    /// What the service's 2xx answers must be, and whether they are encoded as Avro.
    #[serde(default)]
    pub response: Option<ResponseValidateConfig>,
}

/// `[routes.validate.response]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseValidateConfig {
    /// `json_schema` (with `schema`) or `avro` (the body in the wire format, with a version
    /// of `subject`).
    #[serde(default)]
    pub format: Option<BodyFormat>,
    #[serde(default)]
    pub schema: Option<PathBuf>,
    #[serde(default)]
    pub subject: Option<String>,
    /// `"avro"`: the service answers JSON; the reply is that JSON encoded with `subject`'s
    /// schema (`version`, else the latest) in the wire format.
    #[serde(default)]
    pub encode: Option<Encode>,
    #[serde(default)]
    pub version: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    JsonSchema,
    Avro,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decode {
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encode {
    Avro,
}

/// The `validate` table of one route, as written.
pub(super) fn route(route: &RouteConfig, push: &mut impl FnMut(&str, String)) {
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

/// Avro needs the registry; the registry's URL must be one ricochet can use.
pub fn registry(config: &Config, routes: &[(usize, &RouteConfig)]) -> Vec<ConfigError> {
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
