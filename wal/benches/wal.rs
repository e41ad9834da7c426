//! WAL throughput and latency against the physical limit, side by side in one run:
//! raw io_uring O_DIRECT write loops on a pre-written file, and the WAL appending
//! batches that make writes of the same size.
//!
//! Each is measured both ways of making a write durable and two ways of waiting:
//! - `fdatasync` `sequential`: write, fdatasync, next (one append at a time);
//! - `fdatasync` `pipelined`: the next write in flight while the previous fdatasync
//!   runs (at most two appends unacknowledged);
//! - `dsync` `sequential`: one `O_DSYNC` write at a time (write and flush in one);
//! - `dsync` `pipelined`: two `O_DSYNC` writes in flight.
//!
//! The raw loops come twice: `raw` writes one untouched buffer again and again (the
//! device's limit); `raw+copy` first copies the batch's bytes into the aligned buffer
//! from ordinary memory, the least any O_DIRECT log does for new data (on the
//! development VM, touching 1 MiB of the buffer before each write costs as much as a
//! fifth of a 1 MiB write's time).
//!
//! The WAL side builds each append's entries (the caller's work, which the raw loops
//! do not have) while the previous append is in flight, as a node's engine prepares its
//! next Ready while the disk writes.
//!
//! Run: `cargo bench -p skiff-wal`. Environment: `SKIFF_WAL_BENCH_SECS` (seconds per
//! case, mode and implementation, split over alternating rounds; default 3),
//! `SKIFF_WAL_BENCH_CPU` (CPU to pin to, default the last), `SKIFF_WAL_BENCH_CASE` (one
//! case only, e.g. `4KiB`), `SKIFF_WAL_BENCH_SYNC` (`dsync` or `fdatasync` only),
//! `SKIFF_WAL_BENCH_DIR` (directory on a disk file system with O_DIRECT; default under
//! target/), `SKIFF_WAL_BENCH_SEGMENT_BYTES` (segment size; default the WAL's),
//! `SKIFF_WAL_BENCH_RAW_OFFSET` (bytes added to every raw write offset, a multiple of
//! 4096: 4096 puts the raw writes where the WAL's land relative to their size). Prints
//! one row per case, mode and implementation, then `wal_vs_raw_ratio=X` (WAL appends/s
//! over raw appends/s, same sync and mode) and `wal_vs_rawcopy_ratio=Y` (over
//! `raw+copy`). `raw+copy` rows also print `copy_us`, the copy's own time per append:
//! what the row loses beyond it is the write itself getting slower.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use skiff_engine::{Entry, EntryKind, HardState, SnapshotMeta, Storage};
use skiff_wal::format::{BATCH_HEADER_BYTES, BLOCK_BYTES, RECORD_HEADER_BYTES, round_up_block};
use skiff_wal::{Append, DmaFs, Identity, SyncMode, Wal, WalOptions};

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
/// Alternating raw/raw+copy/WAL rounds per case and mode; the median round is reported.
const ROUNDS: usize = 5;
/// Default seconds per case, mode and implementation.
const SECS_DEFAULT: f64 = 3.0;

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
    /// Time spent copying bytes into the write buffers, `raw+copy` only.
    copy_ns: u64,
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

    fn row(&mut self, case: &Case, label: &str, what: &str) {
        let (p50, p99, p999) = (self.pct_us(0.50), self.pct_us(0.99), self.pct_us(0.999));
        let submit = if self.submit_ns.is_empty() {
            String::new()
        } else {
            self.submit_ns.sort_unstable();
            format!(" submit_p50_us={:.1}", self.submit_ns[self.submit_ns.len() / 2] as f64 / 1000.0)
        };
        let copy = if self.copy_ns == 0 {
            String::new()
        } else {
            format!(" copy_us={:.1}", self.copy_ns as f64 / self.appends.max(1) as f64 / 1000.0)
        };
        println!(
            "{:<10} {:<20} {:<8} appends/s={:>9.0} MB/s={:>8.1} entries/s={:>10.0} p50_us={:>7.1} p99_us={:>7.1} p99.9_us={:>7.1}{submit}{copy}",
            case.name,
            label,
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

/// The physical limit: aligned buffers written again and again over a pre-written
/// region with `DmaFile::write_rc_at`, made durable by `fdatasync` or by opening the
/// file `O_DSYNC`.
struct Raw {
    path: PathBuf,
    file: Rc<DmaFile>,
    /// The same file opened `O_DSYNC`.
    dsync: Rc<DmaFile>,
    /// One buffer per write that can be in flight, plus one being filled.
    bufs: Vec<Rc<DmaBuffer>>,
    /// What `raw+copy` copies into a buffer before each write.
    source: Vec<u8>,
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
        // Created with one written block before glommio first opens it: glommio probes
        // the device's polled ring by reading block 0 of the first file it opens, and
        // an empty file fools the probe (see `DmaFs::probe_device`).
        std::fs::write(&path, [0u8; BLOCK_BYTES]).expect("create raw file");
        let file = Rc::new(OpenOptions::new().read(true).write(true).dma_open(&path).await.expect("open raw file"));
        let chunk = 1 << 20;
        let mut at = 0;
        while at < RAW_FILE_BYTES {
            let mut b = file.alloc_dma_buffer(chunk);
            b.as_bytes_mut().fill(0);
            file.write_at(b, at).await.expect("pre-write");
            at += chunk as u64;
        }
        file.fdatasync().await.expect("fdatasync");
        let dsync = Rc::new(
            OpenOptions::new().write(true).custom_flags(libc::O_DSYNC).dma_open(&path).await.expect("open O_DSYNC"),
        );
        let len = case.write_bytes();
        let bufs = (0..=PIPELINE_DEPTH)
            .map(|_| {
                let mut buf = file.alloc_dma_buffer(len);
                buf.as_bytes_mut().fill(0x5A);
                Rc::new(buf)
            })
            .collect();
        // A diagnostic: WAL batches start 4 KiB after a multiple of their size (the
        // segment header block), and some devices care about alignment.
        let shift_bytes: u64 =
            setting("SKIFF_WAL_BENCH_RAW_OFFSET").map_or(0, |s| s.parse().expect("SKIFF_WAL_BENCH_RAW_OFFSET"));
        assert!(shift_bytes.is_multiple_of(BLOCK_BYTES as u64) && shift_bytes < len as u64);
        let source = (0..len).map(|i| (i * 31) as u8).collect();
        Raw { path, file, dsync, bufs, source, slots: RAW_FILE_BYTES / len as u64 - 1, next: 0, case, shift_bytes }
    }

    /// The next write's buffer and offset; with `copy`, the batch's bytes are copied in
    /// first (a buffer is only reused once its write has finished).
    fn next_write(&mut self, copy: bool) -> (Rc<DmaBuffer>, u64) {
        let len = self.case.write_bytes() as u64;
        let off = self.shift_bytes + (self.next % self.slots) * len;
        let i = (self.next % self.bufs.len() as u64) as usize;
        self.next += 1;
        if copy {
            let stamp = self.next as u8;
            let buf = Rc::get_mut(&mut self.bufs[i]).expect("buffer reused only after its write");
            buf.as_bytes_mut().copy_from_slice(&self.source);
            buf.as_bytes_mut()[0] = stamp;
        }
        (self.bufs[i].clone(), off)
    }

    async fn round(&mut self, sync: SyncMode, mode: Mode, copy: bool, secs: f64) -> Stats {
        let len = self.case.write_bytes() as u64;
        let mut lat = Vec::new();
        let mut copy_ns = 0u64;
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        let mut in_flight: VecDeque<(glommio::task::JoinHandle<()>, Instant)> = VecDeque::new();
        let window = match mode {
            Mode::Sequential => 1,
            Mode::Pipelined => PIPELINE_DEPTH,
        };
        while Instant::now() < deadline {
            let t0 = Instant::now();
            let (buf, off) = self.next_write(copy);
            if copy {
                copy_ns += t0.elapsed().as_nanos() as u64;
            }
            match (sync, mode) {
                (SyncMode::Fdatasync, Mode::Sequential) => {
                    self.file.write_rc_at(buf, off).await.expect("raw write");
                    self.file.fdatasync().await.expect("raw fdatasync");
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                (SyncMode::Fdatasync, Mode::Pipelined) => {
                    self.file.write_rc_at(buf, off).await.expect("raw write");
                    // fdatasync i runs while write i + 1 is issued; syncs stay in order.
                    if let Some((h, t)) = in_flight.pop_front() {
                        h.await;
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    let f = self.file.clone();
                    let h = glommio::spawn_local(async move {
                        f.fdatasync().await.expect("raw fdatasync");
                    })
                    .detach();
                    in_flight.push_back((h, t0));
                }
                (SyncMode::Dsync, Mode::Sequential) => {
                    self.dsync.write_rc_at(buf, off).await.expect("raw O_DSYNC write");
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                (SyncMode::Dsync, Mode::Pipelined) => {
                    // Up to `window` durable writes in flight; completions taken in order.
                    if in_flight.len() >= window {
                        let (h, t) = in_flight.pop_front().expect("window is at least 1");
                        h.await;
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    let f = self.dsync.clone();
                    let h = glommio::spawn_local(async move {
                        f.write_rc_at(buf, off).await.expect("raw O_DSYNC write");
                    })
                    .detach();
                    in_flight.push_back((h, t0));
                }
            }
            n += 1;
        }
        while let Some((h, t)) = in_flight.pop_front() {
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
            copy_ns,
        }
    }

    async fn close(self) {
        self.dsync.close_rc().await.expect("close");
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
    async fn new(dir: &Path, case: Case, sync: SyncMode) -> WalBench {
        let dir = dir.join("wal");
        let _ = std::fs::remove_dir_all(&dir);
        let mut opts = WalOptions::new(&dir, Identity { cluster_id: 1, shard_id: 0, node_id: 1 });
        opts.spare_segments = BENCH_SPARES;
        opts.sync = sync;
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
        // The caller's part, not the WAL's: the entries of the next append are built
        // while the previous one is in flight, as a node's engine prepares its next
        // Ready while the disk writes (the raw loops have no such work).
        let mut ents: Vec<Entry> = Vec::with_capacity(case.entries);
        let fill = |ents: &mut Vec<Entry>, index: &mut u64| {
            ents.clear();
            for _ in 0..case.entries {
                *index += 1;
                ents.push(Entry { term: 1, index: *index, kind: EntryKind::Normal, data: self.payload.clone() });
            }
        };
        fill(&mut ents, &mut self.index);
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
            let snap;
            let mut a = Append { tag: self.n, entries: &ents, hard_state: None, must_sync: true, ..Default::default() };
            if self.n % COMPACT_EVERY_APPENDS == COMPACT_EVERY_APPENDS - 1 {
                // A snapshot at the previous append: released segments get recycled.
                let cut = ents[0].index - 1;
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
            fill(&mut ents, &mut self.index);
        }
        // The last batch was built but never appended: the next round starts after it.
        self.index -= case.entries as u64;
        Stats {
            appends: n,
            entries: n * case.entries as u64,
            bytes: n * case.write_bytes() as u64,
            elapsed: start.elapsed(),
            lat_ns: lat,
            submit_ns,
            copy_ns: 0,
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
    let secs: f64 = setting("SKIFF_WAL_BENCH_SECS").map_or(SECS_DEFAULT, |s| s.parse().expect("SKIFF_WAL_BENCH_SECS"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The disk's completion interrupt is handled on the last CPU here (RUNTIME-NOTES).
    let cpu: usize = setting("SKIFF_WAL_BENCH_CPU").map_or(cpus - 1, |s| s.parse().expect("SKIFF_WAL_BENCH_CPU"));
    let dir: PathBuf = std::env::var_os("SKIFF_WAL_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("wal-bench-{}", std::process::id())),
        PathBuf::from,
    );
    let syncs: Vec<SyncMode> = match setting("SKIFF_WAL_BENCH_SYNC") {
        Some(s) => vec![SyncMode::from_name(&s).expect("SKIFF_WAL_BENCH_SYNC: dsync or fdatasync")],
        None => vec![SyncMode::Dsync, SyncMode::Fdatasync],
    };
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
                for &sync in &syncs {
                    let mut wal = WalBench::new(&d, *case, sync).await;
                    for mode in [Mode::Sequential, Mode::Pipelined] {
                        let (mut rs, mut cs, mut ws) = (Vec::new(), Vec::new(), Vec::new());
                        let per_round = secs / ROUNDS as f64;
                        for _ in 0..ROUNDS {
                            rs.push(raw.round(sync, mode, false, per_round).await);
                            cs.push(raw.round(sync, mode, true, per_round).await);
                            ws.push(wal.round(mode, per_round).await);
                        }
                        let (mut r, mut c, mut w) = (median(rs), median(cs), median(ws));
                        let label = format!("{} {:?}", sync.name(), mode).to_lowercase();
                        r.row(case, &label, "raw");
                        c.row(case, &label, "raw+copy");
                        w.row(case, &label, "wal");
                        let wal_rate = w.per_sec(w.appends);
                        println!(
                            "{:<10} {:<20} write_bytes={} wal_vs_raw_ratio={:.3} wal_vs_rawcopy_ratio={:.3}",
                            case.name,
                            label,
                            case.write_bytes(),
                            wal_rate / r.per_sec(r.appends),
                            wal_rate / c.per_sec(c.appends)
                        );
                    }
                    wal.close().await;
                }
                raw.close().await;
            }
        })
        .expect("executor")
        .join()
        .expect("bench run");
    let _ = std::fs::remove_dir_all(&dir);
}
