//! The Kafka intake: the loop between the consumer's thread (`poller.rs`) and the lane
//! workers (`worker.rs`). It takes each tracked record with a `max_in_flight` permit into
//! its lane, pauses and resumes partitions (saturation, an open circuit, records held
//! behind retries), commits the finished prefix (or runs the exactly-once transaction)
//! every 200 ms, and at shutdown lets in-flight records finish and commits synchronously.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use super::lanes::Lane;
use super::poller::Polled;
use super::publish::KafkaReplier;
use super::settle::Clients;
use super::state::list_of;
use super::Ordering;
use super::{Fetched, KafkaConsumer, KafkaRoute, Partition, Record, COMMIT_INTERVAL};
use crate::config::Delivery;

impl KafkaRoute {
    /// Takes records until `stop`: each one gets a `max_in_flight` permit and joins its lane
    /// (`take`); finished offsets are committed every [`COMMIT_INTERVAL`].
    pub(super) async fn consume(
        self: &Arc<Self>,
        consumer: &Arc<KafkaConsumer>,
        records: &mut tokio::sync::mpsc::UnboundedReceiver<Polled>,
        clients: &Clients,
        tracker: &TaskTracker,
    ) {
        let mut paused: HashSet<Partition> = HashSet::new();
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        // Records that arrived while no permit was free (already tracked); taken first.
        let mut overflow: VecDeque<Fetched> = VecDeque::new();
        loop {
            while !overflow.is_empty() {
                let Ok(permit) = self.route.limit.try_slot() else {
                    break;
                };
                if let Some(record) = overflow.pop_front() {
                    self.take(record, permit, clients, tracker);
                }
            }
            let saturated = !overflow.is_empty() || self.route.limit.available() == 0;
            let breaker = &self.route.invoker.breaker;
            let circuit_open = breaker.admits().is_err();
            self.update_pauses(consumer, &mut paused, saturated, circuit_open);
            // Paused partitions resume on an event, not a timer: a free permit, the breaker
            // admitting calls again, or a record's retry wait ending.
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = commit_tick.tick() => self.commit(consumer).await,
                polled = records.recv() => match polled {
                    Some(Ok(record)) => {
                        match self.route.limit.try_slot() {
                            Ok(permit) if overflow.is_empty() => self.take(record, permit, clients, tracker),
                            _ => {
                                self.route.metrics.throttled.increment(1);
                                overflow.push_back(record);
                            }
                        }
                    }
                    Some(Err(e)) => warn!(route = %self.route.name, error = %e, "Kafka consumer error"),
                    None => {
                        error!(route = %self.route.name, "the Kafka consumer thread ended");
                        break;
                    }
                },
                permit = self.route.limit.slot(), if saturated => {
                    if let (Some(permit), Some(record)) = (permit, overflow.pop_front()) {
                        self.take(record, permit, clients, tracker);
                    }
                }
                _ = breaker.admitted(), if circuit_open => {}
                // A record started or ended waiting for a retry.
                _ = self.shared.retrying_changed.notified() => {}
            }
        }
        // Tracked but never started: they hold the commit back, so the next owner (or a
        // restart) consumes them.
        drop(overflow);
    }

    /// Starts a tracked record: queues it in its lane, or starts the lane's worker.
    fn take(
        self: &Arc<Self>,
        fetched: Fetched,
        permit: crate::pipeline::Slot,
        clients: &Clients,
        tracker: &TaskTracker,
    ) {
        let partition = (fetched.topic.clone(), fetched.partition);
        let mut state = self.shared.lock();
        match state.partitions.get(&partition) {
            Some(ps) if ps.generation == fetched.generation && !ps.revoking => {}
            // Revoked or rewound since it arrived: the new position fetches it again.
            _ => return,
        }
        let generation = fetched.generation;
        let record = Record {
            fetched,
            _permit: permit,
            _taken: self.route.take(),
        };
        let lane = match self.config.ordering {
            Ordering::Partition => Lane::Partition(partition, generation),
            Ordering::Key => match &record.key {
                Some(key) => Lane::Key(partition, generation, key.clone()),
                None => Lane::Record(partition, generation, record.offset),
            },
            Ordering::Unordered => Lane::Record(partition, generation, record.offset),
        };
        let Some(record) = state.lanes.push(lane.clone(), record) else {
            // Queued behind the lane's running record.
            return;
        };
        if let Some(ps) = state.partitions.get_mut(lane.partition()) {
            ps.workers += 1;
        }
        drop(state);
        let this = self.clone();
        let clients = clients.clone();
        tracker.spawn(async move { this.work(lane, record, clients).await });
    }

    /// Pauses every partition while the route is saturated or its circuit is open, and the
    /// partitions whose records hold back too much behind retries (`lanes.rs`); resumes the
    /// rest.
    fn update_pauses(
        &self,
        consumer: &KafkaConsumer,
        paused: &mut HashSet<Partition>,
        saturated: bool,
        circuit_open: bool,
    ) {
        let (wanted, assigned): (HashSet<Partition>, HashSet<Partition>) = {
            let state = self.shared.lock();
            // The common case, once per record: nothing paused and nothing to pause.
            if paused.is_empty() && !saturated && !circuit_open && !state.lanes.any_held() {
                return;
            }
            let holding = state.lanes.to_pause();
            let wanted = state
                .partitions
                .keys()
                .filter(|p| saturated || circuit_open || holding.contains(*p))
                .cloned()
                .collect();
            (wanted, state.partitions.keys().cloned().collect())
        };
        // Revoked partitions were resumed by the rebalance callback: forget them.
        paused.retain(|p| assigned.contains(p));
        let to_pause: Vec<Partition> = wanted.difference(paused).cloned().collect();
        let to_resume: Vec<Partition> = paused.difference(&wanted).cloned().collect();
        if !to_pause.is_empty() && consumer.pause(&list_of(&to_pause)).is_ok() {
            debug!(route = %self.route.name, partitions = ?to_pause, circuit_open, saturated, "paused");
        }
        if !to_resume.is_empty() && consumer.resume(&list_of(&to_resume)).is_ok() {
            debug!(route = %self.route.name, partitions = ?to_resume, "resumed");
        }
        *paused = wanted;
    }

    /// Commits the finished prefix (asynchronously), or, exactly-once, runs a transaction
    /// (blocking, so on the blocking pool; the intake waits for it).
    pub(super) async fn commit(&self, consumer: &Arc<KafkaConsumer>) {
        if self.delivery != Delivery::ExactlyOnce {
            return self.commit_finished(consumer);
        }
        let (shared, consumer) = (self.shared.clone(), consumer.clone());
        let transacted = tokio::task::spawn_blocking(move || shared.transact(&*consumer)).await;
        if let Err(e) = transacted {
            error!(route = %self.route.name, error = %e, "transaction task failed");
        }
    }

    /// At-least-once and at-most-once: an asynchronous commit of the finished prefix.
    pub(super) fn commit_finished(&self, consumer: &KafkaConsumer) {
        let commits = self.shared.commits(None, false);
        if commits.count() > 0 {
            if let Err(e) = consumer.commit(&commits, CommitMode::Async) {
                warn!(route = %self.route.name, error = %e, "offset commit failed; will retry");
                self.shared.commit_failed();
            }
        }
    }

    /// Stop fetching, let in-flight records finish, commit synchronously, flush replies.
    pub(super) async fn shut_down(
        &self,
        consumer: &Arc<KafkaConsumer>,
        records: &mut tokio::sync::mpsc::UnboundedReceiver<Polled>,
        replier: &Arc<KafkaReplier>,
    ) {
        let all: Vec<Partition> = self.shared.lock().partitions.keys().cloned().collect();
        let _ = consumer.pause(&list_of(&all));
        // Records waiting for a retry give up now (`stop` is cancelled); running ones finish.
        self.shared.wake.notify_waiters();
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
            // The thread keeps polling, so the group keeps this member while work finishes;
            // records still arriving are tracked, never started, and hold the commit back.
            tokio::select! {
                _ = records.recv() => {}
                _ = self.shared.worker_ended.notified() => {}
            }
        }
        let route = self.route.name.clone();
        let exactly_once = self.delivery == Delivery::ExactlyOnce;
        let (shared, consumer, replier) = (self.shared.clone(), consumer.clone(), replier.clone());
        let finished = tokio::task::spawn_blocking(move || {
            if exactly_once {
                shared.transact(&*consumer);
            } else {
                let commits = shared.commits(None, true);
                if commits.count() > 0 {
                    if let Err(e) = consumer.commit(&commits, CommitMode::Sync) {
                        warn!(%route, error = %e, "final offset commit failed");
                    }
                }
            }
            if let Err(e) = replier.flush(Duration::from_secs(5)) {
                warn!(%route, error = %e, "producer flush failed");
            }
        })
        .await;
        if let Err(e) = finished {
            error!(route = %self.route.name, error = %e, "final commit task failed");
        }
    }
}
