//! Capturing a running thread's stack: the monitor signals the thread; the handler, on
//! that thread, records return addresses and the running greenlet's identity into a
//! preallocated slot (no allocation, no locks); the monitor reads the slot back.

use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering,
};
use std::time::{Duration, Instant};

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
};

/// What a capture brought back.
pub(crate) struct Captured {
    pub(crate) ips: Vec<usize>,
    pub(crate) greenlet_id: u64,
    pub(crate) name: Option<String>,
    pub(crate) spawned_at: Option<&'static std::panic::Location<'static>>,
}

pub(crate) fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid starting point; we set the handler, flags and
    // an empty mask before passing it to sigaction, which only reads it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(SIGNAL, &action, std::ptr::null_mut());
    }
}

extern "C" fn handler(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    if tid != SLOT.target.load(Ordering::Acquire) {
        return; // a stray SIGURG, or one meant for another thread
    }
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

/// Asks the probe's thread for its stack; `None` if it does not answer within `timeout`.
pub(crate) fn capture(probe: &Probe, timeout: Duration) -> Option<Captured> {
    SLOT.done.store(false, Ordering::Relaxed);
    SLOT.target.store(probe.tid, Ordering::Release);
    // SAFETY: tgkill only sends a signal; a stale tid at worst signals nothing (ESRCH) or
    // a thread whose handler ignores it because the tid does not match `target`.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), probe.tid, SIGNAL) } == 0;
    let deadline = Instant::now() + timeout;
    while sent && !SLOT.done.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(100));
    }
    SLOT.target.store(0, Ordering::Release);
    if !sent || !SLOT.done.load(Ordering::Acquire) {
        return None;
    }
    let len = SLOT.len.load(Ordering::Relaxed);
    let name_len = SLOT.name_len.load(Ordering::Relaxed);
    let name: Vec<u8> = SLOT.name[..name_len]
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    let spawned_at = SLOT.spawned_at.load(Ordering::Relaxed);
    Some(Captured {
        ips: SLOT.ips[..len]
            .iter()
            .map(|ip| ip.load(Ordering::Relaxed))
            .collect(),
        greenlet_id: SLOT.id.load(Ordering::Relaxed),
        name: (name_len > 0).then(|| String::from_utf8_lossy(&name).into_owned()),
        // SAFETY: the pointer was made from a `&'static Location` in the handler.
        spawned_at: (!spawned_at.is_null()).then(|| unsafe { &*spawned_at }),
    })
}
