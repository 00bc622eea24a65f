//! The per-thread stack pool: size classes of slots carved from arenas, guard pages
//! installed in batches, freed stacks reused LIFO (warm) and their memory given back once
//! they stay unused, and a reserve of slots prepared by the stack service (see
//! `service`) for the times the pool runs out of warm ones.
//!
//! A stack is taken from, in order: the class's warm free stacks (their memory still
//! resident); its reserve of ready slots (guarded, top page faulted in, by the service);
//! a free slot whose memory was given back; a newly carved slot. Only the last two cost
//! this thread a page fault when the greenlet first touches its stack (and the last one
//! an `madvise` for its guard, 64 slots at a time), so once a class has needed more
//! than [`RESERVE_START`] of those within a trim interval, it asks the service to keep
//! a reserve as large as that demand (at most [`RESERVE_MAX`]) and refills it as it
//! is used. Stack memory is given back by the service too.
//!
//! Memory: a warm free stack keeps the pages it touched until it has stayed unused for
//! a whole trim interval (the hub trims every second) or more than [`HOT_LIMIT`] of its
//! size are free; then its memory is released — all but its top page if the reserve
//! wants it (it joins the reserve), else all of it. A ready slot costs one page; the
//! service releases a class's reserve once nobody has taken from it for
//! `RESERVE_KEEP` (10 s). A process that has been idle that long holds no stack memory
//! beyond its live greenlets' stacks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use corosensei::stack::StackPointer;

use super::guard::{GuardMode, MAX_BATCH, guard_mode, install_guards};
use super::registry::register_arena;
use super::service::{self, ClassShared, Geometry, Job, Work};
use super::{HEADER_SIZE, MIN_STACK_SIZE, Stack, page_size};

/// Free stacks per size class kept with their memory ("hot") at most: past
/// `HOT_LIMIT + RELEASE_BATCH`, the `RELEASE_BATCH` least recently freed are released.
/// Below it, free stacks are released by [`StackPool::trim`] once they have stayed
/// unused for a whole trim interval, so a busy server reuses warm stacks and an idle one
/// gives their memory back.
const HOT_LIMIT: usize = 16_384;
/// Free stacks whose memory is released in one job (one `process_madvise` call).
pub(super) const RELEASE_BATCH: usize = 64;
/// Most slots whose guard pages are installed in one call (see `PoolInner::take_here`).
const GUARD_BATCH: usize = 64;
/// Most slots the service prepares in one job.
const PREPARE_BATCH: usize = 64;
const _: () =
    assert!(GUARD_BATCH <= MAX_BATCH && RELEASE_BATCH <= MAX_BATCH && PREPARE_BATCH <= MAX_BATCH);
/// Stacks a class must take beyond its warm ones within a trim interval before it keeps
/// a reserve (a program that makes a few greenlets now and then keeps none).
pub(super) const RESERVE_START: usize = 64;
/// The largest reserve of ready slots a class keeps (4 MiB of top pages).
pub(super) const RESERVE_MAX: usize = 1024;
/// Slots in the first arena of a size class; each next arena doubles, up to the cap.
const FIRST_ARENA_SLOTS: usize = 16;
const MAX_ARENA_SLOTS: usize = 65_536;

/// The usable size of the stack [`StackPool::get`] hands out for a request of `size`
/// bytes: rounded up to whole pages, and to at least [`MIN_STACK_SIZE`].
#[inline]
pub(crate) fn usable_size_for(size: usize) -> io::Result<usize> {
    let mask = page_size() - 1; // a power of two: no division on the spawn path
    size.max(MIN_STACK_SIZE)
        .checked_add(mask)
        .map(|s| s & !mask)
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

/// An arena: one `MAP_NORESERVE` mapping, carved into slots of one size class. (The
/// mapping itself belongs to the class's [`ClassShared`].)
pub(super) struct Arena {
    start: usize,
    slots: usize,
    /// Slots whose guard page is installed or being installed by the service
    /// (`carved..guarded` are guarded and ready to carve).
    guarded: usize,
    /// Slots handed out at least once, or handed to the service to prepare.
    carved: usize,
}

/// The stacks of one usable size.
pub(super) struct SizeClass {
    usable: usize,
    arenas: Vec<Arena>,
    /// Free slots with their memory, the most recently freed last.
    free: VecDeque<usize>,
    /// Free slots whose memory was given back (their guard stays).
    cold: Vec<usize>,
    /// Carved slots without their guard page (the service could not install it).
    unguarded: Vec<usize>,
    /// The fewest free slots seen since the last trim: that many went unused.
    low_water: usize,
    /// Stacks taken since the last trim that were not warm.
    demand: usize,
    shared: Arc<ClassShared>,
}

/// What a [`StackPool`] and its [`Stack`]s share.
pub(super) struct PoolInner {
    /// See [`HOT_LIMIT`] (tests lower it).
    hot_limit: usize,
    mode: GuardMode,
    guard: usize,
    classes: Vec<SizeClass>,
    in_use: usize,
    /// Run the service's jobs on this thread, at once (tests that check what they did).
    inline_jobs: bool,
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
                inline_jobs: false,
            })),
        }
    }

    /// A stack with at least `size` usable bytes (rounded up to whole pages, and to at
    /// least [`MIN_STACK_SIZE`]): a warm free one of that size, else a ready one, else
    /// one carved here (see the module docs). Errors if `mmap` or the guard install
    /// fails.
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
    /// more than [`HOT_LIMIT`] of a size are free.
    #[cfg(test)]
    pub(crate) fn put(&mut self, stack: Stack) {
        drop(stack);
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

    /// Runs the service's jobs at once on this thread (tests that check what they did).
    #[cfg(test)]
    pub(super) fn set_inline_jobs(&mut self) {
        self.inner.borrow_mut().inline_jobs = true;
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
        let geometry = Geometry {
            mode: self.mode,
            guard: self.guard,
            usable,
            page: page_size(),
        };
        self.classes.push(SizeClass {
            usable,
            arenas: Vec::new(),
            free: VecDeque::new(),
            cold: Vec::new(),
            unguarded: Vec::new(),
            low_water: 0,
            demand: 0,
            shared: Arc::new(ClassShared::new(geometry)),
        });
        self.classes.len() - 1
    }

    /// A free slot of class `ci`: the most recently returned one, else a ready one, else
    /// one whose memory was given back or a newly carved one.
    fn take(&mut self, ci: usize) -> io::Result<usize> {
        let class = &mut self.classes[ci];
        if let Some(slot) = class.free.pop_back() {
            class.low_water = class.low_water.min(class.free.len());
            return Ok(slot);
        }
        class.demand += 1;
        let slot = match class.shared.ready.pop() {
            Some(slot) => {
                class.shared.prepared.fetch_sub(1, Ordering::Relaxed);
                class.shared.taken.fetch_add(1, Ordering::Relaxed);
                Ok(slot)
            }
            None => self.take_here(ci),
        };
        if self.classes[ci].demand >= RESERVE_START {
            self.refill(ci);
        }
        slot
    }

    /// A slot of class `ci` that this thread prepares: one whose memory was given back,
    /// else a carved one (its guard page installed here).
    fn take_here(&mut self, ci: usize) -> io::Result<usize> {
        let (mode, guard) = (self.mode, self.guard);
        let class = &mut self.classes[ci];
        class.collect();
        if let Some(slot) = class.cold.pop() {
            return Ok(slot);
        }
        if let Some(slot) = class.unguarded.pop() {
            if let Err(e) = install_guards(mode, slot, guard + class.usable, 1, guard) {
                class.unguarded.push(slot);
                return Err(e);
            }
            return Ok(slot);
        }
        let slot_size = guard + class.usable;
        let first_arena = class.arenas.len() <= 1;
        let arena = class.arena_with_room(guard)?;
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

    /// Asks the service for ready slots of class `ci` up to what its demand calls for.
    fn refill(&mut self, ci: usize) {
        let inline = self.inline_jobs;
        let class = &mut self.classes[ci];
        let shared = class.shared.clone();
        let want = class.demand.min(RESERVE_MAX);
        let want = shared.want.fetch_max(want, Ordering::Relaxed).max(want);
        let mut missing = want.saturating_sub(shared.prepared.load(Ordering::Relaxed));
        if missing < PREPARE_BATCH.min(want) {
            return; // asked for already, or too few to be worth a job yet
        }
        while missing > 0 {
            let n = missing.min(PREPARE_BATCH);
            class.collect();
            let cold: Vec<usize> = class
                .cold
                .drain(class.cold.len().saturating_sub(n)..)
                .collect();
            let (first, fresh) = if cold.len() < n {
                // No new arena (out of memory): the service prepares what there is.
                class
                    .carve_for_service(n - cold.len(), self.guard)
                    .unwrap_or_default()
            } else {
                (0, 0)
            };
            let n = cold.len() + fresh;
            if n == 0 {
                return;
            }
            missing -= n;
            shared.prepared.fetch_add(n, Ordering::Relaxed);
            let job = Job {
                class: Arc::clone(&shared),
                work: Work::Prepare { cold, first, fresh },
            };
            service::submit(job, inline);
        }
    }

    /// Takes back the slot `slot` of class `ci` (a [`Stack`] being dropped).
    #[inline]
    pub(super) fn release(&mut self, ci: usize, slot: usize) {
        self.in_use -= 1;
        let class = &mut self.classes[ci];
        class.free.push_back(slot);
        if class.free.len() >= self.hot_limit + RELEASE_BATCH {
            self.release_oldest(ci, RELEASE_BATCH);
        }
    }

    /// Hands the memory of the `n` least recently freed free stacks of class `ci` (at
    /// most `RELEASE_BATCH`) to the service to give back: all of it, or all but the top
    /// page while the reserve wants more slots (they join it).
    fn release_oldest(&mut self, ci: usize, n: usize) {
        let class = &mut self.classes[ci];
        let slots: Vec<usize> = class.free.drain(..n.min(class.free.len())).collect();
        if slots.is_empty() {
            return;
        }
        let shared = &class.shared;
        let keep_top =
            shared.prepared.load(Ordering::Relaxed) < shared.want.load(Ordering::Relaxed);
        if keep_top {
            shared.prepared.fetch_add(slots.len(), Ordering::Relaxed);
        }
        let job = Job {
            class: shared.clone(),
            work: Work::Release { slots, keep_top },
        };
        service::submit(job, self.inline_jobs);
    }

    fn trim(&mut self) {
        for ci in 0..self.classes.len() {
            let class = &mut self.classes[ci];
            class.collect();
            let mut unused = class.low_water.min(class.free.len());
            while unused > 0 {
                let n = unused.min(RELEASE_BATCH);
                self.release_oldest(ci, n);
                unused -= n;
            }
            let class = &mut self.classes[ci];
            class.low_water = class.free.len();
            class.demand = 0;
        }
    }
}

impl SizeClass {
    /// Takes in the slots the service has handed back.
    fn collect(&mut self) {
        while let Some(slot) = self.shared.released.pop() {
            self.cold.push(slot);
        }
        while let Some(slot) = self.shared.unguarded.pop() {
            self.unguarded.push(slot);
        }
    }

    /// The last arena, if it has a slot left to carve; else a new one.
    fn arena_with_room(&mut self, guard: usize) -> io::Result<&mut Arena> {
        if self.arenas.last().is_none_or(|a| a.carved == a.slots) {
            let want = self
                .arenas
                .last()
                .map_or(FIRST_ARENA_SLOTS, |a| (a.slots * 2).min(MAX_ARENA_SLOTS));
            let arena = Arena::map(want, guard + self.usable, guard, &self.shared)?;
            self.arenas.push(arena);
        }
        Ok(self.arenas.last_mut().expect("just made"))
    }

    /// Carves up to `n` consecutive slots for the service to prepare: `(first, count)`.
    /// The service installs their guard pages (again, for those guarded here already:
    /// installing a guard twice is harmless).
    fn carve_for_service(&mut self, n: usize, guard: usize) -> io::Result<(usize, usize)> {
        let slot_size = guard + self.usable;
        let arena = self.arena_with_room(guard)?;
        let count = n.min(arena.slots - arena.carved);
        let first = arena.start + arena.carved * slot_size;
        arena.carved += count;
        arena.guarded = arena.guarded.max(arena.carved);
        Ok((first, count))
    }
}

impl Arena {
    /// Maps an arena of (up to) `want` slots, owned by `shared`; halves the count if
    /// `mmap` fails.
    fn map(
        mut want: usize,
        slot_size: usize,
        guard: usize,
        shared: &ClassShared,
    ) -> io::Result<Arena> {
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
                shared.own_mapping(start, len, registry);
                return Ok(Arena {
                    start,
                    slots: want,
                    guarded: 0,
                    carved: 0,
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

#[cfg(test)]
mod tests {
    use corosensei::Coroutine;
    use corosensei::stack::Stack as _;

    use std::collections::HashSet;

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
                // The stack service thread first (its stack, signal stack and malloc
                // arena are mappings the process keeps): a class in demand starts it.
                let warm: Vec<_> = (0..2 * RESERVE_START)
                    .map(|_| pool.get(MIN_STACK_SIZE + page_size()).unwrap())
                    .collect();
                drop(warm);
                std::thread::sleep(std::time::Duration::from_millis(200));
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
                // The service thread may still hold a job on these arenas for a moment.
                let t = std::time::Instant::now();
                while maps_lines() > before && t.elapsed().as_secs() < 10 {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
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

    /// Is the page at `addr` resident?
    fn resident(addr: usize) -> bool {
        let page = addr & !(page_size() - 1);
        let mut vec = 0_u8;
        // SAFETY: `page` is page-aligned and mapped (one of our arenas); mincore
        // writes one byte for one page into `vec`.
        let rc = unsafe { libc::mincore(page as *mut _, page_size(), &mut vec) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec & 1 != 0
    }

    /// Writes a byte to the top and to the bottom usable page of `s`.
    fn touch(s: &Stack) {
        // SAFETY: the top and bottom usable bytes of an owned stack.
        unsafe {
            ptr::write_volatile((s.base().get() - 1) as *mut u8, 1);
            ptr::write_volatile((s.limit().get() + page_size()) as *mut u8, 1);
        }
    }

    #[test]
    fn stacks_beyond_the_hot_limit_are_released_oldest_first_and_reused() {
        const HOT_LIMIT: usize = 64;
        let n = HOT_LIMIT + RELEASE_BATCH + 10;
        let mut pool = StackPool::with_mode(guard_mode());
        pool.set_hot_limit(HOT_LIMIT);
        pool.set_inline_jobs();
        let stacks: Vec<_> = (0..n).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        stacks.iter().for_each(touch);
        let bottom = |s: &Stack| s.limit().get() + page_size();
        let released: Vec<usize> = stacks[..RELEASE_BATCH].iter().map(bottom).collect();
        let kept: Vec<usize> = stacks[RELEASE_BATCH..].iter().map(bottom).collect();
        let all: HashSet<usize> = stacks.iter().map(|s| s.limit().get()).collect();
        drop(stacks);
        // One batch went once HOT_LIMIT + RELEASE_BATCH were free: the first freed.
        assert_eq!(pool.inner.borrow().classes[0].free.len(), n - RELEASE_BATCH);
        assert!(released.iter().all(|&a| !resident(a)));
        assert!(kept.iter().all(|&a| resident(a)));
        // The warm ones are reused first, most recently freed first.
        let again: Vec<_> = (0..n).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        let warm: Vec<usize> = again[..n - RELEASE_BATCH]
            .iter()
            .map(|s| s.limit().get() + page_size())
            .collect();
        assert_eq!(warm, kept.iter().rev().copied().collect::<Vec<_>>());
        let distinct: HashSet<usize> = again.iter().map(|s| s.limit().get()).collect();
        assert_eq!(distinct.len(), n);
        assert!(released.iter().all(|a| all.contains(&(a - page_size()))));
        assert_eq!(pool.stats().slots_in_use, n);
    }

    #[test]
    fn trim_releases_only_stacks_unused_for_a_whole_interval() {
        let mut pool = StackPool::with_mode(guard_mode());
        pool.set_inline_jobs();
        let hot = |pool: &StackPool| pool.inner.borrow().classes[0].free.len();
        let stacks: Vec<_> = (0..100)
            .map(|_| pool.get(MIN_STACK_SIZE).unwrap())
            .collect();
        stacks.iter().for_each(touch);
        let bottoms: Vec<usize> = stacks
            .iter()
            .map(|s| s.limit().get() + page_size())
            .collect();
        drop(stacks); // 100 free, all hot
        pool.trim(); // the first trim only sets the low-water mark
        assert_eq!(hot(&pool), 100);
        // 30 are used during this interval: 70 stayed unused throughout.
        let busy: Vec<_> = (0..30).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        drop(busy);
        pool.trim();
        assert_eq!(hot(&pool), 30);
        assert_eq!(bottoms.iter().filter(|&&a| resident(a)).count(), 30);
        pool.trim(); // nothing was used since: the rest go too
        assert_eq!(hot(&pool), 0);
        assert!(bottoms.iter().all(|&a| !resident(a)));
        let again: Vec<_> = (0..100)
            .map(|_| pool.get(MIN_STACK_SIZE).unwrap())
            .collect();
        assert_eq!(pool.stats().arenas, 4, "released stacks are reused");
        drop(again);
    }

    #[test]
    fn a_class_in_demand_keeps_a_reserve_of_ready_slots() {
        let mut pool = StackPool::with_mode(guard_mode());
        pool.set_inline_jobs();
        let shared = |pool: &StackPool| Arc::clone(&pool.inner.borrow().classes[0].shared);
        // Fewer than RESERVE_START stacks: no reserve.
        let few: Vec<_> = (0..RESERVE_START - 1)
            .map(|_| pool.get(MIN_STACK_SIZE).unwrap())
            .collect();
        assert_eq!(shared(&pool).ready.len(), 0);
        // One more: the class asks for as many ready slots as it has needed.
        let one = pool.get(MIN_STACK_SIZE).unwrap();
        let class = shared(&pool);
        assert_eq!(class.want.load(Ordering::Relaxed), RESERVE_START);
        assert_eq!(class.ready.len(), RESERVE_START);
        assert_eq!(class.prepared.load(Ordering::Relaxed), RESERVE_START);
        // A ready slot has its top page (where a greenlet starts) and nothing else.
        let slot = class.ready.pop().unwrap();
        class.ready.push(slot);
        let top = slot + page_size() + MIN_STACK_SIZE - 1;
        assert!(resident(top) && !resident(slot + page_size()));
        assert_eq!(find_guard(slot + 1).map(|g| g.0), Some(slot), "guarded");
        // Taking one refills the reserve (a job per PREPARE_BATCH missing slots).
        let next = pool.get(MIN_STACK_SIZE).unwrap();
        assert_eq!(class.taken.load(Ordering::Relaxed), 1);
        assert_eq!(class.want.load(Ordering::Relaxed), RESERVE_START + 1);
        assert_eq!(class.prepared.load(Ordering::Relaxed), RESERVE_START - 1);
        // The reserve given back: every ready slot's memory is released.
        let ready: Vec<usize> = std::iter::from_fn(|| class.ready.pop()).collect();
        ready.iter().for_each(|&s| class.ready.push(s));
        class.drop_reserve();
        assert_eq!(class.ready.len(), 0);
        assert_eq!(class.prepared.load(Ordering::Relaxed), 0);
        assert!(
            ready
                .iter()
                .all(|&s| !resident(s + page_size() + MIN_STACK_SIZE - 1))
        );
        drop((few, one, next));
    }

    #[test]
    fn the_service_thread_prepares_slots_and_keeps_arenas_mapped_for_its_jobs() {
        let mut pool = StackPool::with_mode(guard_mode());
        let stacks: Vec<_> = (0..RESERVE_START)
            .map(|_| pool.get(MIN_STACK_SIZE).unwrap())
            .collect();
        let class = Arc::clone(&pool.inner.borrow().classes[0].shared);
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let t = std::time::Instant::now();
            while !done() {
                assert!(t.elapsed().as_secs() < 30, "{what}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        wait("the service prepared no slot", &|| {
            class.ready.len() == RESERVE_START
        });
        let slot = class.ready.pop().unwrap();
        assert!(resident(slot + page_size() + MIN_STACK_SIZE - 1));
        class.ready.push(slot);
        // The pool goes while its class still has ready slots: the arenas stay mapped
        // until the last holder of the class (the service's job, then this test) lets go.
        drop((stacks, pool));
        assert_eq!(find_guard(slot + 1).map(|g| g.0), Some(slot));
        wait("the service kept the class", &|| {
            Arc::strong_count(&class) == 1
        });
        drop(class);
        assert_eq!(find_guard(slot + 1), None, "the arena left the registry");
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
