//! The crate's one error type for runtime conditions.
//!
//! I/O keeps [`std::io::Error`]; everything the runtime itself refuses or reports
//! (a dead greenlet, a cyclic parent, a kill, a panic, a timeout) is an [`Error`].

use std::any::Any;
use std::fmt;

/// What went wrong in a greenhub call.
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
    /// The greenlet panicked; this carries the panic payload.
    Panicked(Box<dyn Any + Send + 'static>),
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
            Error::Panicked(payload) => panic_payload_str(payload.as_ref()),
            _ => None,
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
            Error::Panicked(p) => match panic_payload_str(p.as_ref()) {
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
