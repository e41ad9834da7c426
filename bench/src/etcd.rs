//! The etcd v3 load path: KV Put and Range over gRPC, with the two messages written by
//! hand (field numbers from etcd's `etcdserverpb/rpc.proto`), so the build needs no
//! `protoc`. Fields left out of a reply are skipped by the decoder.
//!
//! Each client is one HTTP/2 connection (a tonic channel); `--pipeline N` runs N
//! requests concurrently on it, each as its own stream. In the open loop the N
//! callers take the next due time from a schedule the client shares, so a request
//! that waits for a free caller is still measured from its intended send time.
//!
//! Unlike the RESP path, every request allocates: the gRPC stack builds a request and
//! an HTTP/2 stream per call. The generator's own CPU in the report shows what that
//! costs.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use crate::resp::{CONNECT_TIMEOUT, RECONNECT_BACKOFF_MIN};
use crate::stats::{Control, Recorder, kind};
use crate::workload::{Generator, Op, key_bytes};

/// `etcdserverpb.PutRequest`: only the key and value are sent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `etcdserverpb.PutResponse`: nothing in it is used (its header is skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {}

/// `etcdserverpb.RangeRequest` for one key; `serializable` stays false, so the read is
/// linearizable, as Skiff's reads are.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
}

/// `etcdserverpb.RangeResponse`: only the number of keys found is read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(int64, tag = "4")]
    pub count: i64,
}

const PUT_PATH: &str = "/etcdserverpb.KV/Put";
const RANGE_PATH: &str = "/etcdserverpb.KV/Range";

/// A gRPC client of etcd's KV service.
#[derive(Clone, Debug)]
pub struct KvClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl KvClient {
    /// A client whose connection is opened on first use and reopened after failures.
    pub fn new(target: SocketAddr, timeout: Duration) -> KvClient {
        let endpoint = Endpoint::from_shared(format!("http://{target}"))
            .expect("a socket address is a valid URI authority")
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout);
        KvClient { grpc: tonic::client::Grpc::new(endpoint.connect_lazy()) }
    }

    pub async fn put(&mut self, key: Bytes, value: Bytes) -> Result<(), tonic::Status> {
        self.grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
        let req = tonic::Request::new(PutRequest { key, value });
        self.grpc.unary(req, PathAndQuery::from_static(PUT_PATH), codec).await.map(|_| ())
    }

    /// The number of keys found (0 or 1).
    pub async fn get(&mut self, key: Bytes) -> Result<i64, tonic::Status> {
        self.grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<RangeRequest, RangeResponse>::default();
        let req = tonic::Request::new(RangeRequest { key });
        self.grpc.unary(req, PathAndQuery::from_static(RANGE_PATH), codec).await.map(|r| r.into_inner().count)
    }
}

/// The error kind of a failed call: `timeout` when the deadline passed, `connection`
/// when the channel could not reach the server, otherwise the gRPC code as etcd sent it
/// (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, ...).
pub fn status_kind(status: &tonic::Status) -> &'static str {
    use tonic::Code;
    let msg = status.message();
    if status.code() == Code::Cancelled && msg.contains("Timeout expired") {
        return kind::TIMEOUT;
    }
    // Failures tonic raises itself before any reply (refused, reset, transport).
    let local = std::error::Error::source(status).is_some();
    if status.code() == Code::Unavailable
        && (local || msg.contains("transport") || msg.contains("connect") || msg.contains("connection"))
    {
        return kind::CONNECTION;
    }
    match status.code() {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What one etcd client (connection) needs.
#[derive(Debug)]
pub struct EtcdSpec {
    pub target: SocketAddr,
    pub pipeline: usize,
    pub timeout: Duration,
    pub value: Bytes,
    /// One generator per concurrent caller.
    pub generators: Vec<Generator>,
    /// Open loop: time between this client's requests, and when the first is due.
    pub schedule: Option<(Duration, Instant)>,
}

/// Runs one client's callers until the run stops.
pub async fn run_client(spec: EtcdSpec, control: Arc<Control>, rec: Rc<RefCell<Recorder>>) {
    let client = KvClient::new(spec.target, spec.timeout);
    let next_due = Rc::new(Cell::new(spec.schedule.map(|(_, first)| first)));
    let interval = spec.schedule.map(|(i, _)| i);
    let mut callers = Vec::with_capacity(spec.pipeline);
    for generator in spec.generators {
        let (client, control, rec, next_due, value) =
            (client.clone(), control.clone(), rec.clone(), next_due.clone(), spec.value.clone());
        callers.push(tokio::task::spawn_local(async move {
            caller(client, generator, value, interval, next_due, &control, &rec).await
        }));
    }
    for c in callers {
        let _ = c.await;
    }
    if let (Some(interval), Some(due)) = (interval, next_due.get()) {
        rec.borrow_mut().unsent += control.unsent_due(due, interval);
    }
}

async fn caller(
    mut client: KvClient,
    mut generator: Generator,
    value: Bytes,
    interval: Option<Duration>,
    next_due: Rc<Cell<Option<Instant>>>,
    control: &Control,
    rec: &RefCell<Recorder>,
) {
    loop {
        // Claim a request: the next due time in the open loop, a budget unit in the
        // closed loop.
        let (intended, counted) = match (interval, next_due.get()) {
            (Some(interval), Some(due)) => {
                next_due.set(Some(due + interval));
                tokio::time::sleep_until(due.into()).await;
                if control.stopping() {
                    return;
                }
                let counted = control.counts_intended(due);
                if counted && control.take_budget(1) == 0 {
                    return;
                }
                (due, counted)
            }
            _ => {
                let (n, counted) = control.claim(1);
                if n == 0 {
                    return;
                }
                (Instant::now(), counted)
            }
        };
        let (op, key) = generator.next_request();
        let key = Bytes::copy_from_slice(&key_bytes(key));
        let result = match op {
            Op::Write => client.put(key, value.clone()).await,
            Op::Read => client.get(key).await.map(|_| ()),
        };
        let now = Instant::now();
        let failed_kind = result.as_ref().err().map(status_kind);
        match (counted, failed_kind) {
            (true, None) => rec.borrow_mut().ok(op, now - intended, now),
            (true, Some(k)) => rec.borrow_mut().error(k, 1, now),
            (false, _) => rec.borrow_mut().unmeasured += 1,
        }
        if failed_kind == Some(kind::CONNECTION) && interval.is_none() {
            // The closed loop would otherwise spin on a dead server.
            tokio::time::sleep(RECONNECT_BACKOFF_MIN).await;
        }
    }
}
