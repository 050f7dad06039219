//! The Kafka source: one consumer group member per route, replies produced to a reply
//! topic, offsets committed only for the contiguous prefix of finished records.
//!
//! - **Threads**: the consumer polls on a thread of its own (`poller.rs`), where rebalance
//!   callbacks run and may block; records reach the intake (`intake.rs`) over a channel.
//!   Pause, resume and asynchronous commits are called from the intake; transactions and
//!   the final commit run on tokio's blocking pool. Nothing blocks the async runtime, which
//!   may be single-threaded.
//! - **Tracking**: every record librdkafka hands over is noted in its partition's
//!   [`OffsetTracker`] at once (on the consumer's thread), so no commit can pass it,
//!   whatever happens to it next. A record the assignment has taken already is dropped
//!   there: librdkafka can fetch records a second time when a partition is paused and
//!   resumed while the consumer polls (seen about once in 10,000 records under constant
//!   backpressure), and the first copy is in hand or done.
//! - **Lanes** (`lanes.rs`) give the ordering: a record joins the lane of its partition
//!   (`partition`), of its key (`key`) or its own (`unordered`). One worker task
//!   (`worker.rs`) runs a lane's records in order; different lanes run in parallel. Every
//!   record taken holds a `max_in_flight` permit until it is finished, so memory stays
//!   bounded by `max_in_flight` x `max_payload`.
//! - **Backpressure**: when no permit is free, or the route's circuit is open, every
//!   assigned partition is paused (the consumer keeps polling, so the group does not evict
//!   it). A record waiting for its retry holds its lane, not its partition; once the
//!   records held behind retries reach half of `max_in_flight` (with `partition` ordering:
//!   one), the partitions holding them are paused too.
//! - **Settling** (`settle.rs`): the pipeline's `Settle` handle for a record carries out
//!   every settlement: the reply and dead letter are produced (or, exactly-once, staged),
//!   ack and term mark the record's offset finished (only while the record is still ours),
//!   a redelivery is local. The lane worker only runs a record again after its delay.
//!   **Finished** thus means the reply's delivery report came back (or the dead letter's,
//!   or the record needed no reply) and the pipeline acked or terminated it. Retryable
//!   failures are retried locally, never skipped, unless `dead_letter_after` is set.
//! - **At-most-once**: a record counts as finished as soon as it is tracked (so one queued
//!   behind a slow record never holds back the commit of later ones a restart would then
//!   repeat); `accept`, the pipeline's settle on receipt, commits and counts the ack.
//! - **Rebalance** (`state.rs`): on revoke, queued records of those partitions are dropped
//!   (not committed, so the next owner takes them), waiting ones give up, running ones get
//!   a bounded wait, the finished prefix is committed synchronously, and the partitions are
//!   released.
//! - **Exactly-once** (`transaction.rs`): outputs and settlements are staged and committed
//!   with the offsets in one transaction, and counted (replies published, dead letters,
//!   acks, terms) only when it commits; a failed transaction rewinds the partitions and
//!   counts nothing.
//! - **Shutdown**: stop fetching, finish in-flight work (waiting retries give up), commit
//!   synchronously, flush.

pub mod config;
mod headers;
mod intake;
mod lanes;
mod offsets;
mod poller;
pub mod publish;
mod security;
mod settle;
mod state;
mod transaction;
mod worker;

pub use offsets::OffsetTracker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use self::config::{
    valid_topic, Compression, KafkaConfig, KafkaSource, Ordering, SaslMechanism, SecurityProtocol,
};
use self::lanes::Lanes;
use self::poller::Poller;
use self::publish::KafkaReplier;
use self::settle::Clients;
use self::state::{RouteContext, Shared};
use self::transaction::Transactions;
use crate::config::{Delivery, RouteConfig};
use crate::pipeline::{Pipeline, Policy, Route, Taken};
use crate::source::backoff::{Backoff, RECONNECT};
use crate::source::{Context, Intake, Source};
use crate::telemetry::metrics::KAFKA_ASSIGNED;
use crate::telemetry::trace::SpanSource;
use crate::telemetry::Health;

/// How often finished offsets are committed while running.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// librdkafka's default `max.poll.interval.ms`.
pub const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);
/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

type Partition = (String, i32);

/// The consumer, polled on its own thread ([`poller`]); its non-blocking calls (pause,
/// resume, asynchronous commit) are made from the intake, its blocking ones on the blocking
/// pool.
type KafkaConsumer = BaseConsumer<RouteContext>;

/// A record copied out of the consumer, tracked, not yet holding a permit.
struct Fetched {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Bytes,
    headers: Vec<(String, Vec<u8>)>,
    generation: u64,
    /// The record's timestamp, if it has one.
    sent_at: Option<std::time::SystemTime>,
}

/// A record being processed: it holds its permit, and counts as in flight ([`Taken`])
/// until dropped.
struct Record {
    fetched: Fetched,
    _permit: crate::pipeline::Slot,
    _taken: Taken,
}

impl std::ops::Deref for Record {
    type Target = Fetched;

    fn deref(&self) -> &Fetched {
        &self.fetched
    }
}

impl Fetched {
    fn partition_id(&self) -> Partition {
        (self.topic.clone(), self.partition)
    }

    /// `topic-partition-offset`: the record's identity, stable across reprocessing.
    fn id(&self) -> String {
        format!("{}-{}-{}", self.topic, self.partition, self.offset)
    }
}

/// How many records may wait for a retry, or queue behind a waiting one in its lane,
/// before the partitions holding them pause: half of `max_in_flight` (at least 1), so that
/// the other half keeps other keys flowing; 1 with `ordering = "partition"`, where the
/// waiting record's lane is its whole partition and nothing else of it could run.
fn hold_limit(ordering: Ordering, max_in_flight: usize) -> usize {
    match ordering {
        Ordering::Partition => 1,
        Ordering::Key | Ordering::Unordered => (max_in_flight / 2).max(1),
    }
}

impl Source for KafkaSource {
    const KIND: &'static str = "kafka";
    const DURABLE: bool = true;
    const TABLE_HINT: Option<&'static str> = Some(config::TABLE_HINT);

    fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        KafkaSource::check(self, route, push)
    }

    fn check_deadline(&self, deadline: Duration, push: &mut dyn FnMut(&str, String)) {
        KafkaSource::check_deadline(self, deadline, push)
    }

    fn policy(&self) -> Policy {
        let max = self.settings.dead_letter_after;
        let delays = self.settings.retry_backoff.clone();
        Policy::durable(self.delivery, max, "dead_letter_after", delays)
    }

    fn spans(&self, route: &RouteConfig, _: &str) -> SpanSource {
        SpanSource {
            system: "kafka",
            consumer_group: Some(self.settings.group(&route.name)),
        }
    }

    fn intake(&self, context: Context) -> Option<Intake> {
        let consumer = KafkaRoute::new(context.route, self.clone(), context.pipeline);
        let (health, tracker, stop) = (context.health, context.tracker, context.stop);
        Some(Box::pin(consumer.run(health, tracker, stop)))
    }
}

/// Exactly-once: the producer's transactional id, unique per replica and stable across its
/// restarts: `transactional_id`, else `ricochet-<group>-<hostname>`.
fn transactional_id(config: &KafkaConfig, route: &str) -> String {
    config.transactional_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("ricochet-{}-{host}", config.group(route))
    })
}

/// One Kafka route.
pub struct KafkaRoute {
    route: Arc<Route>,
    config: KafkaConfig,
    pipeline: Arc<Pipeline>,
    delivery: Delivery,
    shared: Arc<Shared>,
    /// Largest record the producer accepts (`message.max.bytes`).
    max_message_bytes: usize,
    /// Cancelled on shutdown: records waiting for a retry give up.
    stop: CancellationToken,
}

impl KafkaRoute {
    pub fn new(route: Arc<Route>, source: KafkaSource, pipeline: Arc<Pipeline>) -> Self {
        let KafkaSource {
            settings: config,
            delivery,
        } = source;
        if config.dead_letter_topic.is_none() {
            warn!(route = %route.name, "no dead_letter_topic: undeliverable records will be skipped and only logged");
        }
        let transactions = (delivery == Delivery::ExactlyOnce).then(|| Transactions {
            producer: Mutex::new(None),
            running: Mutex::new(()),
            id: transactional_id(&config, &route.name),
            config: config.clone(),
        });
        let lanes = Lanes::new(hold_limit(
            config.ordering,
            route.config.max_in_flight_bound(),
        ));
        let (name, metrics) = (route.name.clone(), route.metrics.clone());
        Self {
            max_message_bytes: config
                .producer
                .get("message.max.bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            shared: Arc::new(Shared::new(name, metrics, transactions, lanes)),
            delivery,
            config,
            route,
            pipeline,
            stop: CancellationToken::new(),
        }
    }

    fn group_id(&self) -> String {
        self.config.group(&self.route.name)
    }

    /// Exactly-once only: unique per replica, stable across its restarts.
    fn transactional_id(&self) -> Option<String> {
        (self.shared.transactions.as_ref()).map(|t| t.id.clone())
    }

    /// The topics (or one `^pattern`) to subscribe to.
    fn subscription(&self) -> Vec<String> {
        if let Some(pattern) = &self.config.topic_pattern {
            return vec![pattern.clone()];
        }
        if !self.config.topics.is_empty() {
            return self.config.topics.clone();
        }
        let subject = self.route.pattern.subscription_subject();
        if subject.contains(['*', '>']) {
            let regex: Vec<String> = subject
                .split('.')
                .map(|token| match token {
                    "*" => "[^.]+".to_string(),
                    ">" => ".+".to_string(),
                    literal => literal.replace('.', "\\.").replace('-', "\\-"),
                })
                .collect();
            vec![format!("^{}$", regex.join("\\."))]
        } else {
            vec![subject]
        }
    }

    fn consumer(&self) -> Result<KafkaConsumer, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", self.group_id())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A topic created after ricochet subscribed is picked up within seconds, not
            // librdkafka's default five minutes.
            .set("topic.metadata.refresh.interval.ms", "10000")
            // librdkafka prefetches up to 64 MiB by default: a sidecar's memory should not
            // grow that far when requests arrive faster than the service answers.
            .set("queued.max.messages.kbytes", "4096")
            // Statistics every 5 s: the consumer lag and committed offset gauges.
            .set("statistics.interval.ms", "5000");
        if self.delivery == Delivery::ExactlyOnce {
            // Requests produced in transactions count only once committed.
            client.set("isolation.level", "read_committed");
        }
        let security =
            (self.config.properties()).map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        for (name, value) in security {
            client.set(name, value);
        }
        for (name, value) in &self.config.consumer {
            client.set(name, value);
        }
        let max_poll = client
            .get("max.poll.interval.ms")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_MAX_POLL_INTERVAL);
        let context = RouteContext {
            shared: self.shared.clone(),
            revoke_wait: max_poll / 2,
            assigned: metrics::gauge!(KAFKA_ASSIGNED, "route" => self.route.name.clone()),
        };
        client.create_with_context(context)
    }

    /// Subscribes (retrying until it can, waiting as [`Backoff`] says: 100 ms doubling to
    /// 5 s), then consumes until `stop`.
    pub async fn run(mut self, health: Arc<Health>, tracker: TaskTracker, stop: CancellationToken) {
        self.stop = stop.clone();
        let this = Arc::new(self);
        let route = &this.route;
        let mut backoff = Backoff::new(RECONNECT);
        let (consumer, replier) = loop {
            match this.set_up().await {
                Ok(setup) => break setup,
                Err(e) => {
                    error!(route = %route.name, error = %e, "cannot set up the Kafka consumer; retrying");
                    // `/readyz` says what the log says, with the route and the group.
                    let why = format!(
                        "cannot set up the Kafka consumer of group {:?} ({e}); retrying",
                        this.group_id()
                    );
                    health.intake_waiting(&route.name, why);
                    if !backoff.wait(&stop).await {
                        return;
                    }
                }
            }
        };
        let consumer = Arc::new(consumer);
        let at_once = this.delivery == Delivery::AtMostOnce;
        let started = Poller::start(&route.name, consumer.clone(), this.shared.clone(), at_once);
        let (poller, mut records) = match started {
            Ok(started) => started,
            Err(e) => {
                error!(route = %route.name, error = %e, "cannot start the Kafka consumer thread");
                return;
            }
        };
        let replier = Arc::new(replier);
        if let Some(transactions) = &this.shared.transactions {
            *transactions
                .producer
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(replier.clone());
        }
        info!(route = %route.name, group = %this.group_id(), topics = ?this.subscription(), "Kafka consumer subscribed");
        health.intake_set_up(&route.name);
        health.intake_ready();
        let clients = Clients {
            replier: replier.clone(),
            consumer: Arc::downgrade(&consumer),
        };
        this.consume(&consumer, &mut records, &clients, &tracker)
            .await;
        this.shut_down(&consumer, &mut records, &replier).await;
        // The consumer is closed on its own thread, which leaves the group.
        drop(consumer);
        poller.stop().await;
        info!(route = %route.name, "Kafka intake stopped");
    }

    /// The consumer, subscribed, and the reply producer. Initialising transactions blocks
    /// (and fences an earlier producer with the same id), so it runs on the blocking pool.
    async fn set_up(&self) -> Result<(KafkaConsumer, KafkaReplier), KafkaError> {
        let consumer = self.consumer()?;
        let topics = self.subscription();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let config = self.config.clone();
        let transactional_id = self.transactional_id();
        let replier = tokio::task::spawn_blocking(move || {
            KafkaReplier::new(&config, transactional_id.as_deref())
        })
        .await
        .map_err(|e| KafkaError::Subscription(e.to_string()))??;
        Ok((consumer, replier))
    }
}
