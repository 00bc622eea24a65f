//! Killing and throwing: kills that land in destructors, in unwinding greenlets, in the
//! trace hook and in greenlets that never started, and what a killed greenlet leaves.
//!
//! The tests that used to abort or hang the process run their body in a child process
//! (`isolated`), so that such a regression fails one test instead of the whole run.

mod common;

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{OnDrop, record_trace};
use greenhub::{Error, Greenlet, GreenletExit, TraceEvent, getcurrent, settrace, spawn};

/// How a switch ended, in a form tests can compare.
fn outcome(r: &Result<greenhub::Value, Error>) -> String {
    match r {
        Ok(_) => "Ok".to_string(),
        Err(e) => format!("Err({e:?})"),
    }
}

/// Runs `body` in a child process (this test binary, running only test `name`) and
/// returns the child's stderr; fails if the child aborts, fails, or runs for a minute.
/// In the child itself it runs `body` and returns `None`.
fn isolated(name: &str, body: impl FnOnce()) -> Option<String> {
    const CHILD: &str = "GREENHUB_ISOLATED_TEST";
    if std::env::var(CHILD).as_deref() == Ok(name) {
        body();
        return None;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().unwrap();
    match status {
        None => panic!("{name}: still running after 60 s (a hang); stderr:\n{stderr}"),
        Some(s) => assert!(s.success(), "{name}: child {s}; stderr:\n{stderr}"),
    }
    Some(stderr)
}

#[test]
fn dropping_a_greenlet_suspended_in_a_destructor_during_its_unwinding_kills_it() {
    let name = "dropping_a_greenlet_suspended_in_a_destructor_during_its_unwinding_kills_it";
    isolated(name, || {
        let main = getcurrent();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = seen.clone();
        let g = Greenlet::new(move |_| -> Result<(), Error> {
            let _guard = OnDrop(move || {
                let r = main.switch(());
                log.borrow_mut().push(outcome(&r));
            });
            panic!("boom");
        });
        g.switch(()).unwrap(); // g is suspended inside _guard's drop, mid-unwind
        assert!(g.is_active());
        drop(g);
        // The kill reached the destructor as an error (it could not unwind from there),
        // and g finished its unwinding and died.
        assert_eq!(*seen.borrow(), ["Err(greenlet was killed)"]);
        assert!(!std::thread::panicking());
        assert_eq!(
            Greenlet::new(|_| Ok(1))
                .switch(())
                .unwrap()
                .downcast::<i32>()
                .unwrap(),
            1
        );
    });
}

#[test]
fn killing_a_greenlet_suspended_in_a_destructor_during_its_unwinding_reports_killed() {
    let name = "killing_a_greenlet_suspended_in_a_destructor_during_its_unwinding_reports_killed";
    isolated(name, || {
        let main = getcurrent();
        let g = Greenlet::new(move |_| -> Result<(), Error> {
            let _guard = OnDrop(move || {
                let _ = main.switch(());
            });
            panic!("boom");
        });
        g.switch(()).unwrap();
        // The kill supersedes the panic g was unwinding from, as GreenletExit raised in a
        // `finally:` does in Python.
        assert!(matches!(g.kill(), Err(Error::Killed)));
        assert!(g.is_dead());
        assert!(!std::thread::panicking());
    });
}

#[test]
fn a_destructor_switching_during_the_forced_unwind_gets_killed_instead_of_aborting() {
    let name = "a_destructor_switching_during_the_forced_unwind_gets_killed_instead_of_aborting";
    isolated(name, || {
        let main = getcurrent();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = seen.clone();
        let (m1, m2) = (main.clone(), main);
        let g = Greenlet::new(move |_| {
            let _guard = OnDrop(move || {
                let r = m1.switch(());
                log.borrow_mut().push(outcome(&r));
            });
            // Swallow the first kill and come back alive: the drop kills it by force.
            let _ = catch_unwind(AssertUnwindSafe(|| m2.switch(())));
            m2.switch(())?;
            Ok(())
        });
        g.switch(()).unwrap();
        drop(g);
        assert_eq!(*seen.borrow(), ["Err(greenlet was killed)"]);
    });
}

#[test]
fn a_destructor_that_keeps_switching_while_unwinding_is_given_up_not_spun() {
    let name = "a_destructor_that_keeps_switching_while_unwinding_is_given_up_not_spun";
    let stderr = isolated(name, || {
        let main = getcurrent();
        let tries = Rc::new(Cell::new(0_u64));
        let t = tries.clone();
        let g = Greenlet::new(move |_| -> Result<(), Error> {
            let _guard = OnDrop(move || {
                loop {
                    if main.switch(()).is_err() {
                        t.set(t.get() + 1);
                    }
                }
            });
            panic!("boom");
        });
        g.switch(()).unwrap();
        g.switch(()).unwrap(); // it keeps coming back: still suspended in its destructor
        drop(g); // returns: the greenlet is given up after a bounded number of switches
        assert!(tries.get() >= 1 && tries.get() <= 10_000, "{}", tries.get());
        assert_eq!(
            Greenlet::new(|_| Ok(2))
                .switch(())
                .unwrap()
                .downcast::<i32>()
                .unwrap(),
            2
        );
    });
    if let Some(stderr) = stderr {
        assert!(stderr.contains("its stack is leaked"), "{stderr}");
    }
}

#[test]
fn dropping_a_greenlet_that_catches_every_kill_returns_and_leaks_its_stack() {
    let name = "dropping_a_greenlet_that_catches_every_kill_returns_and_leaks_its_stack";
    let stderr = isolated(name, || {
        let main = getcurrent();
        let rounds = Rc::new(Cell::new(0_u32));
        let r = rounds.clone();
        let g = Greenlet::new(move |_| -> Result<(), Error> {
            loop {
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    r.set(r.get() + 1);
                    main.switch(())
                }));
            }
        });
        g.switch(()).unwrap();
        drop(g); // the kill and the forced kill are both caught: it is given up
        // The loop ran once per kill (the first round is the start), not forever.
        assert_eq!(rounds.get(), 3);
        // The thread goes on switching.
        assert_eq!(
            Greenlet::new(|_| Ok(3))
                .switch(())
                .unwrap()
                .downcast::<i32>()
                .unwrap(),
            3
        );
    });
    if let Some(stderr) = stderr {
        assert!(stderr.contains("survived a kill"), "{stderr}");
        assert!(stderr.contains("its stack is leaked"), "{stderr}");
    }
}

/// A greenlet suspended in its body whose `Drop` guard reads `child.parent()` (the child
/// from `slot`) while the greenlet is being killed.
fn parent_reading_its_child(
    main: Greenlet,
    slot: Rc<RefCell<Option<Greenlet>>>,
    log: Rc<RefCell<Vec<&'static str>>>,
) -> Greenlet {
    Greenlet::new(move |_| {
        let _guard = OnDrop(move || {
            let child = slot.borrow().clone().expect("the child is in the slot");
            let _ = child.parent(); // would abort if the child's parent field were borrowed
            log.borrow_mut().push("parent unwound");
        });
        main.switch(())?;
        Ok(())
    })
}

#[test]
fn set_parent_drops_the_old_parent_after_releasing_the_parent_field() {
    let name = "set_parent_drops_the_old_parent_after_releasing_the_parent_field";
    isolated(name, || {
        let main = getcurrent();
        let slot = Rc::new(RefCell::new(None));
        let log = Rc::new(RefCell::new(Vec::new()));
        let p = parent_reading_its_child(main.clone(), slot.clone(), log.clone());
        p.switch(()).unwrap();
        let c = Greenlet::with_parent(&p, |_| Ok(()));
        *slot.borrow_mut() = Some(c.clone());
        drop(p); // c's parent field now holds p's last handle
        c.set_parent(&main).unwrap(); // drops p: it is killed and reads c.parent()
        assert_eq!(*log.borrow(), ["parent unwound"]);
        assert_eq!(c.parent().unwrap(), main);
    });
}

#[test]
fn dropping_a_child_kills_it_before_the_parent_it_held_last() {
    let main = getcurrent();
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l1, l2) = (log.clone(), log.clone());
    let m = main.clone();
    let p = Greenlet::new(move |_| {
        let _guard = OnDrop(move || l1.borrow_mut().push("parent"));
        m.switch(())?;
        Ok(())
    });
    p.switch(()).unwrap();
    let c = Greenlet::with_parent(&p, move |_| {
        let _guard = OnDrop(move || l2.borrow_mut().push("child"));
        main.switch(())?;
        Ok(())
    });
    c.switch(()).unwrap();
    drop(p); // c holds p's last handle
    drop(c); // c is killed while its parent is the dropper, then p with c's record
    assert_eq!(*log.borrow(), ["child", "parent"]);
}

#[test]
fn killing_an_unstarted_greenlet_returns_killed_to_its_parent_which_carries_on() {
    let p = Greenlet::new(|_| {
        let c = Greenlet::new(|_| -> Result<(), Error> { unreachable!("c never runs") });
        let r = c.kill();
        Ok((outcome(&r), c.is_dead(), "p carried on"))
    });
    let out = p
        .switch(())
        .unwrap()
        .downcast::<(String, bool, &str)>()
        .unwrap();
    assert_eq!(
        out,
        ("Err(greenlet was killed)".to_string(), true, "p carried on")
    );
}

#[test]
fn killing_an_unstarted_child_of_a_suspended_greenlet_resumes_the_parent_with_killed() {
    let main = getcurrent();
    let slot = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let p = Greenlet::new(move |_| {
        *s.borrow_mut() = Some(Greenlet::new(|_| -> Result<(), Error> {
            unreachable!("c never runs")
        }));
        let r = main.switch(());
        Ok(format!("p resumed with {}", outcome(&r)))
    });
    p.switch(()).unwrap();
    let c = slot.borrow_mut().take().unwrap();
    // c dies; its death resumes p, which finishes, and p's result comes to us.
    let out = c.kill().unwrap().downcast::<String>().unwrap();
    assert_eq!(out, "p resumed with Err(greenlet was killed)");
    assert!(c.is_dead() && p.is_dead());
}

#[test]
fn a_spawned_greenlet_killing_an_unstarted_one_is_not_killed_itself() {
    let slot = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let killer = spawn(move || {
        let victim: greenhub::JoinHandle<()> = s.borrow_mut().take().unwrap();
        victim.kill();
        (
            matches!(victim.join(), Err(Error::Killed)),
            "the killer carried on",
        )
    });
    *slot.borrow_mut() = Some(spawn(|| unreachable!("the victim never runs")));
    assert_eq!(killer.join().unwrap(), (true, "the killer carried on"));
}

#[test]
fn killing_a_greenlet_suspended_inside_the_trace_hook_unwinds_it() {
    let main = getcurrent();
    let after = Rc::new(Cell::new(false));
    let unwound = Rc::new(Cell::new(false));
    let (a, u) = (after.clone(), unwound.clone());
    let m = main.clone();
    let x = Greenlet::new(move |_| {
        let _guard = OnDrop(move || u.set(true));
        m.switch(())?;
        a.set(true); // must not run: x is killed before this switch returns
        Ok(())
    });
    x.switch(()).unwrap();
    let target = x.clone();
    let once = Rc::new(Cell::new(true));
    let hook_calls = Rc::new(Cell::new(0));
    let calls = hook_calls.clone();
    settrace(Some(Box::new(move |_, _, to| {
        calls.set(calls.get() + 1);
        if *to == target && once.replace(false) {
            let _ = main.switch(()); // x suspends inside its hook call
        }
    })));
    x.switch(()).unwrap(); // the hook runs in x and switches back here
    let r = x.kill();
    let hook = settrace(None);
    assert!(matches!(r, Err(Error::Killed)), "{r:?}");
    assert!(x.is_dead() && unwound.get() && !after.get());
    assert!(
        hook.is_some(),
        "the hook was not removed: the kill was not its failure"
    );
    assert!(hook_calls.get() >= 2);
}

#[test]
fn a_throw_into_an_unstarted_greenlet_is_traced_into_it_then_to_its_parent() {
    let main = getcurrent().id();
    let g = Greenlet::new(|_| Ok(()));
    let log = record_trace();
    let e = g.throw(Error::custom("x")).unwrap_err();
    settrace(None);
    assert_eq!(e.to_string(), "x");
    let g = g.id();
    assert_eq!(
        *log.borrow(),
        [(TraceEvent::Throw, main, g), (TraceEvent::Throw, g, main)]
    );
}

#[test]
fn a_kill_of_an_unstarted_greenlet_is_traced_as_a_throw_then_a_switch_to_its_parent() {
    let main = getcurrent().id();
    let g = Greenlet::new(|_| Ok(()));
    let log = record_trace();
    assert!(matches!(g.kill(), Err(Error::Killed)));
    settrace(None);
    let g = g.id();
    assert_eq!(
        *log.borrow(),
        [(TraceEvent::Throw, main, g), (TraceEvent::Switch, g, main)]
    );
}

#[test]
fn a_throw_into_an_unstarted_child_of_a_suspended_greenlet_is_traced_as_python_does() {
    let main = getcurrent();
    let slot = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let m = main.clone();
    let p = Greenlet::new(move |_| {
        *s.borrow_mut() = Some(Greenlet::new(|_| Ok(())));
        match m.switch(()) {
            Err(e) => Ok(format!("p got {e}")),
            Ok(_) => Ok("p got nothing".to_string()),
        }
    });
    p.switch(()).unwrap();
    let c = slot.borrow_mut().take().unwrap();
    let log = record_trace();
    let out = c
        .throw(Error::custom("v"))
        .unwrap()
        .downcast::<String>()
        .unwrap();
    settrace(None);
    assert_eq!(out, "p got v");
    let (m, p, c) = (main.id(), p.id(), c.id());
    assert_eq!(
        *log.borrow(),
        [
            (TraceEvent::Throw, m, c),
            (TraceEvent::Throw, c, p),
            (TraceEvent::Switch, p, m),
        ]
    );
}

#[test]
fn a_killed_greenlet_passes_its_death_to_its_parent_as_a_switch() {
    let main = getcurrent();
    let m = main.clone();
    let g = Greenlet::new(move |_| {
        m.switch(())?;
        Ok(())
    });
    g.switch(()).unwrap();
    let log = record_trace();
    assert!(matches!(g.kill(), Err(Error::Killed)));
    settrace(None);
    let (m, g) = (main.id(), g.id());
    assert_eq!(
        *log.borrow(),
        [(TraceEvent::Throw, m, g), (TraceEvent::Switch, g, m)]
    );
}

#[test]
fn a_greenlet_killed_on_drop_has_the_dropper_as_parent_then_its_own_again() {
    // Python's test_parent_restored_on_kill.
    let main = getcurrent();
    let hub = Greenlet::new(|_| Ok(()));
    let result = Rc::new(RefCell::new(Vec::new()));
    let (r, h, m) = (result.clone(), hub.clone(), main.clone());
    let g = Greenlet::with_parent(&hub, move |_| {
        match catch_unwind(AssertUnwindSafe(|| m.switch(()))) {
            Err(p) if p.is::<GreenletExit>() => {
                // Resurrect and switch to the parent.
                let me = getcurrent();
                r.borrow_mut().push(me.parent().unwrap());
                r.borrow_mut().push(me);
                h.switch(())?;
            }
            _ => unreachable!("only the kill comes here"),
        }
        Ok(())
    });
    g.switch(()).unwrap();
    drop(g); // kills it: it catches the kill, keeps a handle to itself and lives on
    let result = std::mem::take(&mut *result.borrow_mut());
    assert_eq!(result.len(), 2);
    assert_eq!(
        result[0], main,
        "while being killed, its parent is the dropper"
    );
    assert_eq!(
        result[1].parent().unwrap(),
        hub,
        "then its own parent again"
    );
    assert!(
        result[1].is_active(),
        "resurrected greenlets are not killed by force"
    );
}
