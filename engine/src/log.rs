//! The replicated log as the engine sees it: durable entries in [`Storage`], followed by
//! an unstable tail the caller has not yet reported durable, plus the commit, persisted
//! and applied positions.
//!
//! Positions obey `applied <= min(committed, persisted)` and `committed <= last_index`:
//! entries are handed out for application only once they are both committed and durable
//! here, so the state machine never runs ahead of what a restart recovers.

use crate::storage::{Storage, StorageError};
use crate::types::{Entry, Index, Snapshot, Term};

/// Entries (and possibly a snapshot) not yet reported durable.
///
/// `entries[i].index == offset + i`. Entries below `offset_in_progress` (and the
/// snapshot, if `snapshot_in_progress`) have been handed to the caller for writing.
#[derive(Debug, Default)]
pub(crate) struct Unstable {
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) snapshot_in_progress: bool,
    pub(crate) entries: Vec<Entry>,
    pub(crate) offset: Index,
    pub(crate) offset_in_progress: Index,
}

impl Unstable {
    fn maybe_first_index(&self) -> Option<Index> {
        self.snapshot.as_ref().map(|s| s.meta.index + 1)
    }

    fn maybe_last_index(&self) -> Option<Index> {
        if !self.entries.is_empty() {
            return Some(self.offset + self.entries.len() as u64 - 1);
        }
        self.snapshot.as_ref().map(|s| s.meta.index)
    }

    fn maybe_term(&self, i: Index) -> Option<Term> {
        if i < self.offset {
            return self.snapshot.as_ref().filter(|s| s.meta.index == i).map(|s| s.meta.term);
        }
        let last = self.maybe_last_index()?;
        if i > last {
            return None;
        }
        Some(self.entries[(i - self.offset) as usize].term)
    }

    fn has_next(&self) -> bool {
        self.offset + (self.entries.len() as u64) > self.offset_in_progress
            || (self.snapshot.is_some() && !self.snapshot_in_progress)
    }

    /// Entries not yet handed out.
    fn next_entries(&self) -> &[Entry] {
        let start = (self.offset_in_progress.saturating_sub(self.offset)) as usize;
        &self.entries[start.min(self.entries.len())..]
    }

    fn next_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref().filter(|_| !self.snapshot_in_progress)
    }

    /// Marks everything currently unstable as handed to the caller.
    fn accept_in_progress(&mut self) {
        self.offset_in_progress = self.offset + self.entries.len() as u64;
        if self.snapshot.is_some() {
            self.snapshot_in_progress = true;
        }
    }

    /// Entries up to `(index, term)` are durable. Ignored when the entry at `index` has
    /// since been overwritten (its term differs): a newer write is still pending.
    fn stable_to(&mut self, index: Index, term: Term) {
        if index < self.offset || self.maybe_term(index) != Some(term) {
            return;
        }
        let n = (index + 1 - self.offset) as usize;
        self.entries.drain(..n);
        self.offset = index + 1;
        self.offset_in_progress = self.offset_in_progress.max(self.offset);
        // A long stall can leave a large buffer behind; give it back once mostly empty.
        if self.entries.capacity() > 4096 && self.entries.len() < self.entries.capacity() / 8 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }

    fn stable_snap_to(&mut self, index: Index) {
        if self.snapshot.as_ref().is_some_and(|s| s.meta.index == index) {
            self.snapshot = None;
            self.snapshot_in_progress = false;
        }
    }

    fn restore(&mut self, snapshot: Snapshot) {
        self.offset = snapshot.meta.index + 1;
        self.offset_in_progress = self.offset;
        self.entries.clear();
        self.snapshot = Some(snapshot);
        self.snapshot_in_progress = false;
    }

    /// Appends `ents` (taking ownership: no payload is cloned), first truncating any
    /// suffix at or after their first index.
    fn truncate_and_append(&mut self, mut ents: Vec<Entry>) {
        let from = ents[0].index;
        let end = self.offset + self.entries.len() as u64;
        if from == end {
            // The common case: the new entries follow on directly.
        } else if from <= self.offset {
            // Everything unstable is replaced.
            self.offset = from;
            self.offset_in_progress = from;
            self.entries.clear();
        } else {
            self.entries.truncate((from - self.offset) as usize);
            self.offset_in_progress = self.offset_in_progress.min(from);
        }
        if self.entries.is_empty() {
            std::mem::swap(&mut self.entries, &mut ents);
        } else {
            self.entries.append(&mut ents);
        }
    }
}

/// Result of matching an append against the local log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    /// The log now matches the leader's up to this index.
    Accepted(Index),
    /// `prev` does not match: the leader must back off.
    Mismatch,
    /// The append would overwrite a committed entry: a safety violation somewhere;
    /// refused so the committed prefix stays intact.
    ConflictsWithCommitted(Index),
}

#[derive(Debug)]
pub(crate) struct RaftLog<S> {
    pub(crate) store: S,
    pub(crate) unstable: Unstable,
    pub(crate) committed: Index,
    /// Highest index known durable on this node.
    pub(crate) persisted: Index,
    pub(crate) applied: Index,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(store: S, committed: Index, applied: Index) -> RaftLog<S> {
        let last = store.last_index();
        let first = store.first_index();
        RaftLog {
            unstable: Unstable { offset: last + 1, offset_in_progress: last + 1, ..Default::default() },
            committed,
            persisted: last,
            applied: applied.max(first - 1),
            store,
        }
    }

    pub(crate) fn first_index(&self) -> Index {
        self.unstable.maybe_first_index().unwrap_or_else(|| self.store.first_index())
    }

    pub(crate) fn last_index(&self) -> Index {
        self.unstable.maybe_last_index().unwrap_or_else(|| self.store.last_index())
    }

    pub(crate) fn last_term(&self) -> Term {
        self.term(self.last_index()).expect("the last entry's term is always known")
    }

    pub(crate) fn term(&self, i: Index) -> Result<Term, StorageError> {
        if let Some(t) = self.unstable.maybe_term(i) {
            return Ok(t);
        }
        if i + 1 < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if i > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        self.store.term(i)
    }

    pub(crate) fn match_term(&self, i: Index, t: Term) -> bool {
        self.term(i).is_ok_and(|x| x == t)
    }

    /// Raft §5.4.1: a candidate's log is at least as up-to-date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let our_term = self.last_term();
        last_term > our_term || (last_term == our_term && last_index >= self.last_index())
    }

    /// The first entry of `ents` that conflicts with (or extends) the local log; `None`
    /// when every entry is already present.
    fn find_conflict(&self, ents: &[Entry]) -> Option<Index> {
        let first = ents.first()?;
        // Fast path for streaming replication: entries that start right after our
        // last index cannot conflict with anything.
        if first.index > self.last_index() {
            return Some(first.index);
        }
        ents.iter().find(|e| !self.match_term(e.index, e.term)).map(|e| e.index)
    }

    /// The largest index `<= index` whose term is `<= term`, for fast backtracking
    /// (etcd `findConflictByTerm`): everything above it surely disagrees with a log whose
    /// entry at `index` has term `term`.
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t > term => i -= 1,
                Ok(t) => return (i, t),
                // Below the compaction point: answer the compaction point itself (its
                // term is answerable), the leader then sends a snapshot if needed.
                Err(_) => return (i, 0),
            }
        }
    }

    /// Raft §5.3 receiver rules 2–4.
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        commit: Index,
        mut ents: Vec<Entry>,
    ) -> AppendOutcome {
        if !self.match_term(prev_index, prev_term) {
            return AppendOutcome::Mismatch;
        }
        let last_new = prev_index + ents.len() as u64;
        if let Some(ci) = self.find_conflict(&ents) {
            if ci <= self.committed {
                return AppendOutcome::ConflictsWithCommitted(ci);
            }
            let start = (ci - prev_index - 1) as usize;
            ents.drain(..start);
            self.append(ents);
        }
        // Rule 5: commit = min(leaderCommit, index of last new entry).
        self.commit_to(commit.min(last_new));
        AppendOutcome::Accepted(last_new)
    }

    /// Appends entries after (possibly overwriting) the tail. Returns the new last index.
    ///
    /// # Panics
    /// If the entries would overwrite committed entries (callers check first).
    pub(crate) fn append(&mut self, ents: Vec<Entry>) -> Index {
        let Some(first) = ents.first() else { return self.last_index() };
        assert!(
            first.index > self.committed,
            "append at {} would overwrite committed entries (committed {})",
            first.index,
            self.committed
        );
        if first.index <= self.persisted {
            // Durable entries are being replaced: they no longer count as persisted.
            self.persisted = first.index - 1;
        }
        self.unstable.truncate_and_append(ents);
        self.last_index()
    }

    /// Raises the commit index; values beyond the log are ignored (they can only come
    /// from a confused peer, and committing entries we do not have would be unsafe).
    pub(crate) fn commit_to(&mut self, to: Index) -> bool {
        if to > self.committed && to <= self.last_index() {
            self.committed = to;
            return true;
        }
        false
    }

    /// Raft §5.4.2: only entries of the current term are committed by counting replicas.
    pub(crate) fn maybe_commit(&mut self, index: Index, term: Term) -> bool {
        index > self.committed && self.term(index).is_ok_and(|t| t == term) && self.commit_to(index)
    }

    /// Appends entries `[lo, hi)` from storage and the unstable tail to `out`, bounded by
    /// `max_bytes` (always at least one entry when the range is non-empty).
    pub(crate) fn slice(&self, lo: Index, hi: Index, max_bytes: u64, out: &mut Vec<Entry>) -> Result<(), StorageError> {
        if lo >= hi {
            return Ok(());
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let start_len = out.len();
        let u_off = self.unstable.offset;
        if lo < u_off {
            self.store.entries(lo, hi.min(u_off), max_bytes, out)?;
            let got = (out.len() - start_len) as u64;
            if hi <= u_off || got < hi.min(u_off) - lo {
                return Ok(()); // the byte limit stopped it, or the range is all stable
            }
        }
        let mut size: u64 = out[start_len..].iter().map(Entry::size_bytes).sum();
        let from = lo.max(u_off);
        let ents = &self.unstable.entries[(from - u_off) as usize..(hi - u_off) as usize];
        for e in ents {
            size += e.size_bytes();
            if size > max_bytes && out.len() > start_len {
                break;
            }
            out.push(e.clone());
        }
        Ok(())
    }

    /// True when committed, durable entries await application.
    pub(crate) fn has_next_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applied && self.unstable.next_snapshot().is_none()
    }

    /// Committed and durable entries after `applied`, at most `max_bytes` (but at least one).
    pub(crate) fn next_committed(&self, max_bytes: u64, out: &mut Vec<Entry>) {
        let hi = self.committed.min(self.persisted);
        if hi <= self.applied {
            return;
        }
        if let Err(e) = self.slice(self.applied + 1, hi + 1, max_bytes, out) {
            // Entries between applied and commit are never compacted by a correct caller.
            panic!("committed entries {}..={hi} unavailable: {e}", self.applied + 1);
        }
    }

    pub(crate) fn applied_to(&mut self, index: Index) {
        if index > self.applied {
            assert!(
                index <= self.committed.max(self.unstable.snapshot.as_ref().map_or(0, |s| s.meta.index)),
                "applied {index} beyond committed {}",
                self.committed
            );
            self.applied = index;
        }
    }

    pub(crate) fn has_next_unstable(&self) -> bool {
        self.unstable.has_next()
    }

    pub(crate) fn next_unstable_entries(&self) -> &[Entry] {
        self.unstable.next_entries()
    }

    pub(crate) fn next_unstable_snapshot(&self) -> Option<&Snapshot> {
        self.unstable.next_snapshot()
    }

    pub(crate) fn accept_unstable(&mut self) {
        self.unstable.accept_in_progress();
    }

    /// The caller reports entries up to `(index, term)` and/or the snapshot at
    /// `snap_index` durable.
    pub(crate) fn stable_to(&mut self, last: Option<(Index, Term)>, snap_index: Option<Index>) {
        if let Some(si) = snap_index {
            self.unstable.stable_snap_to(si);
            if si > self.persisted {
                self.persisted = si;
            }
        }
        if let Some((index, term)) = last {
            // Only if the entry is still the one that was written: a later overwrite of
            // the same index is still on its way to disk.
            if self.match_term(index, term) && index > self.persisted {
                self.persisted = index;
            }
            self.unstable.stable_to(index, term);
        }
    }

    /// Installs a snapshot received from the leader: the log becomes empty after it.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        // Only the old committed prefix is known to agree with the snapshot; durable
        // entries past it may differ (that is why the snapshot is being installed), so
        // they stop counting until the snapshot itself is durable.
        self.persisted = self.persisted.min(self.committed);
        self.committed = snapshot.meta.index;
        self.unstable.restore(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use bytes::Bytes;

    fn ent(index: Index, term: Term) -> Entry {
        Entry { index, term, kind: Default::default(), data: Bytes::new() }
    }

    fn log_with(stable: &[(Index, Term)], unstable: &[(Index, Term)]) -> RaftLog<MemStorage> {
        let mut s = MemStorage::new();
        s.append(&stable.iter().map(|&(i, t)| ent(i, t)).collect::<Vec<_>>());
        let mut l = RaftLog::new(s, 0, 0);
        let u: Vec<Entry> = unstable.iter().map(|&(i, t)| ent(i, t)).collect();
        l.append(u);
        l
    }

    #[test]
    fn term_spans_storage_and_unstable() {
        let l = log_with(&[(1, 1), (2, 1)], &[(3, 2), (4, 3)]);
        assert_eq!(l.last_index(), 4);
        assert_eq!(l.term(0), Ok(0));
        assert_eq!(l.term(2), Ok(1));
        assert_eq!(l.term(4), Ok(3));
        assert_eq!(l.term(5), Err(StorageError::Unavailable));
        assert_eq!(l.persisted, 2);
    }

    #[test]
    fn is_up_to_date_compares_last_term_then_length() {
        // Raft §5.4.1
        let l = log_with(&[(1, 1), (2, 2)], &[]);
        assert!(l.is_up_to_date(1, 3), "higher last term wins even if shorter");
        assert!(!l.is_up_to_date(5, 1), "lower last term loses even if longer");
        assert!(l.is_up_to_date(2, 2));
        assert!(!l.is_up_to_date(1, 2));
    }

    #[test]
    fn maybe_append_truncates_conflicts_and_lowers_persisted() {
        // Raft §5.3: an existing entry that conflicts with a new one is deleted with all
        // that follow it.
        let mut l = log_with(&[(1, 1), (2, 1), (3, 1)], &[]);
        let out = l.maybe_append(1, 1, 0, vec![ent(2, 2), ent(3, 2), ent(4, 2)]);
        assert_eq!(out, AppendOutcome::Accepted(4));
        assert_eq!(l.term(2), Ok(2));
        assert_eq!(l.persisted, 1, "overwritten entries no longer count as durable");
        assert_eq!(l.next_unstable_entries().len(), 3);
    }

    #[test]
    fn maybe_append_ignores_duplicates_and_refuses_committed_conflicts() {
        let mut l = log_with(&[(1, 1), (2, 1), (3, 1)], &[]);
        l.commit_to(2);
        assert_eq!(l.maybe_append(0, 0, 2, vec![ent(1, 1), ent(2, 1)]), AppendOutcome::Accepted(2));
        assert!(!l.has_next_unstable(), "nothing new to write");
        assert_eq!(l.maybe_append(0, 0, 2, vec![ent(1, 1), ent(2, 5)]), AppendOutcome::ConflictsWithCommitted(2));
        assert_eq!(l.term(2), Ok(1));
        assert_eq!(l.maybe_append(3, 9, 3, vec![]), AppendOutcome::Mismatch);
    }

    #[test]
    fn commit_is_capped_by_last_new_entry() {
        let mut l = log_with(&[(1, 1), (2, 1), (3, 1)], &[]);
        assert_eq!(l.maybe_append(1, 1, 10, vec![]), AppendOutcome::Accepted(1));
        assert_eq!(l.committed, 1, "leader commit 10 but only index 1 is known to match");
    }

    #[test]
    fn find_conflict_by_term_walks_back_to_a_lower_term() {
        let l = log_with(&[(1, 1), (2, 2), (3, 2), (4, 4), (5, 4)], &[]);
        assert_eq!(l.find_conflict_by_term(5, 3), (3, 2));
        assert_eq!(l.find_conflict_by_term(5, 4), (5, 4));
        assert_eq!(l.find_conflict_by_term(9, 1), (1, 1));
        assert_eq!(l.find_conflict_by_term(5, 0), (0, 0));
    }

    #[test]
    fn stable_to_ignores_overwritten_writes() {
        let mut l = log_with(&[], &[(1, 1), (2, 1)]);
        l.accept_unstable();
        // While 1..=2 (term 1) are being written, a new leader overwrites index 2.
        l.maybe_append(1, 1, 0, vec![ent(2, 2)]);
        l.stable_to(Some((2, 1)), None);
        assert_eq!(l.persisted, 0, "the write of (2,1) does not make (2,2) durable");
        assert_eq!(l.next_unstable_entries(), &[ent(2, 2)]);
        l.stable_to(Some((2, 2)), None);
        assert_eq!(l.persisted, 2);
    }

    #[test]
    fn slice_honours_byte_limit_across_the_boundary() {
        let l = log_with(&[(1, 1), (2, 1)], &[(3, 1), (4, 1)]);
        let mut out = Vec::new();
        l.slice(1, 5, u64::MAX, &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        out.clear();
        l.slice(2, 5, 2 * crate::types::ENTRY_OVERHEAD_BYTES, &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2, 3]);
        out.clear();
        l.slice(3, 5, 0, &mut out).unwrap();
        assert_eq!(out.len(), 1, "at least one entry");
    }

    #[test]
    fn restore_does_not_count_divergent_durable_entries() {
        // Durable entries 1..=5 of term 1, of which only 1..=2 are committed; the leader's
        // snapshot at 4 has term 2: entries 3..=5 on disk are not the snapshot's.
        let mut l = log_with(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)], &[]);
        l.commit_to(2);
        assert_eq!(l.persisted, 5);
        let mut snap = Snapshot::default();
        snap.meta.index = 4;
        snap.meta.term = 2;
        l.restore(snap);
        assert_eq!(l.persisted, 2, "only the committed prefix stays durable");
        l.stable_to(None, Some(4));
        assert_eq!(l.persisted, 4, "the snapshot itself is durable now");
    }

    #[test]
    fn restore_replaces_the_log() {
        let mut l = log_with(&[(1, 1)], &[(2, 1)]);
        let mut snap = Snapshot::default();
        snap.meta.index = 10;
        snap.meta.term = 3;
        l.restore(snap);
        assert_eq!((l.first_index(), l.last_index(), l.committed), (11, 10, 10));
        assert_eq!(l.term(10), Ok(3));
        assert!(l.next_unstable_snapshot().is_some());
        assert!(!l.has_next_committed(), "nothing to apply until the snapshot is durable");
    }
}
