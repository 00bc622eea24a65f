//! Recording the switches a trace hook sees.

use std::cell::RefCell;
use std::rc::Rc;

use greenhub::{TraceEvent, settrace};

/// Every event a trace hook saw, with the ids of the greenlets switched from and to.
pub type Trace = Rc<RefCell<Vec<(TraceEvent, u64, u64)>>>;

/// Installs a trace hook that records every event into the returned log (until
/// `settrace(None)`).
pub fn record_trace() -> Trace {
    let log: Trace = Rc::default();
    let sink = log.clone();
    settrace(Some(Box::new(move |ev, from, to| {
        sink.borrow_mut().push((ev, from.id(), to.id()))
    })));
    log
}
