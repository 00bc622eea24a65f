//! Guards that show a stack was unwound: they act when dropped.

use std::cell::Cell;
use std::rc::Rc;

/// Sets its flag when dropped: proves a stack was unwound.
pub struct DropFlag(pub Rc<Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// Runs its closure when dropped (a `finally:`).
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
