//! One RESP connection's request loop, closed or open, with the replies decoded by
//! skiff-net's RESP codec.
//!
//! - Closed loop (default): like `redis-benchmark -P N`, write N requests at once, read
//!   the N replies, repeat; each latency runs from the batch's write to its reply.
//! - Open loop (`--rate`): requests fall due on a fixed schedule whether or not earlier
//!   ones have been answered; up to `--pipeline` are in flight. Each latency runs from
//!   the request's *intended* send time, so a server stall shows up as latency of every
//!   request that was due during it, not only of the one that hit it (wrk2's
//!   correction for coordinated omission).
//!
//! RESP replies come back in order and cannot be skipped, so a timeout or a broken
//! connection fails every request in flight on it; the connection is reopened and the
//! run goes on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use skiff_net::{ReplyDecoder, RespLimits, RespValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::{Control, Recorder, error_reply_kind, kind};
use crate::workload::{Generator, Op, RespTemplates};

/// Spare receive-buffer room ensured before each read: many pipelined replies per
/// system call. The buffer is reused, so this is allocated once per connection (160
/// MiB at the 10,000-client maximum); a larger reply grows it as it arrives.
pub const READ_BUF_BYTES: usize = 16 << 10;
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// First wait before reconnecting after a failure; doubled up to the maximum, so a
/// dead server is not hammered with connection attempts.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What one connection task needs.
#[derive(Debug)]
pub struct ConnSpec {
    pub target: SocketAddr,
    pub pipeline: usize,
    pub timeout: Duration,
    pub generator: Generator,
    /// Open loop: time between this connection's requests, and when the first is due.
    pub schedule: Option<(Duration, Instant)>,
}

/// Why requests in flight failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Timeout,
    Connection,
    Protocol,
}

impl Failure {
    fn kind(self) -> &'static str {
        match self {
            Failure::Timeout => kind::TIMEOUT,
            Failure::Connection => kind::CONNECTION,
            Failure::Protocol => kind::PROTOCOL,
        }
    }
}

/// An open connection and its receive state.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    dec: ReplyDecoder,
}

impl Conn {
    fn new(stream: TcpStream, mut rbuf: BytesMut) -> Conn {
        rbuf.clear();
        Conn { stream, rbuf, dec: ReplyDecoder::new(RespLimits::default()) }
    }

    /// Reads once from the socket into the buffer.
    async fn fill(&mut self) -> Result<(), Failure> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_BUF_BYTES {
            self.rbuf.reserve(READ_BUF_BYTES);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) | Err(_) => Err(Failure::Connection),
            Ok(_) => Ok(()),
        }
    }

    fn next_reply(&mut self) -> Result<Option<RespValue>, Failure> {
        self.dec.decode(&mut self.rbuf).map_err(|_| Failure::Protocol)
    }
}

async fn connect(target: SocketAddr) -> Option<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await.ok()?.ok()?;
    // Requests are small and latency is the point: no Nagle delay.
    stream.set_nodelay(true).ok()?;
    Some(stream)
}

/// Records the outcome of one reply to a measured request.
fn record_reply(rec: &mut Recorder, op: Op, reply: &RespValue, latency: Duration, now: Instant) {
    match (op, reply) {
        (_, RespValue::Error(text)) => rec.error(error_reply_kind(text), 1, now),
        (Op::Write, RespValue::Simple(s)) if s.as_ref() == b"OK" => rec.ok(op, latency, now),
        (Op::Read, RespValue::Bulk(_) | RespValue::NullBulk) => rec.ok(op, latency, now),
        _ => rec.error(kind::UNEXPECTED, 1, now),
    }
}

/// Runs one connection until the run stops, recording into `rec`.
pub async fn run_connection(
    spec: ConnSpec,
    templates: Rc<RespTemplates>,
    control: Arc<Control>,
    rec: Rc<RefCell<Recorder>>,
) {
    match spec.schedule {
        None => closed_loop(spec, &templates, &control, &rec).await,
        Some((interval, first)) => {
            let next_due = open_loop(spec, interval, first, &templates, &control, &rec).await;
            rec.borrow_mut().unsent += control.unsent_due(next_due, interval);
        }
    }
}

/// Connects, retrying with backoff until it succeeds or the run stops.
async fn connect_until_stopped(
    target: SocketAddr,
    control: &Control,
    rec: &RefCell<Recorder>,
    backoff: &mut Duration,
) -> Option<TcpStream> {
    loop {
        if control.stopping() {
            return None;
        }
        if let Some(s) = connect(target).await {
            *backoff = RECONNECT_BACKOFF_MIN;
            return Some(s);
        }
        rec.borrow_mut().connect_failures += 1;
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

async fn closed_loop(mut spec: ConnSpec, templates: &RespTemplates, control: &Control, rec: &RefCell<Recorder>) {
    let mut wbuf = BytesMut::with_capacity(templates.request_bytes_max() * spec.pipeline);
    let mut spare_rbuf = Some(BytesMut::with_capacity(READ_BUF_BYTES));
    let mut conn: Option<Conn> = None;
    let mut inflight: VecDeque<Op> = VecDeque::with_capacity(spec.pipeline);
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        if control.stopping() {
            return;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => {
                let Some(stream) = connect_until_stopped(spec.target, control, rec, &mut backoff).await else {
                    return;
                };
                conn.insert(Conn::new(stream, spare_rbuf.take().unwrap_or_default()))
            }
        };
        let (n, counted) = control.claim(spec.pipeline as u64);
        if n == 0 {
            return;
        }
        wbuf.clear();
        inflight.clear();
        for _ in 0..n {
            let (op, key) = spec.generator.next_request();
            templates.encode(op, key, &mut wbuf);
            inflight.push_back(op);
        }
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent + spec.timeout);
        let result = match tokio::time::timeout_at(deadline, c.stream.write_all(&wbuf)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(_)) => Err(Failure::Connection),
            Ok(Ok(())) => read_batch(c, &mut inflight, sent, deadline, counted, rec).await,
        };
        if let Err(failure) = result {
            if counted {
                rec.borrow_mut().error(failure.kind(), inflight.len() as u64, Instant::now());
            }
            inflight.clear();
            spare_rbuf = conn.take().map(|c| c.rbuf);
            if failure == Failure::Connection {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
        }
    }
}

/// Reads the replies of one closed-loop batch.
async fn read_batch(
    c: &mut Conn,
    inflight: &mut VecDeque<Op>,
    sent: Instant,
    deadline: tokio::time::Instant,
    counted: bool,
    rec: &RefCell<Recorder>,
) -> Result<(), Failure> {
    while !inflight.is_empty() {
        match tokio::time::timeout_at(deadline, c.fill()).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(r) => r?,
        }
        // Every reply in this read arrived together: one clock read for all.
        let now = Instant::now();
        while let Some(reply) = c.next_reply()? {
            let Some(op) = inflight.pop_front() else { return Err(Failure::Protocol) };
            if counted {
                record_reply(&mut rec.borrow_mut(), op, &reply, now - sent, now);
            } else {
                rec.borrow_mut().unmeasured += 1;
            }
        }
    }
    Ok(())
}

/// A request in flight in the open loop.
#[derive(Clone, Copy, Debug)]
struct Slot {
    intended: Instant,
    sent: Instant,
    op: Op,
    counted: bool,
}

async fn open_loop(
    mut spec: ConnSpec,
    interval: Duration,
    first: Instant,
    templates: &RespTemplates,
    control: &Control,
    rec: &RefCell<Recorder>,
) -> Instant {
    let window = spec.pipeline;
    let mut wbuf = BytesMut::with_capacity(templates.request_bytes_max() * window);
    let mut spare_rbuf = Some(BytesMut::with_capacity(READ_BUF_BYTES));
    let mut conn: Option<Conn> = None;
    let mut inflight: VecDeque<Slot> = VecDeque::with_capacity(window);
    let mut next_due = first;
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut reconnect_at = Instant::now();
    loop {
        let now = Instant::now();
        let stopping = control.stopping();
        if stopping && inflight.is_empty() {
            return next_due;
        }
        let Some(c) = &mut conn else {
            if stopping {
                return next_due;
            }
            if now >= reconnect_at {
                match connect(spec.target).await {
                    Some(stream) => {
                        conn = Some(Conn::new(stream, spare_rbuf.take().unwrap_or_default()));
                        backoff = RECONNECT_BACKOFF_MIN;
                        continue;
                    }
                    None => {
                        rec.borrow_mut().connect_failures += 1;
                        reconnect_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    }
                }
            }
            // Still no connection: requests due by now cannot be sent, and a real
            // client would have failed them at once.
            let now = Instant::now();
            while next_due <= now && !control.stopping() {
                if control.counts_intended(next_due) {
                    if control.take_budget(1) == 0 {
                        break;
                    }
                    rec.borrow_mut().error(kind::CONNECTION, 1, now);
                }
                next_due += interval;
            }
            if control.stopping() {
                return next_due;
            }
            tokio::time::sleep_until(next_due.min(reconnect_at).into()).await;
            continue;
        };

        // Send every request that is due and fits in the window.
        wbuf.clear();
        while !control.stopping() && inflight.len() < window && next_due <= now {
            let counted = control.counts_intended(next_due);
            if counted && control.take_budget(1) == 0 {
                break;
            }
            let (op, key) = spec.generator.next_request();
            templates.encode(op, key, &mut wbuf);
            inflight.push_back(Slot { intended: next_due, sent: now, op, counted });
            next_due += interval;
        }
        let mut failure = None;
        if !wbuf.is_empty() {
            let deadline = tokio::time::Instant::from_std(now + spec.timeout);
            match tokio::time::timeout_at(deadline, c.stream.write_all(&wbuf)).await {
                Err(_) => failure = Some(Failure::Timeout),
                Ok(Err(_)) => failure = Some(Failure::Connection),
                Ok(Ok(())) => {}
            }
        }

        if failure.is_none() {
            let room = inflight.len() < window && !control.stopping();
            let oldest_deadline = inflight.front().map(|s| s.sent + spec.timeout);
            let wake = match (room, oldest_deadline) {
                (true, Some(d)) => next_due.min(d),
                (true, None) => next_due,
                (false, Some(d)) => d,
                // Stopping with nothing in flight returned above; a full window has a
                // request in flight.
                (false, None) => now,
            };
            tokio::select! {
                r = c.fill() => {
                    failure = match r {
                        Err(f) => Some(f),
                        Ok(()) => complete_open(c, &mut inflight, rec).err(),
                    };
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if inflight.front().is_some_and(|s| Instant::now() >= s.sent + spec.timeout) {
                        failure = Some(Failure::Timeout);
                    }
                }
            }
        }
        if let Some(f) = failure {
            let counted = inflight.iter().filter(|s| s.counted).count() as u64;
            rec.borrow_mut().error(f.kind(), counted, Instant::now());
            inflight.clear();
            spare_rbuf = conn.take().map(|c| c.rbuf);
            if f == Failure::Connection {
                reconnect_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
        }
    }
}

/// Records the replies buffered after a read (open loop): each latency runs from the
/// request's intended send time.
fn complete_open(c: &mut Conn, inflight: &mut VecDeque<Slot>, rec: &RefCell<Recorder>) -> Result<(), Failure> {
    let now = Instant::now();
    while let Some(reply) = c.next_reply()? {
        let Some(slot) = inflight.pop_front() else { return Err(Failure::Protocol) };
        if slot.counted {
            record_reply(&mut rec.borrow_mut(), slot.op, &reply, now - slot.intended, now);
        } else {
            rec.borrow_mut().unmeasured += 1;
        }
    }
    Ok(())
}
