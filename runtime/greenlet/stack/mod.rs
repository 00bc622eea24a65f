//! Greenlet stacks: pooled per thread, each with a guard page, carved from large
//! `MAP_NORESERVE` arenas so that a million stacks fit in one process without
//! hitting `vm.max_map_count`.
//!
//! Slot layout inside an arena (addresses grow to the right, stacks grow left):
//!
//! ```text
//! | guard page | usable area ...................................... | header (64 B) |
//! ^ slot start = limit()                                  base() ----^               ^ slot top
//! ```
//!
//! - [`guard`]: guard pages are made with `madvise(MADV_GUARD_INSTALL)` (Linux 6.13+,
//!   adds no mapping) or, as a fallback, `mprotect(PROT_NONE)` (splits the arena
//!   mapping), many slots per system call where the kernel allows it;
//! - [`pool`]: the per-thread [`StackPool`] of size classes, arenas and free lists;
//! - [`registry`]: every arena is recorded in a lock-free, process-global registry, so
//!   that the SIGSEGV/SIGBUS handler of [`overflow`] (installed by
//!   [`install_overflow_handler`]) can tell a greenlet stack overflow from any other
//!   fault and name the greenlet from the slot's header ([`Stack::set_owner`]).
//!
//! This file holds the layout: the sizes, the header, and [`Stack`], one owned slot.

mod altstack;
mod guard;
mod overflow;
mod pool;
mod registry;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use corosensei::stack::StackPointer;

pub use guard::{GuardMode, guard_mode};
pub(crate) use overflow::install_overflow_handler;
use pool::PoolInner;
pub(crate) use pool::{StackPool, usable_size_for};

/// Default usable stack size: 256 KiB (enough for ordinary Rust code in debug builds).
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;
/// Smallest accepted size (smaller requests are rounded up to this): 16 KiB.
pub const MIN_STACK_SIZE: usize = 16 * 1024;

/// Size of the owner header at the top of every slot.
const HEADER_SIZE: usize = 64;
/// Marks a header written by [`Stack::set_owner`] ("greenhub" in ASCII).
const HEADER_MAGIC: u64 = 0x6772_6565_6e68_7562;
/// Longest greenlet name kept in the header, in bytes.
const NAME_MAX: usize = 39;

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

/// The system's page size (read once).
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

/// One stack slot, owned: a guard page at the low end, then `usable_size()` bytes
/// whose top 64 bytes hold the owner header.
///
/// Dropping a `Stack` (or giving it to [`StackPool::put`]) returns it to the pool it
/// came from, even after that pool's `StackPool` handle was dropped. `!Send`: a stack
/// belongs to the thread whose pool made it.
pub(crate) struct Stack {
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
    pub(crate) fn usable_size(&self) -> usize {
        self.usable
    }

    /// Records who runs on this stack, so the overflow handler can name it: writes
    /// the header at the top of the slot (magic, `id`, usable size and up to 39 bytes
    /// of `name`, truncated on a char boundary). No syscalls.
    pub(crate) fn set_owner(&mut self, id: u64, name: &str) {
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
    #[inline]
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

/// What the tests of every part of the stack module share: re-running the test binary
/// on one child scenario (for faults that end the process), and both guard modes.
#[cfg(test)]
mod testing {
    use std::hint::black_box;
    use std::process::{Command, ExitStatus};

    use super::guard::{self, GuardMode};

    /// Env var telling a re-executed test binary which child scenario to run.
    const CHILD_ENV: &str = "GREENHUB_STACK_TEST_CHILD";

    /// Re-runs this test binary on the single test `child_main` of `module` (its
    /// `module_path!()`) with `scenario`, returning (stderr, exit status).
    pub(super) fn run_child(module: &str, scenario: &str) -> (String, ExitStatus) {
        let module = module.split_once("::").unwrap().1;
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

    /// In a child run by [`run_child`]: its scenario's name (what comes before `_`) and
    /// guard mode (what follows it). `None` in an ordinary test run.
    pub(super) fn child_scenario() -> Option<(String, GuardMode)> {
        let scenario = std::env::var(CHILD_ENV).ok()?;
        let mode = if scenario.ends_with("mprotect") {
            GuardMode::Mprotect
        } else {
            GuardMode::Madvise
        };
        let name = scenario.split_once('_').map_or(scenario.as_str(), |s| s.0);
        Some((name.to_string(), mode))
    }

    /// Ends a child whose scenario was expected to kill it, saying it did not.
    pub(super) fn child_survived() -> ! {
        eprintln!("child survived");
        std::process::exit(0);
    }

    /// Recurses until the stack overflows, 1 KiB a frame.
    pub(super) fn recurse(n: u64) -> u64 {
        let mut buf = [0u8; 1024];
        buf[0] = n as u8;
        black_box(&mut buf);
        if black_box(n) == u64::MAX {
            return 0;
        }
        recurse(n + 1) + u64::from(buf[7])
    }

    /// The guard modes this kernel supports (mprotect always).
    pub(super) fn modes() -> Vec<GuardMode> {
        let mut m = vec![GuardMode::Mprotect];
        if guard::madvise_guard_supported() {
            m.push(GuardMode::Madvise);
        } else {
            eprintln!("MADV_GUARD_INSTALL unsupported here; testing mprotect only");
        }
        m
    }

    /// A scenario name's suffix for `mode`.
    pub(super) fn suffix(mode: GuardMode) -> &'static str {
        match mode {
            GuardMode::Madvise => "madvise",
            GuardMode::Mprotect => "mprotect",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use corosensei::Coroutine;
    use corosensei::stack::Stack as _;

    use super::testing::{modes, recurse};
    use super::*;

    #[test]
    fn stacks_are_writable_and_run_coroutines() {
        for mode in modes() {
            let mut pool = StackPool::with_mode(mode);
            let mut stack = pool.get(MIN_STACK_SIZE).unwrap();
            stack.set_owner(3, "héllo-wörld-with-a-rather-long-name-that-gets-cut");
            let (lo, hi) = (stack.limit().get() + page_size(), stack.base().get());
            // SAFETY: the usable area below base() is ours and unused.
            unsafe { ptr::write_bytes(lo as *mut u8, 0xAB, hi - lo) };
            // SAFETY: reading back the header written by set_owner.
            let h = unsafe { ptr::read((hi) as *const Header) };
            assert_eq!(
                (h.magic, h.id, h.usable_size),
                (HEADER_MAGIC, 3, MIN_STACK_SIZE as u64)
            );
            let name = std::str::from_utf8(&h.name[..h.name_len as usize]).unwrap();
            assert!(name.len() <= NAME_MAX && name.starts_with("héllo-wörld"));
            let mut co = Coroutine::<u32, u32, u32, _>::with_stack(stack, |y, a| {
                let b = y.suspend(a + 1);
                std::hint::black_box(recurse(u64::MAX - 3)) as u32 + b
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
}
