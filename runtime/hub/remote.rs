//! Cross-thread work: [`HubHandle`] posts jobs to a hub from any thread, and
//! [`result_channel`] lets a greenlet wait cooperatively for a value another thread sends.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};

use crossbeam_queue::SegQueue;
use slab::Slab;

use super::{Hub, Waiter, Wake, current_hub, with_hub};
use crate::error::Error;
use crate::greenlet::probe::Probe;

enum RemoteMsg {
    /// Run this in a new greenlet on the hub.
    Spawn(Box<dyn FnOnce() + Send>),
    /// The external wait with this key has its value (or lost its sender).
    Complete(usize),
}

/// The hub's inbox from other threads: a lock-free queue plus a `mio::Waker`.
pub(crate) struct Remote {
    queue: SegQueue<RemoteMsg>,
    waker: mio::Waker,
    /// Set by the first post after a drain, so a burst costs one wake-up syscall.
    notified: AtomicBool,
    /// Live user `HubHandle`s: while one exists, another thread may still post work, so
    /// the hub never declares "block forever".
    handles: AtomicUsize,
    /// The hub's thread has exited: nothing posted will ever be taken.
    closed: AtomicBool,
    /// The hub thread's monitor probe, which counts the jobs waiting here.
    probe: Option<Arc<Probe>>,
}

impl Remote {
    pub(crate) fn new(waker: mio::Waker, probe: Option<Arc<Probe>>) -> Remote {
        Remote {
            queue: SegQueue::new(),
            waker,
            notified: AtomicBool::new(false),
            handles: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            probe,
        }
    }

    fn post(&self, msg: RemoteMsg) {
        if let Some(p) = &self.probe {
            p.note_posted();
        }
        self.queue.push(msg);
        // Pairs with the fence in `close`: either the hub's last drain sees this message,
        // or we see `closed` (or both).
        fence(Ordering::SeqCst);
        if self.closed.load(Ordering::Relaxed) {
            self.discard();
            return;
        }
        if !self.notified.swap(true, Ordering::AcqRel) {
            // A failed wake means the hub's poller is gone with its thread: nothing to do.
            let _ = self.waker.wake();
        }
    }

    /// The hub's thread is exiting: drops what was posted, and everything posted from now
    /// on as soon as it is posted (a job's closure is dropped unrun; a `dump()` waiting
    /// for this hub's answer sees it gone at once).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.discard();
    }

    /// Has the hub's thread exited?
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn discard(&self) {
        while let Some(msg) = self.queue.pop() {
            self.taken();
            drop(msg);
        }
    }

    /// One posted message was taken off the queue.
    fn taken(&self) {
        if let Some(p) = &self.probe {
            p.note_taken();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Could another thread still post work (a user `HubHandle` is alive)?
    pub(crate) fn has_handles(&self) -> bool {
        self.handles.load(Ordering::Acquire) > 0
    }

    /// Takes everything posted so far (runs on the hub greenlet, every round): one load
    /// when nothing was posted. Every post sets `notified` after pushing its message, and
    /// the flag stays set until here, so a message this round misses is taken the next.
    #[inline]
    pub(crate) fn drain(&self, hub: &Hub) {
        if !self.notified.load(Ordering::Acquire) {
            return;
        }
        self.drain_posted(hub);
    }

    #[inline(never)]
    fn drain_posted(&self, hub: &Hub) {
        // A read-modify-write, not a store: it reads the last post's `true` and so
        // synchronizes with it (its message is visible to the pops below); a post after
        // it finds `false` and wakes the hub again.
        self.notified.swap(false, Ordering::AcqRel);
        while let Some(msg) = self.queue.pop() {
            self.taken();
            match msg {
                RemoteMsg::Spawn(job) => {
                    super::spawn::SpawnBuilder::new()
                        .name("remote")
                        .spawn_on(hub, job);
                }
                RemoteMsg::Complete(key) => hub.external.complete(key),
            }
        }
    }
}

/// Greenlets waiting for values from other threads; each counts as pending work, so the
/// hub does not declare "block forever" while one is outstanding.
#[derive(Default)]
pub(crate) struct ExternalWaits {
    slots: RefCell<Slab<Option<Waiter>>>,
}

impl ExternalWaits {
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.borrow().is_empty()
    }

    /// How many values from other threads are awaited.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Forgets every wait (the hub's thread is exiting).
    pub(crate) fn clear(&self) {
        drop(std::mem::take(&mut *self.slots.borrow_mut()));
    }

    fn complete(&self, key: usize) {
        let waiter = self.slots.borrow_mut().get_mut(key).and_then(Option::take);
        if let Some(w) = waiter {
            w.wake(Wake::Ready);
        }
    }
}

/// A `Send + Sync + Clone` handle to one thread's hub, to post work to it from any thread.
///
/// Get one with [`greenhub::hub::handle()`](crate::hub::handle) on the hub's thread. While
/// a handle lives, its hub never reports [`Error::BlockForever`]: work may still come.
pub struct HubHandle {
    pub(crate) remote: Arc<Remote>,
    /// Counted in `Remote::handles` (the hub's own registry entry for `dump()` is not).
    counted: bool,
}

impl HubHandle {
    /// A handle that keeps the hub from declaring "block forever" while it lives.
    pub(crate) fn new(remote: Arc<Remote>) -> HubHandle {
        remote.handles.fetch_add(1, Ordering::AcqRel);
        HubHandle {
            remote,
            counted: true,
        }
    }

    /// A handle for the runtime's own use, which does not keep the hub waiting.
    pub(crate) fn uncounted(remote: Arc<Remote>) -> HubHandle {
        HubHandle {
            remote,
            counted: false,
        }
    }

    /// Runs `f` in a new greenlet on the hub's thread. Wakes the hub if it is waiting in
    /// `epoll_wait`. Jobs posted from one thread start in the order they were posted.
    ///
    /// Once the hub's thread has exited, `f` is dropped without running (see
    /// [`is_closed`](HubHandle::is_closed)).
    pub fn spawn<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        self.remote.post(RemoteMsg::Spawn(Box::new(f)));
    }

    /// Has the hub's thread exited? Then nothing posted to it runs any more.
    ///
    /// ```
    /// let handle = std::thread::spawn(greenhub::hub::handle).join().unwrap();
    /// assert!(handle.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.remote.is_closed()
    }
}

impl Clone for HubHandle {
    fn clone(&self) -> Self {
        if self.counted {
            HubHandle::new(self.remote.clone())
        } else {
            HubHandle::uncounted(self.remote.clone())
        }
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        if self.counted {
            self.remote.handles.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl fmt::Debug for HubHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HubHandle")
    }
}

enum SlotState<T> {
    Empty,
    Full(T),
    Taken,
    SenderGone,
}

struct Shared<T> {
    state: Mutex<SlotState<T>>,
    remote: Arc<Remote>,
    key: usize,
}

/// The sending half of [`result_channel`]: `Send`, used once, from any thread.
pub struct ResultSender<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// The receiving half of [`result_channel`]: stays on the hub's thread.
pub struct ResultReceiver<T> {
    shared: Arc<Shared<T>>,
    _not_send: PhantomData<*const ()>,
}

/// A one-shot channel from any thread to a greenlet: the greenlet's [`recv`](ResultReceiver::recv)
/// waits cooperatively (other greenlets run) until [`send`](ResultSender::send) is called.
///
/// While a receiver is outstanding, its hub never reports "block forever".
///
/// ```
/// let (tx, rx) = greenhub::hub::result_channel();
/// std::thread::spawn(move || tx.send(6 * 7));
/// assert_eq!(rx.recv().unwrap(), 42);
/// ```
pub fn result_channel<T: Send + 'static>() -> (ResultSender<T>, ResultReceiver<T>) {
    let (remote, key) = with_hub(|hub| {
        (
            hub.remote.clone(),
            hub.external.slots.borrow_mut().insert(None),
        )
    });
    let shared = Arc::new(Shared {
        state: Mutex::new(SlotState::Empty),
        remote,
        key,
    });
    (
        ResultSender {
            shared: Some(shared.clone()),
        },
        ResultReceiver {
            shared,
            _not_send: PhantomData,
        },
    )
}

impl<T> ResultSender<T> {
    /// Sends the value and wakes the receiving greenlet.
    pub fn send(mut self, value: T) {
        if let Some(shared) = self.shared.take() {
            *shared.state.lock().unwrap_or_else(|e| e.into_inner()) = SlotState::Full(value);
            shared.remote.post(RemoteMsg::Complete(shared.key));
        }
    }
}

impl<T> fmt::Debug for ResultSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.shared.as_ref().map(|s| s.key);
        f.debug_struct("ResultSender").field("key", &key).finish()
    }
}

impl<T> Drop for ResultSender<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            *shared.state.lock().unwrap_or_else(|e| e.into_inner()) = SlotState::SenderGone;
            shared.remote.post(RemoteMsg::Complete(shared.key));
        }
    }
}

impl<T> ResultReceiver<T> {
    /// Waits cooperatively for the value.
    ///
    /// # Errors
    /// [`Error::Closed`] if the sender was dropped without sending; [`Error::Timeout`] if a
    /// `Timeout` scope expires first (the value can still be received later).
    pub fn recv(&self) -> Result<T, Error> {
        let hub = current_hub();
        loop {
            {
                let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                match std::mem::replace(&mut *state, SlotState::Taken) {
                    SlotState::Full(v) => return Ok(v),
                    SlotState::SenderGone => {
                        *state = SlotState::SenderGone;
                        return Err(Error::Closed);
                    }
                    SlotState::Taken => return Err(Error::Closed),
                    SlotState::Empty => *state = SlotState::Empty,
                }
            }
            let waiter = hub.begin_wait_on(super::WaitOn::Thread);
            if let Some(slot) = hub.external.slots.borrow_mut().get_mut(self.shared.key) {
                *slot = Some(waiter.clone());
            }
            hub.park(&waiter, None)?;
        }
    }
}

impl<T> fmt::Debug for ResultReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = match *state {
            SlotState::Empty => "waiting",
            SlotState::Full(_) => "sent",
            SlotState::Taken => "received",
            SlotState::SenderGone => "sender gone",
        };
        f.debug_struct("ResultReceiver")
            .field("key", &self.shared.key)
            .field("state", &state)
            .finish()
    }
}

impl<T> Drop for ResultReceiver<T> {
    fn drop(&mut self) {
        let key = self.shared.key;
        let _ = super::HUB.try_with(|cell| {
            if let Some(hub) = cell.get() {
                hub.external.slots.borrow_mut().try_remove(key);
            }
        });
    }
}
