//! The Kafka source: one consumer group member per route, replies produced to a reply
//! topic, offsets committed only for the contiguous prefix of finished records.
//!
//! - **Lanes** give the ordering: a record joins the lane of its partition (`partition`), of
//!   its key (`key`) or its own (`unordered`). One worker task runs a lane's records in
//!   order; different lanes run in parallel. Every record taken holds a `max_in_flight`
//!   permit until it is finished, so memory stays bounded by `max_in_flight` x `max_payload`.
//! - **Backpressure**: when no permit is free, or the route's circuit is open, every
//!   assigned partition is paused (the consumer keeps polling, so the group does not evict
//!   it); a partition is also paused while one of its records waits to be retried.
//! - **Finished** means the reply's delivery report came back (or the dead letter's, or the
//!   record needed no reply). Retryable failures are retried locally, never skipped, unless
//!   `dead_letter_after` is set.
//! - **Rebalance**: on revoke, queued records of those partitions are dropped (not committed,
//!   so the next owner takes them), in-flight ones get a bounded wait, the finished prefix is
//!   committed synchronously, and the partitions are released.
//! - **Shutdown**: stop fetching, finish in-flight work, commit synchronously, flush.

mod offsets;

pub use offsets::OffsetTracker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::Inbound;
use crate::config::{Delivery, KafkaConfig, Ordering};
use crate::invoke::breaker::State as BreakerState;
use crate::mapping::ErrorKind;
use crate::pipeline::{Disposition, Pipeline, Processed, Route};
use crate::reply::kafka::TransactionRecord;
use crate::reply::KafkaReplier;
use crate::telemetry::metrics::{Outcome, KAFKA_ASSIGNED};
use crate::telemetry::Health;

/// How often finished offsets are committed while running.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// How often a saturated or paused route looks again at its permits and breaker.
const RECHECK: Duration = Duration::from_millis(20);
/// librdkafka's default `max.poll.interval.ms`.
pub const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);

type Partition = (String, i32);

/// Which records must run one after another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lane {
    Partition(Partition),
    Key(Partition, Vec<u8>),
    Record(Partition, i64),
}

impl Lane {
    fn partition(&self) -> &Partition {
        match self {
            Lane::Partition(p) | Lane::Key(p, _) | Lane::Record(p, _) => p,
        }
    }
}

/// A record taken from Kafka, owned, with its permit.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Bytes,
    headers: Vec<(String, Vec<u8>)>,
    /// The assignment generation the record belongs to; a revoke ends it.
    generation: u64,
    _permit: OwnedSemaphorePermit,
}

impl Record {
    fn partition_id(&self) -> Partition {
        (self.topic.clone(), self.partition)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// `topic-partition-offset`: the record's identity, stable across reprocessing.
    fn id(&self) -> String {
        format!("{}-{}-{}", self.topic, self.partition, self.offset)
    }
}

/// A record to produce: a reply or a dead letter.
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Bytes,
}

#[derive(Default)]
struct PartitionState {
    tracker: OffsetTracker,
    generation: u64,
    /// Exactly-once: outputs of finished records, by offset, waiting for the transaction
    /// that also commits their offsets.
    staged: std::collections::BTreeMap<i64, Vec<Output>>,
    /// Exactly-once: the position the last committed transaction stored, or the first
    /// offset taken (where a rewind goes back to).
    committed: Option<i64>,
    /// Lane workers of this partition running now.
    workers: usize,
    /// Records of this partition waiting to be retried.
    retrying: usize,
}

#[derive(Default)]
struct State {
    partitions: HashMap<Partition, PartitionState>,
    /// Active lanes and the records queued behind the one being processed.
    lanes: HashMap<Lane, VecDeque<Record>>,
    next_generation: u64,
}

/// State shared by the intake loop, the lane workers and the rebalance callbacks.
#[derive(Default)]
struct Shared {
    route: String,
    state: Mutex<State>,
    /// Signalled whenever a lane worker ends.
    idle: Condvar,
    /// Exactly-once: the transactional producer, set once it is initialised.
    transactions: std::sync::OnceLock<Arc<KafkaReplier>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn assign(&self, partitions: &[Partition]) {
        let mut state = self.lock();
        for partition in partitions {
            state.next_generation += 1;
            let generation = state.next_generation;
            state.partitions.insert(
                partition.clone(),
                PartitionState {
                    generation,
                    ..PartitionState::default()
                },
            );
        }
    }

    /// Drops queued records of `partitions` and waits (bounded) for their running workers.
    fn drain(&self, partitions: &[Partition], limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut state = self.lock();
        for (lane, queue) in state.lanes.iter_mut() {
            if partitions.contains(lane.partition()) {
                queue.clear();
            }
        }
        loop {
            let busy = partitions
                .iter()
                .any(|p| state.partitions.get(p).is_some_and(|s| s.workers > 0));
            if !busy {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .idle
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn release(&self, partitions: &[Partition]) {
        let mut state = self.lock();
        for partition in partitions {
            state.partitions.remove(partition);
        }
        state
            .lanes
            .retain(|lane, _| !partitions.contains(lane.partition()));
    }

    /// Exactly-once: one transaction with the staged outputs of every finished prefix and
    /// the matching offsets. If it fails, it is aborted and those partitions are rewound to
    /// their last committed position, so their records are processed again. Blocking.
    fn transact<C: Consumer<RouteContext>>(&self, consumer: &C) {
        let Some(producer) = self.transactions.get() else {
            return;
        };
        let mut outputs: Vec<Output> = Vec::new();
        let mut offsets = TopicPartitionList::new();
        let mut advanced: Vec<(Partition, i64)> = Vec::new();
        {
            let mut state = self.lock();
            for (partition, ps) in state.partitions.iter_mut() {
                let Some(position) = ps.tracker.position() else {
                    continue;
                };
                if ps.committed.is_some_and(|c| c >= position) {
                    continue;
                }
                let later = ps.staged.split_off(&position);
                let done = std::mem::replace(&mut ps.staged, later);
                outputs.extend(done.into_values().flatten());
                let _ = offsets.add_partition_offset(
                    &partition.0,
                    partition.1,
                    Offset::Offset(position),
                );
                advanced.push((partition.clone(), position));
            }
        }
        if advanced.is_empty() {
            return;
        }
        let Some(group) = consumer.group_metadata() else {
            return;
        };
        let records: Vec<TransactionRecord<'_>> = outputs
            .iter()
            .map(|o| TransactionRecord {
                topic: &o.topic,
                key: o.key.as_deref(),
                headers: &o.headers,
                payload: &o.payload,
            })
            .collect();
        match producer.commit_transaction(&records, &offsets, &group) {
            Ok(()) => {
                let mut state = self.lock();
                for (partition, position) in advanced {
                    if let Some(ps) = state.partitions.get_mut(&partition) {
                        ps.committed = Some(position);
                    }
                }
            }
            Err(e) => {
                warn!(route = %self.route, error = %e, "transaction failed; aborting and processing its records again");
                if let Err(e) = producer.abort() {
                    error!(route = %self.route, error = %e, "transaction abort failed");
                }
                let partitions: Vec<Partition> = advanced.into_iter().map(|(p, _)| p).collect();
                self.rewind(consumer, &partitions);
            }
        }
    }

    /// Exactly-once: forgets all progress of `partitions` since their last committed
    /// position and seeks back to it. Records in flight there become stale.
    fn rewind<C: Consumer<RouteContext>>(&self, consumer: &C, partitions: &[Partition]) {
        let mut state = self.lock();
        for partition in partitions {
            state.next_generation += 1;
            let generation = state.next_generation;
            let Some(ps) = state.partitions.get_mut(partition) else {
                continue;
            };
            ps.generation = generation;
            ps.tracker = OffsetTracker::default();
            ps.staged.clear();
            if let Some(position) = ps.committed {
                if let Err(e) = consumer.seek(
                    &partition.0,
                    partition.1,
                    Offset::Offset(position),
                    Duration::from_secs(5),
                ) {
                    error!(route = %self.route, ?partition, error = %e, "seek back failed");
                }
            }
        }
        state
            .lanes
            .retain(|lane, _| !partitions.contains(lane.partition()));
    }

    /// Commit positions that moved, for `only` these partitions or all.
    fn commits(&self, only: Option<&[Partition]>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        let mut state = self.lock();
        for (partition, ps) in state.partitions.iter_mut() {
            if only.is_some_and(|o| !o.contains(partition)) {
                continue;
            }
            if let Some(position) = ps.tracker.take_commit() {
                let _ =
                    list.add_partition_offset(&partition.0, partition.1, Offset::Offset(position));
            }
        }
        list
    }
}

/// Runs rebalance callbacks against the shared state.
struct RouteContext {
    route: String,
    shared: Arc<Shared>,
    revoke_wait: Duration,
    assigned: metrics::Gauge,
}

impl ClientContext for RouteContext {}

impl ConsumerContext for RouteContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = partitions_of(list);
        info!(route = %self.route, ?partitions, "partitions revoked: finishing their in-flight records");
        // Runs inside the intake task's poll; let tokio move other work off this thread.
        let drained =
            tokio::task::block_in_place(|| self.shared.drain(&partitions, self.revoke_wait));
        if !drained {
            warn!(route = %self.route, "in-flight records did not finish in time; the next owner repeats them");
        }
        if self.shared.transactions.get().is_some() {
            tokio::task::block_in_place(|| self.shared.transact(consumer));
        } else {
            let commits = self.shared.commits(Some(&partitions));
            if commits.count() > 0 {
                if let Err(e) = consumer.commit(&commits, CommitMode::Sync) {
                    warn!(route = %self.route, error = %e, "commit on revoke failed");
                }
            }
        }
        self.shared.release(&partitions);
        self.assigned
            .set(self.shared.lock().partitions.len() as f64);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list);
                info!(route = %self.route, ?partitions, "partitions assigned");
                self.shared.assign(&partitions);
                self.assigned
                    .set(self.shared.lock().partitions.len() as f64);
            }
            Rebalance::Error(e) => warn!(route = %self.route, error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// One Kafka route.
pub struct KafkaRoute {
    route: Arc<Route>,
    config: KafkaConfig,
    pipeline: Arc<Pipeline>,
    delivery: Delivery,
    shared: Arc<Shared>,
}

impl KafkaRoute {
    pub fn new(route: Arc<Route>, pipeline: Arc<Pipeline>) -> Option<Self> {
        let name = route.name.clone();
        let config = route.config.kafka.clone()?;
        if config.dead_letter_topic.is_none() {
            warn!(route = %route.name, "no dead_letter_topic: undeliverable records will be skipped and only logged");
        }
        Some(Self {
            delivery: route.config.delivery.unwrap_or_default(),
            config,
            route,
            pipeline,
            shared: Arc::new(Shared {
                route: name,
                ..Shared::default()
            }),
        })
    }

    fn group_id(&self) -> String {
        self.config
            .group_id
            .clone()
            .unwrap_or_else(|| format!("ricochet-{}", self.route.name))
    }

    /// Exactly-once only: unique per replica, stable across its restarts.
    fn transactional_id(&self) -> Option<String> {
        if self.delivery != Delivery::ExactlyOnce {
            return None;
        }
        let id = self.config.transactional_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("ricochet-{}-{host}", self.group_id())
        });
        Some(id)
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

    fn consumer(&self) -> Result<StreamConsumer<RouteContext>, rdkafka::error::KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", self.group_id())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A topic created after ricochet subscribed is picked up within seconds, not
            // librdkafka's default five minutes.
            .set("topic.metadata.refresh.interval.ms", "10000");
        if self.delivery == Delivery::ExactlyOnce {
            // Requests produced in transactions count only once committed.
            client.set("isolation.level", "read_committed");
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
            route: self.route.name.clone(),
            shared: self.shared.clone(),
            revoke_wait: max_poll / 2,
            assigned: metrics::gauge!(KAFKA_ASSIGNED, "route" => self.route.name.clone()),
        };
        client.create_with_context(context)
    }

    /// Subscribes (retrying until it can), then consumes until `stop`.
    pub async fn run(self, health: Arc<Health>, tracker: TaskTracker, stop: CancellationToken) {
        let this = Arc::new(self);
        let route = &this.route;
        let setup = loop {
            let attempt = this.consumer().and_then(|consumer| {
                let topics = this.subscription();
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics)?;
                let transactional_id = this.transactional_id();
                // Initialising transactions blocks (and fences an earlier producer).
                let replier = tokio::task::block_in_place(|| {
                    KafkaReplier::new(&this.config, transactional_id.as_deref())
                })?;
                Ok((consumer, replier))
            });
            match attempt {
                Ok(setup) => break setup,
                Err(e) => {
                    error!(route = %route.name, error = %e, "cannot set up the Kafka consumer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        let (consumer, replier) = setup;
        let replier = Arc::new(replier);
        if this.delivery == Delivery::ExactlyOnce {
            let _ = this.shared.transactions.set(replier.clone());
        }
        info!(route = %route.name, group = %this.group_id(), topics = ?this.subscription(), "Kafka consumer subscribed");
        health.intake_ready();
        this.consume(&consumer, replier.clone(), &tracker, &stop)
            .await;
        this.shut_down(&consumer, &replier).await;
    }

    async fn consume(
        self: &Arc<Self>,
        consumer: &StreamConsumer<RouteContext>,
        replier: Arc<KafkaReplier>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) {
        let mut paused: HashSet<Partition> = HashSet::new();
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        // Records that arrived while no permit was free; drained first when one frees.
        let mut overflow: VecDeque<Fetched> = VecDeque::new();
        loop {
            while !overflow.is_empty() {
                let Ok(permit) = self.route.limit.clone().try_acquire_owned() else {
                    break;
                };
                if let Some(record) = overflow.pop_front() {
                    self.take(record, permit, consumer, &replier, tracker);
                }
            }
            let saturated = !overflow.is_empty() || self.route.limit.available_permits() == 0;
            self.update_pauses(consumer, &mut paused, saturated);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = commit_tick.tick() => self.commit(consumer, CommitMode::Async),
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let record = Fetched::from(&message);
                        match self.route.limit.clone().try_acquire_owned() {
                            Ok(permit) if overflow.is_empty() => self.take(record, permit, consumer, &replier, tracker),
                            _ => overflow.push_back(record),
                        }
                    }
                    Err(e) => warn!(route = %self.route.name, error = %e, "Kafka consumer error"),
                },
                _ = tokio::time::sleep(RECHECK), if saturated || !paused.is_empty() => {}
            }
        }
        // Not taken, so not committed: the next owner (or restart) consumes them.
        drop(overflow);
    }

    /// Accepts one record: tracks its offset and queues it in its lane.
    fn take(
        self: &Arc<Self>,
        record: Fetched,
        permit: OwnedSemaphorePermit,
        consumer: &StreamConsumer<RouteContext>,
        replier: &Arc<KafkaReplier>,
        tracker: &TaskTracker,
    ) {
        let partition = (record.topic.clone(), record.partition);
        let mut state = self.shared.lock();
        let Some(ps) = state.partitions.get_mut(&partition) else {
            debug!(route = %self.route.name, ?partition, "record of an unassigned partition ignored");
            return;
        };
        ps.tracker.taken(record.offset);
        // Where an aborted transaction rewinds to, until one commits.
        ps.committed.get_or_insert(record.offset);
        let generation = ps.generation;
        self.route.metrics.in_flight.increment(1.0);
        if self.delivery == Delivery::AtMostOnce {
            // Committed before the call: a crash loses it, nothing is repeated.
            ps.tracker.finished(record.offset);
        }
        let record = record.own(generation, permit);
        let lane = match self.config.ordering {
            Ordering::Partition => Lane::Partition(partition),
            Ordering::Key => match &record.key {
                Some(key) => Lane::Key(partition, key.clone()),
                None => Lane::Record(partition, record.offset),
            },
            Ordering::Unordered => Lane::Record(partition, record.offset),
        };
        if let Some(queue) = state.lanes.get_mut(&lane) {
            queue.push_back(record);
            return;
        }
        state.lanes.insert(lane.clone(), VecDeque::new());
        if let Some(ps) = state.partitions.get_mut(lane.partition()) {
            ps.workers += 1;
        }
        drop(state);
        if self.delivery == Delivery::AtMostOnce {
            self.commit(consumer, CommitMode::Async);
        }
        let this = self.clone();
        let replier = replier.clone();
        tracker.spawn(async move { this.work(lane, record, replier).await });
    }

    /// A lane worker: processes its lane's records in order until the lane is empty.
    async fn work(self: Arc<Self>, lane: Lane, first: Record, replier: Arc<KafkaReplier>) {
        let mut next = Some(first);
        while let Some(record) = next {
            let finished = self.process(&record, &replier).await;
            let mut state = self.shared.lock();
            if finished {
                if let Some(ps) = state.partitions.get_mut(lane.partition()) {
                    if ps.generation == record.generation {
                        ps.tracker.finished(record.offset);
                    }
                }
            }
            drop(record);
            self.route.metrics.in_flight.decrement(1.0);
            next = state.lanes.get_mut(&lane).and_then(VecDeque::pop_front);
            if next.is_none() {
                state.lanes.remove(&lane);
                if let Some(ps) = state.partitions.get_mut(lane.partition()) {
                    ps.workers = ps.workers.saturating_sub(1);
                }
                self.shared.idle.notify_all();
            }
        }
    }

    /// Processes one record until it is finished; `false` when it must be left to the next
    /// owner (revoked, or shutting down while it waited for a retry).
    async fn process(&self, record: &Record, replier: &KafkaReplier) -> bool {
        let route = &self.route;
        route.metrics.received.increment(1);
        let started = std::time::Instant::now();
        let mut rounds: u32 = 0;
        let finished = loop {
            rounds += 1;
            let inbound = self.inbound(record);
            let processed = match route.pattern.matches(&record.topic) {
                Some(captures) => self.pipeline.process(route, &captures, &inbound).await,
                None => self.pipeline.refuse(
                    route,
                    ErrorKind::NoRoute,
                    "the topic does not match the route's pattern",
                ),
            };
            let give_up = self.delivery == Delivery::AtMostOnce
                || self.config.dead_letter_after.is_some_and(|n| rounds >= n);
            match processed.disposition {
                Disposition::Answered => break self.reply(record, &processed, replier).await,
                Disposition::Undeliverable => {
                    break self.dead_letter(record, &processed, rounds, replier).await
                }
                Disposition::Retry if give_up => {
                    break match self.delivery {
                        Delivery::AtMostOnce => self.reply(record, &processed, replier).await,
                        _ => self.dead_letter(record, &processed, rounds, replier).await,
                    }
                }
                Disposition::Retry => {
                    let delays = &self.config.retry_backoff;
                    let delay = delays
                        .get(rounds as usize - 1)
                        .or(delays.last())
                        .copied()
                        .unwrap_or(Duration::from_secs(1));
                    debug!(route = %route.name, offset = record.offset, rounds, ?delay, "retryable failure; retrying the record");
                    if !self.wait_to_retry(record, delay).await {
                        break false;
                    }
                }
            }
        };
        route.metrics.message_duration.record(started.elapsed());
        finished
    }

    /// Waits `delay` with the record's partition paused; `false` if the record lost its
    /// partition meanwhile.
    async fn wait_to_retry(&self, record: &Record, delay: Duration) -> bool {
        let partition = record.partition_id();
        self.set_retrying(&partition, true);
        tokio::time::sleep(delay).await;
        self.set_retrying(&partition, false);
        self.owns(record)
    }

    fn set_retrying(&self, partition: &Partition, on: bool) {
        if let Some(ps) = self.shared.lock().partitions.get_mut(partition) {
            ps.retrying = if on {
                ps.retrying + 1
            } else {
                ps.retrying.saturating_sub(1)
            };
        }
    }

    fn owns(&self, record: &Record) -> bool {
        self.shared
            .lock()
            .partitions
            .get(&record.partition_id())
            .is_some_and(|ps| ps.generation == record.generation)
    }

    /// Produces the reply, if the request has a destination. `false` when the record lost
    /// its partition before the reply could be delivered.
    async fn reply(&self, record: &Record, processed: &Processed, replier: &KafkaReplier) -> bool {
        let route = &self.route;
        let destination = record
            .header(&route.config.reply_to_header)
            .or_else(|| self.config.reply_topic.clone());
        let Some(topic) = destination else {
            debug!(route = %route.name, status = processed.reply.status.as_u16(), "no reply topic; nothing to produce");
            route.metrics.outcome(Outcome::NoReply);
            return true;
        };
        let correlation = record
            .header(&route.config.correlation_header)
            .unwrap_or_else(|| record.id());
        let mut headers: Vec<(String, Vec<u8>)> = processed
            .reply
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect();
        headers.push((
            route.config.correlation_header.clone(),
            correlation.into_bytes(),
        ));
        let output = Output {
            topic,
            key: record.key.clone(),
            headers,
            payload: processed.reply.body.clone(),
        };
        let delivered = self.deliver(record, output, replier).await;
        if delivered {
            route.metrics.replies_published.increment(1);
            route.metrics.outcome(Outcome::Replied);
        }
        delivered
    }

    async fn dead_letter(
        &self,
        record: &Record,
        processed: &Processed,
        rounds: u32,
        replier: &KafkaReplier,
    ) -> bool {
        let route = &self.route;
        let reason = match (processed.disposition, processed.error) {
            (Disposition::Retry, _) => "dead_letter_after",
            (_, Some(kind)) => kind.as_str(),
            (_, None) => "undeliverable",
        };
        if let Some(topic) = &self.config.dead_letter_topic {
            let mut headers = record.headers.clone();
            for (name, value) in [
                ("Ricochet-Dead-Letter-Reason", reason.to_string()),
                (
                    "Ricochet-Last-Status",
                    processed.reply.status.as_u16().to_string(),
                ),
                ("Ricochet-Delivery-Count", rounds.to_string()),
                ("Ricochet-Route", route.name.clone()),
                ("Ricochet-Original-Topic", record.topic.clone()),
                ("Ricochet-Original-Partition", record.partition.to_string()),
                ("Ricochet-Original-Offset", record.offset.to_string()),
            ] {
                headers.push((name.to_string(), value.into_bytes()));
            }
            let output = Output {
                topic: topic.clone(),
                key: record.key.clone(),
                headers,
                payload: record.payload.clone(),
            };
            if !self.deliver(record, output, replier).await {
                return false;
            }
            warn!(route = %route.name, reason, %topic, record = %record.id(), "record dead-lettered");
            route.metrics.dead_letters.increment(1);
        } else {
            error!(route = %route.name, reason, record = %record.id(), "undeliverable record skipped; no dead_letter_topic is configured");
        }
        // The caller learns of it too.
        self.reply(record, processed, replier).await
    }

    /// At-least-once: produces `output` and waits for its delivery report, producing again
    /// (never calling the service again) while the record is ours. Exactly-once: stages it
    /// for the next transaction, which also commits the record's offset.
    async fn deliver(&self, record: &Record, output: Output, replier: &KafkaReplier) -> bool {
        if self.delivery == Delivery::ExactlyOnce {
            let mut state = self.shared.lock();
            return match state.partitions.get_mut(&record.partition_id()) {
                Some(ps) if ps.generation == record.generation => {
                    ps.staged.entry(record.offset).or_default().push(output);
                    true
                }
                _ => false,
            };
        }
        let headers: Vec<(&str, &[u8])> = output
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            match replier
                .send(
                    &output.topic,
                    output.key.as_deref(),
                    &headers,
                    &output.payload,
                )
                .await
            {
                Ok(()) => return true,
                Err(e) => {
                    warn!(route = %self.route.name, topic = %output.topic, error = %e, "record not delivered; producing it again");
                    self.route.metrics.outcome(Outcome::PublishFailed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if !self.owns(record) {
                        return false;
                    }
                }
            }
        }
    }

    fn inbound(&self, record: &Record) -> Inbound {
        let mut headers: Vec<(String, String)> = record
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        if record
            .header(crate::invoke::retry::IDEMPOTENCY_KEY)
            .is_none()
        {
            headers.push(("Idempotency-Key".into(), record.id()));
        }
        Inbound {
            subject: record.topic.clone(),
            reply: None,
            headers,
            payload: record.payload.clone(),
            received: std::time::Instant::now(),
        }
    }

    /// Pauses every partition while the route is saturated or its circuit is open, and a
    /// partition while one of its records waits for a retry; resumes the rest.
    fn update_pauses(
        &self,
        consumer: &StreamConsumer<RouteContext>,
        paused: &mut HashSet<Partition>,
        saturated: bool,
    ) {
        let circuit_open = matches!(self.route.invoker.breaker.state(), BreakerState::Open { until } if Instant::now() < until);
        let wanted: HashSet<Partition> = {
            let state = self.shared.lock();
            state
                .partitions
                .iter()
                .filter(|(_, ps)| saturated || circuit_open || ps.retrying > 0)
                .map(|(p, _)| p.clone())
                .collect()
        };
        // Partitions no longer assigned are forgotten, not resumed.
        paused.retain(|p| self.shared.lock().partitions.contains_key(p));
        let to_pause: Vec<&Partition> = wanted.difference(paused).collect();
        let to_resume: Vec<&Partition> = paused.difference(&wanted).collect();
        if !to_pause.is_empty() && consumer.pause(&list(&to_pause)).is_ok() {
            debug!(route = %self.route.name, partitions = ?to_pause, circuit_open, saturated, "paused");
        }
        if !to_resume.is_empty() && consumer.resume(&list(&to_resume)).is_ok() {
            debug!(route = %self.route.name, partitions = ?to_resume, "resumed");
        }
        *paused = wanted;
    }

    fn commit(&self, consumer: &StreamConsumer<RouteContext>, mode: CommitMode) {
        if self.delivery == Delivery::ExactlyOnce {
            tokio::task::block_in_place(|| self.shared.transact(consumer));
            return;
        }
        let commits = self.shared.commits(None);
        if commits.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&commits, mode) {
            warn!(route = %self.route.name, error = %e, "offset commit failed; will retry");
            // Commit again on the next tick.
            let mut state = self.shared.lock();
            for partition in state.partitions.values_mut() {
                partition.tracker.commit_failed();
            }
        }
    }

    /// Stop fetching, let in-flight records finish, commit synchronously, flush replies.
    async fn shut_down(&self, consumer: &StreamConsumer<RouteContext>, replier: &KafkaReplier) {
        let route = &self.route;
        let all: Vec<Partition> = self.shared.lock().partitions.keys().cloned().collect();
        let _ = consumer.pause(&list(&all.iter().collect::<Vec<_>>()));
        loop {
            let busy = self
                .shared
                .lock()
                .partitions
                .values()
                .any(|ps| ps.workers > 0);
            if !busy {
                break;
            }
            // Keep polling so the group keeps this member while work finishes.
            tokio::select! {
                _ = consumer.recv() => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
        if self.delivery == Delivery::ExactlyOnce {
            tokio::task::block_in_place(|| self.shared.transact(consumer));
        }
        let commits = self.shared.commits(None);
        if self.delivery != Delivery::ExactlyOnce && commits.count() > 0 {
            if let Err(e) = consumer.commit(&commits, CommitMode::Sync) {
                warn!(route = %route.name, error = %e, "final offset commit failed");
            }
        }
        if let Err(e) = replier.flush(Duration::from_secs(5)) {
            warn!(route = %route.name, error = %e, "producer flush failed");
        }
        consumer.unsubscribe();
        info!(route = %route.name, "Kafka intake stopped");
    }
}

fn list(partitions: &[&Partition]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    list
}

/// A record copied out of the consumer, before it gets its permit and generation.
struct Fetched {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Bytes,
    headers: Vec<(String, Vec<u8>)>,
}

impl From<&BorrowedMessage<'_>> for Fetched {
    fn from(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            headers,
        }
    }
}

impl Fetched {
    fn own(self, generation: u64, permit: OwnedSemaphorePermit) -> Record {
        Record {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key,
            payload: self.payload,
            headers: self.headers,
            generation,
            _permit: permit,
        }
    }
}
