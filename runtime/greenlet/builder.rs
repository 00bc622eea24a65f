//! [`GreenletBuilder`]: a greenlet's name, stack size and parent, set before it is created.

use std::any::Any;
use std::panic::Location;
use std::rc::Weak;
use std::sync::atomic::Ordering;

use super::spares::{NewInner, Spares};
use super::stack;
use super::switch;
use super::{Greenlet, LazyBody, NEXT_ID, Value};
use crate::error::Error;

/// Configures a greenlet before creating it: name, stack size, parent.
#[derive(Debug, Default)]
pub struct GreenletBuilder {
    name: Option<String>,
    stack_size: Option<usize>,
    parent: Option<Greenlet>,
}

impl GreenletBuilder {
    /// A builder with no name, the thread's default stack size, and the running greenlet
    /// as the parent.
    pub fn new() -> GreenletBuilder {
        GreenletBuilder::default()
    }

    /// Names the greenlet (shown in reports and `Debug`).
    pub fn name(mut self, name: impl Into<String>) -> GreenletBuilder {
        self.name = Some(name.into());
        self
    }

    /// The usable stack size in bytes (rounded up to pages, at least
    /// [`MIN_STACK_SIZE`](super::MIN_STACK_SIZE)).
    pub fn stack_size(mut self, bytes: usize) -> GreenletBuilder {
        self.stack_size = Some(bytes);
        self
    }

    /// The parent (default: the running greenlet).
    pub fn parent(mut self, parent: &Greenlet) -> GreenletBuilder {
        self.parent = Some(parent.clone());
        self
    }

    /// Creates the greenlet; see [`Greenlet::new`].
    ///
    /// # Panics
    /// If no stack can be mapped (out of memory).
    #[track_caller]
    pub fn build<F, T>(self, f: F) -> Greenlet
    where
        F: FnOnce(Value) -> Result<T, Error> + 'static,
        T: Any,
    {
        self.build_at(Location::caller(), f)
    }

    /// [`build`](GreenletBuilder::build), recording `spawned_at` as the place it was created
    /// (for layers that create greenlets on a user's behalf, from inside a closure).
    pub(crate) fn build_at<F, T>(self, spawned_at: &'static Location<'static>, f: F) -> Greenlet
    where
        F: FnOnce(Value) -> Result<T, Error> + 'static,
        T: Any,
    {
        let parent = self.parent.unwrap_or_else(switch::current);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut stack = switch::with_thread(|t| {
            let size = self.stack_size.unwrap_or(t.default_stack_size.get());
            t.pool.borrow_mut().get(size)
        })
        .unwrap_or_else(|e| panic!("greenhub: cannot map a stack for a new greenlet: {e}"));
        let name = self.name.map(String::into_boxed_str);
        stack.set_owner(id, name.as_deref().unwrap_or(""));
        let stack_size = stack.usable_size();
        let co = switch::new_coroutine(stack, move |v| f(v).map(Value::new));
        Greenlet::from_rc(Spares::alloc(NewInner {
            id,
            name,
            spawned_at,
            stack_size,
            parent,
            co: Some(co),
            lazy: None,
        }))
    }

    /// Like [`build_at`](GreenletBuilder::build_at) for a greenlet that runs `body`, which it holds
    /// weakly until it starts (if `body` is gone by then, it returns `()` at once).
    ///
    /// Its stack is taken from the pool at its first switch, if the pool has a free stack
    /// for it then (more free stacks than greenlets waiting so): greenlets that are spawned
    /// in a batch and run one after another then all run on the same warm stack. Else
    /// (the pool would have to map and touch a new stack) it takes its stack now, so that
    /// this cost stays with the code that spawns, not the hub that runs it.
    ///
    /// # Panics
    /// If no stack can be mapped (out of memory, or a stack size too large).
    pub(crate) fn build_lazy(
        self,
        spawned_at: &'static Location<'static>,
        body: Weak<dyn LazyBody>,
    ) -> Greenlet {
        let parent = self.parent.unwrap_or_else(switch::current);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = self.name.map(String::into_boxed_str);
        let cannot_map =
            |e| -> ! { panic!("greenhub: cannot map a stack for a new greenlet: {e}") };
        let (stack_size, co, lazy) = switch::with_thread(|t| {
            let size = self.stack_size.unwrap_or(t.default_stack_size.get());
            let usable = stack::usable_size_for(size).unwrap_or_else(|e| cannot_map(e));
            let waiting = t.lazy_waiting.get();
            if t.pool.borrow().free_count(usable) > waiting {
                t.lazy_waiting.set(waiting + 1);
                return (usable, None, Some(body));
            }
            let stack = t.pool.borrow_mut().get(usable);
            (usable, Some((stack, body)), None)
        });
        let co = co.map(|(stack, body)| {
            let mut stack = stack.unwrap_or_else(|e| cannot_map(e));
            stack.set_owner(id, name.as_deref().unwrap_or(""));
            switch::lazy_coroutine(stack, body)
        });
        Greenlet::from_rc(Spares::alloc(NewInner {
            id,
            name,
            spawned_at,
            stack_size,
            parent,
            co,
            lazy,
        }))
    }
}
