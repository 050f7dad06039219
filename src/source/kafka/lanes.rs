//! Which taken record runs when, and how much a record waiting for its retry holds back.
//!
//! Sits between the intake (`take`) and the lane workers (`work`): a record joins the lane
//! its ordering gives it; one worker runs a lane's records in order, and different lanes run
//! in parallel. A record that failed and waits out its retry backoff keeps its lane (the
//! records behind it, of its key, wait in memory), but not its partition: other lanes of the
//! partition keep being taken and processed.
//!
//! What waiting records hold is bounded: the waiting records and the records queued behind
//! them in their lanes are *held*. When the held records of all partitions reach the
//! route's `hold_limit`, every partition holding one is paused until one of them moves on
//! (its retry starts, or it is finished or dropped). With `ordering = "partition"` the limit
//! is 1: the lane is the partition, so nothing else of it could run anyway.
//!
//! Pure: no I/O, no clock. The invariant, property-tested: a partition's held count is
//! exactly the records of its waiting lanes (the waiting one and those queued behind it).

use std::collections::{HashMap, HashSet, VecDeque};

use super::Partition;

/// Which records must run one after another. The generation keeps lanes of an earlier
/// assignment or rewind apart from the current ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Lane {
    Partition(Partition, u64),
    Key(Partition, u64, Vec<u8>),
    Record(Partition, u64, i64),
}

impl Lane {
    pub fn partition(&self) -> &Partition {
        match self {
            Lane::Partition(p, _) | Lane::Key(p, _, _) | Lane::Record(p, _, _) => p,
        }
    }

    pub fn generation(&self) -> u64 {
        match self {
            Lane::Partition(_, g) | Lane::Key(_, g, _) | Lane::Record(_, g, _) => *g,
        }
    }
}

/// An active lane: one record running (held by its worker, not here) and those queued.
struct Queue<T> {
    queued: VecDeque<T>,
    /// The running record waits for its retry.
    waiting: bool,
}

impl<T> Queue<T> {
    /// What this lane holds back: the waiting record and everything behind it.
    fn held(&self) -> usize {
        if self.waiting {
            1 + self.queued.len()
        } else {
            0
        }
    }
}

/// The active lanes of a route, and the records held behind retries per partition.
pub(super) struct Lanes<T> {
    lanes: HashMap<Lane, Queue<T>>,
    held: HashMap<Partition, usize>,
    hold_limit: usize,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self::new(1)
    }
}

impl<T> Lanes<T> {
    /// `hold_limit`: how many records may be held behind retries (route-wide) before the
    /// partitions holding them pause; at least 1.
    pub fn new(hold_limit: usize) -> Self {
        Self {
            lanes: HashMap::new(),
            held: HashMap::new(),
            hold_limit: hold_limit.max(1),
        }
    }

    fn add_held(&mut self, partition: &Partition, by: usize) {
        if by > 0 {
            *self.held.entry(partition.clone()).or_default() += by;
        }
    }

    fn remove_held(&mut self, partition: &Partition, by: usize) {
        if let Some(held) = self.held.get_mut(partition) {
            *held = held.saturating_sub(by);
            if *held == 0 {
                self.held.remove(partition);
            }
        }
    }

    /// A record for `lane`: handed back when the lane was idle (the caller starts its
    /// worker with it), else queued behind the lane's running record.
    pub fn push(&mut self, lane: Lane, record: T) -> Option<T> {
        match self.lanes.get_mut(&lane) {
            Some(queue) => {
                queue.queued.push_back(record);
                let waiting = queue.waiting;
                if waiting {
                    self.add_held(lane.partition(), 1);
                }
                None
            }
            None => {
                let queue = Queue {
                    queued: VecDeque::new(),
                    waiting: false,
                };
                self.lanes.insert(lane, queue);
                Some(record)
            }
        }
    }

    /// The lane's running record is done (finished or given up): the next one to run, or
    /// `None`, and the lane is gone.
    pub fn next(&mut self, lane: &Lane) -> Option<T> {
        let queue = self.lanes.get_mut(lane)?;
        let held = queue.held();
        queue.waiting = false;
        let next = queue.queued.pop_front();
        if next.is_none() {
            self.lanes.remove(lane);
        }
        self.remove_held(lane.partition(), held);
        next
    }

    /// The lane's running record starts (`true`) or ends (`false`) waiting for its retry.
    /// A lane no longer here (released, rewound) is left alone.
    pub fn wait(&mut self, lane: &Lane, waiting: bool) {
        let Some(queue) = self.lanes.get_mut(lane) else {
            return;
        };
        if queue.waiting == waiting {
            return;
        }
        let before = queue.held();
        queue.waiting = waiting;
        let after = queue.held();
        if after > before {
            self.add_held(lane.partition(), after - before);
        } else {
            self.remove_held(lane.partition(), before - after);
        }
    }

    /// Drops the queued records of `partitions` (revoke): their running records end on
    /// their own, and their lanes with them.
    pub fn clear_queued(&mut self, partitions: &[Partition]) {
        let mut freed = Vec::new();
        for (lane, queue) in self.lanes.iter_mut() {
            if partitions.contains(lane.partition()) && queue.waiting {
                freed.push((lane.partition().clone(), queue.queued.len()));
            }
            if partitions.contains(lane.partition()) {
                queue.queued.clear();
            }
        }
        for (partition, by) in freed {
            self.remove_held(&partition, by);
        }
    }

    /// Forgets every lane of `partitions` (released or rewound): workers still running
    /// there find their lane gone and end.
    pub fn forget(&mut self, partitions: &[Partition]) {
        self.lanes
            .retain(|lane, _| !partitions.contains(lane.partition()));
        for partition in partitions {
            self.held.remove(partition);
        }
    }

    /// Records held behind retries on `partition`.
    #[cfg(test)]
    pub fn held(&self, partition: &Partition) -> usize {
        self.held.get(partition).copied().unwrap_or(0)
    }

    /// The partitions to pause because of what waiting records hold: those holding any,
    /// once the route's held records reach the limit.
    pub fn to_pause(&self) -> HashSet<Partition> {
        let total: usize = self.held.values().sum();
        if total < self.hold_limit {
            return HashSet::new();
        }
        self.held.keys().cloned().collect()
    }

    /// Whether any record waits for its retry (or is held behind one).
    pub fn any_held(&self) -> bool {
        !self.held.is_empty()
    }

    #[cfg(test)]
    fn recount(&self, partition: &Partition) -> usize {
        (self.lanes.iter())
            .filter(|(lane, _)| lane.partition() == partition)
            .map(|(_, queue)| queue.held())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn p(n: i32) -> Partition {
        ("t".to_string(), n)
    }

    fn key(partition: i32, key: &str) -> Lane {
        Lane::Key(p(partition), 1, key.as_bytes().to_vec())
    }

    #[test]
    fn a_waiting_key_holds_its_own_records_and_no_other_lane() {
        let mut lanes = Lanes::new(3);
        assert_eq!(
            lanes.push(key(0, "poison"), 10),
            Some(10),
            "idle lane: runs"
        );
        lanes.wait(&key(0, "poison"), true);
        assert_eq!(lanes.held(&p(0)), 1);
        assert!(lanes.to_pause().is_empty(), "under the limit: keep taking");
        assert_eq!(
            lanes.push(key(0, "a"), 11),
            Some(11),
            "another key runs at once"
        );
        assert_eq!(
            lanes.push(key(0, "poison"), 12),
            None,
            "queued behind the waiting one"
        );
        assert_eq!(lanes.held(&p(0)), 2);
        assert_eq!(lanes.push(key(0, "a"), 13), None, "behind a running record");
        assert_eq!(lanes.held(&p(0)), 2, "a running lane holds nothing back");
        assert_eq!(lanes.next(&key(0, "a")), Some(13));
        assert_eq!(lanes.next(&key(0, "a")), None);
        assert_eq!(lanes.push(key(0, "poison"), 14), None);
        assert_eq!(
            lanes.to_pause(),
            HashSet::from([p(0)]),
            "limit reached: pause"
        );
        lanes.wait(&key(0, "poison"), false);
        assert!(lanes.to_pause().is_empty(), "retry running: resume");
        assert_eq!(lanes.next(&key(0, "poison")), Some(12), "in order");
        assert_eq!(lanes.next(&key(0, "poison")), Some(14));
        assert_eq!(lanes.next(&key(0, "poison")), None);
        assert!(!lanes.any_held());
    }

    #[test]
    fn partition_ordering_pauses_at_the_first_waiting_record() {
        let mut lanes = Lanes::new(1);
        let lane = Lane::Partition(p(0), 1);
        assert_eq!(lanes.push(lane.clone(), 1), Some(1));
        assert!(lanes.to_pause().is_empty());
        lanes.wait(&lane, true);
        assert_eq!(lanes.to_pause(), HashSet::from([p(0)]));
    }

    #[test]
    fn the_limit_is_route_wide_and_pauses_only_partitions_that_hold() {
        let mut lanes = Lanes::new(2);
        for partition in 0..3 {
            lanes.push(key(partition, "k"), partition);
        }
        lanes.wait(&key(0, "k"), true);
        lanes.wait(&key(1, "k"), true);
        assert_eq!(lanes.to_pause(), HashSet::from([p(0), p(1)]));
    }

    #[test]
    fn revoke_and_release_free_what_was_held() {
        let mut lanes = Lanes::new(10);
        lanes.push(key(0, "k"), 1);
        lanes.push(key(0, "k"), 2);
        lanes.wait(&key(0, "k"), true);
        lanes.push(key(1, "k"), 3);
        lanes.wait(&key(1, "k"), true);
        assert_eq!(lanes.held(&p(0)), 2);
        lanes.clear_queued(&[p(0)]);
        assert_eq!(
            lanes.held(&p(0)),
            1,
            "the waiting record is still its worker's"
        );
        lanes.forget(&[p(0)]);
        assert_eq!(lanes.held(&p(0)), 0);
        lanes.wait(&key(0, "k"), false);
        assert_eq!(
            lanes.next(&key(0, "k")),
            None,
            "a forgotten lane stays gone"
        );
        assert_eq!(lanes.held(&p(1)), 1, "another partition keeps its own");
    }

    /// The scheduling as the intake and lane workers run it, on a paused clock: every
    /// record takes 10 ms; the poison key's records fail and wait 30 s for their retry
    /// (the first one fails twice). The intake takes a record every 20 ms, in order, but
    /// none while the partition is paused. Returns, per record, when it finished.
    async fn simulate(limit: usize, records: &[(String, u32)]) -> HashMap<u32, Duration> {
        use std::sync::{Arc, Mutex};
        use tokio::time::{sleep, Instant};
        let lanes: Arc<Mutex<Lanes<(String, u32)>>> = Arc::new(Mutex::new(Lanes::new(limit)));
        let changed = Arc::new(tokio::sync::Notify::new());
        let done: Arc<Mutex<HashMap<u32, Duration>>> = Arc::default();
        let start = Instant::now();
        let mut workers = Vec::new();
        for (k, n) in records.iter().cloned() {
            while !lanes.lock().unwrap().to_pause().is_empty() {
                changed.notified().await;
            }
            let lane = key(0, &k);
            let Some(first) = lanes.lock().unwrap().push(lane.clone(), (k, n)) else {
                sleep(Duration::from_millis(20)).await;
                continue;
            };
            let (lanes, changed, done) = (lanes.clone(), changed.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                let mut next = Some(first);
                while let Some((k, n)) = next {
                    let mut failures = if k == "poison" && n == 0 { 2 } else { 0 };
                    loop {
                        sleep(Duration::from_millis(10)).await;
                        if failures == 0 {
                            break;
                        }
                        failures -= 1;
                        lanes.lock().unwrap().wait(&lane, true);
                        changed.notify_one();
                        sleep(Duration::from_secs(30)).await;
                        lanes.lock().unwrap().wait(&lane, false);
                        changed.notify_one();
                    }
                    done.lock().unwrap().insert(n, start.elapsed());
                    next = lanes.lock().unwrap().next(&lane);
                    changed.notify_one();
                }
            }));
            sleep(Duration::from_millis(20)).await;
        }
        for worker in workers {
            worker.await.unwrap();
        }
        let done = done.lock().unwrap().clone();
        done
    }

    #[tokio::test(start_paused = true)]
    async fn other_keys_finish_while_a_poison_key_waits_out_its_backoff() {
        // The poison record, two more of its key, then 20 of other keys.
        let mut records: Vec<(String, u32)> = (0..3).map(|n| ("poison".into(), n)).collect();
        records.extend((0..20).map(|i| (format!("k{i}"), 100 + i)));
        let done = simulate(4, &records).await;
        for n in 100..120 {
            assert!(
                done[&n] < Duration::from_secs(1),
                "record {n} finished at {:?}",
                done[&n]
            );
        }
        assert!(
            done[&0] >= Duration::from_secs(60),
            "two 30 s waits: {:?}",
            done[&0]
        );
        assert!(
            done[&1] > done[&0] && done[&2] > done[&1],
            "its key stays in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_limit_the_partition_waits_for_the_retry() {
        // Limit 2: the poison record and one queued behind it pause the partition, so the
        // other keys wait for the poison record's retries to start (30 s each).
        let records =
            [("poison", 0), ("poison", 1), ("a", 100), ("b", 101)].map(|(k, n)| (k.to_string(), n));
        let done = simulate(2, &records).await;
        assert!(done[&100] >= Duration::from_secs(30), "{:?}", done[&100]);
        assert!(
            done[&100] < done[&0],
            "taken when the retry started, before it ended"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(i32, u8),
        Wait(i32, u8, bool),
        Next(i32, u8),
        Clear(i32),
        Forget(i32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2i32, 0..3u8).prop_map(|(p, k)| Op::Push(p, k)),
            3 => (0..2i32, 0..3u8, any::<bool>()).prop_map(|(p, k, w)| Op::Wait(p, k, w)),
            3 => (0..2i32, 0..3u8).prop_map(|(p, k)| Op::Next(p, k)),
            1 => (0..2i32).prop_map(Op::Clear),
            1 => (0..2i32).prop_map(Op::Forget),
        ]
    }

    proptest! {
        /// Whatever happens, the held counts are exactly what waiting lanes hold, every
        /// record of a lane comes out once and in order, and a pause happens exactly when
        /// the held records reach the limit.
        #[test]
        fn held_counts_stay_exact_and_lanes_keep_their_order(
            ops in prop::collection::vec(op(), 1..200),
            limit in 1usize..6,
        ) {
            let mut lanes: Lanes<u32> = Lanes::new(limit);
            let mut next_record = 0u32;
            // Per lane, the last record that came out (to run), to check the order.
            let mut last_out: HashMap<Lane, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Push(partition, k) => {
                        let lane = key(partition, &k.to_string());
                        next_record += 1;
                        if let Some(r) = lanes.push(lane.clone(), next_record) {
                            last_out.insert(lane, r);
                        }
                    }
                    Op::Wait(partition, k, on) => lanes.wait(&key(partition, &k.to_string()), on),
                    Op::Next(partition, k) => {
                        let lane = key(partition, &k.to_string());
                        if let Some(r) = lanes.next(&lane) {
                            let before = last_out.insert(lane, r);
                            prop_assert!(before.is_none_or(|b| b < r), "out of order");
                        }
                    }
                    Op::Clear(partition) => lanes.clear_queued(&[p(partition)]),
                    Op::Forget(partition) => lanes.forget(&[p(partition)]),
                }
                let mut total = 0;
                for partition in 0..2 {
                    prop_assert_eq!(lanes.held(&p(partition)), lanes.recount(&p(partition)));
                    total += lanes.held(&p(partition));
                }
                let paused = lanes.to_pause();
                if total >= limit {
                    for partition in 0..2 {
                        prop_assert_eq!(paused.contains(&p(partition)), lanes.held(&p(partition)) > 0);
                    }
                } else {
                    prop_assert!(paused.is_empty());
                }
            }
        }
    }
}
