//! greenhub's alternate signal stack, one per thread that runs greenlets.
//!
//! Two handlers run on it (`SA_ONSTACK`): the stack-overflow handler of [`overflow`]
//! (the faulting stack has no room left) and the monitor's capture handler (a signal can
//! land while a greenlet's stack is nearly full). Threads made by `pthread_create` have
//! none; std gives the threads it starts one of `SIGSTKSZ` (8 KiB), little room for a
//! handler and a user's handler chained from it. So every thread that runs greenlets gets
//! a 64 KiB one (plus a guard page below it, so that a handler overflowing it faults),
//! unless it already has one at least that large: a user's own is left alone, and so is
//! one in use. It is unmapped when the thread exits.
//!
//! [`overflow`]: super::overflow

use std::cell::Cell;
use std::ptr;

use super::page_size;

/// The usable size of the alternate stack given to threads.
pub(crate) const ALT_STACK_SIZE: usize = 64 * 1024;

/// This thread's alternate stack, if we mapped one.
struct AltStack {
    /// Start of our mapping (guard page, then the stack), or 0.
    map: Cell<usize>,
}

thread_local! {
    static ALT_STACK: AltStack = const { AltStack { map: Cell::new(0) } };
}

/// The calling thread's alternate signal stack (`ss_flags` has `SS_DISABLE` when none).
fn current() -> Option<libc::stack_t> {
    // SAFETY: all-zero is a valid `stack_t` (null pointer, zero flags and size).
    let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null `ss` only queries the current alternate stack into `old`.
    (unsafe { libc::sigaltstack(ptr::null(), &mut old) } == 0).then_some(old)
}

/// Gives the calling thread a 64 KiB alternate signal stack unless it has one at least
/// that large (or is running on its current one). Idempotent; the stack is unmapped at
/// thread exit.
pub(crate) fn ensure() {
    let _ = ALT_STACK.try_with(AltStack::ensure);
}

/// The calling thread's alternate signal stack: its start and size, if it has one.
#[cfg(test)]
pub(crate) fn installed() -> Option<(usize, usize)> {
    current()
        .filter(|s| s.ss_flags & libc::SS_DISABLE == 0)
        .map(|s| (s.ss_sp as usize, s.ss_size))
}

impl AltStack {
    fn ensure(&self) {
        if self.map.get() != 0 {
            return;
        }
        let Some(old) = current() else {
            return;
        };
        let enabled = old.ss_flags & libc::SS_DISABLE == 0;
        if (enabled && old.ss_size >= ALT_STACK_SIZE) || old.ss_flags & libc::SS_ONSTACK != 0 {
            return; // large enough already (or in use right now: not ours to change)
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
            return; // keep the one there is
        }
        // SAFETY: the first page of the mapping made above, which nothing references:
        // a guard, so that a handler overflowing the alternate stack faults.
        unsafe { libc::mprotect(p, page, libc::PROT_NONE) };
        let new = libc::stack_t {
            ss_sp: (p as usize + page) as *mut libc::c_void,
            ss_flags: 0,
            ss_size: ALT_STACK_SIZE,
        };
        // SAFETY: `new` describes memory we own, mapped until this thread-local is
        // destroyed, where it is uninstalled first. The stack it replaces (std's, whose
        // owner unmaps it at thread exit) is not in use: we are not on it (checked above).
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
        let map = self.map.get();
        if map == 0 {
            return;
        }
        let ours = map + page_size();
        match current() {
            Some(cur) if cur.ss_flags & libc::SS_DISABLE == 0 && cur.ss_sp as usize == ours => {
                let disable = libc::stack_t {
                    ss_sp: ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                // SAFETY: uninstalls our alternate stack, which we are not running on
                // (thread-local destructors do not run in signal handlers).
                if unsafe { libc::sigaltstack(&disable, ptr::null_mut()) } != 0 {
                    return; // still installed: leak it rather than unmap it
                }
            }
            Some(_) => {} // another one was installed since (or std's exit disabled ours)
            None => return, // cannot tell: leak it
        }
        // SAFETY: our mapping, installed as nobody's alternate stack any more.
        unsafe { libc::munmap(map as *mut libc::c_void, page_size() + ALT_STACK_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_small_alternate_stack_and_keeps_a_large_one() {
        std::thread::spawn(|| {
            // std gives its threads a small one (or none).
            ensure();
            let (sp, size) = installed().expect("an alternate stack");
            assert_eq!(size, ALT_STACK_SIZE);
            ensure(); // idempotent
            assert_eq!(installed(), Some((sp, size)));
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            let mut big = vec![0_u8; 4 * ALT_STACK_SIZE];
            let mine = libc::stack_t {
                ss_sp: big.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: big.len(),
            };
            // SAFETY: `big` outlives its use as the alternate stack (uninstalled below).
            assert_eq!(unsafe { libc::sigaltstack(&mine, ptr::null_mut()) }, 0);
            ensure();
            assert_eq!(installed(), Some((big.as_ptr() as usize, big.len())));
            let off = libc::stack_t {
                ss_sp: ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: uninstalls the stack installed above before `big` is freed.
            assert_eq!(unsafe { libc::sigaltstack(&off, ptr::null_mut()) }, 0);
        })
        .join()
        .unwrap();
    }
}
