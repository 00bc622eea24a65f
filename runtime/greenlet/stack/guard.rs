//! Guard pages: how they are made (`madvise(MADV_GUARD_INSTALL)`, or `mprotect` where the
//! kernel lacks it), detected once per process, and the batched `process_madvise` calls
//! that install guards and release stack memory many slots at a time.

use std::io;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use super::page_size;

/// `MADV_GUARD_INSTALL` from `<linux/mman.h>` (Linux 6.13+); not in every libc yet.
const MADV_GUARD_INSTALL: libc::c_int = 102;
/// Most ranges given to one `process_madvise` call (the kernel's limit is 1024).
pub(super) const MAX_BATCH: usize = 64;
/// `PIDFD_SELF_THREAD` (Linux 6.14+): makes `process_madvise` act on the calling
/// thread's own address space, with no file descriptor to keep (and none to go stale
/// across `fork`). Older kernels reject it (`EBADF`); we then fall back to `madvise`.
const PIDFD_SELF_THREAD: libc::c_int = -10_000;

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
pub(super) fn madvise_guard_supported() -> bool {
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
/// a guard page (`guard` bytes); `count` is at most [`MAX_BATCH`]. Returns how many
/// leading slots got their guard, or the error if not even the first did. With
/// `madvise` guards, all of them take one `process_madvise` call where the kernel
/// allows it.
pub(super) fn install_guards(
    mode: GuardMode,
    first: usize,
    slot_size: usize,
    count: usize,
    guard: usize,
) -> io::Result<usize> {
    debug_assert!((1..=MAX_BATCH).contains(&count));
    if mode == GuardMode::Madvise {
        let mut ranges = [(0, 0); MAX_BATCH];
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
pub(super) unsafe fn release_ranges(ranges: &[(usize, usize)]) {
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
pub(super) static BATCH_STATE: AtomicU8 = AtomicU8::new(0);

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

#[cfg(test)]
mod tests {
    use std::ptr;

    use corosensei::stack::Stack as _;

    use super::super::pool::{RELEASE_BATCH, StackPool};
    use super::super::testing::{child_scenario, child_survived, modes, run_child, suffix};
    use super::super::{MIN_STACK_SIZE, page_size};
    use super::*;

    /// Not a test by itself: the body of the re-executed child processes.
    #[test]
    fn child_main() {
        let Some((scenario, mode)) = child_scenario() else {
            return;
        };
        let mut pool = StackPool::with_mode(mode);
        match scenario.as_str() {
            "touchguard" => {
                let stack = pool.get(MIN_STACK_SIZE).unwrap();
                // SAFETY: deliberately touching the guard page must fault.
                unsafe { ptr::read_volatile(stack.limit().get() as *const u8) };
            }
            "nobatch" => {
                // Without process_madvise: guards and releases one range at a time.
                BATCH_STATE.store(2, Ordering::Relaxed);
                pool.set_hot_limit(64);
                let n = 64 + RELEASE_BATCH;
                let stacks: Vec<_> = (0..n).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
                let top = stacks[0].base().get() - 1;
                // SAFETY: the top usable byte of an owned stack.
                unsafe { ptr::write_volatile(top as *mut u8, 1) };
                let guard = stacks[39].limit().get();
                drop(stacks);
                // SAFETY: a released free slot's usable area, mapped and unused.
                assert_eq!(unsafe { ptr::read_volatile(top as *const u8) }, 0);
                assert_eq!(BATCH_STATE.load(Ordering::Relaxed), 2);
                // SAFETY: deliberately touching a guard page must fault.
                unsafe { ptr::read_volatile(guard as *const u8) };
            }
            "touchbatchguard" => {
                // The 40th stack's guard was installed with 31 others in one call.
                let stacks: Vec<_> = (0..40).map(|_| pool.get(MIN_STACK_SIZE).unwrap()).collect();
                // SAFETY: deliberately touching the guard page must fault.
                unsafe { ptr::read_volatile(stacks[39].limit().get() as *const u8) };
            }
            "dontneed" => {
                // Guard markers must survive DONTNEED over the whole slot.
                let stack = pool.get(MIN_STACK_SIZE).unwrap();
                let len = stack.usable_size() + page_size();
                // SAFETY: the slot is ours; its contents are not needed.
                let rc = unsafe {
                    libc::madvise(stack.limit().get() as *mut _, len, libc::MADV_DONTNEED)
                };
                assert_eq!(rc, 0);
                // SAFETY: deliberately touching the guard page must fault.
                unsafe { ptr::read_volatile(stack.limit().get() as *const u8) };
            }
            other => panic!("unknown scenario {other}"),
        }
        child_survived();
    }

    #[test]
    fn touching_the_guard_faults() {
        for mode in modes() {
            for scenario in ["touchguard", "touchbatchguard", "nobatch", "dontneed"] {
                let (err, st) = run_child(module_path!(), &format!("{scenario}_{}", suffix(mode)));
                assert_eq!(
                    std::os::unix::process::ExitStatusExt::signal(&st),
                    Some(libc::SIGSEGV),
                    "{scenario} {mode:?}: {err}"
                );
            }
        }
    }
}
