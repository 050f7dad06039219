//! Which offset of a partition may be committed: the contiguous prefix of finished records.
//!
//! Records finish out of order (different keys run in parallel), but a committed offset
//! means "everything before this is done". So the commit position is the lowest offset still
//! unfinished, or one past the highest offset taken when all are finished. Offsets may have
//! gaps (compaction, transaction markers); only offsets actually taken count.

use std::collections::BTreeSet;

#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    /// Offsets taken and not finished yet.
    unfinished: BTreeSet<i64>,
    /// Highest offset taken so far.
    highest: Option<i64>,
    /// The last position handed out for commit.
    committed: Option<i64>,
    /// Set after ricochet seeks the partition back: records below the highest taken come
    /// again on purpose.
    rewound: bool,
}

impl OffsetTracker {
    /// A tracker for a partition ricochet has just seeked back: records already taken
    /// before the seek come again and are taken again.
    pub fn rewound() -> Self {
        Self {
            rewound: true,
            ..Self::default()
        }
    }

    /// A record was taken from the partition. `false`, and nothing changes, when it is not
    /// past the highest offset taken: the consumer fetched it a second time (librdkafka can
    /// go back to an earlier fetch position when a partition is paused and resumed while
    /// records are being polled), and the first copy is in hand or done already. After a
    /// rewind only a copy of a record still in hand is refused: the seek brings finished
    /// records back on purpose.
    pub fn taken(&mut self, offset: i64) -> bool {
        let twice = if self.rewound {
            self.unfinished.contains(&offset)
        } else {
            self.highest.is_some_and(|h| offset <= h)
        };
        if twice {
            return false;
        }
        self.unfinished.insert(offset);
        self.highest = Some(self.highest.map_or(offset, |h| h.max(offset)));
        true
    }

    /// A record is done (replied, dead-lettered, or refused for good).
    pub fn finished(&mut self, offset: i64) {
        self.unfinished.remove(&offset);
    }

    pub fn in_progress(&self) -> usize {
        self.unfinished.len()
    }

    /// The commit position (the next offset to consume) everything before which is finished.
    pub fn position(&self) -> Option<i64> {
        match self.unfinished.first() {
            Some(lowest) => Some(*lowest),
            None => self.highest.map(|h| h + 1),
        }
    }

    /// The last position handed out was not committed: hand it out again.
    pub fn commit_failed(&mut self) {
        self.committed = None;
    }

    /// The position to commit, if it moved since the last call.
    pub fn take_commit(&mut self) -> Option<i64> {
        let position = self.position()?;
        if self.committed.is_some_and(|c| c >= position) {
            return None;
        }
        self.committed = Some(position);
        Some(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_finished_prefix() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.take_commit(), None, "nothing taken");
        for offset in [10, 11, 12, 15] {
            t.taken(offset);
        }
        assert_eq!(
            t.take_commit(),
            Some(10),
            "nothing finished: stay at the first"
        );
        t.finished(11);
        t.finished(15);
        assert_eq!(t.take_commit(), None, "10 still runs");
        t.finished(10);
        assert_eq!(t.take_commit(), Some(12));
        t.finished(12);
        assert_eq!(t.take_commit(), Some(16), "the gap 13-14 was never taken");
        assert_eq!(t.take_commit(), None);
    }

    #[test]
    fn a_record_fetched_twice_is_taken_once() {
        let mut t = OffsetTracker::default();
        for offset in [10, 11, 12] {
            assert!(t.taken(offset));
        }
        t.finished(10);
        assert!(!t.taken(10), "finished already");
        assert!(!t.taken(11), "still in hand");
        assert!(t.taken(13), "a new record");
        t.finished(11);
        t.finished(12);
        t.finished(13);
        assert_eq!(
            t.take_commit(),
            Some(14),
            "the second copies hold nothing back"
        );
    }

    #[test]
    fn after_a_rewind_earlier_records_are_taken_again() {
        let mut t = OffsetTracker::rewound();
        assert!(t.taken(20), "a record fetched before the seek took effect");
        assert!(t.taken(15), "the seek's position");
        assert!(!t.taken(20), "still in hand");
        t.finished(20);
        assert!(t.taken(20), "fetched again after the seek");
        assert_eq!(t.take_commit(), Some(15));
    }

    proptest! {
        /// Whatever order records finish in, a commit never passes an unfinished offset,
        /// never goes backwards, and reaches the end once everything is finished.
        #[test]
        fn never_passes_an_unfinished_offset(
            gaps in prop::collection::vec(1i64..4, 1..60),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..60),
        ) {
            let mut offsets = Vec::new();
            let mut next = 100;
            for gap in gaps {
                offsets.push(next);
                next += gap;
            }
            let mut t = OffsetTracker::default();
            for offset in &offsets {
                t.taken(*offset);
            }
            let mut unfinished = offsets.clone();
            let mut last = None;
            for index in order {
                if unfinished.is_empty() {
                    break;
                }
                let offset = unfinished.remove(index.index(unfinished.len()));
                t.finished(offset);
                if let Some(position) = t.take_commit() {
                    prop_assert!(unfinished.iter().all(|u| *u >= position), "{position} passes {unfinished:?}");
                    prop_assert!(last.is_none_or(|l| position > l));
                    last = Some(position);
                }
            }
            for offset in unfinished.drain(..) {
                t.finished(offset);
            }
            t.take_commit();
            prop_assert_eq!(t.position(), Some(offsets.last().unwrap() + 1));
            prop_assert_eq!(t.in_progress(), 0);
        }
    }
}
