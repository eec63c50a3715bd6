//! Joining redkit's background threads, in one place.

use std::any::Any;
use std::thread::JoinHandle;

/// What a panic carried, as text.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Waits for `thread` to end; `Err` with the panic message when it panicked. Called on that
/// very thread (its owner was dropped from inside it) it returns at once: the thread sees
/// its stop signal as soon as it returns there.
pub(crate) fn join(thread: JoinHandle<()>) -> Result<(), String> {
    if thread.thread().id() == std::thread::current().id() {
        return Ok(());
    }
    thread.join().map_err(|panic| panic_message(&*panic))
}
