//! The stack service: one background thread per process that prepares stack slots before
//! a pool needs them (installs their guard page and faults their top page in) and gives
//! the memory of free slots back to the kernel, so that the page faults and `madvise`
//! calls a burst of new greenlets costs happen there, not on the thread that runs them.
//!
//! A pool is per thread, but its memory is process-wide, and page tables belong to the
//! process: the service may fault in or release a slot from its own thread. It only
//! works on slots a pool has handed over in a [`Job`] (no `Stack` owns them, no other job
//! has them) and hands them back through the lock-free queues of the size class's
//! [`ClassShared`]; the `ClassShared` also owns the class's mappings, so an arena stays
//! mapped while a job on one of its slots is in flight, even once its pool is gone.
//!
//! The ready slots a class keeps (its *reserve*) are given back by the service itself
//! once nobody has taken one for [`RESERVE_KEEP`]: the hub's thread never wakes up for
//! that. An idle process then has no reserve, and the service sleeps until a job comes.
//!
//! Where no service thread can run (it could not be started, or this is a child made by
//! `fork`, where it does not exist), jobs run on the calling thread.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use super::guard::{GuardMode, MAX_BATCH, install_guards, populate_ranges, release_ranges};
use super::registry::unregister_arena;

/// How long a class's reserve of ready slots is kept once nobody takes from it.
pub(super) const RESERVE_KEEP: Duration = Duration::from_secs(10);

/// The shape of a size class's slots.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub(super) mode: GuardMode,
    /// The guard page's size (one page).
    pub(super) guard: usize,
    /// The usable size above it.
    pub(super) usable: usize,
    pub(super) page: usize,
}

impl Geometry {
    fn slot_size(&self) -> usize {
        self.guard + self.usable
    }

    /// The slot's top page (the header and the first frames live there).
    fn top_page(&self, slot: usize) -> (usize, usize) {
        (slot + self.slot_size() - self.page, self.page)
    }

    /// The slot's usable area, with its top page (`keep_top: false`) or without it.
    fn usable_range(&self, slot: usize, keep_top: bool) -> (usize, usize) {
        let kept = if keep_top { self.page } else { 0 };
        (slot + self.guard, self.usable - kept)
    }
}

/// What a size class of one pool shares with the service.
pub(super) struct ClassShared {
    pub(super) geometry: Geometry,
    /// Slots ready to hand out: guard installed, top page resident, nothing else.
    pub(super) ready: SegQueue<usize>,
    /// Slots whose memory was given back (their guard stays).
    pub(super) released: SegQueue<usize>,
    /// Fresh slots whose guard the service could not install (the pool installs it
    /// itself before handing one out, and reports the error if it fails again).
    pub(super) unguarded: SegQueue<usize>,
    /// Slots in `ready` or in a job that puts them there.
    pub(super) prepared: AtomicUsize,
    /// How many slots the pool wants in `ready` (0: no reserve).
    pub(super) want: AtomicUsize,
    /// Ready slots taken by the pool so far (so the service can tell a reserve in use).
    pub(super) taken: AtomicU64,
    /// The class's arenas, unmapped when the last holder of the `ClassShared` lets go.
    mappings: Mutex<Vec<Mapping>>,
}

impl ClassShared {
    pub(super) fn new(geometry: Geometry) -> ClassShared {
        ClassShared {
            geometry,
            ready: SegQueue::new(),
            released: SegQueue::new(),
            unguarded: SegQueue::new(),
            prepared: AtomicUsize::new(0),
            want: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
            mappings: Mutex::new(Vec::new()),
        }
    }

    /// Takes over a new arena's mapping (and its registry entry, if any).
    pub(super) fn own_mapping(&self, start: usize, len: usize, registry: Option<usize>) {
        let mapping = Mapping {
            start,
            len,
            registry,
        };
        self.mappings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mapping);
    }

    /// Gives back the whole reserve: every ready slot's memory is released.
    pub(super) fn drop_reserve(&self) {
        self.want.store(0, Ordering::Relaxed);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(slot) = self.ready.pop() {
            self.prepared.fetch_sub(1, Ordering::Relaxed);
            batch.push(slot);
            if batch.len() == MAX_BATCH {
                self.release(&batch, false);
                batch.clear();
            }
        }
        self.release(&batch, false);
    }

    /// Releases the memory of `slots` (all of it, or all but the top page), then hands
    /// them back: to `ready` if the top page stays, to `released` if not.
    fn release(&self, slots: &[usize], keep_top: bool) {
        let mut ranges = [(0, 0); MAX_BATCH];
        for chunk in slots.chunks(MAX_BATCH) {
            for (r, &slot) in ranges.iter_mut().zip(chunk) {
                *r = self.geometry.usable_range(slot, keep_top);
            }
            // SAFETY: the usable parts (above the guard page, which is left alone) of
            // slots handed over to us: inside this class's arenas, which stay mapped
            // while we hold the `ClassShared`, and owned by no `Stack`, so nothing
            // references their contents.
            unsafe { release_ranges(&ranges[..chunk.len()]) };
            let to = if keep_top {
                &self.ready
            } else {
                &self.released
            };
            for &slot in chunk {
                to.push(slot);
            }
        }
    }

    /// Guards `fresh` consecutive slots from `first` (their guard pages not installed
    /// yet) and faults in the top page of those and of `cold` (guarded already), then
    /// puts them in `ready`.
    fn prepare(&self, cold: &[usize], first: usize, fresh: usize) {
        let g = self.geometry;
        let mut guarded = 0;
        while guarded < fresh {
            let count = (fresh - guarded).min(MAX_BATCH);
            let from = first + guarded * g.slot_size();
            match install_guards(g.mode, from, g.slot_size(), count, g.guard) {
                Ok(n) if n == count => guarded += n,
                // Fewer than asked, or none: the rest go back unguarded (below).
                Ok(n) => {
                    guarded += n;
                    break;
                }
                Err(_) => break,
            }
        }
        for i in guarded..fresh {
            self.prepared.fetch_sub(1, Ordering::Relaxed);
            self.unguarded.push(first + i * g.slot_size());
        }
        let fresh_slots = (0..guarded).map(|i| first + i * g.slot_size());
        let all: Vec<usize> = cold.iter().copied().chain(fresh_slots).collect();
        let mut ranges = [(0, 0); MAX_BATCH];
        for chunk in all.chunks(MAX_BATCH) {
            for (r, &slot) in ranges.iter_mut().zip(chunk) {
                *r = g.top_page(slot);
            }
            // SAFETY: the top pages of slots handed over to us (see `release`).
            unsafe { populate_ranges(&ranges[..chunk.len()]) };
            for &slot in chunk {
                self.ready.push(slot);
            }
        }
    }
}

/// One arena's mapping.
struct Mapping {
    start: usize,
    len: usize,
    /// Its entry in the registry the overflow handler reads.
    registry: Option<usize>,
}

impl Drop for Mapping {
    /// Runs when the `ClassShared` goes: its pool and every `Stack` from it are gone, and
    /// so is every job on its slots, so nothing uses the arena any more.
    fn drop(&mut self) {
        if let Some(i) = self.registry {
            unregister_arena(i);
        }
        // SAFETY: the arena is our own mapping and nothing uses it any more (see above);
        // unmapping removes its guard pages too.
        unsafe { libc::munmap(self.start as *mut _, self.len) };
    }
}

/// What a [`Job`] does with its slots.
#[derive(Debug)]
pub(super) enum Work {
    /// Fault in the top page of `cold` (guarded slots whose memory was released) and
    /// of `fresh` consecutive slots from `first`, guarding those first; into `ready`.
    Prepare {
        cold: Vec<usize>,
        first: usize,
        fresh: usize,
    },
    /// Release the memory of `slots`: all of it into `released`, or all but the top
    /// page into `ready` (`keep_top`).
    Release { slots: Vec<usize>, keep_top: bool },
}

/// Work on slots a pool has handed over (see the module docs).
pub(super) struct Job {
    pub(super) class: Arc<ClassShared>,
    pub(super) work: Work,
}

impl Job {
    /// Does it fill the class's reserve?
    fn fills_ready(&self) -> bool {
        matches!(
            self.work,
            Work::Prepare { .. } | Work::Release { keep_top: true, .. }
        )
    }

    fn run(&self) {
        match &self.work {
            Work::Prepare { cold, first, fresh } => self.class.prepare(cold, *first, *fresh),
            Work::Release { slots, keep_top } => self.class.release(slots, *keep_top),
        }
    }
}

/// The service thread's inbox, and the process it was started in.
struct Service {
    inbox: Sender<Job>,
    pid: u32,
}

static SERVICE: OnceLock<Option<Service>> = OnceLock::new();

/// Hands `job` to the service thread, starting it on first use; runs it here where it
/// cannot run there (see the module docs). With `inline`, always runs it here (pools of
/// the tests that check what a job did).
pub(super) fn submit(job: Job, inline: bool) {
    let service = if inline {
        None
    } else {
        SERVICE.get_or_init(start).as_ref()
    };
    let job = match service {
        Some(s) if s.pid == std::process::id() => match s.inbox.send(job) {
            Ok(()) => return,
            Err(mpsc::SendError(job)) => job,
        },
        _ => job,
    };
    job.run();
}

fn start() -> Option<Service> {
    let (inbox, jobs) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("greenhub-stacks".into())
        .stack_size(256 * 1024)
        .spawn(move || serve(&jobs));
    match spawned {
        Ok(_) => Some(Service {
            inbox,
            pid: std::process::id(),
        }),
        Err(e) => {
            report_no_service(&e);
            None
        }
    }
}

#[cold]
fn report_no_service(e: &io::Error) {
    eprintln!(
        "greenhub: cannot start the stack service thread ({e}); stacks are prepared on the \
         threads that use them"
    );
}

/// A class whose reserve the service watches.
struct Reserve {
    class: Weak<ClassShared>,
    /// `taken` when the service last looked.
    seen: u64,
    /// When to look again.
    at: Instant,
}

/// The service thread: runs jobs as they come; gives back reserves nobody used.
fn serve(jobs: &Receiver<Job>) {
    let mut reserves: Vec<Reserve> = Vec::new();
    loop {
        let next = reserves.iter().map(|r| r.at).min();
        let job = match next {
            None => jobs.recv().ok(),
            Some(at) => match jobs.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        if next.is_none() && job.is_none() {
            return; // every sender is gone (the process is exiting)
        }
        if let Some(job) = job {
            job.run();
            if job.fills_ready() {
                let p = Arc::as_ptr(&job.class);
                if !reserves.iter().any(|r| r.class.as_ptr() == p) {
                    reserves.push(Reserve {
                        class: Arc::downgrade(&job.class),
                        seen: job.class.taken.load(Ordering::Relaxed),
                        at: Instant::now() + RESERVE_KEEP,
                    });
                }
            }
        }
        let now = Instant::now();
        reserves.retain_mut(|r| {
            if r.at > now {
                return true;
            }
            let Some(class) = r.class.upgrade() else {
                return false; // its pool is gone
            };
            let taken = class.taken.load(Ordering::Relaxed);
            if taken != r.seen {
                r.seen = taken;
                r.at = now + RESERVE_KEEP;
                return true;
            }
            class.drop_reserve();
            false
        });
    }
}
