//! Timers: a binary min-heap of deadlines over a slab of live entries.
//!
//! Cancelling removes the slab entry and leaves the heap entry behind; stale heap
//! entries are skipped when they surface, and the heap is compacted when they
//! outnumber the live ones. Push and pop are O(log n), so a million pending timers
//! stay cheap (see `benches/hub.rs`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use slab::Slab;

/// A handle to cancel a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey {
    slot: usize,
    generation: u64,
}

struct Entry<T> {
    generation: u64,
    value: T,
}

pub(crate) struct Timers<T> {
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    live: Slab<Entry<T>>,
    next_generation: u64,
    /// A timer was added or removed since [`take_changed`](Timers::take_changed).
    changed: bool,
}

impl<T> Timers<T> {
    pub(crate) fn new() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            live: Slab::new(),
            next_generation: 0,
            changed: false,
        }
    }

    /// Has a timer been added or removed since the last call? (Then the earliest deadline
    /// may have moved.)
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Number of live (not fired, not cancelled) timers.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn insert(&mut self, deadline: Instant, value: T) -> TimerKey {
        self.next_generation += 1;
        self.changed = true;
        let generation = self.next_generation;
        let slot = self.live.insert(Entry { generation, value });
        self.heap.push(Reverse((deadline, generation, slot)));
        TimerKey { slot, generation }
    }

    /// Cancels a timer; returns its value if it had neither fired nor been cancelled.
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<T> {
        match self.live.get(key.slot) {
            Some(e) if e.generation == key.generation => {
                self.changed = true;
                let value = self.live.remove(key.slot).value;
                if self.heap.len() > 1024 && self.heap.len() > 4 * self.live.len() {
                    self.compact();
                }
                Some(value)
            }
            _ => None,
        }
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, generation, slot))) = self.heap.peek().copied() {
            if self.is_live(generation, slot) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns one timer whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<T> {
        while let Some(Reverse((deadline, generation, slot))) = self.heap.peek().copied() {
            if !self.is_live(generation, slot) {
                self.heap.pop();
                continue;
            }
            if deadline > now {
                return None;
            }
            self.heap.pop();
            self.changed = true;
            return Some(self.live.remove(slot).value);
        }
        None
    }

    fn is_live(&self, generation: u64, slot: usize) -> bool {
        self.live
            .get(slot)
            .is_some_and(|e| e.generation == generation)
    }

    fn compact(&mut self) {
        let live = &self.live;
        let kept: Vec<_> = self
            .heap
            .drain()
            .filter(|Reverse((_, g, s))| live.get(*s).is_some_and(|e| e.generation == *g))
            .collect();
        self.heap = BinaryHeap::from(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_order_and_skips_cancelled() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let _a = t.insert(t0 + Duration::from_millis(30), "a");
        let b = t.insert(t0 + Duration::from_millis(10), "b");
        let _c = t.insert(t0 + Duration::from_millis(20), "c");
        assert_eq!(t.cancel(b), Some("b"));
        assert_eq!(t.cancel(b), None, "cancelling twice is harmless");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(20)));
        let now = t0 + Duration::from_millis(25);
        assert_eq!(t.pop_expired(now), Some("c"));
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(1)), Some("a"));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn changed_reports_inserts_cancels_and_pops_once() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        assert!(!t.take_changed());
        let a = t.insert(t0, "a");
        assert!(t.take_changed());
        assert!(!t.take_changed(), "reported once");
        assert_eq!(t.next_deadline(), Some(t0));
        assert!(!t.take_changed(), "looking does not change anything");
        t.cancel(a);
        assert!(t.take_changed());
        t.insert(t0, "b");
        t.take_changed();
        assert_eq!(t.pop_expired(t0), Some("b"));
        assert!(t.take_changed());
    }

    #[test]
    fn compaction_keeps_live_timers() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let keys: Vec<_> = (0..5000)
            .map(|i| t.insert(t0 + Duration::from_micros(i), i))
            .collect();
        for k in &keys[..4900] {
            t.cancel(*k);
        }
        assert_eq!(t.live.len(), 100);
        let fired: Vec<_> =
            std::iter::from_fn(|| t.pop_expired(t0 + Duration::from_secs(1))).collect();
        assert_eq!(fired, (4900..5000).collect::<Vec<_>>());
    }
}
