//! The real libc functions behind the hooks, found with `dlsym(RTLD_NEXT, ..)`.
//!
//! Inside this crate `libc::read` names our own hook, so a hook reaches glibc's `read`
//! only through a pointer. Each is resolved once: all of them by a constructor before
//! `main` (see `mod.rs`), or by the first call if a hook runs before that (from another
//! library's constructor). Afterwards getting one is a load.

use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{
    addrinfo, c_char, c_int, c_uint, c_ulong, c_void, clockid_t, fd_set, iovec, loff_t, msghdr,
    nfds_t, off_t, pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
    useconds_t,
};

/// One real function's address, 0 until resolved.
pub(super) struct Real {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Real {
    const fn new(name: &'static CStr) -> Real {
        Real {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    #[inline(always)]
    fn get(&self) -> usize {
        let a = self.addr.load(Ordering::Relaxed);
        if a != 0 { a } else { self.resolve() }
    }

    #[cold]
    #[inline(never)]
    fn resolve(&self) -> usize {
        // SAFETY: RTLD_NEXT with a NUL-terminated name only looks the symbol up in the
        // objects loaded after this one (libc): no other precondition.
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        if a == 0 {
            die(self.name);
        }
        self.addr.store(a, Ordering::Relaxed);
        a
    }
}

/// No libc function of that name: nothing can work. Says so without allocating and aborts.
fn die(name: &CStr) -> ! {
    let parts: [&[u8]; 3] = [
        b"greenhub: monkey: libc has no function ",
        name.to_bytes(),
        b"; aborting\n",
    ];
    for p in parts {
        // SAFETY: writes bytes we own to stderr with the raw system call (no hook).
        unsafe { libc::syscall(libc::SYS_write, 2, p.as_ptr(), p.len()) };
    }
    std::process::abort()
}

macro_rules! reals {
    ($($name:ident($($arg:ty),* $(; $dots:tt)?) -> $ret:ty;)*) => {
        mod slot {
            $(
                #[allow(non_upper_case_globals)]
                pub(super) static $name: super::Real = super::Real::new(
                    match std::ffi::CStr::from_bytes_with_nul(
                        concat!(stringify!($name), "\0").as_bytes()
                    ) {
                        Ok(name) => name,
                        Err(_) => panic!("a symbol name has no NUL inside"),
                    }
                );
            )*
        }
        $(
            #[doc = concat!("glibc's `", stringify!($name), "`.")]
            #[inline(always)]
            pub(super) fn $name() -> unsafe extern "C" fn($($arg),* $(, $dots)?) -> $ret {
                let addr = slot::$name.get();
                // SAFETY: `addr` is the address of glibc's function of this name, whose
                // C prototype is this function type.
                unsafe {
                    std::mem::transmute::<usize, unsafe extern "C" fn($($arg),* $(, $dots)?) -> $ret>(addr)
                }
            }
        )*

        /// Resolves every real function now.
        pub(super) fn resolve_all() {
            $( slot::$name.get(); )*
        }
    };
}

reals! {
    read(c_int, *mut c_void, size_t) -> ssize_t;
    readv(c_int, *const iovec, c_int) -> ssize_t;
    write(c_int, *const c_void, size_t) -> ssize_t;
    writev(c_int, *const iovec, c_int) -> ssize_t;
    recv(c_int, *mut c_void, size_t, c_int) -> ssize_t;
    recvfrom(c_int, *mut c_void, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t;
    recvmsg(c_int, *mut msghdr, c_int) -> ssize_t;
    send(c_int, *const c_void, size_t, c_int) -> ssize_t;
    sendto(c_int, *const c_void, size_t, c_int, *const sockaddr, socklen_t) -> ssize_t;
    sendmsg(c_int, *const msghdr, c_int) -> ssize_t;
    sendfile(c_int, c_int, *mut off_t, size_t) -> ssize_t;
    splice(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
    accept(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
    accept4(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
    connect(c_int, *const sockaddr, socklen_t) -> c_int;
    poll(*mut pollfd, nfds_t, c_int) -> c_int;
    ppoll(*mut pollfd, nfds_t, *const timespec, *const sigset_t) -> c_int;
    select(c_int, *mut fd_set, *mut fd_set, *mut fd_set, *mut timeval) -> c_int;
    close(c_int) -> c_int;
    dup(c_int) -> c_int;
    dup2(c_int, c_int) -> c_int;
    dup3(c_int, c_int, c_int) -> c_int;
    fcntl(c_int, c_int; ...) -> c_int;
    ioctl(c_int, c_ulong; ...) -> c_int;
    setsockopt(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;
    socket(c_int, c_int, c_int) -> c_int;
    socketpair(c_int, c_int, c_int, *mut c_int) -> c_int;
    sleep(c_uint) -> c_uint;
    usleep(useconds_t) -> c_int;
    nanosleep(*const timespec, *mut timespec) -> c_int;
    clock_nanosleep(clockid_t, c_int, *const timespec, *mut timespec) -> c_int;
    getaddrinfo(*const c_char, *const c_char, *const addrinfo, *mut *mut addrinfo) -> c_int;
    sigaction(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
    signal(c_int, libc::sighandler_t) -> libc::sighandler_t;
}
