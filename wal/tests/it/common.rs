//! Helpers shared by the integration tests: an executor, entries, a reference model of
//! the log, and scratch directories on a disk that supports O_DIRECT.

use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use skiff_engine::{Entry, EntryKind, HardState, Index, SnapshotMeta, Storage, Term};
use skiff_wal::format::SEGMENT_BYTES_MIN;
use skiff_wal::recovery::Recovered;
use skiff_wal::{Append, Identity, SyncMode, WalOptions};

pub const IDENT: Identity = Identity { cluster_id: 0xC1, shard_id: 3, node_id: 2 };

/// The directory simulated-disk tests use.
pub fn sim_dir() -> PathBuf {
    PathBuf::from("/sim/wal")
}

/// Runs `f` on a fresh glommio executor (default settings: no spinning).
pub fn run<T: 'static>(f: impl Future<Output = T> + 'static) -> T {
    glommio::LocalExecutorBuilder::default().make().expect("glommio executor").run(f)
}

/// Small segments, so a few dozen appends rotate through several of them.
pub fn small_opts(dir: &Path) -> WalOptions {
    let mut o = WalOptions::new(dir, IDENT);
    o.segment_bytes = SEGMENT_BYTES_MIN;
    o
}

/// Both ways of making appends durable: tests of durability run under each.
pub const SYNC_MODES: [SyncMode; 2] = [SyncMode::Dsync, SyncMode::Fdatasync];

/// [`small_opts`] with appends made durable the `sync` way.
pub fn small_opts_sync(dir: &Path, sync: SyncMode) -> WalOptions {
    let mut o = small_opts(dir);
    o.sync = sync;
    o
}

/// Entry `index` of `term`, whose payload encodes both (so a misplaced or stale entry
/// cannot pass for the right one) padded to `len` bytes.
pub fn ent(index: Index, term: Term, len: usize) -> Entry {
    let mut data = format!("{index}/{term}/").into_bytes();
    data.resize(len.max(data.len()), b'a' + (index % 26) as u8);
    Entry {
        term,
        index,
        kind: if index.is_multiple_of(7) { EntryKind::ConfChange } else { EntryKind::Normal },
        data: Bytes::from(data),
    }
}

/// A scratch directory under the target dir (ext4 here, unlike a tmpfs /tmp), removed
/// on drop even when the test fails.
#[derive(Debug)]
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("wal-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TestDir(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the log must look like after a sequence of appends (the engine's MemStorage
/// semantics, kept independent of the WAL's code).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub snapshot: SnapshotMeta,
    /// The compaction point `(index, term)`: the snapshot's, or below it by up to
    /// `catchup_entries` (the WAL's option of that name).
    pub compacted: (Index, Term),
    pub catchup_entries: u64,
    pub hard_state: HardState,
    /// Entry `compacted.0 + 1 + i`.
    pub entries: Vec<Entry>,
}

impl Model {
    pub fn last_index(&self) -> Index {
        self.compacted.0 + self.entries.len() as u64
    }

    /// Term of `index` (the compaction point or a live entry).
    pub fn term(&self, index: Index) -> Term {
        if index == self.compacted.0 {
            return self.compacted.1;
        }
        self.entries[(index - self.compacted.0 - 1) as usize].term
    }

    pub fn apply(&mut self, a: &Append<'_>) {
        if let Some(m) = a.install {
            self.entries.clear();
            self.snapshot = m.clone();
            self.compacted = (m.index, m.term);
            self.hard_state.commit = self.hard_state.commit.max(m.index);
        }
        if let Some(first) = a.entries.first() {
            self.entries.truncate((first.index - self.compacted.0 - 1) as usize);
            self.entries.extend(a.entries.iter().cloned());
        }
        if let Some(hs) = a.hard_state {
            self.hard_state = hs;
        }
        if let Some(m) = a.compact
            && m.index > self.snapshot.index
        {
            let point = m.index.saturating_sub(self.catchup_entries).max(self.compacted.0);
            if point > self.compacted.0 {
                let term = self.term(point);
                self.entries.drain(..(point - self.compacted.0) as usize);
                self.compacted = (point, term);
            }
            self.snapshot = m.clone();
        }
    }

    /// True when a recovered log is exactly this state.
    pub fn matches(&self, r: &Recovered) -> bool {
        r.snapshot == self.snapshot
            && r.compacted == self.compacted
            && r.hard_state == self.hard_state
            && r.locs.len() == self.entries.len()
            && r.cache.iter().eq(self.entries.iter())
            && r.locs.iter().zip(&self.entries).all(|(l, e)| l.term == e.term)
    }

    /// Asserts that `s` serves exactly this log.
    pub fn assert_storage(&self, s: &impl Storage) {
        assert_eq!(s.first_index(), self.compacted.0 + 1, "first index");
        assert_eq!(s.last_index(), self.last_index(), "last index");
        assert_eq!(s.term(self.snapshot.index), Ok(self.snapshot.term), "snapshot term");
        assert_eq!(s.term(self.compacted.0), Ok(self.compacted.1), "compaction point term");
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state, self.hard_state);
        assert_eq!(st.conf_state, self.snapshot.conf_state);
        let mut out = Vec::new();
        s.entries(self.compacted.0 + 1, self.last_index() + 1, u64::MAX, &mut out).unwrap();
        assert_eq!(out.len(), self.entries.len(), "entry count");
        for (got, want) in out.iter().zip(&self.entries) {
            assert_eq!(got, want, "entry {}", want.index);
        }
    }
}
