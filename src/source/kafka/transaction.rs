//! Exactly-once (`delivery = "exactly_once"`): what finished records leave for the next
//! transaction, and the transaction that produces it and commits their offsets.
//!
//! A record's settle handle (`settle.rs`) stages its reply and dead letter here, and its ack
//! or term when it is finished; the pipeline is told `Confirmed::AtCommit` and counts none
//! of them. Every 200 ms (and on revoke and shutdown) [`Shared::transact`] takes what the
//! finished prefix of each partition staged, produces it and commits the matching offsets
//! in one transaction, and only then counts replies published, dead letters and
//! settlements. A transaction that fails is aborted and its partitions rewound: its records
//! are processed again and counted once, with the transaction that commits them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::publish::{KafkaReplier, TransactionError, TransactionRecord};
use super::settle::Output;
use super::state::{RouteContext, Shared};
use super::KafkaConfig;
use super::{OffsetTracker, Partition};
use crate::telemetry::metrics::{RouteMetrics, Settlement};

/// The transactional producer, and what it takes to make a new one when a fatal error
/// (such as being fenced) leaves the old one unusable.
pub(super) struct Transactions {
    pub producer: Mutex<Option<Arc<KafkaReplier>>>,
    /// Held through a whole transaction: the intake's periodic one (on the blocking pool)
    /// and a revoke's (on the consumer's thread) must not overlap on one producer.
    pub running: Mutex<()>,
    pub config: KafkaConfig,
    pub id: String,
}

/// What a staged output is, counted as such once its transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Produced {
    Reply,
    DeadLetter,
}

/// What a transaction carried, counted when it commits (and never when it aborts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tally {
    pub replies: u64,
    pub dead_letters: u64,
    pub acks: u64,
    pub terms: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.replies += other.replies;
        self.dead_letters += other.dead_letters;
        self.acks += other.acks;
        self.terms += other.terms;
    }

    fn count(self, metrics: &RouteMetrics) {
        metrics.replies_published.increment(self.replies);
        metrics.dead_letters.increment(self.dead_letters);
        metrics.settled_many(Settlement::Ack, self.acks);
        metrics.settled_many(Settlement::Term, self.terms);
    }
}

/// One record's part of the next transaction: its outputs, and what to count of it.
#[derive(Default)]
pub(super) struct Staged {
    outputs: Vec<Output>,
    tally: Tally,
}

impl Staged {
    pub fn output(&mut self, output: Output, produced: Produced) {
        self.outputs.push(output);
        match produced {
            Produced::Reply => self.tally.replies += 1,
            Produced::DeadLetter => self.tally.dead_letters += 1,
        }
    }

    /// The record is finished: `action` counts with its transaction.
    pub fn settled(&mut self, action: Settlement) {
        match action {
            Settlement::Ack => self.tally.acks += 1,
            Settlement::Term => self.tally.terms += 1,
            // Kafka's redelivery is local and counted at once; it stages nothing.
            Settlement::Nak | Settlement::InProgress => {}
        }
    }
}

/// What one transaction takes out of the shared state.
struct Transaction {
    outputs: Vec<Output>,
    /// The new commit position of each partition it advances.
    advanced: Vec<(Partition, i64)>,
    tally: Tally,
}

impl Shared {
    /// Stages `output` of the record at `offset` (of `generation`) for the next
    /// transaction; `false` when the record is no longer ours (revoked or rewound).
    pub fn stage(
        &self,
        partition: &Partition,
        generation: u64,
        offset: i64,
        output: Output,
        produced: Produced,
    ) -> bool {
        let mut state = self.lock();
        match state.partitions.get_mut(partition) {
            Some(ps) if ps.generation == generation => {
                ps.staged
                    .entry(offset)
                    .or_default()
                    .output(output, produced);
                true
            }
            _ => false,
        }
    }

    /// One transaction with the staged outputs of every finished prefix and the matching
    /// offsets. An abortable failure aborts it and rewinds those partitions to their last
    /// committed position, so their records are processed again; a fatal one also
    /// replaces the producer. Blocking.
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
        let Some(transaction) = self.next_transaction() else {
            return;
        };
        let records: Vec<TransactionRecord<'_>> = (transaction.outputs.iter())
            .map(|o| TransactionRecord {
                topic: &o.topic,
                key: o.key.as_deref(),
                headers: &o.headers,
                payload: &o.payload,
            })
            .collect();
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), position) in &transaction.advanced {
            let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(*position));
        }
        match producer.commit_transaction(&records, &offsets, &group) {
            Ok(()) => self.committed(transaction),
            Err(failure) => {
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
                let partitions: Vec<Partition> =
                    (transaction.advanced.into_iter()).map(|(p, _)| p).collect();
                self.rewind(consumer, &partitions);
            }
        }
    }

    /// Takes what the finished prefix of each partition staged since the last committed
    /// transaction; `None` when no partition moved.
    fn next_transaction(&self) -> Option<Transaction> {
        let mut transaction = Transaction {
            outputs: Vec::new(),
            advanced: Vec::new(),
            tally: Tally::default(),
        };
        let mut state = self.lock();
        for (partition, ps) in state.partitions.iter_mut() {
            let Some(position) = ps.tracker.position() else {
                continue;
            };
            if ps.committed.is_some_and(|c| c >= position) {
                continue;
            }
            // Records at and past the position are unfinished, or behind one: they wait.
            let later = ps.staged.split_off(&position);
            let done: BTreeMap<i64, Staged> = std::mem::replace(&mut ps.staged, later);
            for staged in done.into_values() {
                transaction.outputs.extend(staged.outputs);
                transaction.tally.add(staged.tally);
            }
            transaction.advanced.push((partition.clone(), position));
        }
        (!transaction.advanced.is_empty()).then_some(transaction)
    }

    /// The transaction committed: its partitions' new positions, and its counts.
    fn committed(&self, transaction: Transaction) {
        let mut state = self.lock();
        for (partition, position) in transaction.advanced {
            if let Some(ps) = state.partitions.get_mut(&partition) {
                ps.committed = Some(position);
            }
        }
        drop(state);
        transaction.tally.count(&self.metrics);
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

    /// Forgets all progress of `partitions` since their last committed position and seeks
    /// back to it. Records in flight there become stale.
    pub fn rewind<C: Consumer<RouteContext>>(&self, consumer: &C, partitions: &[Partition]) {
        let seeks = self.forget_since_commit(partitions);
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

    /// The state half of [`Self::rewind`]: a new generation, a fresh tracker, nothing
    /// staged (so nothing of it is ever counted); returns where to seek.
    fn forget_since_commit(&self, partitions: &[Partition]) -> Vec<(Partition, i64)> {
        let mut seeks = Vec::new();
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
        drop(state);
        self.wake.notify_waiters();
        seeks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kafka::lanes::Lanes;
    use bytes::Bytes;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    fn p() -> Partition {
        ("requests".to_string(), 0)
    }

    fn shared() -> (Shared, Snapshotter) {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let metrics = metrics::with_local_recorder(&recorder, || RouteMetrics::new("eos", "kafka"));
        let config: KafkaConfig = toml::from_str("brokers = \"127.0.0.1:1\"").unwrap();
        let transactions = Transactions {
            producer: Mutex::new(None),
            running: Mutex::new(()),
            config,
            id: "t".into(),
        };
        let shared = Shared::new("eos".into(), metrics, Some(transactions), Lanes::new(1));
        shared.assign(&[p()]);
        (shared, snapshotter)
    }

    fn reply() -> Output {
        Output {
            topic: "replies".into(),
            key: None,
            headers: Vec::new(),
            payload: Bytes::from_static(b"ok"),
        }
    }

    /// Counters drained since the last call, by name and `action` label.
    fn counts(snapshotter: &Snapshotter) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            if let DebugValue::Counter(n) = value {
                let key = key.key();
                let action = (key.labels()).find(|l| l.key() == "action");
                let name = match action {
                    Some(a) => format!("{}{{{}}}", key.name(), a.value()),
                    None => key.name().to_string(),
                };
                *counts.entry(name).or_default() += n;
            }
        }
        counts.retain(|_, n| *n > 0);
        counts
    }

    /// Takes `offsets` and settles them as the settle handle would: a reply and an ack
    /// each, but a dead letter and a term for `given_up`.
    fn process(shared: &Shared, offsets: &[i64], given_up: i64) {
        for offset in offsets {
            let generation = shared.track(&p(), *offset, false).expect("ours");
            let (produced, action) = match *offset == given_up {
                true => (Produced::DeadLetter, Settlement::Term),
                false => (Produced::Reply, Settlement::Ack),
            };
            assert!(shared.stage(&p(), generation, *offset, reply(), produced));
            assert!(shared.finish(&p(), generation, *offset, action));
        }
    }

    #[test]
    fn an_aborted_transaction_counts_nothing_and_the_one_that_commits_counts_once() {
        let (shared, snapshotter) = shared();
        process(&shared, &[0, 1, 2], 1);
        // Offset 3 is taken but runs on: it and what it staged wait for a later transaction.
        let generation = shared.track(&p(), 3, false).unwrap();
        assert!(shared.stage(&p(), generation, 3, reply(), Produced::Reply));

        let aborted = shared.next_transaction().expect("a transaction");
        assert_eq!(aborted.outputs.len(), 3);
        assert_eq!(aborted.advanced, [(p(), 3)]);
        // It aborts: the partition is rewound, its records come again.
        shared.forget_since_commit(&[p()]);
        assert!(counts(&snapshotter).is_empty(), "nothing counted on abort");
        assert!(
            !shared.finish(&p(), generation, 3, Settlement::Ack),
            "a record of the rewound generation is no longer ours"
        );
        assert!(
            !shared.stage(&p(), generation, 3, reply(), Produced::Reply),
            "nor can it stage"
        );

        // Processed again, all four finished this time; the transaction commits.
        process(&shared, &[0, 1, 2, 3], 1);
        let committed = shared.next_transaction().expect("a transaction");
        assert_eq!(committed.outputs.len(), 4);
        shared.committed(committed);
        let expected = BTreeMap::from([
            ("ricochet_dead_letters_total".to_string(), 1),
            ("ricochet_replies_published_total".to_string(), 3),
            ("ricochet_settlements_total{ack}".to_string(), 3),
            ("ricochet_settlements_total{term}".to_string(), 1),
        ]);
        assert_eq!(
            counts(&snapshotter),
            expected,
            "the committed records, once"
        );
        assert!(
            shared.next_transaction().is_none(),
            "nothing left to commit"
        );
    }

    #[test]
    fn a_record_counts_with_the_transaction_that_carries_its_offset() {
        let (shared, snapshotter) = shared();
        // 0 and 2 finish; 1 is still running, so only 0 can be committed.
        let g = shared.track(&p(), 0, false).unwrap();
        for offset in [1, 2] {
            shared.track(&p(), offset, false).unwrap();
        }
        for offset in [0, 2] {
            shared.stage(&p(), g, offset, reply(), Produced::Reply);
            shared.finish(&p(), g, offset, Settlement::Ack);
        }
        let first = shared.next_transaction().unwrap();
        assert_eq!(first.advanced, [(p(), 1)]);
        shared.committed(first);
        let counted = counts(&snapshotter);
        assert_eq!(counted["ricochet_replies_published_total"], 1);
        assert_eq!(counted["ricochet_settlements_total{ack}"], 1);
        // 1 finishes without a reply (none was asked for): 1 and 2 commit together.
        shared.finish(&p(), g, 1, Settlement::Ack);
        shared.committed(shared.next_transaction().unwrap());
        let counted = counts(&snapshotter);
        assert_eq!(counted["ricochet_replies_published_total"], 1);
        assert_eq!(counted["ricochet_settlements_total{ack}"], 2);
    }
}
