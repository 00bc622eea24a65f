//! The per-thread stack pool: size classes of slots carved from arenas, guard pages
//! installed in batches as slots are first handed out, freed stacks reused LIFO (warm)
//! and their memory given back once they stay unused.

use std::cell::RefCell;
use std::io;
use std::ptr;
use std::rc::Rc;

use corosensei::stack::StackPointer;

use super::guard::{GuardMode, MAX_BATCH, guard_mode, install_guards, release_ranges};
use super::registry::{register_arena, unregister_arena};
use super::{HEADER_SIZE, MIN_STACK_SIZE, Stack, page_size};

/// Free stacks per size class kept with their memory ("hot") at most: past
/// `HOT_LIMIT + RELEASE_BATCH`, the `RELEASE_BATCH` least recently freed get
/// `MADV_DONTNEED` in one call. Below it, free stacks are released by [`StackPool::trim`]
/// once they have stayed unused for a whole trim interval (the hub trims every second),
/// so a busy server reuses warm stacks and an idle one gives their memory back.
const HOT_LIMIT: usize = 16_384;
/// Free stacks whose memory is released in one call.
pub(super) const RELEASE_BATCH: usize = 64;
/// Most slots whose guard pages are installed in one call (see `PoolInner::take`).
const GUARD_BATCH: usize = 64;
const _: () = assert!(GUARD_BATCH <= MAX_BATCH && RELEASE_BATCH <= MAX_BATCH);
/// Slots in the first arena of a size class; each next arena doubles, up to the cap.
const FIRST_ARENA_SLOTS: usize = 16;
const MAX_ARENA_SLOTS: usize = 65_536;

/// The usable size of the stack [`StackPool::get`] hands out for a request of `size`
/// bytes: rounded up to whole pages, and to at least [`MIN_STACK_SIZE`].
pub(crate) fn usable_size_for(size: usize) -> io::Result<usize> {
    size.max(MIN_STACK_SIZE)
        .checked_next_multiple_of(page_size())
        .filter(|u| *u <= isize::MAX as usize / 2)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "stack size too large"))
}

/// Counters describing a [`StackPool`] (what the tests check).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolStats {
    /// Arenas (large mappings) made so far.
    pub(crate) arenas: usize,
    /// Slots in all arenas (capacity, carved or not).
    pub(crate) slots_total: usize,
    /// Stacks handed out and not yet returned.
    pub(crate) slots_in_use: usize,
    /// `slots_total - slots_in_use`: slots available without a new arena.
    pub(crate) slots_free: usize,
}

/// A per-thread pool of [`Stack`]s (keep one in a `thread_local`; it is `!Send`).
pub(crate) struct StackPool {
    inner: Rc<RefCell<PoolInner>>,
}

/// One `MAP_NORESERVE` mapping, carved into slots of one size class.
pub(super) struct Arena {
    start: usize,
    len: usize,
    slots: usize,
    /// Slots whose guard page is installed (`carved..guarded` are ready to hand out).
    guarded: usize,
    /// Slots handed out at least once (all of them have their guard).
    carved: usize,
    /// Its entry in the registry the overflow handler reads.
    registry: Option<usize>,
}

/// The stacks of one usable size.
pub(super) struct SizeClass {
    usable: usize,
    arenas: Vec<Arena>,
    /// Returned slots, LIFO; `free[..cold]` have had their memory released.
    free: Vec<usize>,
    cold: usize,
    /// The fewest hot free stacks seen since the last trim: that many went unused.
    low_water: usize,
}

/// What a [`StackPool`] and its [`Stack`]s share.
pub(super) struct PoolInner {
    /// See [`HOT_LIMIT`] (tests lower it).
    hot_limit: usize,
    mode: GuardMode,
    guard: usize,
    classes: Vec<SizeClass>,
    in_use: usize,
}

impl Default for StackPool {
    fn default() -> Self {
        Self::new()
    }
}

impl StackPool {
    /// An empty pool using the process-wide [`guard_mode`]. Maps nothing yet.
    pub(crate) fn new() -> Self {
        Self::with_mode(guard_mode())
    }

    /// An empty pool making guards with `mode` (tests use it to cover both modes).
    pub(crate) fn with_mode(mode: GuardMode) -> Self {
        StackPool {
            inner: Rc::new(RefCell::new(PoolInner {
                hot_limit: HOT_LIMIT,
                mode,
                guard: page_size(),
                classes: Vec::new(),
                in_use: 0,
            })),
        }
    }

    /// A stack with at least `size` usable bytes (rounded up to whole pages, and to at
    /// least [`MIN_STACK_SIZE`]). Reuses the most recently freed stack of that size or
    /// carves a new slot (installing its guard page) from an arena, mapping a new
    /// arena if needed. Errors if `mmap` or the guard install fails.
    pub(crate) fn get(&mut self, size: usize) -> io::Result<Stack> {
        let page = page_size();
        let usable = usable_size_for(size)?;
        let mut inner = self.inner.borrow_mut();
        let class = inner.class_index(usable);
        let slot = inner.take(class)?;
        inner.in_use += 1;
        drop(inner);
        let base = StackPointer::new(slot + page + usable - HEADER_SIZE)
            .expect("a slot lies above address 0");
        Ok(Stack {
            slot,
            usable,
            class,
            base,
            pool: Rc::clone(&self.inner),
        })
    }

    /// Returns a stack to its pool (the same as dropping it). Free stacks keep their
    /// memory until [`trim`](StackPool::trim) finds them unused for a whole interval, or
    /// more than [`HOT_LIMIT`] of a size are free; then they get `MADV_DONTNEED` over
    /// their usable part, 64 at a time, and stay in the free list.
    #[inline]
    pub(crate) fn put(&mut self, stack: Stack) {
        drop(stack);
    }

    /// How many free stacks of `usable` bytes (a size [`usable_size_for`] returns) the
    /// pool holds: slots [`get`](StackPool::get) hands out without carving a new one.
    pub(crate) fn free_count(&self, usable: usize) -> usize {
        let inner = self.inner.borrow();
        let class = inner.classes.iter().find(|c| c.usable == usable);
        class.map_or(0, |c| c.free.len())
    }

    /// Releases the memory of the free stacks that nobody took since the previous trim.
    pub(crate) fn trim(&mut self) {
        self.inner.borrow_mut().trim();
    }

    /// Keeps at most `n` free stacks of a size with their memory (tests lower it).
    #[cfg(test)]
    pub(super) fn set_hot_limit(&mut self, n: usize) {
        self.inner.borrow_mut().hot_limit = n;
    }

    /// Current counters.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> PoolStats {
        let inner = self.inner.borrow();
        let arenas = inner.classes.iter().flat_map(|c| &c.arenas);
        let slots_total = arenas.clone().map(|a| a.slots).sum();
        PoolStats {
            arenas: arenas.count(),
            slots_total,
            slots_in_use: inner.in_use,
            slots_free: slots_total - inner.in_use,
        }
    }
}

impl PoolInner {
    fn class_index(&mut self, usable: usize) -> usize {
        if let Some(i) = self.classes.iter().position(|c| c.usable == usable) {
            return i;
        }
        self.classes.push(SizeClass {
            usable,
            arenas: Vec::new(),
            free: Vec::new(),
            cold: 0,
            low_water: 0,
        });
        self.classes.len() - 1
    }

    /// A free slot of class `ci`: the most recently returned one, else a newly carved one.
    fn take(&mut self, ci: usize) -> io::Result<usize> {
        let (mode, guard) = (self.mode, self.guard);
        let class = &mut self.classes[ci];
        if let Some(slot) = class.free.pop() {
            class.cold = class.cold.min(class.free.len());
            class.low_water = class.low_water.min(class.free.len() - class.cold);
            return Ok(slot);
        }
        let slot_size = guard + class.usable;
        if class.arenas.last().is_none_or(|a| a.carved == a.slots) {
            let want = class
                .arenas
                .last()
                .map_or(FIRST_ARENA_SLOTS, |a| (a.slots * 2).min(MAX_ARENA_SLOTS));
            class.arenas.push(Arena::map(want, slot_size, guard)?);
        }
        let first_arena = class.arenas.len() == 1;
        let arena = class.arenas.last_mut().unwrap();
        if arena.carved == arena.guarded {
            // Guard the next slots in one go: as many as were carved so far (1, 1, 2, 4,
            // ... in the first arena, so a program with few greenlets guards few
            // slots), at most GUARD_BATCH.
            let want = if first_arena {
                arena.carved.max(1)
            } else {
                GUARD_BATCH
            };
            let count = want.min(GUARD_BATCH).min(arena.slots - arena.guarded);
            let first = arena.start + arena.guarded * slot_size;
            arena.guarded += install_guards(mode, first, slot_size, count, guard)?;
        }
        let slot = arena.start + arena.carved * slot_size;
        arena.carved += 1;
        Ok(slot)
    }

    /// Takes back the slot `slot` of class `ci` (a [`Stack`] being dropped).
    #[inline]
    pub(super) fn release(&mut self, ci: usize, slot: usize) {
        self.in_use -= 1;
        let (guard, hot_limit) = (self.guard, self.hot_limit);
        let class = &mut self.classes[ci];
        class.free.push(slot);
        if class.free.len() - class.cold >= hot_limit + RELEASE_BATCH {
            class.release_oldest_hot(RELEASE_BATCH, guard);
        }
    }

    fn trim(&mut self) {
        let guard = self.guard;
        for class in &mut self.classes {
            let mut unused = class.low_water.min(class.free.len() - class.cold);
            while unused > 0 {
                let n = unused.min(RELEASE_BATCH);
                class.release_oldest_hot(n, guard);
                unused -= n;
            }
            class.low_water = class.free.len() - class.cold;
        }
    }
}

impl SizeClass {
    /// Gives back the memory of the `n` (at most `RELEASE_BATCH`) least recently freed
    /// hot stacks, in one call.
    fn release_oldest_hot(&mut self, n: usize, guard: usize) {
        let mut ranges = [(0, 0); RELEASE_BATCH];
        let oldest_hot = &self.free[self.cold..self.cold + n];
        for (r, &s) in ranges.iter_mut().zip(oldest_hot) {
            *r = (s + guard, self.usable);
        }
        self.cold += n;
        // SAFETY: the usable parts (above the guard page, which is left alone) of free
        // slots: inside our arenas, owned by no `Stack`, so nothing references their
        // contents.
        unsafe { release_ranges(&ranges[..n]) };
    }
}

impl Arena {
    /// Maps an arena of (up to) `want` slots; halves the count if `mmap` fails.
    fn map(mut want: usize, slot_size: usize, guard: usize) -> io::Result<Arena> {
        loop {
            let len = want
                .checked_mul(slot_size)
                .ok_or(io::ErrorKind::InvalidInput)?;
            // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
            let p = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                let start = p as usize;
                let registry = register_arena(start, start + len, slot_size, guard);
                return Ok(Arena {
                    start,
                    len,
                    slots: want,
                    guarded: 0,
                    carved: 0,
                    registry,
                });
            }
            let err = io::Error::last_os_error();
            if want == 1 {
                return Err(err);
            }
            want /= 2;
        }
    }
}

impl Drop for PoolInner {
    /// Runs when the `StackPool` and every `Stack` from it are gone, so no stack in
    /// these arenas is in use. (A leaked `Stack` keeps the pool, and its arenas, alive.)
    fn drop(&mut self) {
        for arena in self.classes.iter().flat_map(|c| &c.arenas) {
            if let Some(i) = arena.registry {
                unregister_arena(i);
            }
            // SAFETY: the arena is our own mapping and nothing uses it any more (see
            // above); unmapping removes its guard pages too.
            unsafe { libc::munmap(arena.start as *mut _, arena.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use corosensei::Coroutine;
    use corosensei::stack::Stack as _;

    use super::super::DEFAULT_STACK_SIZE;
    use super::super::guard::{self, GuardMode, guard_mode};
    use super::super::registry::find_guard;
    use super::super::testing::{child_scenario, modes, recurse, run_child};
    use super::*;

    fn maps_lines() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    }

    /// Not a test by itself: the body of the re-executed child processes (each
    /// scenario passes by returning).
    #[test]
    fn child_main() {
        let Some((scenario, mode)) = child_scenario() else {
            return;
        };
        let mut pool = StackPool::with_mode(mode);
        match scenario.as_str() {
            "manystacks" => {
                // 100k stacks in one pool must add only a handful of mappings.
                let before = maps_lines();
                let t = std::time::Instant::now();
                let stacks: Vec<_> = (0..100_000)
                    .map(|_| pool.get(MIN_STACK_SIZE).unwrap())
                    .collect();
                let per = t.elapsed().as_secs_f64() * 1e6 / 100_000.0;
                let after = maps_lines();
                eprintln!(
                    "100k stacks: {per:.2} us/get; maps {before} -> {after}; {:?}",
                    pool.stats()
                );
                assert!(after < before + 16, "maps grew from {before} to {after}");
                assert_eq!(pool.stats().slots_in_use, 100_000);
                drop(stacks);
                drop(pool);
                assert!(maps_lines() <= before, "arenas not unmapped");
            }
            "mapcount" => {
                // mprotect guards split mappings: past vm.max_map_count, `get` must
                // fail cleanly (ENOMEM), not crash.
                let mut stacks = Vec::with_capacity(200_000);
                let err = loop {
                    match pool.get(MIN_STACK_SIZE) {
                        Ok(s) => stacks.push(s),
                        Err(e) => break e,
                    }
                    assert!(stacks.len() < 200_000, "no mapping limit hit");
                };
                eprintln!("mprotect: {} stacks, then: {err}", stacks.len());
                assert_eq!(err.raw_os_error(), Some(libc::ENOMEM));
                drop(stacks);
                assert!(
                    pool.get(MIN_STACK_SIZE).is_ok(),
                    "freed stacks are reusable"
                );
            }
            other => panic!("unknown scenario {other}"),
        }
    }

    #[test]
    fn reuse_is_lifo_and_sizes_rounded() {
        for mode in modes() {
            let mut pool = StackPool::with_mode(mode);
            let a = pool.get(1).unwrap();
            assert_eq!(a.usable_size(), MIN_STACK_SIZE);
            let b = pool.get(MIN_STACK_SIZE + 1).unwrap();
            assert_eq!(b.usable_size(), MIN_STACK_SIZE + page_size());
            let c = pool.get(DEFAULT_STACK_SIZE).unwrap();
            assert_eq!(c.usable_size(), DEFAULT_STACK_SIZE);
            assert_eq!(
                c.base().get() - c.limit().get(),
                page_size() + DEFAULT_STACK_SIZE - HEADER_SIZE
            );
            assert_eq!(c.base().get() % 16, 0);
            let (a_addr, c_addr) = (a.limit(), c.limit());
            pool.put(a);
            pool.put(c);
            assert_eq!(pool.get(100).unwrap().limit(), a_addr);
            let d = pool.get(DEFAULT_STACK_SIZE - 5).unwrap();
            assert_eq!(d.limit(), c_addr);
            // LIFO within a class.
            let e = pool.get(DEFAULT_STACK_SIZE).unwrap();
            let (d_addr, e_addr) = (d.limit(), e.limit());
            drop(d);
            drop(e);
            let e2 = pool.get(DEFAULT_STACK_SIZE).unwrap();
            let d2 = pool.get(DEFAULT_STACK_SIZE).unwrap();
            assert_eq!((e2.limit(), d2.limit()), (e_addr, d_addr));
            drop(b);
            assert!(pool.get(usize::MAX).is_err());
        }
    }

    #[test]
    fn stats_count_arenas_and_slots() {
        let mut pool = StackPool::with_mode(GuardMode::Mprotect);
        assert_eq!(pool.stats(), PoolStats::default());
        let stacks: Vec<_> = (0..17).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        let s = pool.stats();
        assert_eq!(
            s,
            PoolStats {
                arenas: 2,
                slots_total: 48,
                slots_in_use: 17,
                slots_free: 31
            }
        );
        drop(stacks);
        let other = pool.get(DEFAULT_STACK_SIZE).unwrap();
        let s = pool.stats();
        assert_eq!(
            s,
            PoolStats {
                arenas: 3,
                slots_total: 64,
                slots_in_use: 1,
                slots_free: 63
            }
        );
        drop(other);
        assert_eq!(pool.stats().slots_in_use, 0);
    }

    #[test]
    fn cold_stacks_are_released_but_reusable() {
        const HOT_LIMIT: usize = 64;
        let n = HOT_LIMIT + RELEASE_BATCH + 10;
        let mut pool = StackPool::with_mode(guard_mode());
        pool.inner.borrow_mut().hot_limit = HOT_LIMIT;
        let stacks: Vec<_> = (0..n).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        for s in &stacks {
            // SAFETY: the top usable byte of an owned stack.
            unsafe { ptr::write_volatile((s.base().get() - 1) as *mut u8, 1) };
        }
        let top_byte = |slot: usize| {
            // SAFETY: reading a free slot's usable area, mapped and unused.
            unsafe {
                ptr::read_volatile(
                    (slot + page_size() + MIN_STACK_SIZE - HEADER_SIZE - 1) as *const u8,
                )
            }
        };
        let first = stacks[0].limit().get();
        let last_released = stacks[RELEASE_BATCH - 1].limit().get();
        let first_kept = stacks[RELEASE_BATCH].limit().get();
        drop(stacks);
        {
            let inner = pool.inner.borrow();
            // One batch went cold once HOT_LIMIT + RELEASE_BATCH were free.
            assert_eq!(inner.classes[0].cold, RELEASE_BATCH);
            assert_eq!(inner.classes[0].free.len(), n);
        }
        // The first-freed stacks were released: their memory reads back as zero.
        assert_eq!(top_byte(first), 0);
        assert_eq!(top_byte(last_released), 0);
        // Later ones kept theirs.
        assert_eq!(top_byte(first_kept), 1);
        let all: Vec<_> = (0..n).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        assert_eq!(pool.inner.borrow().classes[0].cold, 0);
        assert_eq!(pool.stats().slots_in_use, n);
        drop(all);
    }

    #[test]
    fn trim_releases_only_stacks_unused_for_a_whole_interval() {
        let mut pool = StackPool::with_mode(guard_mode());
        let stacks: Vec<_> = (0..100)
            .map(|_| pool.get(MIN_STACK_SIZE).unwrap())
            .collect();
        drop(stacks); // 100 free, all hot
        pool.trim(); // the first trim only sets the low-water mark
        assert_eq!(pool.inner.borrow().classes[0].cold, 0);
        // 30 are used during this interval: 70 stayed unused throughout.
        let busy: Vec<_> = (0..30).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        drop(busy);
        pool.trim();
        assert_eq!(pool.inner.borrow().classes[0].cold, 70);
        pool.trim(); // nothing was used since: the rest goes cold too
        assert_eq!(pool.inner.borrow().classes[0].cold, 100);
        let again: Vec<_> = (0..100)
            .map(|_| pool.get(MIN_STACK_SIZE).unwrap())
            .collect();
        assert_eq!(
            pool.inner.borrow().classes[0].cold,
            0,
            "cold stacks are reused"
        );
        drop(again);
    }

    #[test]
    fn guards_are_installed_in_batches() {
        let mut pool = StackPool::with_mode(guard_mode());
        let stacks: Vec<_> = (0..40).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        {
            let inner = pool.inner.borrow();
            let arenas = &inner.classes[0].arenas;
            // First arena: guards for 1, 1, 2, 4 then 8 slots; the second arena (32
            // slots) got all its guards in one go.
            assert_eq!((arenas[0].guarded, arenas[0].carved), (16, 16));
            assert_eq!((arenas[1].guarded, arenas[1].carved), (32, 24));
            assert_eq!(
                find_guard(stacks[39].limit().get() + 5).map(|g| g.0),
                Some(stacks[39].limit().get())
            );
        }
        // Slots guarded but not handed out yet are used before any new guard.
        let more: Vec<_> = (0..8).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        assert_eq!(pool.inner.borrow().classes[0].arenas[1].carved, 32);
        drop((stacks, more));
    }

    #[test]
    fn many_stacks_keep_few_mappings() {
        if !guard::madvise_guard_supported() {
            eprintln!("MADV_GUARD_INSTALL unsupported; skipped");
            return;
        }
        let (err, st) = run_child(module_path!(), "manystacks_madvise");
        eprint!("{err}");
        assert!(st.success(), "{err}");
    }

    #[test]
    fn mprotect_mode_fails_cleanly_at_the_mapping_limit() {
        let (err, st) = run_child(module_path!(), "mapcount_mprotect");
        eprint!("{err}");
        assert!(st.success(), "{err}");
    }

    #[test]
    fn dropping_pool_with_outstanding_stack_keeps_it_usable() {
        let mut pool = StackPool::new();
        let stack = pool.get(MIN_STACK_SIZE).unwrap();
        drop(pool);
        let mut co = Coroutine::<(), (), u64, _>::with_stack(stack, |_, ()| recurse(u64::MAX - 10));
        assert!(matches!(
            co.resume(()),
            corosensei::CoroutineResult::Return(_)
        ));
        // Dropping the coroutine returns the stack and finally unmaps the arenas.
        drop(co);
    }
}
