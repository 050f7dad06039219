//! The NATS connection every generation shares: connecting (credentials from the URL or
//! the configuration, secrets read from their files, TLS), its events logged and exported
//! as `ricochet_nats_connected`, and its task watched for the process's liveness. It
//! retries at start and reconnects by itself (async-nats re-subscribes).

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{Client, ConnectOptions, Event};
use futures::StreamExt;
use tracing::{error, info, warn};

use super::{Link, NatsReplier};
use crate::config::{read_secret_file, NatsConfig, UrlAuth};
use crate::telemetry::liveness;
use crate::telemetry::metrics::{NATS_CONNECTED, NATS_EVENTS};

/// The NATS connection every generation shares, when a route needs one.
#[derive(Clone)]
pub struct Nats {
    pub client: Client,
    pub replier: Arc<NatsReplier>,
}

impl Nats {
    /// Also watches the client's connection task for the process's liveness.
    pub fn new((client, link): (Client, Link)) -> Self {
        tokio::spawn(watch_client(client.clone()));
        let replier = Arc::new(NatsReplier::new(client.clone(), link));
        Self { client, replier }
    }
}

/// Watches the NATS client's connection task: a subscription to an inbox nobody publishes
/// to ends only when that task has ended. ricochet never closes its client, so that end is
/// always a failure.
async fn watch_client(client: Client) {
    let mut watch = match client.subscribe(client.new_inbox()).await {
        Ok(subscriber) => subscriber,
        Err(e) => {
            let reason = format!("the NATS client no longer takes commands ({e})");
            liveness::global().failed(liveness::Cause::NatsClientEnded, reason);
            return;
        }
    };
    while watch.next().await.is_some() {}
    let reason = "the NATS client's connection task ended (a reconnect refused for good, \
                  e.g. an authorization violation, or a panic): no NATS route can be served again";
    liveness::global().failed(liveness::Cause::NatsClientEnded, reason.to_string());
}

/// Why the NATS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    SecretFile(#[from] crate::config::SecretFileError),
    /// async-nats' own text already names the file; `check` has parsed it, so this is a
    /// file that changed or vanished since.
    #[error("nats.creds_file: {0}")]
    Credentials(String),
    #[error("nats.url: {0}")]
    Url(String),
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// Connects. When the first attempt fails, its cause is logged (it names an unknown CA, a
/// missing client certificate or refused credentials, which the reconnect events do not)
/// and the connection keeps retrying in the background.
pub async fn connect(config: &NatsConfig) -> Result<(Client, Link), NatsError> {
    metrics::gauge!(NATS_CONNECTED).set(0.0);
    let link = Link::default();
    if let Some(path) = &config.creds_file {
        warn_if_expired(path, SystemTime::now());
    }
    let (first, servers) = with_url_credentials(options(config, &link).await?, &config.url)?;
    match first.connect(servers.clone()).await {
        Ok(client) => return Ok((client, link)),
        Err(e) => error!(
            server = %servers.join(","),
            cause = %describe(&e),
            "cannot connect to NATS; retrying in the background"
        ),
    }
    let (options, servers) = with_url_credentials(options(config, &link).await?, &config.url)?;
    Ok((
        options.retry_on_initial_connect().connect(servers).await?,
        link,
    ))
}

/// Takes the credentials out of `url` (a list separated by commas) and gives them to
/// `options`: the servers handed to async-nats never carry them, because it would not use
/// them and it logs each server it tries, password included. `check` has refused URL
/// credentials beside other credentials settings, and URLs with different credentials.
pub fn with_url_credentials(
    options: ConnectOptions,
    url: &str,
) -> Result<(ConnectOptions, Vec<String>), NatsError> {
    let (servers, auth) = crate::config::split_credentials(url).map_err(NatsError::Url)?;
    let options = match auth {
        None => options,
        Some(UrlAuth::UserPassword { user, password }) => {
            options.user_and_password(user, password.expose().to_string())
        }
        Some(UrlAuth::Token(token)) => options.token(token.expose().to_string()),
    };
    Ok((options, servers))
}

/// The server answers an expired user JWT with a bare "authorization violation": say why.
fn warn_if_expired(path: &Path, now: SystemTime) {
    let Some(expires) = creds_expiry(path) else {
        return;
    };
    if expires <= now {
        error!(
            creds_file = %path.display(),
            expired_at = %humantime::format_rfc3339_seconds(expires),
            "the user JWT in nats.creds_file has expired: the server will refuse it"
        );
    }
}

/// When the user JWT of a creds file expires, if it says.
fn creds_expiry(path: &Path) -> Option<SystemTime> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).ok()?;
    // The JWT is the line of base64 JSON (`{"` encodes as `eyJ`); the seed starts with SU.
    let jwt = text
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("eyJ"))?;
    let claims = jwt.split('.').nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    let seconds = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// The connection options of `config`: TLS, and the one way it authenticates. Secrets are
/// read from their files here, at start-up. Also used by `ricochet request`. The
/// connection's events are logged, counted and told to `link`.
pub async fn options(config: &NatsConfig, link: &Link) -> Result<ConnectOptions, NatsError> {
    let link = link.clone();
    let mut options = ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(config.connect_timeout)
        .max_reconnects(None)
        .event_callback(move |event| {
            link.observe(&event);
            async move { log_event(event) }
        });
    let password = match (&config.password, &config.password_file) {
        (Some(password), _) => Some(password.clone()),
        (None, Some(path)) => Some(read_secret_file("nats.password_file", path)?),
        (None, None) => None,
    };
    if let (Some(user), Some(password)) = (&config.user, password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    let token = match (&config.token, &config.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => Some(read_secret_file("nats.token_file", path)?),
        (None, None) => None,
    };
    if let Some(token) = token {
        options = options.token(token.expose().to_string());
    }
    let seed = match (&config.nkey_seed, &config.nkey_seed_file) {
        (Some(seed), _) => Some(seed.clone()),
        (None, Some(path)) => Some(read_secret_file("nats.nkey_seed_file", path)?),
        (None, None) => None,
    };
    if let Some(seed) = seed {
        options = options.nkey(seed.expose().to_string());
    }
    if let Some(path) = &config.creds_file {
        options = (options.credentials_file(path).await)
            .map_err(|e| NatsError::Credentials(e.to_string()))?;
    }
    let tls = &config.tls;
    if tls.enabled() {
        options = options.require_tls(true);
    }
    if let Some(ca) = &tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if tls.first {
        options = options.tls_first();
    }
    Ok(options)
}

/// A connection error in words an operator can act on, followed by what async-nats said
/// (which never holds a secret: the server's error text or the TLS alert).
pub fn describe(error: &async_nats::ConnectError) -> String {
    let said = error.to_string();
    let lower = said.to_ascii_lowercase();
    let hint = if lower.contains("unknownissuer") || lower.contains("unknown ca") {
        "unknown CA: the server's certificate is not signed by a CA in nats.tls.ca_file"
    } else if lower.contains("certificaterequired") || lower.contains("certificate required") {
        "the server requires a client certificate (nats.tls.cert_file and key_file)"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "the server's certificate does not name the host of nats.url"
    } else if lower.contains("expired") {
        "expired: the certificate or the credentials (JWT) have expired"
    } else if lower.contains("badcertificate") || lower.contains("bad certificate") {
        "the server refused the client certificate, or wants one (nats.tls.cert_file and key_file)"
    } else if lower.contains("authorization violation") {
        "authorization violation: the server refused the credentials (wrong user or password, token, NKey or creds file)"
    } else if lower.contains("tls") {
        "TLS failed"
    } else {
        "the server could not be reached"
    };
    format!("{hint} ({said})")
}

fn log_event(event: Event) {
    let name = match &event {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck_mode",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    };
    metrics::counter!(NATS_EVENTS, "event" => name).increment(1);
    match event {
        Event::Connected => {
            metrics::gauge!(NATS_CONNECTED).set(1.0);
            info!("connected to NATS");
        }
        Event::Disconnected => {
            metrics::gauge!(NATS_CONNECTED).set(0.0);
            warn!("disconnected from NATS; reconnecting");
        }
        Event::Closed => {
            metrics::gauge!(NATS_CONNECTED).set(0.0);
            info!("NATS connection closed");
        }
        other => warn!(event = %other, "NATS connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_of_a_creds_file_is_read_from_its_jwt() {
        use base64::Engine;
        let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let jwt = format!(
            "{}.{}.c2ln",
            encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
            encode(r#"{"sub":"UA","exp":1700000000}"#)
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.creds");
        std::fs::write(&file, format!("-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\nSUAM\n------END USER NKEY SEED------\n")).unwrap();
        assert_eq!(
            creds_expiry(&file),
            Some(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        );
        assert_eq!(creds_expiry(&dir.path().join("missing")), None);
    }
}
