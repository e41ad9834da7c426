//! The writer: group-committed, pipelined appends into pre-created segments, in-order
//! completions, fail-stop on I/O errors, and compaction.
//!
//! Three tasks run on the shard's executor next to the caller:
//! - the *writer* issues one aligned write per append, in submission order, and at a
//!   segment boundary waits until everything before is durable (so a segment's first
//!   write never races the previous segment's tail; recovery relies on it). How a write
//!   becomes durable is the [`SyncMode`]: with [`SyncMode::Dsync`] (the default) each
//!   write is an `O_DSYNC` write, durable when it completes, and several are in flight
//!   at once, so the device merges their cache flushes; with [`SyncMode::Fdatasync`]
//!   one plain write is in flight at a time and the syncer makes it durable;
//! - the *syncer* ([`SyncMode::Fdatasync`] only) runs one `fdatasync` at a time
//!   covering every write completed when it started, so write `i + 1` proceeds while
//!   fsync `i` runs (RUNTIME-NOTES: pipelining doubles small-batch throughput);
//! - completions are reported in submission order whatever order the device finishes
//!   writes in;
//! - the *housekeeper* keeps spare segments pre-zeroed (or recycles compacted ones) and
//!   removes released segments, off the critical path, each followed by a directory
//!   fsync.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

use skiff_engine::{Entry, HardState, Index, SnapshotMeta};

use crate::error::WalError;
use crate::format::{
    self, APPENDS_IN_FLIGHT_MAX, BATCH_BYTES_MAX, BLOCK_BYTES, Identity, RecordRef, SEGMENT_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SEGMENT_DATA_OFFSET_BYTES, SegmentHeader,
};
use crate::fs::{FileSystem, IoBuffer, WalFile};
use crate::log::{EntryLoc, LogState, WalStorage, compaction_point};
use crate::recovery::{self, Replay, TornTail};

/// Default tail cache: recent entries served from memory to followers that are a
/// little behind. 64 MiB holds several seconds of a busy shard's log.
pub const TAIL_CACHE_BYTES_DEFAULT: u64 = 64 << 20;
/// Spare segments kept ready by default: one is enough when the disk can zero a
/// segment faster than the WAL fills one; more smooths bursts.
pub const SPARE_SEGMENTS_DEFAULT: usize = 1;
/// Upper bound on spares (each is a full segment on disk).
pub const SPARE_SEGMENTS_MAX: usize = 64;
/// Write size when pre-zeroing a segment: large writes keep zeroing cheap, 1 MiB keeps
/// the buffer small and lets WAL writes interleave.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Read size when scanning segments at start-up.
const RECOVERY_READ_BYTES: usize = 8 << 20;

const _: () = assert!(ZERO_CHUNK_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(RECOVERY_READ_BYTES.is_multiple_of(BLOCK_BYTES));

/// How appends are made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Every append is one `O_DSYNC` write: the write and the cache flush behind it are
    /// one operation, and up to [`APPENDS_IN_FLIGHT_MAX`] of them are in flight at once.
    /// Measured here (fio, 4 KiB, io_uring, O_DIRECT): 6,700 durable writes/s at queue
    /// depth 1 (as write + fdatasync), 15,600/s at depth 2 and 21,600/s at depth 4,
    /// because the device merges concurrent flushes; no `fdatasync` goes through
    /// io_uring's worker threads.
    #[default]
    Dsync,
    /// One plain write in flight at a time, made durable by `fdatasync`s that overlap
    /// the next write.
    Fdatasync,
}

impl SyncMode {
    /// The configuration name: `dsync` or `fdatasync`.
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Dsync => "dsync",
            SyncMode::Fdatasync => "fdatasync",
        }
    }

    /// Parses [`SyncMode::name`].
    pub fn from_name(s: &str) -> Option<SyncMode> {
        match s {
            "dsync" => Some(SyncMode::Dsync),
            "fdatasync" => Some(SyncMode::Fdatasync),
            _ => None,
        }
    }

    /// Writes the writer keeps in flight at once.
    fn writes_in_flight_max(self) -> usize {
        match self {
            SyncMode::Dsync => APPENDS_IN_FLIGHT_MAX as usize,
            SyncMode::Fdatasync => 1,
        }
    }
}

/// How a WAL is opened.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// The shard's WAL directory; created when missing.
    pub dir: PathBuf,
    /// Whose WAL this is; a directory with another identity is refused.
    pub identity: Identity,
    /// Segment size in bytes, a multiple of 4 KiB in
    /// [`SEGMENT_BYTES_MIN`, `SEGMENT_BYTES_MAX`]. Default [`SEGMENT_BYTES_DEFAULT`].
    pub segment_bytes: u64,
    /// Tail cache budget in bytes (by `Entry::size_bytes`). Default
    /// [`TAIL_CACHE_BYTES_DEFAULT`].
    pub tail_cache_bytes: u64,
    /// Spare segments kept pre-created, 1 to [`SPARE_SEGMENTS_MAX`]. Default
    /// [`SPARE_SEGMENTS_DEFAULT`].
    pub spare_segments: usize,
    /// How appends are made durable. Default [`SyncMode::Dsync`].
    pub sync: SyncMode,
    /// Entries kept below each local snapshot (a compaction keeps the last this many
    /// entries up to the snapshot's index), so that a follower slightly behind catches
    /// up from the log rather than receiving the whole snapshot; etcd keeps 5,000.
    /// Default 0: compact to the snapshot's index.
    pub catchup_entries: u64,
    /// Bound on the encoded bytes of those entries. Default `u64::MAX`.
    pub catchup_bytes: u64,
}

impl WalOptions {
    /// Defaults for `dir` and `identity`.
    pub fn new(dir: impl Into<PathBuf>, identity: Identity) -> WalOptions {
        WalOptions {
            dir: dir.into(),
            identity,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            tail_cache_bytes: TAIL_CACHE_BYTES_DEFAULT,
            spare_segments: SPARE_SEGMENTS_DEFAULT,
            sync: SyncMode::default(),
            catchup_entries: 0,
            catchup_bytes: u64::MAX,
        }
    }

    /// Checks the bounds documented on each field.
    pub fn validate(&self) -> Result<(), WalError> {
        let bad = |reason: String| WalError::BadDataDir { dir: self.dir.clone(), reason };
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
            || !self.segment_bytes.is_multiple_of(BLOCK_BYTES as u64)
        {
            return Err(bad(format!(
                "segment size {} must be a multiple of {BLOCK_BYTES} between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}",
                self.segment_bytes
            )));
        }
        if !(1..=SPARE_SEGMENTS_MAX).contains(&self.spare_segments) {
            return Err(bad(format!(
                "spare segments {} must be between 1 and {SPARE_SEGMENTS_MAX}",
                self.spare_segments
            )));
        }
        Ok(())
    }

    /// The largest encoded append (one batch) these options allow.
    pub fn batch_bytes_max(&self) -> usize {
        BATCH_BYTES_MAX.min((self.segment_bytes - SEGMENT_DATA_OFFSET_BYTES) as usize)
    }
}

/// One append: the persistent part of one Ready.
#[derive(Clone, Copy, Debug, Default)]
pub struct Append<'a> {
    /// The caller's number for it (the Ready number), echoed in its [`Completion`].
    pub tag: u64,
    /// A snapshot received from the leader that replaces the whole log (applied first).
    pub install: Option<&'a SnapshotMeta>,
    /// Entries to persist; the first may be at or below the last index (a follower's
    /// conflicting suffix is replaced, Raft §5.3).
    pub entries: &'a [Entry],
    /// A new hard state (applied after the entries).
    pub hard_state: Option<HardState>,
    /// A local snapshot now covers the log up to this point: compact to it (applied
    /// last). Segments entirely below it are released once this append is durable.
    pub compact: Option<&'a SnapshotMeta>,
    /// Wait for fdatasync before completing (Ready::must_sync). When false the append
    /// completes once written, in order; a later fsync still covers it.
    pub must_sync: bool,
}

/// An append the WAL finished, reported in submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The WAL's sequence number for the append (its batch seq).
    pub seq: u64,
    /// [`Append::tag`].
    pub tag: u64,
    /// An fdatasync covering it completed: everything it carried is durable.
    pub synced: bool,
}

/// A measured write or fdatasync, for the node's latency histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoTiming {
    /// One append's `write_at`: the entries it carried, its bytes on disk (padding
    /// included) and how long it took.
    Write { entries: u64, bytes: u64, took: std::time::Duration },
    /// One `fdatasync` (covering every write completed before it began).
    Fsync { took: std::time::Duration },
    /// One append's `O_DSYNC` write ([`SyncMode::Dsync`]): the write and its flush.
    DurableWrite { entries: u64, bytes: u64, took: std::time::Duration },
}

/// Timings kept until the node takes them: if it never does, the oldest are dropped.
pub const IO_TIMINGS_MAX: usize = 4096;

/// What `Wal::open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// A torn tail that was dropped (already logged to stderr by `open`).
    pub torn_tail: Option<TornTail>,
    /// Segments that held the log.
    pub segments: usize,
    /// Spares and torn segment activations removed.
    pub removed: usize,
}

struct Pending<B> {
    seq: u64,
    segment_seq: u64,
    offset: u64,
    activates: bool,
    buf: B,
    /// Entry records it carries (for the node's batch-size histogram).
    entries: u64,
}

#[derive(Clone, Copy)]
struct Unacked {
    seq: u64,
    tag: u64,
    sync: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Writer = 0,
    Syncer = 1,
    House = 2,
    /// The caller waiting for room in `submit`.
    Room = 3,
    /// The caller waiting in `next_completion`.
    Completion = 4,
    /// The caller waiting in `close` or `wait_spares`.
    Other = 5,
}
const SLOTS: usize = 6;
/// Every slot a caller may wait in.
const CALLER: [Slot; 3] = [Slot::Room, Slot::Completion, Slot::Other];

struct State<F: FileSystem> {
    stopped: Option<String>,
    closing: bool,
    // Where the next submitted batch goes.
    next_seq: u64,
    seg_seq: u64,
    seg_activated: bool,
    seg_has_batches: bool,
    seg_offset: u64,
    // Pipeline.
    queue: VecDeque<Pending<F::Buffer>>,
    unacked: VecDeque<Unacked>,
    completions: VecDeque<Completion>,
    reported_seq: u64,
    written_seq: u64,
    synced_seq: u64,
    /// Durable writes in flight ([`SyncMode::Dsync`]).
    writing: usize,
    /// Durable writes that finished ahead of an earlier one still in flight.
    finished_early: std::collections::BTreeSet<u64>,
    active: Option<Rc<F::File>>,
    // Segments.
    /// Ready spares: seq, file, and whether it was recycled (it holds an older
    /// segment's bytes, which its header must say; see `SegmentHeader::recycled`).
    spares: VecDeque<(u64, Rc<F::File>, bool)>,
    spare_error: Option<String>,
    /// The spare target was reached once: from then on new zeroed segments are only
    /// made when no spare is left, and otherwise spares come from recycling, so that
    /// a node that compacts regularly never pays for zeroing a segment twice.
    spares_filled: bool,
    next_spare_seq: u64,
    /// Appends carrying a compaction or install: (seq, segment it is in, first segment
    /// still holding the log after it; `None` when the log after it is empty).
    releases: VecDeque<(u64, u64, Option<u64>)>,
    /// Segments released and not yet recycled or removed.
    released: VecDeque<u64>,
    /// Segments holding the log, ascending.
    segments: VecDeque<u64>,
    wakers: [Option<Waker>; SLOTS],
    timings: VecDeque<IoTiming>,
}

impl<F: FileSystem> State<F> {
    fn record_timing(&mut self, t: IoTiming) {
        if self.timings.len() >= IO_TIMINGS_MAX {
            self.timings.pop_front();
        }
        self.timings.push_back(t);
    }
}

struct Inner<F: FileSystem> {
    fs: F,
    opts: WalOptions,
    log: Rc<RefCell<LogState<F::File>>>,
    st: RefCell<State<F>>,
}

/// A shard's write-ahead log. Not `Send`: it lives on its shard's executor.
pub struct Wal<F: FileSystem> {
    inner: Rc<Inner<F>>,
    report: OpenReport,
}

impl<F: FileSystem> std::fmt::Debug for Wal<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.st.borrow();
        f.debug_struct("Wal")
            .field("dir", &self.inner.opts.dir)
            .field("next_seq", &st.next_seq)
            .field("synced_seq", &st.synced_seq)
            .field("stopped", &st.stopped)
            .finish()
    }
}

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> WalError {
    WalError::Io { op, path: path.to_path_buf(), source }
}

impl<F: FileSystem> Inner<F> {
    fn path(&self, seq: u64) -> PathBuf {
        self.opts.dir.join(format::segment_name(seq))
    }

    fn wake(&self, slots: &[Slot]) {
        // Taken out first: a waker may run code that borrows the state again.
        let mut taken: [Option<Waker>; SLOTS] = Default::default();
        {
            let mut st = self.st.borrow_mut();
            for &s in slots {
                taken[s as usize] = st.wakers[s as usize].take();
            }
        }
        for w in taken.into_iter().flatten() {
            w.wake();
        }
    }

    fn wake_all(&self) {
        self.wake(&[Slot::Writer, Slot::Syncer, Slot::House]);
        self.wake(&CALLER);
    }

    /// Fail-stop: records why, and every later call reports it.
    fn fail(&self, why: String) {
        {
            let mut st = self.st.borrow_mut();
            if st.stopped.is_none() {
                st.stopped = Some(why);
            }
        }
        self.wake_all();
    }

    /// Resolves when `ready` holds (checked on every wake of `slot`).
    async fn wait(&self, slot: Slot, mut ready: impl FnMut(&State<F>) -> bool) {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if ready(&st) {
                Poll::Ready(())
            } else {
                st.wakers[slot as usize] = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Moves finished appends, in order, to the completion queue.
    fn advance_completions(&self) {
        let mut st = self.st.borrow_mut();
        if st.stopped.is_some() {
            // Fail-stop: a write finishing after the failure reports nothing, not
            // even "written" for an append that asked for no sync.
            return;
        }
        while let Some(u) = st.unacked.front().copied() {
            let synced = u.seq <= st.synced_seq;
            if !(synced || (!u.sync && u.seq <= st.written_seq)) {
                break;
            }
            st.unacked.pop_front();
            st.completions.push_back(Completion { seq: u.seq, tag: u.tag, synced });
        }
    }

    /// After a compaction or install is durable: segments wholly below the live log
    /// (and below the segment holding that record, which recovery must still read)
    /// are released.
    fn release_segments(&self) {
        let mut st = self.st.borrow_mut();
        let mut keep_from = None;
        while let Some(&(seq, seg, live)) = st.releases.front() {
            if seq > st.synced_seq {
                break;
            }
            st.releases.pop_front();
            keep_from = Some((seg, live));
        }
        let Some((marker_seg, live)) = keep_from else { return };
        let mut log = self.log.borrow_mut();
        // The live log as of the durable compaction, not the current one: a later
        // compaction already submitted but not yet durable must not release segments
        // that recovery would still need if it never became durable.
        let bound = live.map_or(marker_seg, |s| s.min(marker_seg));
        let bound = log.first_live_segment().map_or(bound, |s| s.min(bound));
        while st.segments.front().is_some_and(|&s| s < bound) {
            let s = st.segments.pop_front().expect("non-empty");
            log.files.remove(&s);
            st.released.push_back(s);
        }
        drop(log);
        drop(st);
        self.wake(&[Slot::House]);
    }
}

async fn writer_task<F: FileSystem + 'static>(inner: Rc<Inner<F>>) {
    let mode = inner.opts.sync;
    let depth = mode.writes_in_flight_max();
    loop {
        inner
            .wait(Slot::Writer, |st| st.stopped.is_some() || st.closing || (!st.queue.is_empty() && st.writing < depth))
            .await;
        let mut p = {
            let mut st = inner.st.borrow_mut();
            if st.stopped.is_some() || st.closing {
                return;
            }
            st.queue.pop_front().expect("woken with work")
        };
        if p.activates {
            // A segment's first write starts only once everything before it is
            // durable; recovery's segment-boundary checks rely on it.
            inner
                .wait(Slot::Writer, |st| {
                    st.stopped.is_some()
                        || st.closing
                        || (st.synced_seq + 1 >= p.seq && (!st.spares.is_empty() || st.spare_error.is_some()))
                })
                .await;
            let mut st = inner.st.borrow_mut();
            if st.stopped.is_some() || st.closing {
                return;
            }
            if st.spares.is_empty() {
                let why = st.spare_error.clone().expect("woken with an error");
                drop(st);
                inner.fail(format!(
                    "cannot prepare segment {} for batch {}: {why}",
                    format::segment_name(p.segment_seq),
                    p.seq
                ));
                return;
            }
            let (seq, file, recycled) = st.spares.pop_front().expect("checked");
            assert_eq!(seq, p.segment_seq, "spares are activated in order");
            if recycled {
                SegmentHeader::mark_recycled(&mut p.buf.as_mut_slice()[..BLOCK_BYTES]);
            }
            st.active = Some(file.clone());
            st.segments.push_back(seq);
            inner.log.borrow_mut().files.insert(seq, file);
            drop(st);
            inner.wake(&[Slot::House]);
        }
        let file = inner.st.borrow().active.clone().expect("a segment is active");
        let (bytes, entries) = (p.buf.as_slice().len() as u64, p.entries);
        let started = std::time::Instant::now();
        if mode == SyncMode::Dsync {
            inner.st.borrow_mut().writing += 1;
            let inner = inner.clone();
            let meta = p.meta();
            glommio::spawn_local(async move {
                let r = file.write_durable_at(p.buf, meta.offset).await;
                durable_write_done(&inner, &meta, entries, bytes, started.elapsed(), r);
            })
            .detach();
            continue;
        }
        match file.write_at(p.buf, p.offset).await {
            Ok(()) => {
                {
                    let mut st = inner.st.borrow_mut();
                    st.written_seq = p.seq;
                    st.record_timing(IoTiming::Write { entries, bytes, took: started.elapsed() });
                }
                {
                    let mut log = inner.log.borrow_mut();
                    log.written_batch_seq = p.seq;
                    log.evict();
                }
                inner.advance_completions();
                inner.wake(&[Slot::Syncer]);
                inner.wake(&CALLER);
            }
            Err(e) => {
                inner.fail(format!(
                    "write of batch {} to {} at offset {} failed: {e}",
                    p.seq,
                    inner.path(p.segment_seq).display(),
                    p.offset
                ));
                return;
            }
        }
    }
}

/// Where a queued write goes, kept for reporting once its buffer is handed over.
struct WriteMeta {
    seq: u64,
    segment_seq: u64,
    offset: u64,
}

impl<B> Pending<B> {
    fn meta(&self) -> WriteMeta {
        WriteMeta { seq: self.seq, segment_seq: self.segment_seq, offset: self.offset }
    }
}

/// A [`SyncMode::Dsync`] write finished: what is durable now is the longest run of
/// finished writes after the last durable one (writes may finish out of order; the
/// in-flight bound keeps any of them within [`APPENDS_IN_FLIGHT_MAX`] of the oldest,
/// which is what recovery's torn-tail rule assumes).
fn durable_write_done<F: FileSystem>(
    inner: &Inner<F>,
    w: &WriteMeta,
    entries: u64,
    bytes: u64,
    took: std::time::Duration,
    result: std::io::Result<()>,
) {
    if let Err(e) = result {
        inner.st.borrow_mut().writing -= 1;
        inner.fail(format!(
            "durable write of batch {} to {} at offset {} failed: {e}; it is not durable and will never be \
             reported so",
            w.seq,
            inner.path(w.segment_seq).display(),
            w.offset
        ));
        return;
    }
    let durable = {
        let mut st = inner.st.borrow_mut();
        st.writing -= 1;
        st.record_timing(IoTiming::DurableWrite { entries, bytes, took });
        st.finished_early.insert(w.seq);
        loop {
            let next = st.written_seq + 1;
            if !st.finished_early.remove(&next) {
                break;
            }
            st.written_seq = next;
        }
        st.synced_seq = st.written_seq;
        st.written_seq
    };
    {
        let mut log = inner.log.borrow_mut();
        log.written_batch_seq = durable;
        log.evict();
    }
    inner.advance_completions();
    inner.release_segments();
    inner.wake(&[Slot::Writer]);
    inner.wake(&CALLER);
}

async fn syncer_task<F: FileSystem>(inner: Rc<Inner<F>>) {
    loop {
        inner.wait(Slot::Syncer, |st| st.stopped.is_some() || st.closing || st.written_seq > st.synced_seq).await;
        let (target, file) = {
            let st = inner.st.borrow();
            if st.stopped.is_some() || st.closing {
                return;
            }
            // Every unsynced write is in the active segment: the writer switches
            // segments only when nothing is left unsynced.
            (st.written_seq, st.active.clone().expect("written implies active"))
        };
        let started = std::time::Instant::now();
        match file.fdatasync().await {
            Ok(()) => {
                {
                    let mut st = inner.st.borrow_mut();
                    st.synced_seq = target;
                    st.record_timing(IoTiming::Fsync { took: started.elapsed() });
                }
                inner.advance_completions();
                inner.release_segments();
                inner.wake(&[Slot::Writer]);
                inner.wake(&CALLER);
            }
            Err(e) => {
                inner.fail(format!(
                    "fdatasync covering batches up to {target} failed: {e}; those batches \
                     are not durable and will never be reported so"
                ));
                return;
            }
        }
    }
}

async fn housekeeper_task<F: FileSystem>(inner: Rc<Inner<F>>) {
    loop {
        let need_spare = |st: &State<F>| {
            st.spare_error.is_none()
                && st.spares.len() < inner.opts.spare_segments
                && (!st.spares_filled || st.spares.is_empty() || !st.released.is_empty())
        };
        inner
            .wait(Slot::House, |st| {
                st.stopped.is_some() || st.closing || need_spare(st) || st.released.len() > inner.opts.spare_segments
            })
            .await;
        let (stop, released, need_spare) = {
            let st = inner.st.borrow();
            (st.stopped.is_some() || st.closing, st.released.front().copied(), need_spare(&st))
        };
        if stop {
            return;
        }
        let result = if need_spare {
            let seq = {
                let mut st = inner.st.borrow_mut();
                st.next_spare_seq += 1;
                st.next_spare_seq - 1
            };
            let made = match released {
                Some(old) => {
                    inner.st.borrow_mut().released.pop_front();
                    recycle_segment(&inner, old, seq).await.map(|f| (f, true))
                }
                None => create_segment(&inner, seq).await.map(|f| (f, false)),
            };
            match made {
                Ok((file, recycled)) => {
                    let mut st = inner.st.borrow_mut();
                    st.spares.push_back((seq, Rc::new(file), recycled));
                    if st.spares.len() >= inner.opts.spare_segments {
                        st.spares_filled = true;
                    }
                    drop(st);
                    inner.wake(&[Slot::Writer, Slot::Other]);
                    Ok(())
                }
                Err(e) => {
                    // Not fatal yet: the writer fails when it needs this segment, before
                    // acknowledging anything that would depend on it.
                    inner.st.borrow_mut().spare_error = Some(e.to_string());
                    inner.wake(&[Slot::Writer, Slot::Other]);
                    Ok(())
                }
            }
        } else {
            let old = inner.st.borrow_mut().released.pop_front().expect("woken with work");
            let path = inner.path(old);
            match inner.fs.remove(&path).await {
                Ok(()) => {
                    inner.fs.sync_dir(&inner.opts.dir).await.map_err(|e| io_err("fsync directory", &inner.opts.dir, e))
                }
                Err(e) => Err(io_err("remove", &path, e)),
            }
        };
        if let Err(e) = result {
            inner.fail(e.to_string());
            return;
        }
    }
}

/// Creates a spare: a fully zeroed file under a temporary name, made durable, then
/// renamed into place and the directory synced. Zeroing (rather than fallocate) means
/// later writes land in already-written extents, which fdatasync much faster.
async fn create_segment<F: FileSystem>(inner: &Inner<F>, seq: u64) -> Result<F::File, WalError> {
    let dir = &inner.opts.dir;
    let tmp = dir.join(format::temp_name(seq));
    let path = inner.path(seq);
    let file = inner.fs.create(&tmp).await.map_err(|e| io_err("create", &tmp, e))?;
    let mut at = 0u64;
    while at < inner.opts.segment_bytes {
        let len = (ZERO_CHUNK_BYTES as u64).min(inner.opts.segment_bytes - at) as usize;
        let mut buf = inner.fs.alloc_buffer(len);
        buf.as_mut_slice().fill(0);
        file.write_at(buf, at).await.map_err(|e| io_err("zero-fill", &tmp, e))?;
        at += len as u64;
    }
    file.fdatasync().await.map_err(|e| io_err("fdatasync", &tmp, e))?;
    inner.fs.rename(&tmp, &path).await.map_err(|e| io_err("rename", &tmp, e))?;
    inner.fs.sync_dir(dir).await.map_err(|e| io_err("fsync directory", dir, e))?;
    Ok(file)
}

/// Turns a released segment into a spare: zero its header (its old batches carry the
/// old segment seq, which recovery never takes for the new one's), rename, sync.
async fn recycle_segment<F: FileSystem>(inner: &Inner<F>, old: u64, seq: u64) -> Result<F::File, WalError> {
    let dir = &inner.opts.dir;
    let from = inner.path(old);
    let to = inner.path(seq);
    let file = inner.fs.open(&from).await.map_err(|e| io_err("open", &from, e))?;
    let mut buf = inner.fs.alloc_buffer(BLOCK_BYTES);
    buf.as_mut_slice().fill(0);
    file.write_at(buf, 0).await.map_err(|e| io_err("zero header", &from, e))?;
    file.fdatasync().await.map_err(|e| io_err("fdatasync", &from, e))?;
    inner.fs.rename(&from, &to).await.map_err(|e| io_err("rename", &from, e))?;
    inner.fs.sync_dir(dir).await.map_err(|e| io_err("fsync directory", dir, e))?;
    Ok(file)
}

async fn read_whole<Fl: WalFile>(file: &Fl, path: &Path) -> Result<Vec<u8>, WalError> {
    let size = file.size().await.map_err(|e| io_err("stat", path, e))?;
    let mut data = Vec::with_capacity(size as usize);
    while (data.len() as u64) < size {
        let want = RECOVERY_READ_BYTES.min((size - data.len() as u64) as usize);
        let chunk = file.read_at(data.len() as u64, want).await.map_err(|e| io_err("read", path, e))?;
        if chunk.is_empty() {
            break;
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

impl<F: FileSystem + 'static> Wal<F> {
    /// Opens (creating if needed) the WAL in `opts.dir`, recovers it, and starts its
    /// tasks on the current glommio executor.
    ///
    /// Fails with [`WalError::BadDataDir`] for operator mistakes (another shard's
    /// directory, stray files, unknown version, no O_DIRECT), [`WalError::Corruption`]
    /// when the log cannot be trusted, and [`WalError::Io`] otherwise.
    pub async fn open(fs: F, opts: WalOptions) -> Result<Wal<F>, WalError> {
        opts.validate()?;
        let dir = opts.dir.clone();
        match fs.list_dir(&dir) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs.create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
                if let Some(parent) = dir.parent() {
                    fs.sync_dir(parent).await.map_err(|e| io_err("fsync directory", parent, e))?;
                }
            }
            Err(e) => return Err(io_err("list directory", &dir, e)),
        }
        fs.check_direct_io(&dir).map_err(|reason| WalError::BadDataDir { dir: dir.clone(), reason })?;
        fs.probe_device(&dir)
            .await
            .map_err(|e| io_err("probe the device with", &dir.join(crate::fs::DIRECT_IO_PROBE_NAME), e))?;
        // Listed after the probes: they create and remove their own file, which a
        // crash may have left behind (row D2), and it must not be listed as a leftover
        // that is gone by the time the leftovers are removed.
        let names = fs.list_dir(&dir).map_err(|e| io_err("list directory", &dir, e))?;
        let listing = recovery::classify_listing(&dir, &names)?;
        let mut files = Vec::with_capacity(listing.segments.len());
        let mut headers = Vec::with_capacity(listing.segments.len());
        for &seq in &listing.segments {
            let path = dir.join(format::segment_name(seq));
            let f = fs.open(&path).await.map_err(|e| io_err("open", &path, e))?;
            let block = f.read_at(0, BLOCK_BYTES).await.map_err(|e| io_err("read", &path, e))?;
            headers.push((seq, SegmentHeader::read(&block)));
            files.push((seq, Rc::new(f)));
        }
        let plan = recovery::plan(&dir, opts.identity, &headers)?;
        let mut replay = Replay::new(&dir, opts.tail_cache_bytes);
        let file_of = |seq: u64| files.iter().find(|(s, _)| *s == seq).expect("listed").1.clone();
        for (i, h) in plan.active.iter().enumerate() {
            let path = dir.join(format::segment_name(h.segment_seq));
            let data = read_whole(&*file_of(h.segment_seq), &path).await?;
            replay.segment(h, &data, i + 1 == plan.active.len())?;
        }
        if let Some(seq) = plan.torn_activation {
            let path = dir.join(format::segment_name(seq));
            let f = file_of(seq);
            let first =
                f.read_at(SEGMENT_DATA_OFFSET_BYTES, BLOCK_BYTES).await.map_err(|e| io_err("read", &path, e))?;
            if replay.torn_activation_needs_data(&plan, &first) {
                let data = read_whole(&*f, &path).await?;
                replay.torn_activation(seq, &data)?;
            }
        }
        replay.spares(&plan.spares);
        replay.spares(&plan.released);
        let rec = replay.finish()?;

        let mut removed = 0;
        for name in &listing.leftovers {
            let p = dir.join(name);
            fs.remove(&p).await.map_err(|e| io_err("remove", &p, e))?;
            removed += 1;
        }
        for &seq in &rec.remove {
            let p = dir.join(format::segment_name(seq));
            fs.remove(&p).await.map_err(|e| io_err("remove", &p, e))?;
            removed += 1;
        }
        if removed > 0 {
            fs.sync_dir(&dir).await.map_err(|e| io_err("fsync directory", &dir, e))?;
        }
        if let Some(t) = &rec.torn_tail {
            eprintln!("skiff-wal: {t}");
        }
        let mut active = None;
        if let Some(t) = rec.tail {
            // What recovery read back is the log from now on: the engine counts it as
            // persisted, and a segment's first write is issued once everything before
            // it is durable. But the last life may have died with writes that reached
            // the device and were never flushed (an fdatasync not yet run, an O_DSYNC
            // write cut short by a kill): flush them before anything relies on them.
            // Stale batches of this segment past the recovered end are zeroed first,
            // so none can ever line up after new data.
            let f = file_of(t.segment_seq);
            let path = dir.join(format::segment_name(t.segment_seq));
            let mut at = t.offset;
            while at < t.zero_to {
                let len = (ZERO_CHUNK_BYTES as u64).min(t.zero_to - at) as usize;
                let mut buf = fs.alloc_buffer(len);
                buf.as_mut_slice().fill(0);
                f.write_at(buf, at).await.map_err(|e| io_err("zero stale tail", &path, e))?;
                at += len as u64;
            }
            f.fdatasync().await.map_err(|e| io_err("fdatasync", &path, e))?;
        }
        let mut log = LogState::new(dir.clone(), opts.tail_cache_bytes);
        for &seq in &rec.segments {
            log.files.insert(seq, file_of(seq));
        }
        if let Some(t) = rec.tail {
            active = Some(file_of(t.segment_seq));
        }
        log.snapshot = rec.snapshot.clone();
        log.compacted = rec.compacted;
        log.hard_state = rec.hard_state;
        log.locs = rec.locs;
        log.cache = rec.cache;
        log.cache_bytes = rec.cache_bytes;
        log.written_batch_seq = rec.next_batch_seq - 1;
        let max_seen = listing.segments.last().copied().unwrap_or(0);
        let (seg_seq, seg_activated, seg_has_batches, seg_offset, next_spare_seq) = match rec.tail {
            Some(t) => (t.segment_seq, true, t.has_batches, t.offset, t.segment_seq + 1),
            None => (max_seen + 1, false, false, 0, max_seen + 1),
        };
        let st = State {
            stopped: None,
            closing: false,
            next_seq: rec.next_batch_seq,
            seg_seq,
            seg_activated,
            seg_has_batches,
            seg_offset,
            queue: VecDeque::new(),
            unacked: VecDeque::new(),
            completions: VecDeque::new(),
            reported_seq: rec.next_batch_seq - 1,
            written_seq: rec.next_batch_seq - 1,
            synced_seq: rec.next_batch_seq - 1,
            writing: 0,
            finished_early: std::collections::BTreeSet::new(),
            active,
            spares: VecDeque::new(),
            spare_error: None,
            spares_filled: false,
            next_spare_seq,
            releases: VecDeque::new(),
            released: VecDeque::new(),
            segments: rec.segments.iter().copied().collect(),
            wakers: Default::default(),
            timings: VecDeque::new(),
        };
        let inner = Rc::new(Inner { fs, opts, log: Rc::new(RefCell::new(log)), st: RefCell::new(st) });
        glommio::spawn_local(writer_task(inner.clone())).detach();
        if inner.opts.sync == SyncMode::Fdatasync {
            glommio::spawn_local(syncer_task(inner.clone())).detach();
        }
        glommio::spawn_local(housekeeper_task(inner.clone())).detach();
        Ok(Wal { inner, report: OpenReport { torn_tail: rec.torn_tail, segments: rec.segments.len(), removed } })
    }
}

impl<F: FileSystem> Wal<F> {
    /// Moves the writes and fdatasyncs measured since the last call into `out`.
    pub fn take_io_timings(&self, out: &mut Vec<IoTiming>) {
        out.extend(self.inner.st.borrow_mut().timings.drain(..));
    }

    /// What recovery found.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// A handle implementing the engine's `Storage` over this WAL's log.
    pub fn storage(&self) -> WalStorage<F::File> {
        WalStorage { log: self.inner.log.clone() }
    }

    /// The failure that stopped the WAL, if any.
    pub fn stopped(&self) -> Option<String> {
        self.inner.st.borrow().stopped.clone()
    }

    fn stopped_err(&self) -> Option<WalError> {
        self.stopped().map(|reason| WalError::Stopped { reason })
    }

    /// True when [`Wal::submit`] would not wait for room.
    pub fn has_room(&self) -> bool {
        let st = self.inner.st.borrow();
        Self::room(&st)
    }

    fn room(st: &State<F>) -> bool {
        let floor = st.synced_seq.min(st.reported_seq);
        st.next_seq - 1 - floor < APPENDS_IN_FLIGHT_MAX
    }

    /// Appends submitted and not yet durable.
    pub fn in_flight(&self) -> u64 {
        let st = self.inner.st.borrow();
        st.next_seq - 1 - st.synced_seq
    }

    /// Number of spare segments ready now.
    pub fn spares_ready(&self) -> usize {
        self.inner.st.borrow().spares.len()
    }

    /// Waits until `n` spares (at most the configured count) are ready, or a spare
    /// could not be created (benchmarks and tests start measuring from a steady state).
    pub async fn wait_spares(&self, n: usize) -> Result<(), WalError> {
        let n = n.min(self.inner.opts.spare_segments);
        self.inner
            .wait(Slot::Other, |st| st.spares.len() >= n || st.spare_error.is_some() || st.stopped.is_some())
            .await;
        if let Some(e) = self.stopped_err() {
            return Err(e);
        }
        match self.inner.st.borrow().spare_error.clone() {
            Some(reason) => Err(WalError::Stopped { reason }),
            None => Ok(()),
        }
    }

    /// Submits one append: encodes it into an aligned buffer, makes its entries
    /// readable through [`Wal::storage`] at once, and queues its write. Returns its
    /// seq; its [`Completion`] follows from [`Wal::next_completion`], in order.
    ///
    /// Waits only when [`APPENDS_IN_FLIGHT_MAX`] appends are not yet durable (or not
    /// yet taken from `next_completion`).
    pub async fn submit(&self, a: &Append<'_>) -> Result<u64, WalError> {
        self.validate(a)?;
        self.inner.wait(Slot::Room, |st| st.stopped.is_some() || Self::room(st)).await;
        if let Some(e) = self.stopped_err() {
            return Err(e);
        }
        // Checked again: another task may have submitted while this one waited.
        self.validate(a)?;
        self.encode_and_queue(a)
    }

    fn validate(&self, a: &Append<'_>) -> Result<(), WalError> {
        let bad = |s: String| Err(WalError::InvalidAppend(s));
        if !a.entries.windows(2).all(|w| w[1].index == w[0].index + 1) {
            return bad("entries are not contiguous".into());
        }
        let log = self.inner.log.borrow();
        let (mut snap, mut last) = (log.snapshot.index, log.last_index());
        if let Some(m) = a.install {
            if m.index <= snap {
                return bad(format!("install of snapshot {} at or below the current snapshot {snap}", m.index));
            }
            (snap, last) = (m.index, m.index);
        }
        if let Some(first) = a.entries.first() {
            if first.index <= snap || first.index > last + 1 {
                return bad(format!("entries start at {} but must start in ({snap}, {}]", first.index, last + 1));
            }
            last = first.index + a.entries.len() as u64 - 1;
        }
        if let Some(m) = a.compact
            && m.index > last
        {
            return bad(format!("compaction to {} beyond the last index {last}", m.index));
        }
        Ok(())
    }

    fn encode_and_queue(&self, a: &Append<'_>) -> Result<u64, WalError> {
        let inner = &self.inner;
        let mut st = inner.st.borrow_mut();
        let mut log = inner.log.borrow_mut();
        let compact = a.compact.filter(|m| m.index > log.snapshot.index || a.install.is_some());
        let preamble_hs = log.hard_state;
        let preamble_snapshot = &log.snapshot;
        let preamble_point = log.compacted;
        // Where the compaction lands, computed on the log as it will be after this
        // append's entries (the snapshot is at or below their last index).
        let point = compact.map(|m| {
            let new_from = a.entries.first().map_or(Index::MAX, |e| e.index);
            let floor = a.install.map_or(log.compacted, |i| (i.index, i.term));
            compaction_point(m, floor, inner.opts.catchup_entries, inner.opts.catchup_bytes, |i| {
                if i >= new_from {
                    let e = &a.entries[(i - new_from) as usize];
                    (e.term, RecordRef::Entry(e).encoded_bytes() as u64)
                } else {
                    log.record_of(i)
                }
            })
        });
        let build = |with_preamble: bool| {
            let mut recs: Vec<RecordRef<'_>> = Vec::with_capacity(a.entries.len() + 4);
            if with_preamble {
                // Each segment restates the snapshot and hard state, so that recovery
                // never needs a segment that compaction released.
                if preamble_snapshot.index > 0 {
                    recs.push(RecordRef::SnapshotMarker(preamble_snapshot, preamble_point));
                }
                if !preamble_hs.is_empty() {
                    recs.push(RecordRef::HardState(preamble_hs));
                }
            }
            if let Some(m) = a.install {
                recs.push(RecordRef::SnapshotInstall(m));
            }
            recs.extend(a.entries.iter().map(RecordRef::Entry));
            if let Some(hs) = a.hard_state {
                recs.push(RecordRef::HardState(hs));
            }
            if let (Some(m), Some(p)) = (compact, point) {
                recs.push(RecordRef::SnapshotMarker(m, p));
            }
            recs
        };
        let seg_bytes = inner.opts.segment_bytes;
        let mut recs = build(!st.seg_has_batches || !st.seg_activated);
        let mut len = format::batch_padded_bytes(&recs);
        let mut activates = !st.seg_activated;
        let mut seg_seq = st.seg_seq;
        if !activates && st.seg_offset + len as u64 > seg_bytes {
            activates = true;
            seg_seq += 1;
            recs = build(true);
            len = format::batch_padded_bytes(&recs);
        }
        if len > inner.opts.batch_bytes_max() {
            return Err(WalError::InvalidAppend(format!(
                "append encodes to {len} bytes, more than the {} a batch may take",
                inner.opts.batch_bytes_max()
            )));
        }
        let seq = st.next_seq;
        let (offset, batch_at) = if activates { (0u64, BLOCK_BYTES) } else { (st.seg_offset, 0) };
        let mut buf = inner.fs.alloc_buffer(batch_at + len);
        let bytes = buf.as_mut_slice();
        if activates {
            bytes[..BLOCK_BYTES].fill(0);
            let first_index = match (a.install, a.entries.first()) {
                (Some(m), _) => m.index + 1,
                (None, Some(e)) => e.index.min(log.last_index() + 1),
                (None, None) => log.last_index() + 1,
            };
            // `recycled` is set by the writer, which knows the spare this goes into.
            SegmentHeader {
                identity: inner.opts.identity,
                segment_seq: seg_seq,
                first_index,
                first_batch_seq: seq,
                recycled: false,
            }
            .encode(&mut bytes[..BLOCK_BYTES]);
        }
        let mut placed = Vec::with_capacity(a.entries.len());
        let seed = format::encode_batch(&mut bytes[batch_at..], seq, seg_seq, &recs, &mut placed);
        drop(recs);
        let file_at = offset + batch_at as u64;
        let locs: Vec<EntryLoc> = a
            .entries
            .iter()
            .zip(&placed)
            .map(|(e, p)| EntryLoc {
                term: e.term,
                batch_seq: seq,
                segment_seq: seg_seq,
                offset: u32::try_from(file_at + p.offset_in_batch as u64).expect("segment offsets fit u32"),
                len: p.record_bytes,
                seed,
            })
            .collect();

        // The log reflects the append immediately: the engine reads recent entries to
        // send to followers before they are durable (the leader writes in parallel).
        let mut removed = Vec::new();
        if let Some(m) = a.install {
            removed.push(log.install(m));
        }
        log.append(a.entries, &locs);
        if let Some(hs) = a.hard_state {
            log.hard_state = hs;
        }
        if let (Some(m), Some(p)) = (compact, point) {
            removed.push(log.compact(m, p));
        }
        let live_segment = log.first_live_segment();
        drop(log);

        st.next_seq += 1;
        st.seg_seq = seg_seq;
        st.seg_activated = true;
        st.seg_has_batches = true;
        st.seg_offset = file_at + len as u64;
        if compact.is_some() || a.install.is_some() {
            st.releases.push_back((seq, seg_seq, live_segment));
        }
        st.unacked.push_back(Unacked { seq, tag: a.tag, sync: a.must_sync });
        st.queue.push_back(Pending {
            seq,
            segment_seq: seg_seq,
            offset,
            activates,
            buf,
            entries: a.entries.len() as u64,
        });
        drop(st);
        inner.wake(&[Slot::Writer]);
        retire(removed);
        Ok(seq)
    }

    /// The next completion, in submission order; waits for it. After a failure, the
    /// completions of appends that finished before it are still delivered, then
    /// [`WalError::Stopped`] for good.
    pub async fn next_completion(&self) -> Result<Completion, WalError> {
        self.inner.wait(Slot::Completion, |st| !st.completions.is_empty() || st.stopped.is_some()).await;
        match self.try_next_completion()? {
            Some(c) => Ok(c),
            None => Err(self.stopped_err().expect("woken by a failure")),
        }
    }

    /// The next completion if one is ready.
    pub fn try_next_completion(&self) -> Result<Option<Completion>, WalError> {
        let mut st = self.inner.st.borrow_mut();
        if let Some(c) = st.completions.pop_front() {
            st.reported_seq = c.seq;
            drop(st);
            // Taking a completion can make room for a waiting submit.
            self.inner.wake(&[Slot::Room]);
            return Ok(Some(c));
        }
        match &st.stopped {
            Some(reason) => Err(WalError::Stopped { reason: reason.clone() }),
            None => Ok(None),
        }
    }

    /// Waits until every submitted append is durable, then stops the WAL's tasks.
    pub async fn close(self) -> Result<(), WalError> {
        self.inner.wait(Slot::Other, |st| st.stopped.is_some() || st.synced_seq + 1 == st.next_seq).await;
        if let Some(e) = self.stopped_err() {
            return Err(e);
        }
        Ok(())
    }
}

impl<F: FileSystem> Drop for Wal<F> {
    fn drop(&mut self) {
        self.inner.st.borrow_mut().closing = true;
        self.inner.wake_all();
    }
}

/// Cached entries a compaction or snapshot install removed at once, at least this many,
/// are dropped on glommio's blocking thread instead of the shard's: 400,000 entries
/// (a default 64 MiB snapshot interval of 100-byte writes) held the compacting append
/// for about 13 ms (`examples/compaction_stall.rs`), a stall of the Ready loop that
/// lands in the latency tail.
const RETIRE_OFF_THREAD_MIN: usize = 4096;

/// Drops `removed` (see [`RETIRE_OFF_THREAD_MIN`]).
fn retire(removed: Vec<VecDeque<Entry>>) {
    if removed.iter().map(VecDeque::len).sum::<usize>() < RETIRE_OFF_THREAD_MIN {
        return;
    }
    // Queued on the blocking pool when called; the local task only collects the
    // (empty) result.
    let dropped = glommio::executor().spawn_blocking(move || drop(removed));
    glommio::spawn_local(dropped).detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> WalOptions {
        WalOptions::new("/w", Identity { cluster_id: 1, shard_id: 1, node_id: 1 })
    }

    #[test]
    fn options_are_validated() {
        assert!(opts().validate().is_ok());
        let mut o = opts();
        o.segment_bytes = SEGMENT_BYTES_MIN + 1;
        assert!(o.validate().is_err(), "not a multiple of the block size");
        o.segment_bytes = SEGMENT_BYTES_MIN - BLOCK_BYTES as u64;
        assert!(o.validate().is_err(), "too small");
        let mut o = opts();
        o.spare_segments = 0;
        assert!(o.validate().is_err());
        o.spare_segments = SPARE_SEGMENTS_MAX + 1;
        assert!(o.validate().is_err());
    }

    #[test]
    fn a_batch_never_exceeds_a_segment_or_the_global_bound() {
        let mut o = opts();
        assert_eq!(o.batch_bytes_max(), BATCH_BYTES_MAX);
        o.segment_bytes = SEGMENT_BYTES_MIN;
        assert_eq!(o.batch_bytes_max() as u64, SEGMENT_BYTES_MIN - SEGMENT_DATA_OFFSET_BYTES);
    }
}
