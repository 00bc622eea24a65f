//! greenhub::Error as a Rust error value: Send + Sync, `?` into the common error boxes,
//! the panic payload kept whole.

use std::sync::Arc;

use greenhub::{Error, PanicPayload, spawn};

fn assert_send_sync<T: Send + Sync + 'static>() {}

#[test]
fn error_is_send_and_sync() {
    assert_send_sync::<Error>();
    assert_send_sync::<PanicPayload>();
    // Shared between threads, as a `Sync` error must allow.
    let e = Arc::new(spawn(|| panic!("shared")).join().unwrap_err());
    let e2 = e.clone();
    let text = std::thread::spawn(move || e2.to_string()).join().unwrap();
    assert_eq!(text, "greenlet panicked: shared");
    assert_eq!(e.panic_message(), Some("shared"));
}

/// A job that fails the way a greenhub call does.
fn joined_panic() -> Result<(), Error> {
    spawn(|| -> () { panic!("job failed") }).join()
}

fn with_anyhow() -> anyhow::Result<()> {
    joined_panic()?;
    Ok(())
}

fn with_boxed() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    joined_panic()?;
    Ok(())
}

#[test]
fn question_mark_converts_into_anyhow_and_boxed_send_sync_errors() {
    let e = with_anyhow().unwrap_err();
    assert_eq!(e.to_string(), "greenlet panicked: job failed");
    let inner = e
        .downcast::<Error>()
        .expect("anyhow keeps the greenhub::Error");
    assert!(inner.is_panic());
    let payload = inner.into_panic();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"job failed"));

    let boxed = with_boxed().unwrap_err();
    assert_eq!(boxed.to_string(), "greenlet panicked: job failed");
    assert!(boxed.downcast_ref::<Error>().is_some_and(Error::is_panic));

    // Other variants go through `?` too.
    let timeout = (|| -> anyhow::Result<()> {
        greenhub::with_timeout(std::time::Duration::from_millis(1), || {
            greenhub::sleep(std::time::Duration::from_secs(5))
        })?;
        Ok(())
    })()
    .unwrap_err();
    assert!(matches!(
        timeout.downcast_ref::<Error>(),
        Some(Error::Timeout)
    ));
}

#[test]
fn panic_payload_keeps_its_type_for_resume_unwind() {
    // A String payload (panic! with arguments) is readable in place and comes back as one.
    let code = std::hint::black_box(7);
    let e = spawn(move || -> () { panic!("code {code}") })
        .join()
        .unwrap_err();
    assert_eq!(e.panic_message(), Some("code 7"));
    let Error::Panicked(p) = &e else {
        panic!("expected Panicked, got {e:?}")
    };
    assert!(p.is::<String>());
    assert_eq!(format!("{p:?}"), r#"PanicPayload("code 7")"#);
    assert_eq!(*e.into_panic().downcast::<String>().unwrap(), "code 7");

    // Any other payload type: no message, but the payload itself comes back whole, and
    // resume_unwind re-raises it with its type.
    #[derive(Debug, PartialEq)]
    struct Custom(u32);
    let e = spawn(|| std::panic::panic_any(Custom(42)))
        .join()
        .unwrap_err();
    assert_eq!(e.panic_message(), None);
    assert_eq!(e.to_string(), "greenlet panicked");
    let payload = e.into_panic();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        std::panic::resume_unwind(payload)
    }))
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<Custom>(), Some(&Custom(42)));

    // Not a panic: try_into_panic gives the error back.
    let back = Error::Timeout.try_into_panic().unwrap_err();
    assert!(matches!(back, Error::Timeout));
}
