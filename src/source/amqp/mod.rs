//! The AMQP 0-9-1 (RabbitMQ) source: a route's queue, consumed RPC style. A request carries
//! `reply_to` (a queue, or the direct reply-to pseudo-queue) and `correlation_id`; the
//! reply goes to that queue through the default exchange with the same correlation id.
//!
//! One connection per route, with two channels: one consumes (prefetch = the route's
//! `max_in_flight`, explicit acks), one publishes replies, retry copies and dead letters in
//! confirm mode. A request is acked only after its reply is confirmed. When the connection
//! or a channel is lost, the intake connects again with backoff and declares its topology
//! again; deliveries of the lost channel are requeued by the broker, so their handlers
//! settle nothing (`Undelivered::Lost`). Readiness is 503 meanwhile.
//!
//! While the route's breaker refuses calls, the intake takes no delivery: at most the
//! prefetch window waits, unacked, and nothing is redelivered or lost. On shutdown the
//! consumer is cancelled, in-flight requests finish and are settled, and the connection is
//! closed; deliveries received but not started go back to the queue with the channel.

pub mod config;
pub mod fields;
mod message;
pub mod publish;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

pub use self::config::{AmqpConfig, AmqpSource, QueueType};
pub use self::topology::valid_name;
use super::backoff::{Backoff, RECONNECT};
use crate::config::{default_consumer_name, read_secret_file, redact_url, RouteConfig};
use crate::pipeline::{Pipeline, Policy, Route};
use crate::source::{Context, Intake, Source};
use crate::telemetry::trace::SpanSource;
use crate::telemetry::Health;

/// RabbitMQ's default `consumer_timeout`: a delivery unacknowledged for longer closes its
/// channel. A route's deadline must fit in it.
pub const CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// RabbitMQ 4's default `max_message_size` (3.x allowed 128 MiB): a larger reply would close
/// the publishing channel, so it becomes a 502 instead.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Source for AmqpSource {
    const KIND: &'static str = "amqp";
    const DURABLE: bool = true;
    const TABLE_HINT: Option<&'static str> = Some(config::TABLE_HINT);

    fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        AmqpSource::check(self, route, push)
    }

    fn check_deadline(&self, deadline: Duration, push: &mut dyn FnMut(&str, String)) {
        AmqpSource::check_deadline(self, deadline, push)
    }

    fn policy(&self) -> Policy {
        let max = Some(self.settings.max_deliver);
        let delays = self.settings.redelivery_backoff.clone();
        Policy::durable(self.delivery, max, "max_deliver", delays)
    }

    fn spans(&self, _: &RouteConfig, _: &str) -> SpanSource {
        SpanSource {
            system: "rabbitmq",
            consumer_group: None,
        }
    }

    fn intake(&self, context: Context) -> Option<Intake> {
        let consumer = AmqpRoute::new(context.route, self.clone(), context.pipeline);
        let (health, tracker, stop) = (context.health, context.tracker, context.stop);
        Some(Box::pin(consumer.run(health, tracker, stop)))
    }
}

/// A route's AMQP consumer.
pub struct AmqpRoute {
    route: Arc<Route>,
    config: AmqpConfig,
    pipeline: Arc<Pipeline>,
    queue: String,
    consumer_tag: String,
}

/// One connection and what was set up on it.
struct Session {
    connection: Connection,
    consume: Channel,
    publish: Channel,
    /// Cancelled when a channel is found broken: the intake connects again.
    broken: CancellationToken,
    /// The handlers of this session's deliveries: the connection stays open until they end.
    tasks: TaskTracker,
}

/// Why consuming ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl AmqpRoute {
    pub fn new(route: Arc<Route>, source: AmqpSource, pipeline: Arc<Pipeline>) -> Self {
        let config = source.settings;
        let queue = (config.queue.clone()).unwrap_or_else(|| route.config.subject.clone());
        let consumer_tag =
            (config.consumer_tag.clone()).unwrap_or_else(|| default_consumer_name(&route.name));
        Self {
            route,
            config,
            pipeline,
            queue,
            consumer_tag,
        }
    }

    /// Consumes until `stop`, connecting again whenever the connection is lost.
    pub async fn run(self, health: Arc<Health>, tracker: TaskTracker, stop: CancellationToken) {
        let this = Arc::new(self);
        let route = &this.route;
        let url = redact_url(&this.config.url);
        let mut backoff = Backoff::new(RECONNECT);
        while !stop.is_cancelled() {
            let (session, consumer) = match this.connect().await {
                Ok(connected) => connected,
                Err(e) => {
                    error!(route = %route.name, %url, queue = %this.queue, error = %e, "cannot set up the AMQP consumer; retrying");
                    // `/readyz` says what the log says, with the route and the queue.
                    let why = format!(
                        "cannot set up the AMQP consumer on queue {:?} ({e}); retrying",
                        this.queue
                    );
                    health.intake_waiting(&route.name, why);
                    if !backoff.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            };
            info!(route = %route.name, %url, queue = %this.queue, prefetch = route.config.max_in_flight_bound(), "AMQP consumer started");
            backoff.succeeded();
            health.intake_set_up(&route.name);
            health.intake_ready();
            let session = Arc::new(session);
            match this.consume(&session, consumer, &tracker, &stop).await {
                Ended::Stopped => {
                    this.close(&session).await;
                    break;
                }
                Ended::Lost(reason) => {
                    health.intake_lost();
                    warn!(route = %route.name, %url, reason = %reason, "AMQP connection lost; connecting again (deliveries in flight go back to the queue)");
                    // The handlers still running on it find their channel closed.
                    let _ = session.connection.close(200, "reconnecting".into()).await;
                    // Lost again soon after connecting: most likely the same delivery breaks
                    // it each time (a header name lapin cannot read, see
                    // docs/sources/amqp.md); the backoff keeps growing then, rather than
                    // reconnecting many times a second.
                    if !backoff.wait(&stop).await {
                        break;
                    }
                }
            }
        }
        info!(route = %route.name, "AMQP intake stopped");
    }

    async fn connect(&self) -> Result<(Session, Consumer), String> {
        let uri = self.uri()?;
        let name = format!("ricochet {}", self.route.name);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let tls = self.tls()?;
        let runtime =
            lapin::runtime::default_runtime().map_err(|e| format!("no async runtime: {e}"))?;
        let connecting = Connection::connect_uri_with_config(uri, properties, tls, runtime);
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect: {e}"))?;
        topology::declare(
            &connection,
            &self.config,
            &self.queue,
            &self.route.config.subject,
        )
        .await
        .map_err(|e| e.to_string())?;
        let open = |what: &'static str| {
            let connection = &connection;
            async move {
                (connection.create_channel().await).map_err(|e| format!("{what} channel: {e}"))
            }
        };
        let consume = open("consuming").await?;
        // Validated to fit: max_in_flight <= u16::MAX. An adaptive limit's deliveries beyond
        // the limit wait unacked in the prefetch window (RabbitMQ applies a new prefetch to
        // new consumers only), never in the service.
        let prefetch = u16::try_from(self.route.config.max_in_flight_bound()).unwrap_or(u16::MAX);
        (consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await)
            .map_err(|e| format!("basic.qos: {e}"))?;
        let publish = open("publishing").await?;
        (publish
            .confirm_select(ConfirmSelectOptions::default())
            .await)
            .map_err(|e| format!("confirm.select: {e}"))?;
        let consumer = consume
            .basic_consume(
                self.queue.as_str().into(),
                self.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consume from {:?}: {e}", self.queue))?;
        let session = Session {
            connection,
            consume,
            publish,
            broken: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        Ok((session, consumer))
    }

    /// The `amqps://` CA and client certificate, read at every connect like the password.
    fn tls(&self) -> Result<OwnedTLSConfig, String> {
        let tls = &self.config.tls;
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("amqp.tls.{key} {}: {e}", path.display()))
        };
        let cert_chain = match &tls.ca_file {
            Some(path) => Some(
                String::from_utf8(read("ca_file", path)?)
                    .map_err(|_| format!("amqp.tls.ca_file {}: not PEM text", path.display()))?,
            ),
            None => None,
        };
        let identity = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("cert_file", cert)?,
                key: read("key_file", key)?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    /// The URL with the configured credentials; a password file is read at every connect,
    /// so a rotated password is picked up on the next reconnect.
    fn uri(&self) -> Result<AMQPUri, String> {
        let mut uri: AMQPUri = (self.config.url.parse())
            .map_err(|_| format!("{:?} is not an AMQP URL", redact_url(&self.config.url)))?;
        if let Some(user) = &self.config.user {
            uri.authority.userinfo.username = user.clone();
        }
        if let Some(password) = &self.config.password {
            uri.authority.userinfo.password = password.expose().to_string();
        }
        if let Some(path) = &self.config.password_file {
            let password =
                read_secret_file("amqp.password_file", path).map_err(|e| e.to_string())?;
            uri.authority.userinfo.password = password.expose().to_string();
        }
        Ok(uri)
    }

    /// Takes deliveries until `stop` or until the session breaks. Each delivery needs a
    /// permit of `max_in_flight` and a breaker that admits calls.
    async fn consume(
        self: &Arc<Self>,
        session: &Arc<Session>,
        mut consumer: Consumer,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Ended {
        let route = &self.route;
        let broken = &session.broken;
        loop {
            // No delivery is taken while the breaker refuses calls: at most the prefetch
            // window waits, unacked.
            let admitted = tokio::select! {
                admitted = route.admission() => match admitted {
                    Some(admitted) => admitted,
                    None => return Ended::Stopped,
                },
                _ = stop.cancelled() => return Ended::Stopped,
                _ = broken.cancelled() => return Ended::Lost("a channel broke".into()),
            };
            let delivery = tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    None => return Ended::Lost("the broker cancelled the consumer".into()),
                },
                _ = stop.cancelled() => return Ended::Stopped,
                _ = broken.cancelled() => return Ended::Lost("a channel broke".into()),
            };
            let (this, owned, taken) = (self.clone(), session.clone(), route.take());
            let handler = session.tasks.track_future(async move {
                this.handle(&owned, delivery, taken).await;
            });
            admitted.run(tracker, handler).await;
        }
    }

    /// Shutdown: no more deliveries, let the handlers settle theirs, then close.
    async fn close(&self, session: &Session) {
        let cancel = session.consume.basic_cancel(
            self.consumer_tag.as_str().into(),
            BasicCancelOptions::default(),
        );
        if let Err(e) = cancel.await {
            warn!(route = %self.route.name, error = %e, "basic.cancel failed");
        }
        session.tasks.close();
        session.tasks.wait().await;
        if let Err(e) = session.connection.close(200, "OK".into()).await {
            debug!(route = %self.route.name, error = %e, "connection close failed");
        }
    }
}
