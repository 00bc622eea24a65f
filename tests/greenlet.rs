//! The rules of the greenlet core: parents, switching, results and panics, throw,
//! set_parent, dead greenlets, dropping and killing, threads, settrace.

mod common;

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use common::DropFlag;
use greenhub::{Error, Greenlet, TraceEvent, Value, getcurrent, settrace};

fn int(v: Value) -> i32 {
    v.downcast::<i32>().expect("an i32")
}

// parents and the main greenlet

#[test]
fn parent_defaults_to_creator_and_main_has_none() {
    let main = getcurrent();
    assert!(main.is_main());
    assert!(main.parent().is_none());
    assert!(main.is_started() && main.is_active() && !main.is_dead());
    let g = Greenlet::new(|_| {
        let inner = Greenlet::new(|_| Ok(()));
        Ok(inner.parent().unwrap().id())
    });
    assert_eq!(g.parent().unwrap(), main);
    let inner_parent = g.switch(()).unwrap().downcast::<u64>().unwrap();
    assert_eq!(
        inner_parent,
        g.id(),
        "a greenlet made inside g has g as parent"
    );
}

#[test]
fn main_greenlet_cannot_get_a_parent() {
    let main = getcurrent();
    let g = Greenlet::new(|_| Ok(()));
    assert!(matches!(
        main.set_parent(&g),
        Err(Error::MainGreenletParent)
    ));
}

// first switch calls f(value); later switches return the value

#[test]
fn first_switch_calls_f_and_later_switches_return_values() {
    let main = getcurrent();
    let g = Greenlet::new(move |v| {
        let mut total = int(v);
        for _ in 0..3 {
            total += int(main.switch(total)?);
        }
        Ok(total)
    });
    assert!(!g.is_started());
    assert_eq!(int(g.switch(1).unwrap()), 1);
    assert!(g.is_started() && g.is_active());
    assert_eq!(int(g.switch(10).unwrap()), 11);
    assert_eq!(int(g.switch(100).unwrap()), 111);
    assert_eq!(int(g.switch(1000).unwrap()), 1111); // f returned: the result comes to main
    assert!(g.is_dead() && !g.is_active());
}

#[test]
fn switch_to_self_returns_the_value() {
    let me = getcurrent();
    assert_eq!(int(me.switch(5).unwrap()), 5);
}

#[test]
fn red_blue_runs_red_then_blue_then_red_done() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l1, l2) = (log.clone(), log.clone());
    let blue = Greenlet::new(move |red: Value| {
        let red: Greenlet = red.downcast().unwrap();
        l2.borrow_mut().push("blue");
        red.switch(())?;
        l2.borrow_mut().push("blue done");
        Ok(())
    });
    let red = Greenlet::new(move |_| {
        l1.borrow_mut().push("red");
        blue.switch(getcurrent())?;
        l1.borrow_mut().push("red done");
        Ok(())
    });
    red.switch(()).unwrap();
    assert_eq!(*log.borrow(), ["red", "blue", "red done"]);
}

// the result goes to the parent, or the nearest live ancestor; a dying child starts
//    an unstarted parent

#[test]
fn result_goes_to_parent_and_greenlet_is_dead() {
    let g = Greenlet::new(|_| Ok("result"));
    let v = g.switch(()).unwrap();
    assert_eq!(v.downcast::<&str>().unwrap(), "result");
    assert!(g.is_dead());
}

#[test]
fn result_skips_dead_parent_to_nearest_live_ancestor() {
    let main = getcurrent();
    // p creates c (c.parent = p), switches to main; then p finishes; then c finishes:
    // c's result must go past dead p to main.
    let holder: Rc<RefCell<Option<Greenlet>>> = Rc::new(RefCell::new(None));
    let h = holder.clone();
    let m = main.clone();
    let p = Greenlet::new(move |_| {
        let c = Greenlet::new(|_| Ok("from c"));
        *h.borrow_mut() = Some(c);
        m.switch(())?;
        Ok("p done")
    });
    p.switch(()).unwrap();
    assert_eq!(p.switch(()).unwrap().downcast::<&str>().unwrap(), "p done");
    assert!(p.is_dead());
    let c = holder.borrow_mut().take().unwrap();
    assert_eq!(c.parent().unwrap(), p);
    assert_eq!(c.switch(()).unwrap().downcast::<&str>().unwrap(), "from c");
}

#[test]
fn dying_child_starts_unstarted_parent() {
    let p = Greenlet::new(|v| Ok(format!("parent got {}", v.downcast::<i32>().unwrap())));
    let c = Greenlet::with_parent(&p, |_| Ok(7));
    let out = c.switch(()).unwrap();
    assert_eq!(out.downcast::<String>().unwrap(), "parent got 7");
    assert!(c.is_dead() && p.is_dead());
}

// a panic is raised in the parent at its switch point

#[test]
fn panic_is_raised_in_parent_and_greenlet_is_dead() {
    let g = Greenlet::new(|_| -> Result<(), Error> { panic!("kaboom") });
    let caught = catch_unwind(AssertUnwindSafe(|| g.switch(()))).unwrap_err();
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"kaboom"));
    assert!(g.is_dead());
    // The thread is fine: more greenlets run.
    assert_eq!(int(Greenlet::new(|_| Ok(3)).switch(()).unwrap()), 3);
}

#[test]
fn panic_in_nested_greenlet_reaches_its_parent_greenlet() {
    let outer = Greenlet::new(|_| {
        let inner = Greenlet::new(|_| -> Result<(), Error> { panic!("inner") });
        let r = catch_unwind(AssertUnwindSafe(|| inner.switch(())));
        Ok(r.is_err())
    });
    assert!(outer.switch(()).unwrap().downcast::<bool>().unwrap());
}

#[test]
fn err_returned_by_f_is_raised_in_parent() {
    let g = Greenlet::new(|_| -> Result<(), Error> { Err(Error::custom("bad")) });
    let e = g.switch(()).unwrap_err();
    assert_eq!(e.to_string(), "bad");
    assert!(g.is_dead());
}

// throw

#[test]
fn throw_into_suspended_greenlet_fails_its_switch() {
    let main = getcurrent();
    let g = Greenlet::new(move |_| match main.switch(()) {
        Err(e) => Ok(format!("caught {e}")),
        Ok(_) => Ok("nothing".to_string()),
    });
    g.switch(()).unwrap();
    let out = g.throw(Error::custom("boom")).unwrap();
    assert_eq!(out.downcast::<String>().unwrap(), "caught boom");
}

#[test]
fn uncaught_throw_kills_and_propagates_to_parent() {
    let main = getcurrent();
    let guard_dropped = Rc::new(Cell::new(false));
    let flag = guard_dropped.clone();
    let g = Greenlet::new(move |_| {
        let _guard = DropFlag(flag);
        main.switch(())?; // the thrown error comes out of here and `?` returns it
        Ok(())
    });
    g.switch(()).unwrap();
    let e = g.throw(Error::custom("unhandled")).unwrap_err();
    assert_eq!(e.to_string(), "unhandled");
    assert!(g.is_dead());
    assert!(guard_dropped.get());
}

#[test]
fn throw_into_unstarted_greenlet_never_runs_it() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let g = Greenlet::new(move |_| {
        r.set(true);
        Ok(())
    });
    let e = g.throw(Error::custom("early")).unwrap_err();
    assert_eq!(e.to_string(), "early", "the error goes to the parent (us)");
    assert!(g.is_dead());
    assert!(!ran.get());
}

#[test]
fn throw_into_dead_greenlet_is_a_clear_error() {
    let g = Greenlet::new(|_| Ok(()));
    g.switch(()).unwrap();
    match g.throw(Error::custom("late")) {
        Err(Error::DeadGreenlet { id }) => assert_eq!(id, g.id()),
        other => panic!("expected DeadGreenlet, got {other:?}"),
    }
}

// set_parent refuses cycles

#[test]
fn set_parent_refuses_cycles_and_accepts_others() {
    let a = Greenlet::new(|_| Ok(()));
    let b = Greenlet::with_parent(&a, |_| Ok(()));
    let c = Greenlet::with_parent(&b, |_| Ok(()));
    assert!(matches!(a.set_parent(&c), Err(Error::CyclicParent { .. })));
    assert!(matches!(a.set_parent(&a), Err(Error::CyclicParent { .. })));
    let d = Greenlet::new(|_| Ok(()));
    c.set_parent(&d).unwrap();
    assert_eq!(c.parent().unwrap(), d);
    a.set_parent(&c).unwrap(); // no longer a cycle: c's chain is d -> main
}

#[test]
fn result_follows_a_new_parent() {
    let p = Greenlet::new(|v| Ok(format!("p got {}", v.downcast::<&str>().unwrap())));
    let g = Greenlet::new(|_| Ok("x"));
    g.set_parent(&p).unwrap();
    assert_eq!(
        g.switch(()).unwrap().downcast::<String>().unwrap(),
        "p got x"
    );
}

// switching to a dead greenlet

#[test]
fn switch_to_dead_greenlet_is_an_error() {
    let g = Greenlet::new(|_| Ok(1));
    g.switch(()).unwrap();
    assert!(matches!(g.switch(()), Err(Error::DeadGreenlet { id }) if id == g.id()));
    assert!(
        matches!(g.switch(()), Err(Error::DeadGreenlet { .. })),
        "and again"
    );
}

// dropping an unfinished greenlet unwinds it

#[test]
fn dropping_started_greenlet_unwinds_its_stack() {
    let main = getcurrent();
    let dropped = Rc::new(Cell::new(false));
    let after = Rc::new(Cell::new(false));
    let (d, a) = (dropped.clone(), after.clone());
    let g = Greenlet::new(move |_| {
        let _guard = DropFlag(d);
        main.switch(())?;
        a.set(true);
        Ok(())
    });
    g.switch(()).unwrap();
    assert!(!dropped.get());
    drop(g);
    assert!(
        dropped.get(),
        "the guard on the greenlet's stack was dropped"
    );
    assert!(!after.get(), "the greenlet did not resume normally");
}

#[test]
fn dropped_greenlet_returns_its_stack_to_the_pool() {
    let main = getcurrent();
    // Warm the pool, then check that a killed greenlet's stack is reused.
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let m = main.clone();
        let g = Greenlet::builder().stack_size(64 * 1024).build(move |_| {
            let local = 0_u8;
            m.switch(&local as *const u8 as usize)?;
            Ok(())
        });
        addrs.push(g.switch(()).unwrap().downcast::<usize>().unwrap());
        drop(g);
    }
    assert_eq!(addrs[1], addrs[2], "the same stack came back from the pool");
}

#[test]
fn dropping_unstarted_greenlet_frees_it_without_running() {
    let ran = Rc::new(Cell::new(false));
    let captured = Rc::new(Cell::new(false));
    let (r, c) = (ran.clone(), captured.clone());
    let guard = DropFlag(c);
    let g = Greenlet::new(move |_| {
        let _g = &guard;
        r.set(true);
        Ok(())
    });
    drop(g);
    assert!(!ran.get());
    assert!(
        captured.get(),
        "the closure (and what it captured) was dropped"
    );
}

#[test]
fn kill_unwinds_and_reports_killed() {
    let main = getcurrent();
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let g = Greenlet::new(move |_| -> Result<(), Error> {
        let _guard = DropFlag(d);
        loop {
            main.switch(())?;
        }
    });
    g.switch(()).unwrap();
    assert!(matches!(g.kill(), Err(Error::Killed)));
    assert!(g.is_dead() && dropped.get());
}

#[test]
fn panic_while_unwinding_on_drop_is_reported_not_silent() {
    // A greenlet that turns its kill into an ordinary panic: the drop survives.
    let main = getcurrent();
    let g = Greenlet::new(move |_| -> Result<(), Error> {
        let r = catch_unwind(AssertUnwindSafe(|| main.switch(())));
        assert!(r.is_err(), "the kill arrives as an unwind");
        panic!("refusing to die quietly");
    });
    g.switch(()).unwrap();
    drop(g); // prints a report; must not abort or propagate
}

#[test]
fn greenlet_that_ignores_its_kill_is_unwound_by_force() {
    let main = getcurrent();
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let g = Greenlet::new(move |_| {
        let _guard = DropFlag(d);
        // Swallow the kill, then switch back to the dropper alive.
        let _ = catch_unwind(AssertUnwindSafe(|| main.switch(())));
        main.switch(())?;
        Ok(())
    });
    g.switch(()).unwrap();
    drop(g);
    assert!(dropped.get());
}

// handles are !Send / !Sync (compile_fail doctests in runtime/greenlet/mod.rs);
//    another thread has its own main greenlet

#[test]
fn second_thread_has_its_own_main_greenlet() {
    let here = getcurrent().id();
    let there = std::thread::spawn(|| {
        let main = getcurrent();
        let g = Greenlet::new(|_| Ok(getcurrent().parent().unwrap().id()));
        let parent = g.switch(()).unwrap().downcast::<u64>().unwrap();
        (main.id(), main.is_main(), parent)
    })
    .join()
    .unwrap();
    assert_ne!(there.0, here);
    assert!(there.1);
    assert_eq!(there.2, there.0);
}

// settrace

#[test]
fn settrace_sees_every_switch_and_throw() {
    let log: Rc<RefCell<Vec<(TraceEvent, u64, u64)>>> = Rc::default();
    let sink = log.clone();
    let previous = settrace(Some(Box::new(move |ev, from, to| {
        sink.borrow_mut().push((ev, from.id(), to.id()));
    })));
    assert!(previous.is_none());
    let main = getcurrent();
    let m = main.clone();
    let g = Greenlet::new(move |_| {
        let _ = m.switch(());
        Ok(())
    });
    g.switch(()).unwrap(); // main -> g, g -> main
    g.throw(Error::custom("x")).unwrap(); // main -> g (throw), g returns Ok -> main
    let old = settrace(None);
    assert!(old.is_some(), "settrace returns the previous hook");
    let (m, g) = (main.id(), g.id());
    assert_eq!(
        *log.borrow(),
        [
            (TraceEvent::Switch, m, g),
            (TraceEvent::Switch, g, m),
            (TraceEvent::Throw, m, g),
            (TraceEvent::Switch, g, m),
        ]
    );
}

#[test]
fn panicking_trace_hook_is_removed_not_fatal() {
    settrace(Some(Box::new(|_, _, _| panic!("bad hook"))));
    let g = Greenlet::new(|_| Ok(5));
    assert_eq!(int(g.switch(()).unwrap()), 5);
    assert!(settrace(None).is_none(), "the panicking hook was removed");
}

#[test]
fn values_of_unit_do_not_allocate_and_types_are_checked() {
    let v = Value::new(());
    assert!(v.is_unit());
    assert_eq!(std::mem::size_of_val(v.downcast_ref::<()>().unwrap()), 0);
    let v = Value::new(3_u8);
    let v = v.downcast::<i32>().unwrap_err();
    assert_eq!(
        v.downcast::<u8>().unwrap(),
        3,
        "a failed downcast gives the value back"
    );
}

// Stack overflow ends the process with a message naming the greenlet, in both guard modes.

fn recurse(depth: u64) -> u64 {
    let buf = std::hint::black_box([depth as u8; 512]);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + u64::from(buf[7])
}

#[test]
fn stack_overflow_names_the_greenlet_and_aborts() {
    if std::env::var_os("GREENHUB_TEST_OVERFLOW_CHILD").is_some() {
        let g = Greenlet::builder()
            .name("deep-recursion")
            .stack_size(64 * 1024)
            .build(|_| Ok(recurse(0)));
        let _ = g.switch(());
        unreachable!("the recursion cannot return");
    }
    for mode in ["madvise", "mprotect"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "stack_overflow_names_the_greenlet_and_aborts",
                "--nocapture",
            ])
            .env("GREENHUB_TEST_OVERFLOW_CHILD", "1")
            .env("GREENHUB_STACK_GUARD", mode)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc_sigabrt()),
            "{mode}: {stderr}"
        );
        assert!(
            stderr.contains("greenhub: stack overflow in greenlet #")
                && stderr.contains("\"deep-recursion\" (stack size 64 KiB)"),
            "{mode}: {stderr}"
        );
    }
}

fn libc_sigabrt() -> i32 {
    6 // SIGABRT on Linux
}
