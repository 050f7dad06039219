//! What the intake loop, the lane workers and the rebalance callbacks share: per partition,
//! the offsets taken and finished, the generation (a revoke or a rewind starts a new one,
//! which makes the older records stale), and, for exactly-once, what finished records
//! staged for the next transaction (`transaction.rs`).
//!
//! Generations are globally increasing: a record or lane worker of an older generation never
//! changes the state of a newer one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::lanes::Lanes;
use super::transaction::{Staged, Transactions};
use super::{OffsetTracker, Partition, Record};
use crate::telemetry::metrics::{RouteMetrics, Settlement, KAFKA_COMMITTED, KAFKA_LAG};

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
    /// Exactly-once: what records staged for the next transaction (their outputs, their
    /// settlement), by offset.
    pub staged: BTreeMap<i64, Staged>,
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

pub(super) struct Shared {
    pub route: String,
    /// Exactly-once: what a transaction carried is counted here when it commits.
    pub metrics: RouteMetrics,
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
    /// Exactly-once only.
    pub transactions: Option<Transactions>,
}

impl Shared {
    pub fn new(
        route: String,
        metrics: RouteMetrics,
        transactions: Option<Transactions>,
        lanes: Lanes<Record>,
    ) -> Self {
        Self {
            route,
            metrics,
            state: Mutex::new(State {
                lanes,
                ..State::default()
            }),
            idle: Condvar::new(),
            wake: Notify::new(),
            retrying_changed: Notify::new(),
            worker_ended: Notify::new(),
            transactions,
        }
    }

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
    /// `finished_at_once`: at-most-once, where a record is finished on receipt (why from
    /// here, and not when it starts: `RecordSettle::accept` in `settle.rs`).
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

    /// The record at `offset` (of `generation`) is finished, settled by `action` (ack or
    /// term): the commit may pass it. Exactly-once, `action` is counted with the
    /// transaction that commits it. `false`, and nothing changes, when the record is no
    /// longer ours (revoked, or rewound after an aborted transaction): its next delivery
    /// settles it. A record finishing while its partition is being revoked is still ours:
    /// the revoke waits for it and commits it.
    pub fn finish(
        &self,
        partition: &Partition,
        generation: u64,
        offset: i64,
        action: Settlement,
    ) -> bool {
        let exactly_once = self.transactions.is_some();
        let mut state = self.lock();
        let Some(ps) = state.partitions.get_mut(partition) else {
            return false;
        };
        if ps.generation != generation {
            return false;
        }
        ps.tracker.finished(offset);
        if exactly_once {
            ps.staged.entry(offset).or_default().settled(action);
        }
        true
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
