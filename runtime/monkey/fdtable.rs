//! What the hooks remember per descriptor: a table indexed by fd, sized from
//! `RLIMIT_NOFILE` when the hooks are turned on, read with lock-free atomics.
//!
//! An entry holds the descriptor's kind (socket or not, once looked at), the user's view
//! of its blocking mode next to whether greenhub switched it to `O_NONBLOCK` in the
//! kernel, its `SO_RCVTIMEO`/`SO_SNDTIMEO`, and its registration with a hub's `epoll`.
//! Closing the descriptor (or `dup2`-ing over it) bumps its generation and resets it; so
//! does every hooked call that makes a descriptor (`socket`, `accept`, `dup`, …), which
//! also clears what a close behind the hooks' back (a raw system call) left behind.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use libc::c_int;

/// The kind bits: not looked at yet.
pub(super) const UNKNOWN: u64 = 0;
/// A socket.
pub(super) const SOCKET: u64 = 1;
/// Anything else (file, pipe, terminal, eventfd, …): the hooks leave it alone.
pub(super) const OTHER: u64 = 2;
const KIND: u64 = 3;
/// A `SOCK_STREAM` socket (a blocking send sends everything).
pub(super) const STREAM: u64 = 1 << 2;
/// The user asked for non-blocking mode (`O_NONBLOCK`, `SOCK_NONBLOCK`, `FIONBIO`).
pub(super) const USER_NONBLOCK: u64 = 1 << 3;
/// greenhub made the descriptor `O_NONBLOCK` in the kernel.
pub(super) const SYS_NONBLOCK: u64 = 1 << 4;
const FLAGS: u64 = (1 << 32) - 1;
const GENERATION: u64 = 1 << 32;

/// One descriptor's entry (all zero: unknown, nothing remembered).
pub(super) struct Entry {
    /// Kind and mode bits (low half), generation (high half).
    state: AtomicU64,
    /// `SO_RCVTIMEO` in microseconds, 0 for none.
    recv_timeout: AtomicU64,
    /// `SO_SNDTIMEO` in microseconds, 0 for none.
    send_timeout: AtomicU64,
    /// Registration: hub id in the high half, token + 1 in the low half; 0 for none.
    reg: AtomicU64,
}

/// A snapshot of an entry's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct State(pub(super) u64);

impl State {
    pub(super) fn kind(self) -> u64 {
        self.0 & KIND
    }
    pub(super) fn has(self, bit: u64) -> bool {
        self.0 & bit != 0
    }
    /// The kind and mode bits, to copy to a duplicate.
    pub(super) fn flags(self) -> u64 {
        self.0 & FLAGS
    }
    pub(super) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// Blocking in the user's view, non-blocking in the kernel: the hooks must wait.
    #[inline]
    pub(super) fn emulated(self) -> bool {
        self.0 & (SYS_NONBLOCK | USER_NONBLOCK) == SYS_NONBLOCK
    }
}

/// A hub registration: the hub's id and the token of the fd in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reg {
    pub(super) hub: u32,
    pub(super) token: usize,
}

impl Reg {
    fn pack(self) -> u64 {
        (u64::from(self.hub) << 32) | (self.token as u64 + 1)
    }
    fn unpack(v: u64) -> Option<Reg> {
        (v != 0).then(|| Reg {
            hub: (v >> 32) as u32,
            token: ((v & FLAGS) - 1) as usize,
        })
    }
}

impl Entry {
    #[inline]
    pub(super) fn state(&self) -> State {
        State(self.state.load(Ordering::Acquire))
    }

    /// Replaces the flags of state `old` (same generation) by `flags`; `false` if the
    /// entry changed meanwhile.
    pub(super) fn update(&self, old: State, flags: u64) -> bool {
        let new = (old.0 & !FLAGS) | (flags & FLAGS);
        self.state
            .compare_exchange(old.0, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Sets `set` and clears `clear` in the flags if the entry is still of `generation`;
    /// returns the new state, or `None` if the descriptor was reset meanwhile.
    pub(super) fn modify(&self, generation: u32, set: u64, clear: u64) -> Option<State> {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (State(s).generation() == generation).then_some((s & !clear) | set)
            })
            .ok()
            .map(|s| State((s & !clear) | set))
    }

    /// A new descriptor (or a closed one): next generation, `flags`, the given timeouts,
    /// no registration. Returns the registration the old one had.
    pub(super) fn reset(&self, flags: u64, recv: u64, send: u64) -> Option<Reg> {
        self.recv_timeout.store(recv, Ordering::Relaxed);
        self.send_timeout.store(send, Ordering::Relaxed);
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(((s & !FLAGS).wrapping_add(GENERATION)) | (flags & FLAGS))
            });
        Reg::unpack(self.reg.swap(0, Ordering::AcqRel))
    }

    pub(super) fn recv_timeout_us(&self) -> u64 {
        self.recv_timeout.load(Ordering::Relaxed)
    }
    pub(super) fn send_timeout_us(&self) -> u64 {
        self.send_timeout.load(Ordering::Relaxed)
    }
    pub(super) fn set_timeouts_us(&self, recv: Option<u64>, send: Option<u64>) {
        if let Some(r) = recv {
            self.recv_timeout.store(r, Ordering::Relaxed);
        }
        if let Some(s) = send {
            self.send_timeout.store(s, Ordering::Relaxed);
        }
    }

    /// The timeout for a wait in `read` (else write) direction, if any.
    pub(super) fn timeout(&self, read: bool) -> Option<Duration> {
        let us = if read {
            self.recv_timeout_us()
        } else {
            self.send_timeout_us()
        };
        (us != 0).then(|| Duration::from_micros(us))
    }

    pub(super) fn reg(&self) -> Option<Reg> {
        Reg::unpack(self.reg.load(Ordering::Acquire))
    }

    /// Takes the registration away.
    pub(super) fn take_reg(&self) -> Option<Reg> {
        Reg::unpack(self.reg.swap(0, Ordering::AcqRel))
    }

    /// Records `reg` if the entry has none; `false` if another registration won.
    pub(super) fn set_reg(&self, reg: Reg) -> bool {
        self.reg
            .compare_exchange(0, reg.pack(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

static TABLE: AtomicPtr<Entry> = AtomicPtr::new(std::ptr::null_mut());
static LEN: AtomicUsize = AtomicUsize::new(0);

/// The most entries the table gets, whatever the limit says (32 MiB of address space,
/// touched only where descriptors are used).
const MAX_LEN: u64 = 1 << 20;

/// Allocates the table (once; later calls do nothing). Descriptors at or above its
/// length are not tracked: the hooks pass their calls through.
pub(super) fn init() {
    if !TABLE.load(Ordering::Acquire).is_null() {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let want = if ok {
        lim.rlim_max.max(lim.rlim_cur)
    } else {
        1024
    };
    let len = want.clamp(1024, MAX_LEN) as usize;
    let layout = std::alloc::Layout::array::<Entry>(len).expect("a table of at most 2^20 entries");
    // SAFETY: the layout has a non-zero size; all-zero bytes are a valid `Entry` (atomics
    // holding 0). The table is never freed: hooks may read it until the process ends.
    let table = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Entry>();
    if table.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    if TABLE
        .compare_exchange(
            std::ptr::null_mut(),
            table,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    {
        LEN.store(len, Ordering::Release);
    } else {
        // SAFETY: allocated above with this layout and never shared.
        unsafe { std::alloc::dealloc(table.cast(), layout) };
    }
}

/// The entry of `fd`, if the table tracks it.
#[inline]
pub(super) fn entry(fd: c_int) -> Option<&'static Entry> {
    let len = LEN.load(Ordering::Acquire);
    let i = usize::try_from(fd).ok()?;
    if i >= len {
        return None;
    }
    let table = TABLE.load(Ordering::Relaxed);
    // SAFETY: `LEN` is only set (with Release, read with Acquire above) after `TABLE`
    // points at an allocation of `len` entries that is never freed; `i < len`.
    Some(unsafe { &*table.add(i) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_bumps_the_generation_and_returns_the_registration() {
        let e = Entry {
            state: AtomicU64::new(0),
            recv_timeout: AtomicU64::new(0),
            send_timeout: AtomicU64::new(0),
            reg: AtomicU64::new(0),
        };
        let s0 = e.state();
        assert!(e.update(s0, SOCKET | SYS_NONBLOCK));
        assert!(e.state().emulated());
        assert!(!e.update(s0, OTHER), "a stale snapshot does not win");
        let reg = Reg { hub: 7, token: 0 };
        assert!(e.set_reg(reg));
        assert!(!e.set_reg(Reg { hub: 8, token: 3 }));
        assert_eq!(e.reset(SOCKET, 5, 0), Some(reg));
        let s1 = e.state();
        assert_eq!(s1.generation(), s0.generation() + 1);
        assert_eq!(s1.kind(), SOCKET);
        assert!(!s1.emulated());
        assert_eq!(e.timeout(true), Some(Duration::from_micros(5)));
        assert_eq!(e.timeout(false), None);
        assert_eq!(e.reg(), None);
    }
}
