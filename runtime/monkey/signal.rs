//! Knowing when a signal handler runs: `sigaction` and `signal` install handlers through
//! a trampoline that marks the thread as in a signal handler while the user's handler
//! runs, so the hooks it calls behave exactly as the real calls (a handler must not
//! switch greenlets: it may have interrupted the allocator, or the hub itself).
//!
//! `sigaction` reports the user's own handler and flags back, never the trampoline.
//! `patch_all` wraps the handlers installed before it the same way. Handlers installed
//! with a raw system call, or with `sigset`/`sysv_signal`, are not seen; a handler that
//! leaves by `siglongjmp` leaves its thread marked (the hooks then only pass through).

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use libc::{c_int, c_void, sighandler_t, siginfo_t};

use super::context::{InSignal, OFF, mode};
use super::real;

/// Signals 1 to 64.
const NSIG: usize = 65;

/// The user's handler and flags per signal, for the ones installed through the
/// trampoline.
static HANDLERS: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];
static FLAGS: [AtomicI32; NSIG] = [const { AtomicI32::new(0) }; NSIG];

/// A handler address that is a function (not `SIG_DFL`, `SIG_IGN` or `SIG_ERR`).
fn is_function(h: sighandler_t) -> bool {
    h != libc::SIG_DFL && h != libc::SIG_IGN && h != libc::SIG_ERR
}

fn trampoline_addr() -> sighandler_t {
    trampoline as *const () as sighandler_t
}

/// Runs the user's handler for `sig`, marked as in a signal handler.
extern "C" fn trampoline(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    let _mark = InSignal::enter();
    let Some(i) = usize::try_from(sig).ok().filter(|&i| i < NSIG) else {
        return;
    };
    let h = HANDLERS[i].load(Ordering::Acquire);
    let flags = FLAGS[i].load(Ordering::Acquire);
    if !is_function(h) {
        return;
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the user installed `h` with SA_SIGINFO, so it has this signature; the
        // arguments are the kernel's.
        let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: installed without SA_SIGINFO: a `void (*)(int)`.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
}

/// `sigaction(2)`.
///
/// # Safety
/// As `sigaction(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let i = match usize::try_from(sig) {
        Ok(i) if (1..NSIG).contains(&i) && mode() != OFF => i,
        // SAFETY: the caller's arguments, unchanged.
        _ => return unsafe { real::sigaction()(sig, act, old) },
    };
    // SAFETY: the caller's valid arguments.
    unsafe { install(i, act, old) }
}

/// # Safety
/// As `sigaction(2)`, `i` being the signal.
unsafe fn install(i: usize, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    let sig = i as c_int;
    let (prev_h, prev_f) = (
        HANDLERS[i].load(Ordering::Acquire),
        FLAGS[i].load(Ordering::Acquire),
    );
    // SAFETY: all-zero is a valid sigaction.
    let mut kernel_old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `act` is null or the caller's valid sigaction.
    let wrapped = (!act.is_null())
        .then(|| unsafe { *act })
        .filter(|a| is_function(a.sa_sigaction) && a.sa_sigaction != trampoline_addr());
    let r = match wrapped {
        Some(mut new) => {
            HANDLERS[i].store(new.sa_sigaction, Ordering::Release);
            FLAGS[i].store(new.sa_flags, Ordering::Release);
            new.sa_sigaction = trampoline_addr();
            new.sa_flags |= libc::SA_SIGINFO;
            // SAFETY: a valid sigaction whose handler has the SA_SIGINFO signature.
            let r = unsafe { real::sigaction()(sig, &new, &mut kernel_old) };
            if r != 0 {
                HANDLERS[i].store(prev_h, Ordering::Release);
                FLAGS[i].store(prev_f, Ordering::Release);
            }
            r
        }
        // SAFETY: the caller's `act`, our `kernel_old`.
        None => unsafe { real::sigaction()(sig, act, &mut kernel_old) },
    };
    if r == 0 && !old.is_null() {
        if kernel_old.sa_sigaction == trampoline_addr() {
            kernel_old.sa_sigaction = prev_h;
            kernel_old.sa_flags = prev_f;
        }
        // SAFETY: the caller's valid out-pointer.
        unsafe { *old = kernel_old };
    }
    r
}

/// `signal(2)` (glibc's BSD semantics: `SA_RESTART`, the signal blocked in its handler).
///
/// # Safety
/// As `signal(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    if mode() == OFF {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::signal()(sig, handler) };
    }
    // SAFETY: all-zero is a valid sigaction; the set functions only write the mask.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: as above.
    unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaddset(&mut act.sa_mask, sig);
    }
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid structs on our stack.
    if unsafe { sigaction(sig, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// Wraps the handlers installed before the hooks were turned on.
pub(super) fn wrap_installed() {
    for i in 1..NSIG {
        let sig = i as c_int;
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: all-zero is a valid sigaction; a null `act` only queries.
        let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { real::sigaction()(sig, std::ptr::null(), &mut cur) } != 0 {
            continue; // signals glibc keeps for itself
        }
        if is_function(cur.sa_sigaction) && cur.sa_sigaction != trampoline_addr() {
            // SAFETY: reinstalls the current action, through the trampoline.
            unsafe { install(i, &cur, std::ptr::null_mut()) };
        }
    }
}
