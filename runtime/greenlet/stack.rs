//! Greenlet stacks: pooled per thread, each with a guard page, carved from large
//! `MAP_NORESERVE` arenas so that a million stacks fit in one process without
//! hitting `vm.max_map_count` (design law 5).
//!
//! Slot layout inside an arena (addresses grow to the right, stacks grow left):
//!
//! ```text
//! | guard page | usable area ...................................... | header (64 B) |
//! ^ slot start = limit()                                  base() ----^               ^ slot top
//! ```
//!
//! Guard pages are made with `madvise(MADV_GUARD_INSTALL)` (Linux 6.13+, adds no
//! mapping) or, as a fallback, `mprotect(PROT_NONE)` (splits the arena mapping).
//! Every arena is recorded in a lock-free, process-global registry so that the
//! SIGSEGV/SIGBUS handler installed by [`install_overflow_handler`] can tell a greenlet
//! stack overflow from any other fault and name the greenlet from the slot's header.

use std::cell::{Cell, RefCell};
use std::io;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering, fence};
use std::sync::{Once, OnceLock};

use corosensei::stack::StackPointer;

/// Default usable stack size: 256 KiB (enough for ordinary Rust code in debug builds).
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;
/// Smallest accepted size (smaller requests are rounded up to this): 16 KiB.
pub const MIN_STACK_SIZE: usize = 16 * 1024;

/// `MADV_GUARD_INSTALL` from `<linux/mman.h>` (Linux 6.13+); not in every libc yet.
const MADV_GUARD_INSTALL: libc::c_int = 102;
/// Size of the owner header at the top of every slot.
const HEADER_SIZE: usize = 64;
/// Marks a header written by [`Stack::set_owner`] ("greenhub" in ASCII).
const HEADER_MAGIC: u64 = 0x6772_6565_6e68_7562;
/// Longest greenlet name kept in the header, in bytes.
const NAME_MAX: usize = 39;
/// Free stacks per size class kept with their memory ("hot") at most: past
/// `HOT_LIMIT + RELEASE_BATCH`, the `RELEASE_BATCH` least recently freed get
/// `MADV_DONTNEED` in one call. Below it, free stacks are released by [`StackPool::trim`]
/// once they have stayed unused for a whole trim interval (the hub trims every second),
/// so a busy server reuses warm stacks and an idle one gives their memory back.
const HOT_LIMIT: usize = 16_384;
const RELEASE_BATCH: usize = 64;
/// Most slots whose guard pages are installed in one call (see `PoolInner::take`).
const GUARD_BATCH: usize = 64;
/// Most ranges given to one `process_madvise` call (the kernel's limit is 1024).
const MAX_BATCH: usize = 64;
const _: () = assert!(GUARD_BATCH <= MAX_BATCH && RELEASE_BATCH <= MAX_BATCH);
/// `PIDFD_SELF_THREAD` (Linux 6.14+): makes `process_madvise` act on the calling
/// thread's own address space, with no file descriptor to keep (and none to go stale
/// across `fork`). Older kernels reject it (`EBADF`); we then fall back to `madvise`.
const PIDFD_SELF_THREAD: libc::c_int = -10_000;
/// Slots in the first arena of a size class; each next arena doubles, up to the cap.
const FIRST_ARENA_SLOTS: usize = 16;
const MAX_ARENA_SLOTS: usize = 65_536;
/// Size of the per-thread alternate signal stack (plus one guard page below it).
const ALT_STACK_SIZE: usize = 64 * 1024;

/// The header stored in the top 64 bytes of a slot; read by the overflow handler.
#[repr(C)]
struct Header {
    magic: u64,
    id: u64,
    usable_size: u64,
    name_len: u8,
    name: [u8; NAME_MAX],
}
const _: () = assert!(size_of::<Header>() == HEADER_SIZE);

fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let p = if p > 0 { p as usize } else { 4096 };
            PAGE.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

// ---------------------------------------------------------------------------
// Guard mode
// ---------------------------------------------------------------------------

/// How guard pages are made.
///
/// The process-wide mode ([`guard_mode`]) is detected once: `madvise(MADV_GUARD_INSTALL)`
/// if the kernel supports it (6.13+), else `mprotect(PROT_NONE)`. The environment
/// variable `GREENHUB_STACK_GUARD=mprotect|madvise` forces a mode (read once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMode {
    /// `madvise(MADV_GUARD_INSTALL)`: a page-table marker, no extra mapping.
    Madvise,
    /// `mprotect(PROT_NONE)`: splits the arena mapping (two mappings per stack).
    Mprotect,
}

/// The process-wide guard mode actually in use (detected once, then cached).
pub fn guard_mode() -> GuardMode {
    static MODE: OnceLock<GuardMode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("GREENHUB_STACK_GUARD").as_deref() {
        Ok("mprotect") => GuardMode::Mprotect,
        Ok("madvise") => GuardMode::Madvise,
        _ if madvise_guard_supported() => GuardMode::Madvise,
        _ => GuardMode::Mprotect,
    })
}

/// Probes `MADV_GUARD_INSTALL` on a scratch two-page mapping.
fn madvise_guard_supported() -> bool {
    let len = 2 * page_size();
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; it
    // overlaps nothing we own and is unmapped below.
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
    if p == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: `p` is the page-aligned start of the mapping made above; the advice only
    // affects that first page, which nobody references.
    let ok = unsafe { libc::madvise(p, page_size(), MADV_GUARD_INSTALL) } == 0;
    // SAFETY: unmaps exactly the mapping made above; no reference into it exists.
    unsafe { libc::munmap(p, len) };
    ok
}

/// Makes the page at `addr` a guard page.
fn install_guard(mode: GuardMode, addr: usize, len: usize) -> io::Result<()> {
    let rc = match mode {
        // SAFETY: `addr..addr+len` is a page-aligned guard page inside one of our
        // arenas; no Rust reference points into it.
        GuardMode::Madvise => unsafe { libc::madvise(addr as *mut _, len, MADV_GUARD_INSTALL) },
        // SAFETY: as above; removing access to memory nobody references is sound.
        GuardMode::Mprotect => unsafe { libc::mprotect(addr as *mut _, len, libc::PROT_NONE) },
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the first page of each of the `count` slots of `slot_size` bytes from `first`
/// a guard page (`guard` bytes). Returns how many leading slots got their guard, or the
/// error if not even the first did. With `madvise` guards, all of them take one
/// `process_madvise` call where the kernel allows it.
fn install_guards(
    mode: GuardMode,
    first: usize,
    slot_size: usize,
    count: usize,
    guard: usize,
) -> io::Result<usize> {
    debug_assert!((1..=GUARD_BATCH).contains(&count));
    if mode == GuardMode::Madvise {
        let mut ranges = [(0, 0); GUARD_BATCH];
        for (i, r) in ranges[..count].iter_mut().enumerate() {
            *r = (first + i * slot_size, guard);
        }
        if advise_batch(&ranges[..count], MADV_GUARD_INSTALL) {
            return Ok(count);
        }
    }
    // One at a time (also after a failed batch: installing a guard twice is harmless).
    for i in 0..count {
        if let Err(e) = install_guard(mode, first + i * slot_size, guard) {
            return if i == 0 { Err(e) } else { Ok(i) };
        }
    }
    Ok(count)
}

/// Gives the memory of the `(addr, len)` ranges back to the kernel (`MADV_DONTNEED`):
/// one `process_madvise` call where the kernel allows it, else one `madvise` each.
///
/// # Safety
/// Each range must be part of one of our arenas that nothing references: its
/// contents are lost (it reads back as zeros).
unsafe fn release_ranges(ranges: &[(usize, usize)]) {
    if advise_batch(ranges, libc::MADV_DONTNEED) {
        return;
    }
    for &(addr, len) in ranges {
        // SAFETY: per the contract, nothing references the range's contents, and
        // DONTNEED on private anonymous memory only makes it read back as zeros.
        let rc = unsafe { libc::madvise(addr as *mut _, len, libc::MADV_DONTNEED) };
        debug_assert_eq!(
            rc,
            0,
            "MADV_DONTNEED failed: {}",
            io::Error::last_os_error()
        );
    }
}

/// Whether `process_madvise` on ourselves works: 0 not tried yet, 1 works, 2 refused by
/// this kernel (then only `madvise` is used).
static BATCH_STATE: AtomicU8 = AtomicU8::new(0);

/// Applies `advice` (`MADV_GUARD_INSTALL` or `MADV_DONTNEED`) to all of `ranges` (at
/// most `MAX_BATCH`, each inside one of our arenas and referenced by nothing) with one
/// `process_madvise(PIDFD_SELF_THREAD, ..)` call. `false` if that did not cover them
/// all (an older kernel, a filter, or a real failure): the caller then advises each
/// range with `madvise`, which reports any real error. After a kernel refusal the
/// batch call is not tried again.
fn advise_batch(ranges: &[(usize, usize)], advice: libc::c_int) -> bool {
    if ranges.is_empty() {
        return true;
    }
    if ranges.len() == 1 || BATCH_STATE.load(Ordering::Relaxed) == 2 {
        return false; // `madvise` is as cheap for one range
    }
    let mut iov = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    let n = ranges.len().min(MAX_BATCH);
    for (v, &(addr, len)) in iov.iter_mut().zip(&ranges[..n]) {
        *v = libc::iovec {
            iov_base: addr as *mut _,
            iov_len: len,
        };
    }
    // SAFETY: `iov[..n]` is an initialised array of `n` iovecs that outlives the call;
    // the kernel only reads it. Each range is, per our callers, inside one of our
    // arenas and referenced by nothing, so guarding it or dropping its contents is as
    // sound as the equivalent `madvise`. `PIDFD_SELF_THREAD` names our own address
    // space (no other process is touched), and older kernels reject it with `EBADF`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            PIDFD_SELF_THREAD,
            iov.as_ptr(),
            n,
            advice,
            0,
        )
    };
    let total: usize = ranges[..n].iter().map(|r| r.1).sum();
    if rc >= 0 && rc as usize == total && n == ranges.len() {
        BATCH_STATE.store(1, Ordering::Relaxed);
        return true;
    }
    if rc < 0 && BATCH_STATE.load(Ordering::Relaxed) == 0 {
        let errno = io::Error::last_os_error().raw_os_error();
        if matches!(
            errno,
            Some(libc::ENOSYS | libc::EBADF | libc::EINVAL | libc::EPERM | libc::ESRCH)
        ) {
            BATCH_STATE.store(2, Ordering::Relaxed);
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Process-global arena registry (read from the signal handler)
// ---------------------------------------------------------------------------

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
fn register_arena(start: usize, end: usize, slot_size: usize, guard_size: usize) -> Option<usize> {
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
fn unregister_arena(i: usize) {
    let e = &REGISTRY[i];
    let s = e.seq.fetch_add(1, Ordering::Relaxed);
    fence(Ordering::Release);
    e.start.store(0, Ordering::Relaxed);
    e.seq.store(s + 2, Ordering::Release);
}

/// If `addr` lies in the guard page of a registered slot, returns
/// `(slot_start, slot_size, guard_size)`. Async-signal-safe: atomics only.
fn find_guard(addr: usize) -> Option<(usize, usize, usize)> {
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

// ---------------------------------------------------------------------------
// Stack
// ---------------------------------------------------------------------------

/// One stack slot, owned: a guard page at the low end, then `usable_size()` bytes
/// whose top 64 bytes hold the owner header.
///
/// Dropping a `Stack` (or giving it to [`StackPool::put`]) returns it to the pool it
/// came from, even after that pool's `StackPool` handle was dropped. `!Send`: a stack
/// belongs to the thread whose pool made it.
pub struct Stack {
    /// Start of the slot (the guard page).
    slot: usize,
    /// Bytes above the guard page (the size class), header included.
    usable: usize,
    /// Index of the size class in the pool.
    class: usize,
    /// `base()`, precomputed: corosensei asks for it on every resume.
    base: StackPointer,
    pool: Rc<RefCell<PoolInner>>,
}

// SAFETY: `base()` is the slot top minus the 64-byte header: page-aligned minus 64, so
// 16-byte aligned. `limit()` is the slot start (the guard page, which the trait says
// to include), also page-aligned. The memory between them is a read-write private
// mapping owned exclusively by this `Stack` (the pool hands each slot to one `Stack`
// at a time and keeps the arena mapped while any `Stack` lives, via the `Rc`), it is
// at least MIN_STACK_SIZE - 64 > corosensei's 4096-byte minimum, and the guard page
// below it faults on access.
unsafe impl corosensei::stack::Stack for Stack {
    #[inline]
    fn base(&self) -> StackPointer {
        self.base
    }

    #[inline]
    fn limit(&self) -> StackPointer {
        StackPointer::new(self.slot).unwrap()
    }
}

impl Stack {
    /// Usable bytes above the guard page (the rounded size asked of
    /// [`StackPool::get`]); the top 64 of them hold the owner header.
    pub fn usable_size(&self) -> usize {
        self.usable
    }

    /// Records who runs on this stack, so the overflow handler can name it: writes
    /// the header at the top of the slot (magic, `id`, usable size and up to 39 bytes
    /// of `name`, truncated on a char boundary). No syscalls.
    pub fn set_owner(&mut self, id: u64, name: &str) {
        let mut len = name.len().min(NAME_MAX);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let top = self.slot + page_size() + self.usable;
        let header = (top - HEADER_SIZE) as *mut Header;
        // SAFETY: `top - 64 .. top` is the header area of this slot: inside the
        // read-write usable area, above `base()` so never used as stack, owned by this
        // `Stack` (`&mut self`), and 8-byte aligned (`top` is page-aligned). Every bit
        // pattern is a valid `Header` (integers and bytes), so its fields can be written
        // one by one; the reader only looks at the first `name_len` bytes of `name`.
        unsafe {
            (*header).magic = HEADER_MAGIC;
            (*header).id = id;
            (*header).usable_size = self.usable as u64;
            (*header).name_len = len as u8;
            let dst: &mut [u8; NAME_MAX] = &mut (*header).name;
            dst[..len].copy_from_slice(&name.as_bytes()[..len]);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // `try_borrow_mut` cannot fail (the pool never drops a `Stack` while borrowed);
        // if it ever did, leaking the slot is the safe choice.
        if let Ok(mut pool) = self.pool.try_borrow_mut() {
            pool.release(self.class, self.slot);
        }
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("slot", &format_args!("{:#x}", self.slot))
            .field("usable", &self.usable)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Pool
// ---------------------------------------------------------------------------

/// The usable size of the stack [`StackPool::get`] hands out for a request of `size`
/// bytes: rounded up to whole pages, and to at least [`MIN_STACK_SIZE`].
pub(crate) fn usable_size_for(size: usize) -> io::Result<usize> {
    size.max(MIN_STACK_SIZE)
        .checked_next_multiple_of(page_size())
        .filter(|u| *u <= isize::MAX as usize / 2)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "stack size too large"))
}

/// Counters describing a [`StackPool`].
#[allow(dead_code)] // diagnostics: used by tests, not (yet) by the runtime
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Arenas (large mappings) made so far.
    pub arenas: usize,
    /// Slots in all arenas (capacity, carved or not).
    pub slots_total: usize,
    /// Stacks handed out and not yet returned.
    pub slots_in_use: usize,
    /// `slots_total - slots_in_use`: slots available without a new arena.
    pub slots_free: usize,
}

/// A per-thread pool of [`Stack`]s (keep one in a `thread_local`; it is `!Send`).
pub struct StackPool {
    inner: Rc<RefCell<PoolInner>>,
}

struct Arena {
    start: usize,
    len: usize,
    slots: usize,
    /// Slots whose guard page is installed (`carved..guarded` are ready to hand out).
    guarded: usize,
    /// Slots handed out at least once (all of them have their guard).
    carved: usize,
    registry: Option<usize>,
}

struct SizeClass {
    usable: usize,
    arenas: Vec<Arena>,
    /// Returned slots, LIFO; `free[..cold]` have had their memory released.
    free: Vec<usize>,
    cold: usize,
    /// The fewest hot free stacks seen since the last trim: that many went unused.
    low_water: usize,
}

struct PoolInner {
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
    pub fn new() -> Self {
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
    pub fn get(&mut self, size: usize) -> io::Result<Stack> {
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
    pub fn put(&mut self, stack: Stack) {
        drop(stack);
    }

    /// How many free stacks of `usable` bytes (a size [`usable_size_for`] returns) the
    /// pool holds: slots [`get`](StackPool::get) hands out without carving a new one.
    pub fn free_count(&self, usable: usize) -> usize {
        let inner = self.inner.borrow();
        let class = inner.classes.iter().find(|c| c.usable == usable);
        class.map_or(0, |c| c.free.len())
    }

    /// Releases the memory of the free stacks that nobody took since the previous trim.
    pub fn trim(&mut self) {
        self.inner.borrow_mut().trim();
    }

    /// Current counters.
    #[allow(dead_code)] // diagnostics: used by tests, not (yet) by the runtime
    pub fn stats(&self) -> PoolStats {
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

    fn release(&mut self, ci: usize, slot: usize) {
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

// ---------------------------------------------------------------------------
// Overflow handler
// ---------------------------------------------------------------------------

/// The actions SIGSEGV and SIGBUS had before ours, to chain to (index 0 / 1).
static PREV_HANDLER: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static PREV_FLAGS: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];

/// The per-thread alternate signal stack we mapped, if any; unmapped at thread exit.
struct AltStack {
    checked: Cell<bool>,
    /// Start of our mapping (guard page + stack), or 0.
    map: Cell<usize>,
}

impl AltStack {
    fn ensure(&self) {
        if self.checked.replace(true) {
            return;
        }
        // SAFETY: all-zero is a valid `stack_t` (null pointer, zero flags and size).
        let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: a null `ss` only queries the current alternate stack into `old`.
        if unsafe { libc::sigaltstack(ptr::null(), &mut old) } != 0
            || old.ss_flags & libc::SS_DISABLE == 0
        {
            return; // query failed (leave it) or the thread already has one (std's)
        }
        let page = page_size();
        let len = page + ALT_STACK_SIZE;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return;
        }
        // SAFETY: the first page of the mapping made above; nothing references it.
        unsafe { libc::mprotect(p, page, libc::PROT_NONE) };
        let new = libc::stack_t {
            ss_sp: (p as usize + page) as *mut _,
            ss_flags: 0,
            ss_size: ALT_STACK_SIZE,
        };
        // SAFETY: `new` describes memory we own that stays mapped until this
        // thread-local is dropped, where the alternate stack is disabled first.
        if unsafe { libc::sigaltstack(&new, ptr::null_mut()) } == 0 {
            self.map.set(p as usize);
        } else {
            // SAFETY: our own mapping, never installed.
            unsafe { libc::munmap(p, len) };
        }
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let p = self.map.get();
        if p == 0 {
            return;
        }
        let disable = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disabling this thread's alternate stack (ours), which we are not
        // running on (thread-local destructors do not run in signal handlers).
        let rc = unsafe { libc::sigaltstack(&disable, ptr::null_mut()) };
        if rc == 0 {
            // SAFETY: our mapping, no longer used as the alternate stack.
            unsafe { libc::munmap(p as *mut _, page_size() + ALT_STACK_SIZE) };
        }
    }
}

thread_local! {
    static ALT_STACK: AltStack = const { AltStack { checked: Cell::new(false), map: Cell::new(0) } };
}

/// Installs the greenlet stack-overflow handler for SIGSEGV and SIGBUS (once per
/// process, chaining to the previous handlers) and makes sure the calling thread has
/// an alternate signal stack to run it on. Idempotent and cheap after the first call
/// on a thread; call it on every thread that runs greenlets.
///
/// On a fault in a greenlet's guard page it prints
/// `greenhub: stack overflow in greenlet #<id> "<name>" (stack size <n> KiB); aborting`
/// and a hint, then aborts. Any other fault goes to the previous handler (so std's
/// "thread '...' has overflowed its stack" still works).
pub fn install_overflow_handler() {
    let _ = ALT_STACK.try_with(AltStack::ensure);
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (i, sig) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
            // SAFETY: all-zero is a valid `sigaction` (SIG_DFL, empty mask, no flags).
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: a null `act` only queries the current action into `old`.
            unsafe { libc::sigaction(sig, ptr::null(), &mut old) };
            PREV_HANDLER[i].store(old.sa_sigaction, Ordering::Relaxed);
            PREV_FLAGS[i].store(old.sa_flags, Ordering::Relaxed);
            // SAFETY: as above.
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            new.sa_sigaction = overflow_handler as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: `new.sa_mask` is a valid sigset_t to initialise.
            unsafe { libc::sigemptyset(&mut new.sa_mask) };
            // SAFETY: installs a handler with the signature SA_SIGINFO requires; it
            // only does async-signal-safe work (atomics, write, sigaction, abort).
            unsafe { libc::sigaction(sig, &new, ptr::null_mut()) };
        }
    });
}

/// The SIGSEGV/SIGBUS handler: reports overflows of our stacks, chains otherwise.
extern "C" fn overflow_handler(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SIGSEGV/SIGBUS with SA_SIGINFO,
    // and for these signals `si_addr` is the field that is set.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some((slot, slot_size, guard)) = find_guard(addr) {
        report_overflow(slot, slot_size, guard);
    }
    let i = usize::from(sig != libc::SIGSEGV);
    let prev = PREV_HANDLER[i].load(Ordering::Relaxed);
    let flags = PREV_FLAGS[i].load(Ordering::Relaxed);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // Let the fault re-execute and kill the process the default way.
        reset_to_default(sig);
    } else if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: `prev` was installed with SA_SIGINFO, so it has this signature; we
        // forward the arguments we were given, as the kernel would have.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev) };
        f(sig, info, ctx);
    } else {
        // SAFETY: `prev` was installed without SA_SIGINFO, so it is a `void (*)(int)`.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev) };
        f(sig);
    }
}

fn reset_to_default(sig: libc::c_int) {
    // SAFETY: all-zero is a valid `sigaction` whose handler is SIG_DFL; sigaction is
    // async-signal-safe.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, ptr::null_mut());
    }
}

/// Prints the overflow message for the slot at `slot` and aborts. Async-signal-safe.
fn report_overflow(slot: usize, slot_size: usize, guard: usize) -> ! {
    let usable = slot_size - guard;
    // SAFETY: the header is the top 64 bytes of a slot of a registered arena, which
    // stays mapped and readable (arenas are unregistered before being unmapped, and
    // the faulting stack keeps its arena alive). Volatile: the memory may change under
    // us in principle, and any bit pattern is a valid `Header` (plain integers).
    let header = unsafe { ptr::read_volatile((slot + slot_size - HEADER_SIZE) as *const Header) };
    let mut msg = MsgBuf::new();
    msg.push(b"greenhub: stack overflow in greenlet #");
    if header.magic == HEADER_MAGIC {
        msg.push_u64(header.id);
        msg.push(b" \"");
        msg.push(&header.name[..usize::from(header.name_len).min(NAME_MAX)]);
        msg.push(b"\"");
    } else {
        msg.push(b"?");
    }
    msg.push(b" (stack size ");
    msg.push_u64((usable / 1024) as u64);
    msg.push(b" KiB); aborting\ngreenhub: raise the stack size with Greenlet::builder().stack_size(..) or greenlet::set_default_stack_size(..)\n");
    msg.write_stderr();
    reset_to_default(libc::SIGABRT);
    // SAFETY: abort is async-signal-safe and never returns.
    unsafe { libc::abort() }
}

/// A fixed-size message buffer for the signal handler (no allocation).
struct MsgBuf {
    buf: [u8; 320],
    len: usize,
}

impl MsgBuf {
    fn new() -> Self {
        MsgBuf {
            buf: [0; 320],
            len: 0,
        }
    }

    /// Appends as much of `bytes` as fits.
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn write_stderr(&self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: writes initialised bytes of our own buffer; write is async-signal-safe.
            let n = unsafe { libc::write(2, self.buf[done..].as_ptr().cast(), self.len - done) };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use corosensei::Coroutine;
    use corosensei::stack::Stack as _;

    /// Env var telling a re-executed test binary which child scenario to run.
    const CHILD_ENV: &str = "GREENHUB_STACK_TEST_CHILD";

    fn maps_lines() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    }

    /// Re-runs this test binary on the single test `child_main` with `scenario`,
    /// returning (stderr, exit status).
    fn run_child(scenario: &str) -> (String, std::process::ExitStatus) {
        let module = module_path!().split_once("::").unwrap().1;
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("{module}::child_main"),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, scenario)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status,
        )
    }

    fn recurse(n: u64) -> u64 {
        let mut buf = [0u8; 1024];
        buf[0] = n as u8;
        black_box(&mut buf);
        if black_box(n) == u64::MAX {
            return 0;
        }
        recurse(n + 1) + u64::from(buf[7])
    }

    /// Runs `f(arg)` on a raw pthread (no std setup, so no alternate signal stack)
    /// and returns its result.
    fn run_pthread(f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void, arg: usize) -> usize {
        // SAFETY (test): plain pthread_create/join with a valid entry point; the
        // thread handle is joined before returning.
        unsafe {
            let mut t: libc::pthread_t = std::mem::zeroed();
            assert_eq!(
                libc::pthread_create(&mut t, ptr::null(), f, arg as *mut _),
                0
            );
            let mut ret = ptr::null_mut();
            assert_eq!(libc::pthread_join(t, &mut ret), 0);
            ret as usize
        }
    }

    /// Installs the handler on this thread; returns the alternate stack's address.
    extern "C" fn alt_stack_probe(_: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY (test): all-zero stack_t is valid; a null `ss` only queries.
        let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
        unsafe { libc::sigaltstack(ptr::null(), &mut cur) };
        assert_ne!(
            cur.ss_flags & libc::SS_DISABLE,
            0,
            "raw pthread already has one"
        );
        install_overflow_handler();
        // SAFETY (test): as above.
        unsafe { libc::sigaltstack(ptr::null(), &mut cur) };
        assert_eq!((cur.ss_flags, cur.ss_size), (0, ALT_STACK_SIZE));
        cur.ss_sp
    }

    extern "C" fn overflow_on_thread(mode: *mut libc::c_void) -> *mut libc::c_void {
        install_overflow_handler();
        let mode = if mode as usize == GuardMode::Madvise as usize {
            GuardMode::Madvise
        } else {
            GuardMode::Mprotect
        };
        let mut pool = StackPool::with_mode(mode);
        let mut stack = pool.get(MIN_STACK_SIZE).unwrap();
        stack.set_owner(u64::MAX, "on a foreign thread");
        let mut co = Coroutine::<(), (), u64, _>::with_stack(stack, |_, ()| recurse(0));
        co.resume(());
        ptr::null_mut()
    }

    fn mode_of(scenario: &str) -> GuardMode {
        if scenario.ends_with("mprotect") {
            GuardMode::Mprotect
        } else {
            GuardMode::Madvise
        }
    }

    /// Not a test by itself: the body of the re-executed child processes.
    #[test]
    fn child_main() {
        let Ok(scenario) = std::env::var(CHILD_ENV) else {
            return;
        };
        let mode = mode_of(&scenario);
        let mut pool = StackPool::with_mode(mode);
        match scenario.split_once('_').map_or(scenario.as_str(), |s| s.0) {
            "overflow" => {
                install_overflow_handler();
                let mut stack = pool.get(64 * 1024).unwrap();
                stack.set_owner(7, "deep");
                let mut co = Coroutine::<(), (), u64, _>::with_stack(stack, |_, ()| recurse(0));
                co.resume(());
            }
            "noheader" => {
                install_overflow_handler();
                let stack = pool.get(32 * 1024).unwrap();
                let mut co = Coroutine::<(), (), u64, _>::with_stack(stack, |_, ()| recurse(0));
                co.resume(());
            }
            "touchguard" => {
                let stack = pool.get(MIN_STACK_SIZE).unwrap();
                // SAFETY (test): deliberately touching the guard page must fault.
                unsafe { ptr::read_volatile(stack.limit().get() as *const u8) };
            }
            "nobatch" => {
                // Without process_madvise: guards and releases one range at a time.
                BATCH_STATE.store(2, Ordering::Relaxed);
                pool.inner.borrow_mut().hot_limit = 64;
                let n = 64 + RELEASE_BATCH;
                let stacks: Vec<_> = (0..n).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
                let top = stacks[0].base().get() - 1;
                // SAFETY (test): the top usable byte of an owned stack.
                unsafe { ptr::write_volatile(top as *mut u8, 1) };
                let guard = stacks[39].limit().get();
                drop(stacks);
                // SAFETY (test): a released free slot's usable area, mapped and unused.
                assert_eq!(unsafe { ptr::read_volatile(top as *const u8) }, 0);
                assert_eq!(BATCH_STATE.load(Ordering::Relaxed), 2);
                // SAFETY (test): deliberately touching a guard page must fault.
                unsafe { ptr::read_volatile(guard as *const u8) };
            }
            "touchbatchguard" => {
                // The 40th stack's guard was installed with 31 others in one call.
                let stacks: Vec<_> = (0..40).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
                // SAFETY (test): deliberately touching the guard page must fault.
                unsafe { ptr::read_volatile(stacks[39].limit().get() as *const u8) };
            }
            "dontneed" => {
                // Guard markers must survive DONTNEED over the whole slot.
                let stack = pool.get(MIN_STACK_SIZE).unwrap();
                let len = stack.usable_size() + page_size();
                // SAFETY (test): the slot is ours; its contents are not needed.
                let rc = unsafe {
                    libc::madvise(stack.limit().get() as *mut _, len, libc::MADV_DONTNEED)
                };
                assert_eq!(rc, 0);
                // SAFETY (test): deliberately touching the guard page must fault.
                unsafe { ptr::read_volatile(stack.limit().get() as *const u8) };
            }
            "threadoverflow" => {
                install_overflow_handler();
                black_box(recurse(0));
            }
            "otherfault" => {
                install_overflow_handler();
                let _keep = pool.get(MIN_STACK_SIZE).unwrap();
                // SAFETY (test): a PROT_NONE page outside our arenas; reading it faults.
                unsafe {
                    let p = libc::mmap(
                        ptr::null_mut(),
                        4096,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    ptr::read_volatile(p as *const u8);
                }
            }
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
                std::process::exit(0);
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
                std::process::exit(0);
            }
            "foreignthread" => {
                // A thread std did not create has no alternate signal stack: ours is
                // made on demand and unmapped at thread exit.
                let ss_sp = run_pthread(alt_stack_probe, 0);
                // SAFETY (test): msync only inspects the mapping state of the range.
                let rc = unsafe { libc::msync(ss_sp as *mut _, page_size(), libc::MS_ASYNC) };
                assert_eq!(rc, -1, "alt stack still mapped after thread exit");
                eprintln!("alt stack freed");
                run_pthread(overflow_on_thread, mode as usize);
            }
            other => panic!("unknown scenario {other}"),
        }
        eprintln!("child survived");
        std::process::exit(0);
    }

    fn modes() -> Vec<GuardMode> {
        let mut m = vec![GuardMode::Mprotect];
        if madvise_guard_supported() {
            m.push(GuardMode::Madvise);
        } else {
            eprintln!("MADV_GUARD_INSTALL unsupported here; testing mprotect only");
        }
        m
    }

    fn suffix(mode: GuardMode) -> &'static str {
        match mode {
            GuardMode::Madvise => "madvise",
            GuardMode::Mprotect => "mprotect",
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
    fn stacks_are_writable_and_run_coroutines() {
        for mode in modes() {
            let mut pool = StackPool::with_mode(mode);
            let mut stack = pool.get(MIN_STACK_SIZE).unwrap();
            stack.set_owner(3, "héllo-wörld-with-a-rather-long-name-that-gets-cut");
            let (lo, hi) = (stack.limit().get() + page_size(), stack.base().get());
            // SAFETY (test): the usable area below base() is ours and unused.
            unsafe { ptr::write_bytes(lo as *mut u8, 0xAB, hi - lo) };
            // SAFETY (test): reading back the header written by set_owner.
            let h = unsafe { ptr::read((hi) as *const Header) };
            assert_eq!(
                (h.magic, h.id, h.usable_size),
                (HEADER_MAGIC, 3, MIN_STACK_SIZE as u64)
            );
            let name = std::str::from_utf8(&h.name[..h.name_len as usize]).unwrap();
            assert!(name.len() <= NAME_MAX && name.starts_with("héllo-wörld"));
            let mut co = Coroutine::<u32, u32, u32, _>::with_stack(stack, |y, a| {
                let b = y.suspend(a + 1);
                black_box(recurse(u64::MAX - 3)) as u32 + b
            });
            assert!(matches!(
                co.resume(1),
                corosensei::CoroutineResult::Yield(2)
            ));
            assert!(matches!(
                co.resume(5),
                corosensei::CoroutineResult::Return(5)
            ));
            let stack = co.into_stack();
            assert_eq!(pool.stats().slots_in_use, 1);
            pool.put(stack);
            assert_eq!(pool.stats().slots_in_use, 0);
        }
    }

    #[test]
    fn cold_stacks_are_released_but_reusable() {
        const HOT_LIMIT: usize = 64;
        let n = HOT_LIMIT + RELEASE_BATCH + 10;
        let mut pool = StackPool::with_mode(guard_mode());
        pool.inner.borrow_mut().hot_limit = HOT_LIMIT;
        let stacks: Vec<_> = (0..n).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
        for s in &stacks {
            // SAFETY (test): the top usable byte of an owned stack.
            unsafe { ptr::write_volatile((s.base().get() - 1) as *mut u8, 1) };
        }
        let top_byte = |slot: usize| {
            // SAFETY (test): reading a free slot's usable area, mapped and unused.
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
        if !madvise_guard_supported() {
            eprintln!("MADV_GUARD_INSTALL unsupported; skipped");
            return;
        }
        let (err, st) = run_child("manystacks_madvise");
        eprint!("{err}");
        assert!(st.success(), "{err}");
    }

    #[test]
    fn mprotect_mode_fails_cleanly_at_the_mapping_limit() {
        let (err, st) = run_child("mapcount_mprotect");
        eprint!("{err}");
        assert!(st.success(), "{err}");
    }

    #[test]
    fn foreign_threads_get_an_alt_stack() {
        for mode in modes() {
            let (err, st) = run_child(&format!("foreignthread_{}", suffix(mode)));
            assert!(err.contains("alt stack freed"), "{err}");
            assert!(
                err.contains(
                    "greenlet #18446744073709551615 \"on a foreign thread\" (stack size 16 KiB)"
                ),
                "{err}"
            );
            assert_eq!(st.signal(), Some(libc::SIGABRT), "{err}");
        }
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
        let entry = pool.inner.borrow().classes[0].arenas[0].registry;
        assert!(entry.is_some());
        drop(pool);
        assert_eq!(
            find_guard(lim + 5),
            None,
            "dropped arenas leave the registry"
        );
    }

    #[test]
    fn msgbuf_formats_integers() {
        let mut m = MsgBuf::new();
        m.push_u64(0);
        m.push(b" ");
        m.push_u64(u64::MAX);
        assert_eq!(&m.buf[..m.len], b"0 18446744073709551615");
    }

    #[test]
    fn touching_the_guard_faults() {
        for mode in modes() {
            for scenario in ["touchguard", "touchbatchguard", "nobatch", "dontneed"] {
                let (err, st) = run_child(&format!("{scenario}_{}", suffix(mode)));
                assert_eq!(
                    st.signal(),
                    Some(libc::SIGSEGV),
                    "{scenario} {mode:?}: {err}"
                );
            }
        }
    }

    #[test]
    fn overflow_names_the_greenlet() {
        for mode in modes() {
            let (err, st) = run_child(&format!("overflow_{}", suffix(mode)));
            assert!(err.contains("greenhub: stack overflow in greenlet #7 \"deep\" (stack size 64 KiB); aborting\n"), "{mode:?}: {err}");
            assert!(
                err.contains(
                    "greenhub: raise the stack size with Greenlet::builder().stack_size(..)"
                ),
                "{err}"
            );
            assert_eq!(st.signal(), Some(libc::SIGABRT), "{mode:?}: {err}");
            let (err, st) = run_child(&format!("noheader_{}", suffix(mode)));
            assert!(
                err.contains("stack overflow in greenlet #? (stack size 32 KiB)"),
                "{err}"
            );
            assert_eq!(st.signal(), Some(libc::SIGABRT));
        }
    }

    #[test]
    fn other_faults_chain_to_previous_handler() {
        let (err, st) = run_child("threadoverflow");
        assert!(err.contains("has overflowed its stack"), "{err}");
        assert!(!err.contains("greenhub"), "{err}");
        assert_eq!(st.signal(), Some(libc::SIGABRT));
        let (err, st) = run_child("otherfault");
        assert!(!err.contains("greenhub"), "{err}");
        assert_eq!(st.signal(), Some(libc::SIGSEGV), "{err}");
    }
}
