//! The in-memory view of the log that the writer keeps up to date as appends are
//! submitted: where every entry lives on disk, a tail cache of recent entries, the hard
//! state and the snapshot. [`WalStorage`] reads it through the engine's `Storage` trait.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use skiff_engine::{Entry, HardState, Index, NodeId, RaftState, Snapshot, SnapshotMeta, Storage, StorageError, Term};

use crate::format::{self, RecordView};
use crate::fs::WalFile;

/// Where an entry's record is: enough to read and verify it without its neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryLoc {
    pub term: Term,
    /// The batch it was written in; the cache may drop it once that batch is written.
    pub batch_seq: u64,
    pub segment_seq: u64,
    /// Offset of the record in the segment file.
    pub offset: u32,
    /// Encoded record length.
    pub len: u32,
    /// The batch header CRC, which seeds the record CRC.
    pub seed: u32,
}

/// Reads larger than this for cold entries are split (bounds the temporary buffer).
const COLD_READ_BYTES_MAX: usize = 4 << 20;

/// Where to compact for a snapshot at `meta.index`: that index, less up to
/// `keep_entries` entries below it whose records take at most `keep_bytes` (a catch-up
/// tail), never below `floor` (the current compaction point). `record(i)` gives the term
/// and encoded record size of entry `i`, for `floor.0 < i <= meta.index`.
pub fn compaction_point(
    meta: &SnapshotMeta,
    floor: (Index, Term),
    keep_entries: u64,
    keep_bytes: u64,
    record: impl Fn(Index) -> (Term, u64),
) -> (Index, Term) {
    let (mut at, mut bytes) = (meta.index, 0u64);
    while at > floor.0 && meta.index - at < keep_entries {
        bytes += record(at).1;
        if bytes > keep_bytes {
            break;
        }
        at -= 1;
    }
    if at == meta.index {
        (meta.index, meta.term)
    } else if at == floor.0 {
        floor
    } else {
        (at, record(at).0)
    }
}

/// The shared log state.
#[derive(Debug)]
pub(crate) struct LogState<Fl> {
    pub snapshot: SnapshotMeta,
    /// The state-machine snapshot at `snapshot.index`, once the node provides it.
    pub snapshot_data: Option<Bytes>,
    pub hard_state: HardState,
    /// The compaction point `(index, term)`: the log is released up to here, which is
    /// the snapshot's index or below it when a catch-up tail is kept.
    pub compacted: (Index, Term),
    /// `locs[i]` is entry `compacted.0 + 1 + i`.
    pub locs: VecDeque<EntryLoc>,
    /// The last `cache.len()` entries of the log.
    pub cache: VecDeque<Entry>,
    pub cache_bytes: u64,
    pub cache_budget_bytes: u64,
    /// Batches up to here are written (readable from disk), so their entries may leave
    /// the cache.
    pub written_batch_seq: u64,
    /// Open segments by seq, for cold reads.
    pub files: BTreeMap<u64, Rc<Fl>>,
    pub dir: PathBuf,
}

impl<Fl: WalFile> LogState<Fl> {
    pub fn new(dir: PathBuf, cache_budget_bytes: u64) -> LogState<Fl> {
        LogState {
            snapshot: SnapshotMeta::default(),
            snapshot_data: None,
            hard_state: HardState::default(),
            compacted: (0, 0),
            locs: VecDeque::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_budget_bytes,
            written_batch_seq: 0,
            files: BTreeMap::new(),
            dir,
        }
    }

    pub fn first_index(&self) -> Index {
        self.compacted.0 + 1
    }

    pub fn last_index(&self) -> Index {
        self.compacted.0 + self.locs.len() as u64
    }

    /// Term of a live entry or of the compaction point.
    pub fn term_of(&self, index: Index) -> Option<Term> {
        if index == self.compacted.0 {
            return Some(self.compacted.1);
        }
        self.locs.get(index.checked_sub(self.compacted.0 + 1)? as usize).map(|l| l.term)
    }

    /// Term and encoded record size of live entry `index`, as [`compaction_point`]
    /// reads them.
    pub fn record_of(&self, index: Index) -> (Term, u64) {
        let loc = self.locs[(index - self.compacted.0 - 1) as usize];
        (loc.term, loc.len as u64)
    }

    /// Where to compact this log for a snapshot at `meta.index` ([`compaction_point`]).
    #[cfg(test)]
    pub fn compaction_point(&self, meta: &SnapshotMeta, keep_entries: u64, keep_bytes: u64) -> (Index, Term) {
        compaction_point(meta, self.compacted, keep_entries, keep_bytes, |i| self.record_of(i))
    }

    fn cache_first(&self) -> Index {
        self.last_index() + 1 - self.cache.len() as u64
    }

    /// Drops entries from `index` on (a conflicting suffix).
    fn truncate_from(&mut self, index: Index) {
        let keep = (index - self.first_index()) as usize;
        self.locs.truncate(keep);
        while self.cache.len() > self.locs.len() || self.cache.back().is_some_and(|e| e.index >= index) {
            let e = self.cache.pop_back().expect("non-empty");
            self.cache_bytes -= e.size_bytes();
        }
    }

    /// Appends entries (contiguous, starting at or below `last_index() + 1` and above
    /// the snapshot) with their locations, replacing any conflicting suffix.
    pub fn append(&mut self, entries: &[Entry], locs: &[EntryLoc]) {
        let Some(first) = entries.first() else { return };
        debug_assert_eq!(entries.len(), locs.len());
        assert!(
            first.index > self.compacted.0 && first.index <= self.last_index() + 1,
            "log append: entry {} outside ({}, {}]",
            first.index,
            self.compacted.0,
            self.last_index() + 1
        );
        // The cache holds a suffix of the log; truncating both keeps it one.
        self.truncate_from(first.index);
        self.locs.extend(locs.iter().copied());
        for e in entries {
            self.cache_bytes += e.size_bytes();
            self.cache.push_back(e.clone());
        }
        self.evict();
    }

    /// Replaces the whole log with a snapshot received from the leader. Returns the
    /// cached entries it removed, for the caller to drop ([`LogState::compact`]).
    #[must_use = "the removed entries are the caller's to drop"]
    pub fn install(&mut self, meta: &SnapshotMeta) -> VecDeque<Entry> {
        self.locs.clear();
        let removed = std::mem::take(&mut self.cache);
        self.cache_bytes = 0;
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        if self.snapshot.index != meta.index {
            self.snapshot_data = None;
        }
        self.snapshot = meta.clone();
        self.compacted = (meta.index, meta.term);
        removed
    }

    /// Records a local snapshot at `meta.index` and discards entries up to `point`
    /// (at or below it, from [`LogState::compaction_point`]). Returns the cached
    /// entries it removed: with the default snapshot interval and tail cache they can
    /// be hundreds of thousands, each a reference count to drop and often a block to
    /// free (milliseconds of work), so the caller may drop them off the shard's thread.
    /// Only the kept part of the cache is walked here.
    ///
    /// # Panics
    /// If `meta.index` is beyond the last index or `point` beyond `meta.index`.
    #[must_use = "the removed entries are the caller's to drop"]
    pub fn compact(&mut self, meta: &SnapshotMeta, point: (Index, Term)) -> VecDeque<Entry> {
        let mut removed = VecDeque::new();
        if meta.index <= self.snapshot.index {
            return removed;
        }
        assert!(
            meta.index <= self.last_index() && point.0 <= meta.index,
            "compact: snapshot {} or compaction point {} is beyond the last index {}",
            meta.index,
            point.0,
            self.last_index()
        );
        if point.0 > self.compacted.0 {
            let drop = (point.0 - self.compacted.0) as usize;
            self.locs.drain(..drop);
            if self.cache.len() > self.locs.len() {
                let kept = self.cache.split_off(self.cache.len() - self.locs.len());
                removed = std::mem::replace(&mut self.cache, kept);
                self.cache_bytes = self.cache.iter().map(Entry::size_bytes).sum();
            }
            self.compacted = point;
        }
        self.snapshot = meta.clone();
        self.snapshot_data = None;
        removed
    }

    /// Drops cached entries over the budget, oldest first, once they are on disk.
    pub fn evict(&mut self) {
        while self.cache_bytes > self.cache_budget_bytes {
            let Some(front) = self.cache.front() else {
                break;
            };
            let loc = self.locs[(front.index - self.first_index()) as usize];
            if loc.batch_seq > self.written_batch_seq {
                break;
            }
            self.cache_bytes -= front.size_bytes();
            self.cache.pop_front();
        }
    }

    /// The lowest segment seq that still holds a live entry (`None`: no entries).
    pub fn first_live_segment(&self) -> Option<u64> {
        self.locs.front().map(|l| l.segment_seq)
    }

    /// Reads entries `[lo, hi)` (all before the cache) from disk into `out`, stopping at
    /// `max_bytes` as `Storage::entries` does; returns the bytes counted.
    fn read_cold(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: u64,
        mut total: u64,
        out: &mut Vec<Entry>,
    ) -> Result<u64, StorageError> {
        let mut i = lo;
        while i < hi {
            // A run: consecutive records that are contiguous in one file.
            let first = self.locs[(i - self.first_index()) as usize];
            let mut end = i + 1;
            let mut bytes = first.len as usize;
            while end < hi && bytes < COLD_READ_BYTES_MAX {
                let prev = self.locs[(end - 1 - self.first_index()) as usize];
                let next = self.locs[(end - self.first_index()) as usize];
                if next.segment_seq != first.segment_seq || next.offset != prev.offset + prev.len {
                    break;
                }
                bytes += next.len as usize;
                end += 1;
            }
            let file = self.files.get(&first.segment_seq).ok_or_else(|| {
                StorageError::Failed(format!(
                    "segment {} of entry {i} is not open",
                    format::segment_name(first.segment_seq)
                ))
            })?;
            let mut buf = vec![0u8; bytes];
            file.read_exact_at_blocking(first.offset as u64, &mut buf).map_err(|e| {
                StorageError::Failed(format!(
                    "reading entry {i} from {}: {e}",
                    self.dir.join(format::segment_name(first.segment_seq)).display()
                ))
            })?;
            let mut at = 0usize;
            for idx in i..end {
                let loc = self.locs[(idx - self.first_index()) as usize];
                let bad = |why: &str| {
                    StorageError::Failed(format!(
                        "corrupt entry {idx} in {} at offset {}: {why}",
                        self.dir.join(format::segment_name(loc.segment_seq)).display(),
                        loc.offset
                    ))
                };
                let rec = &buf[at..at + loc.len as usize];
                let (view, _) = format::decode_record(rec, loc.seed).map_err(|f| bad(&format!("{f:?}")))?;
                let RecordView::Entry { term, index, kind, data } = view else {
                    return Err(bad("not an entry record"));
                };
                if index != idx || term != loc.term {
                    return Err(bad("index or term differs from the index"));
                }
                let e = Entry { term, index, kind, data: Bytes::copy_from_slice(data) };
                total += e.size_bytes();
                if total > max_bytes && idx != lo {
                    return Ok(total);
                }
                out.push(e);
                at += loc.len as usize;
            }
            i = end;
        }
        Ok(total)
    }
}

/// The engine's `Storage` over the WAL: a cheap handle (an `Rc`) sharing the writer's
/// index and tail cache. Entries are readable as soon as they are submitted.
#[derive(Debug)]
pub struct WalStorage<Fl> {
    pub(crate) log: Rc<RefCell<LogState<Fl>>>,
}

impl<Fl> Clone for WalStorage<Fl> {
    fn clone(&self) -> Self {
        WalStorage { log: self.log.clone() }
    }
}

impl<Fl: WalFile> WalStorage<Fl> {
    /// Provides the state-machine snapshot for the current snapshot index (after a
    /// restart, the node loads its snapshot file and hands it over here). Ignored when
    /// `index` is not the current snapshot index.
    pub fn set_snapshot_data(&self, index: Index, data: Bytes) {
        let mut log = self.log.borrow_mut();
        if log.snapshot.index == index {
            log.snapshot_data = Some(data);
        }
    }

    /// The current snapshot's metadata.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.log.borrow().snapshot.clone()
    }

    /// The latest hard state submitted (or recovered).
    pub fn hard_state(&self) -> HardState {
        self.log.borrow().hard_state
    }

    /// Entries currently held in the tail cache and their total `size_bytes`.
    pub fn cached(&self) -> (usize, u64) {
        let log = self.log.borrow();
        (log.cache.len(), log.cache_bytes)
    }
}

impl<Fl: WalFile> Storage for WalStorage<Fl> {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        let log = self.log.borrow();
        Ok(RaftState {
            hard_state: log.hard_state,
            conf_state: log.snapshot.conf_state.clone(),
            election_timeout_ticks: log.snapshot.election_timeout_ticks,
        })
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64, out: &mut Vec<Entry>) -> Result<(), StorageError> {
        let log = self.log.borrow();
        if lo < log.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > log.last_index() + 1 || lo > hi {
            return Err(StorageError::Unavailable);
        }
        if lo == hi {
            return Ok(());
        }
        let cache_first = log.cache_first();
        let mut total = 0u64;
        let start_len = out.len();
        if lo < cache_first {
            total = log.read_cold(lo, hi.min(cache_first), max_bytes, total, out)?;
            if total > max_bytes || hi <= cache_first {
                return Ok(());
            }
        }
        let from = lo.max(cache_first);
        let skip = (from - cache_first) as usize;
        for e in log.cache.range(skip..(hi - cache_first) as usize) {
            total += e.size_bytes();
            if total > max_bytes && out.len() > start_len {
                break;
            }
            out.push(e.clone());
        }
        Ok(())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let log = self.log.borrow();
        if index < log.compacted.0 {
            return Err(StorageError::Compacted);
        }
        log.term_of(index).ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Index {
        self.log.borrow().first_index()
    }

    fn last_index(&self) -> Index {
        self.log.borrow().last_index()
    }

    fn snapshot(&self, _request_index: Index, _to: NodeId) -> Result<Snapshot, StorageError> {
        let log = self.log.borrow();
        match &log.snapshot_data {
            Some(data) => Ok(Snapshot { meta: log.snapshot.clone(), data: data.clone() }),
            // The node has not handed over the snapshot file yet (just after a restart
            // or a compaction); the engine asks again on the next heartbeat response.
            None => Err(StorageError::SnapshotTemporarilyUnavailable),
        }
    }
}

/// Helper for tests: an entry with the given position and payload.
#[cfg(test)]
pub(crate) fn test_entry(index: Index, term: Term, data: &[u8]) -> Entry {
    use skiff_engine::EntryKind;
    Entry { term, index, kind: EntryKind::Normal, data: Bytes::copy_from_slice(data) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimFile;
    use skiff_engine::ENTRY_OVERHEAD_BYTES;

    fn loc(i: Index, term: Term, batch: u64) -> EntryLoc {
        EntryLoc { term, batch_seq: batch, segment_seq: 1, offset: (i * 100) as u32, len: 50, seed: 0 }
    }

    fn log_with(entries: &[(Index, Term)], budget: u64) -> LogState<SimFile> {
        let mut log = LogState::new(PathBuf::from("/x"), budget);
        let es: Vec<Entry> = entries.iter().map(|&(i, t)| test_entry(i, t, b"")).collect();
        let ls: Vec<EntryLoc> = entries.iter().map(|&(i, t)| loc(i, t, 1)).collect();
        log.append(&es, &ls);
        log
    }

    #[test]
    fn append_truncates_conflicting_suffix_in_index_and_cache() {
        let mut log = log_with(&[(1, 1), (2, 1), (3, 1)], u64::MAX);
        log.append(&[test_entry(2, 2, b"")], &[loc(2, 2, 2)]);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.cache.len(), 2);
        assert_eq!(log.cache[1].term, 2);
        let s = WalStorage { log: Rc::new(RefCell::new(log)) };
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.term(3), Err(StorageError::Unavailable));
    }

    #[test]
    fn compaction_keeps_a_tail_bounded_by_entries_and_bytes() {
        // Records of 50 bytes each (`loc`), entries 1..=10, terms 1 (1..=4) and 2.
        let es: Vec<(Index, Term)> = (1..=10).map(|i| (i, if i <= 4 { 1 } else { 2 })).collect();
        let mut log = log_with(&es, u64::MAX);
        let meta = SnapshotMeta { index: 8, term: 2, ..Default::default() };
        assert_eq!(log.compaction_point(&meta, 0, u64::MAX), (8, 2));
        assert_eq!(log.compaction_point(&meta, 5, u64::MAX), (3, 1));
        assert_eq!(log.compaction_point(&meta, 5, 120), (6, 2), "two records of 50 bytes fit in 120");
        assert_eq!(log.compaction_point(&meta, 100, u64::MAX), (0, 0), "never below the log");
        let removed = log.compact(&meta, (3, 1));
        assert_eq!(removed.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(log.cache_bytes, log.cache.iter().map(Entry::size_bytes).sum::<u64>());
        assert_eq!((log.snapshot.index, log.first_index(), log.last_index()), (8, 4, 10));
        let s = WalStorage { log: Rc::new(RefCell::new(log)) };
        assert_eq!((s.term(3), s.term(4), s.term(8)), (Ok(1), Ok(1), Ok(2)));
        assert_eq!(s.term(2), Err(StorageError::Compacted));
        let mut out = Vec::new();
        s.entries(4, 9, u64::MAX, &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.index).collect::<Vec<_>>(), vec![4, 5, 6, 7, 8]);
        // The next snapshot moves the point on, never back.
        let mut log = s.log.borrow_mut();
        let meta = SnapshotMeta { index: 9, term: 2, ..Default::default() };
        assert_eq!(log.compaction_point(&meta, 100, u64::MAX), (3, 1));
        let point = log.compaction_point(&meta, 2, u64::MAX);
        let _ = log.compact(&meta, point);
        assert_eq!((log.compacted, log.first_index()), ((7, 2), 8));
    }

    #[test]
    fn compact_keeps_term_of_compaction_point_and_entries_limits_bytes() {
        let mut log = log_with(&[(1, 1), (2, 2), (3, 3)], u64::MAX);
        let _ = log.compact(&SnapshotMeta { index: 2, term: 2, ..Default::default() }, (2, 2));
        let s = WalStorage { log: Rc::new(RefCell::new(log)) };
        assert_eq!(s.first_index(), 3);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.term(1), Err(StorageError::Compacted));
        let mut out = Vec::new();
        assert_eq!(s.entries(2, 4, u64::MAX, &mut out), Err(StorageError::Compacted));
        assert_eq!(s.entries(3, 5, u64::MAX, &mut out), Err(StorageError::Unavailable));
        s.entries(3, 4, 0, &mut out).unwrap();
        assert_eq!(out.len(), 1, "at least one entry even over max_bytes");
        assert_eq!(s.snapshot(3, 2), Err(StorageError::SnapshotTemporarilyUnavailable));
        s.set_snapshot_data(2, Bytes::from_static(b"state"));
        assert_eq!(s.snapshot(3, 2).unwrap().data, Bytes::from_static(b"state"));
    }

    #[test]
    fn eviction_waits_until_the_batch_is_written() {
        let mut log = log_with(&[(1, 1), (2, 1), (3, 1)], ENTRY_OVERHEAD_BYTES);
        assert_eq!(log.cache.len(), 3, "nothing written yet: all stay cached");
        log.written_batch_seq = 1;
        log.evict();
        assert_eq!(log.cache.len(), 1);
        assert_eq!(log.cache_first(), 3);
    }
}
