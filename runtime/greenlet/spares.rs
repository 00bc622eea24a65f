//! [`Spares`]: the records of dead greenlets, kept per thread for new greenlets.

use std::cell::{Cell, RefCell};
use std::panic::Location;
use std::rc::{Rc, Weak};

use super::switch::{self, Co, CoSlot};
use super::{Greenlet, Inner, LazyBody, State};

/// What differs between new greenlets' `Inner`s (see [`Spares::alloc`]).
pub(super) struct NewInner {
    pub(super) id: u64,
    pub(super) name: Option<Box<str>>,
    pub(super) spawned_at: &'static Location<'static>,
    pub(super) stack_size: usize,
    pub(super) parent: Greenlet,
    pub(super) co: Option<Co>,
    pub(super) lazy: Option<Weak<dyn LazyBody>>,
}

/// The allocations of dead greenlets' `Inner`s, kept for new greenlets on this thread, so
/// that spawn-heavy code allocates nothing for them. Like the stack pool, it keeps at most
/// [`Spares::LIMIT`] and [`trim`](Spares::trim) frees those left unused for a whole
/// interval. (The memory it keeps was in use by that many live greenlets just before.)
#[derive(Default)]
pub(crate) struct Spares {
    free: Vec<Rc<Inner>>,
    /// The fewest spares seen since the last trim: that many went unused.
    low_water: usize,
}

impl Spares {
    /// Enough for a burst of 100k greenlets (a record is 184 bytes with its counts: at
    /// most ~23 MiB, kept for one trim interval after the burst). Fewer would let the
    /// records past the limit go back to `malloc` at the burst's end, which hands the top
    /// of the heap back to the kernel, and the next burst pays a page fault per ~20
    /// records to grow it again.
    const LIMIT: usize = 131_072;

    /// The `Inner` of a new (not main) greenlet: a spare one if there is one.
    #[inline]
    pub(super) fn alloc(new: NewInner) -> Rc<Inner> {
        let spare = switch::try_with_thread(|t| {
            let mut spares = t.spares.try_borrow_mut().ok()?;
            let rc = spares.free.pop()?;
            spares.low_water = spares.low_water.min(spares.free.len());
            Some(rc)
        });
        if let Some(Some(mut rc)) = spare
            && let Some(inner) = Rc::get_mut(&mut rc)
        {
            // Field by field: a spare's `parent`, `name`, `co` and `lazy` are empty (see
            // `put`), so nothing is dropped here, and nothing else needs resetting.
            inner.id = new.id;
            inner.name = new.name;
            inner.spawned_at = Some(new.spawned_at);
            inner.stack_size = new.stack_size;
            *inner.parent.get_mut() = Some(new.parent);
            inner.state.set(State::Unstarted);
            if let Some(co) = new.co {
                *inner.co.get_mut() = Some(co); // (a lazy greenlet's has none yet)
            }
            inner.lazy.set(new.lazy);
            inner.yielder.set(std::ptr::null());
            inner.forced_by.set(std::ptr::null());
            inner.forced_switches.set(0);
            inner.killed_unwinding.set(false);
            return rc;
        }
        let rc = Rc::new(Inner {
            id: new.id,
            is_main: false,
            name: new.name,
            spawned_at: Some(new.spawned_at),
            stack_size: new.stack_size,
            parent: RefCell::new(Some(new.parent)),
            state: Cell::new(State::Unstarted),
            co: CoSlot::new(new.co),
            lazy: Cell::new(new.lazy),
            yielder: Cell::new(std::ptr::null()),
            forced_by: Cell::new(std::ptr::null()),
            forced_switches: Cell::new(0),
            killed_unwinding: Cell::new(false),
            registered: Cell::new(usize::MAX),
        });
        switch::register(&rc);
        rc
    }

    /// Keeps the allocation of a dead greenlet's `Inner` for reuse, if there is room: the
    /// spares take a handle to it, so `rc` (being dropped) is no longer its last.
    #[inline(never)]
    pub(super) fn put(rc: &mut Rc<Inner>) {
        let Some(inner) = Rc::get_mut(rc) else {
            return; // not the last handle, or a weak one is around
        };
        if inner.is_main || inner.co.get_mut().is_some() {
            return;
        }
        // A spare holds nothing: its parent is released (last, below) and its name freed.
        let parent = inner.parent.get_mut().take();
        inner.name = None;
        drop(switch::take_lazy(inner));
        switch::try_with_thread(|t| {
            if let Ok(mut spares) = t.spares.try_borrow_mut()
                && spares.free.len() < Spares::LIMIT
            {
                spares.free.push(rc.clone());
            }
        });
        drop(parent); // may kill the parent (its last handle), which runs user code
    }

    /// Frees the spares that nobody took since the previous trim.
    pub(crate) fn trim(&mut self) {
        let unused = self.low_water.min(self.free.len());
        self.free.drain(..unused);
        self.low_water = self.free.len();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::rc::Rc;

    use crate::greenlet::{Greenlet, Inner};

    /// `n` greenlets, each run to its end at once, all alive (dead) until the `Vec` drops.
    fn finished_greenlets(n: usize) -> Vec<Greenlet> {
        (0..n)
            .map(|_| {
                let g = Greenlet::new(|_| Ok(()));
                g.switch(()).unwrap();
                g
            })
            .collect()
    }

    #[test]
    fn a_burst_of_100k_dead_greenlets_gives_the_next_burst_all_its_records() {
        const N: usize = 100_000;
        let first: HashSet<*const Inner> = finished_greenlets(N)
            .iter()
            .map(|g| Rc::as_ptr(&g.inner))
            .collect();
        let second = finished_greenlets(N);
        let reused = second
            .iter()
            .filter(|g| first.contains(&Rc::as_ptr(&g.inner)))
            .count();
        assert_eq!(reused, N, "records allocated anew instead of reused");
    }
}
