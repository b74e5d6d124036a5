//! The waiting index: every queued message the scheduler is not working on, by the second it
//! is next due. It is all the scheduler keeps of a waiting message, so it is kept small: a
//! bucket per due second holds bare queue ids (16 bytes each), as a min-heap so that within a
//! second the oldest message (the smallest id) comes out first.
//!
//! Entries are wake-up calls, not the truth (the spool is): an entry may be stale (the
//! message was flushed, held or deleted since) or doubled, and the pass it wakes then finds
//! nothing due and changes nothing. That is what lets an operator's action or a restart
//! schedule a message without searching the index for its old entry.

use super::QueueId;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

#[derive(Debug, Default)]
pub(crate) struct WaitingIndex {
    /// Due second (Unix time) → the ids due then, smallest (oldest) first.
    buckets: BTreeMap<u64, BinaryHeap<Reverse<QueueId>>>,
    len: usize,
}

impl WaitingIndex {
    pub fn insert(&mut self, due: u64, id: QueueId) {
        self.buckets.entry(due).or_default().push(Reverse(id));
        self.len += 1;
    }

    /// Removes the entries of `ids` due at `due` (an operator's action moved them), in one pass
    /// over that second's bucket.
    pub fn remove(&mut self, due: u64, ids: &[QueueId]) {
        let Some(bucket) = self.buckets.get_mut(&due) else {
            return;
        };
        let before = bucket.len();
        bucket.retain(|Reverse(id)| !ids.contains(id));
        self.len -= before - bucket.len();
        if bucket.is_empty() {
            self.buckets.remove(&due);
        }
    }

    /// The earliest due second, if any entry waits.
    pub fn first_due(&self) -> Option<u64> {
        self.buckets.keys().next().copied()
    }

    /// Takes the oldest-due entry if it is due at `now`: the earliest second first, then the
    /// oldest message of that second.
    pub fn pop_due(&mut self, now: u64) -> Option<QueueId> {
        let mut first = self.buckets.first_entry()?;
        if *first.key() > now {
            return None;
        }
        let Reverse(id) = first.get_mut().pop()?;
        if first.get().is_empty() {
            first.remove();
        }
        self.len -= 1;
        Some(id)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The oldest message waiting (the smallest id: ids sort by arrival), looking once at each
    /// due second's smallest entry.
    pub fn oldest(&self) -> Option<QueueId> {
        self.buckets
            .values()
            .filter_map(|b| b.peek().map(|Reverse(id)| *id))
            .min()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::queue_id::sorted_ids as ids;

    #[test]
    fn the_earliest_second_first_then_the_oldest_message() {
        let all = ids(4);
        let mut index = WaitingIndex::default();
        index.insert(20, all[0]);
        index.insert(10, all[3]);
        index.insert(10, all[1]);
        index.insert(30, all[2]);
        assert_eq!(index.len(), 4);
        assert_eq!(index.first_due(), Some(10));
        assert_eq!(index.pop_due(5), None, "nothing before its time");
        assert_eq!(index.pop_due(25), Some(all[1]));
        assert_eq!(index.pop_due(25), Some(all[3]));
        assert_eq!(index.pop_due(25), Some(all[0]));
        assert_eq!(index.pop_due(25), None);
        assert_eq!(index.first_due(), Some(30));
        assert_eq!(index.pop_due(u64::MAX), Some(all[2]));
        assert!(index.is_empty());
        assert_eq!(index.first_due(), None);
    }

    #[test]
    fn removal_takes_only_the_named_entries_of_that_second() {
        let all = ids(3);
        let mut index = WaitingIndex::default();
        index.insert(10, all[0]);
        index.insert(10, all[1]);
        index.insert(20, all[2]);
        index.remove(20, &[all[0]]);
        index.remove(10, &[all[0], all[2]]);
        assert_eq!(index.len(), 2);
        assert_eq!(index.pop_due(30), Some(all[1]));
        assert_eq!(index.pop_due(30), Some(all[2]));
        index.insert(40, all[0]);
        index.remove(40, &[all[0]]);
        assert!(index.is_empty());
        assert_eq!(index.first_due(), None, "an emptied second is gone");
    }

    #[test]
    fn a_doubled_entry_comes_out_twice() {
        let all = ids(1);
        let mut index = WaitingIndex::default();
        index.insert(0, all[0]);
        index.insert(0, all[0]);
        assert_eq!(index.pop_due(0), Some(all[0]));
        assert_eq!(index.pop_due(0), Some(all[0]));
        assert_eq!(index.pop_due(0), None);
    }
}
