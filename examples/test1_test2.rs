//! `test1`/`test2` from the greenlet docs: prints 12, 56, 34 (78 is never printed).
//!
//! ```python
//! def test1():
//!     print 12
//!     gr2.switch()
//!     print 34
//! def test2():
//!     print 56
//!     gr1.switch()
//!     print 78
//! gr1 = greenlet(test1)
//! gr2 = greenlet(test2)
//! gr1.switch()
//! ```

use std::cell::OnceCell;
use std::rc::Rc;

use greenhub::Greenlet;

fn main() {
    // Python's module globals: each function looks the other greenlet up when it runs.
    let gr1_slot: Rc<OnceCell<Greenlet>> = Rc::default();
    let gr2_slot: Rc<OnceCell<Greenlet>> = Rc::default();

    let gr2_of_test1 = gr2_slot.clone();
    let test1 = move |_| {
        println!("12");
        gr2_of_test1.get().expect("gr2 exists").switch(())?;
        println!("34");
        Ok(())
    };
    let gr1_of_test2 = gr1_slot.clone();
    let test2 = move |_| {
        println!("56");
        gr1_of_test2.get().expect("gr1 exists").switch(())?;
        println!("78");
        Ok(())
    };

    let gr1 = gr1_slot.get_or_init(|| Greenlet::new(test1)).clone();
    gr2_slot.get_or_init(|| Greenlet::new(test2));
    gr1.switch(()).expect("test1 finishes");
}
