//! Recovery: a pure function from the bytes of a WAL directory to a decision — the
//! recovered log, or an error naming the file and offset that cannot be trusted.
//!
//! Every decision is a row of this table; `tests` walks each row by its id (and
//! `docs/wal-format.md` repeats it for operators).
//!
//! | row | situation                                                        | decision |
//! |-----|------------------------------------------------------------------|----------|
//! | D1  | file name is neither `{seq:020}.wal` nor a known leftover        | refuse: not a segment (operator moves it away) |
//! | D2  | leftover `{seq:020}.wal.tmp` or O_DIRECT probe                   | remove (a pre-creation cut short; never held a record) |
//! | H1  | segment header magic ok, version unknown                         | refuse: unknown format version |
//! | H2  | valid header of another cluster, shard or node                   | refuse: foreign directory |
//! | H3  | valid header whose seq differs from the file name                | corruption at offset 0 |
//! | H4  | all-zero header after the last active segment                    | spare: remove (it may hold a torn first write), unless H5x |
//! | H5  | damaged header after the last active segment                     | torn activation: remove, unless H5x |
//! | H5x | the first H4/H5 segment holds an intact batch of its own `>= expected + APPENDS_IN_FLIGHT_MAX` (expected: the batch after the last active segment's data, or 1 when no segment is active; an H4 segment is scanned only if its first data block is a batch of its own, see [`torn_activation_needs_scan`]) | corruption at offset 0 |
//! | H6  | zero or damaged header between active segments                   | corruption at offset 0 |
//! | H8  | zero or damaged header before the first active segment           | released segment caught mid-recycle: remove (F1 still guards) |
//! | H7  | active segment seqs not consecutive                              | corruption: segment missing |
//! | B1  | intact batch (header CRC, seq = expected, every record CRC)      | apply its records |
//! | B2  | zero block, end of file, a stale batch of an older segment seq, or (in a segment whose header says recycled) a block without the batch magic | end of this segment's data |
//! | B3  | damaged batch (no magic outside a recycled segment; header CRC, seq, length, record CRC) | end of this segment's data (a tear or damage: see E*) |
//! | E1  | middle segment ends at batch `n`, next segment starts at `n + 1` | continue with the next segment |
//! | E2  | middle segment ends anywhere else                                | corruption at the end offset |
//! | E3  | last segment's data ends before batch `e`, then an intact batch `>= e + APPENDS_IN_FLIGHT_MAX` | corruption at the end offset (that batch was only written after batch `e` was durable) |
//! | E4  | last segment ends at a damaged batch (not E3, not E6)            | torn tail: drop from that offset, log file and offset, zero the region before appending |
//! | E5  | last segment ends at zeroes or end of file (not E3)              | clean end: append from there (zeroing any stale bytes after it) |
//! | E6  | last segment's data ends before batch `e`, and the next segment (H4/H5) holds its first batch `f > e` at the data offset | corruption at the end offset (a segment's first write, with batch `f`, waits for every batch before `f` to be durable) |
//! | R1  | entry at index `<= last + 1`, above the compaction point         | append; a later append at the same index supersedes the suffix |
//! | R2  | entry index leaves a gap, or is at or below the compaction point | corruption at the record |
//! | R3  | hard state                                                       | the latest wins |
//! | R4  | snapshot marker (types 3 and 5)                                  | compact to its compaction point (type 3: the snapshot's index; type 5: below it, keeping a tail); snapshot beyond the last index: corruption |
//! | R5  | snapshot install                                                 | replace the whole log |
//! | R6  | record with a valid CRC but unknown type or entry kind           | corruption at the record |
//! | F1  | oldest segment starts after the compaction point covering its predecessors | corruption: segments missing |

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use skiff_engine::{Entry, HardState, Index, SnapshotMeta, Term};

use crate::error::WalError;
use crate::format::{
    self, APPENDS_IN_FLIGHT_MAX, BATCH_HEADER_BYTES, BLOCK_BYTES, BatchHeader, HeaderRead, Identity, RecordFault,
    RecordView, SEGMENT_DATA_OFFSET_BYTES, SegmentHeader,
};
use crate::fs::DIRECT_IO_PROBE_NAME;
use crate::log::EntryLoc;

/// How a directory listing is to be treated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Segment files, ascending by seq.
    pub segments: Vec<u64>,
    /// Leftovers to remove (row D2).
    pub leftovers: Vec<String>,
}

/// Sorts a directory listing into segments and leftovers (rows D1, D2).
pub fn classify_listing(dir: &Path, names: &[String]) -> Result<Listing, WalError> {
    let mut out = Listing::default();
    for name in names {
        if let Some(seq) = format::parse_segment_name(name) {
            out.segments.push(seq);
        } else if format::parse_temp_name(name).is_some() || name == DIRECT_IO_PROBE_NAME {
            out.leftovers.push(name.clone());
        } else {
            return Err(WalError::BadDataDir {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{name:?} is not a WAL segment; this directory must hold only this \
                     shard's WAL. Move the file elsewhere, or point the node at an empty \
                     or correct directory"
                ),
            });
        }
    }
    out.segments.sort_unstable();
    Ok(out)
}

/// What to do with each segment, decided from its header block (rows H1 to H7).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Segments to replay, in order.
    pub active: Vec<SegmentHeader>,
    /// The first segment after the last active one, when its header is zeroed (row
    /// H4) or damaged (row H5): it is the one a torn first write would have left, so
    /// [`Replay::torn_activation`] checks it (row H5x) before it is removed.
    pub torn_activation: Option<u64>,
    /// That segment's header is all zero (row H4), not damaged (row H5).
    pub torn_activation_zeroed: bool,
    /// Later spares to remove (row H4).
    pub spares: Vec<u64>,
    /// Released segments caught before their recycling or removal finished (row H8).
    pub released: Vec<u64>,
}

fn corruption(dir: &Path, seq: u64, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corruption { file: dir.join(format::segment_name(seq)), offset, reason: reason.into() }
}

/// Decides from the segment headers (ascending by seq) which segments hold the log.
pub fn plan(dir: &Path, identity: Identity, headers: &[(u64, HeaderRead)]) -> Result<Plan, WalError> {
    let mut plan = Plan::default();
    let last_valid = headers.iter().rposition(|(_, h)| matches!(h, HeaderRead::Valid(_)));
    let first_valid = headers.iter().position(|(_, h)| matches!(h, HeaderRead::Valid(_)));
    for (i, (seq, h)) in headers.iter().enumerate() {
        match h {
            HeaderRead::UnknownVersion(v) => {
                return Err(WalError::BadDataDir {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "segment {} has format version {v}, this build reads version {}; \
                         run the release that wrote it, or upgrade",
                        format::segment_name(*seq),
                        format::FORMAT_VERSION
                    ),
                });
            }
            HeaderRead::Valid(hdr) => {
                if hdr.identity != identity {
                    let h = hdr.identity;
                    return Err(WalError::BadDataDir {
                        dir: dir.to_path_buf(),
                        reason: format!(
                            "it belongs to cluster {} shard {} node {}, but this node is \
                             cluster {} shard {} node {}; check the data dir and shard \
                             settings in the config",
                            h.cluster_id,
                            h.shard_id,
                            h.node_id,
                            identity.cluster_id,
                            identity.shard_id,
                            identity.node_id
                        ),
                    });
                }
                if hdr.segment_seq != *seq {
                    return Err(corruption(
                        dir,
                        *seq,
                        0,
                        format!("header says segment {} but the file name says {seq}", hdr.segment_seq),
                    ));
                }
                if let Some(prev) = plan.active.last()
                    && prev.segment_seq + 1 != *seq
                {
                    return Err(corruption(
                        dir,
                        *seq,
                        0,
                        format!("segment {} is missing before it", format::segment_name(prev.segment_seq + 1)),
                    ));
                }
                plan.active.push(*hdr);
            }
            HeaderRead::Spare | HeaderRead::Invalid if first_valid.is_some_and(|fv| i < fv) => {
                // Row H8: compaction releases segments from the front only, and
                // recycling zeroes a header before the rename is durable; row F1
                // still refuses if the log needed this segment.
                plan.released.push(*seq);
            }
            HeaderRead::Spare | HeaderRead::Invalid => {
                if last_valid.is_some_and(|lv| i < lv) {
                    return Err(corruption(
                        dir,
                        *seq,
                        0,
                        "segment header is zeroed or damaged, and later segments exist",
                    ));
                }
                if plan.torn_activation.is_none() {
                    plan.torn_activation = Some(*seq);
                    plan.torn_activation_zeroed = matches!(h, HeaderRead::Spare);
                } else if matches!(h, HeaderRead::Invalid) {
                    return Err(corruption(dir, *seq, 0, "damaged segment header after a spare or a torn segment"));
                } else {
                    plan.spares.push(*seq);
                }
            }
        }
    }
    Ok(plan)
}

/// A torn tail that recovery dropped (row E4): to be logged by the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for TornTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dropped the torn tail of {} from offset {} ({}): records there were never acknowledged",
            self.file.display(),
            self.offset,
            self.reason
        )
    }
}

/// Where appending resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    pub segment_seq: u64,
    pub offset: u64,
    /// The segment already holds a batch (so the next batch needs no preamble).
    pub has_batches: bool,
    /// `[offset, zero_to)` may hold stale bytes of this segment and must be zeroed,
    /// durably, before anything is appended.
    pub zero_to: u64,
}

/// Everything recovery rebuilt.
#[derive(Debug, Default)]
pub struct Recovered {
    pub snapshot: SnapshotMeta,
    /// The compaction point `(index, term)` (the snapshot's, or below it when a tail is
    /// kept).
    pub compacted: (Index, Term),
    pub hard_state: HardState,
    /// Entry `compacted.0 + 1 + i` is at `locs[i]`.
    pub locs: VecDeque<EntryLoc>,
    /// The last entries of the log, within the cache budget.
    pub cache: VecDeque<Entry>,
    pub cache_bytes: u64,
    pub next_batch_seq: u64,
    /// Replayed segments, ascending.
    pub segments: Vec<u64>,
    pub tail: Option<Tail>,
    /// Segments to remove: spares and a torn activation.
    pub remove: Vec<u64>,
    pub torn_tail: Option<TornTail>,
}

impl Recovered {
    /// The recovered entries that are still cached (tests use an unbounded budget to
    /// get them all).
    pub fn cached_entries(&self) -> Vec<Entry> {
        self.cache.iter().cloned().collect()
    }

    /// Last index of the recovered log.
    pub fn last_index(&self) -> Index {
        self.compacted.0 + self.locs.len() as u64
    }
}

enum BatchParse<'a> {
    Zero,
    Stale,
    /// No batch header, not even its magic: a torn write whose header block never
    /// landed, or in a recycled file the middle of an older segment's batch.
    Unreadable,
    Damaged(String),
    Intact {
        header: BatchHeader,
        records: Vec<(RecordView<'a>, usize, usize)>,
    },
}

/// Parses the batch at `off` of segment `seq` (rows B1 to B3, R6).
fn parse_batch<'a>(dir: &Path, seq: u64, data: &'a [u8], off: usize) -> Result<BatchParse<'a>, WalError> {
    let block_end = (off + BLOCK_BYTES).min(data.len());
    if data[off..block_end].iter().all(|&b| b == 0) {
        return Ok(BatchParse::Zero);
    }
    let Some(header) = BatchHeader::decode(&data[off..]) else {
        if data[off..].starts_with(&format::BATCH_MAGIC) {
            // The batch magic with a bad header checksum: a header written in this
            // segment's life, torn or gone bad (an older life's intact headers still
            // check, and its batch bodies seldom start a block with the magic).
            return Ok(BatchParse::Damaged("batch header checksum mismatch".into()));
        }
        return Ok(BatchParse::Unreadable);
    };
    if header.segment_seq != seq {
        // Left over from this file's life as an older, recycled segment.
        return Ok(BatchParse::Stale);
    }
    let body_end = off + BATCH_HEADER_BYTES + header.body_bytes as usize;
    if body_end > data.len() || off + header.padded_bytes() > data.len() {
        return Ok(BatchParse::Damaged("batch runs past the end of the segment".into()));
    }
    let mut records = Vec::with_capacity(header.record_count as usize);
    let mut at = off + BATCH_HEADER_BYTES;
    for _ in 0..header.record_count {
        match format::decode_record(&data[at..body_end], header.crc) {
            Ok((view, len)) => {
                records.push((view, at, len));
                at += len;
            }
            Err(RecordFault::Malformed(why)) => {
                return Err(corruption(
                    dir,
                    seq,
                    at as u64,
                    format!("record with a valid checksum is malformed: {why}"),
                ));
            }
            Err(f) => return Ok(BatchParse::Damaged(format!("record at offset {at}: {f:?}"))),
        }
    }
    if at != body_end {
        return Ok(BatchParse::Damaged("batch body length disagrees with its records".into()));
    }
    Ok(BatchParse::Intact { header, records })
}

/// Replays active segments in order into the recovered state.
#[derive(Debug)]
pub struct Replay {
    dir: PathBuf,
    cache_budget_bytes: u64,
    out: Recovered,
    /// Compaction point while replaying (may run ahead of `out.snapshot` until the
    /// snapshot marker covering released segments is replayed; row F1).
    base: Index,
    /// The first replayed segment, for row F1.
    first_segment: Option<u64>,
    /// False while the first replayed segment starts above index 1 and no snapshot
    /// marker has fixed the compaction point yet: `base` is then only a guess from the
    /// header, and an entry that does not extend the log starts the window afresh (a
    /// follower truncated below the segment's first index before the compaction that
    /// released the older segments). Row F1 catches a window that never gets anchored.
    anchored: bool,
    /// Expected seq of the next batch.
    expected: Option<u64>,
    /// How the previous segment ended: (seq, offset, damage reason).
    prev_end: Option<(u64, u64, Option<String>)>,
}

impl Replay {
    pub fn new(dir: &Path, cache_budget_bytes: u64) -> Replay {
        Replay {
            dir: dir.to_path_buf(),
            cache_budget_bytes,
            out: Recovered::default(),
            base: 0,
            first_segment: None,
            anchored: true,
            expected: None,
            prev_end: None,
        }
    }

    fn last(&self) -> Index {
        self.base + self.out.locs.len() as u64
    }

    /// Replays one active segment (`data` is the whole file).
    pub fn segment(&mut self, header: &SegmentHeader, data: &[u8], is_last: bool) -> Result<(), WalError> {
        let seq = header.segment_seq;
        match (self.expected, &self.prev_end) {
            (Some(e), Some((pseq, poff, why))) => {
                if header.first_batch_seq != e {
                    // Row E2.
                    let reason = match why {
                        Some(w) => format!(
                            "{w}; the next segment starts at batch {} but this one ends before batch {e}",
                            header.first_batch_seq
                        ),
                        None => format!(
                            "segment ends before batch {e} but the next one starts at batch {}",
                            header.first_batch_seq
                        ),
                    };
                    return Err(corruption(&self.dir, *pseq, *poff, reason));
                }
            }
            _ => {
                self.expected = Some(header.first_batch_seq);
                self.base = header.first_index.saturating_sub(1);
                self.anchored = self.base == 0;
                self.first_segment = Some(seq);
            }
        }
        self.out.segments.push(seq);
        let mut off = SEGMENT_DATA_OFFSET_BYTES as usize;
        let mut damage = None;
        while off < data.len() {
            let e = self.expected.expect("set above");
            match parse_batch(&self.dir, seq, data, off)? {
                BatchParse::Zero | BatchParse::Stale => break,
                // Row B2: a recycled file's older bytes; where they start is where
                // this segment's data ends. (A torn write there whose header block
                // never landed looks the same; it was never acknowledged either.)
                BatchParse::Unreadable if header.recycled => break,
                BatchParse::Unreadable => {
                    damage = Some("no batch header (magic mismatch)".to_string());
                    break;
                }
                BatchParse::Damaged(why) => {
                    damage = Some(why);
                    break;
                }
                BatchParse::Intact { header: bh, records } => {
                    if bh.batch_seq != e {
                        damage = Some(format!("batch seq {} where {e} was expected", bh.batch_seq));
                        break;
                    }
                    self.apply(seq, &bh, &records)?;
                    self.expected = Some(e + 1);
                    off += bh.padded_bytes();
                }
            }
        }
        let end = off as u64;
        if is_last {
            let e = self.expected.expect("set above");
            let zero_to = lookahead(&self.dir, seq, data, off, e, damage.as_deref())?;
            if let Some(why) = damage.clone() {
                self.out.torn_tail =
                    Some(TornTail { file: self.dir.join(format::segment_name(seq)), offset: end, reason: why });
            }
            self.out.tail =
                Some(Tail { segment_seq: seq, offset: end, has_batches: end > SEGMENT_DATA_OFFSET_BYTES, zero_to });
        }
        self.prev_end = Some((seq, end, damage));
        Ok(())
    }

    /// Checks the segment after the last active one when its header is zeroed or
    /// damaged (rows H4, H5, H5x): it may be a torn first write, unless it holds
    /// batches that could only have been written after that first write was durable.
    /// With no active segment at all, no segment header was ever durable, so the
    /// first batch the WAL wrote is batch 1.
    pub fn torn_activation(&mut self, seq: u64, data: &[u8]) -> Result<(), WalError> {
        // Row E6: this segment's first write had begun with batch `f` (its first batch
        // is there), and that write is issued only once every batch before `f` is
        // durable: the previous segment must hold them all, like a middle segment (E2).
        let first_batch = data
            .get(SEGMENT_DATA_OFFSET_BYTES as usize..)
            .and_then(BatchHeader::decode)
            .filter(|h| h.segment_seq == seq)
            .map(|h| h.batch_seq);
        if let (Some(f), Some(e), Some((pseq, poff, why))) = (first_batch, self.expected, &self.prev_end)
            && f > e
        {
            let what = why.as_deref().unwrap_or("segment data ends");
            return Err(corruption(
                &self.dir,
                *pseq,
                *poff,
                format!(
                    "{what} before batch {e}, yet {} began its first write with batch {f}, which is \
                     issued only once every batch before it is durable",
                    format::segment_name(seq)
                ),
            ));
        }
        let e = self.expected.unwrap_or(1);
        lookahead(&self.dir, seq, data, SEGMENT_DATA_OFFSET_BYTES as usize, e, Some("damaged segment header"))
            .map_err(|_| {
                corruption(
                    &self.dir,
                    seq,
                    0,
                    "segment header is zeroed or damaged but later batches in it were acknowledged",
                )
            })?;
        self.out.remove.push(seq);
        Ok(())
    }

    /// First step for `plan.torn_activation`, from its first data block: when it
    /// cannot hold an acknowledged batch ([`torn_activation_needs_scan`]) it is
    /// recorded for removal and `false` returned — a clean start then never reads its
    /// spare whole; otherwise `true`: read it whole for [`Replay::torn_activation`].
    pub fn torn_activation_needs_data(&mut self, plan: &Plan, first_data_block: &[u8]) -> bool {
        let Some(seq) = plan.torn_activation else { return false };
        if torn_activation_needs_scan(plan.torn_activation_zeroed, seq, first_data_block) {
            return true;
        }
        self.out.remove.push(seq);
        false
    }

    /// Records spares (row H4) or released leftovers (row H8) to remove.
    pub fn spares(&mut self, seqs: &[u64]) {
        self.out.remove.extend_from_slice(seqs);
    }

    fn apply(
        &mut self,
        seq: u64,
        bh: &BatchHeader,
        records: &[(RecordView<'_>, usize, usize)],
    ) -> Result<(), WalError> {
        for (view, at, len) in records {
            match view {
                RecordView::Entry { term, index, kind, data } => {
                    let (index, term) = (*index, *term);
                    if !self.anchored && (index <= self.base || index > self.last() + 1) {
                        self.base = index - 1;
                        self.out.locs.clear();
                        self.out.cache.clear();
                        self.out.cache_bytes = 0;
                    }
                    if index <= self.base || index > self.last() + 1 {
                        // Row R2.
                        return Err(corruption(
                            &self.dir,
                            seq,
                            *at as u64,
                            format!("entry {index} does not extend the log ({}..={}]", self.base, self.last()),
                        ));
                    }
                    // Row R1: a later append at the same index supersedes the suffix.
                    let keep = (index - self.base - 1) as usize;
                    self.out.locs.truncate(keep);
                    while self.out.cache.back().is_some_and(|c| c.index >= index) {
                        let c = self.out.cache.pop_back().expect("non-empty");
                        self.out.cache_bytes -= c.size_bytes();
                    }
                    self.out.locs.push_back(EntryLoc {
                        term,
                        batch_seq: bh.batch_seq,
                        segment_seq: seq,
                        offset: *at as u32,
                        len: *len as u32,
                        seed: bh.crc,
                    });
                    let e = Entry { term, index, kind: *kind, data: Bytes::copy_from_slice(data) };
                    self.out.cache_bytes += e.size_bytes();
                    self.out.cache.push_back(e);
                    while self.out.cache_bytes > self.cache_budget_bytes {
                        let c = self.out.cache.pop_front().expect("over budget means non-empty");
                        self.out.cache_bytes -= c.size_bytes();
                    }
                }
                // Row R3.
                RecordView::HardState(hs) => self.out.hard_state = *hs,
                // Row R4.
                RecordView::SnapshotMarker(m, point) => {
                    if m.index > self.last() {
                        return Err(corruption(
                            &self.dir,
                            seq,
                            *at as u64,
                            format!("snapshot marker at {} is beyond the last index {}", m.index, self.last()),
                        ));
                    }
                    if point.0 >= self.base {
                        self.compact_to(point.0);
                        self.anchored = true;
                    }
                    if m.index >= self.out.snapshot.index {
                        self.out.snapshot = m.clone();
                        self.out.compacted = *point;
                    }
                }
                // Row R5.
                RecordView::SnapshotInstall(m) => {
                    self.out.locs.clear();
                    self.out.cache.clear();
                    self.out.cache_bytes = 0;
                    self.base = m.index;
                    self.anchored = true;
                    self.out.snapshot = m.clone();
                    self.out.compacted = (m.index, m.term);
                    self.out.hard_state.commit = self.out.hard_state.commit.max(m.index);
                }
            }
        }
        Ok(())
    }

    fn compact_to(&mut self, index: Index) {
        let drop = (index - self.base) as usize;
        self.out.locs.drain(..drop);
        while self.out.cache.len() > self.out.locs.len() {
            let c = self.out.cache.pop_front().expect("non-empty");
            self.out.cache_bytes -= c.size_bytes();
        }
        self.base = index;
    }

    /// The recovered state (row F1 checked here).
    pub fn finish(mut self) -> Result<Recovered, WalError> {
        if self.base != self.out.compacted.0 {
            let seq = self.first_segment.expect("a base above 0 comes from a segment header");
            return Err(corruption(
                &self.dir,
                seq,
                0,
                format!(
                    "the log starts after index {} but the latest snapshot (at {}) keeps it from {}: earlier segments are missing",
                    self.base,
                    self.out.snapshot.index,
                    self.out.compacted.0 + 1
                ),
            ));
        }
        self.out.next_batch_seq = self.expected.unwrap_or(1);
        Ok(self.out)
    }
}

/// Whether the segment after the last active one ([`Plan::torn_activation`]; its
/// header all zero or damaged, [`Plan::torn_activation_zeroed`]) must be read whole for
/// row H5x, judged from its first data block.
/// A damaged header: always. A zeroed one (a spare, on every clean start): only when
/// the first data block holds a batch of this segment. A batch `>= e + 8` can be intact
/// only if the segment's first write was durable, and that write carries both the
/// header and the batch at the data offset; a spare — zero-filled, or recycled with
/// the batches of an older segment seq — holds none.
pub fn torn_activation_needs_scan(zeroed_header: bool, seq: u64, first_data_block: &[u8]) -> bool {
    !zeroed_header || BatchHeader::decode(first_data_block).is_some_and(|h| h.segment_seq == seq)
}

/// Looks past the end of the last segment's data (rows E3, H5x) and returns how far
/// batches of this segment reach there: those bytes must be zeroed before appending,
/// or a leftover unacknowledged batch could later line up as a valid continuation.
/// (Stale batches of an older life of a recycled file carry another segment seq and
/// can never be taken for this segment's, so they stay.)
fn lookahead(
    dir: &Path,
    seq: u64,
    data: &[u8],
    end: usize,
    expected: u64,
    damage: Option<&str>,
) -> Result<u64, WalError> {
    let mut zero_to = end as u64;
    if damage.is_some() {
        // The torn write itself: contiguous non-zero blocks from the end. Zeroing them
        // keeps the next recovery from reporting the same tear again after new data.
        let mut off = end;
        while off < data.len() {
            let block = &data[off..(off + BLOCK_BYTES).min(data.len())];
            let stale = BatchHeader::decode(block).is_some_and(|h| h.segment_seq != seq);
            if stale || block.iter().all(|&b| b == 0) {
                break;
            }
            off += BLOCK_BYTES;
        }
        zero_to = (off.min(data.len())) as u64;
    }
    let mut off = end;
    while off < data.len() {
        if let Some(h) = BatchHeader::decode(&data[off..])
            && h.segment_seq == seq
        {
            zero_to = zero_to.max((off + h.padded_bytes()).min(data.len()) as u64);
            // A CRC-valid but malformed record here is stale or damaged data past the
            // end, not a reason to fail on its own.
            if let Ok(BatchParse::Intact { header, .. }) = parse_batch(dir, seq, data, off)
                && header.batch_seq >= expected + APPENDS_IN_FLIGHT_MAX
            {
                let why = damage.unwrap_or("zeroed batch");
                return Err(corruption(
                    dir,
                    seq,
                    end as u64,
                    format!(
                        "{why} at batch {expected}, yet batch {} at offset {off} is intact: \
                     it was written only after batch {expected} was durable",
                        header.batch_seq
                    ),
                ));
            }
        }
        off += BLOCK_BYTES;
    }
    Ok(zero_to)
}

/// Recovers from in-memory files (name, content): the whole procedure of
/// `Wal::open` without the I/O. Tests and tools use it on crash images.
pub fn recover_files(
    dir: &Path,
    identity: Identity,
    cache_budget_bytes: u64,
    files: &[(String, Vec<u8>)],
) -> Result<Recovered, WalError> {
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let listing = classify_listing(dir, &names)?;
    let content = |seq: u64| -> &[u8] {
        let name = format::segment_name(seq);
        &files.iter().find(|(n, _)| *n == name).expect("listed").1
    };
    let headers: Vec<(u64, HeaderRead)> =
        listing.segments.iter().map(|&s| (s, SegmentHeader::read(content(s)))).collect();
    let plan = plan(dir, identity, &headers)?;
    let mut replay = Replay::new(dir, cache_budget_bytes);
    for (i, h) in plan.active.iter().enumerate() {
        replay.segment(h, content(h.segment_seq), i + 1 == plan.active.len())?;
    }
    if let Some(seq) = plan.torn_activation {
        let data = content(seq);
        if replay.torn_activation_needs_data(&plan, &data[(SEGMENT_DATA_OFFSET_BYTES as usize).min(data.len())..]) {
            replay.torn_activation(seq, data)?;
        }
    }
    replay.spares(&plan.spares);
    replay.spares(&plan.released);
    replay.finish()
}

/// Term of `index` in a recovered log, if present (tests).
pub fn recovered_term(r: &Recovered, index: Index) -> Option<Term> {
    if index == r.compacted.0 {
        return Some(r.compacted.1);
    }
    r.locs.get(index.checked_sub(r.compacted.0 + 1)? as usize).map(|l| l.term)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Identity = Identity { cluster_id: 1, shard_id: 2, node_id: 3 };

    fn valid(seq: u64) -> HeaderRead {
        HeaderRead::Valid(SegmentHeader {
            identity: ID,
            segment_seq: seq,
            first_index: 1,
            first_batch_seq: 1,
            recycled: false,
        })
    }

    fn dir() -> PathBuf {
        PathBuf::from("/w")
    }

    #[test]
    fn plan_sorts_segments_into_active_spare_torn_and_released() {
        let p = plan(
            &dir(),
            ID,
            &[(1, HeaderRead::Spare), (2, valid(2)), (3, valid(3)), (4, HeaderRead::Invalid), (5, HeaderRead::Spare)],
        )
        .unwrap();
        assert_eq!(p.released, vec![1], "H8");
        assert_eq!(p.active.iter().map(|h| h.segment_seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!((p.torn_activation, p.torn_activation_zeroed), (Some(4), false), "H5");
        assert_eq!(p.spares, vec![5], "H4");
    }

    #[test]
    fn plan_refuses_holes_and_damage_between_active_segments() {
        let e = plan(&dir(), ID, &[(2, valid(2)), (3, HeaderRead::Spare), (4, valid(4))]).unwrap_err();
        assert!(matches!(e, WalError::Corruption { offset: 0, .. }), "H6: {e}");
        let e = plan(&dir(), ID, &[(2, valid(2)), (4, valid(4))]).unwrap_err();
        assert!(e.to_string().contains("00000000000000000003.wal is missing"), "H7: {e}");
        let e = plan(&dir(), ID, &[(2, valid(2)), (3, HeaderRead::Spare), (4, HeaderRead::Invalid)]).unwrap_err();
        assert!(matches!(e, WalError::Corruption { .. }), "a damaged header after a spare: {e}");
    }

    #[test]
    fn plan_reports_operator_errors() {
        let e = plan(&dir(), ID, &[(1, HeaderRead::UnknownVersion(9))]).unwrap_err();
        assert!(matches!(e, WalError::BadDataDir { .. }) && e.to_string().contains("version 9"));
        let other = Identity { node_id: 4, ..ID };
        let e = plan(&dir(), other, &[(1, valid(1))]).unwrap_err();
        assert!(e.to_string().contains("node 3") && e.to_string().contains("node 4"), "{e}");
    }

    #[test]
    fn a_spare_is_read_whole_only_when_it_starts_with_a_batch_of_its_own() {
        let batch = |segment_seq: u64| {
            let hs = HardState { term: 1, vote: 1, commit: 0 };
            let recs = [format::RecordRef::HardState(hs)];
            let mut buf = vec![0u8; format::batch_padded_bytes(&recs)];
            format::encode_batch(&mut buf, 5, segment_seq, &recs, &mut Vec::new());
            buf
        };
        let zero = vec![0u8; BLOCK_BYTES];
        assert!(!torn_activation_needs_scan(true, 7, &zero), "a zero-filled spare");
        assert!(!torn_activation_needs_scan(true, 7, &batch(3)), "a recycled spare");
        assert!(torn_activation_needs_scan(true, 7, &batch(7)), "a zeroed header on written data");
        assert!(torn_activation_needs_scan(false, 7, &zero), "a damaged header");
    }

    #[test]
    fn empty_directory_recovers_to_an_empty_log() {
        let r = recover_files(&dir(), ID, 0, &[]).unwrap();
        assert_eq!((r.last_index(), r.next_batch_seq, r.tail), (0, 1, None));
    }
}
