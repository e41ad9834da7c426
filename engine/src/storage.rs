//! The stable log the engine reads from: the [`Storage`] trait, and [`MemStorage`], an
//! in-memory implementation for tests, simulations and benchmarks.
//!
//! The engine only *reads* storage. The caller writes to it: it appends the entries of a
//! [`Ready`](crate::Ready) once they are durable (or, for a storage such as the WAL that
//! keeps its own in-memory tail, when it submits them), installs snapshots, and compacts.
//! Entries the engine has handed out but that are not yet reported durable stay readable
//! from the engine's own unstable buffer, so storage may lag behind it.

use std::collections::VecDeque;

use crate::types::{ConfState, Entry, HardState, Index, NodeId, Snapshot, SnapshotMeta, Term};

/// Why storage could not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageError {
    /// The requested index is at or below the last compaction point.
    Compacted,
    /// The requested index is beyond the last index.
    Unavailable,
    /// A snapshot is being prepared; ask again later (the engine retries on the next
    /// heartbeat response).
    SnapshotTemporarilyUnavailable,
    /// The storage failed (an I/O error, a checksum mismatch). The engine treats this as
    /// fatal for the operation that needed it.
    Failed(String),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Compacted => f.write_str("requested index is compacted"),
            StorageError::Unavailable => f.write_str("requested index is beyond the last index"),
            StorageError::SnapshotTemporarilyUnavailable => f.write_str("snapshot temporarily unavailable"),
            StorageError::Failed(why) => write!(f, "storage failed: {why}"),
        }
    }
}

impl std::error::Error for StorageError {}

/// What storage recovered at start-up.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RaftState {
    pub hard_state: HardState,
    /// Membership as of the latest snapshot (entries after it are re-applied by the
    /// caller, which calls `apply_conf_change` for each conf change among them).
    pub conf_state: ConfState,
    /// Election timeout recorded in the latest snapshot (0: none).
    pub election_timeout_ticks: u32,
}

/// Read access to the durable log.
///
/// Valid positions are `first_index() - 1 ..= last_index()`: the entry just below
/// `first_index()` is the compaction point, whose term must still be answerable. The
/// compaction point is the snapshot's index, or below it when a storage keeps recent
/// entries for followers' catch-up; the engine then sends those entries rather than
/// the snapshot to a follower that needs them, and never applies them again (the caller
/// restarts with `Config::applied` at the snapshot's index).
pub trait Storage {
    /// Hard state and membership recovered from disk.
    fn initial_state(&self) -> Result<RaftState, StorageError>;

    /// Appends entries `[lo, hi)` to `out`, stopping before the entry that would take the
    /// total over `max_bytes` (by [`Entry::size_bytes`]) — but always at least one entry.
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64, out: &mut Vec<Entry>) -> Result<(), StorageError>;

    /// Term of the entry at `index`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;

    /// Index of the first entry still present (the compaction point + 1).
    fn first_index(&self) -> Index;

    /// Index of the last entry (the snapshot index when the log after it is empty).
    fn last_index(&self) -> Index;

    /// The latest snapshot, for sending to `to`, which needs at least `request_index`.
    fn snapshot(&self, request_index: Index, to: NodeId) -> Result<Snapshot, StorageError>;
}

/// An in-memory [`Storage`]: the whole log after an optional snapshot.
///
/// Entries are kept without their index and term (40 bytes each instead of an
/// [`Entry`]'s 56): the index follows from the position, the term from a short list of
/// term runs, since terms only change where a new leader's entries begin. A log of
/// millions of entries then touches about a third less fresh memory as it grows.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// The compaction point: the last discarded index (at or below the snapshot's
    /// index; below it when entries are kept for followers' catch-up) and its term.
    compacted: Index,
    compacted_term: Term,
    /// Entries [`MemStorage::create_snapshot`] keeps below the snapshot.
    catchup_entries: u64,
    /// `entries[i]` is the entry at index `compacted + 1 + i`.
    entries: Chunked<Slot>,
    /// `(first index, term)` of each run of equal terms among `entries`, by index. The
    /// first run may start below the first entry (after compaction).
    terms: VecDeque<(Index, Term)>,
}

/// What [`MemStorage`] keeps of an entry besides its position and term.
#[derive(Debug, Default, Clone)]
struct Slot {
    kind: crate::types::EntryKind,
    data: bytes::Bytes,
}

impl MemStorage {
    /// An empty log with no members (a node that joins an existing cluster).
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// An empty log whose membership is `conf_state` (as if restored from a snapshot at
    /// index 0). Used by tests that start several members directly.
    pub fn with_conf_state(conf_state: ConfState) -> MemStorage {
        let mut s = MemStorage::default();
        s.snapshot.meta.conf_state = conf_state;
        s
    }

    /// The recorded hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Records `hs` as durable.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Records the commit index (a part of hard state that may lag).
    pub fn set_commit(&mut self, commit: Index) {
        self.hard_state.commit = commit;
    }

    /// Metadata of the current snapshot.
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot.meta
    }

    /// Appends entries, replacing any existing suffix they conflict with (a follower's
    /// log overwritten by a new leader, Raft §5.3).
    ///
    /// # Panics
    /// If the entries are not contiguous, or leave a gap after the current last index,
    /// or start at or below the snapshot: the caller violated the Ready contract.
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        assert!(
            ents.windows(2).all(|w| w[1].index == w[0].index + 1),
            "MemStorage::append: entries are not contiguous"
        );
        let offset = self.compacted + 1;
        assert!(first.index >= offset, "MemStorage::append: entry {} is at or below the compaction point", first.index);
        let keep = (first.index - offset) as usize;
        assert!(
            keep <= self.entries.len(),
            "MemStorage::append: gap between last index {} and {}",
            self.last_index(),
            first.index
        );
        self.truncate_entries(keep);
        for e in ents {
            self.note_term(e.index, e.term);
            self.entries.push(Slot { kind: e.kind, data: e.data.clone() });
        }
    }

    /// Keeps the first `keep` entries, and the term runs that still start among them.
    fn truncate_entries(&mut self, keep: usize) {
        self.entries.truncate(keep);
        let last = self.compacted + keep as u64;
        while self.terms.back().is_some_and(|&(first, _)| first > last) {
            self.terms.pop_back();
        }
    }

    /// Records that the entry at `index` (the next one appended) has `term`.
    fn note_term(&mut self, index: Index, term: Term) {
        if self.terms.back().is_none_or(|&(_, t)| t != term) {
            self.terms.push_back((index, term));
        }
    }

    /// Term of the entry at `index`, which must be among the entries.
    fn term_of(&self, index: Index) -> Term {
        let run = self.terms.partition_point(|&(first, _)| first <= index);
        self.terms[run - 1].1
    }

    /// Like [`MemStorage::append`], taking ownership so no payload is cloned.
    ///
    /// # Panics
    /// As [`MemStorage::append`].
    pub fn append_owned(&mut self, ents: Vec<Entry>) {
        let Some(first) = ents.first() else { return };
        let offset = self.compacted + 1;
        let fast = first.index == self.last_index() + 1 && first.index >= offset;
        if !fast {
            return self.append(&ents);
        }
        assert!(
            ents.windows(2).all(|w| w[1].index == w[0].index + 1),
            "MemStorage::append: entries are not contiguous"
        );
        for e in &ents {
            self.note_term(e.index, e.term);
        }
        self.entries.extend(ents.into_iter().map(|e| Slot { kind: e.kind, data: e.data }));
    }

    /// Discards entries up to and including `index`, keeping its term as the new
    /// compaction point. `index` must have been applied and be at or below the latest
    /// snapshot's index: a follower that needs an earlier entry gets the snapshot.
    ///
    /// # Panics
    /// If `index` is beyond the last index.
    pub fn compact(&mut self, index: Index) {
        if index <= self.compacted {
            return;
        }
        assert!(index <= self.last_index(), "MemStorage::compact: {index} is beyond the last index");
        let term = self.term(index).expect("term of an index inside the log");
        let drop = (index - self.compacted) as usize;
        self.entries.drain_front(drop);
        // Runs that end at or before `index` go; the one holding it stays.
        while self.terms.len() > 1 && self.terms[1].0 <= index + 1 {
            self.terms.pop_front();
        }
        if self.entries.len() == 0 {
            self.terms.clear();
        }
        self.compacted = index;
        self.compacted_term = term;
    }

    /// How many entries [`MemStorage::create_snapshot`] keeps below the snapshot, so
    /// that a follower slightly behind catches up from the log instead of receiving the
    /// whole snapshot (etcd's `SnapshotCatchUpEntries`). Default 0.
    pub fn set_catchup_entries(&mut self, n: u64) {
        self.catchup_entries = n;
    }

    /// The compaction point (`first_index() - 1`), which is at or below the snapshot.
    pub fn compacted_index(&self) -> Index {
        self.compacted
    }

    /// Records a snapshot of the state machine at `index` (which must be in the log) and
    /// compacts the log up to it, less the catch-up entries.
    pub fn create_snapshot(
        &mut self,
        index: Index,
        conf_state: ConfState,
        election_timeout_ticks: u32,
        data: bytes::Bytes,
    ) {
        if index <= self.snapshot.meta.index {
            return;
        }
        let term = self.term(index).expect("snapshot index inside the log");
        self.compact(index.saturating_sub(self.catchup_entries));
        self.snapshot = Snapshot { meta: SnapshotMeta { index, term, conf_state, election_timeout_ticks }, data };
    }

    /// Installs a snapshot received from the leader, discarding the whole log.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        // An older snapshot, or the same one again, changes nothing. One at the same
        // index with another term replaces ours: the leader's is authoritative.
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index < self.snapshot.meta.index || (index == self.snapshot.meta.index && term == self.snapshot.meta.term) {
            return;
        }
        self.hard_state.commit = self.hard_state.commit.max(snapshot.meta.index);
        self.entries.clear();
        self.terms.clear();
        (self.compacted, self.compacted_term) = (index, term);
        self.snapshot = snapshot;
    }

    /// All entries after the snapshot (tests).
    pub fn all_entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        if self.entries.len() > 0 {
            self.entries(self.first_index(), self.last_index() + 1, u64::MAX, &mut out).expect("the whole log");
        }
        out
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState {
            hard_state: self.hard_state,
            conf_state: self.snapshot.meta.conf_state.clone(),
            election_timeout_ticks: self.snapshot.meta.election_timeout_ticks,
        })
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64, out: &mut Vec<Entry>) -> Result<(), StorageError> {
        let offset = self.compacted + 1;
        if lo < offset {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 || lo > hi {
            return Err(StorageError::Unavailable);
        }
        if lo == hi {
            return Ok(());
        }
        let mut total = 0u64;
        let start = (lo - offset) as usize;
        let end = (hi - offset) as usize;
        out.reserve(end - start);
        // Walk the term runs alongside the entries.
        let mut run = self.terms.partition_point(|&(first, _)| first <= lo) - 1;
        let mut term = self.terms[run].1;
        let mut next_run = self.terms.get(run + 1).map_or(Index::MAX, |r| r.0);
        let mut index = lo;
        for slice in self.entries.slices(start, end) {
            for slot in slice {
                if index == next_run {
                    run += 1;
                    term = self.terms[run].1;
                    next_run = self.terms.get(run + 1).map_or(Index::MAX, |r| r.0);
                }
                total += slot.data.len() as u64 + crate::types::ENTRY_OVERHEAD_BYTES;
                if total > max_bytes && index != lo {
                    return Ok(());
                }
                out.push(Entry { term, index, kind: slot.kind, data: slot.data.clone() });
                index += 1;
            }
        }
        Ok(())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == self.compacted {
            return Ok(self.compacted_term);
        }
        if index < self.compacted {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        Ok(self.term_of(index))
    }

    fn first_index(&self) -> Index {
        self.compacted + 1
    }

    fn last_index(&self) -> Index {
        self.compacted + self.entries.len() as u64
    }

    fn snapshot(&self, _request_index: Index, _to: NodeId) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

/// Entries per chunk of [`Chunked`]: 1024 entries of 40 bytes stay below the
/// allocator's mmap threshold and are cheap to drop whole on compaction.
const CHUNK_ENTRIES: usize = 1024;

/// A deque of entries stored in fixed-size chunks, so that a log of millions of entries
/// grows without ever copying the entries it already holds (one large `VecDeque`
/// reallocates and moves everything on each doubling).
#[derive(Debug, Clone)]
struct Chunked<T> {
    chunks: VecDeque<Vec<T>>,
    /// Entries already removed from the front of the first chunk.
    skip: usize,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked { chunks: VecDeque::new(), skip: 0, len: 0 }
    }
}

impl<T: Default> Chunked<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn locate(&self, i: usize) -> (usize, usize) {
        let i = i + self.skip;
        (i / CHUNK_ENTRIES, i % CHUNK_ENTRIES)
    }

    #[cfg(test)]
    fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let (c, o) = self.locate(i);
        Some(&self.chunks[c][o])
    }

    fn push(&mut self, e: T) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < CHUNK_ENTRIES => c.push(e),
            _ => {
                let mut c = Vec::with_capacity(CHUNK_ENTRIES);
                c.push(e);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    /// Appends all of `ents`, filling the last chunk, then new ones.
    fn extend(&mut self, mut ents: impl ExactSizeIterator<Item = T>) {
        let mut left = ents.len();
        self.len += left;
        while left > 0 {
            let room = match self.chunks.back() {
                Some(c) if c.len() < CHUNK_ENTRIES => CHUNK_ENTRIES - c.len(),
                _ => {
                    self.chunks.push_back(Vec::with_capacity(CHUNK_ENTRIES));
                    CHUNK_ENTRIES
                }
            };
            let n = room.min(left);
            // `take` of a vector's iterator keeps its exact length: one reservation and
            // a plain copy loop per chunk.
            self.chunks.back_mut().expect("ensured above").extend(ents.by_ref().take(n));
            left -= n;
        }
    }

    fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        if n == 0 {
            self.clear();
            return;
        }
        let (c, o) = self.locate(n - 1);
        self.chunks.truncate(c + 1);
        self.chunks[c].truncate(o + 1);
        self.len = n;
    }

    fn drain_front(&mut self, n: usize) {
        if n >= self.len {
            self.clear();
            return;
        }
        let (c, o) = self.locate(n);
        self.chunks.drain(..c);
        // Entries before `o` in the (now) first chunk are dead; release their payloads.
        for e in &mut self.chunks[0][self.skip.min(o)..o] {
            *e = T::default();
        }
        self.skip = o;
        self.len -= n;
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.skip = 0;
        self.len = 0;
    }

    /// Entries `[lo, hi)` as contiguous slices, one per chunk they span.
    fn slices(&self, lo: usize, hi: usize) -> impl Iterator<Item = &[T]> {
        let hi = hi.min(self.len);
        let lo = lo.min(hi);
        let (c0, o0) = self.locate(lo);
        let mut remaining = hi - lo;
        self.chunks.range(c0.min(self.chunks.len())..).enumerate().map_while(move |(k, chunk)| {
            if remaining == 0 {
                return None;
            }
            let start = if k == 0 { o0 } else { 0 };
            let n = (chunk.len() - start).min(remaining);
            remaining -= n;
            Some(&chunk[start..start + n])
        })
    }

    /// Entries `[lo, hi)`, one at a time.
    #[cfg(test)]
    fn range(&self, lo: usize, hi: usize) -> impl Iterator<Item = &T> {
        self.slices(lo, hi).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ent(index: Index, term: Term) -> Entry {
        Entry { index, term, kind: Default::default(), data: Bytes::new() }
    }

    #[test]
    fn chunked_matches_a_plain_vector() {
        let mut c: Chunked<u64> = Chunked::default();
        let mut v: Vec<u64> = Vec::new();
        let mut next = 1;
        // Grow, truncate and drain across chunk boundaries, checking every position.
        for step in 0..40u64 {
            let mut batch = Vec::new();
            // Mix single pushes with bulk extends of varying sizes.
            for k in 0..(step * 97 % 700) {
                if k % 7 == 0 {
                    c.extend(std::mem::take(&mut batch).into_iter());
                    c.push(next);
                } else {
                    batch.push(next);
                }
                v.push(next);
                next += 1;
            }
            c.extend(batch.into_iter());
            if step % 3 == 0 {
                let n = v.len() * 2 / 3;
                c.truncate(n);
                v.truncate(n);
                next = v.last().map_or(next, |l| l + 1);
            }
            if step % 4 == 1 {
                let n = v.len() / 3;
                c.drain_front(n);
                v.drain(..n);
            }
            assert_eq!(c.len(), v.len());
            let got: Vec<u64> = c.range(0, c.len()).copied().collect();
            assert_eq!(got, v);
            for (i, want) in v.iter().enumerate() {
                assert_eq!(c.get(i).copied(), Some(*want));
            }
            assert!(c.get(v.len()).is_none());
        }
    }

    /// Random appends (new terms, overwrites of a suffix), compactions and snapshot
    /// installs, checked after every step against a plain vector of entries: every
    /// index's term and every range, whatever the term runs and chunks look like.
    #[test]
    fn matches_a_plain_log_under_random_operations() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut s = MemStorage::new();
        // The model: the snapshot's (index, term) and the entries after it.
        let (mut snap, mut snap_term, mut model): (Index, Term, Vec<Entry>) = (0, 0, Vec::new());
        let mut term = 1;
        for step in 0..3000u64 {
            match rand(10) {
                0..=5 => {
                    // Append, possibly overwriting a suffix, sometimes in a new term.
                    if rand(4) == 0 {
                        term += 1;
                    }
                    let last = snap + model.len() as u64;
                    let back = if model.is_empty() || rand(3) > 0 { 0 } else { rand(model.len() as u64 + 1).max(1) };
                    let from = last + 1 - back;
                    let from = from.max(snap + 1);
                    let long = rand(5) == 0;
                    let n = 1 + rand(if long { 3000 } else { 40 });
                    let ents: Vec<Entry> = (0..n)
                        .map(|k| Entry {
                            index: from + k,
                            term,
                            kind: Default::default(),
                            data: Bytes::from(vec![(step % 251) as u8; (k % 7) as usize]),
                        })
                        .collect();
                    model.truncate((from - snap - 1) as usize);
                    model.extend(ents.iter().cloned());
                    if rand(2) == 0 { s.append(&ents) } else { s.append_owned(ents) }
                }
                6 | 7 if !model.is_empty() => {
                    let to = snap + 1 + rand(model.len() as u64);
                    s.compact(to);
                    snap_term = model[(to - snap - 1) as usize].term;
                    model.drain(..(to - snap) as usize);
                    snap = to;
                }
                8 if rand(10) == 0 => {
                    term += 1;
                    let mut sn = Snapshot::default();
                    sn.meta.index = snap + model.len() as u64 + rand(50);
                    sn.meta.term = term;
                    s.apply_snapshot(sn.clone());
                    (snap, snap_term) = (sn.meta.index, term);
                    model.clear();
                }
                _ => {}
            }
            assert_eq!((s.first_index(), s.last_index()), (snap + 1, snap + model.len() as u64), "step {step}");
            assert_eq!(s.term(snap), Ok(snap_term), "step {step}");
            for e in &model {
                assert_eq!(s.term(e.index), Ok(e.term), "step {step}: term of {}", e.index);
            }
            assert_eq!(s.term(snap + model.len() as u64 + 1), Err(StorageError::Unavailable));
            assert_eq!(s.all_entries(), model, "step {step}");
            if !model.is_empty() {
                let lo = snap + 1 + rand(model.len() as u64);
                let span = snap + model.len() as u64 + 2 - lo;
                let hi = lo + rand(span);
                let mut out = Vec::new();
                s.entries(lo, hi, u64::MAX, &mut out).unwrap();
                assert_eq!(out, model[(lo - snap - 1) as usize..(hi - snap - 1) as usize], "step {step}: {lo}..{hi}");
            }
        }
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let mut s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        s.append(&[ent(2, 2)]);
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.term(3), Err(StorageError::Unavailable));
    }

    #[test]
    fn compact_keeps_term_of_compaction_point() {
        let mut s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 2), ent(3, 3)]);
        s.compact(2);
        assert_eq!(s.first_index(), 3);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.term(1), Err(StorageError::Compacted));
        let mut out = Vec::new();
        assert_eq!(s.entries(2, 4, u64::MAX, &mut out), Err(StorageError::Compacted));
        s.entries(3, 4, u64::MAX, &mut out).unwrap();
        assert_eq!(out, vec![ent(3, 3)]);
    }

    #[test]
    fn create_snapshot_keeps_catchup_entries_below_the_snapshot() {
        let mut s = MemStorage::new();
        s.set_catchup_entries(2);
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 2), ent(4, 2), ent(5, 3)]);
        s.create_snapshot(4, ConfState::with_voters([1, 2]), 10, bytes::Bytes::from_static(b"sm"));
        assert_eq!((s.compacted_index(), s.first_index(), s.last_index()), (2, 3, 5));
        assert_eq!((s.term(2), s.term(3), s.term(4)), (Ok(1), Ok(2), Ok(2)));
        assert_eq!(s.term(1), Err(StorageError::Compacted));
        assert_eq!(s.snapshot(0, 2).unwrap().meta.index, 4, "the snapshot is the one at 4");
        assert_eq!(s.initial_state().unwrap().conf_state, ConfState::with_voters([1, 2]));
        let mut out = Vec::new();
        s.entries(3, 6, u64::MAX, &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.index).collect::<Vec<_>>(), vec![3, 4, 5]);
        // An installed snapshot replaces everything, tail included.
        let mut sn = Snapshot::default();
        sn.meta.index = 9;
        sn.meta.term = 4;
        s.apply_snapshot(sn);
        assert_eq!((s.compacted_index(), s.first_index(), s.term(9)), (9, 10, Ok(4)));
    }

    #[test]
    fn entries_respects_byte_limit_but_returns_at_least_one() {
        let mut s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        let mut out = Vec::new();
        s.entries(1, 4, 0, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.clear();
        s.entries(1, 4, 2 * crate::types::ENTRY_OVERHEAD_BYTES, &mut out).unwrap();
        assert_eq!(out.len(), 2);
    }
}
