//! # greenhub
//!
//! Python's greenlet and gevent for Rust: stackful coroutines ("greenlets") that switch
//! explicitly.
//!
//! ```
//! use greenhub::{Greenlet, getcurrent};
//!
//! let g = Greenlet::new(|v| {
//!     println!("got {}", v.downcast::<&str>().unwrap());
//!     Ok(())
//! });
//! g.switch("hello").unwrap();
//! assert!(g.is_dead());
//! assert!(getcurrent().is_main());
//! ```

mod error;
pub mod greenlet;

pub use error::Error;
pub use greenlet::{
    Builder, Greenlet, GreenletExit, TraceEvent, TraceHook, Value, getcurrent, settrace,
};
