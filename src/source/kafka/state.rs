//! What the intake loop, the lane workers and the rebalance callbacks share: per partition,
//! the offsets taken and finished, the generation (a revoke or a rewind starts a new one,
//! which makes the older records stale), and, for exactly-once, the staged outputs.
//!
//! Generations are globally increasing: a record or lane worker of an older generation never
//! changes the state of a newer one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use super::config::KafkaConfig;
use super::lanes::Lanes;
use super::publish::{KafkaReplier, TransactionError, TransactionRecord};
use super::{OffsetTracker, Output, Partition, Record};

use crate::telemetry::metrics::{KAFKA_COMMITTED, KAFKA_LAG};

#[derive(Default)]
pub(super) struct PartitionState {
    pub tracker: OffsetTracker,
    /// Records of this generation belong to the current assignment and position.
    pub generation: u64,
    /// The generation at assignment; workers of older ones belong to an earlier owner.
    pub epoch: u64,
    /// Set while the partition is being revoked: waits and retries give up.
    pub revoking: bool,
    /// Lane workers of this assignment still running (of any generation since `epoch`).
    pub workers: usize,
    /// Exactly-once: outputs of finished records, by offset, for the next transaction.
    pub staged: BTreeMap<i64, Vec<Output>>,
    /// Exactly-once: the position the last transaction committed, or the first offset
    /// taken; where a rewind goes back to.
    pub committed: Option<i64>,
}

#[derive(Default)]
pub(super) struct State {
    pub partitions: HashMap<Partition, PartitionState>,
    /// Active lanes, the records queued behind the one being processed, and what records
    /// waiting for a retry hold back.
    pub lanes: Lanes<Record>,
    pub next_generation: u64,
}

/// Exactly-once: the transactional producer, and what it takes to make a new one when a
/// fatal error (such as being fenced) leaves the old one unusable.
pub(super) struct Transactions {
    pub producer: Mutex<Option<Arc<KafkaReplier>>>,
    /// Held through a whole transaction: the intake's periodic one (on the blocking pool)
    /// and a revoke's (on the consumer's thread) must not overlap on one producer.
    pub running: Mutex<()>,
    pub config: KafkaConfig,
    pub id: String,
}

#[derive(Default)]
pub(super) struct Shared {
    pub route: String,
    pub state: Mutex<State>,
    /// Signalled whenever a lane worker ends.
    pub idle: Condvar,
    /// Wakes records waiting for a retry, so a revoke or shutdown does not wait for them.
    pub wake: Notify,
    /// Tells the intake a record started or ended waiting for a retry (its partition may
    /// pause or resume: `lanes.rs`).
    pub retrying_changed: Notify,
    /// Tells the shutdown that a lane worker ended.
    pub worker_ended: Notify,
    pub transactions: Option<Transactions>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn assign(&self, partitions: &[Partition]) {
        let mut state = self.lock();
        for partition in partitions {
            state.next_generation += 1;
            let generation = state.next_generation;
            state.partitions.insert(
                partition.clone(),
                PartitionState {
                    generation,
                    epoch: generation,
                    ..PartitionState::default()
                },
            );
        }
    }

    /// Notes a record librdkafka handed over, before anything else happens to it, so no
    /// commit can pass it. Returns its generation, or `None` for a record to drop: of an
    /// unassigned partition, or one this assignment has taken already (fetched twice).
    pub fn track(&self, partition: &Partition, offset: i64, finished_at_once: bool) -> Option<u64> {
        let mut state = self.lock();
        let ps = state.partitions.get_mut(partition)?;
        if !ps.tracker.taken(offset) {
            debug!(route = %self.route, ?partition, offset, "record fetched a second time: dropped");
            return None;
        }
        if finished_at_once {
            ps.tracker.finished(offset);
        }
        ps.committed.get_or_insert(offset);
        Some(ps.generation)
    }

    /// Stops `partitions`: queued records are dropped, waiting ones give up, and running
    /// workers get up to `limit` to finish. `true` when they all did.
    pub fn drain(&self, partitions: &[Partition], limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut state = self.lock();
        for partition in partitions {
            if let Some(ps) = state.partitions.get_mut(partition) {
                ps.revoking = true;
            }
        }
        state.lanes.clear_queued(partitions);
        self.wake.notify_waiters();
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

    /// A lane worker of `generation` on `partition` ended.
    pub fn worker_done(&self, state: &mut State, partition: &Partition, generation: u64) {
        if let Some(ps) = state.partitions.get_mut(partition) {
            if generation >= ps.epoch {
                ps.workers = ps.workers.saturating_sub(1);
            }
        }
        self.idle.notify_all();
        self.worker_ended.notify_one();
    }

    pub fn release(&self, partitions: &[Partition]) {
        let mut state = self.lock();
        for partition in partitions {
            state.partitions.remove(partition);
        }
        state.lanes.forget(partitions);
    }

    /// Commit positions for `only` these partitions or all: those that moved, or, with
    /// `force`, every known one (revoke and shutdown commit synchronously whatever an
    /// earlier asynchronous commit did).
    pub fn commits(&self, only: Option<&[Partition]>, force: bool) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        let mut state = self.lock();
        for (partition, ps) in state.partitions.iter_mut() {
            if only.is_some_and(|o| !o.contains(partition)) {
                continue;
            }
            let position = if force {
                ps.tracker.take_commit();
                ps.tracker.position()
            } else {
                ps.tracker.take_commit()
            };
            if let Some(position) = position {
                let _ =
                    list.add_partition_offset(&partition.0, partition.1, Offset::Offset(position));
            }
        }
        list
    }

    /// An asynchronous commit failed: hand the positions out again.
    pub fn commit_failed(&self) {
        for ps in self.lock().partitions.values_mut() {
            ps.tracker.commit_failed();
        }
    }

    /// Exactly-once: one transaction with the staged outputs of every finished prefix and
    /// the matching offsets. An abortable failure aborts it and rewinds those partitions to
    /// their last committed position, so their records are processed again; a fatal one
    /// also replaces the producer. Blocking.
    pub fn transact<C: Consumer<RouteContext>>(&self, consumer: &C) {
        let Some(transactions) = &self.transactions else {
            return;
        };
        let _one_at_a_time = transactions
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(producer) = transactions
            .producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return self.replace_producer(transactions);
        };
        let Some(group) = consumer.group_metadata() else {
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
            Err(failure) => {
                let partitions: Vec<Partition> = advanced.into_iter().map(|(p, _)| p).collect();
                match failure {
                    TransactionError::Abortable(e) => {
                        warn!(route = %self.route, error = %e, "transaction failed; aborting and processing its records again");
                        if let Err(e) = producer.abort() {
                            error!(route = %self.route, error = %e, "transaction abort failed");
                        }
                    }
                    TransactionError::Fatal(e) => {
                        error!(route = %self.route, error = %e, "transactional producer failed fatally (fenced by another replica with the same transactional_id?); replacing it");
                        *transactions
                            .producer
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = None;
                    }
                }
                self.rewind(consumer, &partitions);
            }
        }
    }

    fn replace_producer(&self, transactions: &Transactions) {
        match KafkaReplier::new(&transactions.config, Some(&transactions.id)) {
            Ok(producer) => {
                info!(route = %self.route, "transactional producer re-created");
                *transactions
                    .producer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(producer));
            }
            Err(e) => {
                error!(route = %self.route, error = %e, "cannot re-create the transactional producer; retrying")
            }
        }
    }

    /// Exactly-once: forgets all progress of `partitions` since their last committed
    /// position and seeks back to it. Records in flight there become stale.
    pub fn rewind<C: Consumer<RouteContext>>(&self, consumer: &C, partitions: &[Partition]) {
        let mut seeks = Vec::new();
        {
            let mut state = self.lock();
            for partition in partitions {
                state.next_generation += 1;
                let generation = state.next_generation;
                let Some(ps) = state.partitions.get_mut(partition) else {
                    continue;
                };
                ps.generation = generation;
                ps.tracker = OffsetTracker::rewound();
                ps.staged.clear();
                if let Some(position) = ps.committed {
                    seeks.push((partition.clone(), position));
                }
            }
            state.lanes.forget(partitions);
        }
        self.wake.notify_waiters();
        // Outside the lock: a seek may block for a moment.
        for (partition, position) in seeks {
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
}

/// Runs rebalance callbacks against the shared state.
pub(super) struct RouteContext {
    pub shared: Arc<Shared>,
    pub revoke_wait: Duration,
    pub assigned: metrics::Gauge,
}

impl ClientContext for RouteContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag and committed
    /// offset of each partition assigned to this member.
    fn stats(&self, statistics: Statistics) {
        let route = &self.shared.route;
        let assigned: Vec<Partition> = self.shared.lock().partitions.keys().cloned().collect();
        for (topic, partition) in assigned {
            let Some(stats) =
                (statistics.topics.get(&topic)).and_then(|t| t.partitions.get(&partition))
            else {
                continue;
            };
            let labels = partition_labels(route, &topic, partition);
            // -1 until the partition's end or committed offset is known.
            if stats.consumer_lag >= 0 {
                metrics::gauge!(KAFKA_LAG, &labels).set(stats.consumer_lag as f64);
            }
            if stats.committed_offset >= 0 {
                metrics::gauge!(KAFKA_COMMITTED, &labels).set(stats.committed_offset as f64);
            }
        }
    }
}

/// The labels of a partition's gauges: a bounded set (the route's topics and partitions).
fn partition_labels(route: &str, topic: &str, partition: i32) -> [(&'static str, String); 3] {
    [
        ("route", route.to_string()),
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ]
}

impl ConsumerContext for RouteContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = match rebalance {
            Rebalance::Revoke(list) => partitions_of(list),
            // rust-rdkafka unassigns everything after a rebalance error.
            Rebalance::Error(e) => {
                warn!(route = %self.shared.route, error = %e, "rebalance error: releasing every partition");
                self.shared.lock().partitions.keys().cloned().collect()
            }
            Rebalance::Assign(_) => return,
        };
        let route = &self.shared.route;
        info!(%route, ?partitions, "partitions revoked: finishing their in-flight records");
        // Runs on the consumer's own thread (`poller`): it may block here while the lane
        // workers finish on the async runtime.
        if !self.shared.drain(&partitions, self.revoke_wait) {
            warn!(%route, "in-flight records did not finish in time; the next owner repeats them");
        }
        if self.shared.transactions.is_some() {
            self.shared.transact(consumer);
        } else {
            let commits = self.shared.commits(Some(&partitions), true);
            if commits.count() > 0 {
                if let Err(e) = consumer.commit(&commits, CommitMode::Sync) {
                    warn!(%route, error = %e, "commit on revoke failed");
                }
            }
        }
        // Another member's now: this member no longer lags on it.
        for (topic, partition) in &partitions {
            let labels = partition_labels(route, topic, *partition);
            metrics::gauge!(KAFKA_LAG, &labels).set(0.0);
        }
        // librdkafka keeps an application pause across reassignment: start clean.
        let _ = consumer.resume(&list_of(&partitions));
        self.shared.release(&partitions);
        self.assigned
            .set(self.shared.lock().partitions.len() as f64);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = partitions_of(list);
            info!(route = %self.shared.route, ?partitions, "partitions assigned");
            let _ = consumer.resume(list);
            self.shared.assign(&partitions);
            self.assigned
                .set(self.shared.lock().partitions.len() as f64);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            warn!(route = %self.shared.route, error = %e, "offset commit failed; committing again");
            self.shared.commit_failed();
        }
    }
}

pub(super) fn partitions_of(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

pub(super) fn list_of(partitions: &[Partition]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    list
}
