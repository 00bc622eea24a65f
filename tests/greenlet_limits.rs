//! What Rust does not let greenlets do as Python does, pinned: reference cycles are never
//! collected (but `dump()` shows the greenlets they keep), and the panic state is per
//! thread, not per greenlet.

mod common;

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Mutex;

use common::{DropFlag, OnDrop};
use greenhub::{Error, Greenlet, getcurrent};

#[test]
fn a_greenlet_holding_its_own_handle_across_a_switch_is_never_unwound() {
    let main = getcurrent();
    let unwound = Rc::new(Cell::new(false));
    let flag = unwound.clone();
    let g = Greenlet::builder()
        .name("holds-itself")
        .build(move |_| -> Result<(), Error> {
            let _guard = DropFlag(flag);
            let _me = getcurrent(); // a cycle: its stack keeps it alive
            loop {
                main.switch(())?;
            }
        });
    g.switch(()).unwrap();
    let id = g.id();
    drop(g);
    assert!(
        !unwound.get(),
        "the cycle keeps it alive: dropping it did not kill it"
    );
    // The hub lists it: that is how a user finds it.
    let text = greenhub::dump();
    let section = text
        .split("greenlets not known to the hub")
        .nth(1)
        .unwrap_or_else(|| panic!("no section for greenlets unknown to the hub:\n{text}"));
    assert!(
        section.contains(&format!("#{id} \"holds-itself\": suspended")),
        "{text}"
    );
}

#[test]
fn a_suspended_parent_holding_its_child_keeps_both_alive() {
    let main = getcurrent();
    let unwound = Rc::new(Cell::new(0));
    let (u1, u2) = (unwound.clone(), unwound.clone());
    let parent = Greenlet::builder().name("cycle-parent").build(move |_| {
        let _guard = OnDrop(move || u1.set(u1.get() + 1));
        let m = main.clone();
        let child = Greenlet::builder().name("cycle-child").build(move |_| {
            let _guard = OnDrop(move || u2.set(u2.get() + 1));
            m.switch(())?;
            Ok(())
        });
        child.switch(())?; // the child switches to main: both are suspended
        main.switch(())?;
        Ok(())
    });
    parent.switch(()).unwrap();
    drop(parent); // the child's parent field still holds it; its stack holds the child
    assert_eq!(unwound.get(), 0, "neither is unwound");
    let text = greenhub::dump();
    assert!(text.contains("\"cycle-parent\": suspended"), "{text}");
    assert!(text.contains("\"cycle-child\": suspended"), "{text}");
}

#[test]
fn dump_does_not_list_greenlets_that_nothing_keeps_alive() {
    let main = getcurrent();
    let g = Greenlet::builder().name("short-lived").build(move |_| {
        main.switch(())?;
        Ok(())
    });
    g.switch(()).unwrap();
    assert!(greenhub::dump().contains("\"short-lived\": suspended"));
    drop(g); // no cycle: killed and freed
    assert!(!greenhub::dump().contains("short-lived"));
    let done = Greenlet::builder().name("finished").build(|_| Ok(()));
    done.switch(()).unwrap();
    assert!(
        !greenhub::dump().contains("finished\""),
        "dead greenlets are not listed"
    );
}

#[test]
fn thread_panicking_is_true_in_every_greenlet_while_one_unwinds() {
    let main = getcurrent();
    let g = Greenlet::new(move |_| -> Result<(), Error> {
        let _guard = OnDrop(move || {
            let _ = main.switch(()); // suspended mid-unwind
        });
        panic!("unwinding");
    });
    let mutex = Rc::new(Mutex::new(0));
    let (m, back) = (mutex.clone(), getcurrent());
    let locker = Greenlet::new(move |_| {
        let guard = m.lock().unwrap();
        back.switch(())?;
        drop(guard);
        Ok(())
    });
    locker.switch(()).unwrap(); // holds the lock
    assert!(!std::thread::panicking());
    g.switch(()).unwrap();
    // g is suspended in a destructor during its unwinding: the thread is panicking for
    // main and for every other greenlet that runs meanwhile.
    assert!(std::thread::panicking());
    let other = Greenlet::new(|_| Ok(std::thread::panicking()));
    assert!(other.switch(()).unwrap().downcast::<bool>().unwrap());
    // So a std mutex locked before and unlocked meanwhile in another greenlet is poisoned.
    locker.switch(()).unwrap();
    assert!(mutex.is_poisoned());
    // Once g's unwinding ends (its panic reaches us, its parent), the thread is not
    // panicking any more.
    let r = catch_unwind(AssertUnwindSafe(|| g.switch(())));
    assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"unwinding"));
    assert!(g.is_dead());
    assert!(!std::thread::panicking());
}

#[test]
fn a_kill_while_another_greenlet_unwinds_arrives_as_an_error() {
    let main = getcurrent();
    let m = main.clone();
    let unwinding = Greenlet::new(move |_| -> Result<(), Error> {
        let _guard = OnDrop(move || {
            let _ = m.switch(());
        });
        panic!("unwinding");
    });
    unwinding.switch(()).unwrap();
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    let victim = Greenlet::new(move |_| {
        let r = main.switch(());
        *s.borrow_mut() = Some(matches!(r, Err(Error::Killed)));
        r.map(|_| ())
    });
    victim.switch(()).unwrap();
    // The thread is panicking: the victim's switch returns the kill instead of unwinding.
    assert!(matches!(victim.kill(), Err(Error::Killed)));
    assert_eq!(*seen.borrow(), Some(true));
    assert!(victim.is_dead());
    let r = catch_unwind(AssertUnwindSafe(|| unwinding.switch(())));
    assert!(r.is_err());
    assert!(!std::thread::panicking());
}
