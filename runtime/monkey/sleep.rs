//! The sleep hooks: `sleep`, `usleep`, `nanosleep` (what `std::thread::sleep` calls) and
//! `clock_nanosleep` (relative, and `TIMER_ABSTIME` on the realtime, monotonic, boot-time
//! and TAI clocks).
//!
//! A cooperating sleep parks the greenlet on a hub timer; a zero sleep lets the other
//! ready greenlets run once. A kill or a `Timeout` scope ends it early, and it returns
//! as if it had slept in full (these calls have no error that means "cut short" —
//! `std::thread::sleep` treats any error but `EINTR` as a bug, and `EINTR` would make it
//! sleep again): the kill or timeout lands at the greenlet's next switch point.

use std::time::{Duration, Instant};

use libc::{c_int, c_uint, clockid_t, timespec, useconds_t};

use super::context::{self, Busy, OFF, mode};
use super::real;
use crate::hub::raw;

/// Sleeps `d` on the hub if this call can cooperate; `false` if it cannot (the caller
/// then makes the real call).
fn cooperative_sleep(d: Duration) -> bool {
    if mode() == OFF || !context::may_cooperate() {
        return false;
    }
    let busy = Busy::enter();
    if raw::cooperative_hub().is_none() {
        return false;
    }
    let _ = busy.released(|| {
        if d.is_zero() {
            raw::yield_now()
        } else {
            match Instant::now().checked_add(d) {
                Some(at) => raw::sleep_until(at),
                None => raw::sleep_until(Instant::now() + Duration::from_secs(1 << 32)),
            }
        }
    });
    true
}

/// `sleep(3)`.
///
/// # Safety
/// None (it takes no pointers).
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn sleep(seconds: c_uint) -> c_uint {
    if cooperative_sleep(Duration::from_secs(seconds.into())) {
        return 0;
    }
    // SAFETY: a plain integer.
    unsafe { real::sleep()(seconds) }
}

/// `usleep(3)`.
///
/// # Safety
/// None (it takes no pointers).
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn usleep(usec: useconds_t) -> c_int {
    if cooperative_sleep(Duration::from_micros(usec.into())) {
        return 0;
    }
    // SAFETY: a plain integer.
    unsafe { real::usleep()(usec) }
}

/// `nanosleep(2)`.
///
/// # Safety
/// As `nanosleep(2)`: `req` is valid; `rem` is null or valid.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn nanosleep(req: *const timespec, rem: *mut timespec) -> c_int {
    if mode() != OFF
        && !req.is_null()
        // SAFETY: the caller's valid timespec.
        && let Some(d) = duration(unsafe { &*req })
        && cooperative_sleep(d)
    {
        return 0;
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::nanosleep()(req, rem) }
}

/// `clock_nanosleep(2)` (returns its error number, as the real one).
///
/// # Safety
/// As `clock_nanosleep(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn clock_nanosleep(
    clock: clockid_t,
    flags: c_int,
    req: *const timespec,
    rem: *mut timespec,
) -> c_int {
    let supported = matches!(
        clock,
        libc::CLOCK_REALTIME | libc::CLOCK_MONOTONIC | libc::CLOCK_BOOTTIME | libc::CLOCK_TAI
    );
    if mode() != OFF
        && supported
        && !req.is_null()
        // SAFETY: the caller's valid timespec.
        && let Some(d) = duration(unsafe { &*req })
    {
        let d = if flags & libc::TIMER_ABSTIME != 0 {
            let mut now = timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: writes the clock's time into `now` (not a hooked function).
            if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
                // SAFETY: the caller's arguments, unchanged.
                return unsafe { real::clock_nanosleep()(clock, flags, req, rem) };
            }
            d.saturating_sub(duration(&now).unwrap_or(Duration::ZERO))
        } else {
            d
        };
        if cooperative_sleep(d) {
            return 0;
        }
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::clock_nanosleep()(clock, flags, req, rem) }
}

/// A valid timespec as a duration; `None` for an invalid one (the real call says EINVAL).
fn duration(ts: &timespec) -> Option<Duration> {
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}
