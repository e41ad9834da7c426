//! The admin HTTP port: status, Prometheus metrics and histograms read from what the
//! shards [publish](crate::metrics::Published), and operator operations forwarded to a
//! shard over a cross-thread channel.
//!
//! # Threads
//!
//! The server runs on one unpinned OS thread of its own with a tokio current-thread
//! runtime and hyper's HTTP/1.1 server (RUNTIME-NOTES.md, "Admin HTTP"). It never
//! touches a shard's state: it reads the latest published reports, and it sends
//! operations ([`Op`]) through [`OpsSender`]; each shard owns an [`OpsReceiver`] whose
//! [`recv`](OpsReceiver::recv) future is woken from this thread (a plain `Waker`, which
//! glommio executors accept from foreign threads), and answers through
//! [`OpRequest::reply`].
//!
//! # Robustness
//!
//! The port faces whatever reaches it, so every input is bounded ([`AdminLimits`]):
//! request head size, body size, the time to send a request head (slowloris, also idle
//! keep-alive connections), the time to send a body, the time a client may leave a
//! response unread, and the number of connections.
//! A malformed or oversized request closes its own connection only; no input makes the
//! handler panic (responses are built without `unwrap`).
//!
//! # Layout
//!
//! - [`AdminServer`], [`AdminHandle`], [`AdminLimits`]: starting and stopping.
//! - [`Op`], [`OpReply`], [`OpRequest`], [`ops_channel`]: operations.
//! - Request routing and parameter parsing, then the three renderers: `/status` JSON,
//!   `/metrics` Prometheus text, `/histograms` JSON and percentile text.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use serde_json::{Value, json};
use skiff_engine::NodeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::{HistogramKey, NodeInfo, Published, Recorded, RejectReason, ShardReport, TransportCounters, Unit};

/// Largest request head (request line plus headers) accepted, in bytes. Admin requests
/// are a path and a short query; 64 KiB leaves room for any client's headers and
/// refuses floods with 431.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;

/// Most header fields in one request (hyper's default, named here): no admin client
/// sends more than a dozen.
pub const HEADERS_COUNT_MAX: usize = 100;

/// Largest request body accepted, in bytes. Operations take their parameters in the
/// query string; a body is read (so keep-alive works) and ignored, and a larger one is
/// refused with 413.
pub const BODY_BYTES_MAX: usize = 4 * 1024;

/// Time a client has to send a complete request head, from the connection opening or
/// the previous response. Closes slowloris connections and idle keep-alive connections
/// alike, so a stalled client cannot hold one of [`CONNECTIONS_MAX`] for long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client has to send a request body once the head arrived.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. An operator, a Prometheus scraper and `skiff ctl` need a
/// handful; the bound keeps a connection flood from costing memory or file descriptors
/// the shards need. Connections past it get a 503 and are closed.
pub const CONNECTIONS_MAX: usize = 64;

/// How long an operation waits for its shard's answer before the client gets 503. A
/// membership change answers once committed, which takes an election at worst; ten
/// seconds covers several election timeouts at the default timing.
pub const OP_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client may leave a response unread (the socket accepting no bytes) before its
/// connection is dropped: a client that never reads would otherwise hold a connection
/// slot forever, since hyper has no write timeout of its own.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Operations queued per shard and not yet taken. Operators issue them one at a time;
/// a full queue answers 503 rather than growing.
pub const OPS_QUEUE_MAX: usize = 16;

/// Query parameters accepted in one request (every endpoint takes at most four).
pub const QUERY_PARAMS_MAX: usize = 16;

/// Pause after a failed `accept` (for example EMFILE) so a persistent failure does not
/// spin the thread.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

const CONTENT_TYPE_JSON: &str = "application/json";
const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
/// The Prometheus text exposition format, version 0.0.4.
const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bounds on what clients may do (defaults: the constants above). Tests shorten the
/// timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// Default [`HEADER_BYTES_MAX`].
    pub header_bytes_max: usize,
    /// Default [`BODY_BYTES_MAX`].
    pub body_bytes_max: usize,
    /// Default [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// Default [`BODY_READ_TIMEOUT`].
    pub body_read_timeout: Duration,
    /// Default [`CONNECTIONS_MAX`].
    pub connections_max: usize,
    /// Default [`OP_REPLY_TIMEOUT`].
    pub op_reply_timeout: Duration,
    /// Default [`WRITE_STALL_TIMEOUT`].
    pub write_stall_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            header_bytes_max: HEADER_BYTES_MAX,
            body_bytes_max: BODY_BYTES_MAX,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            connections_max: CONNECTIONS_MAX,
            op_reply_timeout: OP_REPLY_TIMEOUT,
            write_stall_timeout: WRITE_STALL_TIMEOUT,
        }
    }
}

/// Errors starting or stopping the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listener could not be made non-blocking, the runtime or thread not created.
    #[error("admin port: cannot start the HTTP server: {0}")]
    Setup(#[from] std::io::Error),
    /// The server thread panicked (a bug: it is written not to).
    #[error("admin port: the HTTP server thread panicked")]
    Panicked,
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// An operator operation, for one shard's Raft group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `POST /transfer-leader?to=ID`: hand leadership to `to` (etcd
    /// `TransferLeadership`).
    TransferLeader { to: NodeId },
    /// `POST /members/add?id=ID[&addr=HOST:PORT][&learner=true]`. The member's address
    /// is the one in the node's cluster list; `addr`, when given, has been checked
    /// against it.
    AddMember { id: NodeId, addr: Option<String>, learner: bool },
    /// `POST /members/remove?id=ID`.
    RemoveMember { id: NodeId },
    /// `POST /members/promote?id=ID`: a learner becomes a voter.
    PromoteMember { id: NodeId },
    /// `POST /election-timeout?ticks=N`: change the election timeout through the log
    /// (OVS `cluster/change-election-timer`).
    SetElectionTimeout { ticks: u64 },
}

impl Op {
    /// The operation's name as in its path.
    pub fn name(&self) -> &'static str {
        match self {
            Op::TransferLeader { .. } => "transfer-leader",
            Op::AddMember { .. } => "members/add",
            Op::RemoveMember { .. } => "members/remove",
            Op::PromoteMember { .. } => "members/promote",
            Op::SetElectionTimeout { .. } => "election-timeout",
        }
    }

    /// The query parameter naming what the operation acts on.
    pub fn parameter(&self) -> &'static str {
        match self {
            Op::TransferLeader { .. } => "to",
            Op::AddMember { .. } | Op::RemoveMember { .. } | Op::PromoteMember { .. } => "id",
            Op::SetElectionTimeout { .. } => "ticks",
        }
    }
}

/// A shard's answer to an [`Op`], and the HTTP status it becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpReply {
    /// 200: done (or, for a leadership transfer, started); the text says what happened.
    Done(String),
    /// 409: only the leader can do this; `leader` is the known leader (0: none known).
    NotLeader { leader: NodeId },
    /// 409: refused in the current state (already a member, change in progress, ...).
    Conflict(String),
    /// 400: a parameter the shard found invalid (for example an id not in the group).
    Invalid { parameter: &'static str, reason: String },
    /// 503: cannot be done now (shutting down); retrying later may succeed.
    Unavailable(String),
    /// 500: failed.
    Failed(String),
}

/// An operation for a shard, with the channel its answer goes back through.
#[derive(Debug)]
pub struct OpRequest {
    pub shard: u32,
    pub op: Op,
    reply: oneshot::Sender<OpReply>,
}

impl OpRequest {
    /// Sends the shard's answer back to the waiting HTTP request. Returns `false` when
    /// nobody waits any more (the client left or the wait timed out); the operation's
    /// effect stands either way.
    pub fn reply(self, reply: OpReply) -> bool {
        self.reply.send(reply).is_ok()
    }
}

/// The admin side of the operations channel: one bounded queue per shard.
#[derive(Clone, Debug)]
pub struct OpsSender {
    queues: Arc<[mpsc::Sender<OpRequest>]>,
}

/// A shard's side of the operations channel.
///
/// Runtime-agnostic: [`OpsReceiver::recv`] is a plain future whose waker the admin
/// thread calls when an operation arrives, so a glommio executor parked in it is woken
/// from the admin thread; [`OpsReceiver::try_recv`] suits a loop that polls between
/// Ready iterations.
#[derive(Debug)]
pub struct OpsReceiver {
    shard: u32,
    rx: mpsc::Receiver<OpRequest>,
}

/// Creates the operations channel for `shards` shards: the sender for
/// [`AdminServer::start`], and one receiver per shard, in shard order.
pub fn ops_channel(shards: u32) -> (OpsSender, Vec<OpsReceiver>) {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|shard| {
            let (tx, rx) = mpsc::channel(OPS_QUEUE_MAX);
            (tx, OpsReceiver { shard, rx })
        })
        .unzip();
    (OpsSender { queues: senders.into() }, receivers)
}

/// Why an operation could not be handed to its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
enum SubmitError {
    #[error("shard {shard} has {OPS_QUEUE_MAX} operations queued; retry shortly")]
    Full { shard: u32 },
    #[error("shard {shard} is not running")]
    Closed { shard: u32 },
}

impl OpsSender {
    /// Number of shards operations can go to.
    pub fn shard_count(&self) -> u32 {
        self.queues.len() as u32
    }

    /// Queues `op` for `shard` without waiting; the receiver answers through the
    /// returned channel. `shard` must be below [`OpsSender::shard_count`] (checked by
    /// the caller, which reports it as a bad parameter).
    fn submit(&self, shard: u32, op: Op) -> Result<oneshot::Receiver<OpReply>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queues.get(shard as usize).ok_or(SubmitError::Closed { shard })?;
        queue.try_send(OpRequest { shard, op, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Full { shard },
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed { shard },
        })?;
        Ok(answer)
    }
}

impl OpsReceiver {
    /// The shard this receiver belongs to.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The next operation; `None` once the admin server has stopped (every sender gone).
    /// Works on any executor: the sending thread wakes the task.
    pub async fn recv(&mut self) -> Option<OpRequest> {
        self.rx.recv().await
    }

    /// The next operation if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<OpRequest> {
        self.rx.try_recv().ok()
    }

    /// Blocks the calling thread until an operation arrives; `None` once the admin
    /// server has stopped. For plain threads (tests, tools), never an executor.
    ///
    /// # Panics
    ///
    /// If called from inside a tokio runtime (it would block that runtime's thread).
    pub fn recv_blocking(&mut self) -> Option<OpRequest> {
        self.rx.blocking_recv()
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// Starts the admin HTTP server.
#[derive(Debug)]
pub struct AdminServer;

/// The running admin server. [`AdminHandle::shutdown`] (or dropping the handle) stops
/// it: the listener closes and open connections are dropped.
#[derive(Debug)]
pub struct AdminHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct State {
    published: Arc<Published>,
    ops: OpsSender,
    limits: AdminLimits,
}

impl AdminServer {
    /// Serves `listener` (already bound, e.g. to the configured admin address) on a new
    /// thread named `skiff-admin`, with the default [`AdminLimits`].
    pub fn start(
        listener: std::net::TcpListener,
        published: Arc<Published>,
        ops: OpsSender,
    ) -> Result<AdminHandle, AdminError> {
        AdminServer::start_with_limits(listener, published, ops, AdminLimits::default())
    }

    /// As [`AdminServer::start`], with explicit limits.
    pub fn start_with_limits(
        listener: std::net::TcpListener,
        published: Arc<Published>,
        ops: OpsSender,
        limits: AdminLimits,
    ) -> Result<AdminHandle, AdminError> {
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        // Registering the socket needs the runtime's context; done here so a failure is
        // reported to the caller rather than lost on the thread.
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = oneshot::channel();
        let state = Arc::new(State { published, ops, limits });
        let thread = std::thread::Builder::new().name("skiff-admin".to_string()).spawn(move || {
            runtime.block_on(accept_loop(listener, state, stopped));
            // Dropping the runtime here cancels every connection task.
        })?;
        Ok(AdminHandle { local_addr, stop: Some(stop), thread: Some(thread) })
    }
}

impl AdminHandle {
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and waits for its thread to finish.
    pub fn shutdown(mut self) -> Result<(), AdminError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), AdminError> {
        if let Some(stop) = self.stop.take() {
            // The thread may have ended already; then there is nobody to tell.
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| AdminError::Panicked),
            None => Ok(()),
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            warn!("{e}");
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>, mut stopped: oneshot::Receiver<()>) {
    let permits = Arc::new(Semaphore::new(state.limits.connections_max));
    loop {
        tokio::select! {
            // A stop message or the handle vanishing (sender dropped) both stop.
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let state = Arc::clone(&state);
                        tokio::spawn(async move {
                            serve_connection(stream, peer, state).await;
                            drop(permit);
                        });
                    }
                    Err(_) => refuse(stream, peer, state.limits.connections_max),
                },
                Err(e) => {
                    // Aborted handshakes are the client's business; anything else (EMFILE)
                    // would repeat at once, so pause.
                    if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        warn!("admin port: accept failed: {e}");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
            },
        }
    }
}

/// Answers a connection over the limit with 503 (best effort, never waiting) and closes it.
fn refuse(stream: tokio::net::TcpStream, peer: SocketAddr, connections_max: usize) {
    let body = format!("too many admin connections (limit {connections_max}); retry later\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {CONTENT_TYPE_TEXT}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.try_write(response.as_bytes()) {
        debug!("admin port: refusing {peer}: {e}");
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, state: Arc<State>) {
    // Responses are small and clients wait for each: without this, Nagle's algorithm
    // and delayed ACKs add tens of milliseconds per keep-alive request.
    if let Err(e) = stream.set_nodelay(true) {
        debug!("admin port: TCP_NODELAY for {peer}: {e}");
    }
    let limits = state.limits;
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(req, &state).await) }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.header_bytes_max)
        .max_headers(HEADERS_COUNT_MAX)
        .keep_alive(true)
        .serve_connection(TokioIo::new(WriteDeadline::new(stream, limits.write_stall_timeout)), service)
        .await;
    if let Err(e) = result {
        // Malformed requests, timeouts and resets end only this connection.
        debug!("admin port: connection from {peer} ended: {e}");
    }
}

/// A stream whose writes fail with `TimedOut` once the peer has accepted no bytes for
/// `timeout`: the write side of the slowloris defence (the read side is hyper's header
/// timeout).
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Running while a write (or flush) is blocked; cleared by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline { inner, timeout, stalled: None }
    }

    /// Turns a pending write into an error once the stall has lasted `timeout`.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("client read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    respond(status, CONTENT_TYPE_TEXT, body)
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(status, CONTENT_TYPE_JSON, body)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")),
    }
}

/// The endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Status,
    Metrics,
    Histograms,
    Histogram(String),
    TransferLeader,
    MembersAdd,
    MembersRemove,
    MembersPromote,
    ElectionTimeout,
    /// `failpoints` builds only.
    Failpoints,
    Failpoint(String),
}

impl Route {
    fn resolve(path: &str) -> Option<Route> {
        Route::resolve_in(path, crate::failpoints::ENABLED)
    }

    /// `failpoints`: whether this build has failure points (their routes exist only then).
    fn resolve_in(path: &str, failpoints: bool) -> Option<Route> {
        Some(match path {
            "/status" => Route::Status,
            "/metrics" => Route::Metrics,
            "/histograms" => Route::Histograms,
            "/transfer-leader" => Route::TransferLeader,
            "/members/add" => Route::MembersAdd,
            "/members/remove" => Route::MembersRemove,
            "/members/promote" => Route::MembersPromote,
            "/election-timeout" => Route::ElectionTimeout,
            "/debug/failpoints" if failpoints => Route::Failpoints,
            _ if failpoints && path.starts_with("/debug/failpoints/") => {
                let name = &path["/debug/failpoints/".len()..];
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                Route::Failpoint(name.to_string())
            }
            _ => {
                let name = path.strip_prefix("/histograms/")?;
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                Route::Histogram(name.to_string())
            }
        })
    }

    fn method(&self) -> Method {
        match self {
            Route::Status | Route::Metrics | Route::Histograms | Route::Histogram(_) | Route::Failpoints => Method::GET,
            _ => Method::POST,
        }
    }
}

const PATHS: &str = "GET /status, GET /metrics, GET /histograms, GET /histograms/NAME, POST /transfer-leader, \
                     POST /members/add, POST /members/remove, POST /members/promote, POST /election-timeout";

async fn handle(req: Request<Incoming>, state: &State) -> Response<Body> {
    let limits = state.limits;
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.body_bytes_max as u64) {
        return text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {} bytes", limits.body_bytes_max));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    // Read (and discard) any body, bounded in size and time, so the connection stays
    // usable for the next request.
    let body = Limited::new(req.into_body(), limits.body_bytes_max).collect();
    match tokio::time::timeout(limits.body_read_timeout, body).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return if e.is::<http_body_util::LengthLimitError>() {
                text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {} bytes", limits.body_bytes_max))
            } else {
                text(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))
            };
        }
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "request body not received in time"),
    }
    let Some(route) = Route::resolve(&path) else {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}; endpoints: {PATHS}"));
    };
    if method != route.method() {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes {} only", route.method()));
        let allow = if route.method() == Method::GET { "GET" } else { "POST" };
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    let params = match Params::parse(&query) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    match route_request(route, &params, state).await {
        Ok(response) => response,
        Err(e) => e.response(),
    }
}

async fn route_request(route: Route, params: &Params, state: &State) -> Result<Response<Body>, BadRequest> {
    match route {
        Route::Status => {
            params.allow(&[])?;
            Ok(json_response(StatusCode::OK, &status_json(&state.published)))
        }
        Route::Metrics => {
            params.allow(&[])?;
            Ok(respond(StatusCode::OK, CONTENT_TYPE_PROMETHEUS, render_metrics(&state.published)))
        }
        Route::Histograms => {
            params.allow(&["shard"])?;
            let shard = params.shard(state.published.shard_count(), None)?;
            Ok(json_response(StatusCode::OK, &histograms_json(&state.published, shard)))
        }
        Route::Histogram(name) => {
            params.allow(&["shard"])?;
            let shard = params.shard(state.published.shard_count(), None)?;
            Ok(histogram_text(&state.published, &name, shard))
        }
        Route::TransferLeader => {
            params.allow(&["to", "shard"])?;
            let op = Op::TransferLeader { to: params.node_id("to")? };
            run_op(state, params, op).await
        }
        Route::MembersAdd => {
            params.allow(&["id", "addr", "learner", "shard"])?;
            let id = params.node_id("id")?;
            let addr = match params.get("addr") {
                Some(_) => Some(params.addr("addr")?),
                None => None,
            };
            if let Some(given) = &addr {
                check_member_addr(&state.published.node(), id, given)?;
            }
            let op = Op::AddMember { id, addr, learner: params.flag("learner")?.unwrap_or(false) };
            run_op(state, params, op).await
        }
        Route::MembersRemove => {
            params.allow(&["id", "shard"])?;
            let op = Op::RemoveMember { id: params.node_id("id")? };
            run_op(state, params, op).await
        }
        Route::MembersPromote => {
            params.allow(&["id", "shard"])?;
            let op = Op::PromoteMember { id: params.node_id("id")? };
            run_op(state, params, op).await
        }
        Route::ElectionTimeout => {
            params.allow(&["ticks", "shard"])?;
            let ticks = params.u64("ticks")?;
            if ticks == 0 {
                return Err(BadRequest::param("ticks", "must be at least 1"));
            }
            run_op(state, params, Op::SetElectionTimeout { ticks }).await
        }
        Route::Failpoints => {
            params.allow(&[])?;
            Ok(failpoints_json())
        }
        Route::Failpoint(name) => arm_failpoint(&name, params),
    }
}

#[cfg(feature = "failpoints")]
fn failpoints_json() -> Response<Body> {
    json_response(StatusCode::OK, &crate::failpoints::describe())
}

#[cfg(feature = "failpoints")]
fn arm_failpoint(name: &str, params: &Params) -> Result<Response<Body>, BadRequest> {
    match crate::failpoints::arm(name, &params.pairs) {
        Ok(done) => Ok(json_response(StatusCode::OK, &json!({ "failpoint": name, "result": done }))),
        Err(why) => Err(BadRequest(why)),
    }
}

// Without the feature the routes never resolve; these keep the match exhaustive.
#[cfg(not(feature = "failpoints"))]
fn failpoints_json() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "this build has no failure points")
}

#[cfg(not(feature = "failpoints"))]
fn arm_failpoint(_: &str, _: &Params) -> Result<Response<Body>, BadRequest> {
    Ok(text(StatusCode::NOT_FOUND, "this build has no failure points"))
}

/// The cluster reaches a member at the address in the node's cluster list (`--cluster`),
/// whatever `addr` says: an `addr` that differs is refused rather than silently ignored.
/// Two spellings of one IP address and port match; names are not resolved. An id that
/// is not in the list is left to the shard, which refuses it.
fn check_member_addr(node: &NodeInfo, id: NodeId, given: &str) -> Result<(), BadRequest> {
    let Some(m) = node.members.iter().find(|m| m.id == id) else { return Ok(()) };
    let same = m.addr == given
        || matches!((m.addr.parse::<SocketAddr>(), given.parse::<SocketAddr>()), (Ok(a), Ok(b)) if a == b);
    if same {
        return Ok(());
    }
    Err(BadRequest::param(
        "addr",
        &format!(
            "`{given}` differs from node {id}'s address in this node's cluster list (`{}`), which is the one the \
             cluster uses; omit addr, or fix --cluster on every member first",
            m.addr
        ),
    ))
}

async fn run_op(state: &State, params: &Params, op: Op) -> Result<Response<Body>, BadRequest> {
    let shard = params.shard(state.ops.shard_count(), Some(0))?.unwrap_or(0);
    let name = op.name();
    let answer = match state.ops.submit(shard, op) {
        Ok(answer) => answer,
        Err(e) => return Ok(text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    let timeout = state.limits.op_reply_timeout;
    Ok(match tokio::time::timeout(timeout, answer).await {
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("shard {shard} did not answer {name} within {timeout:?}; it may still take effect"),
        ),
        Ok(Err(_)) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("shard {shard} dropped {name} without answering"))
        }
        Ok(Ok(reply)) => op_response(shard, name, reply),
    })
}

fn op_response(shard: u32, name: &str, reply: OpReply) -> Response<Body> {
    match reply {
        OpReply::Done(detail) => {
            json_response(StatusCode::OK, &json!({ "shard": shard, "op": name, "result": "done", "detail": detail }))
        }
        OpReply::NotLeader { leader: 0 } => {
            text(StatusCode::CONFLICT, "not the leader: no leader is known; retry later")
        }
        OpReply::NotLeader { leader } => text(StatusCode::CONFLICT, format!("not the leader: leader is {leader}")),
        OpReply::Conflict(why) => text(StatusCode::CONFLICT, why),
        OpReply::Invalid { parameter, reason } => BadRequest::param(parameter, &reason).response(),
        OpReply::Unavailable(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        OpReply::Failed(why) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{name} failed: {why}")),
    }
}

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

/// A 400 answer naming what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BadRequest(String);

impl BadRequest {
    fn param(name: &str, why: &str) -> BadRequest {
        BadRequest(format!("bad parameter `{name}`: {why}"))
    }

    fn response(self) -> Response<Body> {
        text(StatusCode::BAD_REQUEST, self.0)
    }
}

/// Decoded query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Params {
    pairs: Vec<(String, String)>,
}

fn percent_decode(s: &str, what: &str) -> Result<String, BadRequest> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(byte) = byte else {
                    return Err(BadRequest(format!("bad percent-encoding in query {what} `{s}`")));
                };
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| BadRequest(format!("query {what} `{s}` is not UTF-8")))
}

/// A query string's parameters, decoded and checked exactly as the admin port's
/// endpoints take them (`SKIFF_FAILPOINTS` uses the same syntax).
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    Params::parse(query).map(|p| p.pairs).map_err(|e| e.0)
}

impl Params {
    fn parse(query: &str) -> Result<Params, BadRequest> {
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == QUERY_PARAMS_MAX {
                return Err(BadRequest(format!("more than {QUERY_PARAMS_MAX} query parameters")));
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = percent_decode(k, "name")?;
            let v = percent_decode(v, "value")?;
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(BadRequest::param(&k, "given more than once"));
            }
            pairs.push((k, v));
        }
        Ok(Params { pairs })
    }

    /// Refuses parameters the endpoint does not take (a typo must not silently become a
    /// default).
    fn allow(&self, names: &[&str]) -> Result<(), BadRequest> {
        match self.pairs.iter().find(|(k, _)| !names.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) if names.is_empty() => Err(BadRequest::param(k, "this endpoint takes no parameters")),
            Some((k, _)) => Err(BadRequest::param(k, &format!("unknown; this endpoint takes {}", names.join(", ")))),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, BadRequest> {
        self.get(name).ok_or_else(|| BadRequest::param(name, "missing"))
    }

    fn u64(&self, name: &str) -> Result<u64, BadRequest> {
        let v = self.required(name)?;
        v.parse().map_err(|_| BadRequest::param(name, &format!("`{v}` is not a non-negative integer")))
    }

    fn node_id(&self, name: &str) -> Result<NodeId, BadRequest> {
        match self.u64(name)? {
            0 => Err(BadRequest::param(name, "node ids start at 1")),
            id => Ok(id),
        }
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, BadRequest> {
        match self.get(name) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(BadRequest::param(name, &format!("`{v}` is not true or false"))),
        }
    }

    /// A peer address, `HOST:PORT`. The host is not resolved here: the shard's transport
    /// resolves it when it connects.
    fn addr(&self, name: &str) -> Result<String, BadRequest> {
        let v = self.required(name)?;
        let bad = |why: &str| BadRequest::param(name, &format!("`{v}` is not HOST:PORT: {why}"));
        let (host, port) = v.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        match port.parse::<u16>() {
            Ok(p) if p != 0 => {}
            _ => return Err(bad("the port must be 1-65535")),
        }
        let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            inner.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.len() <= 253
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if !host_ok {
            return Err(bad("the host must be a name, an IPv4 address or a bracketed IPv6 address"));
        }
        Ok(v.to_string())
    }

    /// The `shard` parameter, checked against `count`; `default` when absent.
    fn shard(&self, count: u32, default: Option<u32>) -> Result<Option<u32>, BadRequest> {
        let Some(v) = self.get("shard") else { return Ok(default) };
        match v.parse::<u32>() {
            Ok(s) if s < count => Ok(Some(s)),
            Ok(s) => Err(BadRequest::param(
                "shard",
                &format!("no shard {s}: this node runs {count} (0-{})", count.saturating_sub(1)),
            )),
            Err(_) => Err(BadRequest::param("shard", &format!("`{v}` is not a shard number"))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// /status
// ---------------------------------------------------------------------------------------

fn age_ms(at: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
}

fn status_json(published: &Published) -> Value {
    let node = published.node();
    let now = Instant::now();
    let shards: Vec<Value> = published
        .shards()
        .into_iter()
        .enumerate()
        .map(|(shard, slot)| match slot {
            None => json!({ "shard": shard, "published": false }),
            Some(p) => {
                let mut v =
                    serde_json::to_value(&p.report.status).unwrap_or_else(|e| json!({ "error": e.to_string() }));
                if let Value::Object(fields) = &mut v {
                    fields.insert("published".to_string(), Value::Bool(true));
                    fields.insert("report_age_ms".to_string(), Value::from(age_ms(p.at, now)));
                }
                v
            }
        })
        .collect();
    json!({
        "node_id": node.node_id,
        "cluster": node.cluster,
        "members": node.members,
        "shards": shards,
    })
}

// ---------------------------------------------------------------------------------------
// /histograms
// ---------------------------------------------------------------------------------------

/// Values of `unit` are shown in the percentile text divided by this: microseconds as
/// milliseconds (wrk2 and HdrHistogram's own tools print milliseconds), counts as they
/// are.
fn text_scale(unit: Unit) -> f64 {
    match unit {
        Unit::Microseconds => 1000.0,
        Unit::Entries | Unit::Bytes => 1.0,
    }
}

fn histogram_summary(shard: u32, key: HistogramKey, r: &Recorded) -> Value {
    let h = r.histogram();
    json!({
        "name": key.name(),
        "family": key.family(),
        "shard": shard,
        "unit": key.unit().name(),
        "count": h.len(),
        "min": h.min(),
        // Rounded: the mean is an estimate from value ranges, not worth 17 digits.
        "mean": (h.mean() * 1000.0).round() / 1000.0,
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "sum": r.sum(),
    })
}

fn histograms_json(published: &Published, only: Option<u32>) -> Value {
    let mut list = Vec::new();
    for p in published.shards().into_iter().flatten() {
        let report = &p.report;
        if only.is_some_and(|s| s != report.shard) {
            continue;
        }
        for (key, r) in &report.histograms {
            list.push(histogram_summary(report.shard, *key, r));
        }
    }
    json!({ "histograms": list })
}

fn histogram_text(published: &Published, name: &str, only: Option<u32>) -> Response<Body> {
    let reports: Vec<Arc<ShardReport>> = published
        .shards()
        .into_iter()
        .flatten()
        .map(|p| p.report)
        .filter(|r| only.is_none_or(|s| s == r.shard))
        .collect();
    if reports.is_empty() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no shard has published metrics yet; retry shortly");
    }
    let mut merged: Option<(HistogramKey, Recorded)> = None;
    for report in &reports {
        for (key, r) in report.histograms.iter().filter(|(k, _)| k.name() == name) {
            match &mut merged {
                None => merged = Some((*key, r.clone())),
                Some((_, m)) => m.merge(r),
            }
        }
    }
    match merged {
        Some((key, r)) => respond(StatusCode::OK, CONTENT_TYPE_TEXT, percentile_distribution(&r, key.unit())),
        None => {
            let mut names: Vec<String> = Vec::new();
            for report in &reports {
                for (key, _) in &report.histograms {
                    let n = key.name();
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
            text(StatusCode::NOT_FOUND, format!("no histogram named `{name}`; valid names: {}", names.join(", ")))
        }
    }
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format (as
/// `HistogramLogProcessor`, `outputPercentileDistribution` and wrk2 print it: five ticks
/// per half distance), readable by HdrHistogram's plotter.
fn percentile_distribution(r: &Recorded, unit: Unit) -> String {
    const TICKS_PER_HALF_DISTANCE: u32 = 5;
    let h = r.histogram();
    let scale = text_scale(unit);
    let mut out = String::new();
    let _ = write!(out, "{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / scale;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean() / scale, h.stdev() / scale);
    let _ = writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", h.max() as f64 / scale, h.len());
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets);
    out
}

// ---------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------

/// Prometheus bucket bounds for durations, in microseconds: 10 µs to 10 s, roughly
/// 1-2.5-5 per decade, which spans an fdatasync on NVMe to an election.
const DURATION_BUCKETS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
/// Bucket bounds for WAL batch sizes in entries: powers of two up to 4096.
const ENTRIES_BUCKETS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
/// Bucket bounds for WAL batch sizes in bytes: 512 B (one sector) to 16 MiB.
const BYTES_BUCKETS: [u64; 9] = [512, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];

fn buckets(unit: Unit) -> &'static [u64] {
    match unit {
        Unit::Microseconds => &DURATION_BUCKETS_US,
        Unit::Entries => &ENTRIES_BUCKETS,
        Unit::Bytes => &BYTES_BUCKETS,
    }
}

/// A value of `unit` in the Prometheus base unit (seconds, entries, bytes).
fn base_unit(value: u64, unit: Unit) -> String {
    match unit {
        Unit::Microseconds => format!("{}", value as f64 / 1e6),
        Unit::Entries | Unit::Bytes => value.to_string(),
    }
}

/// The exported name of a histogram family: base units in the name, as Prometheus
/// asks.
fn prometheus_histogram_name(key: HistogramKey) -> &'static str {
    match key {
        HistogramKey::ClientLatency(_) => "skiff_client_request_duration_seconds",
        HistogramKey::ProposeToCommit => "skiff_propose_to_commit_duration_seconds",
        HistogramKey::CommitToApply => "skiff_commit_to_apply_duration_seconds",
        HistogramKey::ApplyBatch => "skiff_apply_batch_duration_seconds",
        HistogramKey::WalWrite => "skiff_wal_write_duration_seconds",
        HistogramKey::WalFsync => "skiff_wal_fsync_duration_seconds",
        HistogramKey::WalBatchEntries => "skiff_wal_batch_entries",
        HistogramKey::WalBatchBytes => "skiff_wal_batch_size_bytes",
        HistogramKey::ReadyLoopIteration => "skiff_ready_loop_iteration_duration_seconds",
        HistogramKey::ReadIndex => "skiff_read_index_duration_seconds",
        HistogramKey::PeerSendQueueDelay(_) => "skiff_peer_send_queue_delay_seconds",
        HistogramKey::HeartbeatInterval(_) => "skiff_heartbeat_interval_seconds",
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// One metric family being rendered: its samples, emitted with HELP and TYPE only if
/// there is at least one (the text format wants each family's samples together).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: String,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family { name, kind, help, samples: String::new() }
    }

    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = writeln!(self.samples, "{}{suffix}{} {value}", self.name, label_set(labels));
    }

    fn finish(self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        out.push_str(&self.samples);
    }
}

type ReportValue = fn(&ShardReport) -> u64;
type ReasonValue = fn(&ShardReport, RejectReason) -> u64;
type TransportValue = fn(&TransportCounters) -> u64;

/// Per-shard counters: (name, help, value).
const SHARD_COUNTERS: &[(&str, &str, ReportValue)] = &[
    ("skiff_proposals_total", "Client proposals handed to the Raft engine.", |r| r.counters.proposals),
    ("skiff_commits_total", "Log entries seen committed.", |r| r.counters.commits),
    ("skiff_applies_total", "Committed entries applied to the key-value state machine.", |r| r.counters.applies),
    ("skiff_leader_changes_total", "Times a new leader became known.", |r| r.counters.leader_changes),
    ("skiff_heartbeat_send_failures_total", "Heartbeats the transport could not queue to a peer.", |r| {
        r.counters.heartbeat_send_failures
    }),
    (
        "skiff_heartbeat_contention_total",
        "Heartbeats sent more than twice the heartbeat interval after the previous one to the same peer.",
        |r| r.counters.heartbeat_contention,
    ),
    ("skiff_wal_written_bytes_total", "Bytes written to the write-ahead log.", |r| r.counters.wal_bytes),
    ("skiff_wal_writes_total", "Write-ahead log writes (group-commit batches).", |r| r.counters.wal_writes),
    ("skiff_wal_fsyncs_total", "Write-ahead log fdatasyncs.", |r| r.counters.wal_fsyncs),
    ("skiff_slow_fsyncs_total", "fdatasyncs slower than the configured threshold.", |r| r.counters.slow_fsyncs),
    ("skiff_slow_applies_total", "Apply batches slower than the configured threshold.", |r| r.counters.slow_applies),
    ("skiff_snapshots_taken_total", "State-machine snapshots written locally.", |r| r.counters.snapshots_taken),
    ("skiff_snapshots_sent_total", "Snapshots streamed to followers.", |r| r.counters.snapshots_sent),
    ("skiff_snapshots_received_total", "Snapshots received from the leader and installed.", |r| {
        r.counters.snapshots_received
    }),
    ("skiff_reads_total", "Reads served.", |r| r.counters.reads),
    ("skiff_peer_records_dropped_total", "Per-peer records ignored because the peer bound was reached.", |r| {
        r.counters.peer_records_dropped
    }),
    ("skiff_raft_campaigns_total", "Elections or pre-vote rounds started.", |r| r.status.engine.campaigns),
    (
        "skiff_raft_campaigns_withheld_total",
        "Elections not started because this member is known to lack committed entries.",
        |r| r.status.engine.campaigns_withheld,
    ),
    ("skiff_raft_leaderships_won_total", "Times this node became leader.", |r| r.status.engine.leaderships_won),
    ("skiff_raft_check_quorum_step_downs_total", "Times the leader stepped down because a quorum went quiet.", |r| {
        r.status.engine.check_quorum_step_downs
    }),
    ("skiff_raft_transfers_aborted_total", "Leadership transfers abandoned after an election timeout.", |r| {
        r.status.engine.transfers_aborted
    }),
    ("skiff_raft_proposals_dropped_total", "Proposals the Raft engine dropped.", |r| r.status.engine.proposals_dropped),
    ("skiff_raft_reads_dropped_total", "Read requests the Raft engine dropped.", |r| r.status.engine.reads_dropped),
    ("skiff_raft_conf_changes_invalid_total", "Membership changes that were no-ops or invalid when applied.", |r| {
        r.status.engine.conf_changes_invalid
    }),
    ("skiff_raft_votes_ignored_in_lease_total", "Vote requests ignored while a live leader was known.", |r| {
        r.status.engine.votes_ignored_in_lease
    }),
    ("skiff_raft_storage_errors_total", "Raft log reads from storage that failed.", |r| r.status.engine.storage_errors),
];

/// Per-shard gauges: (name, help, value).
const SHARD_GAUGES: &[(&str, &str, ReportValue)] = &[
    ("skiff_has_leader", "1 if a leader is known, else 0.", |r| u64::from(r.status.leader != 0)),
    ("skiff_is_leader", "1 if this node is the leader, else 0.", |r| u64::from(r.status.role == "leader")),
    ("skiff_term", "Current Raft term.", |r| r.status.term),
    ("skiff_commit_index", "Highest log index known committed.", |r| r.status.commit),
    ("skiff_applied_index", "Highest log index applied to the state machine.", |r| r.status.applied),
    ("skiff_last_snapshot_index", "Log index of the latest local snapshot.", |r| r.status.last_snapshot_index),
    ("skiff_pending_proposals", "Proposals waiting for commit.", |r| r.gauges.pending_proposals),
    ("skiff_pending_reads", "Reads waiting for their read index.", |r| r.gauges.pending_reads),
    ("skiff_clients", "Open client connections.", |r| r.gauges.clients),
];

/// Per-peer transport counters: (name, help, value).
const PEER_COUNTERS: &[(&str, &str, TransportValue)] = &[
    ("skiff_peer_sent_bytes_total", "Bytes sent to a peer.", |t| t.bytes_out),
    ("skiff_peer_received_bytes_total", "Bytes received from a peer.", |t| t.bytes_in),
    ("skiff_peer_sent_frames_total", "Frames sent to a peer.", |t| t.frames_out),
    ("skiff_peer_received_frames_total", "Frames received from a peer.", |t| t.frames_in),
    (
        "skiff_peer_dropped_messages_total",
        "Messages to a peer dropped because its send queue was full or it was unreachable.",
        |t| t.dropped_messages,
    ),
];

/// Renders every published report in the Prometheus text exposition format.
fn render_metrics(published: &Published) -> String {
    let node = published.node();
    let now = Instant::now();
    let slots: Vec<_> = published.shards().into_iter().flatten().collect();
    let shard_labels: Vec<String> = slots.iter().map(|p| p.report.shard.to_string()).collect();
    let mut out = String::new();

    let mut info = Family::new("skiff_node_info", "gauge", "Constant 1, labelled with the node id and cluster name.");
    info.sample("", &[("cluster", &node.cluster), ("node", &node.node_id.to_string())], 1);
    info.finish(&mut out);

    for (name, help, value) in SHARD_COUNTERS {
        let mut f = Family::new(name, "counter", help);
        for (p, shard) in slots.iter().zip(&shard_labels) {
            f.sample("", &[("shard", shard)], value(&p.report));
        }
        f.finish(&mut out);
    }
    const REJECTIONS: [(&str, ReasonValue, &str); 2] = [
        ("skiff_proposals_rejected_total", ShardReport::proposals_rejected, "Proposals refused or dropped, by reason."),
        ("skiff_reads_rejected_total", ShardReport::reads_rejected, "Reads refused or dropped, by reason."),
    ];
    for (name, reason_of, help) in REJECTIONS {
        let mut f = Family::new(name, "counter", help);
        for (p, shard) in slots.iter().zip(&shard_labels) {
            for reason in RejectReason::ALL {
                f.sample("", &[("shard", shard), ("reason", reason.name())], reason_of(&p.report, reason));
            }
        }
        f.finish(&mut out);
    }
    let mut f =
        Family::new("skiff_raft_messages_dropped_total", "counter", "Raft messages the engine dropped, by reason.");
    for (p, shard) in slots.iter().zip(&shard_labels) {
        let e = &p.report.status.engine;
        for (reason, n) in [
            ("malformed", e.msgs_malformed),
            ("stale_term", e.msgs_stale_term),
            ("non_member", e.msgs_from_non_member),
            ("conflicts_with_committed", e.appends_conflicting_with_committed),
            ("commit_beyond_log", e.commits_beyond_log),
        ] {
            f.sample("", &[("shard", shard), ("reason", reason)], n);
        }
    }
    f.finish(&mut out);

    for (name, help, value) in SHARD_GAUGES {
        let mut f = Family::new(name, "gauge", help);
        for (p, shard) in slots.iter().zip(&shard_labels) {
            f.sample("", &[("shard", shard)], value(&p.report));
        }
        f.finish(&mut out);
    }
    let mut f = Family::new("skiff_report_age_seconds", "gauge", "Age of the shard's latest published metrics report.");
    for (p, shard) in slots.iter().zip(&shard_labels) {
        f.sample("", &[("shard", shard)], now.saturating_duration_since(p.at).as_secs_f64());
    }
    f.finish(&mut out);

    for (name, help, value) in PEER_COUNTERS {
        let mut f = Family::new(name, "counter", help);
        for (p, shard) in slots.iter().zip(&shard_labels) {
            for peer in &p.report.peers {
                f.sample("", &[("shard", shard), ("peer", &peer.id.to_string())], value(&peer.transport));
            }
        }
        f.finish(&mut out);
    }
    let mut f = Family::new(
        "skiff_transport_rejected_frames_total",
        "counter",
        "Frames the peer transport refused (and closed the connection for), by reason.",
    );
    for (p, shard) in slots.iter().zip(&shard_labels) {
        for (reason, n) in &p.report.transport_rejected {
            f.sample("", &[("shard", shard), ("reason", reason)], n);
        }
    }
    f.finish(&mut out);
    let mut matched =
        Family::new("skiff_peer_match_index", "gauge", "Highest log index known replicated to a peer (leader only).");
    let mut contact = Family::new(
        "skiff_peer_last_contact_seconds",
        "gauge",
        "Time since the leader last heard from a peer (leader only).",
    );
    for (p, shard) in slots.iter().zip(&shard_labels) {
        for peer in &p.report.status.peers {
            let labels = [("shard", shard.as_str()), ("peer", &peer.id.to_string())];
            matched.sample("", &labels, peer.matched);
            contact.sample("", &labels, peer.last_contact_ms as f64 / 1000.0);
        }
    }
    matched.finish(&mut out);
    contact.finish(&mut out);

    render_histograms(&slots.iter().map(|p| Arc::clone(&p.report)).collect::<Vec<_>>(), &mut out);
    out
}

/// Histogram families, each with every shard's (and label's) series together.
fn render_histograms(reports: &[Arc<ShardReport>], out: &mut String) {
    let mut families: Vec<&'static str> = Vec::new();
    for report in reports {
        for (key, _) in &report.histograms {
            let name = prometheus_histogram_name(*key);
            if !families.contains(&name) {
                families.push(name);
            }
        }
    }
    for family in families {
        let mut f: Option<Family> = None;
        for report in reports {
            let shard = report.shard.to_string();
            for (key, r) in report.histograms.iter().filter(|(k, _)| prometheus_histogram_name(*k) == family) {
                let f = f.get_or_insert_with(|| Family::new(family, "histogram", key.help()));
                let label = key.label();
                let mut labels: Vec<(&str, &str)> = vec![("shard", &shard)];
                if let Some((k, v)) = &label {
                    labels.push((k, v));
                }
                histogram_samples(f, &labels, key.unit(), r);
            }
        }
        if let Some(f) = f {
            f.finish(out);
        }
    }
}

/// Cumulative bucket counts from the HDR data. A recorded value range is counted in the
/// first bucket whose bound is at or above the range's lowest value, so bucket counts are
/// exact to the histogram's 1% precision.
fn histogram_samples(f: &mut Family, labels: &[(&str, &str)], unit: Unit, r: &Recorded) {
    let h = r.histogram();
    let bounds = buckets(unit);
    let mut per_bucket = vec![0u64; bounds.len()];
    for v in h.iter_recorded() {
        let low = h.lowest_equivalent(v.value_iterated_to());
        if let Some(i) = bounds.iter().position(|b| low <= *b) {
            per_bucket[i] += v.count_at_value();
        }
    }
    let mut cumulative = 0u64;
    for (bound, n) in bounds.iter().zip(&per_bucket) {
        cumulative += n;
        let le = base_unit(*bound, unit);
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        f.sample("_bucket", &with_le, cumulative);
    }
    let mut with_inf = labels.to_vec();
    with_inf.push(("le", "+Inf"));
    f.sample("_bucket", &with_inf, h.len());
    f.sample("_sum", labels, base_unit(r.sum(), unit));
    f.sample("_count", labels, h.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricsConfig, ShardMetrics, ShardStatus};

    #[test]
    fn routes_resolve_and_carry_their_method() {
        assert_eq!(Route::resolve("/status"), Some(Route::Status));
        assert_eq!(Route::resolve("/histograms/wal_fsync"), Some(Route::Histogram("wal_fsync".into())));
        assert_eq!(Route::resolve("/histograms/"), None);
        assert_eq!(Route::resolve("/histograms/a/b"), None);
        assert_eq!(Route::resolve("/status/"), None);
        assert_eq!(Route::resolve("/"), None);
        assert_eq!(Route::MembersAdd.method(), Method::POST);
        // Failure points exist only in builds with the feature: elsewhere, 404.
        assert_eq!(Route::resolve_in("/debug/failpoints", false), None);
        assert_eq!(Route::resolve_in("/debug/failpoints/partition", false), None);
        assert_eq!(Route::resolve_in("/debug/failpoints", true), Some(Route::Failpoints));
        assert_eq!(Route::resolve_in("/debug/failpoints/partition", true), Some(Route::Failpoint("partition".into())));
        assert_eq!(Route::resolve_in("/debug/failpoints/a/b", true), None);
        assert_eq!(Route::Failpoints.method(), Method::GET);
        assert_eq!(Route::Failpoint("x".into()).method(), Method::POST);
        assert_eq!(Route::Metrics.method(), Method::GET);
    }

    #[test]
    fn params_decode_and_refuse_what_they_should() {
        let p = Params::parse("id=3&addr=10.0.0.1%3A7000&learner=true").expect("parses");
        assert_eq!(p.node_id("id"), Ok(3));
        assert_eq!(p.addr("addr"), Ok("10.0.0.1:7000".to_string()));
        assert_eq!(p.flag("learner"), Ok(Some(true)));
        assert!(p.allow(&["id", "addr", "learner"]).is_ok());
        assert!(p.allow(&["id", "addr"]).unwrap_err().0.contains("`learner`"));
        assert!(Params::parse("id=1&id=2").unwrap_err().0.contains("more than once"));
        assert!(Params::parse("id=%zz").is_err());
        assert!(Params::parse("id=%ff").is_err(), "not UTF-8");
        assert!(Params::parse(&"a=1&".repeat(QUERY_PARAMS_MAX + 1)).is_err());
        let p = Params::parse("id=0&to=x&ticks=-1&learner=yes&shard=9").expect("parses");
        assert!(p.node_id("id").unwrap_err().0.contains("start at 1"));
        assert!(p.node_id("to").unwrap_err().0.contains("`to`"));
        assert!(p.u64("ticks").is_err());
        assert!(p.flag("learner").is_err());
        assert!(p.node_id("missing").unwrap_err().0.contains("missing"));
        assert!(p.shard(2, Some(0)).unwrap_err().0.contains("no shard 9"));
        assert_eq!(Params::default().shard(2, Some(0)), Ok(Some(0)));
    }

    #[test]
    fn addresses_are_host_colon_port() {
        for good in ["127.0.0.1:7001", "node-2.example:7001", "[::1]:7001", "localhost:1"] {
            let p = Params::parse(&format!("addr={good}")).expect("parses");
            assert_eq!(p.addr("addr"), Ok(good.to_string()), "{good}");
        }
        for bad in ["127.0.0.1", "host:0", "host:70000", ":7001", "[zz]:1", "a b:1", "host:x"] {
            let p = Params { pairs: vec![("addr".into(), bad.into())] };
            assert!(p.addr("addr").is_err(), "{bad}");
        }
    }

    #[test]
    fn prometheus_escaping() {
        assert_eq!(label_set(&[("a", "x\"y\\z\nw")]), "{a=\"x\\\"y\\\\z\\nw\"}");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn percentile_text_has_the_hgrm_table_and_footer() {
        let mut r = Recorded::new(Unit::Microseconds);
        for v in 1..=1000u64 {
            r.record(v);
        }
        let text = percentile_distribution(&r, Unit::Microseconds);
        let mut lines = text.lines();
        let header = lines.next().expect("header");
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<&str>> =
            text.lines().skip(2).take_while(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert!(rows.len() > 10, "{text}");
        let last = rows.last().expect("rows");
        assert_eq!(last.len(), 3, "the 100% row has no 1/(1-p)");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert!(rows.iter().all(|r| r[1].len() == 14), "percentiles to 12 decimals");
        // Mean 0.5005 ms, within the histogram's 1%.
        assert!(text.contains("#[Mean    =        0.50"), "{text}");
        assert!(text.contains("Total count    =         1000]"), "{text}");
        assert!(text.contains("#[Buckets ="), "{text}");
        // Values are in milliseconds: the max is 1000 us.
        let max: f64 = last[0].parse().expect("a number");
        assert!((max - 1.0).abs() < 0.02, "{max}");
    }

    #[test]
    fn empty_histograms_render_a_table_without_rows() {
        let text = percentile_distribution(&Recorded::new(Unit::Bytes), Unit::Bytes);
        assert_eq!(text.lines().filter(|l| l.starts_with("#[")).count(), 3);
        assert!(text.contains("Total count    =            0]"));
    }

    #[test]
    fn buckets_are_cumulative_and_end_with_the_count() {
        let mut r = Recorded::new(Unit::Microseconds);
        for v in [5u64, 10, 11, 999, 1_000, 20_000_000] {
            r.record(v);
        }
        let mut f = Family::new("x_seconds", "histogram", "h");
        histogram_samples(&mut f, &[("shard", "0")], Unit::Microseconds, &r);
        let sample = |le: &str| {
            let needle = format!("x_seconds_bucket{{shard=\"0\",le=\"{le}\"}} ");
            f.samples.lines().find_map(|l| l.strip_prefix(&needle)).map(|v| v.parse::<u64>().expect("count"))
        };
        assert_eq!(sample("0.00001"), Some(2));
        assert_eq!(sample("0.000025"), Some(3));
        assert_eq!(sample("0.001"), Some(5));
        assert_eq!(sample("10"), Some(5), "20 s is above the last bound");
        assert_eq!(sample("+Inf"), Some(6));
        assert!(f.samples.contains("x_seconds_sum{shard=\"0\"} 20.002025"), "{}", f.samples);
        assert!(f.samples.contains("x_seconds_count{shard=\"0\"} 6"));
    }

    #[test]
    fn bucket_bounds_rise() {
        for b in [&DURATION_BUCKETS_US[..], &ENTRIES_BUCKETS[..], &BYTES_BUCKETS[..]] {
            assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
    }

    fn published_with_one_shard() -> Published {
        let published = Published::new(NodeInfo { node_id: 1, cluster: "t".into(), members: vec![] }, 2);
        let mut m = ShardMetrics::new(0, MetricsConfig::default());
        m.record_wal_fsync(Duration::from_micros(80));
        let status = skiff_engine::Status {
            id: 1,
            role: skiff_engine::Role::Follower,
            term: 1,
            vote: 0,
            leader: 2,
            commit: 0,
            applied: 0,
            persisted: 0,
            first_index: 1,
            last_index: 0,
            lead_transferee: 0,
            election_timeout_ticks: 10,
            conf_state: skiff_engine::ConfState { voters: vec![1, 2, 3], learners: vec![] },
            pending_reads: 0,
            progress: vec![],
            stats: skiff_engine::Stats::default(),
        };
        published.publish(m.report(ShardStatus::from_engine(0, &status, false, 0, Duration::from_millis(10))));
        published
    }

    #[test]
    fn status_lists_unpublished_shards_as_such() {
        let v = status_json(&published_with_one_shard());
        assert_eq!(v["shards"][0]["role"], "follower");
        assert_eq!(v["shards"][0]["published"], true);
        assert_eq!(v["shards"][1], json!({ "shard": 1, "published": false }));
    }

    #[test]
    fn metrics_families_are_contiguous_and_typed() {
        let text = render_metrics(&published_with_one_shard());
        let mut seen: Vec<&str> = Vec::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split_whitespace().next().expect("name");
                assert!(!seen.contains(&name), "family {name} appears twice");
                seen.push(name);
                current = name;
            } else if !line.starts_with('#') {
                assert!(line.starts_with(current), "{line} outside its family {current}");
            }
        }
        assert!(text.contains("skiff_wal_fsyncs_total{shard=\"0\"} 1"), "{text}");
        assert!(text.contains("skiff_has_leader{shard=\"0\"} 1"));
        assert!(text.contains("skiff_wal_fsync_duration_seconds_bucket{shard=\"0\",le=\"0.0001\"} 1"));
    }
}
