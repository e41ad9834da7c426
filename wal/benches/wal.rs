//! WAL throughput and latency against the physical limit, side by side in one run:
//! a raw io_uring O_DIRECT write + fdatasync loop on a pre-written file, and the WAL
//! appending batches that make writes of the same size; each sequential (one append
//! at a time) and pipelined (the next write in flight while the previous fdatasync
//! runs: at most two appends unacknowledged).
//!
//! Run: `cargo bench -p skiff-wal`. Environment: `SKIFF_WAL_BENCH_SECS` (seconds per
//! case and mode, split over alternating rounds; default 5), `SKIFF_WAL_BENCH_CPU` (CPU to pin to, default the
//! last), `SKIFF_WAL_BENCH_CASE` (one case only, e.g. `4KiB`), `SKIFF_WAL_BENCH_DIR`
//! (directory on a disk file system with O_DIRECT; default under target/),
//! `SKIFF_WAL_BENCH_SEGMENT_BYTES` (segment size; default the WAL's),
//! `SKIFF_WAL_BENCH_RAW_OFFSET` (bytes added to every raw write offset, a multiple of
//! 4096: 4096 puts the raw writes where the WAL's land relative to their size). Prints one row per case, mode and
//! implementation, then `wal_vs_raw_ratio=X` (WAL appends/s over raw appends/s).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use skiff_engine::{Entry, EntryKind, HardState, SnapshotMeta, Storage};
use skiff_wal::format::{BATCH_HEADER_BYTES, BLOCK_BYTES, RECORD_HEADER_BYTES, round_up_block};
use skiff_wal::{Append, DmaFs, Identity, Wal, WalOptions};

/// Appends at most this many at once unacknowledged in pipelined mode: one being
/// written while the previous one is being synced (RUNTIME-NOTES).
const PIPELINE_DEPTH: usize = 2;
/// Region the raw loop cycles through; written once before measuring so every
/// measured write lands in already-written extents (as WAL writes do in pre-zeroed or
/// recycled segments).
const RAW_FILE_BYTES: u64 = 64 << 20;
/// Spares the WAL keeps during the benchmark; compaction recycles released segments,
/// as a node that snapshots regularly does.
const BENCH_SPARES: usize = 3;
/// Compact every this many appends, keeping the last ones.
const COMPACT_EVERY_APPENDS: u64 = 64;
/// Alternating raw/WAL rounds per case and mode; the median round is reported.
const ROUNDS: usize = 5;

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    entries: usize,
    entry_bytes: usize,
}

impl Case {
    /// Bytes of the write one append makes: header, records, padding.
    fn write_bytes(&self) -> usize {
        round_up_block(BATCH_HEADER_BYTES + self.entries * (RECORD_HEADER_BYTES + self.entry_bytes))
    }
}

/// A batch of exactly `bytes` on disk: one entry filling it.
const fn one_entry(name: &'static str, bytes: usize) -> Case {
    Case { name, entries: 1, entry_bytes: bytes - BATCH_HEADER_BYTES - RECORD_HEADER_BYTES }
}

const CASES: [Case; 6] = [
    one_entry("4KiB", 4 << 10),
    one_entry("64KiB", 64 << 10),
    one_entry("1MiB", 1 << 20),
    Case { name: "100Bx1", entries: 1, entry_bytes: 100 },
    Case { name: "100Bx64", entries: 64, entry_bytes: 100 },
    Case { name: "100Bx1024", entries: 1024, entry_bytes: 100 },
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Sequential,
    Pipelined,
}

struct Stats {
    appends: u64,
    entries: u64,
    bytes: u64,
    elapsed: Duration,
    lat_ns: Vec<u64>,
    /// Time inside `Wal::submit` (encoding, index update), WAL only.
    submit_ns: Vec<u64>,
}

impl Stats {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }

    fn pct_us(&mut self, p: f64) -> f64 {
        self.lat_ns.sort_unstable();
        let i = ((self.lat_ns.len() as f64 * p).ceil() as usize).clamp(1, self.lat_ns.len()) - 1;
        self.lat_ns[i] as f64 / 1000.0
    }

    fn row(&mut self, case: &Case, mode: Mode, what: &str) {
        let (p50, p99, p999) = (self.pct_us(0.50), self.pct_us(0.99), self.pct_us(0.999));
        let submit = if self.submit_ns.is_empty() {
            String::new()
        } else {
            self.submit_ns.sort_unstable();
            format!(" submit_p50_us={:.1}", self.submit_ns[self.submit_ns.len() / 2] as f64 / 1000.0)
        };
        println!(
            "{:<10} {:<10} {:<4} appends/s={:>9.0} MB/s={:>8.1} entries/s={:>10.0} p50_us={:>7.1} p99_us={:>7.1} p99.9_us={:>7.1}{submit}",
            case.name,
            format!("{mode:?}").to_lowercase(),
            what,
            self.per_sec(self.appends),
            self.per_sec(self.bytes) / 1e6,
            self.per_sec(self.entries),
            p50,
            p99,
            p999,
        );
    }
}

/// The physical limit: one aligned buffer written again and again with
/// `DmaFile::write_rc_at` over a pre-written region and made durable with `fdatasync`.
struct Raw {
    path: PathBuf,
    file: Rc<DmaFile>,
    buf: Rc<DmaBuffer>,
    slots: u64,
    next: u64,
    case: Case,
    /// Added to every write offset (`SKIFF_WAL_BENCH_RAW_OFFSET`).
    shift_bytes: u64,
}

impl Raw {
    async fn new(dir: &Path, case: Case) -> Raw {
        let path = dir.join("raw.dat");
        let _ = std::fs::remove_file(&path);
        let file = Rc::new(
            OpenOptions::new().read(true).write(true).create(true).dma_open(&path).await.expect("open raw file"),
        );
        let chunk = 1 << 20;
        let mut at = 0;
        while at < RAW_FILE_BYTES {
            let mut b = file.alloc_dma_buffer(chunk);
            b.as_bytes_mut().fill(0);
            file.write_at(b, at).await.expect("pre-write");
            at += chunk as u64;
        }
        file.fdatasync().await.expect("fdatasync");
        let len = case.write_bytes();
        let mut buf = file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(0x5A);
        // A diagnostic: WAL batches start 4 KiB after a multiple of their size (the
        // segment header block), and some devices care about alignment.
        let shift_bytes: u64 =
            setting("SKIFF_WAL_BENCH_RAW_OFFSET").map_or(0, |s| s.parse().expect("SKIFF_WAL_BENCH_RAW_OFFSET"));
        assert!(shift_bytes.is_multiple_of(BLOCK_BYTES as u64) && shift_bytes < len as u64);
        Raw { path, file, buf: Rc::new(buf), slots: RAW_FILE_BYTES / len as u64 - 1, next: 0, case, shift_bytes }
    }

    async fn round(&mut self, mode: Mode, secs: f64) -> Stats {
        let len = self.case.write_bytes() as u64;
        let mut lat = Vec::new();
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        let mut prev: Option<(glommio::task::JoinHandle<()>, Instant)> = None;
        while Instant::now() < deadline {
            let t0 = Instant::now();
            let off = self.shift_bytes + (self.next % self.slots) * len;
            self.next += 1;
            self.file.write_rc_at(self.buf.clone(), off).await.expect("raw write");
            match mode {
                Mode::Sequential => {
                    self.file.fdatasync().await.expect("raw fdatasync");
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                Mode::Pipelined => {
                    // fdatasync i runs while write i + 1 is issued; syncs stay in order.
                    if let Some((h, t)) = prev.take() {
                        h.await;
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    let f = self.file.clone();
                    let h = glommio::spawn_local(async move {
                        f.fdatasync().await.expect("raw fdatasync");
                    })
                    .detach();
                    prev = Some((h, t0));
                }
            }
            n += 1;
        }
        if let Some((h, t)) = prev.take() {
            h.await;
            lat.push(t.elapsed().as_nanos() as u64);
        }
        Stats {
            appends: n,
            entries: n * self.case.entries as u64,
            bytes: n * len,
            elapsed: start.elapsed(),
            lat_ns: lat,
            submit_ns: Vec::new(),
        }
    }

    async fn close(self) {
        self.file.close_rc().await.expect("close");
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The WAL appending `case` batches, compacting as a snapshotting node does.
struct WalBench {
    dir: PathBuf,
    wal: Wal<DmaFs>,
    index: u64,
    n: u64,
    payload: Bytes,
    case: Case,
}

impl WalBench {
    async fn new(dir: &Path, case: Case) -> WalBench {
        let dir = dir.join("wal");
        let _ = std::fs::remove_dir_all(&dir);
        let mut opts = WalOptions::new(&dir, Identity { cluster_id: 1, shard_id: 0, node_id: 1 });
        opts.spare_segments = BENCH_SPARES;
        if let Some(b) = setting("SKIFF_WAL_BENCH_SEGMENT_BYTES") {
            opts.segment_bytes = b.parse().expect("SKIFF_WAL_BENCH_SEGMENT_BYTES");
        }
        let wal = Wal::open(DmaFs, opts).await.expect("open wal");
        // Warm up: the first append activates a spare and the housekeeper zeroes a
        // replacement; measure from the steady state after that (later spares come
        // from recycling compacted segments).
        let warm = [Entry { term: 1, index: 1, kind: EntryKind::Normal, data: Bytes::from_static(b"warm-up") }];
        wal.submit(&Append { entries: &warm, must_sync: true, ..Default::default() }).await.expect("warm-up");
        wal.next_completion().await.expect("warm-up completion");
        wal.wait_spares(BENCH_SPARES).await.expect("spares");
        WalBench { dir, wal, index: 1, n: 0, payload: Bytes::from(vec![0x5Au8; case.entry_bytes]), case }
    }

    async fn round(&mut self, mode: Mode, secs: f64) -> Stats {
        let storage = self.wal.storage();
        let case = self.case;
        let mut started: VecDeque<Instant> = VecDeque::new();
        let mut lat = Vec::new();
        let mut submit_ns = Vec::new();
        let window = match mode {
            Mode::Sequential => 1,
            Mode::Pipelined => PIPELINE_DEPTH,
        };
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        let mut ents: Vec<Entry> = Vec::with_capacity(case.entries);
        loop {
            // At most `window` appends unacknowledged: take a completion when full.
            while started.len() >= window || (Instant::now() >= deadline && !started.is_empty()) {
                let c = self.wal.next_completion().await.expect("completion");
                assert!(c.synced);
                let t0 = started.pop_front().expect("started");
                lat.push(t0.elapsed().as_nanos() as u64);
            }
            if Instant::now() >= deadline {
                break;
            }
            ents.clear();
            for _ in 0..case.entries {
                self.index += 1;
                ents.push(Entry { term: 1, index: self.index, kind: EntryKind::Normal, data: self.payload.clone() });
            }
            let snap;
            let mut a = Append { tag: self.n, entries: &ents, hard_state: None, must_sync: true, ..Default::default() };
            if self.n % COMPACT_EVERY_APPENDS == COMPACT_EVERY_APPENDS - 1 {
                // A snapshot at the previous append: released segments get recycled.
                let cut = self.index - case.entries as u64;
                snap = SnapshotMeta { index: cut, term: storage.term(cut).expect("in log"), ..Default::default() };
                a.compact = Some(&snap);
                a.hard_state = Some(HardState { term: 1, vote: 1, commit: cut });
            }
            let t0 = Instant::now();
            started.push_back(t0);
            self.wal.submit(&a).await.expect("submit");
            submit_ns.push(t0.elapsed().as_nanos() as u64);
            self.n += 1;
            n += 1;
        }
        Stats {
            appends: n,
            entries: n * case.entries as u64,
            bytes: n * case.write_bytes() as u64,
            elapsed: start.elapsed(),
            lat_ns: lat,
            submit_ns,
        }
    }

    async fn close(self) {
        self.wal.close().await.expect("close");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The round with the median throughput (rounds alternate raw and WAL, so a burst of
/// load from elsewhere on a shared machine hits both, and the median drops it).
fn median(mut rounds: Vec<Stats>) -> Stats {
    rounds.sort_by(|a, b| a.per_sec(a.appends).total_cmp(&b.per_sec(b.appends)));
    let mid = rounds.len() / 2;
    rounds.swap_remove(mid)
}

/// Settings come from the environment because `cargo bench -p skiff-wal -- ARGS`
/// would hand ARGS to every bench target of the package.
fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn main() {
    let secs: f64 = setting("SKIFF_WAL_BENCH_SECS").map_or(5.0, |s| s.parse().expect("SKIFF_WAL_BENCH_SECS"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The disk's completion interrupt is handled on the last CPU here (RUNTIME-NOTES).
    let cpu: usize = setting("SKIFF_WAL_BENCH_CPU").map_or(cpus - 1, |s| s.parse().expect("SKIFF_WAL_BENCH_CPU"));
    let dir: PathBuf = std::env::var_os("SKIFF_WAL_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("wal-bench-{}", std::process::id())),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!(
        "skiff-wal bench: dir={} cpu={cpu} secs_per_case={secs} block={BLOCK_BYTES} pipeline_depth={PIPELINE_DEPTH}",
        dir.display()
    );
    let only: Option<String> = setting("SKIFF_WAL_BENCH_CASE");
    let d = dir.clone();
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name("wal-bench")
        .spawn(move || async move {
            for case in CASES.iter().filter(|c| only.as_deref().is_none_or(|o| o == c.name)) {
                let mut raw = Raw::new(&d, *case).await;
                let mut wal = WalBench::new(&d, *case).await;
                for mode in [Mode::Sequential, Mode::Pipelined] {
                    let (mut rs, mut ws) = (Vec::new(), Vec::new());
                    for _ in 0..ROUNDS {
                        rs.push(raw.round(mode, secs / ROUNDS as f64).await);
                        ws.push(wal.round(mode, secs / ROUNDS as f64).await);
                    }
                    let (mut r, mut w) = (median(rs), median(ws));
                    r.row(case, mode, "raw");
                    w.row(case, mode, "wal");
                    println!(
                        "{:<10} {:<10} write_bytes={} wal_vs_raw_ratio={:.3}",
                        case.name,
                        format!("{mode:?}").to_lowercase(),
                        case.write_bytes(),
                        w.per_sec(w.appends) / r.per_sec(r.appends)
                    );
                }
                raw.close().await;
                wal.close().await;
            }
        })
        .expect("executor")
        .join()
        .expect("bench run");
    let _ = std::fs::remove_dir_all(&dir);
}
