//! The core NATS source: connection, one queue subscription per route, and the intake loop
//! that hands each message to the pipeline within the route's `max_in_flight`. Core NATS
//! has nothing to settle: its [`Settle`] handle only publishes the reply to the inbox.
//!
//! The connection retries at start and reconnects by itself (async-nats re-subscribes);
//! every change is logged and exported as `ricochet_nats_connected`.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{Client, ConnectOptions, Event, Subscriber};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub mod config;
pub mod discovery;
pub mod drops;
mod link;
pub mod publish;
mod unparsable;

pub use link::{Connection, Link, LinkError};
pub use publish::{dead_letter_headers, ListingError, NatsReplier, PublishError, Unpublished};
pub use unparsable::{unparsable_seen, unparsable_within};

pub use self::config::NatsSource;
use crate::config::{read_secret_file, NatsConfig, RouteConfig, UrlAuth};
use crate::message::Reply;
use crate::message::{Cause, Confirmed, Inbound, Settle, Undelivered};
use crate::pipeline::{Admission, Pipeline, Policy, Route, Taken};
use crate::source::SourceConfig;
use crate::source::{Context, Intake, Source};
use crate::telemetry::liveness;
use crate::telemetry::trace::SpanSource;

use crate::route::{Captures, RouteTable};
use crate::telemetry::metrics::{NATS_CONNECTED, NATS_EVENTS};

/// What every core NATS intake shares.
pub struct Core {
    pipeline: Arc<Pipeline>,
    replier: Arc<NatsReplier>,
    /// The core NATS routes, in file order: the first match wins.
    table: RouteTable<Route>,
    /// `nats.queue_group`, for routes that name none of their own.
    queue_group: String,
}

impl Core {
    pub fn new(pipeline: Arc<Pipeline>, replier: Arc<NatsReplier>, queue_group: &str) -> Self {
        let core = (pipeline.routes().iter())
            .filter(|r| is_core(r))
            .map(|r| (r.pattern.clone(), r.clone()))
            .collect();
        Self {
            table: RouteTable::new(core),
            queue_group: queue_group.to_string(),
            pipeline,
            replier,
        }
    }
}

/// Whether `route` takes its messages from core NATS subscriptions.
pub fn is_core(route: &Route) -> bool {
    route.kind == NatsSource::KIND
}

/// A core route's queue group: its own, else `default` (`nats.queue_group`).
pub fn queue_group<'a>(source: &'a SourceConfig, default: &'a str) -> &'a str {
    match source {
        SourceConfig::Nats(nats) => nats.queue_group(default),
        _ => default,
    }
}

impl NatsSource {
    /// The route's queue group: its own, else `default` (`nats.queue_group`).
    pub fn queue_group<'a>(&'a self, default: &'a str) -> &'a str {
        self.queue_group.as_deref().unwrap_or(default)
    }
}

impl Source for NatsSource {
    const KIND: &'static str = "nats";
    const DURABLE: bool = false;
    const USES_NATS: bool = true;

    fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        NatsSource::check(self, route, push)
    }

    fn policy(&self) -> Policy {
        Policy::at_most_once()
    }

    fn spans(&self, _: &RouteConfig, default_queue_group: &str) -> SpanSource {
        SpanSource {
            system: "nats",
            consumer_group: Some(self.queue_group(default_queue_group).to_string()),
        }
    }

    fn max_pending(&self, route: &RouteConfig) -> usize {
        NatsSource::max_pending(self, route)
    }

    /// Core routes are subscribed together ([`start_core`]): the first matching route wins
    /// across their subscriptions, and readiness waits for the server to confirm them all.
    fn intake(&self, _: Context) -> Option<Intake> {
        None
    }
}

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

/// Replies go to the request's inbox, handed to the connection (shutdown flushes them).
struct Inbox<'a>(&'a NatsReplier);

impl Settle for Inbox<'_> {
    fn too_large(&self, _: &str, reply: &Reply) -> Option<(usize, usize, &'static str)> {
        let (size, limit) = self.0.too_large(reply, &[])?;
        Some((size, limit, "the NATS server's max_payload"))
    }

    async fn reply(&self, destination: &str, reply: &Reply) -> Result<Confirmed, Undelivered> {
        let published = self.0.publish(destination, reply).await;
        published
            .map(|()| Confirmed::Now)
            .map_err(|e| Undelivered::Failed(Cause::new(e)))
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

/// Subscribes every core route with its queue group; each subscription with its route.
pub async fn subscribe(
    client: &Client,
    core: &Core,
) -> anyhow::Result<Vec<(Arc<Route>, Subscriber)>> {
    let mut subscribers = Vec::new();
    for (pattern, route) in core.table.iter() {
        let subject = pattern.subscription_subject();
        let queue_group = route.consumer_group.as_deref().unwrap_or(&core.queue_group);
        let subscriber = (client.queue_subscribe(subject.clone(), queue_group.to_string())).await?;
        info!(route = %route.name, %subject, %queue_group, "subscribed");
        subscribers.push((route.clone(), subscriber));
    }
    Ok(subscribers)
}

/// Resolves once the server has processed every subscription sent before it: a message
/// to a fresh inbox on the same connection comes back only after the earlier SUBs.
pub async fn confirm_subscriptions(client: &Client) -> anyhow::Result<()> {
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, "ready".into()).await?;
    probe.next().await;
    probe.unsubscribe().await?;
    Ok(())
}

/// Takes messages from one subscription until `stop`, then drains it: messages the server
/// already sent are still processed. Each message runs as a task on `tracker`.
///
/// A drain ends when the server confirms it, which it cannot do while the connection is
/// down; nor can it send anything more then. So a drain on a lost connection ends as soon
/// as the messages already received are taken, and shutdown does not wait for a
/// reconnection that may never come.
pub async fn intake(
    own: Arc<Route>,
    mut subscriber: Subscriber,
    core: Arc<Core>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut draining = false;
    let link = core.replier.link().clone();
    loop {
        let message = tokio::select! {
            // Biased: the messages already received are taken before a lost connection
            // ends the drain.
            biased;
            _ = stop.cancelled(), if !draining => {
                draining = true;
                // A lost connection may leave the client's command queue full: the drain
                // is not waited for then.
                tokio::select! {
                    () = drain(&mut subscriber) => {}
                    () = link.down() => {}
                }
                continue;
            }
            message = subscriber.next() => message,
            () = link.down(), if draining => {
                info!(route = %own.name, "connection to NATS down: the drain ends with the messages already received");
                break;
            }
        };
        let Some(message) = message else { break };
        let inbound = to_inbound(message);
        // The first matching route wins, even when the message came on another route's
        // subscription (overlapping patterns share the queue group). The server only
        // delivers subjects this subscription's own pattern matches, so that is the fallback.
        let (route, captures) = match core.table.find(&inbound.subject) {
            Some((route, captures)) => (route.clone(), captures),
            None => (
                own.clone(),
                own.pattern.matches(&inbound.subject).unwrap_or_default(),
            ),
        };
        let taken = route.take();
        let core = core.clone();
        // A full route never holds the intake up: up to `max_pending` messages wait for a
        // slot in their own tasks (the semaphore serves them in order), and the rest are
        // answered 503 at once, so callers learn of the overload instead of timing out.
        match route.admit() {
            Admission::Now(permit) => {
                tracker.spawn(handle(core, route, captures, inbound, permit, taken));
            }
            Admission::Queued(line) => {
                tracker.spawn(async move {
                    if let Some(permit) = line.slot().await {
                        handle(core, route, captures, inbound, permit, taken).await;
                    }
                });
            }
            Admission::Full => {
                tracker.spawn(async move {
                    let settle = Inbox(&core.replier);
                    core.pipeline.shed(&route, &inbound, &settle).await;
                    drop(taken);
                });
            }
        }
    }
}

/// One message through the pipeline, holding its route's slot.
async fn handle(
    core: Arc<Core>,
    route: Arc<Route>,
    captures: Captures,
    inbound: Inbound,
    permit: OwnedSemaphorePermit,
    taken: Taken,
) {
    let settle = Inbox(&core.replier);
    // Boxed: the handling future is a few KB, which a spawn would otherwise copy several
    // times per message.
    Box::pin(
        core.pipeline
            .deliver(&route, Some(captures), &inbound, &settle),
    )
    .await;
    drop((permit, taken));
}

/// Unsubscribes, letting messages the server already sent arrive. If that fails (the
/// connection is gone), the subscription ends by itself with the connection.
async fn drain(subscriber: &mut Subscriber) {
    if let Err(e) = subscriber.drain().await {
        error!(error = %e, "could not drain the subscription");
    }
}

/// NATS message headers in the [`Inbound`] form: every value of every name, in order.
pub fn headers(map: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    let Some(map) = map else {
        return Vec::new();
    };
    map.iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |value| (name.to_owned(), value.as_str().to_owned()))
        })
        .collect()
}

fn to_inbound(message: async_nats::Message) -> Inbound {
    let headers = headers(message.headers.as_ref());
    Inbound::new(
        // as_str, not to_string: no formatting machinery per message.
        message.subject.as_str().to_owned(),
        message.reply.map(|r| r.as_str().to_owned()),
        headers,
        message.payload,
    )
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

    #[test]
    fn a_route_subscribes_with_its_own_queue_group_else_the_default() {
        let own = SourceConfig::Nats(NatsSource {
            queue_group: Some("orders-team".into()),
            ..NatsSource::default()
        });
        assert_eq!(queue_group(&own, "ricochet"), "orders-team");
        let none = SourceConfig::Nats(NatsSource::default());
        assert_eq!(queue_group(&none, "ricochet"), "ricochet");
    }
}
