//! Python greenlet's own test suite (test_greenlet.py, test_throw.py, test_tracing.py,
//! test_generator.py, test_generator_nested.py, test_greenlet_trash.py, test_gc.py),
//! ported to greenhub: each test is named after the behaviour its Python original pins
//! (the original's name is in its doc comment). Python tests about Python itself
//! (frames, `__getattribute__`, refcounts, subclasses, argument passing, cross-thread
//! switches that `!Send` rules out at compile time) have no counterpart here.

mod common;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::rc::Rc;

use common::{DropFlag, OnDrop, Trace, record_trace};
use greenhub::{Error, Greenlet, GreenletExit, TraceEvent, Value, getcurrent, settrace};

type Log<T> = Rc<RefCell<Vec<T>>>;

fn log<T>() -> Log<T> {
    Rc::default()
}

/// `greenlet.getcurrent().parent.switch(v)`. (Written as one expression in Rust, the
/// temporary `getcurrent()` handle would live across the switch: a reference cycle.)
fn to_parent<T: Any>(v: T) -> Result<Value, Error> {
    let parent = getcurrent().parent().expect("not the main greenlet");
    parent.switch(v)
}

fn some_error() -> Error {
    Error::custom("SomeError")
}

// ---------------------------------------------------------------------------
// test_greenlet.py
// ---------------------------------------------------------------------------

fn simple(lst: &Log<i32>) {
    let l = lst.clone();
    let g = Greenlet::new(move |_| {
        l.borrow_mut().push(1);
        to_parent(())?;
        l.borrow_mut().push(3);
        Ok(())
    });
    lst.borrow_mut().push(0);
    g.switch(()).unwrap();
    lst.borrow_mut().push(2);
    g.switch(()).unwrap();
    lst.borrow_mut().push(4);
}

/// test_simple
#[test]
fn switching_back_and_forth_interleaves_in_order() {
    let lst = log();
    simple(&lst);
    assert_eq!(*lst.borrow(), [0, 1, 2, 3, 4]);
}

/// test_two_children
#[test]
fn two_children_of_main_run_independently() {
    let lst = log();
    let body = |l: Log<i32>| {
        move |_| {
            l.borrow_mut().push(1);
            to_parent(())?;
            l.borrow_mut().extend([1, 1]);
            Ok(())
        }
    };
    let g = Greenlet::new(body(lst.clone()));
    let h = Greenlet::new(body(lst.clone()));
    g.switch(()).unwrap();
    assert_eq!(lst.borrow().len(), 1);
    h.switch(()).unwrap();
    assert_eq!(lst.borrow().len(), 2);
    h.switch(()).unwrap();
    assert_eq!(lst.borrow().len(), 4);
    assert!(h.is_dead());
    g.switch(()).unwrap();
    assert_eq!(lst.borrow().len(), 6);
    assert!(g.is_dead());
}

/// test_two_recursive_children
#[test]
fn a_child_of_a_child_returns_to_its_parent() {
    let lst = log();
    let l = lst.clone();
    let g = Greenlet::new(move |_| {
        l.borrow_mut().push('a');
        let l2 = l.clone();
        let f = Greenlet::new(move |_| {
            l2.borrow_mut().push('b');
            to_parent(())?;
            Ok(())
        });
        f.switch(())?;
        l.borrow_mut().push('c');
        Ok(())
    });
    g.switch(()).unwrap();
    assert_eq!(*lst.borrow(), ['a', 'b', 'c']);
}

/// test_threads
#[test]
fn each_of_ten_threads_switches_its_own_greenlets() {
    let threads: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(|| {
                let lst = log();
                simple(&lst);
                lst.borrow().clone()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), [0, 1, 2, 3, 4]);
    }
}

/// Python's `fmain`: waits at its parent; whatever is raised there is recorded and
/// raised on; a plain switch back makes it fail with SomeError.
fn fmain(seen: Log<String>) -> impl FnOnce(Value) -> Result<(), Error> {
    move |_| match catch_unwind(AssertUnwindSafe(|| to_parent(()))) {
        Ok(Ok(_)) => Err(some_error()),
        Ok(Err(e)) => {
            seen.borrow_mut().push(e.to_string());
            Err(e)
        }
        Err(p) => {
            let what = if p.is::<GreenletExit>() {
                "GreenletExit"
            } else {
                "panic"
            };
            seen.borrow_mut().push(what.to_string());
            resume_unwind(p)
        }
    }
}

/// test_exception
#[test]
fn an_error_goes_to_the_new_parent_which_raises_it_on() {
    let seen = log();
    let g1 = Greenlet::new(fmain(seen.clone()));
    let g2 = Greenlet::new(fmain(seen.clone()));
    g1.switch(()).unwrap();
    g2.switch(()).unwrap();
    g2.set_parent(&g1).unwrap();
    assert!(seen.borrow().is_empty());
    // g2 fails with SomeError; it is raised in g1, which records it and fails with it too.
    let e = g2.switch(()).unwrap_err();
    assert_eq!(e.to_string(), "SomeError");
    assert_eq!(*seen.borrow(), ["SomeError"]);
    assert!(g1.is_dead() && g2.is_dead());
    // Python switches on to the dead greenlet's parent here; greenhub refuses.
    assert!(matches!(g2.switch(()), Err(Error::DeadGreenlet { .. })));
}

/// test_send_exception
#[test]
fn an_error_sent_by_a_dying_child_is_raised_in_its_parent() {
    let seen = log();
    let g1 = Greenlet::new(fmain(seen.clone()));
    g1.switch(()).unwrap();
    // send_exception: a child of g1 that fails at once.
    let crasher = Greenlet::with_parent(&g1, |_| -> Result<(), Error> {
        Err(Error::custom("KeyError"))
    });
    let e = crasher.switch(()).unwrap_err();
    assert_eq!(e.to_string(), "KeyError");
    assert_eq!(*seen.borrow(), ["KeyError"]);
}

/// test_dealloc
#[test]
fn dropping_suspended_greenlets_raises_greenlet_exit_in_each() {
    let seen = log();
    let g1 = Greenlet::new(fmain(seen.clone()));
    let g2 = Greenlet::new(fmain(seen.clone()));
    g1.switch(()).unwrap();
    g2.switch(()).unwrap();
    assert!(seen.borrow().is_empty());
    drop(g1);
    assert_eq!(*seen.borrow(), ["GreenletExit"]);
    drop(g2);
    assert_eq!(*seen.borrow(), ["GreenletExit", "GreenletExit"]);
}

/// test_dealloc_catches_GreenletExit_throws_other
#[test]
fn a_greenlet_turning_its_kill_on_drop_into_a_panic_does_not_fail_the_dropper() {
    let g = Greenlet::new(|_| -> Result<(), Error> {
        match catch_unwind(AssertUnwindSafe(|| to_parent(()))) {
            Err(p) if p.is::<GreenletExit>() => panic!("SomeError"),
            _ => Ok(()),
        }
    });
    g.switch(()).unwrap();
    drop(g); // reported on stderr (Python: sys.unraisablehook), not raised here
    assert!(!std::thread::panicking());
}

/// test_frame (the part that applies: a suspended greenlet is active, a finished one not)
#[test]
fn a_greenlet_is_active_until_it_returns_its_result() {
    let g = Greenlet::new(|_| {
        to_parent("frame")?;
        Ok("meaning of life")
    });
    assert_eq!(g.switch(()).unwrap().downcast::<&str>().unwrap(), "frame");
    assert!(g.is_active());
    let from_g = g.switch(()).unwrap();
    assert!(!g.is_active());
    assert_eq!(from_g.downcast::<&str>().unwrap(), "meaning of life");
}

/// test_thread_bug
#[test]
fn greenlets_blocking_their_threads_do_not_disturb_each_other() {
    let runner = |ms| {
        std::thread::spawn(move || {
            let g = Greenlet::new(move |_| {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(())
            });
            g.switch(()).unwrap();
            g.is_dead()
        })
    };
    let (t1, t2) = (runner(20), runner(30));
    assert!(t1.join().unwrap() && t2.join().unwrap());
}

/// test_switch_kwargs (several arguments travel as one tuple value)
#[test]
fn the_first_switch_passes_its_value_to_the_function() {
    let g = Greenlet::new(|v| {
        let (a, b) = v.downcast::<(i32, i32)>().unwrap();
        assert_eq!((a, b), (4, 2));
        Ok(42)
    });
    assert_eq!(g.switch((4, 2)).unwrap().downcast::<i32>().unwrap(), 42);
}

/// test_switch_kwargs_to_parent
#[test]
fn values_switched_to_the_parent_arrive_whole() {
    let g = Greenlet::new(|v| {
        let x = v.downcast::<i32>().unwrap();
        to_parent(("x", x))?;
        to_parent(((2,), ("x", 3)))?;
        Ok((x, x * x))
    });
    assert_eq!(
        g.switch(3).unwrap().downcast::<(&str, i32)>().unwrap(),
        ("x", 3)
    );
    type Args = ((i32,), (&'static str, i32));
    assert_eq!(
        g.switch(()).unwrap().downcast::<Args>().unwrap(),
        ((2,), ("x", 3))
    );
    assert_eq!(
        g.switch(()).unwrap().downcast::<(i32, i32)>().unwrap(),
        (3, 9)
    );
}

/// test_dealloc_switch_args_not_lost
#[test]
fn a_value_switched_by_a_greenlet_dropped_meanwhile_is_not_lost() {
    let seen: Log<Greenlet> = log();
    let worker_slot = Rc::new(RefCell::new(None::<Greenlet>));
    let initiator_slot = Rc::new(RefCell::new(None::<Greenlet>));
    let (s, ws, is) = (seen.clone(), worker_slot.clone(), initiator_slot.clone());
    let worker = Greenlet::new(move |_| {
        let value = to_parent(())?; // wait for the value
        drop(ws.borrow_mut().take()); // drop every handle to ourselves...
        let initiator = is.borrow().clone().unwrap();
        initiator.set_parent(&getcurrent().parent().unwrap())?; // ...including this one
        drop(initiator);
        // Switching to main with the value: our last handle is dropped on the way, and
        // the kill lands here, after the value went on.
        let _finally = OnDrop(move || s.borrow_mut().push(getcurrent()));
        to_parent(value)?;
        Ok(())
    });
    *worker_slot.borrow_mut() = Some(worker.clone());
    worker.switch(()).unwrap(); // prime the worker
    let initiator = Greenlet::with_parent(&worker, |_| Ok(42));
    *initiator_slot.borrow_mut() = Some(initiator.clone());
    drop(worker);
    let value = initiator.switch(()).unwrap();
    assert_eq!(seen.borrow().len(), 1, "the worker was killed");
    assert_eq!(value.downcast::<i32>().unwrap(), 42);
    assert!(seen.borrow()[0].is_dead());
}

/// test_issue_245_reference_counting_subclass_no_threads
#[test]
fn killed_greenlets_that_keep_a_handle_to_themselves_are_freed_with_it() {
    let glets: Log<Greenlet> = log();
    for _ in 0..10 {
        let g = glets.clone();
        Greenlet::new(move |_| {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| to_parent(()))) {
                assert!(p.is::<GreenletExit>());
                g.borrow_mut().push(getcurrent());
            }
            Ok(())
        })
        .switch(())
        .unwrap();
    }
    assert_eq!(glets.borrow().len(), 10);
    assert!(glets.borrow().iter().all(Greenlet::is_dead));
    glets.borrow_mut().clear();
}

/// test_falling_off_end_switches_to_unstarted_parent_works
#[test]
fn a_child_falling_off_its_end_starts_its_unstarted_parent() {
    let parent_never_started = Greenlet::new(|x| Ok((x.downcast::<i32>().unwrap(), 24)));
    let child = Greenlet::with_parent(&parent_never_started, |_| Ok(42));
    let result = child.switch(()).unwrap();
    assert_eq!(result.downcast::<(i32, i32)>().unwrap(), (42, 24));
}

/// test_switch_to_dead_greenlet_reparent (greenhub's rule differs: a dead greenlet is
/// never switched to, whatever its parent)
#[test]
fn switching_to_a_dead_greenlet_is_an_error_even_with_a_new_parent() {
    let seen = log();
    let (s1, s2) = (seen.clone(), seen.clone());
    let parent_never_started = Greenlet::new(move |_| {
        s1.borrow_mut().push(24);
        Ok(())
    });
    let child = Greenlet::new(move |_| {
        s2.borrow_mut().push(42);
        Ok(())
    });
    child.switch(()).unwrap();
    assert_eq!(*seen.borrow(), [42]);
    child.set_parent(&parent_never_started).unwrap();
    assert!(matches!(child.switch(()), Err(Error::DeadGreenlet { .. })));
    assert_eq!(*seen.borrow(), [42], "the parent did not start");
}

/// test_get_stack_with_nested_c_calls (through Rust calls instead of C ones)
#[test]
fn a_greenlet_suspended_deep_in_recursion_resumes_every_frame() {
    fn recurse(v: u64) -> Result<u64, Error> {
        if v > 0 {
            return Ok(v * std::hint::black_box(recurse(v - 1))?);
        }
        Ok(to_parent(())?.downcast::<u64>().unwrap())
    }
    let gr = Greenlet::new(|v| recurse(v.downcast::<u64>().unwrap()));
    gr.switch(5_u64).unwrap();
    assert_eq!(gr.switch(10_u64).unwrap().downcast::<u64>().unwrap(), 1200); // 5! * 10
}

/// test_switching_holding_critical_section_no_crash
#[test]
fn greenlets_switch_from_inside_closures_called_by_std() {
    let slots: Rc<RefCell<Vec<Greenlet>>> = Rc::default();
    let (s1, s2) = (slots.clone(), slots.clone());
    let g1 = Greenlet::new(move |_| {
        let g2 = s1.borrow()[1].clone();
        let mut v = vec![0, 1];
        v.sort_by_key(|x| {
            g2.switch(()).unwrap(); // into g2 while in g1's sort
            *x
        });
        g2.switch(())?;
        Ok(v)
    });
    let g2 = Greenlet::new(move |_| {
        let g1 = s2.borrow()[0].clone();
        let mut v = vec![1, 0];
        v.sort_by_key(|x| {
            g1.switch(()).unwrap(); // back into g1 while in g2's sort
            *x
        });
        Ok(v)
    });
    slots.borrow_mut().extend([g1.clone(), g2.clone()]);
    let out = g1.switch(()).unwrap();
    slots.borrow_mut().clear();
    // Whichever finished last sent its result here; both sorted.
    let v = out.downcast::<Vec<i32>>().unwrap();
    assert_eq!(v, [0, 1]);
    assert!(g1.is_dead() || g2.is_dead());
}

// TestGreenletSetParentErrors

/// test_main_greenlet_parent_is_none
#[test]
fn the_main_greenlet_has_no_parent() {
    assert!(getcurrent().is_main());
    assert!(getcurrent().parent().is_none());
}

/// test_trivial_cycle
#[test]
fn a_greenlet_cannot_be_its_own_parent() {
    let g = Greenlet::new(|_| Ok(()));
    assert!(matches!(g.set_parent(&g), Err(Error::CyclicParent { .. })));
}

/// test_trivial_cycle_main
#[test]
fn the_main_greenlet_cannot_get_a_parent() {
    let main = getcurrent();
    assert!(matches!(
        main.set_parent(&main),
        Err(Error::MainGreenletParent)
    ));
}

/// test_deeper_cycle
#[test]
fn a_parent_chain_cannot_loop() {
    let g1 = Greenlet::new(|_| Ok(()));
    let g2 = Greenlet::new(|_| Ok(()));
    let g3 = Greenlet::new(|_| Ok(()));
    g1.set_parent(&g2).unwrap();
    g2.set_parent(&g3).unwrap();
    let e = g3.set_parent(&g1).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "making greenlet #{} the parent of greenlet #{} would create a cycle",
            g1.id(),
            g3.id()
        )
    );
}

// TestRepr

/// test_main_while_running, test_main_in_background, test_initial, test_dead
#[test]
fn debug_shows_where_a_greenlet_is_in_its_life() {
    let main = getcurrent();
    assert!(format!("{main:?}").ends_with("name: Some(\"main\"), state: Running }"));
    let m = main.clone();
    let g = Greenlet::new(move |_| Ok(format!("{m:?}")));
    assert!(format!("{g:?}").contains("state: Unstarted"));
    let seen_from_g = g.switch(()).unwrap().downcast::<String>().unwrap();
    assert!(seen_from_g.contains("state: Resuming"), "{seen_from_g}");
    assert!(format!("{g:?}").contains("state: Dead"));
}

// ---------------------------------------------------------------------------
// test_throw.py
// ---------------------------------------------------------------------------

/// test_class, test_val
#[test]
fn a_thrown_error_is_caught_at_the_switch_point() {
    let f = |_| {
        match to_parent("ok") {
            Err(e) if e.to_string() == "ciao" => {
                to_parent("ok")?;
                return Ok(());
            }
            _ => {}
        }
        to_parent("fail")?;
        Ok(())
    };
    let g = Greenlet::new(f);
    assert_eq!(g.switch(()).unwrap().downcast::<&str>().unwrap(), "ok");
    let res = g.throw(Error::custom("ciao")).unwrap();
    assert_eq!(res.downcast::<&str>().unwrap(), "ok");
}

/// test_kill
#[test]
fn a_kill_ends_a_suspended_greenlet_and_its_death_comes_back() {
    let g = Greenlet::new(|_| {
        to_parent("ok")?;
        to_parent("fail")?;
        Ok(())
    });
    assert_eq!(g.switch(()).unwrap().downcast::<&str>().unwrap(), "ok");
    // Python returns the GreenletExit; greenhub returns the death as Err(Killed).
    assert!(matches!(g.kill(), Err(Error::Killed)));
    assert!(g.is_dead());
    // Python: "immediately eaten by the already-dead greenlet"; greenhub: a clear error.
    assert!(matches!(g.kill(), Err(Error::DeadGreenlet { .. })));
}

/// test_throw_goes_to_original_parent
#[test]
fn a_throw_goes_to_the_original_parent() {
    let main = getcurrent();
    let f1 = |main: Greenlet| {
        move |_| match main.switch("f1 ready to catch") {
            Err(e) if e.to_string() == "IndexError" => Ok("caught"),
            Err(e) => Err(e),
            Ok(_) => Ok("normal exit"),
        }
    };
    let f2 = |main: Greenlet| {
        move |_| {
            main.switch("from f2")?;
            Ok("")
        }
    };
    let index_error = || Error::custom("IndexError");

    // Thrown into an unstarted child of an unstarted parent: both die.
    let g1 = Greenlet::new(f1(main.clone()));
    let g2 = Greenlet::with_parent(&g1, f2(main.clone()));
    assert_eq!(
        g2.throw(index_error()).unwrap_err().to_string(),
        "IndexError"
    );
    assert!(g2.is_dead() && g1.is_dead());

    // Thrown into an unstarted child: the started parent catches it.
    let g1 = Greenlet::new(f1(main.clone()));
    let g2 = Greenlet::with_parent(&g1, f2(main.clone()));
    let res = g1.switch(()).unwrap();
    assert_eq!(res.downcast::<&str>().unwrap(), "f1 ready to catch");
    let res = g2.throw(index_error()).unwrap();
    assert_eq!(res.downcast::<&str>().unwrap(), "caught");
    assert!(g2.is_dead() && g1.is_dead());

    // Thrown into a started child suspended in main: it dies, and the parent catches it.
    let g1 = Greenlet::new(f1(main.clone()));
    let g2 = Greenlet::with_parent(&g1, f2(main.clone()));
    assert_eq!(
        g1.switch(()).unwrap().downcast::<&str>().unwrap(),
        "f1 ready to catch"
    );
    assert_eq!(
        g2.switch(()).unwrap().downcast::<&str>().unwrap(),
        "from f2"
    );
    let res = g2.throw(index_error()).unwrap();
    assert_eq!(res.downcast::<&str>().unwrap(), "caught");
    assert!(g2.is_dead() && g1.is_dead());
}

// ---------------------------------------------------------------------------
// test_tracing.py and the scripts that switch inside the trace function
// ---------------------------------------------------------------------------

/// test_a_greenlet_tracing
#[test]
fn the_trace_hook_sees_switches_and_a_failed_greenlet_throwing_to_its_parent() {
    let main = getcurrent().id();
    let actions = record_trace();
    let g1 = Greenlet::new(|_| Ok(()));
    g1.switch(()).unwrap();
    let g2 = Greenlet::new(|_| -> Result<(), Error> { Err(some_error()) });
    assert!(g2.switch(()).is_err());
    settrace(None);
    let (g1, g2) = (g1.id(), g2.id());
    assert_eq!(
        *actions.borrow(),
        [
            (TraceEvent::Switch, main, g1),
            (TraceEvent::Switch, g1, main),
            (TraceEvent::Switch, main, g2),
            (TraceEvent::Throw, g2, main),
        ]
    );
}

/// test_b_exception_disables_tracing (greenhub does not fail the switch: the panic
/// stays in the hook, which is removed)
#[test]
fn a_panicking_trace_hook_is_removed_after_its_first_call() {
    let main = getcurrent();
    let m = main.clone();
    let g = Greenlet::new(move |_| {
        m.switch(())?;
        Ok(())
    });
    g.switch(()).unwrap();
    let actions: Trace = log();
    let sink = actions.clone();
    settrace(Some(Box::new(move |ev, from, to| {
        sink.borrow_mut().push((ev, from.id(), to.id()));
        panic!("SomeError");
    })));
    assert!(g.switch(()).is_ok());
    assert!(settrace(None).is_none(), "the hook was removed");
    assert_eq!(*actions.borrow(), [(TraceEvent::Switch, main.id(), g.id())]);
}

/// test_set_same_tracer_twice
#[test]
fn settrace_returns_the_hook_it_replaces() {
    let first = settrace(Some(Box::new(|_, _, _| {})));
    assert!(first.is_none());
    let again = settrace(first);
    assert!(again.is_some());
    assert!(settrace(None).is_none());
}

/// fail_switch_two_greenlets.py: the hook switches to another greenlet when main is
/// switched to.
#[test]
fn a_trace_hook_switching_away_runs_greenlets_in_the_order_python_does() {
    let out: Log<&str> = log();
    let slots: Rc<RefCell<Vec<Greenlet>>> = Rc::default();
    let switch_to_g2 = Rc::new(Cell::new(false));
    let (o1, o2, s2, flag1, flag2) = (
        out.clone(),
        out.clone(),
        slots.clone(),
        switch_to_g2.clone(),
        switch_to_g2.clone(),
    );
    let g1 = Greenlet::new(move |_| {
        o1.borrow_mut().push("In g1_run");
        flag1.set(true);
        to_parent(())?;
        o1.borrow_mut().push("Return to g1_run");
        o1.borrow_mut().push("Falling off end of g1_run");
        Ok(())
    });
    let g2 = Greenlet::new(move |_| {
        let g1 = s2.borrow()[0].clone();
        g1.switch(())?;
        o2.borrow_mut().push("Falling off end of g2");
        Ok(())
    });
    slots.borrow_mut().extend([g1.clone(), g2.clone()]);
    let g2_for_hook = g2.clone();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    settrace(Some(Box::new(move |_, _, _| {
        c.set(c.get() + 1);
        if flag2.replace(false) {
            g2_for_hook.switch(()).unwrap();
        }
    })));
    g1.switch(()).unwrap();
    out.borrow_mut().push("Falling off end of main");
    g2.switch(()).unwrap();
    settrace(None);
    slots.borrow_mut().clear();
    assert_eq!(
        *out.borrow(),
        [
            "In g1_run",
            "Return to g1_run",
            "Falling off end of g1_run",
            "Falling off end of main",
            "Falling off end of g2",
        ]
    );
    // Python also traces the switches made inside the hook; greenhub does not.
    assert!(calls.get() >= 4, "{}", calls.get());
}

/// fail_switch_three_greenlets2.py: the hook, on the first switch into g1, starts g2;
/// every value reaches where Python sends it.
#[test]
fn values_switched_around_a_trace_hook_that_switches_arrive_as_in_python() {
    let results: Log<(&str, String)> = log();
    let slots: Rc<RefCell<Vec<Greenlet>>> = Rc::default();
    let show = |v: Value| -> String {
        if v.is_unit() {
            "()".to_string()
        } else {
            v.downcast::<&str>().unwrap().to_string()
        }
    };
    let (r1, r2) = (results.clone(), results.clone());
    let g1 = Greenlet::new(move |arg| {
        r1.borrow_mut().push(("g1 arg", show(arg)));
        let from_parent = to_parent("from g1_run")?;
        r1.borrow_mut().push(("g1 from parent", show(from_parent)));
        Ok("g1 done")
    });
    let g2 = Greenlet::new(move |arg| {
        r2.borrow_mut().push(("g2 arg", show(arg)));
        let parent = to_parent("from g2_run")?;
        r2.borrow_mut().push(("g2 from parent", show(parent)));
        Ok("g2 done")
    });
    slots.borrow_mut().extend([g1.clone(), g2.clone()]);
    let switch_to_g2 = Rc::new(Cell::new(true));
    let s = slots.clone();
    settrace(Some(Box::new(move |_, _, _| {
        if switch_to_g2.replace(false) {
            let g2 = s.borrow()[1].clone();
            let _ = g2.switch("g2 from tracefunc");
        }
    })));
    let x = g1.switch("g1 from main").unwrap();
    results.borrow_mut().push(("main g1", show(x)));
    let x = g1.switch("g2 from main").unwrap();
    results.borrow_mut().push(("main g2", show(x)));
    let x = g1.switch("g1 from main 2").unwrap();
    results.borrow_mut().push(("main g1.2", show(x)));
    let x = g2.switch(()).unwrap();
    results.borrow_mut().push(("main g2.2", show(x)));
    settrace(None);
    slots.borrow_mut().clear();
    let expected = [
        ("g2 arg", "g2 from tracefunc"),
        ("main g1", "from g2_run"),
        ("g1 arg", "g1 from main"),
        ("main g2", "from g1_run"),
        ("g1 from parent", "g1 from main 2"),
        ("main g1.2", "g1 done"),
        ("g2 from parent", "()"),
        ("main g2.2", "g2 done"),
    ];
    let results = results.borrow();
    let got: Vec<(&str, &str)> = results.iter().map(|(a, b)| (*a, b.as_str())).collect();
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------------------
// test_generator.py: generators made of greenlets
// ---------------------------------------------------------------------------

/// A generator running `f` in a greenlet; `genlet_yield` inside hands out its values.
struct Genlet(Greenlet);

const GENLET: &str = "genlet";

impl Genlet {
    fn new(f: impl FnOnce() -> Result<(), Error> + 'static) -> Genlet {
        Genlet(Greenlet::builder().name(GENLET).build(move |_| f()))
    }
}

impl Iterator for Genlet {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.0.is_dead() {
            return None;
        }
        self.0.set_parent(&getcurrent()).unwrap();
        let result = self.0.switch(()).unwrap();
        self.0.is_active().then_some(result)
    }
}

/// Python's `Yield(value)`: to the consumer of the nearest enclosing genlet.
fn genlet_yield<T: Any>(value: T) -> Result<(), Error> {
    let mut g = getcurrent();
    while g.name() != Some(GENLET) {
        g = g
            .parent()
            .ok_or_else(|| Error::custom("yield outside a genlet"))?;
    }
    g.parent().unwrap().switch(value)?;
    Ok(())
}

/// test_generator
#[test]
fn a_greenlet_generator_yields_its_values_in_order() {
    let seen = log();
    let g = |n: i32, seen: Log<i32>| {
        Genlet::new(move || {
            for i in 0..n {
                seen.borrow_mut().push(i);
                genlet_yield(i)?;
            }
            Ok(())
        })
    };
    for _ in 0..3 {
        for j in g(5, seen.clone()) {
            seen.borrow_mut().push(j.downcast::<i32>().unwrap());
        }
    }
    let once = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4];
    assert_eq!(*seen.borrow(), once.repeat(3));
}

// ---------------------------------------------------------------------------
// test_generator_nested.py: generators that yield through several levels
// ---------------------------------------------------------------------------

const NESTED: &str = "nested-genlet";

thread_local! {
    /// Each nested genlet's `child` (by greenlet id): where its next value comes from.
    static CHILD: RefCell<HashMap<u64, Greenlet>> = RefCell::default();
}

fn child_of(g: &Greenlet) -> Option<Greenlet> {
    CHILD.with(|c| c.borrow().get(&g.id()).cloned())
}

/// A generator whose values may come from several levels down (Python's nested genlet).
struct Nested(Greenlet);

impl Nested {
    fn new(f: impl FnOnce() -> Result<(), Error> + 'static) -> Nested {
        Nested(Greenlet::builder().name(NESTED).build(move |_| f()))
    }
}

impl Iterator for Nested {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.0.is_dead() {
            return None;
        }
        let result = match child_of(&self.0) {
            Some(mut child) => {
                while let Some(grandchild) = child_of(&child) {
                    CHILD.with(|c| c.borrow_mut().remove(&child.id()));
                    child = grandchild;
                }
                child.switch(()).unwrap()
            }
            None => {
                self.0.set_parent(&getcurrent()).unwrap();
                self.0.switch(()).unwrap()
            }
        };
        self.0.is_active().then_some(result)
    }
}

/// Python's `Yield(value, level)`: to the consumer `level` genlets up.
fn nested_yield<T: Any>(value: T, level: u32) -> Result<Value, Error> {
    let mut g = getcurrent();
    for l in (1..=level).rev() {
        if g.name() != Some(NESTED) {
            return Err(Error::custom("yield outside a genlet"));
        }
        let parent = g.parent().unwrap();
        if l > 1 {
            CHILD.with(|c| c.borrow_mut().insert(parent.id(), g.clone()));
        }
        g = parent;
    }
    g.switch(value)
}

fn clear_children() {
    CHILD.with(|c| c.borrow_mut().clear());
}

fn ints(values: impl Iterator<Item = Value>) -> Vec<i32> {
    values.map(|v| v.downcast::<i32>().unwrap()).collect()
}

/// test_layered_genlets
#[test]
fn a_genlet_yields_through_two_levels_to_the_outer_consumer() {
    let gr1 = |n: i32| {
        Nested::new(move || {
            for ii in 1..n {
                nested_yield(ii, 1)?;
                nested_yield(ii * ii, 2)?;
            }
            Ok(())
        })
    };
    let gr2 = move |n: i32, seen: Log<i32>| {
        Nested::new(move || {
            for ii in gr1(n) {
                seen.borrow_mut().push(ii.downcast::<i32>().unwrap());
            }
            Ok(())
        })
    };
    let seen = log();
    for ii in gr2(5, seen.clone()) {
        seen.borrow_mut().push(ii.downcast::<i32>().unwrap());
    }
    clear_children();
    assert_eq!(*seen.borrow(), [1, 1, 2, 4, 3, 9, 4, 16]);
}

fn perms(l: Vec<i32>) -> Nested {
    Nested::new(move || {
        if l.len() > 1 {
            for &e in &l {
                let rest: Vec<i32> = l.iter().copied().filter(|&x| x != e).collect();
                let mut x = Vec::new();
                for p in perms(rest) {
                    let mut v = vec![e];
                    v.extend(p.downcast::<Vec<i32>>().unwrap());
                    x.push(nested_yield(v, 1)?);
                }
                assert!(!x.is_empty());
            }
        } else {
            nested_yield(l, 1)?;
        }
        Ok(())
    })
}

/// test_permutations
#[test]
fn recursive_genlets_generate_every_permutation() {
    let all: Vec<Vec<i32>> = perms(vec![0, 1, 2, 3])
        .map(|p| p.downcast().unwrap())
        .collect();
    assert_eq!(all.len(), 4 * 3 * 2);
    assert!(all.contains(&vec![0, 1, 2, 3]) && all.contains(&vec![3, 2, 1, 0]));
    let res: Vec<(Vec<i32>, Vec<i32>)> = perms(vec![0, 1, 2, 3])
        .zip(perms(vec![0, 1, 2]))
        .map(|(a, b)| (a.downcast().unwrap(), b.downcast().unwrap()))
        .collect();
    clear_children();
    let v = |s: [i32; 4], t: [i32; 3]| (s.to_vec(), t.to_vec());
    assert_eq!(
        res,
        [
            v([0, 1, 2, 3], [0, 1, 2]),
            v([0, 1, 3, 2], [0, 2, 1]),
            v([0, 2, 1, 3], [1, 0, 2]),
            v([0, 2, 3, 1], [1, 2, 0]),
            v([0, 3, 1, 2], [2, 0, 1]),
            v([0, 3, 2, 1], [2, 1, 0]),
        ]
    );
}

/// test_genlet_simple
#[test]
fn a_genlet_yields_like_a_plain_iterator_even_from_a_nested_call() {
    fn nested(i: i32) -> Result<(), Error> {
        nested_yield(i, 1).map(drop)
    }
    type Gen = fn(i32, Log<i32>) -> Box<dyn Iterator<Item = Value>>;
    let g1: Gen = |n, seen| {
        Box::new((0..n).map(move |i| {
            seen.borrow_mut().push(i + 1);
            Value::new(i)
        }))
    };
    let g2: Gen = |n, seen| {
        Box::new(Nested::new(move || {
            for i in 0..n {
                seen.borrow_mut().push(i + 1);
                nested_yield(i, 1)?;
            }
            Ok(())
        }))
    };
    let g3: Gen = |n, seen| {
        Box::new(Nested::new(move || {
            for i in 0..n {
                seen.borrow_mut().push(i + 1);
                nested(i)?;
            }
            Ok(())
        }))
    };
    for g in [g1, g2, g3] {
        let seen = log();
        for _ in 0..3 {
            for j in g(5, seen.clone()) {
                seen.borrow_mut().push(j.downcast::<i32>().unwrap());
            }
        }
        let once = [1, 0, 2, 1, 3, 2, 4, 3, 5, 4];
        assert_eq!(*seen.borrow(), once.repeat(3));
    }
}

/// test_genlet_bad
#[test]
fn yielding_outside_a_genlet_is_an_error() {
    let e = nested_yield(10, 1).unwrap_err();
    assert_eq!(e.to_string(), "yield outside a genlet");
}

/// test_nested_genlets
#[test]
fn genlets_nested_five_deep_yield_every_value() {
    fn ax(n: i32) -> Nested {
        Nested::new(move || {
            if n == 0 {
                return Ok(());
            }
            for ii in ax(n - 1) {
                nested_yield(ii, 1)?;
            }
            nested_yield(n, 1)?;
            Ok(())
        })
    }
    assert_eq!(ints(ax(5)), [1, 2, 3, 4, 5]);
    assert_eq!(ints(ax(0)), Vec::<i32>::new());
    clear_children();
}

// ---------------------------------------------------------------------------
// test_greenlet_trash.py: destructors that switch greenlets in the middle of drops
// ---------------------------------------------------------------------------

/// The counters of one run, shared by its `Dealloc`s.
#[derive(Default)]
struct Trash {
    created: Cell<usize>,
    destroyed: Cell<usize>,
    destroyed_bg: Cell<usize>,
    spawned_in_main: Cell<Option<bool>>,
    bg_ran: Cell<Option<&'static str>>,
    bg: RefCell<Option<Greenlet>>,
    main: RefCell<Option<Greenlet>>,
}

const TRASH_LEVEL: usize = 500;
const PER_CHAIN: usize = 1000;

/// An object whose destructor, at one depth, starts a greenlet that drops a chain of its
/// own and, part way, switches back, leaving it suspended inside a destructor.
struct Dealloc {
    i: usize,
    trash: Rc<Trash>,
}

impl Dealloc {
    fn new(i: usize, trash: &Rc<Trash>) -> Dealloc {
        trash.created.set(trash.created.get() + 1);
        Dealloc {
            i,
            trash: trash.clone(),
        }
    }
}

impl Drop for Dealloc {
    fn drop(&mut self) {
        let t = &self.trash;
        let main = t.main.borrow().clone().unwrap();
        if self.i == TRASH_LEVEL && t.spawned_in_main.get().is_none() {
            t.spawned_in_main.set(Some(getcurrent().is_main()));
            let trash = t.clone();
            let other = Greenlet::new(move |_| {
                let chain = make_chain(&trash);
                drop(chain);
                Ok(())
            });
            *t.bg.borrow_mut() = Some(other.clone());
            let x = other.switch(()).unwrap();
            assert_eq!(x.downcast::<i32>().unwrap(), 42);
            // Not switched back to: it stays suspended in a destructor until later.
        } else if self.i == 40 && !getcurrent().is_main() {
            t.bg_ran.set(Some("ran"));
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| main.switch(42))) {
                // Dropped while suspended here: the kill comes in. Swallow it and finish
                // deleting ourselves.
                assert!(p.is::<GreenletExit>());
                t.bg_ran.set(Some("GreenletExit"));
            }
        }
        t.destroyed.set(t.destroyed.get() + 1);
        if !getcurrent().is_main() {
            t.destroyed_bg.set(t.destroyed_bg.get() + 1);
        }
    }
}

/// Nested links, dropped recursively (each link's destructor runs inside its parent's).
struct Link {
    _item: Dealloc,
    _next: Option<Box<Link>>,
}

fn make_chain(trash: &Rc<Trash>) -> Option<Box<Link>> {
    let mut chain = None;
    for i in (1..=PER_CHAIN).rev() {
        chain = Some(Box::new(Link {
            _item: Dealloc::new(i, trash),
            _next: chain,
        }));
    }
    chain
}

/// test_greenlet_trash.py: test_it
#[test]
fn destructors_switching_greenlets_in_the_middle_of_nested_drops_all_complete() {
    for _ in 0..3 {
        let trash = Rc::new(Trash::default());
        *trash.main.borrow_mut() = Some(getcurrent());
        let some = make_chain(&trash);
        assert_eq!((trash.created.get(), trash.destroyed.get()), (PER_CHAIN, 0));
        drop(some);
        // Discard the background greenlet: the kill lands in its suspended destructor.
        drop(trash.bg.borrow_mut().take());
        assert!(trash.destroyed_bg.get() > 0);
        assert_eq!(trash.spawned_in_main.get(), Some(true));
        assert_eq!(trash.bg_ran.get(), Some("GreenletExit"));
        assert_eq!(trash.created.get(), trash.destroyed.get());
        assert_eq!(trash.created.get(), 2 * PER_CHAIN);
        trash.main.borrow_mut().take();
    }
}

// ---------------------------------------------------------------------------
// test_gc.py: what Rust's reference counting collects, and what it cannot
// ---------------------------------------------------------------------------

/// test_dead_circular_ref
#[test]
fn a_dead_greenlet_returning_its_own_handle_is_freed_with_it() {
    let g = Greenlet::new(|_| Ok(getcurrent()));
    let o = g.switch(()).unwrap().downcast::<Greenlet>().unwrap();
    assert_eq!(o, g);
    assert!(o.is_dead());
    drop((g, o)); // no cycle is left once it is dead
}

/// test_circular_greenlet (Python's collector frees it; Rust's counts cannot)
#[test]
fn an_unstarted_greenlet_holding_its_own_handle_is_kept_by_the_cycle() {
    let freed = Rc::new(Cell::new(false));
    let slot: Rc<RefCell<Option<Greenlet>>> = Rc::default();
    let (flag, s) = (DropFlag(freed.clone()), slot.clone());
    let o = Greenlet::new(move |_| {
        let _f = &flag;
        let _s = &s;
        Ok(())
    });
    *slot.borrow_mut() = Some(o.clone()); // o.self = o
    drop(o);
    assert!(!freed.get(), "a cycle is never collected");
    drop(slot.borrow_mut().take()); // breaking it by hand frees it
    assert!(freed.get());
}

/// test_inactive_ref
#[test]
fn an_unstarted_greenlet_is_freed_with_its_function() {
    let freed = Rc::new(Cell::new(false));
    let flag = DropFlag(freed.clone());
    let o = Greenlet::new(move |_| {
        let _f = &flag;
        Ok(())
    });
    drop(o);
    assert!(freed.get());
}

/// test_finalizer_crash (the cycle through the array never goes away by itself; once
/// broken, the greenlet gets its kill and its `finally:` runs)
#[test]
fn a_suspended_greenlet_in_a_cycle_is_killed_once_the_cycle_is_broken() {
    let array: Rc<RefCell<Vec<Greenlet>>> = Rc::default();
    let got_exit = Rc::new(Cell::new(false));
    let finalized = Rc::new(Cell::new(false));
    let (a, exit, fin) = (array.clone(), got_exit.clone(), finalized.clone());
    let g = Greenlet::new(move |_| {
        let _array = a; // g.array = array
        let object = DropFlag(fin); // an object with a finalizer, held by the greenlet
        let r = catch_unwind(AssertUnwindSafe(|| to_parent(())));
        if let Err(p) = r {
            exit.set(p.is::<GreenletExit>());
        }
        drop(object); // finally: del greenlet.getcurrent().object
        Ok(())
    });
    array.borrow_mut().push(g.clone());
    g.switch(()).unwrap();
    drop(g);
    assert!(!finalized.get() && !got_exit.get(), "kept by the cycle");
    let g = array.borrow_mut().pop().unwrap();
    drop(array);
    drop(g); // the last handle: killed
    assert!(got_exit.get() && finalized.get());
}

/// test_cycle_in_suspended_frame (without the reference cycle between the two objects,
/// which Rust would never free)
#[test]
fn a_child_suspended_in_a_finished_greenlet_is_unwound_when_its_parent_returns() {
    let finalized = Rc::new(Cell::new(0));
    let f = finalized.clone();
    let outer = Greenlet::new(move |_| {
        let f2 = f.clone();
        let inner = Greenlet::new(move |_| {
            let _cycle1 = OnDrop({
                let f = f2.clone();
                move || f.set(f.get() + 1)
            });
            let _cycle2 = OnDrop(move || f2.set(f2.get() + 1));
            to_parent(())?;
            Ok(())
        });
        inner.switch(())?;
        assert_eq!(f.get(), 0);
        Ok(())
    });
    outer.switch(()).unwrap();
    assert!(outer.is_dead());
    assert_eq!(finalized.get(), 2, "the inner greenlet was unwound");
}
