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
}

impl OffsetTracker {
    /// A record was taken from the partition.
    pub fn taken(&mut self, offset: i64) {
        self.unfinished.insert(offset);
        self.highest = Some(self.highest.map_or(offset, |h| h.max(offset)));
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
