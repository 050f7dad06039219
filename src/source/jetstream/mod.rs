//! The JetStream source: one durable pull consumer per route, with at-least-once (default)
//! or at-most-once delivery.
//!
//! Intake pulls only as many messages as the route has free `max_in_flight` permits, so no
//! message waits in a local buffer while its `ack_wait` runs out. While the route's circuit
//! breaker is open nothing is pulled; when the break is over one message is pulled as the
//! probe, and full batches resume once the breaker has closed.
//!
//! What becomes of each message is the pipeline's settlement policy (`pipeline::policy`);
//! this source carries it out: replies and dead letters published and confirmed (stream ack
//! or flush), then double-ack, nak with the policy's delay, or term. The consumer is created
//! with unlimited deliveries: the policy counts them (`max_deliver`), so a message whose
//! dead letter could not be published comes back. At-most-once acks on receipt.
//! While a call runs longer than half of `ack_wait`, in-progress is sent every half
//! `ack_wait` so the server does not redeliver a message still being worked on.

pub mod config;
mod consumer;
mod message;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

pub use self::config::{JetStreamConfig, JetStreamSource};
use super::backoff::{Backoff, RECONNECT};
use super::nats::NatsReplier;
use crate::config::{Delivery, RouteConfig};
use crate::pipeline::{Admitted, Pipeline, Policy, Route};
use crate::source::{Context, Intake, Source};
use crate::telemetry::metrics::{JETSTREAM_ACK_PENDING, JETSTREAM_PENDING, JETSTREAM_REDELIVERED};
use crate::telemetry::trace::SpanSource;
use crate::telemetry::Health;

/// How long one pull request waits for messages; also bounds how long shutdown waits for
/// the batch under way.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Most messages asked for in one pull.
const MAX_BATCH: usize = 256;
/// How often the consumer's counts are read from the server for the gauges.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// What the server counts for the route's consumer.
#[derive(Clone)]
struct ConsumerGauges {
    pending: metrics::Gauge,
    ack_pending: metrics::Gauge,
    redelivered: metrics::Gauge,
}

impl ConsumerGauges {
    fn new(route: &str) -> Self {
        let gauge = |name: &'static str| metrics::gauge!(name, "route" => route.to_string());
        Self {
            pending: gauge(JETSTREAM_PENDING),
            ack_pending: gauge(JETSTREAM_ACK_PENDING),
            redelivered: gauge(JETSTREAM_REDELIVERED),
        }
    }
}

/// Reads the consumer's counts every [`WATCH_INTERVAL`] until `stop`: messages in the
/// stream not yet delivered to it, delivered and not yet acknowledged, and redelivered and
/// not yet acknowledged.
async fn watch(consumer: PullConsumer, gauges: ConsumerGauges, stop: CancellationToken) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match consumer.get_info().await {
            Ok(info) => {
                gauges.pending.set(info.num_pending as f64);
                gauges.ack_pending.set(info.num_ack_pending as f64);
                gauges.redelivered.set(info.num_redelivered as f64);
            }
            Err(e) => debug!(error = %e, "JetStream consumer info not read"),
        }
    }
}

impl Source for JetStreamSource {
    const KIND: &'static str = "jetstream";
    const DURABLE: bool = true;
    const USES_NATS: bool = true;
    const TABLE_HINT: Option<&'static str> = Some(config::TABLE_HINT);

    fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        JetStreamSource::check(self, route, push)
    }

    fn check_deadline(&self, deadline: Duration, push: &mut dyn FnMut(&str, String)) {
        JetStreamSource::check_deadline(self, deadline, push)
    }

    fn policy(&self) -> Policy {
        let max = Some(self.settings.max_deliver);
        let delays = self.settings.redelivery_backoff.clone();
        Policy::durable(self.delivery, max, "max_deliver", delays)
    }

    fn spans(&self, route: &RouteConfig, _: &str) -> SpanSource {
        SpanSource {
            system: "nats",
            consumer_group: Some(self.settings.durable_name(&route.name)),
        }
    }

    fn intake(&self, context: Context) -> Option<Intake> {
        let Context {
            route,
            pipeline,
            nats,
            health,
            tracker,
            stop,
        } = context;
        let nats = nats.expect("a JetStream route has the NATS connection");
        let consumer = JetStreamRoute::new(route, self.clone(), pipeline, nats.replier);
        Some(Box::pin(consumer.run(nats.client, health, tracker, stop)))
    }
}

/// Everything one route's consumer needs.
pub struct JetStreamRoute {
    route: Arc<Route>,
    config: JetStreamConfig,
    pipeline: Arc<Pipeline>,
    replier: Arc<NatsReplier>,
    delivery: Delivery,
    reply_subject: Option<String>,
    dead_letter: Option<String>,
    gauges: ConsumerGauges,
}

impl JetStreamRoute {
    pub fn new(
        route: Arc<Route>,
        source: JetStreamSource,
        pipeline: Arc<Pipeline>,
        replier: Arc<NatsReplier>,
    ) -> Self {
        if source.dead_letter.is_none() {
            warn!(route = %route.name, "no dead_letter subject: undeliverable messages will be terminated and only logged");
        }
        Self {
            gauges: ConsumerGauges::new(&route.name),
            delivery: source.delivery,
            reply_subject: source.reply_subject,
            dead_letter: source.dead_letter,
            config: source.settings,
            route,
            pipeline,
            replier,
        }
    }

    fn durable(&self) -> String {
        self.config.durable_name(&self.route.name)
    }

    /// Binds the consumer (retrying until it can), then pulls until `stop`.
    pub async fn run(
        self,
        client: async_nats::Client,
        health: Arc<Health>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) {
        let this = Arc::new(self);
        let context = jetstream::new(client.clone());
        let mut backoff = Backoff::new(RECONNECT);
        while !stop.is_cancelled() {
            // What the consumer may ask for depends on the server's version, known once the
            // connection is up: a flush returns once it is.
            if client.server_info().version.is_empty() {
                tokio::select! {
                    _ = client.flush() => {}
                    _ = stop.cancelled() => break,
                }
            }
            let server = client.server_info().version;
            let consumer = match this.bind(&context, &server).await {
                Ok(consumer) => consumer,
                Err(e) => {
                    let why = match &e {
                        BindError::Refused(refusal) => {
                            error!(route = %this.route.name, stream = %this.config.stream, durable = %this.durable(), server = %server, "{refusal}; not consuming (readiness stays 503)");
                            format!(
                                "JetStream consumer {:?} on stream {:?} refused: {refusal}",
                                this.durable(),
                                this.config.stream
                            )
                        }
                        BindError::Failed(e) => {
                            error!(route = %this.route.name, stream = %this.config.stream, error = %e, "cannot set up the JetStream consumer; retrying");
                            format!("cannot set up the JetStream consumer on stream {:?} ({e}); retrying", this.config.stream)
                        }
                    };
                    // `/readyz` says what the log says, with the route and the stream.
                    health.intake_waiting(&this.route.name, why);
                    if !backoff.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            };
            info!(route = %this.route.name, stream = %this.config.stream, durable = %this.durable(), "JetStream consumer bound");
            backoff.succeeded();
            health.intake_set_up(&this.route.name);
            health.intake_ready();
            // Ends with this binding: the consumer of the next one is watched anew.
            let watching = stop.child_token();
            tokio::spawn(watch(
                consumer.clone(),
                this.gauges.clone(),
                watching.clone(),
            ));
            let pulled = this.pull(&consumer, &tracker, &stop).await;
            watching.cancel();
            if pulled == Pulled::Stopped {
                break;
            }
            // Not ready until bound again.
            health.intake_lost();
            // The consumer or stream may be gone (deleted, lost with memory storage): bind
            // again after a pause instead of pulling at full speed.
            if !backoff.wait(&stop).await {
                break;
            }
        }
        info!(route = %this.route.name, "JetStream intake stopped");
    }

    /// Creates the durable consumer, or updates and binds the existing one, then reads its
    /// configuration back: a server that did not keep what ricochet relies on (the filter
    /// above all) is refused rather than consumed from.
    async fn bind(
        &self,
        context: &jetstream::Context,
        server_version: &str,
    ) -> Result<PullConsumer, BindError> {
        if server_version.is_empty() {
            return Err(BindError::Failed("not connected to NATS yet".into()));
        }
        let stream = context
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| BindError::Failed(format!("stream {:?}: {e}", self.config.stream)))?;
        let filters = if self.config.filter_subjects.is_empty() {
            vec![self.route.pattern.subscription_subject()]
        } else {
            self.config.filter_subjects.clone()
        };
        let wanted = consumer::Wanted {
            durable: self.durable(),
            description: format!("ricochet route {}", self.route.name),
            filters,
            ack_wait: self.config.ack_wait,
            max_ack_pending: i64::from(self.config.max_ack_pending),
        };
        let asked = consumer::config(&wanted, server_version)?;
        // Only a server before 2.10 gets an existing durable's filter change wrong.
        if consumer::before_2_10(server_version) {
            if let Ok(existing) = stream.consumer_info(&wanted.durable).await {
                consumer::check_existing(&asked, &existing.config, server_version)?;
            }
        }
        let bound = stream
            .create_consumer(asked.clone())
            .await
            .map_err(|e| BindError::Failed(format!("consumer {:?}: {e}", self.durable())))?;
        // The server answers a create or update with the consumer as it stored it: that is
        // the read-back.
        consumer::check_kept(&asked, &bound.cached_info().config)?;
        Ok(bound)
    }

    /// Pulls until `stop`, or until a pull fails.
    async fn pull(
        self: &Arc<Self>,
        consumer: &PullConsumer,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Pulled {
        let route = &self.route;
        while !stop.is_cancelled() {
            // Nothing is pulled while the breaker refuses calls: refusals would be naks that
            // use up deliveries without calling the service.
            let admitted = tokio::select! {
                admitted = route.admission() => match admitted {
                    Some(admitted) => admitted,
                    None => break,
                },
                _ = stop.cancelled() => break,
            };
            // One at a time while the breaker probes, and for two ack_waits after the NATS
            // client dropped its connection over a message it could not parse (see
            // source::nats::unparsable): such a message costs its own deliveries only.
            let wary = crate::source::nats::unparsable_within(self.config.ack_wait * 2);
            let want = if admitted.probe || wary { 1 } else { MAX_BATCH };
            let mut permits = route.free_slots(want - 1);
            let mut admitted = Some(admitted);
            // A pull under way when the connection is lost is answered by nobody: the
            // server forgets it (a restart) or the answer has nowhere to go. Given up then,
            // rather than waiting out its client-side timeout (PULL_EXPIRES + 5 s).
            let mut losses = self.replier.link().losses();
            // What this pull delivers comes on this connection (or one lost before it).
            let delivered_on = self.replier.link().connection();
            let batch = consumer
                .batch()
                .max_messages(permits.len() + 1)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(route = %route.name, error = %e, "pull request failed; binding the consumer again");
                    return Pulled::Failed;
                }
            };
            // The batch under way is always read to its end (at most PULL_EXPIRES), so every
            // message the server handed out is processed, even during shutdown; only a lost
            // connection ends it early (what it had delivered is taken first).
            loop {
                let message = tokio::select! {
                    biased;
                    message = batch.next() => message,
                    () = losses.next() => {
                        debug!(route = %route.name, "connection lost: the pull under way is given up");
                        None
                    }
                };
                let Some(message) = message else { break };
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        warn!(route = %route.name, error = %e, "pull failed; binding the consumer again");
                        return Pulled::Failed;
                    }
                };
                // The admission's slot for the first message, the batch's for the rest (a
                // slot is taken from the batch's only once the admission's is used: taking
                // both at once dropped one, and the batch's last message went unprocessed
                // until the server redelivered it after ack_wait).
                let slot = match admitted.take() {
                    Some(admitted) => admitted,
                    None => match permits.pop() {
                        Some(permit) => Admitted {
                            permit,
                            probe: false,
                        },
                        // More than asked for: cannot happen; leave it to redelivery.
                        None => break,
                    },
                };
                let this = self.clone();
                let taken = route.take();
                let work = async move { this.handle(message, delivered_on, taken).await };
                slot.run(tracker, work).await;
            }
        }
        Pulled::Stopped
    }
}

/// How pulling ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pulled {
    /// Asked to stop.
    Stopped,
    /// A pull failed (the consumer or stream gone, the connection lost): bind again.
    Failed,
}

/// Why a consumer could not be bound.
#[derive(Debug, thiserror::Error)]
enum BindError {
    /// The server or the existing consumer cannot give the route what it needs.
    #[error(transparent)]
    Refused(#[from] consumer::Refusal),
    /// The stream, the server or the connection failed; may pass.
    #[error("{0}")]
    Failed(String),
}
