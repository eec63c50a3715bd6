//! One connection shared by any number of threads: callers submit packed requests, whatever
//! is queued goes out in one write, replies are matched to callers in order.
//!
//! There is no I/O thread. A caller that finds nobody *driving* the connection drives it
//! itself: it writes everything queued (its own request and any that arrived meanwhile, in
//! one write), then reads replies, handing each to its caller, until its own has come; it
//! then hands the driving over to a caller still waiting (or stops when none waits). A
//! caller alone therefore writes and reads its own request like on a plain connection (no
//! thread hand-off), and under load the writes batch by themselves: no timers, no added
//! latency.
//!
//! Each caller waits with its own deadline. A caller whose deadline passes gets a timeout:
//! `NotSent` when its request was still queued (it is taken out, never written), `Unknown`
//! once written (its reply, when it comes, is read and dropped). Replies never go to the
//! wrong caller: they are matched by position, and a caller that gave up keeps its place.
//! When the connection fails, every caller in flight fails at once (`Unknown`) and every
//! queued one with `NotSent`.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::Value;

use super::socket::WriteHalf;
use super::{Connection, Interrupter};
use crate::config::Addr;
use crate::error::{Delivery, Error, Result};
use crate::util::time;

/// Requests in flight above which a writer yields once before writing, for others to join.
const BUSY: usize = 8;

/// How long a caller alone on a connection spins for its reply before sleeping.
const SPIN: Duration = Duration::from_micros(50);

/// What bounds one multiplexed connection's memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Requests queued or in flight at most.
    pub(crate) requests: usize,
    /// Bytes queued (not yet written) at most; a single larger request waits until the
    /// queue is empty, then goes alone.
    pub(crate) bytes: usize,
}

#[derive(Debug)]
enum Phase {
    /// Submitted, not written yet.
    Queued,
    /// Written; `got` replies of `expect` read so far.
    Written,
    /// Replied (or failed): the result waits for its caller.
    Done(Result<Vec<Value>>),
    /// Its caller gave up (deadline): its replies are read and dropped.
    Abandoned,
    /// The result was taken by its caller.
    Taken,
}

#[derive(Debug)]
struct SlotState {
    phase: Phase,
    values: Vec<Value>,
    /// The caller is asked to drive the connection.
    drive: bool,
}

/// One caller's request.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Replies expected (`offset + count`), and how many of the first to drop.
    expect: usize,
    offset: usize,
    len: usize,
    st: Mutex<SlotState>,
    cv: Condvar,
    /// Set with the result (a caller alone spins on it briefly instead of sleeping).
    done: AtomicBool,
}

impl Slot {
    fn new(expect: usize, offset: usize, len: usize) -> Arc<Slot> {
        Arc::new(Slot {
            expect,
            offset,
            len,
            st: Mutex::new(SlotState {
                phase: Phase::Queued,
                values: Vec::new(),
                drive: false,
            }),
            cv: Condvar::new(),
            done: AtomicBool::new(false),
        })
    }

    fn finish(&self, result: Result<Vec<Value>>) {
        let mut st = self.st.lock();
        match st.phase {
            Phase::Queued | Phase::Written => {
                st.phase = Phase::Done(result);
                self.done.store(true, Ordering::Release);
                self.cv.notify_one();
            }
            // Nobody waits for it any more.
            Phase::Abandoned => st.phase = Phase::Taken,
            Phase::Done(_) | Phase::Taken => {}
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    buf: Vec<u8>,
    slots: Vec<Arc<Slot>>,
    /// Someone drives the connection (writes the queue, reads replies).
    driving: bool,
    /// Requests queued or in flight.
    requests: usize,
    /// Set when the connection failed: every later call fails with it.
    failed: Option<Error>,
}

#[derive(Debug)]
struct Core {
    conn: Connection,
    in_flight: VecDeque<Arc<Slot>>,
}

/// One multiplexed connection driven by its callers (TLS: one session cannot be read and
/// written from two threads at once).
#[derive(Debug)]
struct Driven {
    queue: Mutex<Queue>,
    /// Signalled when capacity frees up.
    space: Condvar,
    core: Mutex<Core>,
    interrupter: Interrupter,
    broken: AtomicBool,
    addr: Addr,
    limits: Limits,
    write_timeout: Duration,
}

fn failure(addr: &Addr, what: &str, delivery: Delivery) -> Error {
    Error::io(
        io::ErrorKind::ConnectionAborted,
        format!("multiplexed connection to {addr} {what}"),
        delivery,
    )
}

impl Driven {
    fn new(mut conn: Connection, limits: Limits, write_timeout: Duration) -> Driven {
        let interrupter = conn.interrupter();
        let addr = conn.addr().clone();
        Driven {
            queue: Mutex::new(Queue::default()),
            space: Condvar::new(),
            core: Mutex::new(Core {
                conn,
                in_flight: VecDeque::new(),
            }),
            interrupter,
            broken: AtomicBool::new(false),
            addr,
            limits,
            write_timeout,
        }
    }

    /// Whether the connection failed (every call now fails at once).
    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn interrupt(&self) {
        self.broken.store(true, Ordering::Release);
        self.interrupter.interrupt();
    }

    fn call(
        &self,
        packed: &[u8],
        offset: usize,
        count: usize,
        deadline: Instant,
    ) -> Result<Vec<Value>> {
        let slot = Slot::new(offset + count, offset, packed.len());
        let start = Instant::now();
        let drive = {
            let mut q = self.queue.lock();
            loop {
                if let Some(e) = &q.failed {
                    return Err(e.clone().with_delivery(Delivery::NotSent));
                }
                let fits = q.requests < self.limits.requests
                    && (q.buf.is_empty() || q.buf.len() + packed.len() <= self.limits.bytes);
                if fits {
                    break;
                }
                if self.space.wait_until(&mut q, deadline).timed_out() {
                    return Err(Error::PoolTimeout {
                        waited: start.elapsed(),
                    });
                }
            }
            q.buf.extend_from_slice(packed);
            q.slots.push(slot.clone());
            q.requests += 1;
            let drive = !q.driving;
            q.driving = true;
            drive
        };
        if drive {
            self.drive(&slot, deadline);
        }
        self.wait(&slot, deadline)
    }

    /// Waits for `slot`'s result, driving when asked to.
    fn wait(&self, slot: &Arc<Slot>, deadline: Instant) -> Result<Vec<Value>> {
        loop {
            let mut st = slot.st.lock();
            loop {
                if matches!(st.phase, Phase::Done(_)) {
                    let asked_to_drive = std::mem::take(&mut st.drive);
                    let result = match std::mem::replace(&mut st.phase, Phase::Taken) {
                        Phase::Done(result) => result,
                        _ => Err(failure(&self.addr, "lost a reply", Delivery::Unknown)),
                    };
                    drop(st);
                    if asked_to_drive {
                        self.pass_on(slot);
                    }
                    return result;
                }
                if Instant::now() >= deadline {
                    let asked_to_drive = std::mem::take(&mut st.drive);
                    drop(st);
                    let e = self.give_up(slot);
                    if asked_to_drive {
                        self.pass_on(slot);
                    }
                    return Err(e);
                }
                if st.drive {
                    st.drive = false;
                    break;
                }
                slot.cv.wait_until(&mut st, deadline);
            }
            drop(st);
            self.drive(slot, deadline);
        }
    }

    /// Hands the driving (given to `me`, who will not drive) to someone else.
    fn pass_on(&self, me: &Arc<Slot>) {
        let core = self.core.lock();
        self.hand_over(&core, me);
    }

    /// The caller of `slot` gives up at its deadline: taken out of the queue if it was not
    /// written yet, left in place (its replies dropped) otherwise.
    fn give_up(&self, slot: &Arc<Slot>) -> Error {
        let removed = {
            let mut q = self.queue.lock();
            match q.slots.iter().position(|s| Arc::ptr_eq(s, slot)) {
                Some(i) => {
                    // Its bytes: after those of the slots before it.
                    let start: usize = q.slots[..i].iter().map(|s| s.len).sum();
                    let end = (start + slot.len).min(q.buf.len());
                    q.buf.drain(start.min(end)..end);
                    q.slots.remove(i);
                    q.requests = q.requests.saturating_sub(1);
                    self.space.notify_all();
                    true
                }
                None => false,
            }
        };
        let mut st = slot.st.lock();
        st.phase = match st.phase {
            // Written and still unanswered: its replies are read and dropped.
            Phase::Written if !removed => Phase::Abandoned,
            _ => Phase::Taken,
        };
        let delivery = if removed {
            Delivery::NotSent
        } else {
            Delivery::Unknown
        };
        Error::io(
            io::ErrorKind::TimedOut,
            format!("no reply from {} in time (multiplexed)", self.addr),
            delivery,
        )
    }

    /// Drives the connection until `mine` is done or its deadline passes, then hands over.
    fn drive(&self, mine: &Arc<Slot>, deadline: Instant) {
        let mut core = self.core.lock();
        loop {
            // Everything queued, in one write.
            let (buf, slots) = {
                let mut q = self.queue.lock();
                (std::mem::take(&mut q.buf), std::mem::take(&mut q.slots))
            };
            if !slots.is_empty() {
                for s in &slots {
                    let mut st = s.st.lock();
                    if let Phase::Queued = st.phase {
                        st.phase = Phase::Written;
                    }
                }
                self.space.notify_all();
                let write_by = time::after(self.write_timeout);
                if let Err(e) = core.conn.send(&buf, Some(write_by), false) {
                    // Nothing written (`NotSent`) or part of it (`Unknown`).
                    for s in &slots {
                        s.finish(Err(e.clone()));
                    }
                    self.fail(&mut core, e);
                    return;
                }
                core.in_flight.extend(slots);
            }
            let done = {
                let st = mine.st.lock();
                !matches!(st.phase, Phase::Queued | Phase::Written)
            };
            if done || core.in_flight.is_empty() {
                break;
            }
            match core.conn.read_frame(deadline) {
                Ok(Some(Value::Push { .. })) => {}
                Ok(Some(v)) => self.reply(&mut core, v),
                // Our deadline passed: the caller gives up; someone else drives.
                Ok(None) => break,
                Err(e) => {
                    self.fail(&mut core, e);
                    return;
                }
            }
        }
        self.hand_over(&core, mine);
    }

    /// One reply: to the oldest request in flight.
    fn reply(&self, core: &mut Core, v: Value) {
        let Some(front) = core.in_flight.front() else {
            // A reply nobody asked for: the stream is out of step.
            let e = failure(
                &self.addr,
                "got a reply nobody asked for",
                Delivery::Unknown,
            );
            self.fail(core, e);
            return;
        };
        let complete = {
            let mut st = front.st.lock();
            st.values.push(v);
            st.values.len() >= front.expect
        };
        if complete {
            if let Some(slot) = core.in_flight.pop_front() {
                let values = {
                    let mut st = slot.st.lock();
                    let mut values = std::mem::take(&mut st.values);
                    values.drain(..slot.offset.min(values.len()));
                    values
                };
                slot.finish(Ok(values));
                let mut q = self.queue.lock();
                q.requests = q.requests.saturating_sub(1);
                drop(q);
                self.space.notify_all();
            }
        }
    }

    /// Gives the driving to a caller still waiting (the oldest other than `me`), or stops
    /// driving.
    fn hand_over(&self, core: &Core, me: &Arc<Slot>) {
        let mut q = self.queue.lock();
        let next = core
            .in_flight
            .iter()
            .chain(q.slots.iter())
            .filter(|s| !Arc::ptr_eq(s, me))
            .find(|s| matches!(s.st.lock().phase, Phase::Queued | Phase::Written))
            .cloned();
        match next {
            Some(s) => {
                let mut st = s.st.lock();
                st.drive = true;
                s.cv.notify_one();
            }
            None => q.driving = false,
        }
    }

    /// The connection failed: every caller in flight fails (`Unknown`), every queued one too
    /// (`NotSent`), and so does every later call.
    fn fail(&self, core: &mut Core, e: Error) {
        self.broken.store(true, Ordering::Release);
        core.conn.close();
        let queued = {
            let mut q = self.queue.lock();
            q.failed = Some(e.clone());
            q.buf.clear();
            q.driving = false;
            q.requests = 0;
            std::mem::take(&mut q.slots)
        };
        self.space.notify_all();
        for s in core.in_flight.drain(..) {
            s.finish(Err(e.clone().with_delivery(Delivery::Unknown)));
        }
        for s in queued {
            s.finish(Err(e.clone().with_delivery(Delivery::NotSent)));
        }
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.interrupter.interrupt();
    }
}

/// One multiplexed connection: a plain (TCP or unix) one, read by a thread of its own and
/// written by its callers, or a TLS one, driven by its callers (see the module docs).
#[derive(Debug)]
pub(crate) struct Mux {
    kind: Kind,
    /// The stamp of the generation it was opened in.
    pub(crate) generation: u64,
    max_value: u64,
}

#[derive(Debug)]
enum Kind {
    Split(Split),
    Driven(Box<Driven>),
}

impl Mux {
    /// Shares `conn` (a connection in the configured state).
    pub(crate) fn new(
        mut conn: Connection,
        limits: Limits,
        write_timeout: Duration,
        generation: u64,
    ) -> Result<Mux> {
        let max_value = conn.max_value();
        let kind = match conn.write_half() {
            Some(w) => Kind::Split(Split::start(conn, w, limits, write_timeout)?),
            None => Kind::Driven(Box::new(Driven::new(conn, limits, write_timeout))),
        };
        Ok(Mux {
            kind,
            generation,
            max_value,
        })
    }

    /// Whether the connection failed (every call now fails at once).
    pub(crate) fn is_broken(&self) -> bool {
        match &self.kind {
            Kind::Split(s) => s.inner.broken.load(Ordering::Acquire),
            Kind::Driven(d) => d.is_broken(),
        }
    }

    /// Closes the socket from outside (a black hole the heartbeat noticed): every caller in
    /// flight fails at once.
    pub(crate) fn interrupt(&self) {
        match &self.kind {
            Kind::Split(s) => s.inner.interrupt(),
            Kind::Driven(d) => d.interrupt(),
        }
    }

    /// Sends `packed` (`offset + count` commands) without waiting for its replies: several
    /// connections can be given requests before any reply is awaited (a cluster request
    /// over several nodes). A TLS connection, driven by its callers, runs the whole call
    /// here (its reply is ready when this returns).
    pub(crate) fn submit(
        &self,
        packed: &[u8],
        offset: usize,
        count: usize,
        deadline: Instant,
    ) -> Submitted<'_> {
        if let Err(e) = super::connection::check_sizes(packed, self.max_value) {
            return Submitted::Ready(Err(e));
        }
        match &self.kind {
            Kind::Split(s) => match s.inner.submit(packed, offset, count, deadline) {
                Ok(slot) => Submitted::Queued(&s.inner, slot),
                Err(e) => Submitted::Ready(Err(e)),
            },
            Kind::Driven(d) => Submitted::Ready(d.call(packed, offset, count, deadline)),
        }
    }

    /// Sends `packed` (`offset + count` commands) and returns the last `count` replies, all
    /// by `deadline`.
    pub(crate) fn call(
        &self,
        packed: &[u8],
        offset: usize,
        count: usize,
        deadline: Instant,
    ) -> Result<Vec<Value>> {
        super::connection::check_sizes(packed, self.max_value)?;
        match &self.kind {
            Kind::Split(s) => s.inner.call(packed, offset, count, deadline),
            Kind::Driven(d) => d.call(packed, offset, count, deadline),
        }
    }
}

/// A request given to a multiplexed connection, its replies to come ([`Mux::submit`]).
#[derive(Debug)]
pub(crate) enum Submitted<'a> {
    /// Written or queued: wait for it.
    Queued(&'a SplitInner, Arc<Slot>),
    /// Already done (or refused).
    Ready(Result<Vec<Value>>),
}

impl Submitted<'_> {
    /// The last `count` replies, by `deadline` (see [`Mux::call`] for the failures).
    pub(crate) fn wait(self, deadline: Instant) -> Result<Vec<Value>> {
        match self {
            Submitted::Queued(inner, slot) => inner.wait(&slot, deadline),
            Submitted::Ready(result) => result,
        }
    }
}

/// The write side of a split connection.
#[derive(Debug, Default)]
struct Outbox {
    buf: Vec<u8>,
    slots: Vec<Arc<Slot>>,
    /// A caller is writing (the others only queue).
    writing: bool,
    /// Set when the connection failed: every later call fails with it.
    failed: Option<Error>,
}

pub(crate) struct SplitInner {
    out: Mutex<Outbox>,
    /// Signalled when capacity frees up.
    space: Condvar,
    /// Only the caller that set `Outbox::writing` touches it.
    writer: Mutex<WriteHalf>,
    /// Written and waiting for replies, in order.
    pending: Mutex<VecDeque<Arc<Slot>>>,
    /// Requests queued or in flight.
    requests: std::sync::atomic::AtomicUsize,
    interrupter: Interrupter,
    broken: AtomicBool,
    addr: Addr,
    limits: Limits,
    write_timeout: Duration,
}

impl std::fmt::Debug for SplitInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitInner")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A plain connection: callers write (whoever finds nobody writing writes everything
/// queued, in one write), one thread (`redkit-mux-rd`) reads and hands out replies.
#[derive(Debug)]
struct Split {
    inner: Arc<SplitInner>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Split {
    fn start(
        conn: Connection,
        writer: WriteHalf,
        limits: Limits,
        write_timeout: Duration,
    ) -> Result<Split> {
        let mut conn = conn;
        let inner = Arc::new(SplitInner {
            out: Mutex::new(Outbox::default()),
            space: Condvar::new(),
            writer: Mutex::new(writer),
            pending: Mutex::new(VecDeque::new()),
            requests: std::sync::atomic::AtomicUsize::new(0),
            interrupter: conn.interrupter(),
            broken: AtomicBool::new(false),
            addr: conn.addr().clone(),
            limits,
            write_timeout,
        });
        let reading = inner.clone();
        let reader = std::thread::Builder::new()
            .name("redkit-mux-rd".into())
            .spawn(move || reading.read_loop(conn))
            .map_err(|e| {
                Error::io(
                    e.kind(),
                    format!("cannot start a reader thread: {e}"),
                    Delivery::NotSent,
                )
            })?;
        Ok(Split {
            inner,
            reader: Some(reader),
        })
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        self.inner.interrupt();
        if let Some(t) = self.reader.take() {
            if let Err(panic) = crate::util::threads::join_within(t, Duration::from_millis(100)) {
                log::warn!("the multiplexed reader thread had panicked: {panic}");
            }
        }
    }
}

impl SplitInner {
    fn interrupt(&self) {
        self.broken.store(true, Ordering::Release);
        self.interrupter.interrupt();
    }

    fn call(
        &self,
        packed: &[u8],
        offset: usize,
        count: usize,
        deadline: Instant,
    ) -> Result<Vec<Value>> {
        let slot = self.submit(packed, offset, count, deadline)?;
        self.wait(&slot, deadline)
    }

    /// Queues `packed` and writes the queue if nobody is writing; the reply is waited for
    /// with [`SplitInner::wait`].
    fn submit(
        &self,
        packed: &[u8],
        offset: usize,
        count: usize,
        deadline: Instant,
    ) -> Result<Arc<Slot>> {
        let slot = Slot::new(offset + count, offset, packed.len());
        let start = Instant::now();
        let mut out = self.out.lock();
        loop {
            if let Some(e) = &out.failed {
                return Err(e.clone().with_delivery(Delivery::NotSent));
            }
            let fits = self.requests.load(Ordering::Acquire) < self.limits.requests
                && (out.buf.is_empty() || out.buf.len() + packed.len() <= self.limits.bytes);
            if fits {
                break;
            }
            if self.space.wait_until(&mut out, deadline).timed_out() {
                return Err(Error::PoolTimeout {
                    waited: start.elapsed(),
                });
            }
        }
        out.buf.extend_from_slice(packed);
        out.slots.push(slot.clone());
        self.requests.fetch_add(1, Ordering::AcqRel);
        if !out.writing {
            out.writing = true;
            if self.requests.load(Ordering::Acquire) > BUSY {
                // Many callers in flight: let the others woken with this one queue their
                // requests too, so that one write carries them all.
                drop(out);
                std::thread::yield_now();
                out = self.out.lock();
            }
            self.write_out(out);
        } else {
            drop(out);
        }
        Ok(slot)
    }

    /// Writes everything queued, again while more comes, then stops writing.
    fn write_out<'a>(&'a self, mut out: parking_lot::MutexGuard<'a, Outbox>) {
        loop {
            let buf = std::mem::take(&mut out.buf);
            let slots = std::mem::take(&mut out.slots);
            if slots.is_empty() {
                out.writing = false;
                return;
            }
            for s in &slots {
                let mut st = s.st.lock();
                if let Phase::Queued = st.phase {
                    st.phase = Phase::Written;
                }
            }
            // In the order of the bytes: the reader matches replies to this queue.
            self.pending.lock().extend(slots.iter().cloned());
            drop(out);
            self.space.notify_all();
            let written = self
                .writer
                .lock()
                .write_all_by(&buf, time::after(self.write_timeout));
            out = self.out.lock();
            if let Err((n, e)) = written {
                let delivery = if n == 0 {
                    Delivery::NotSent
                } else {
                    Delivery::Unknown
                };
                let e = crate::conn::socket::io_error(&self.addr, "cannot write to", &e, delivery);
                out.writing = false;
                drop(out);
                // The reader sees the socket fail and fails everything in flight; these
                // just written fail with the write's own delivery.
                for s in &slots {
                    s.finish(Err(e.clone()));
                }
                self.interrupt();
                return;
            }
        }
    }

    /// Waits for `slot`'s result by `deadline`. A caller alone on the connection spins for a
    /// few tens of microseconds first (a reply on loopback comes that fast; sleeping and
    /// being woken would cost as much again).
    fn wait(&self, slot: &Arc<Slot>, deadline: Instant) -> Result<Vec<Value>> {
        if self.requests.load(Ordering::Acquire) <= 1 {
            // Spin briefly, then yield the core (the reader thread may need it: on a busy
            // machine a caller that only spins would keep its own reply from being read).
            let spin_until = Instant::now() + SPIN;
            let mut n = 0u32;
            while !slot.done.load(Ordering::Acquire) {
                n = n.wrapping_add(1);
                if n < 64 {
                    std::hint::spin_loop();
                    continue;
                }
                if Instant::now() >= spin_until {
                    break;
                }
                std::thread::yield_now();
            }
        }
        let mut st = slot.st.lock();
        loop {
            if matches!(st.phase, Phase::Done(_)) {
                return match std::mem::replace(&mut st.phase, Phase::Taken) {
                    Phase::Done(result) => result,
                    _ => Err(failure(&self.addr, "lost a reply", Delivery::Unknown)),
                };
            }
            if Instant::now() >= deadline {
                drop(st);
                return Err(self.give_up(slot));
            }
            slot.cv.wait_until(&mut st, deadline);
        }
    }

    /// The caller of `slot` gives up at its deadline (see [`Driven::give_up`]).
    fn give_up(&self, slot: &Arc<Slot>) -> Error {
        let removed = {
            let mut out = self.out.lock();
            match out.slots.iter().position(|s| Arc::ptr_eq(s, slot)) {
                Some(i) => {
                    let start: usize = out.slots[..i].iter().map(|s| s.len).sum();
                    let end = (start + slot.len).min(out.buf.len());
                    out.buf.drain(start.min(end)..end);
                    out.slots.remove(i);
                    self.requests.fetch_sub(1, Ordering::AcqRel);
                    self.space.notify_all();
                    true
                }
                None => false,
            }
        };
        let mut st = slot.st.lock();
        let was_done = matches!(st.phase, Phase::Done(_));
        st.phase = match st.phase {
            Phase::Written if !removed => Phase::Abandoned,
            _ => Phase::Taken,
        };
        let delivery = if removed {
            Delivery::NotSent
        } else {
            Delivery::Unknown
        };
        let _ = was_done;
        Error::io(
            io::ErrorKind::TimedOut,
            format!("no reply from {} in time (multiplexed)", self.addr),
            delivery,
        )
    }

    /// The reader thread: replies to callers in order, until the connection fails.
    fn read_loop(&self, mut conn: Connection) {
        loop {
            match conn.read_frame(time::after(Duration::from_secs(60))) {
                Ok(None) => {
                    if self.broken.load(Ordering::Acquire) {
                        return;
                    }
                }
                Ok(Some(Value::Push { .. })) => {}
                Ok(Some(v)) => {
                    if !self.reply(v) {
                        let e = failure(
                            &self.addr,
                            "got a reply nobody asked for",
                            Delivery::Unknown,
                        );
                        self.fail(&mut conn, e);
                        return;
                    }
                }
                Err(e) => {
                    self.fail(&mut conn, e);
                    return;
                }
            }
        }
    }

    /// One reply, to the oldest request in flight; `false` when there is none.
    fn reply(&self, v: Value) -> bool {
        let mut pending = self.pending.lock();
        let Some(front) = pending.front() else {
            return false;
        };
        let complete = {
            let mut st = front.st.lock();
            st.values.push(v);
            st.values.len() >= front.expect
        };
        if complete {
            if let Some(slot) = pending.pop_front() {
                drop(pending);
                let values = {
                    let mut st = slot.st.lock();
                    let mut values = std::mem::take(&mut st.values);
                    values.drain(..slot.offset.min(values.len()));
                    values
                };
                slot.finish(Ok(values));
                self.requests.fetch_sub(1, Ordering::AcqRel);
                self.space.notify_all();
            }
        }
        true
    }

    /// The connection failed: every caller in flight fails (`Unknown`), every queued one
    /// (`NotSent`), and every later call.
    fn fail(&self, conn: &mut Connection, e: Error) {
        self.broken.store(true, Ordering::Release);
        conn.close();
        let queued = {
            let mut out = self.out.lock();
            out.failed = Some(e.clone());
            out.buf.clear();
            std::mem::take(&mut out.slots)
        };
        let in_flight: Vec<_> = self.pending.lock().drain(..).collect();
        self.requests.store(0, Ordering::Release);
        self.space.notify_all();
        for s in in_flight {
            s.finish(Err(e.clone().with_delivery(Delivery::Unknown)));
        }
        for s in queued {
            s.finish(Err(e.clone().with_delivery(Delivery::NotSent)));
        }
    }
}
