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

/// Waits at most `bound` for `thread` to end (it was asked to stop); `Err` with the panic
/// message when it panicked. A thread still busy then (a call in flight, which ends by its
/// own deadline) is left to finish on its own. Called on that very thread it returns at
/// once.
pub(crate) fn join_within(
    thread: JoinHandle<()>,
    bound: std::time::Duration,
) -> Result<(), String> {
    if thread.thread().id() == std::thread::current().id() {
        return Ok(());
    }
    let deadline = crate::util::time::after(bound);
    let mut pause = std::time::Duration::from_micros(50);
    while !thread.is_finished() {
        if std::time::Instant::now() >= deadline {
            log::debug!(
                "thread {} is still finishing a call after {bound:?}; it stops when that call ends",
                thread.thread().name().unwrap_or("?")
            );
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(2));
    }
    join(thread)
}

/// A named background thread with a stop channel: it ends when the channel disconnects
/// (`stop`, or the owner dropped). Its owner waits for it within a bound.
#[derive(Debug)]
pub(crate) struct Background {
    name: &'static str,
    stop: Option<crossbeam_channel::Sender<()>>,
    /// Disconnects when the thread ends, normally or by a panic.
    done: crossbeam_channel::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts `body` on a thread named `name` (at most 15 characters: Linux cuts longer
    /// names); `body` gets the stop channel, which disconnects when it must stop.
    pub(crate) fn spawn(
        name: &'static str,
        body: impl FnOnce(crossbeam_channel::Receiver<()>) + Send + 'static,
    ) -> std::io::Result<Background> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _done = done_tx;
                body(stop_rx);
            })?;
        Ok(Background {
            name,
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    /// Asks the thread to stop without waiting (see [`Background::stop`]).
    pub(crate) fn ask_to_stop(&mut self) {
        drop(self.stop.take());
    }

    /// Asks the thread to stop and waits at most `bound` for it. A thread still busy then
    /// (a call in flight, which ends by its own deadline) is left to finish on its own; it
    /// sees the stop request as soon as that call returns. `Err` when it had panicked.
    pub(crate) fn stop(&mut self, bound: std::time::Duration) -> Result<(), String> {
        drop(self.stop.take());
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        if thread.thread().id() == std::thread::current().id() {
            return Ok(());
        }
        match self.done.recv_timeout(bound) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                log::debug!(
                    "thread {} is still finishing a call after {bound:?}; it stops when that call ends",
                    self.name
                );
                Ok(())
            }
            _ => join(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Err(panic) = self.stop(std::time::Duration::from_millis(100)) {
            log::warn!("thread {} had panicked: {panic}", self.name);
        }
    }
}
