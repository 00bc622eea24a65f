//! The `getaddrinfo` hook: a cooperating call runs the real `getaddrinfo` on greenhub's
//! thread pool while the greenlet waits (the pool's threads have no hub, so the hooks
//! pass their calls through there).

use std::ffi::{CStr, CString};

use libc::{addrinfo, c_char, c_int};

use super::context::{self, Busy, OFF, mode, set_errno};
use super::real;
use crate::error::Error;
use crate::hub::raw;
use crate::threadpool::ThreadPool;

/// A result list from the real `getaddrinfo`, freed if nobody takes it (the caller was
/// killed or timed out while it was being made).
struct List(*mut addrinfo);

// SAFETY: the list is plain heap memory owned by whoever holds this; getaddrinfo's
// results may be freed from any thread.
unsafe impl Send for List {}

impl Drop for List {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a list the real getaddrinfo made, not yet freed or handed out.
            unsafe { libc::freeaddrinfo(self.0) };
        }
    }
}

/// The hints that matter, copied to send to the pool thread.
#[derive(Clone, Copy)]
struct Hints {
    flags: c_int,
    family: c_int,
    socktype: c_int,
    protocol: c_int,
}

/// `getaddrinfo(3)`.
///
/// A cooperating call that a kill or a `Timeout` scope cuts short fails with
/// `EAI_SYSTEM` and `errno` `ECANCELED` or `ETIMEDOUT` (the lookup finishes on its
/// thread, and its result is freed).
///
/// # Safety
/// As `getaddrinfo(3)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let real_gai = || unsafe { real::getaddrinfo()(node, service, hints, res) };
    if mode() == OFF || !context::may_cooperate() || res.is_null() {
        return real_gai();
    }
    let busy = Busy::enter();
    if raw::cooperative_hub().is_none() {
        drop(busy);
        return real_gai();
    }
    // SAFETY: node and service are null or NUL-terminated strings (the caller's contract).
    let (node, service) = unsafe { (owned(node), owned(service)) };
    let hints = (!hints.is_null()).then(|| {
        // SAFETY: the caller's valid hints.
        let h = unsafe { &*hints };
        Hints {
            flags: h.ai_flags,
            family: h.ai_family,
            socktype: h.ai_socktype,
            protocol: h.ai_protocol,
        }
    });
    let lookup = move || lookup(node.as_deref(), service.as_deref(), hints);
    let outcome = busy.released(|| raw::no_unwind(|| ThreadPool::global().run(lookup)));
    match outcome {
        Ok((code, errno, mut list)) => {
            // SAFETY: `res` is the caller's valid out-pointer; the list is theirs now.
            unsafe { *res = std::mem::replace(&mut list.0, std::ptr::null_mut()) };
            if code == libc::EAI_SYSTEM {
                set_errno(errno);
            }
            code
        }
        Err(e) => {
            set_errno(match e {
                Error::Timeout => libc::ETIMEDOUT,
                _ => libc::ECANCELED,
            });
            libc::EAI_SYSTEM
        }
    }
}

/// A copy of a C string (`None` for null).
///
/// # Safety
/// `s` is null or NUL-terminated.
unsafe fn owned(s: *const c_char) -> Option<CString> {
    // SAFETY: per the contract.
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_owned())
}

/// The real lookup (on a pool thread): its code, `errno`, and list.
fn lookup(
    node: Option<&CStr>,
    service: Option<&CStr>,
    hints: Option<Hints>,
) -> (c_int, c_int, List) {
    // SAFETY: all-zero is a valid addrinfo (no pointers set).
    let mut h: addrinfo = unsafe { std::mem::zeroed() };
    if let Some(x) = hints {
        h.ai_flags = x.flags;
        h.ai_family = x.family;
        h.ai_socktype = x.socktype;
        h.ai_protocol = x.protocol;
    }
    let mut list = List(std::ptr::null_mut());
    // SAFETY: NUL-terminated strings or null, hints on our stack, an out-pointer we own.
    let code = unsafe {
        real::getaddrinfo()(
            node.map_or(std::ptr::null(), CStr::as_ptr),
            service.map_or(std::ptr::null(), CStr::as_ptr),
            if hints.is_some() {
                &h
            } else {
                std::ptr::null()
            },
            &mut list.0,
        )
    };
    (code, context::errno(), list)
}
