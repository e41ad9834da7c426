//! Test support: an in-process fake RESP server whose every reply is chosen by the
//! test (answer, error, stall, hang, close), counting what it receives; a RunConfig
//! builder; and the `skiff` binary for the spawn tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use skiff_bench::run::{Protocol, RunConfig, RunLength};
use skiff_bench::workload::KeyDistribution;
use skiff_net::{Request, RequestDecoder};

/// What the fake server does with one request.
#[derive(Clone, Debug)]
pub enum Action {
    /// The usual answer: `+OK` to SET, a nil bulk to GET, `+PONG` otherwise.
    Answer,
    /// These bytes.
    Raw(&'static [u8]),
    /// Sleeps, then answers as usual (this connection only).
    StallThenAnswer(Duration),
    /// Never answers this request or any later one on the connection.
    Hang,
    /// Closes the connection without answering.
    Close,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub sets: AtomicU64,
    pub gets: AtomicU64,
    pub connections: AtomicU64,
    /// Most requests decoded from one read: how deep the client pipelines.
    pub max_batch: AtomicU64,
}

type Policy = dyn Fn(u64, &Request) -> Action + Send + Sync;

pub struct FakeServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// How often blocked server threads check whether the test is over.
const POLL: Duration = Duration::from_millis(20);

impl FakeServer {
    /// A server on a free loopback port. `policy` gets each request's index (0-based,
    /// in arrival order across all connections) and the request.
    pub fn start(policy: impl Fn(u64, &Request) -> Action + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let policy: Arc<Policy> = Arc::new(policy);
        let accept = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            seen.connections.fetch_add(1, Ordering::Relaxed);
                            let (seen, stop, policy) = (seen.clone(), stop.clone(), policy.clone());
                            std::thread::spawn(move || serve(s, &seen, &stop, &*policy));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        FakeServer { addr, seen, stop, accept: Some(accept) }
    }

    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

fn serve(mut s: TcpStream, seen: &Seen, stop: &AtomicBool, policy: &Policy) {
    s.set_read_timeout(Some(POLL)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut hung = false;
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        };
        if hung {
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut batch = 0;
        while let Ok(Some(req)) = dec.decode(&mut buf) {
            batch += 1;
            let i = seen.requests.fetch_add(1, Ordering::Relaxed);
            let cmd = req.args[0].to_ascii_uppercase();
            match &cmd[..] {
                b"SET" => seen.sets.fetch_add(1, Ordering::Relaxed),
                b"GET" => seen.gets.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            let answer: &[u8] = match &cmd[..] {
                b"SET" => b"+OK\r\n",
                b"GET" => b"$-1\r\n",
                _ => b"+PONG\r\n",
            };
            match policy(i, &req) {
                Action::Answer => out.extend_from_slice(answer),
                Action::Raw(bytes) => out.extend_from_slice(bytes),
                Action::StallThenAnswer(d) => {
                    // Replies already due go out first; the stall delays this one.
                    let _ = s.write_all(&out);
                    out.clear();
                    std::thread::sleep(d);
                    out.extend_from_slice(answer);
                }
                Action::Hang => {
                    hung = true;
                    break;
                }
                Action::Close => {
                    let _ = s.write_all(&out);
                    return;
                }
            }
        }
        seen.max_batch.fetch_max(batch, Ordering::Relaxed);
        if !out.is_empty() && s.write_all(&out).is_err() {
            return;
        }
    }
}

/// A closed-loop RESP run against `addr`: 1 client, no warm-up, `requests` requests.
pub fn config(addr: SocketAddr, requests: u64) -> RunConfig {
    RunConfig {
        protocol: Protocol::Resp,
        targets: vec![addr],
        clients: 1,
        pipeline: 1,
        value_size: 16,
        keys: 1000,
        key_distribution: KeyDistribution::Uniform,
        read_ratio: 0.0,
        rate: None,
        length: RunLength::Requests(requests),
        warmup: Duration::ZERO,
        threads: 1,
        timeout: Duration::from_secs(10),
        seed: 1,
    }
}

/// The profile directory the tests were built into (`target/debug`), where cargo
/// also puts the `skiff` and `skiff-bench` binaries.
fn profile_dir() -> PathBuf {
    // The test executable is target/PROFILE/deps/it-HASH.
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|deps| deps.parent()).expect("target/PROFILE/deps/it-HASH").to_path_buf()
}

/// The `skiff` binary, built for this test profile if it is not there yet. `cargo
/// test --workspace` has already built it (the node's tests need it) by the time any
/// test runs; `cargo test -p skiff-bench` alone has not, so it is built here with the
/// features the node's tests build it with, leaving their binary as they expect it.
/// `None` (with the reason printed) if it cannot be built.
pub fn skiff_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = profile_dir();
        let bin = dir.join("skiff");
        if bin.is_file() {
            return Some(bin);
        }
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "-p",
            "skiff-node",
            "--bin",
            "skiff",
            "--features",
            "skiff-node/failpoints",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        eprintln!("building the skiff binary for the spawn tests: {cmd:?}");
        match cmd.status() {
            Ok(s) if s.success() && bin.is_file() => Some(bin),
            other => {
                eprintln!("SKIPPED: cannot build the skiff binary ({other:?}); spawn tests do not run");
                None
            }
        }
    })
    .clone()
}

/// The skiff-bench binary of this package.
pub fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff-bench")
}

/// A scratch directory under the target directory (disk-backed, so O_DIRECT works),
/// removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Entries left in the directory.
    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
