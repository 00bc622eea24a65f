//! Timers: a calendar of deadline buckets over a slab of live entries.
//!
//! Deadlines are kept to the nanosecond, and grouped by tick (2^20 ns, about 1 ms).
//! Ticks within [`WINDOW`] ticks of the cursor go into a bucket each (a plain vector,
//! appended to in O(1)); later ones wait in an overflow heap until the window reaches
//! them. The earliest bucket is moved into a small heap (`near`) ordered by exact
//! deadline when it is needed, so timers still fire in deadline order, and a million
//! pending timers cost one append each and one small-heap pop each, with no walk of a
//! million-entry heap (see `examples/million.rs`).
//!
//! Cancelling removes the slab entry and leaves the queued entry behind: stale entries
//! are skipped when they surface, and everything is compacted when they outnumber the
//! live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use slab::Slab;

/// log2 of a tick in ns.
const TICK_SHIFT: u32 = 20;
/// Ticks covered by buckets (about 2.1 s).
const WINDOW: u64 = 2048;
/// Words of the occupancy bitmap.
const WORDS: usize = (WINDOW / 64) as usize;

/// A handle to cancel a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey {
    slot: usize,
    generation: u64,
}

struct Entry<T> {
    generation: u64,
    deadline: Instant,
    value: T,
}

/// A queued timer: its deadline (ns since `Timers::base`), generation and slab slot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    deadline: u64,
    generation: u64,
    slot: usize,
}

impl Queued {
    fn tick(&self) -> u64 {
        self.deadline >> TICK_SHIFT
    }
}

pub(crate) struct Timers<T> {
    /// Deadlines are kept as ns since this instant.
    base: Instant,
    /// Queued timers of ticks before `cursor`, by deadline.
    near: BinaryHeap<Reverse<Queued>>,
    /// Bucket `t % WINDOW` holds the timers of tick `t`, for `cursor <= t < cursor +
    /// WINDOW` (empty until the first timer lands in one).
    buckets: Vec<Vec<Queued>>,
    /// Which buckets hold a timer.
    occupied: [u64; WORDS],
    /// Queued timers of ticks at or after `cursor + WINDOW`.
    overflow: BinaryHeap<Reverse<Queued>>,
    /// The first tick whose timers are not in `near`.
    cursor: u64,
    /// Queued entries, live or stale.
    queued: usize,
    live: Slab<Entry<T>>,
    next_generation: u64,
    /// A timer was added or removed since [`take_changed`](Timers::take_changed).
    changed: bool,
}

impl<T> Timers<T> {
    pub(crate) fn new() -> Self {
        Timers {
            base: Instant::now(),
            near: BinaryHeap::new(),
            buckets: Vec::new(),
            occupied: [0; WORDS],
            overflow: BinaryHeap::new(),
            cursor: 0,
            queued: 0,
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
        let slot = self.live.insert(Entry {
            generation,
            deadline,
            value,
        });
        // Deadlines before `base` (already due) count as `base`; the slab keeps the exact one.
        let ns = deadline.saturating_duration_since(self.base).as_nanos();
        self.queue(Queued {
            deadline: u64::try_from(ns).unwrap_or(u64::MAX),
            generation,
            slot,
        });
        self.queued += 1;
        TimerKey { slot, generation }
    }

    /// Cancels a timer; returns its value if it had neither fired nor been cancelled.
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<T> {
        match self.live.get(key.slot) {
            Some(e) if e.generation == key.generation => {
                self.changed = true;
                let value = self.live.remove(key.slot).value;
                if self.queued > 1024 && self.queued > 4 * self.live.len() {
                    self.compact();
                }
                Some(value)
            }
            _ => None,
        }
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        loop {
            if let Some(Reverse(q)) = self.near.peek() {
                match self.live.get(q.slot) {
                    Some(e) if e.generation == q.generation => return Some(e.deadline),
                    _ => {
                        self.near.pop();
                        self.queued -= 1;
                        continue;
                    }
                }
            }
            if !self.pull_next_tick() {
                return None;
            }
        }
    }

    /// Removes and returns one timer whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<T> {
        if self.next_deadline()? > now {
            return None;
        }
        // `next_deadline` left the earliest live timer on top of `near`.
        let Reverse(q) = self.near.pop()?;
        self.queued -= 1;
        self.changed = true;
        Some(self.live.remove(q.slot).value)
    }

    /// Puts a queued timer where its tick belongs.
    fn queue(&mut self, q: Queued) {
        let tick = q.tick();
        if tick < self.cursor {
            self.near.push(Reverse(q));
        } else if tick - self.cursor < WINDOW {
            if self.buckets.is_empty() {
                self.buckets.resize_with(WINDOW as usize, Vec::new);
            }
            let b = (tick % WINDOW) as usize;
            self.buckets[b].push(q);
            self.occupied[b / 64] |= 1 << (b % 64);
        } else {
            self.overflow.push(Reverse(q));
        }
    }

    /// Moves the timers of the earliest tick that has any into `near` (the cursor goes
    /// past it); false when no timer is queued outside `near`.
    fn pull_next_tick(&mut self) -> bool {
        let Some(tick) = self.first_occupied() else {
            // The window is empty: move it to the first overflowing timer.
            let Some(Reverse(q)) = self.overflow.peek() else {
                return false;
            };
            self.cursor = self.cursor.max(q.tick());
            self.refill();
            return true;
        };
        let b = (tick % WINDOW) as usize;
        self.occupied[b / 64] &= !(1 << (b % 64));
        self.cursor = tick + 1;
        let bucket = &mut self.buckets[b];
        if bucket.capacity() > 4096 {
            // A burst: give its memory back rather than keep it for every later round.
            self.near
                .extend(std::mem::take(bucket).into_iter().map(Reverse));
        } else {
            self.near.extend(bucket.drain(..).map(Reverse));
        }
        self.refill();
        true
    }

    /// Moves the overflowing timers that the window now covers into their buckets.
    fn refill(&mut self) {
        while let Some(Reverse(q)) = self.overflow.peek().copied() {
            if q.tick() >= self.cursor + WINDOW {
                break;
            }
            self.overflow.pop();
            self.queue(q);
        }
    }

    /// The earliest tick in the window whose bucket holds a timer.
    fn first_occupied(&self) -> Option<u64> {
        let start = (self.cursor % WINDOW) as usize;
        // The words from the cursor's on, then that word again for the bits before it.
        for i in 0..=WORDS {
            let w = (start / 64 + i) % WORDS;
            let bits = match i {
                0 => self.occupied[w] & (!0_u64 << (start % 64)),
                _ if i == WORDS => self.occupied[w] & !(!0_u64 << (start % 64)),
                _ => self.occupied[w],
            };
            if bits != 0 {
                let b = (w * 64 + bits.trailing_zeros() as usize) as u64;
                return Some(self.cursor + (b + WINDOW - start as u64) % WINDOW);
            }
        }
        None
    }

    fn is_live(&self, q: &Queued) -> bool {
        self.live
            .get(q.slot)
            .is_some_and(|e| e.generation == q.generation)
    }

    /// Drops every stale queued entry.
    fn compact(&mut self) {
        let near: Vec<_> = std::mem::take(&mut self.near)
            .into_vec()
            .into_iter()
            .filter(|Reverse(q)| self.is_live(q))
            .collect();
        self.near = BinaryHeap::from(near);
        let overflow: Vec<_> = std::mem::take(&mut self.overflow)
            .into_vec()
            .into_iter()
            .filter(|Reverse(q)| self.is_live(q))
            .collect();
        self.overflow = BinaryHeap::from(overflow);
        let mut buckets = std::mem::take(&mut self.buckets);
        for (b, bucket) in buckets.iter_mut().enumerate() {
            bucket.retain(|q| self.is_live(q));
            if bucket.is_empty() {
                self.occupied[b / 64] &= !(1 << (b % 64));
            }
        }
        self.buckets = buckets;
        self.queued = self.live.len();
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

    /// A small xorshift generator, for a reproducible mix of timers.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn fires_like_a_sorted_list_across_ticks_window_and_overflow() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        // (deadline, id) of the live timers, and the keys to cancel some of them.
        let mut expected = Vec::new();
        let mut keys = Vec::new();
        let mut now = t0;
        let mut fired = Vec::new();
        for round in 0..40_u64 {
            // Deadlines from the past to 12 s ahead: same tick, later ticks, the far side
            // of the window and the overflow; some exactly equal.
            for i in 0..500_u64 {
                let id = round * 1000 + i;
                let at = match next(&mut seed) % 4 {
                    0 => now + Duration::from_nanos(next(&mut seed) % 2_000_000),
                    1 => now + Duration::from_micros(next(&mut seed) % 3_000_000),
                    2 => now + Duration::from_millis(next(&mut seed) % 12_000),
                    _ => t0 + Duration::from_millis(round * 10),
                };
                keys.push((t.insert(at, id), at, id));
                expected.push((at, id));
            }
            for _ in 0..100 {
                let k = (next(&mut seed) as usize) % keys.len();
                let (key, at, id) = keys[k];
                let was_live = expected.contains(&(at, id));
                assert_eq!(t.cancel(key).is_some(), was_live);
                expected.retain(|e| *e != (at, id));
            }
            expected.sort();
            assert_eq!(t.len(), expected.len());
            assert_eq!(t.next_deadline(), expected.first().map(|e| e.0));
            now += Duration::from_millis(next(&mut seed) % 400);
            while let Some(id) = t.pop_expired(now) {
                let (at, want) = expected.remove(0);
                assert!(at <= now);
                // Equal deadlines fire in insertion order.
                assert_eq!(id, want);
                fired.push(id);
            }
            assert!(
                expected.first().is_none_or(|e| e.0 > now),
                "a due timer did not fire"
            );
        }
        while let Some(id) = t.pop_expired(now + Duration::from_secs(60)) {
            assert_eq!(id, expected.remove(0).1);
        }
        assert!(expected.is_empty() && t.len() == 0);
        assert_eq!(t.next_deadline(), None);
        assert!(!fired.is_empty());
    }

    #[test]
    fn a_timer_inserted_before_pulled_ones_fires_first() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.insert(t0 + Duration::from_secs(5), "late");
        // Looking moves the late timer's tick into the near heap.
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(5)));
        t.insert(t0 + Duration::from_millis(1), "early");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(1)));
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(6)), Some("early"));
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(6)), Some("late"));
    }

    #[test]
    fn a_lone_timer_anywhere_in_the_window_or_beyond_is_found() {
        let tick = Duration::from_nanos(1 << TICK_SHIFT);
        // After the cursor has moved to the middle of a bitmap word, a lone timer is
        // found at every distance: the cursor's own word, the words after it, the words
        // that wrap round before it, and the overflow past the window.
        for start in [0_u32, 37, 700, 2047] {
            for ahead in (0..WINDOW as u32 + 130).step_by(3) {
                let t0 = Instant::now();
                let mut t = Timers::new();
                t.insert(t0 + tick * start, "first");
                let passed = t0 + tick * (start + 1);
                assert_eq!(t.pop_expired(passed), Some("first"));
                let at = passed + tick * ahead;
                t.insert(at, "lone");
                assert_eq!(
                    t.next_deadline(),
                    Some(at),
                    "start {start}, {ahead} ticks on"
                );
                assert_eq!(t.pop_expired(at - Duration::from_nanos(1)), None);
                assert_eq!(t.pop_expired(at), Some("lone"));
            }
        }
    }
}
