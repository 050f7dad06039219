//! Checks of the shared sections (`[nats]`, `[upstream]`, `[tracing]`, `[reload]`,
//! `[runtime]`, `[log]`) that need more than one key, or more than serde can express.
//! Each returns every problem it finds, with the key it concerns.

use std::os::unix::fs::FileTypeExt;

use super::{Config, ConfigError};

/// Top-level sections other than the routes.
pub fn top(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut push = |key: &str, message: String| errors.push(ConfigError::new(key, message));

    let nats = &config.nats;
    match super::split_credentials(&nats.url) {
        Err(message) => push("nats.url", message),
        Ok((servers, auth)) => {
            for server in servers {
                if let Err(e) = server.parse::<async_nats::ServerAddr>() {
                    push(
                        "nats.url",
                        format!("{server:?} is not a NATS server URL: {e}"),
                    );
                }
            }
            if auth.is_some() {
                if let Some(other) = other_nats_credentials(nats) {
                    push(
                        "nats.url",
                        format!("carries credentials, and so does nats.{other}: use one of them (the URL's user:password@ or token@, or the nats.* settings)"),
                    );
                }
            }
        }
    }
    if let Err(message) = nats_token(&nats.queue_group) {
        push("nats.queue_group", message);
    }
    let has_password = nats.password.is_some() || nats.password_file.is_some();
    if has_password && nats.user.is_none() {
        push("nats.password", "a password needs nats.user".into());
    }
    if nats.user.is_some() && !has_password {
        push(
            "nats.user",
            "a user needs nats.password (or nats.password_file)".into(),
        );
    }
    if nats.token.is_some() && nats.user.is_some() {
        push(
            "nats.token",
            "use either nats.token or nats.user/password, not both".into(),
        );
    }
    if let Some(path) = &nats.creds_file {
        if let Err(message) = check_creds_file(path) {
            push("nats.creds_file", message);
        }
    }
    super::security::check_nats(nats, &mut push);
    if config.reload.watch_interval < std::time::Duration::from_millis(100) {
        push(
            "reload.watch_interval",
            format!(
                "{:?} is too short: at least 100ms",
                config.reload.watch_interval
            ),
        );
    }
    let tracing = &config.tracing;
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        push(
            "tracing.sample_ratio",
            format!("{} is not between 0.0 and 1.0", tracing.sample_ratio),
        );
    }
    match tracing.endpoint.parse::<http::Uri>() {
        Ok(_) if super::has_userinfo(&tracing.endpoint) => push(
            "tracing.endpoint",
            format!(
                "{:?}: credentials in the URL are not sent (the OTLP exporter sends no HTTP Basic auth); remove them, and keep the collector beside ricochet",
                super::redact_url(&tracing.endpoint)
            ),
        ),
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
        Ok(_) => push(
            "tracing.endpoint",
            format!(
                "{:?} is not an http:// URL (OTLP goes to a collector beside ricochet, in plain HTTP)",
                super::redact_url(&tracing.endpoint)
            ),
        ),
        Err(e) => push(
            "tracing.endpoint",
            format!("{:?} is not a URL: {e}", super::redact_url(&tracing.endpoint)),
        ),
    }
    if tracing.service_name.trim().is_empty() {
        push("tracing.service_name", "must not be empty".into());
    }
    if nats.connect_timeout.is_zero() {
        push("nats.connect_timeout", "must be greater than zero".into());
    }
    if let Some(service) = &nats.service {
        let name_ok = !service.name.is_empty()
            && (service.name.chars()).all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            push(
                "nats.service.name",
                format!(
                    "{:?} must be non-empty and use only letters, digits, '-' and '_'",
                    service.name
                ),
            );
        }
        if !semantic_version(&service.version) {
            push(
                "nats.service.version",
                format!("{:?} is not a semantic version like 1.2.3", service.version),
            );
        }
    }

    let upstream = &config.upstream;
    if let Err(message) = check_base_url(&upstream.base_url) {
        push("upstream.base_url", message);
    }
    super::security::check_upstream(upstream, &mut push);
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
    if config.runtime.worker_threads == Some(0) {
        push("runtime.worker_threads", "must be at least 1".into());
    }
    if let Err(e) = config.log.level.parse::<tracing_subscriber::EnvFilter>() {
        push("log.level", format!("not a valid log filter: {e}"));
    }
    errors
}

/// `MAJOR.MINOR.PATCH` with an optional `-pre-release` and `+build`, as the NATS micro
/// services API requires.
fn semantic_version(version: &str) -> bool {
    let (core, _build) = version.split_once('+').unwrap_or((version, ""));
    let (core, pre) = core
        .split_once('-')
        .map_or((core, None), |(c, p)| (c, Some(p)));
    let numbers: Vec<&str> = core.split('.').collect();
    let number = |n: &&str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_digit())
            && (n.len() == 1 || !n.starts_with('0'))
    };
    numbers.len() == 3
        && numbers.iter().all(number)
        && pre.is_none_or(|p| {
            !p.is_empty()
                && (p.split('.')).all(|i| {
                    !i.is_empty() && i.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        })
}

/// One NATS token (a queue group, a stream or consumer name).
pub fn nats_token(value: &str) -> Result<(), String> {
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

/// The settings besides `nats.url` that say how to authenticate, the first one set.
fn other_nats_credentials(nats: &super::NatsConfig) -> Option<&'static str> {
    [
        ("user", nats.user.is_some()),
        ("password", nats.password.is_some()),
        ("password_file", nats.password_file.is_some()),
        ("token", nats.token.is_some()),
        ("token_file", nats.token_file.is_some()),
        ("nkey_seed", nats.nkey_seed.is_some()),
        ("nkey_seed_file", nats.nkey_seed_file.is_some()),
        ("creds_file", nats.creds_file.is_some()),
    ]
    .into_iter()
    .find_map(|(key, set)| set.then_some(key))
}

/// Reads and parses a creds file as the NATS client will at start-up (user JWT and NKey
/// seed), so that `check` refuses what `run` would.
fn check_creds_file(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // async-nats' texts name what is missing, never the file's content.
    async_nats::ConnectOptions::with_credentials(&text)
        .map(drop)
        .map_err(|e| {
            format!(
                "{} is not a NATS credentials file (a user JWT and an NKey seed, as `nsc` writes them): {e}",
                path.display()
            )
        })
}

/// The URL's form, and for a Unix socket what is at its path now. A socket that does not
/// exist yet is accepted: the service creates it when it starts, which may be after
/// ricochet (a Kubernetes sidecar container starts first); until then each call is an
/// `upstream_unavailable` error (502) like a refused TCP connection. Something else at
/// that path (a file, a directory) can never be connected to, so it is refused.
fn check_base_url(url: &str) -> Result<(), String> {
    match super::BaseUrl::parse(url).map_err(|e| e.to_string())? {
        super::BaseUrl::Tcp(_) => Ok(()),
        super::BaseUrl::Unix { socket, .. } => match std::fs::metadata(&socket) {
            Ok(found) if !found.file_type().is_socket() => Err(format!(
                "{url:?}: {} exists and is not a socket",
                socket.display()
            )),
            _ => Ok(()),
        },
    }
}
