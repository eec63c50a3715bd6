//! Redis Sentinel: master discovery with timeouts, and a listener thread that follows
//! `+switch-master`.
//!
//! The pool's connection manager asks [`SentinelState::client`] where the master is; the
//! first call (and any call after [`SentinelState::refresh`] found nothing) asks the
//! sentinels in turn. When the master changes (a `+switch-master` message, a connection that
//! turns out to reach a replica, a `READONLY` reply), [`SentinelState::switch_to`] points new
//! connections at the new master, retires every pooled connection at once (the pool's
//! generation counter) and emits [`Event::FailoverDetected`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::{debug, info, warn};
use parking_lot::Mutex;

use crate::config::{Addr, Config, SentinelConfig};
use crate::error::{Delivery, Error, Result};
use crate::events::Event;
use crate::pool::{redis_client_at, Shared};

/// How long the listener waits on its subscription before it checks for a stop request.
const LISTEN_SLICE: Duration = Duration::from_millis(250);
/// Pause between two rounds over every sentinel when none answers.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Where the master is, shared by every connection manager of a handle and its listener.
pub(crate) struct SentinelState {
    config: SentinelConfig,
    current: Mutex<Option<(Addr, redis::Client)>>,
    rediscover: AtomicBool,
}

impl std::fmt::Debug for SentinelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelState")
            .field("master_name", &self.config.master_name)
            .field(
                "current",
                &self.current.lock().as_ref().map(|(a, _)| a.clone()),
            )
            .finish_non_exhaustive()
    }
}

impl SentinelState {
    pub(crate) fn new(config: SentinelConfig) -> SentinelState {
        SentinelState {
            config,
            current: Mutex::new(None),
            rediscover: AtomicBool::new(false),
        }
    }

    /// The master's address, if known.
    pub(crate) fn current_addr(&self) -> Option<Addr> {
        self.current.lock().as_ref().map(|(a, _)| a.clone())
    }

    /// A client for the current master, discovering it first when it is not known.
    pub(crate) fn client(&self, shared: &Shared, config: &Config) -> Result<redis::Client> {
        if let Some((_, client)) = self.current.lock().as_ref() {
            return Ok(client.clone());
        }
        self.refresh(shared, config)?;
        self.current
            .lock()
            .as_ref()
            .map(|(_, c)| c.clone())
            .ok_or_else(|| no_master(&self.config.master_name))
    }

    /// Asks the sentinels where the master is now and switches to it if it moved.
    pub(crate) fn refresh(&self, shared: &Shared, config: &Config) -> Result<Addr> {
        let addr = self.discover(config)?;
        self.switch_to(shared, config, addr.clone(), "asked the sentinels")?;
        Ok(addr)
    }

    /// Asks for a rediscovery by the listener thread (after a `READONLY` reply).
    pub(crate) fn request_rediscovery(&self) {
        self.rediscover.store(true, Ordering::Release);
    }

    /// Points new connections at `addr`; if it differs from the known master, retires every
    /// pooled connection and emits [`Event::FailoverDetected`].
    pub(crate) fn switch_to(
        &self,
        shared: &Shared,
        config: &Config,
        addr: Addr,
        why: &str,
    ) -> Result<()> {
        let client = redis_client_at(config, &addr)?;
        let old = {
            let mut current = self.current.lock();
            if current.as_ref().is_some_and(|(a, _)| *a == addr) {
                return Ok(());
            }
            current.replace((addr.clone(), client)).map(|(a, _)| a)
        };
        if let Some(old) = &old {
            info!(
                "redis master `{}` moved from {old} to {addr} ({why}): retiring every pooled connection",
                self.config.master_name
            );
            shared.retire_connections();
            shared.events.emit(Event::FailoverDetected {
                master_name: self.config.master_name.clone(),
                old: old.clone(),
                new: addr,
            });
        } else {
            info!("redis master `{}` is at {addr}", self.config.master_name);
        }
        Ok(())
    }

    /// Asks each sentinel in turn, with the connect and response timeouts.
    fn discover(&self, config: &Config) -> Result<Addr> {
        let mut last = None;
        for (host, port) in &self.config.addrs {
            match self.ask(config, host, *port) {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => {
                    debug!(
                        "sentinel {host}:{port} does not know master `{}`",
                        self.config.master_name
                    );
                }
                Err(e) => {
                    debug!("sentinel {host}:{port}: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| no_master(&self.config.master_name)))
    }

    fn ask(&self, config: &Config, host: &str, port: u16) -> Result<Option<Addr>> {
        let mut con = self.sentinel_connection(config, host, port)?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.config.master_name)
            .query(&mut con)
            .map_err(|e| Error::from_redis(e, Delivery::Unknown))?;
        Ok(addr.map(|(host, port)| Addr::Tcp { host, port }))
    }

    /// A connection to one sentinel, with the connect, response and write timeouts.
    fn sentinel_connection(
        &self,
        config: &Config,
        host: &str,
        port: u16,
    ) -> Result<redis::Connection> {
        use redis::IntoConnectionInfo;
        let not_sent = |e| Error::from_redis(e, Delivery::NotSent);
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(user) = &self.config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.config.password {
            settings = settings.set_password(password.expose());
        }
        let info = redis::ConnectionAddr::Tcp(host.to_owned(), port)
            .into_connection_info()
            .map_err(not_sent)?
            .set_redis_settings(settings);
        let t = &config.timeouts;
        let con = redis::Client::open(info)
            .map_err(not_sent)?
            .get_connection_with_timeout(t.connect)
            .map_err(not_sent)?;
        con.set_read_timeout(Some(t.response)).map_err(not_sent)?;
        con.set_write_timeout(Some(t.write)).map_err(not_sent)?;
        Ok(con)
    }
}

fn no_master(name: &str) -> Error {
    Error::from_redis(
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no sentinel answered with the address of master `{name}`"),
        )),
        Delivery::NotSent,
    )
}

/// The `redkit-sentinel` thread: subscribes to `+switch-master` on one sentinel at a time.
#[derive(Debug)]
pub(crate) struct SentinelListener {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SentinelListener {
    pub(crate) fn spawn(
        shared: &Arc<Shared>,
        state: Arc<SentinelState>,
        config: Config,
    ) -> Result<SentinelListener> {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let weak = Arc::downgrade(shared);
        let thread = std::thread::Builder::new()
            .name("redkit-sentinel".into())
            .spawn(move || listen(&weak, &state, &config, &stopped))
            .map_err(|e| Error::from_redis(redis::RedisError::from(e), Delivery::NotSent))?;
        Ok(SentinelListener {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (unless called on that very thread).
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(Err(panic)) = self.thread.take().map(crate::threads::join) {
            warn!("the redkit-sentinel thread had panicked: {panic}");
        }
    }
}

impl Drop for SentinelListener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the owner asked the thread to stop (the stop channel disconnected).
fn stopping(stopped: &Receiver<()>) -> bool {
    matches!(stopped.try_recv(), Err(TryRecvError::Disconnected))
}

fn listen(weak: &Weak<Shared>, state: &SentinelState, config: &Config, stopped: &Receiver<()>) {
    let sentinels = state.config.addrs.clone();
    let mut next = 0;
    loop {
        if stopping(stopped) {
            return;
        }
        let (host, port) = &sentinels[next % sentinels.len()];
        next += 1;
        match follow(weak, state, config, stopped, host, *port) {
            Ok(()) => return,
            Err(e) => debug!("sentinel listener on {host}:{port}: {e}"),
        }
        if next % sentinels.len() == 0 {
            match stopped.recv_timeout(RETRY_PAUSE) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }
}

/// Follows one sentinel until it fails (`Err`) or the thread must stop (`Ok`).
fn follow(
    weak: &Weak<Shared>,
    state: &SentinelState,
    config: &Config,
    stopped: &Receiver<()>,
    host: &str,
    port: u16,
) -> Result<()> {
    let wire = |e| Error::from_redis(e, Delivery::Unknown);
    let mut con = state.sentinel_connection(config, host, port)?;
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe("+switch-master").map_err(wire)?;
    pubsub.set_read_timeout(Some(LISTEN_SLICE)).map_err(wire)?;
    // A switch may have happened while nobody listened.
    if let Some(shared) = weak.upgrade() {
        if let Err(e) = state.refresh(&shared, config) {
            debug!("sentinel rediscovery failed: {e}");
        }
    }
    debug!("sentinel listener subscribed on {host}:{port}");
    loop {
        if stopping(stopped) {
            return Ok(());
        }
        let Some(shared) = weak.upgrade() else {
            return Ok(());
        };
        if state.rediscover.swap(false, Ordering::AcqRel) {
            if let Err(e) = state.refresh(&shared, config) {
                debug!("sentinel rediscovery failed: {e}");
                state.request_rediscovery();
            }
        }
        match pubsub.get_message() {
            Ok(msg) => {
                let payload: String = msg.get_payload().map_err(wire)?;
                // `<name> <old-ip> <old-port> <new-ip> <new-port>`
                let parts: Vec<&str> = payload.split_whitespace().collect();
                if let [name, _, _, new_host, new_port] = parts[..] {
                    if name == state.config.master_name {
                        if let Ok(new_port) = new_port.parse() {
                            let addr = Addr::Tcp {
                                host: new_host.to_owned(),
                                port: new_port,
                            };
                            state.switch_to(&shared, config, addr, "+switch-master")?;
                        }
                    }
                }
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(wire(e)),
        }
    }
}
