//! The callback form of a subscription: a dispatcher thread that runs a handler per message.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Sender};
use log::warn;

use super::{Message, Subscription};
use crate::error::{Error, Result};
use crate::util::threads::panic_message;

/// A running callback ([`Subscription::handle`]). Dropping it (or [`Handler::stop`]) stops
/// the dispatcher thread, waiting for the message being handled, and unsubscribes.
#[must_use = "dropping a Handler stops it"]
#[derive(Debug)]
pub struct Handler {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    handled: Arc<AtomicU64>,
    panics: Arc<AtomicU64>,
}

impl Handler {
    pub(crate) fn spawn<F>(sub: Subscription, mut handler: F) -> Result<Handler>
    where
        F: FnMut(Message) + Send + 'static,
    {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let handled = Arc::new(AtomicU64::new(0));
        let panics = Arc::new(AtomicU64::new(0));
        let (h, p) = (handled.clone(), panics.clone());
        let thread = std::thread::Builder::new()
            .name("redkit-dispatch".into())
            .spawn(move || loop {
                select! {
                    recv(sub.receiver()) -> msg => {
                        let Ok(msg) = msg else { break };
                        let result = catch_unwind(AssertUnwindSafe(|| handler(msg)));
                        h.fetch_add(1, Relaxed);
                        if let Err(panic) = result {
                            p.fetch_add(1, Relaxed);
                            sub.subscriber_counters().handler_panics.fetch_add(1, Relaxed);
                            warn!("a pub/sub handler panicked (delivery goes on): {}", panic_message(&*panic));
                        }
                    }
                    recv(stop_rx) -> _ => break,
                }
            })
            .map_err(|e| Error::Background {
                thread: "redkit-dispatch",
                reason: format!("could not start: {e}"),
            })?;
        Ok(Handler {
            stop: Some(stop_tx),
            thread: Some(thread),
            handled,
            panics,
        })
    }

    /// Messages handled so far (including those whose handler panicked).
    pub fn handled(&self) -> u64 {
        self.handled.load(Relaxed)
    }

    /// Handler panics caught so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Relaxed)
    }

    /// Stops the dispatcher thread (after the message being handled) and unsubscribes.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.take();
        // A handler that drops its own `Handler` does not wait for itself; a panic in a
        // handler is caught inside the thread, so joining cannot report one.
        if let Some(thread) = self.thread.take() {
            let _ = crate::util::threads::join(thread);
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.shut_down();
    }
}
