//! Capturing a running thread's stack: the monitor signals the thread; the handler, on
//! that thread, records return addresses and the running greenlet's identity into a
//! preallocated slot (no allocation, no locks); the monitor reads the slot back.
//!
//! # System calls are never interrupted on purpose
//!
//! A signal that lands while a thread sleeps in `poll`, `epoll_wait`, `nanosleep`,
//! `select` and their kin makes the call fail with `EINTR`, `SA_RESTART` or not (see
//! signal(7)), and C code that does not retry breaks. So the thread is signalled only
//! when `/proc/self/task/<tid>/syscall`, read right before the signal is sent, says it is
//! running on a CPU; a thread in a system call is reported from what its hub published,
//! without a stack. The handler is installed with `SA_RESTART`, so that calls that can be
//! restarted are, should one begin in the microseconds between that read and the signal's
//! arrival; the handler notices when the signal cut a call short all the same (the
//! interrupted context returns `-EINTR` from a `syscall` instruction), and the report says
//! so.
//!
//! # Other SIGURGs
//!
//! Our signals carry a cookie (sent with `rt_tgsigqueueinfo`); any other SIGURG goes to
//! the handler that was installed before ours, if any.

use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering,
};
use std::time::{Duration, Instant};

use super::report::{ThreadActivity, activity};
use crate::greenlet::probe::{Identity, Probe};

/// The signal used to ask a thread for its stack (ignored by default, unused by std).
const SIGNAL: libc::c_int = libc::SIGURG;
const MAX_FRAMES: usize = 96;
const NAME_LEN: usize = 64;

struct Slot {
    /// The tid the handler should act on (0: none).
    target: AtomicI32,
    done: AtomicBool,
    len: AtomicUsize,
    ips: [AtomicUsize; MAX_FRAMES],
    id: AtomicU64,
    name: [AtomicU8; NAME_LEN],
    name_len: AtomicUsize,
    spawned_at: AtomicPtr<std::panic::Location<'static>>,
    /// The signal cut a system call short (it returns `EINTR`).
    interrupted_syscall: AtomicBool,
    /// The instruction pointer of the interrupted code (0: not known).
    pc: AtomicUsize,
}

static SLOT: Slot = Slot {
    target: AtomicI32::new(0),
    done: AtomicBool::new(false),
    len: AtomicUsize::new(0),
    ips: [const { AtomicUsize::new(0) }; MAX_FRAMES],
    id: AtomicU64::new(0),
    name: [const { AtomicU8::new(0) }; NAME_LEN],
    name_len: AtomicUsize::new(0),
    spawned_at: AtomicPtr::new(std::ptr::null_mut()),
    interrupted_syscall: AtomicBool::new(false),
    pc: AtomicUsize::new(0),
};

/// The SIGURG action installed before ours: its handler and flags.
static PREV_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_FLAGS: AtomicI32 = AtomicI32::new(0);

/// What a capture brought back.
pub(crate) struct Captured {
    pub(crate) ips: Vec<usize>,
    pub(crate) greenlet_id: u64,
    pub(crate) name: Option<String>,
    pub(crate) spawned_at: Option<&'static std::panic::Location<'static>>,
    /// The signal cut a system call short: it may have failed with `EINTR`.
    pub(crate) interrupted_syscall: bool,
    /// Where the interrupted code was: the first of `ips` that is not the handler's own
    /// (0: not known).
    pub(crate) pc: usize,
}

/// The value our signals carry in `si_value`, to tell them from anyone else's SIGURG.
fn cookie() -> usize {
    &SLOT as *const Slot as usize
}

/// Installs the capture handler (once per process), keeping the action it replaces to
/// chain to.
pub(crate) fn install_handler() {
    // SAFETY: all-zero is a valid `sigaction` (SIG_DFL, empty mask, no flags).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null `act` only queries the current action into `old`.
    if unsafe { libc::sigaction(SIGNAL, std::ptr::null(), &mut old) } != 0 {
        return;
    }
    if old.sa_sigaction == handler as *const () as usize {
        return;
    }
    PREV_HANDLER.store(old.sa_sigaction, Ordering::Relaxed);
    PREV_FLAGS.store(old.sa_flags, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is a valid starting point; we set the handler, flags and
    // an empty mask before passing it to sigaction, which only reads it. The handler has
    // the signature SA_SIGINFO requires and only does async-signal-safe work.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(SIGNAL, &action, std::ptr::null_mut());
    }
}

/// Is this signal one of ours (sent by `send`)?
///
/// # Safety
/// `info` is null or the siginfo the kernel passed to an SA_SIGINFO handler.
unsafe fn is_ours(info: *const libc::siginfo_t) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: per the contract; for SI_QUEUE signals the `_rt` fields (pid, uid, value)
    // are the ones the sender filled in.
    unsafe {
        (*info).si_code == libc::SI_QUEUE
            && (*info).si_pid() == libc::getpid()
            && (*info).si_value().sival_ptr as usize == cookie()
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo (or null) to an SA_SIGINFO handler.
    if !unsafe { is_ours(info) } {
        chain(sig, info, ctx);
        return;
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    if tid != SLOT.target.load(Ordering::Acquire) {
        return; // ours, but late: the capture has given up on it
    }
    // SAFETY: `ctx` is the ucontext the kernel passed with this signal.
    let (interrupted, pc) = unsafe { (interrupted_syscall(ctx), interrupted_pc(ctx)) };
    SLOT.interrupted_syscall
        .store(interrupted, Ordering::Relaxed);
    SLOT.pc.store(pc, Ordering::Relaxed);
    let mut n = 0;
    // SAFETY: `trace_unsynchronized` requires that no other thread unwinds concurrently
    // through backtrace's non-thread-safe paths; on Linux it uses `_Unwind_Backtrace`,
    // which is thread-safe, and the closure only stores into atomics.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            SLOT.ips[n].store(frame.ip() as usize, Ordering::Relaxed);
            n += 1;
            n < MAX_FRAMES
        });
    }
    SLOT.len.store(n, Ordering::Relaxed);
    let identity: Identity = crate::greenlet::signal_safe_identity();
    SLOT.id.store(identity.id, Ordering::Relaxed);
    let len = identity.name_len.min(NAME_LEN);
    for (slot, byte) in SLOT.name.iter().zip(&identity.name[..len]) {
        slot.store(*byte, Ordering::Relaxed);
    }
    SLOT.name_len.store(len, Ordering::Relaxed);
    SLOT.spawned_at.store(
        identity
            .spawned_at
            .map_or(std::ptr::null_mut(), |l| l as *const _ as *mut _),
        Ordering::Relaxed,
    );
    SLOT.done.store(true, Ordering::Release);
}

/// Hands a SIGURG that is not ours to the handler installed before ours.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREV_HANDLER.load(Ordering::Relaxed);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        return; // SIGURG's default action is to ignore it
    }
    if PREV_FLAGS.load(Ordering::Relaxed) & libc::SA_SIGINFO != 0 {
        // SAFETY: `prev` was installed with SA_SIGINFO, so it has this signature; it gets
        // the arguments we were given, as the kernel would have passed them.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev) };
        f(sig, info, ctx);
    } else {
        // SAFETY: `prev` was installed without SA_SIGINFO: a `void (*)(int)`.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev) };
        f(sig);
    }
}

/// Did the signal land in a system call that it cut short? The kernel then hands the
/// handler a context that returns `-EINTR` right after a `syscall` instruction.
///
/// # Safety
/// `ctx` is null or the ucontext the kernel passed to an SA_SIGINFO handler.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn interrupted_syscall(ctx: *mut libc::c_void) -> bool {
    if ctx.is_null() {
        return false;
    }
    // SAFETY: per the contract, `ctx` points at the interrupted context.
    let gregs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let rax = gregs[libc::REG_RAX as usize];
    let rip = gregs[libc::REG_RIP as usize] as usize;
    rax == -(libc::EINTR as i64) && follows_syscall_instruction(rip)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
unsafe fn interrupted_syscall(_ctx: *mut libc::c_void) -> bool {
    false
}

/// The instruction pointer of the interrupted code (0 when not known).
///
/// # Safety
/// As for [`interrupted_syscall`].
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn interrupted_pc(ctx: *mut libc::c_void) -> usize {
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: per the contract, `ctx` points at the interrupted context.
    unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize] as usize }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
unsafe fn interrupted_pc(_ctx: *mut libc::c_void) -> usize {
    0
}

/// Are the two bytes before `ip` a `syscall` instruction (0f 05)? Read with
/// `process_vm_readv`, which fails cleanly (instead of faulting in the handler) if they
/// are not readable.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn follows_syscall_instruction(ip: usize) -> bool {
    let Some(at) = ip.checked_sub(2) else {
        return false;
    };
    let mut bytes = [0_u8; 2];
    let local = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: 2,
    };
    let remote = libc::iovec {
        iov_base: at as *mut libc::c_void,
        iov_len: 2,
    };
    // SAFETY: reads two bytes of our own address space into `bytes`; the kernel checks
    // the remote range and fails with EFAULT where it is not readable.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    n == 2 && bytes == [0x0f, 0x05]
}

/// Sends our signal, with its cookie, to thread `tid` of this process.
fn send(tid: libc::pid_t) -> bool {
    /// `siginfo_t` as `rt_tgsigqueueinfo` reads it for an `SI_QUEUE` signal (x86_64 and
    /// the other 64-bit Linux layouts: the `_rt` union member starts at offset 16).
    #[repr(C)]
    struct QueuedInfo {
        signo: libc::c_int,
        errno: libc::c_int,
        code: libc::c_int,
        _pad: libc::c_int,
        pid: libc::pid_t,
        uid: libc::uid_t,
        value: usize,
        _rest: [u8; 128 - 32],
    }
    const _: () = assert!(std::mem::size_of::<QueuedInfo>() == 128);
    #[cfg(target_pointer_width = "64")]
    const _: () = assert!(std::mem::size_of::<libc::siginfo_t>() == 128);
    let info = QueuedInfo {
        signo: SIGNAL,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
        // SAFETY: getuid has no preconditions.
        uid: unsafe { libc::getuid() },
        value: cookie(),
        _rest: [0; 128 - 32],
    };
    // SAFETY: rt_tgsigqueueinfo only reads `info` (a complete 128-byte siginfo); a stale
    // tid at worst signals nothing (ESRCH) or a thread whose handler ignores it because
    // the tid does not match `target`.
    unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            tid,
            SIGNAL,
            &info as *const QueuedInfo,
        ) == 0
    }
}

/// Asks the probe's thread for its stack, if it is running on a CPU: returns what it was
/// doing (read right before signalling it) and, if it was signalled and answered within
/// `timeout`, the capture.
pub(crate) fn capture(probe: &Probe, timeout: Duration) -> (ThreadActivity, Option<Captured>) {
    SLOT.done.store(false, Ordering::Relaxed);
    SLOT.target.store(probe.tid, Ordering::Release);
    let doing = activity(probe.tid);
    let sent = doing == ThreadActivity::OnCpu && send(probe.tid);
    let deadline = Instant::now() + timeout;
    while sent && !SLOT.done.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(100));
    }
    SLOT.target.store(0, Ordering::Release);
    if !sent || !SLOT.done.load(Ordering::Acquire) {
        return (doing, None);
    }
    let len = SLOT.len.load(Ordering::Relaxed);
    let name_len = SLOT.name_len.load(Ordering::Relaxed);
    let name: Vec<u8> = SLOT.name[..name_len]
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    let spawned_at = SLOT.spawned_at.load(Ordering::Relaxed);
    let captured = Captured {
        ips: SLOT.ips[..len]
            .iter()
            .map(|ip| ip.load(Ordering::Relaxed))
            .collect(),
        greenlet_id: SLOT.id.load(Ordering::Relaxed),
        name: (name_len > 0).then(|| String::from_utf8_lossy(&name).into_owned()),
        // SAFETY: the pointer was made from a `&'static Location` in the handler.
        spawned_at: (!spawned_at.is_null()).then(|| unsafe { &*spawned_at }),
        interrupted_syscall: SLOT.interrupted_syscall.load(Ordering::Relaxed),
        pc: SLOT.pc.load(Ordering::Relaxed),
    };
    (doing, Some(captured))
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_bytes_of_a_syscall_instruction() {
        let code = [0x90_u8, 0x0f, 0x05, 0x90];
        let base = code.as_ptr() as usize;
        assert!(follows_syscall_instruction(base + 3));
        assert!(!follows_syscall_instruction(base + 2));
        assert!(
            !follows_syscall_instruction(1),
            "unreadable: no fault, just no"
        );
    }
}
