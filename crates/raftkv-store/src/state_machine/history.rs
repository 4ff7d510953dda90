//! `WatchHistory`: the recent changes of the applied state, in revision order, for watchers.
//!
//! Every `apply` records the changes it made here while it still holds the state's write lock,
//! so the history and the state always agree on the revision. A watcher keeps a cursor (the
//! next revision it wants), reads the events from there, and waits for the store revision to
//! move (a `tokio::sync::watch` channel) when it has seen them all.
//!
//! The history is bounded — by revisions (`StoreConfig::watch_history_revisions`) and by bytes
//! (`StoreConfig::watch_history_bytes`) — and forgets whole revisions from the oldest end. It
//! is kept in memory: after a restart or a snapshot install it starts at the node's revision
//! at that moment. A watcher asking for a revision it no longer holds gets
//! [`HistoryError::Compacted`] with the oldest one it does hold.

use std::collections::{BTreeMap, VecDeque};

use crate::command::KeyValue;

/// What a change did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key. For a delete, `kv` holds the key and the delete's revision as its
/// `mod_revision` (value empty, versions 0). `prev_kv` is the key-value before the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }

    fn size(&self) -> usize {
        let kv = |kv: &KeyValue| kv.key.len() + kv.value.len() + 40;
        kv(&self.kv) + self.prev_kv.as_ref().map_or(0, kv)
    }
}

/// Why the history cannot serve a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("revision {wanted} is no longer in this node's watch history; the oldest it holds is {oldest}")]
    Compacted { wanted: u64, oldest: u64 },
}

/// A batch of events read from the history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRead {
    /// Events in revision order; a revision's events are never split between reads.
    pub events: Vec<Event>,
    /// The reader has now seen every change up to this revision: read next from one after it.
    pub seen_up_to: u64,
    /// More changes were held than returned: read again at once.
    pub more: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct WatchHistory {
    events: VecDeque<Event>,
    /// Every change with a revision at or after this one is held (it is `revision + 1` while
    /// none is).
    first: u64,
    /// The store revision as of the last record: the latest change.
    revision: u64,
    bytes: usize,
    max_revisions: u64,
    max_bytes: usize,
}

impl WatchHistory {
    /// An empty history of a store at `revision`, keeping at most `max_revisions` revisions and
    /// about `max_bytes` of keys and values.
    pub fn new(revision: u64, max_revisions: u64, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            first: revision + 1,
            revision,
            bytes: 0,
            max_revisions: max_revisions.max(1),
            max_bytes,
        }
    }

    /// The oldest revision a watcher can start from.
    pub fn oldest(&self) -> u64 {
        self.first
    }

    /// The store revision the history is up to.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Records the changes of one apply (in revision order) and that the store is now at
    /// `revision`, forgetting the oldest revisions past the bounds.
    pub fn record(&mut self, events: Vec<Event>, revision: u64) {
        for event in events {
            self.bytes += event.size();
            self.events.push_back(event);
        }
        self.revision = revision;
        while let Some(oldest) = self.events.front().map(Event::revision) {
            let too_many = revision.saturating_sub(oldest) >= self.max_revisions;
            if !too_many && self.bytes <= self.max_bytes {
                break;
            }
            while self.events.front().is_some_and(|e| e.revision() == oldest) {
                if let Some(gone) = self.events.pop_front() {
                    self.bytes = self.bytes.saturating_sub(gone.size());
                }
            }
            self.first = oldest + 1;
        }
        if self.events.is_empty() {
            self.first = revision + 1;
        }
    }

    /// Forgets everything: the state was replaced wholesale (a snapshot install) and is now at
    /// `revision`.
    pub fn reset(&mut self, revision: u64) {
        self.events.clear();
        self.bytes = 0;
        self.revision = revision;
        self.first = revision + 1;
    }

    /// Rolls `kvs` — the current key-values of the keys for which `in_range` holds — back to
    /// revision `at` by undoing, newest first, every change after it. `Compacted` (with the
    /// oldest revision it can roll back to) when the history no longer holds all of them.
    pub fn roll_back(
        &self,
        kvs: &mut BTreeMap<Vec<u8>, KeyValue>,
        at: u64,
        in_range: impl Fn(&[u8]) -> bool,
    ) -> Result<(), HistoryError> {
        if at + 1 < self.first {
            return Err(HistoryError::Compacted {
                wanted: at,
                oldest: self.first - 1,
            });
        }
        for event in self.events.iter().rev().take_while(|e| e.revision() > at) {
            if !in_range(&event.kv.key) {
                continue;
            }
            match &event.prev_kv {
                Some(prev) => kvs.insert(prev.key.clone(), prev.clone()),
                None => kvs.remove(&event.kv.key),
            };
        }
        Ok(())
    }

    /// The events from revision `from` on, at most about `max_events` of them (whole revisions;
    /// at least one revision when there is one).
    pub fn read(&self, from: u64, max_events: usize) -> Result<HistoryRead, HistoryError> {
        if from < self.first {
            return Err(HistoryError::Compacted {
                wanted: from,
                oldest: self.first,
            });
        }
        let start = self.events.partition_point(|e| e.revision() < from);
        let mut events: Vec<Event> = Vec::new();
        for event in self.events.range(start..) {
            let last = events.last().map(Event::revision);
            if events.len() >= max_events && last != Some(event.revision()) {
                let seen_up_to = last.unwrap_or(self.revision);
                return Ok(HistoryRead {
                    events,
                    seen_up_to,
                    more: true,
                });
            }
            events.push(event.clone());
        }
        Ok(HistoryRead {
            events,
            seen_up_to: self.revision.max(from.saturating_sub(1)),
            more: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: u64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
            prev_kv: None,
        }
    }

    fn revisions(read: &HistoryRead) -> Vec<u64> {
        read.events.iter().map(Event::revision).collect()
    }

    #[test]
    fn a_new_history_serves_only_what_comes_next() {
        let mut h = WatchHistory::new(10, 100, 1 << 20);
        assert_eq!(h.read(10, 10), Err(HistoryError::Compacted { wanted: 10, oldest: 11 }));
        let idle = h.read(11, 10).unwrap();
        assert_eq!((idle.events.len(), idle.seen_up_to), (0, 10));
        h.record(vec![put("a", 11), put("b", 12)], 12);
        assert_eq!(revisions(&h.read(11, 10).unwrap()), vec![11, 12]);
        assert_eq!(h.read(12, 10).unwrap().seen_up_to, 12);
    }

    #[test]
    fn reads_stop_between_revisions_never_inside_one() {
        let mut h = WatchHistory::new(0, 100, 1 << 20);
        h.record(vec![put("a", 1), put("b", 2), put("c", 2), put("d", 3)], 3);
        let first = h.read(1, 2).unwrap();
        assert_eq!(
            (revisions(&first), first.seen_up_to, first.more),
            (vec![1, 2, 2], 2, true)
        );
        let rest = h.read(first.seen_up_to + 1, 2).unwrap();
        assert_eq!((revisions(&rest), rest.seen_up_to, rest.more), (vec![3], 3, false));
    }

    #[test]
    fn the_oldest_revisions_go_first_past_either_bound() {
        let mut h = WatchHistory::new(0, 3, 1 << 20);
        for r in 1..=5 {
            h.record(vec![put("k", r)], r);
        }
        assert_eq!(h.oldest(), 3);
        assert_eq!(revisions(&h.read(3, 10).unwrap()), vec![3, 4, 5]);
        assert!(matches!(h.read(2, 10), Err(HistoryError::Compacted { oldest: 3, .. })));

        let one_event = put("k", 1).size();
        let mut small = WatchHistory::new(0, 1000, 2 * one_event);
        for r in 1..=4 {
            small.record(vec![put("k", r)], r);
        }
        assert_eq!(small.oldest(), 3, "kept by bytes: the last two");
    }

    #[test]
    fn a_reset_starts_over_at_the_new_revision() {
        let mut h = WatchHistory::new(0, 100, 1 << 20);
        h.record(vec![put("a", 1)], 1);
        h.reset(50);
        assert_eq!(h.oldest(), 51);
        assert!(h.read(2, 10).is_err());
        assert_eq!(h.read(51, 10).unwrap().seen_up_to, 50);
    }
}
