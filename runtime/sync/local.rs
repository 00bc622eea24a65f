//! Greenlet-local storage (gevent's `local`): one value per greenlet, dropped when the
//! greenlet ends.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::{Rc, Weak};

use crate::error::panic_payload_str;
use crate::greenlet::{Greenlet, Inner, getcurrent};

/// A value per greenlet (gevent's `local`): each greenlet that touches a `Local` sees its
/// own value, created by the `init` function on first use.
///
/// A greenlet's value is dropped when the greenlet ends: at once, on the greenlet's own
/// stack, for greenlets spawned on the hub (after their function returns, panics or is
/// killed, before their joiners wake); for plain [`Greenlet`]s switched by hand, at the
/// next sweep after they end (sweeps run as new greenlets get values). The main
/// greenlet's value lives as long as the `Local`. Dropping the `Local` drops every value.
///
/// Cloning makes another handle to the same storage; it is `!Send`.
///
/// ```
/// use greenhub::{spawn, sync::Local};
/// let request_id = Local::new(|| 0_u32);
/// let jobs: Vec<_> = (1..=3)
///     .map(|n| {
///         let id = request_id.clone();
///         spawn(move || {
///             id.set(n * 100);
///             greenhub::sleep(std::time::Duration::ZERO); // the others run and set theirs
///             id.get()
///         })
///     })
///     .collect();
/// let seen: Vec<u32> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
/// assert_eq!(seen, [100, 200, 300]);
/// assert_eq!(request_id.get(), 0); // the main greenlet's own value
/// ```
pub struct Local<T: 'static> {
    store: Rc<Store<T>>,
}

struct Store<T> {
    init: Box<dyn Fn() -> T>,
    values: RefCell<HashMap<u64, Rc<RefCell<T>>>>,
}

/// A store seen from the registry: it can give up one greenlet's value.
trait Erase {
    fn erase(&self, greenlet: u64) -> Option<Box<dyn Any>>;
}

impl<T: 'static> Erase for Store<T> {
    fn erase(&self, greenlet: u64) -> Option<Box<dyn Any>> {
        let value = self.values.borrow_mut().remove(&greenlet)?;
        Some(Box::new(value))
    }
}

/// The stores holding a value for one greenlet.
struct Owner {
    greenlet: Weak<Inner>,
    stores: Vec<Weak<dyn Erase>>,
}

thread_local! {
    static OWNERS: RefCell<HashMap<u64, Owner>> = RefCell::new(HashMap::new());
    static NEXT_SWEEP: Cell<usize> = const { Cell::new(64) };
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

/// Notes that greenlet `g` has a value in `store`.
fn register(g: &Greenlet, store: Weak<dyn Erase>) {
    if !HOOKED.with(|h| h.replace(true)) {
        crate::hub::on_spawned_exit(greenlet_exit);
    }
    let sweep = OWNERS.with(|owners| {
        let mut owners = owners.borrow_mut();
        owners
            .entry(g.id())
            .or_insert_with(|| Owner {
                greenlet: Rc::downgrade(&g.inner),
                stores: Vec::new(),
            })
            .stores
            .push(store);
        owners.len() >= NEXT_SWEEP.with(Cell::get)
    });
    if sweep {
        sweep_ended();
    }
}

/// Has the greenlet ended (or been dropped)?
fn ended(g: &Weak<Inner>) -> bool {
    g.upgrade().is_none_or(|inner| Greenlet { inner }.is_dead())
}

/// Drops the values of greenlets that have ended.
fn sweep_ended() {
    let dead: Vec<(u64, Owner)> = OWNERS.with(|owners| {
        let mut owners = owners.borrow_mut();
        let ids: Vec<u64> = owners
            .iter()
            .filter(|(_, o)| ended(&o.greenlet))
            .map(|(id, _)| *id)
            .collect();
        let dead = ids
            .into_iter()
            .filter_map(|id| owners.remove(&id).map(|o| (id, o)))
            .collect();
        NEXT_SWEEP.with(|n| n.set((owners.len() * 2).max(64)));
        dead
    });
    for (id, owner) in dead {
        drop_values(id, owner);
    }
}

/// The hub's exit hook: drops the values of the greenlet that is ending.
fn greenlet_exit() {
    let id = getcurrent().id();
    let owner = OWNERS
        .try_with(|owners| owners.borrow_mut().remove(&id))
        .ok()
        .flatten();
    if let Some(owner) = owner {
        drop_values(id, owner);
    }
}

fn drop_values(id: u64, owner: Owner) {
    for store in owner.stores {
        let Some(store) = store.upgrade() else {
            continue; // the Local is gone, and its values with it
        };
        let value = store.erase(id);
        if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
            let msg = panic_payload_str(p.as_ref()).unwrap_or("<non-string payload>");
            eprintln!(
                "greenhub: dropping the greenlet-local value of greenlet #{id} panicked: {msg}"
            );
        }
    }
}

impl<T: 'static> Local<T> {
    /// Storage whose value, in each greenlet, starts as `init()`.
    pub fn new(init: impl Fn() -> T + 'static) -> Local<T> {
        Local {
            store: Rc::new(Store {
                init: Box::new(init),
                values: RefCell::new(HashMap::new()),
            }),
        }
    }

    fn lookup(&self, id: u64) -> Option<Rc<RefCell<T>>> {
        self.store.values.borrow().get(&id).cloned()
    }

    fn insert(&self, me: &Greenlet, value: T) -> Rc<RefCell<T>> {
        let cell = Rc::new(RefCell::new(value));
        let old = self.store.values.borrow_mut().insert(me.id(), cell.clone());
        if old.is_none() {
            let store: Weak<Store<T>> = Rc::downgrade(&self.store);
            register(me, store);
        }
        drop(old);
        cell
    }

    /// This greenlet's value, created if needed.
    fn slot(&self) -> Rc<RefCell<T>> {
        let me = getcurrent();
        if let Some(cell) = self.lookup(me.id()) {
            return cell;
        }
        let value = (self.store.init)();
        self.insert(&me, value)
    }

    /// Runs `f` with the running greenlet's value.
    ///
    /// # Panics
    /// If `f` calls [`with_mut`](Local::with_mut) on the same `Local` (re-entrant
    /// borrows are checked, as in a `RefCell`).
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let cell = self.slot();
        let value = cell.borrow();
        f(&value)
    }

    /// Runs `f` with the running greenlet's value, mutably.
    ///
    /// ```
    /// let hits = greenhub::sync::Local::new(Vec::new);
    /// hits.with_mut(|v| v.push("main"));
    /// let h = hits.clone();
    /// let other = greenhub::spawn(move || h.with(|v| v.len()));
    /// assert_eq!(other.join().unwrap(), 0); // a fresh value in the other greenlet
    /// assert_eq!(hits.with(|v| v.len()), 1);
    /// ```
    ///
    /// # Panics
    /// If `f` uses the same `Local` again (re-entrant borrows are checked).
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let cell = self.slot();
        let mut value = cell.borrow_mut();
        f(&mut value)
    }

    /// Sets the running greenlet's value.
    ///
    /// # Panics
    /// Inside [`with`](Local::with) / [`with_mut`](Local::with_mut) of the same value.
    pub fn set(&self, value: T) {
        let me = getcurrent();
        match self.lookup(me.id()) {
            Some(cell) => drop(cell.replace(value)),
            None => drop(self.insert(&me, value)),
        }
    }

    /// Replaces the running greenlet's value, returning the old one (created by `init`
    /// if there was none).
    ///
    /// # Panics
    /// Inside [`with`](Local::with) / [`with_mut`](Local::with_mut) of the same value.
    pub fn replace(&self, value: T) -> T {
        self.slot().replace(value)
    }

    /// Removes the running greenlet's value (the next use creates a fresh one).
    ///
    /// # Panics
    /// Inside [`with`](Local::with) / [`with_mut`](Local::with_mut) of the same value.
    pub fn take(&self) -> Option<T> {
        let id = getcurrent().id();
        let cell = self.store.values.borrow_mut().remove(&id)?;
        match Rc::try_unwrap(cell) {
            Ok(cell) => Some(cell.into_inner()),
            Err(_) => panic!("greenhub: Local::take called while the value is borrowed"),
        }
    }

    /// Does the running greenlet have a value yet?
    pub fn is_set(&self) -> bool {
        self.lookup(getcurrent().id()).is_some()
    }
}

impl<T: Clone + 'static> Local<T> {
    /// A clone of the running greenlet's value.
    pub fn get(&self) -> T {
        self.with(T::clone)
    }
}

impl<T: Default + 'static> Default for Local<T> {
    /// Storage whose value starts as `T::default()` in each greenlet.
    fn default() -> Self {
        Local::new(T::default)
    }
}

impl<T: 'static> Clone for Local<T> {
    /// Another handle to the same storage.
    fn clone(&self) -> Self {
        Local {
            store: self.store.clone(),
        }
    }
}

impl<T: 'static> fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("greenlets", &self.store.values.borrow().len())
            .finish()
    }
}
