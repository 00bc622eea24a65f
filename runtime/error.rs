//! The crate's one error type for runtime conditions.
//!
//! I/O keeps [`std::io::Error`]; everything the runtime itself refuses or reports
//! (a dead greenlet, a cyclic parent, a kill, a panic, a timeout) is an [`Error`].

use std::any::Any;
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// What went wrong in a greenhub call.
///
/// `Error` is `Send + Sync + 'static`, so `?` turns it into `Box<dyn std::error::Error +
/// Send + Sync>` or `anyhow::Error`; a panic's payload (which is only `Send`) is kept in a
/// [`PanicPayload`] and taken back with [`into_panic`](Error::into_panic).
///
/// # Examples
///
/// ```
/// use greenhub::{Error, Greenlet};
///
/// let g = Greenlet::new(|_| Ok(()));
/// g.switch(()).unwrap(); // runs to completion
/// assert!(matches!(g.switch(()), Err(Error::DeadGreenlet { .. })));
/// ```
///
/// ```
/// fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     greenhub::spawn(|| panic!("boom")).join()?;
///     Ok(())
/// }
/// assert_eq!(run().unwrap_err().to_string(), "greenlet panicked: boom");
/// ```
#[non_exhaustive]
pub enum Error {
    /// The target greenlet has already finished; it cannot be switched to.
    DeadGreenlet {
        /// The dead greenlet's id.
        id: u64,
    },
    /// `set_parent` would have made a greenlet its own ancestor.
    CyclicParent {
        /// The greenlet whose parent was being set.
        id: u64,
        /// The refused parent.
        parent: u64,
    },
    /// The main greenlet (the thread's own stack) has no parent and cannot get one.
    MainGreenletParent,
    /// An error raised at a greenlet's switch point by [`Greenlet::throw`](crate::Greenlet::throw),
    /// or returned by a greenlet's function.
    Custom(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The greenlet was killed (Python's `GreenletExit`): it unwound without finishing.
    Killed,
    /// The greenlet panicked; this carries the panic payload (see
    /// [`into_panic`](Error::into_panic)).
    Panicked(PanicPayload),
    /// A deadline passed before the operation completed.
    Timeout,
    /// The other side is gone: a closed queue, or a result sender dropped without sending.
    Closed,
    /// The wait can never end: nothing else can run or wake this greenlet
    /// (gevent's `LoopExit: This operation would block forever`).
    BlockForever,
}

impl Error {
    /// Wraps any error or message as [`Error::Custom`], the error to [`throw`](crate::Greenlet::throw).
    ///
    /// ```
    /// let e = greenhub::Error::custom("boom");
    /// assert_eq!(e.to_string(), "boom");
    /// ```
    pub fn custom(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Error::Custom(error.into())
    }

    /// The panic message, if this is [`Error::Panicked`] with a string payload.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            Error::Panicked(payload) => payload.message(),
            _ => None,
        }
    }

    /// Is this [`Error::Panicked`]?
    pub fn is_panic(&self) -> bool {
        matches!(self, Error::Panicked(_))
    }

    /// The panic payload of an [`Error::Panicked`], as `catch_unwind` gave it (for
    /// `std::panic::resume_unwind`); tokio's `JoinError::into_panic`.
    ///
    /// ```
    /// let e = greenhub::spawn(|| std::panic::panic_any(42_u32)).join().unwrap_err();
    /// assert_eq!(*e.into_panic().downcast::<u32>().unwrap(), 42);
    /// ```
    ///
    /// # Panics
    /// If this is not [`Error::Panicked`]; see [`try_into_panic`](Error::try_into_panic).
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.try_into_panic()
            .unwrap_or_else(|e| panic!("greenhub: into_panic on an error that is not a panic: {e}"))
    }

    /// The panic payload if this is [`Error::Panicked`], else the error itself.
    ///
    /// # Errors
    /// `self`, when it is not [`Error::Panicked`].
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, Error> {
        match self {
            Error::Panicked(payload) => Ok(payload.into_inner()),
            other => Err(other),
        }
    }
}

// `?` into `Box<dyn std::error::Error + Send + Sync>` and `anyhow::Error` needs both.
const _: () = {
    const fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Error>();
};

/// The payload of a panic, as [`Error::Panicked`] carries it.
///
/// A panic payload is `Box<dyn Any + Send>`, which is not `Sync`; this wrapper is, so that
/// [`Error`] can be shared and boxed as `dyn Error + Send + Sync` (tokio wraps `JoinError`'s
/// payload the same way). A `&str` or `String` payload — every `panic!` with a message —
/// is readable in place with [`message`](PanicPayload::message); any other payload is
/// kept behind a mutex and taken back whole with [`into_inner`](PanicPayload::into_inner).
pub struct PanicPayload(Payload);

enum Payload {
    /// A `&'static str` or `String`: `Sync` already.
    Text(Box<dyn Any + Send + Sync + 'static>),
    /// Anything else, made `Sync` by the mutex (only `into_inner` and `is` reach it).
    Opaque(Mutex<Box<dyn Any + Send + 'static>>),
}

impl PanicPayload {
    /// Wraps a payload as `catch_unwind` returns it.
    ///
    /// ```
    /// let p = greenhub::PanicPayload::new(Box::new("boom"));
    /// assert_eq!(p.message(), Some("boom"));
    /// ```
    pub fn new(payload: Box<dyn Any + Send + 'static>) -> PanicPayload {
        let payload = match payload.downcast::<&'static str>() {
            Ok(text) => return PanicPayload(Payload::Text(text)),
            Err(other) => other,
        };
        PanicPayload(match payload.downcast::<String>() {
            Ok(text) => Payload::Text(text),
            Err(other) => Payload::Opaque(Mutex::new(other)),
        })
    }

    /// The panic message, when the payload is a `&str` or a `String`.
    pub fn message(&self) -> Option<&str> {
        match &self.0 {
            Payload::Text(text) => panic_payload_str(text.as_ref()),
            Payload::Opaque(_) => None,
        }
    }

    /// Is the payload a `T`?
    pub fn is<T: Any>(&self) -> bool {
        match &self.0 {
            Payload::Text(text) => text.is::<T>(),
            Payload::Opaque(m) => m.lock().unwrap_or_else(PoisonError::into_inner).is::<T>(),
        }
    }

    /// The payload itself, of the type it was raised with.
    pub fn into_inner(self) -> Box<dyn Any + Send + 'static> {
        match self.0 {
            Payload::Text(text) => text,
            Payload::Opaque(m) => m.into_inner().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

impl From<Box<dyn Any + Send + 'static>> for PanicPayload {
    fn from(payload: Box<dyn Any + Send + 'static>) -> PanicPayload {
        PanicPayload::new(payload)
    }
}

impl fmt::Debug for PanicPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(msg) => f.debug_tuple("PanicPayload").field(&msg).finish(),
            None => f.write_str("PanicPayload(<non-string payload>)"),
        }
    }
}

/// The text of a panic payload, when it is a `&str` or a `String`.
pub(crate) fn panic_payload_str(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::DeadGreenlet { id } => write!(f, "greenlet #{id} is dead and cannot be switched to"),
            Error::CyclicParent { id, parent } => {
                write!(f, "making greenlet #{parent} the parent of greenlet #{id} would create a cycle")
            }
            Error::MainGreenletParent => f.write_str("the main greenlet cannot have a parent"),
            Error::Custom(e) => fmt::Display::fmt(e, f),
            Error::Killed => f.write_str("greenlet was killed"),
            Error::Panicked(p) => match p.message() {
                Some(msg) => write!(f, "greenlet panicked: {msg}"),
                None => f.write_str("greenlet panicked"),
            },
            Error::Timeout => f.write_str("operation timed out"),
            Error::Closed => f.write_str("the channel is closed"),
            Error::BlockForever => f.write_str(
                "this operation would block forever: no other greenlet, timer, I/O or thread can wake it",
            ),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Custom(e) => f.debug_tuple("Custom").field(e).finish(),
            Error::Panicked(_) => f.debug_tuple("Panicked").field(&self.to_string()).finish(),
            other => fmt::Display::fmt(other, f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Custom(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<Error> for std::io::Error {
    /// Timeouts become `ErrorKind::TimedOut`; a custom error is kept as the source;
    /// everything else becomes `ErrorKind::Other` with the message.
    fn from(e: Error) -> Self {
        match e {
            Error::Timeout => std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()),
            Error::Custom(inner) => std::io::Error::other(inner),
            other => std::io::Error::other(other.to_string()),
        }
    }
}
