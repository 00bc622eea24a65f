//! Capturing a running thread's stack: the monitor signals the thread; the handler, on
//! that thread, records the interrupted registers and the running greenlet's identity into
//! a preallocated slot (no allocation, no locks), then holds the thread there while the
//! monitor walks its stack from its own thread with reads that cannot fault (see
//! `unwind`), and lets it go. The handler itself never unwinds: an unwinder running on the
//! interrupted thread reads whatever the unwind tables point at, and where they do not
//! describe the stack (a signal landing inside a context switch) it crashed the process.
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

use std::sync::Mutex;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::time::{Duration, Instant};

use super::report::{ThreadActivity, activity};
use super::unwind::{Regs, Unwinder, reg};
use crate::greenlet::probe::{Identity, Probe};

/// The signal used to ask a thread for its stack (ignored by default, unused by std).
const SIGNAL: libc::c_int = libc::SIGURG;
const MAX_FRAMES: usize = 96;
const NAME_LEN: usize = 64;
/// How long the handler holds its thread for the monitor's walk, at most.
const HOLD_LIMIT: Duration = Duration::from_millis(100);

/// `Slot::phase`: no capture under way.
const IDLE: u32 = 0;
/// The monitor has signalled `target` and waits for its handler (which claims the request
/// by swapping `target` to 0).
const REQUESTED: u32 = 1;
/// The handler has filled the slot and holds its thread until the monitor is done.
const HELD: u32 = 2;
/// The monitor is done with the stack: the handler returns.
const RELEASED: u32 = 3;
/// The handler stopped waiting (`HOLD_LIMIT`): its thread runs on, its stack is changing.
const ABANDONED: u32 = 4;

struct Slot {
    /// The tid the handler should act on (0: none, or claimed).
    target: AtomicI32,
    /// Where the capture is (`IDLE`, `REQUESTED`, ...); a futex word.
    phase: AtomicU32,
    /// The interrupted code's instruction pointer.
    pc: AtomicU64,
    /// The interrupted code's callee-saved registers and stack pointer, by DWARF number.
    regs: [AtomicU64; 17],
    id: AtomicU64,
    name: [AtomicU8; NAME_LEN],
    name_len: AtomicUsize,
    spawned_at: AtomicPtr<std::panic::Location<'static>>,
    /// The signal cut a system call short (it returns `EINTR`).
    interrupted_syscall: AtomicBool,
}

static SLOT: Slot = Slot {
    target: AtomicI32::new(0),
    phase: AtomicU32::new(IDLE),
    pc: AtomicU64::new(0),
    regs: [const { AtomicU64::new(0) }; 17],
    id: AtomicU64::new(0),
    name: [const { AtomicU8::new(0) }; NAME_LEN],
    name_len: AtomicUsize::new(0),
    spawned_at: AtomicPtr::new(std::ptr::null_mut()),
    interrupted_syscall: AtomicBool::new(false),
};

/// The registers the handler records: (DWARF number, `ucontext` index).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const SAVED: [(usize, libc::c_int); 7] = [
    (reg::RBX, libc::REG_RBX),
    (reg::RBP, libc::REG_RBP),
    (reg::RSP, libc::REG_RSP),
    (reg::R12, libc::REG_R12),
    (reg::R13, libc::REG_R13),
    (reg::R14, libc::REG_R14),
    (reg::R15, libc::REG_R15),
];

/// The SIGURG action installed before ours: its handler and flags.
static PREV_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_FLAGS: AtomicI32 = AtomicI32::new(0);

/// What a capture brought back.
pub(crate) struct Captured {
    /// The interrupted instruction, then the return address of each caller (empty when
    /// `in_switch`).
    pub(crate) ips: Vec<usize>,
    /// The signal landed in the middle of a stack switch, where the stack cannot be
    /// walked: no stack this time (the thread is switching: its block is ending).
    pub(crate) in_switch: bool,
    pub(crate) greenlet_id: u64,
    pub(crate) name: Option<String>,
    pub(crate) spawned_at: Option<&'static std::panic::Location<'static>>,
    /// The signal cut a system call short: it may have failed with `EINTR`.
    pub(crate) interrupted_syscall: bool,
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

/// The capture handler. Async-signal-safe: it loads and stores atomics, reads the
/// interrupted context, and waits on a futex (a system call) with a time limit.
extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo (or null) to an SA_SIGINFO handler.
    if !unsafe { is_ours(info) } {
        chain(sig, info, ctx);
        return;
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // Claim the request (only one handler can): ours, unless the capture has given up on
    // this thread, or it is late.
    if ctx.is_null()
        || SLOT
            .target
            .compare_exchange(tid, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    // SAFETY: `ctx` is the ucontext the kernel passed with this signal.
    let interrupted = unsafe { interrupted_syscall(ctx) };
    SLOT.interrupted_syscall
        .store(interrupted, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { save_registers(ctx) };
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
    SLOT.phase.store(HELD, Ordering::Release);
    futex_wake(&SLOT.phase);
    // Hold still while the monitor reads this stack, for `HOLD_LIMIT` at most.
    let deadline = monotonic_ns().saturating_add(HOLD_LIMIT.as_nanos() as u64);
    while SLOT.phase.load(Ordering::Acquire) == HELD {
        let now = monotonic_ns();
        if now >= deadline {
            let _ =
                SLOT.phase
                    .compare_exchange(HELD, ABANDONED, Ordering::AcqRel, Ordering::Relaxed);
            break;
        }
        futex_wait(&SLOT.phase, HELD, deadline - now);
    }
}

/// Records the interrupted context's instruction pointer and registers into the slot.
///
/// # Safety
/// `ctx` is the ucontext the kernel passed to an SA_SIGINFO handler.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn save_registers(ctx: *mut libc::c_void) {
    // SAFETY: per the contract, `ctx` points at the interrupted context.
    let gregs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    SLOT.pc
        .store(gregs[libc::REG_RIP as usize] as u64, Ordering::Relaxed);
    for (n, r) in SAVED {
        SLOT.regs[n].store(gregs[r as usize] as u64, Ordering::Relaxed);
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
unsafe fn save_registers(_ctx: *mut libc::c_void) {
    SLOT.pc.store(0, Ordering::Relaxed);
}

/// `CLOCK_MONOTONIC` in ns (async-signal-safe).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until `word` is no longer `expected`, `ns` pass, or a spurious wake-up.
fn futex_wait(word: &AtomicU32, expected: u32, ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the word (ours, live for the program) and sleeps; the
    // timespec is a valid relative timeout. Async-signal-safe (a system call).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes whoever waits on `word` with [`futex_wait`].
fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a word of ours; it touches no memory. Async-signal-safe.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
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
/// `timeout`, the capture, its stack walked with `unwinder` while the thread was held.
pub(crate) fn capture(
    probe: &Probe,
    timeout: Duration,
    unwinder: &mut Unwinder,
) -> (ThreadActivity, Option<Captured>) {
    /// One capture at a time: there is one slot.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Before the thread is held: it may hold the loader's lock this takes.
    unwinder.refresh_modules();
    let mut ips = Vec::with_capacity(MAX_FRAMES);
    SLOT.phase.store(REQUESTED, Ordering::Release);
    SLOT.target.store(probe.tid, Ordering::Release);
    let doing = activity(probe.tid);
    let sent = doing == ThreadActivity::OnCpu && send(probe.tid);
    let deadline = Instant::now() + timeout;
    while sent && SLOT.phase.load(Ordering::Acquire) == REQUESTED {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        futex_wait(&SLOT.phase, REQUESTED, left.as_nanos() as u64);
    }
    // Not claimed yet: give up (a handler that comes late finds no request and returns).
    if SLOT
        .target
        .compare_exchange(probe.tid, 0, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        SLOT.phase.store(IDLE, Ordering::Release);
        return (doing, None);
    }
    // Claimed: the handler is a few stores away from holding its thread.
    while SLOT.phase.load(Ordering::Acquire) == REQUESTED {
        futex_wait(&SLOT.phase, REQUESTED, 10_000_000);
    }
    // Held: its registers are in the slot and its stack stands still until released.
    let pc = SLOT.pc.load(Ordering::Relaxed);
    let mut regs: Regs = [None; 17];
    for (n, _) in SAVED {
        regs[n] = Some(SLOT.regs[n].load(Ordering::Relaxed));
    }
    unwinder.forget_memory();
    let in_switch = unwinder.in_stack_switch(pc);
    if !in_switch {
        unwinder.walk(pc, regs, &mut ips, MAX_FRAMES);
    }
    let name_len = SLOT.name_len.load(Ordering::Relaxed);
    let name: Vec<u8> = SLOT.name[..name_len]
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    let spawned_at = SLOT.spawned_at.load(Ordering::Relaxed);
    let interrupted_syscall = SLOT.interrupted_syscall.load(Ordering::Relaxed);
    let id = SLOT.id.load(Ordering::Relaxed);
    let held_throughout = SLOT
        .phase
        .compare_exchange(HELD, RELEASED, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    futex_wake(&SLOT.phase);
    SLOT.phase.store(IDLE, Ordering::Release);
    if !held_throughout {
        // The thread stopped waiting before the walk was done: what was read may be a
        // mix of two moments.
        return (doing, None);
    }
    let captured = Captured {
        ips,
        in_switch,
        greenlet_id: id,
        name: (name_len > 0).then(|| String::from_utf8_lossy(&name).into_owned()),
        // SAFETY: the pointer was made from a `&'static Location` in the handler.
        spawned_at: (!spawned_at.is_null()).then(|| unsafe { &*spawned_at }),
        interrupted_syscall,
    };
    (doing, Some(captured))
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::super::unwind::Unwinder;
    use super::*;
    use crate::greenlet::{Greenlet, getcurrent, probe};

    /// Env var telling a re-executed test binary to run the capture storm.
    const STORM_CHILD: &str = "GREENHUB_CAPTURE_STORM_CHILD";

    /// In the child: one thread switches between two greenlets in a tight loop while this
    /// one captures its stack as often as it can, so that signals land inside the switch
    /// itself again and again. Prints how the captures went.
    fn capture_storm(captures: usize, cap: Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        let switcher = std::thread::spawn(move || {
            let main = getcurrent();
            let g = Greenlet::new(move |_| -> Result<(), crate::Error> {
                loop {
                    main.switch(())?;
                }
            });
            g.switch(()).unwrap();
            tx.send(probe::current().expect("probes are on")).unwrap();
            let mut n = 0_u64;
            while !stopped.load(Ordering::Relaxed) {
                for _ in 0..1000 {
                    g.switch(()).unwrap();
                }
                n += 1000;
            }
            n
        });
        let probe = rx.recv().unwrap();
        install_handler();
        let mut unwinder = Unwinder::new();
        let start = Instant::now();
        let (mut stacks, mut in_switch, mut none) = (Vec::new(), 0, 0);
        for _ in 0..captures {
            if start.elapsed() > cap {
                break;
            }
            match capture(&probe, Duration::from_millis(50), &mut unwinder) {
                (_, Some(c)) if c.in_switch => in_switch += 1,
                (_, Some(c)) => stacks.push(c.ips),
                _ => none += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        let switches = switcher.join().unwrap();
        // Every stack walked, from wherever in the switch loop it was caught (in the
        // greenlet or on the thread's own stack), reaches the thread's function.
        let sample = stacks.len().min(50);
        let whole = stacks[..sample]
            .iter()
            .filter(|ips| {
                super::super::report::symbolize(ips)
                    .iter()
                    .any(|f| f.function.contains("capture_storm"))
            })
            .count();
        eprintln!(
            "STORM stacks={} in_switch={in_switch} none={none} switches={switches} \
             sampled={sample} reaching_the_thread_function={whole}",
            stacks.len()
        );
    }

    #[test]
    fn capturing_a_thread_that_switches_in_a_tight_loop_never_crashes() {
        if std::env::var_os(STORM_CHILD).is_some() {
            capture_storm(5_000, Duration::from_secs(20));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "monitor::capture::tests::capturing_a_thread_that_switches_in_a_tight_loop_never_crashes",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STORM_CHILD, "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the child died ({:?}, signal {:?}): {err}",
            out.status.code(),
            out.status.signal()
        );
        let line = err
            .lines()
            .find(|l| l.starts_with("STORM "))
            .expect("a tally");
        let field = |k: &str| -> usize {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line}"))
        };
        eprintln!("{line}");
        let (stacks, in_switch) = (field("stacks"), field("in_switch"));
        assert!(stacks + in_switch >= 1_000, "too few captures: {line}");
        assert!(in_switch > 0, "no capture landed in a switch: {line}");
        assert_eq!(
            field("reaching_the_thread_function"),
            field("sampled"),
            "{line}"
        );
    }

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
