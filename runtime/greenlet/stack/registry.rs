//! The process-global registry of stack arenas: what the SIGSEGV/SIGBUS handler looks up
//! to tell a fault in a greenlet's guard page from any other fault.
//!
//! A fixed array of entries made of atomics, each a seqlock: the pools write them when
//! they map and unmap arenas, the handler reads them (on any thread, at any time) and
//! never sees a torn entry nor takes a lock.

use std::sync::atomic::{AtomicUsize, Ordering, fence};

/// Most arenas registered at once (an arena mapped past that is not registered: an
/// overflow there is reported as an ordinary fault).
const REGISTRY_CAP: usize = 4096;

/// One registered arena. All fields are atomics, so a racing read is never UB; `seq`
/// is a seqlock (odd while being written) so the handler never uses a torn entry.
/// `start == 0` means the entry is free.
struct RegEntry {
    seq: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    slot_size: AtomicUsize,
    guard_size: AtomicUsize,
}

impl RegEntry {
    const fn new() -> Self {
        Self {
            seq: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            slot_size: AtomicUsize::new(0),
            guard_size: AtomicUsize::new(0),
        }
    }
}

static REGISTRY: [RegEntry; REGISTRY_CAP] = [const { RegEntry::new() }; REGISTRY_CAP];
/// One past the highest entry ever claimed; readers scan `0..REGISTRY_HIGH`.
static REGISTRY_HIGH: AtomicUsize = AtomicUsize::new(0);

/// Records an arena; `None` if the registry is full (overflows there go unreported).
pub(super) fn register_arena(
    start: usize,
    end: usize,
    slot_size: usize,
    guard_size: usize,
) -> Option<usize> {
    for (i, e) in REGISTRY.iter().enumerate() {
        let s = e.seq.load(Ordering::Relaxed);
        if s & 1 != 0 || e.start.load(Ordering::Relaxed) != 0 {
            continue;
        }
        if e.seq
            .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // We own the entry while `seq` is odd.
        if e.start.load(Ordering::Relaxed) != 0 {
            e.seq.store(s + 2, Ordering::Release);
            continue;
        }
        REGISTRY_HIGH.fetch_max(i + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        e.end.store(end, Ordering::Relaxed);
        e.slot_size.store(slot_size, Ordering::Relaxed);
        e.guard_size.store(guard_size, Ordering::Relaxed);
        e.start.store(start, Ordering::Relaxed);
        e.seq.store(s + 2, Ordering::Release);
        return Some(i);
    }
    None
}

/// Frees a registry entry returned by [`register_arena`] (before its arena is unmapped).
pub(super) fn unregister_arena(i: usize) {
    let e = &REGISTRY[i];
    let s = e.seq.fetch_add(1, Ordering::Relaxed);
    fence(Ordering::Release);
    e.start.store(0, Ordering::Relaxed);
    e.seq.store(s + 2, Ordering::Release);
}

/// If `addr` lies in the guard page of a registered slot, returns
/// `(slot_start, slot_size, guard_size)`. Called from the SIGSEGV handler, so it is
/// async-signal-safe: it only loads atomics (no lock, no allocation, no syscall).
pub(super) fn find_guard(addr: usize) -> Option<(usize, usize, usize)> {
    let high = REGISTRY_HIGH.load(Ordering::Acquire).min(REGISTRY_CAP);
    for e in &REGISTRY[..high] {
        let s1 = e.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            continue;
        }
        let start = e.start.load(Ordering::Relaxed);
        let end = e.end.load(Ordering::Relaxed);
        let slot = e.slot_size.load(Ordering::Relaxed);
        let guard = e.guard_size.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != s1 || start == 0 || slot == 0 {
            continue;
        }
        if (start..end).contains(&addr) {
            let off = (addr - start) % slot;
            return (off < guard).then_some((addr - off, slot, guard));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use corosensei::stack::Stack as _;

    use super::super::guard::GuardMode;
    use super::super::pool::StackPool;
    use super::super::{MIN_STACK_SIZE, page_size};
    use super::*;

    #[test]
    fn registry_finds_guards_only() {
        let mut pool = StackPool::with_mode(GuardMode::Mprotect);
        let stack = pool.get(MIN_STACK_SIZE).unwrap();
        let lim = stack.limit().get();
        assert_eq!(
            find_guard(lim + 5),
            Some((lim, page_size() + MIN_STACK_SIZE, page_size()))
        );
        assert_eq!(find_guard(lim + page_size()), None);
        drop(stack);
        drop(pool);
        assert_eq!(
            find_guard(lim + 5),
            None,
            "dropped arenas leave the registry"
        );
    }

    #[test]
    fn entries_are_reused_after_unregistering() {
        let a = register_arena(0x1000_0000, 0x1001_0000, 0x8000, 0x1000).unwrap();
        assert_eq!(find_guard(0x1000_8010), Some((0x1000_8000, 0x8000, 0x1000)));
        unregister_arena(a);
        assert_eq!(find_guard(0x1000_8010), None);
        let b = register_arena(0x2000_0000, 0x2001_0000, 0x8000, 0x1000).unwrap();
        assert_eq!(find_guard(0x2000_0010), Some((0x2000_0000, 0x8000, 0x1000)));
        unregister_arena(b);
    }
}
