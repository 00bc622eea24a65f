//! The SIGSEGV/SIGBUS handler that turns a greenlet stack overflow into a message naming
//! the greenlet (it runs on the thread's alternate signal stack, see `altstack`). Every line that
//! runs in the handler is in this file, plus the registry lookup ([`find_guard`]).
//!
//! # Async-signal-safety
//!
//! The handler may interrupt any code on any thread, including an allocator or a lock
//! holder, so it allocates nothing, takes no lock and touches no thread-local:
//!
//! - [`find_guard`] only loads atomics (a seqlock over a static array);
//! - the header it reads is plain integers at the top of a slot of a registered arena,
//!   which stays mapped (arenas leave the registry before they are unmapped, and the
//!   faulting stack keeps its own arena alive), read with one volatile copy;
//! - the message is formatted into a fixed buffer on the handler's stack ([`MsgBuf`])
//!   and written with `write(2)`;
//! - then `sigaction(2)` (to restore the default action) and `abort(3)`, or a jump to
//!   the previous handler with the arguments the kernel gave us.
//!
//! All of these are async-signal-safe per POSIX. The handler runs on the alternate
//! signal stack (`SA_ONSTACK`), since the faulting stack has none left.

use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use super::altstack;
use super::registry::find_guard;
use super::{HEADER_MAGIC, HEADER_SIZE, Header, NAME_MAX};

/// The actions SIGSEGV and SIGBUS had before ours, to chain to (index 0 / 1).
static PREV_HANDLER: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static PREV_FLAGS: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];

/// Installs the greenlet stack-overflow handler for SIGSEGV and SIGBUS (once per
/// process, chaining to the previous handlers) and makes sure the calling thread has
/// an alternate signal stack to run it on (greenhub's 64 KiB one, see [`altstack`]).
/// Idempotent and cheap after the first call on a thread; call it on every thread that
/// runs greenlets.
///
/// [`altstack`]: super::altstack
///
/// On a fault in a greenlet's guard page it prints
/// `greenhub: stack overflow in greenlet #<id> "<name>" (stack size <n> KiB); aborting`
/// and a hint, then aborts. Any other fault goes to the previous handler (so std's
/// "thread '...' has overflowed its stack" still works).
pub(crate) fn install_overflow_handler() {
    altstack::ensure();
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
    use std::hint::black_box;
    use std::os::unix::process::ExitStatusExt;

    use corosensei::Coroutine;

    use super::super::altstack::ALT_STACK_SIZE;
    use super::super::guard::GuardMode;
    use super::super::pool::StackPool;
    use super::super::testing::{
        child_scenario, child_survived, modes, recurse, run_child, suffix,
    };
    use super::super::{MIN_STACK_SIZE, page_size};
    use super::*;

    /// Runs `f(arg)` on a raw pthread (no std setup, so no alternate signal stack)
    /// and returns its result.
    fn run_pthread(f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void, arg: usize) -> usize {
        // SAFETY: plain pthread_create/join with a valid entry point; the
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
        // SAFETY: all-zero stack_t is valid; a null `ss` only queries.
        let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: a null `ss` only queries, into `cur`.
        unsafe { libc::sigaltstack(ptr::null(), &mut cur) };
        assert_ne!(
            cur.ss_flags & libc::SS_DISABLE,
            0,
            "raw pthread already has one"
        );
        install_overflow_handler();
        // SAFETY: a null `ss` only queries, into `cur`.
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

    /// Not a test by itself: the body of the re-executed child processes.
    #[test]
    fn child_main() {
        let Some((scenario, mode)) = child_scenario() else {
            return;
        };
        let mut pool = StackPool::with_mode(mode);
        match scenario.as_str() {
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
            "threadoverflow" => {
                install_overflow_handler();
                black_box(recurse(0));
            }
            "otherfault" => {
                install_overflow_handler();
                let _keep = pool.get(MIN_STACK_SIZE).unwrap();
                // SAFETY: a PROT_NONE page outside our arenas; reading it faults.
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
            "foreignthread" => {
                // A thread std did not create has no alternate signal stack: ours is
                // made on demand and unmapped at thread exit.
                let ss_sp = run_pthread(alt_stack_probe, 0);
                // SAFETY: msync only inspects the mapping state of the range.
                let rc = unsafe { libc::msync(ss_sp as *mut _, page_size(), libc::MS_ASYNC) };
                assert_eq!(rc, -1, "alt stack still mapped after thread exit");
                eprintln!("alt stack freed");
                run_pthread(overflow_on_thread, mode as usize);
            }
            other => panic!("unknown scenario {other}"),
        }
        child_survived();
    }

    #[test]
    fn foreign_threads_get_an_alt_stack() {
        for mode in modes() {
            let (err, st) = run_child(module_path!(), &format!("foreignthread_{}", suffix(mode)));
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
    fn msgbuf_formats_integers() {
        let mut m = MsgBuf::new();
        m.push_u64(0);
        m.push(b" ");
        m.push_u64(u64::MAX);
        assert_eq!(&m.buf[..m.len], b"0 18446744073709551615");
    }

    #[test]
    fn overflow_names_the_greenlet() {
        for mode in modes() {
            let (err, st) = run_child(module_path!(), &format!("overflow_{}", suffix(mode)));
            assert!(err.contains("greenhub: stack overflow in greenlet #7 \"deep\" (stack size 64 KiB); aborting\n"), "{mode:?}: {err}");
            assert!(
                err.contains(
                    "greenhub: raise the stack size with Greenlet::builder().stack_size(..)"
                ),
                "{err}"
            );
            assert_eq!(st.signal(), Some(libc::SIGABRT), "{mode:?}: {err}");
            let (err, st) = run_child(module_path!(), &format!("noheader_{}", suffix(mode)));
            assert!(
                err.contains("stack overflow in greenlet #? (stack size 32 KiB)"),
                "{err}"
            );
            assert_eq!(st.signal(), Some(libc::SIGABRT));
        }
    }

    #[test]
    fn other_faults_chain_to_previous_handler() {
        let (err, st) = run_child(module_path!(), "threadoverflow");
        assert!(err.contains("has overflowed its stack"), "{err}");
        assert!(!err.contains("greenhub"), "{err}");
        assert_eq!(st.signal(), Some(libc::SIGABRT));
        let (err, st) = run_child(module_path!(), "otherfault");
        assert!(!err.contains("greenhub"), "{err}");
        assert_eq!(st.signal(), Some(libc::SIGSEGV), "{err}");
    }
}
