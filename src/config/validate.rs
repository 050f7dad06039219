//! Checks that need more than one key, or more than serde can express. Each returns every
//! problem it finds, with the key it concerns.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue, Method, Uri};

use super::{Config, ConfigError, HeaderFilterConfig, RouteConfig};
use crate::mapping::PathTemplate;
use crate::route::Pattern;

/// Top-level sections other than the routes.
pub(super) fn top(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut push = |key: &str, message: String| errors.push(ConfigError::new(key, message));

    let nats = &config.nats;
    for server in nats.url.split(',') {
        if let Err(e) = server.trim().parse::<async_nats::ServerAddr>() {
            push(
                "nats.url",
                format!("{:?} is not a NATS server URL: {e}", server.trim()),
            );
        }
    }
    if let Err(message) = check_token(&nats.queue_group) {
        push("nats.queue_group", message);
    }
    if nats.password.is_some() && nats.user.is_none() {
        push("nats.password", "a password needs nats.user".into());
    }
    if nats.token.is_some() && nats.user.is_some() {
        push(
            "nats.token",
            "use either nats.token or nats.user/password, not both".into(),
        );
    }
    if let Some(path) = &nats.creds_file {
        if !path.is_file() {
            push(
                "nats.creds_file",
                format!("{} is not a readable file", path.display()),
            );
        }
    }
    if nats.connect_timeout.is_zero() {
        push("nats.connect_timeout", "must be greater than zero".into());
    }

    let upstream = &config.upstream;
    if let Err(message) = check_base_url(&upstream.base_url) {
        push("upstream.base_url", message);
    }
    if upstream.request_timeout.is_zero() {
        push(
            "upstream.request_timeout",
            "must be greater than zero".into(),
        );
    }
    if upstream.connect_timeout.is_zero() {
        push(
            "upstream.connect_timeout",
            "must be greater than zero".into(),
        );
    }
    if upstream.max_response_size.bytes() == 0 {
        push(
            "upstream.max_response_size",
            "must be greater than zero".into(),
        );
    }
    if let Err(e) = config.log.level.parse::<tracing_subscriber::EnvFilter>() {
        push("log.level", format!("not a valid log filter: {e}"));
    }
    errors
}

/// One route on its own.
pub(super) fn route(prefix: &str, route: &RouteConfig) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut push = |key: &str, message: String| {
        errors.push(ConfigError::new(format!("{prefix}.{key}"), message))
    };

    if route.name.is_empty()
        || !route
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        push(
            "name",
            format!(
                "{:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                route.name
            ),
        );
    }
    // With a bad subject, the path is still checked, minus whether its names are captured.
    let capture_names = match Pattern::parse(&route.subject) {
        Ok(pattern) => pattern.capture_names().to_vec(),
        Err(e) => {
            push("subject", e.to_string());
            route
                .path
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
                .collect()
        }
    };
    if let Err(e) = PathTemplate::parse(&route.path, &capture_names) {
        push("path", e.to_string());
    }
    if Method::from_bytes(route.method.as_bytes()).is_err() {
        push(
            "method",
            format!("{:?} is not an HTTP method", route.method),
        );
    }
    if route.timeout.is_some_and(|t| t.is_zero()) {
        push("timeout", "must be greater than zero".into());
    }
    if route.max_in_flight == 0 {
        push("max_in_flight", "must be at least 1".into());
    }
    if route.max_payload.bytes() == 0 {
        push("max_payload", "must be greater than zero".into());
    }
    if let Some(content_type) = &route.content_type {
        if HeaderValue::from_str(content_type).is_err() {
            push(
                "content_type",
                format!("{content_type:?} is not a valid header value"),
            );
        }
    }
    if let Some(group) = &route.queue_group {
        if let Err(message) = check_token(group) {
            push("queue_group", message);
        }
    }
    for (key, filter) in [
        ("request_headers", &route.request_headers),
        ("response_headers", &route.response_headers),
    ] {
        for (list, name) in header_names(filter) {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                push(
                    &format!("{key}.{list}"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
    }
    errors
}

/// Checks across routes; `routes` holds those that deserialized, with their index, out of
/// `count` in the file.
pub(super) fn across(routes: &[(usize, RouteConfig)], count: usize) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if count == 0 {
        errors.push(ConfigError::new(
            "routes",
            "at least one [[routes]] entry is required",
        ));
    }
    let mut names = HashSet::new();
    for (index, route) in routes {
        if !names.insert(route.name.as_str()) {
            errors.push(ConfigError::new(
                format!("routes[{index}].name"),
                format!(
                    "{:?} is used by an earlier route; names must be unique",
                    route.name
                ),
            ));
        }
    }
    errors
}

fn header_names(filter: &HeaderFilterConfig) -> impl Iterator<Item = (&'static str, &String)> {
    let allow = filter.allow.iter().map(|n| ("allow", n));
    let deny = filter.deny.iter().map(|n| ("deny", n));
    allow.chain(deny)
}

fn check_token(value: &str) -> Result<(), String> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '.' || c == '*' || c == '>')
    {
        return Err(format!(
            "{value:?} must be one NATS token: non-empty, no spaces, '.', '*' or '>'"
        ));
    }
    Ok(())
}

fn check_base_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https is not supported yet: ricochet talks plain HTTP to the co-located service"
                    .into(),
            )
        }
        _ => return Err(format!("{url:?} must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{url:?} must not have a query; put it in the route's path"
        ));
    }
    Ok(())
}
