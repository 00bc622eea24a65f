//! The red/blue program from the greenlet docs, ported line for line.
//!
//! ```python
//! from greenlet import greenlet
//! def print_red():
//!     print('red')
//!     gr2.switch()
//!     print('red done')
//! def print_blue():
//!     print('blue')
//!     gr1.switch()
//!     print('blue_done')
//! gr1 = greenlet(print_red)
//! gr2 = greenlet(print_blue)
//! gr1.switch()
//! ```
//!
//! Prints `red`, `blue`, `red done`. `blue_done` is never printed: nobody switches back to
//! blue, and its stack is unwound (its destructors run) when its last handle is dropped.

use greenhub::{Greenlet, getcurrent};

fn main() {
    let gr2 = Greenlet::new(|gr1| {
        let gr1: Greenlet = gr1.downcast().expect("red passes its own handle");
        println!("blue");
        gr1.switch(())?; // back to red; red never switches here again
        println!("blue_done");
        Ok(())
    });
    let gr1 = Greenlet::new(move |_| {
        println!("red");
        gr2.switch(getcurrent())?; // to blue, telling it who we are
        println!("red done");
        Ok(())
    });
    gr1.switch(()).expect("red finishes");
}
