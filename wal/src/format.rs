//! The on-disk encoding of WAL segments: segment header, batch header and records.
//!
//! A shard's WAL directory holds segment files named `{seq:020}.wal`. Every write the
//! WAL issues starts and ends on a [`BLOCK_BYTES`] boundary (O_DIRECT alignment, and the
//! reason a block holding acknowledged records is never written again).
//!
//! ```text
//! segment file
//! +-------------------------+ offset 0
//! | segment header (68 B)   |  zero-filled to BLOCK_BYTES; all-zero = spare segment
//! +-------------------------+ offset BLOCK_BYTES
//! | batch 1 | pad to block  |  one batch = one append = one write
//! | batch 2 | pad to block  |
//! | ...                     |
//! | zeroes (pre-zeroed) or stale bytes of a recycled segment (older segment seq)
//! +-------------------------+ segment_bytes
//!
//! segment header, little-endian
//!   0  [u8; 8]  magic "SKIFFWAL"
//!   8  u32      format version (FORMAT_VERSION = 1); checked before the CRC so that a
//!               newer layout is reported as "unknown version", not as corruption
//!  12  u32      flags: bit 0 RECYCLED (the file held an older segment, whose bytes
//!               may follow this one's data); other bits 0, ignored when read
//!  16  u64      cluster id        \
//!  24  u64      shard id           } identity: a directory of another shard is refused
//!  32  u64      node id           /
//!  40  u64      segment seq (equals the number in the file name)
//!  48  u64      first index: the index the first entry written here takes (or lower,
//!               when the first batch truncates the log)
//!  56  u64      first batch seq: the seq of the first batch in this segment; the
//!               previous segment must end with batch seq `first batch seq - 1`
//!  64  u32      CRC32C of bytes 0..64
//!
//! batch header, at a block-aligned offset, little-endian
//!   0  [u8; 4]  magic "SKWB"
//!   4  u32      CRC32C of bytes 8..32 (the header is trusted before its body is read)
//!   8  u64      batch seq: +1 per batch across all segments, never reused
//!  16  u64      segment seq (a stale batch of a recycled segment does not match)
//!  24  u32      body length in bytes (the records; padding excluded)
//!  28  u32      record count
//!  32  records, back to back; then zero padding to the next block boundary
//!
//! record, little-endian
//!   0  u32      CRC32C of bytes 4..28+len, seeded with the batch header's CRC (a stale
//!               record that happens to sit at the same offset fails this check)
//!   4  u8       record type: 1 entry, 2 hard state, 3 snapshot marker, 4 snapshot install,
//!               5 snapshot marker keeping a tail
//!   5  u8       entry kind (EntryKind as u8) for entries, 0 otherwise
//!   6  u16      reserved, 0
//!   8  u32      payload length
//!  12  u64      term  (entry term; snapshot term; 0 for hard state)
//!  20  u64      index (entry index; snapshot index; 0 for hard state)
//!  28  payload
//!        entry:             the entry data
//!        hard state:        term u64, vote u64, commit u64
//!        snapshot marker /
//!        snapshot install:  election_timeout_ticks u32, voter count u32,
//!                           learner count u32, voters u64 x n, learners u64 x m
//!        snapshot marker
//!        keeping a tail:    compaction index u64, compaction term u64 (the log is
//!                           released up to this index, at or below the snapshot's),
//!                           then a snapshot marker's payload
//! ```
//!
//! A snapshot marker (3) releases the log up to the snapshot's index; type 5 keeps
//! the entries after its compaction index, so that followers slightly behind catch up
//! from the log. Type 5 is written only when the compaction index is below the
//! snapshot's, so a WAL that keeps no tail is written exactly as before.

use skiff_engine::{ConfState, Entry, EntryKind, HardState, Index, SnapshotMeta, Term};

/// Unit of every write and of every file offset the WAL writes at: O_DIRECT needs the
/// buffer, offset and length aligned to the logical block size (512 here; 4 KiB covers
/// every device in use), and padding each append to it is what keeps acknowledged
/// blocks from ever being rewritten.
pub const BLOCK_BYTES: usize = 4096;
/// Bytes of the segment header that carry information; the rest of block 0 is zero.
pub const SEGMENT_HEADER_BYTES: usize = 68;
/// Where the first batch of a segment starts.
pub const SEGMENT_DATA_OFFSET_BYTES: u64 = BLOCK_BYTES as u64;
/// Fixed part of a batch.
pub const BATCH_HEADER_BYTES: usize = 32;
/// Fixed part of a record.
pub const RECORD_HEADER_BYTES: usize = 28;
/// The format this code writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Segment file magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SKIFFWAL";
/// Batch header magic.
pub const BATCH_MAGIC: [u8; 4] = *b"SKWB";

/// Largest encoded batch (header, records, padding). A Ready carries at most a few
/// 1 MiB appends (etcd maxSizePerMsg) plus the leader's own proposals; 8 MiB leaves room
/// for that while bounding the memory of [`APPENDS_IN_FLIGHT_MAX`] buffers to 64 MiB.
pub const BATCH_BYTES_MAX: usize = 8 << 20;

/// Most batches that may be submitted but not yet covered by a completed fdatasync.
///
/// Part of the format's contract, not just a tuning knob: recovery relies on it. A
/// batch `j` is only written after every batch `<= j - APPENDS_IN_FLIGHT_MAX` is
/// durable, so a damaged batch `e` followed by an intact batch `j >= e +
/// APPENDS_IN_FLIGHT_MAX` proves `e` was durable: that is corruption, not a torn tail.
/// Eight lets a burst of small Readys queue behind one fsync without stalling the
/// Ready loop, and is far more than the two (one writing, one syncing) that pipelining
/// needs.
pub const APPENDS_IN_FLIGHT_MAX: u64 = 8;

/// Default segment size: large enough that rotation (a pipeline drain, about once per
/// 64 MiB) is rare, small enough that compaction releases space in useful steps and
/// pre-zeroing a spare takes a fraction of a second.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest segment accepted (tests use small segments to exercise rotation).
pub const SEGMENT_BYTES_MIN: u64 = 16 * BLOCK_BYTES as u64;
/// Largest segment: record offsets inside a segment are kept in a `u32` in the index.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;

/// Record types.
pub const RECORD_ENTRY: u8 = 1;
pub const RECORD_HARD_STATE: u8 = 2;
pub const RECORD_SNAPSHOT_MARKER: u8 = 3;
pub const RECORD_SNAPSHOT_INSTALL: u8 = 4;
pub const RECORD_SNAPSHOT_MARKER_TAIL: u8 = 5;
/// The compaction point that prefixes a type-5 payload.
const COMPACTION_POINT_BYTES: usize = 16;

const HARD_STATE_PAYLOAD_BYTES: usize = 24;
const SNAPSHOT_FIXED_PAYLOAD_BYTES: usize = 12;

const _: () = assert!(BLOCK_BYTES.is_power_of_two() && BLOCK_BYTES.is_multiple_of(512));
const _: () = assert!(SEGMENT_HEADER_BYTES <= BLOCK_BYTES);
const _: () = assert!(BATCH_BYTES_MAX.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(BLOCK_BYTES as u64));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(BLOCK_BYTES as u64));
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_DATA_OFFSET_BYTES + BATCH_BYTES_MAX as u64);
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64 + 1);
const _: () = assert!(APPENDS_IN_FLIGHT_MAX >= 2, "pipelining needs one writing, one syncing");

/// Rounds `n` up to a whole number of blocks.
pub const fn round_up_block(n: usize) -> usize {
    n.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Who a WAL directory belongs to. Every segment header carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster_id: u64,
    pub shard_id: u64,
    pub node_id: u64,
}

/// Decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub identity: Identity,
    pub segment_seq: u64,
    pub first_index: Index,
    pub first_batch_seq: u64,
    /// The file was recycled from an older segment: blocks after this segment's data
    /// may hold that segment's bytes, which are neither this segment's nor damage.
    pub recycled: bool,
}

/// Segment header flag: [`SegmentHeader::recycled`].
pub const SEGMENT_FLAG_RECYCLED: u32 = 1;
/// Offset of the flags word in the segment header.
pub const SEGMENT_FLAGS_OFFSET: usize = 12;

/// What block 0 of a segment file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRead {
    /// All zero: a pre-created spare that was never activated.
    Spare,
    /// A valid header.
    Valid(SegmentHeader),
    /// The magic matches but the version is one this code does not know.
    UnknownVersion(u32),
    /// Neither zero nor valid: a torn activation, or damage.
    Invalid,
}

impl SegmentHeader {
    /// Writes the header into the start of `block` (which the caller has zeroed).
    ///
    /// # Panics
    /// If `block` is shorter than [`SEGMENT_HEADER_BYTES`].
    pub fn encode(&self, block: &mut [u8]) {
        let b = &mut block[..SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.recycled { SEGMENT_FLAG_RECYCLED } else { 0 };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.identity.cluster_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.identity.shard_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.identity.node_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.segment_seq.to_le_bytes());
        b[48..56].copy_from_slice(&self.first_index.to_le_bytes());
        b[56..64].copy_from_slice(&self.first_batch_seq.to_le_bytes());
        Self::seal(b);
    }

    /// Marks an encoded header (in `block`) as [`SegmentHeader::recycled`], for a
    /// header encoded before the writer knew which spare it would go into.
    pub fn mark_recycled(block: &mut [u8]) {
        let at = SEGMENT_FLAGS_OFFSET;
        let flags = u32_at(block, at) | SEGMENT_FLAG_RECYCLED;
        block[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        Self::seal(block);
    }

    /// Writes the header checksum over bytes 0..64.
    fn seal(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[0..64]);
        b[64..68].copy_from_slice(&crc.to_le_bytes());
    }

    /// Classifies block 0 of a segment file. `block` may be short (a truncated file).
    pub fn read(block: &[u8]) -> HeaderRead {
        let head = &block[..block.len().min(BLOCK_BYTES)];
        if head.iter().all(|&b| b == 0) {
            return HeaderRead::Spare;
        }
        if head.len() < SEGMENT_HEADER_BYTES || head[0..8] != SEGMENT_MAGIC {
            return HeaderRead::Invalid;
        }
        // A newer version may lay the header out differently (its checksum elsewhere):
        // its segments must be refused as such, never taken for a torn write and
        // removed, so a version above this one is refused before the checksum is
        // looked at. Any other version must come with a valid checksum to be believed:
        // a torn first write can leave the magic with a zero version.
        let version = u32_at(head, 8);
        let intact = crc32c::crc32c(&head[0..64]) == u32_at(head, 64);
        if version > FORMAT_VERSION || (version != FORMAT_VERSION && intact) {
            return HeaderRead::UnknownVersion(version);
        }
        if !intact {
            return HeaderRead::Invalid;
        }
        HeaderRead::Valid(SegmentHeader {
            identity: Identity { cluster_id: u64_at(head, 16), shard_id: u64_at(head, 24), node_id: u64_at(head, 32) },
            segment_seq: u64_at(head, 40),
            first_index: u64_at(head, 48),
            first_batch_seq: u64_at(head, 56),
            recycled: u32_at(head, SEGMENT_FLAGS_OFFSET) & SEGMENT_FLAG_RECYCLED != 0,
        })
    }
}

/// Decoded batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch_seq: u64,
    pub segment_seq: u64,
    pub body_bytes: u32,
    pub record_count: u32,
    /// CRC of the header, the seed of every record CRC in the batch.
    pub crc: u32,
}

impl BatchHeader {
    /// Bytes the batch occupies on disk, padding included.
    pub fn padded_bytes(&self) -> usize {
        round_up_block(BATCH_HEADER_BYTES + self.body_bytes as usize)
    }

    /// Encodes the header into `out[..BATCH_HEADER_BYTES]` and returns its CRC.
    fn encode(out: &mut [u8], batch_seq: u64, segment_seq: u64, body_bytes: u32, record_count: u32) -> u32 {
        out[0..4].copy_from_slice(&BATCH_MAGIC);
        out[8..16].copy_from_slice(&batch_seq.to_le_bytes());
        out[16..24].copy_from_slice(&segment_seq.to_le_bytes());
        out[24..28].copy_from_slice(&body_bytes.to_le_bytes());
        out[28..32].copy_from_slice(&record_count.to_le_bytes());
        let crc = crc32c::crc32c(&out[8..32]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        crc
    }

    /// Decodes and checks a batch header; `None` when the bytes are not one (zeroes,
    /// garbage, a torn header).
    pub fn decode(b: &[u8]) -> Option<BatchHeader> {
        if b.len() < BATCH_HEADER_BYTES || b[0..4] != BATCH_MAGIC {
            return None;
        }
        let crc = u32_at(b, 4);
        if crc32c::crc32c(&b[8..32]) != crc {
            return None;
        }
        Some(BatchHeader {
            batch_seq: u64_at(b, 8),
            segment_seq: u64_at(b, 16),
            body_bytes: u32_at(b, 24),
            record_count: u32_at(b, 28),
            crc,
        })
    }
}

/// A record to encode.
#[derive(Clone, Copy, Debug)]
pub enum RecordRef<'a> {
    Entry(&'a Entry),
    HardState(HardState),
    /// A local snapshot, and the compaction point `(index, term)` up to which the log is
    /// released (the snapshot's own index and term when no tail is kept).
    SnapshotMarker(&'a SnapshotMeta, (Index, Term)),
    SnapshotInstall(&'a SnapshotMeta),
}

impl RecordRef<'_> {
    fn payload_bytes(&self) -> usize {
        match self {
            RecordRef::Entry(e) => e.data.len(),
            RecordRef::HardState(_) => HARD_STATE_PAYLOAD_BYTES,
            RecordRef::SnapshotMarker(m, _) | RecordRef::SnapshotInstall(m) => {
                let tail = if self.keeps_tail() { COMPACTION_POINT_BYTES } else { 0 };
                tail + SNAPSHOT_FIXED_PAYLOAD_BYTES + 8 * (m.conf_state.voters.len() + m.conf_state.learners.len())
            }
        }
    }

    /// A snapshot marker whose compaction point is below the snapshot (type 5).
    fn keeps_tail(&self) -> bool {
        matches!(self, RecordRef::SnapshotMarker(m, (index, _)) if *index != m.index)
    }

    /// Encoded size, header included.
    pub fn encoded_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_bytes()
    }
}

/// Where an encoded entry record landed inside its batch buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedEntry {
    pub index: Index,
    /// Offset of the record from the start of the batch.
    pub offset_in_batch: u32,
    pub record_bytes: u32,
}

/// Size of the batch holding `records`, padding included.
pub fn batch_padded_bytes(records: &[RecordRef<'_>]) -> usize {
    round_up_block(BATCH_HEADER_BYTES + records.iter().map(RecordRef::encoded_bytes).sum::<usize>())
}

/// Encodes a batch into `out` (exactly [`batch_padded_bytes`] long, padding zeroed) and
/// returns the header CRC (the records' seed) and where each entry record landed.
///
/// # Panics
/// If `out` has the wrong length, or a record or the batch exceeds the `u32` length
/// fields (the caller bounds batches by [`BATCH_BYTES_MAX`]).
pub fn encode_batch(
    out: &mut [u8],
    batch_seq: u64,
    segment_seq: u64,
    records: &[RecordRef<'_>],
    entries_out: &mut Vec<EncodedEntry>,
) -> u32 {
    let body: usize = records.iter().map(RecordRef::encoded_bytes).sum();
    assert_eq!(out.len(), round_up_block(BATCH_HEADER_BYTES + body), "batch buffer length");
    let body_bytes = u32::try_from(body).expect("batch body fits u32");
    let count = u32::try_from(records.len()).expect("record count fits u32");
    let seed = BatchHeader::encode(out, batch_seq, segment_seq, body_bytes, count);
    let mut at = BATCH_HEADER_BYTES;
    // Each record's CRC covers bytes 4.. of it, seeded with the header's. Short
    // finished records wait here to be checksummed three at a time, long ones are
    // checksummed at once by folding (`crc.rs`).
    let mut unsummed = [(0usize, 0usize); 3];
    let mut n_unsummed = 0;
    for r in records {
        let len = r.encoded_bytes();
        let rec = &mut out[at..at + len];
        let (rtype, kind, term, index) = match r {
            RecordRef::Entry(e) => (RECORD_ENTRY, e.kind as u8, e.term, e.index),
            RecordRef::HardState(_) => (RECORD_HARD_STATE, 0, 0, 0),
            RecordRef::SnapshotMarker(m, _) if r.keeps_tail() => (RECORD_SNAPSHOT_MARKER_TAIL, 0, m.term, m.index),
            RecordRef::SnapshotMarker(m, _) => (RECORD_SNAPSHOT_MARKER, 0, m.term, m.index),
            RecordRef::SnapshotInstall(m) => (RECORD_SNAPSHOT_INSTALL, 0, m.term, m.index),
        };
        rec[4] = rtype;
        rec[5] = kind;
        rec[6..8].copy_from_slice(&0u16.to_le_bytes());
        let payload_len = u32::try_from(len - RECORD_HEADER_BYTES).expect("payload fits u32");
        rec[8..12].copy_from_slice(&payload_len.to_le_bytes());
        rec[12..20].copy_from_slice(&term.to_le_bytes());
        rec[20..28].copy_from_slice(&index.to_le_bytes());
        let mut payload = &mut rec[RECORD_HEADER_BYTES..];
        if let RecordRef::SnapshotMarker(_, (index, term)) = r
            && r.keeps_tail()
        {
            payload[0..8].copy_from_slice(&index.to_le_bytes());
            payload[8..16].copy_from_slice(&term.to_le_bytes());
            payload = &mut payload[COMPACTION_POINT_BYTES..];
        }
        match r {
            RecordRef::Entry(e) => {
                payload.copy_from_slice(&e.data);
                entries_out.push(EncodedEntry { index: e.index, offset_in_batch: at as u32, record_bytes: len as u32 });
            }
            RecordRef::HardState(hs) => {
                payload[0..8].copy_from_slice(&hs.term.to_le_bytes());
                payload[8..16].copy_from_slice(&hs.vote.to_le_bytes());
                payload[16..24].copy_from_slice(&hs.commit.to_le_bytes());
            }
            RecordRef::SnapshotMarker(m, _) | RecordRef::SnapshotInstall(m) => {
                let cs = &m.conf_state;
                payload[0..4].copy_from_slice(&m.election_timeout_ticks.to_le_bytes());
                payload[4..8].copy_from_slice(&(cs.voters.len() as u32).to_le_bytes());
                payload[8..12].copy_from_slice(&(cs.learners.len() as u32).to_le_bytes());
                let mut p = SNAPSHOT_FIXED_PAYLOAD_BYTES;
                for id in cs.voters.iter().chain(cs.learners.iter()) {
                    payload[p..p + 8].copy_from_slice(&id.to_le_bytes());
                    p += 8;
                }
            }
        }
        if len - 4 >= crate::crc::FOLD_BYTES_MIN {
            let crc = crate::crc::crc32c_append(seed, &out[at + 4..at + len]);
            out[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        } else {
            unsummed[n_unsummed] = (at, at + len);
            n_unsummed += 1;
            if n_unsummed == 3 {
                let crcs = crate::crc::crc32c_append_x3(seed, unsummed.map(|(start, end)| &out[start + 4..end]));
                for ((start, _), crc) in unsummed.into_iter().zip(crcs) {
                    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
                }
                n_unsummed = 0;
            }
        }
        at += len;
    }
    for &(start, end) in &unsummed[..n_unsummed] {
        let crc = crate::crc::crc32c_append(seed, &out[start + 4..end]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    }
    out[at..].fill(0);
    seed
}

/// A decoded record, borrowing its payload from the batch bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordView<'a> {
    Entry {
        term: Term,
        index: Index,
        kind: EntryKind,
        data: &'a [u8],
    },
    HardState(HardState),
    /// A local snapshot and the compaction point `(index, term)` (types 3 and 5).
    SnapshotMarker(SnapshotMeta, (Index, Term)),
    SnapshotInstall(SnapshotMeta),
}

/// Why a record failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFault {
    /// Header or payload runs past the bytes available.
    Truncated,
    /// CRC mismatch.
    Checksum,
    /// CRC matches but the content is not valid in this format version.
    Malformed(&'static str),
}

/// Decodes one record at the start of `b`, checking its CRC against `seed`. Returns the
/// record and its encoded length.
pub fn decode_record(b: &[u8], seed: u32) -> Result<(RecordView<'_>, usize), RecordFault> {
    if b.len() < RECORD_HEADER_BYTES {
        return Err(RecordFault::Truncated);
    }
    let payload_len = u32_at(b, 8) as usize;
    let len = RECORD_HEADER_BYTES.checked_add(payload_len).ok_or(RecordFault::Truncated)?;
    if b.len() < len {
        return Err(RecordFault::Truncated);
    }
    if crate::crc::crc32c_append(seed, &b[4..len]) != u32_at(b, 0) {
        return Err(RecordFault::Checksum);
    }
    let term = u64_at(b, 12);
    let index = u64_at(b, 20);
    let payload = &b[RECORD_HEADER_BYTES..len];
    let view = match b[4] {
        RECORD_ENTRY => RecordView::Entry {
            term,
            index,
            kind: EntryKind::from_u8(b[5]).ok_or(RecordFault::Malformed("unknown entry kind"))?,
            data: payload,
        },
        RECORD_HARD_STATE => {
            if payload.len() != HARD_STATE_PAYLOAD_BYTES {
                return Err(RecordFault::Malformed("hard state payload length"));
            }
            RecordView::HardState(HardState {
                term: u64_at(payload, 0),
                vote: u64_at(payload, 8),
                commit: u64_at(payload, 16),
            })
        }
        RECORD_SNAPSHOT_MARKER => {
            RecordView::SnapshotMarker(decode_snapshot_meta(payload, term, index)?, (index, term))
        }
        RECORD_SNAPSHOT_INSTALL => RecordView::SnapshotInstall(decode_snapshot_meta(payload, term, index)?),
        RECORD_SNAPSHOT_MARKER_TAIL => {
            if payload.len() < COMPACTION_POINT_BYTES {
                return Err(RecordFault::Malformed("snapshot payload too short"));
            }
            let point = (u64_at(payload, 0), u64_at(payload, 8));
            if point.0 >= index || point.1 > term {
                return Err(RecordFault::Malformed("compaction point not below the snapshot"));
            }
            RecordView::SnapshotMarker(decode_snapshot_meta(&payload[COMPACTION_POINT_BYTES..], term, index)?, point)
        }
        _ => return Err(RecordFault::Malformed("unknown record type")),
    };
    Ok((view, len))
}

fn decode_snapshot_meta(p: &[u8], term: Term, index: Index) -> Result<SnapshotMeta, RecordFault> {
    if p.len() < SNAPSHOT_FIXED_PAYLOAD_BYTES {
        return Err(RecordFault::Malformed("snapshot payload too short"));
    }
    let voters = u32_at(p, 4) as usize;
    let learners = u32_at(p, 8) as usize;
    if p.len() != SNAPSHOT_FIXED_PAYLOAD_BYTES + 8 * (voters + learners) {
        return Err(RecordFault::Malformed("snapshot payload length"));
    }
    let ids: Vec<u64> = (0..voters + learners).map(|i| u64_at(p, SNAPSHOT_FIXED_PAYLOAD_BYTES + 8 * i)).collect();
    Ok(SnapshotMeta {
        index,
        term,
        conf_state: ConfState { voters: ids[..voters].to_vec(), learners: ids[voters..].to_vec() },
        election_timeout_ticks: u32_at(p, 0),
    })
}

/// Parses a segment file name `{seq:020}.wal`.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses the name of a segment being pre-created, `{seq:020}.wal.tmp`.
pub fn parse_temp_name(name: &str) -> Option<u64> {
    parse_segment_name(name.strip_suffix(".tmp")?)
}

/// The file name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The file name a segment has while it is being pre-created.
pub fn temp_name(seq: u64) -> String {
    format!("{seq:020}.wal.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(index: Index, term: Term, data: &'static [u8]) -> Entry {
        Entry { term, index, kind: EntryKind::ConfChange, data: Bytes::from_static(data) }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            identity: Identity { cluster_id: 7, shard_id: 3, node_id: 2 },
            segment_seq: 9,
            first_index: 100,
            first_batch_seq: 41,
            recycled: false,
        };
        let mut block = vec![0u8; BLOCK_BYTES];
        assert_eq!(SegmentHeader::read(&block), HeaderRead::Spare);
        h.encode(&mut block);
        assert_eq!(SegmentHeader::read(&block), HeaderRead::Valid(h));
        let mut marked = block.clone();
        SegmentHeader::mark_recycled(&mut marked);
        assert_eq!(SegmentHeader::read(&marked), HeaderRead::Valid(SegmentHeader { recycled: true, ..h }));
        let mut encoded = vec![0u8; BLOCK_BYTES];
        SegmentHeader { recycled: true, ..h }.encode(&mut encoded);
        assert_eq!(encoded, marked, "marking an encoded header equals encoding it recycled");
        for at in 0..SEGMENT_HEADER_BYTES {
            let mut bad = block.clone();
            bad[at] ^= 0x40;
            let read = SegmentHeader::read(&bad);
            if (8..12).contains(&at) && u32_at(&bad, 8) > FORMAT_VERSION {
                // A version above this one is refused as unknown: never removed.
                assert!(matches!(read, HeaderRead::UnknownVersion(_)), "flip at {at}: {read:?}");
            } else {
                assert!(matches!(read, HeaderRead::Invalid), "flip at {at} accepted");
            }
        }
        let mut newer = block.clone();
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&newer[0..64]);
        newer[64..68].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::read(&newer), HeaderRead::UnknownVersion(2));
        // A newer version whose header is laid out differently (its checksum is not
        // where this version keeps it) is still an unknown version, not damage.
        newer[64..68].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(SegmentHeader::read(&newer), HeaderRead::UnknownVersion(2));
        // A first write torn right after the magic leaves version 0 and no checksum:
        // damage (a torn activation), not a version to refuse.
        let mut torn = vec![0u8; BLOCK_BYTES];
        torn[..8].copy_from_slice(&block[..8]);
        assert_eq!(SegmentHeader::read(&torn), HeaderRead::Invalid);
    }

    #[test]
    fn batch_round_trips_every_record_type() {
        let e1 = entry(5, 2, b"hello");
        let e2 = entry(6, 3, b"");
        let meta = SnapshotMeta {
            index: 4,
            term: 2,
            conf_state: ConfState { voters: vec![1, 2, 3], learners: vec![9] },
            election_timeout_ticks: 17,
        };
        let hs = HardState { term: 3, vote: 2, commit: 5 };
        let records = [
            RecordRef::SnapshotInstall(&meta),
            RecordRef::Entry(&e1),
            RecordRef::Entry(&e2),
            RecordRef::HardState(hs),
            RecordRef::SnapshotMarker(&meta, (4, 2)),
            RecordRef::SnapshotMarker(&meta, (1, 1)),
        ];
        let mut buf = vec![0xAAu8; batch_padded_bytes(&records)];
        assert_eq!(buf.len(), BLOCK_BYTES);
        let mut placed = Vec::new();
        let seed = encode_batch(&mut buf, 12, 4, &records, &mut placed);
        let h = BatchHeader::decode(&buf).expect("header");
        assert_eq!((h.batch_seq, h.segment_seq, h.record_count, h.crc), (12, 4, 6, seed));
        assert_eq!(h.padded_bytes(), buf.len());
        let mut at = BATCH_HEADER_BYTES;
        let mut views = Vec::new();
        for _ in 0..h.record_count {
            let (v, len) = decode_record(&buf[at..], seed).expect("record");
            views.push(v);
            at += len;
        }
        assert_eq!(at, BATCH_HEADER_BYTES + h.body_bytes as usize);
        assert!(buf[at..].iter().all(|&b| b == 0), "padding is zeroed");
        assert_eq!(views[0], RecordView::SnapshotInstall(meta.clone()));
        assert_eq!(views[1], RecordView::Entry { term: 2, index: 5, kind: EntryKind::ConfChange, data: b"hello" });
        assert_eq!(views[3], RecordView::HardState(hs));
        assert_eq!(views[4], RecordView::SnapshotMarker(meta.clone(), (4, 2)));
        assert_eq!(views[5], RecordView::SnapshotMarker(meta.clone(), (1, 1)));
        // Without a tail the marker is type 3, as before type 5 existed; with one, 5.
        let type_at =
            |i: usize| buf[BATCH_HEADER_BYTES + records[..i].iter().map(|r| r.encoded_bytes()).sum::<usize>() + 4];
        assert_eq!((type_at(4), type_at(5)), (RECORD_SNAPSHOT_MARKER, RECORD_SNAPSHOT_MARKER_TAIL));
        assert_eq!(records[5].encoded_bytes(), records[4].encoded_bytes() + COMPACTION_POINT_BYTES);
        assert_eq!(placed.len(), 2);
        assert_eq!(placed[0].offset_in_batch as usize, BATCH_HEADER_BYTES + records[0].encoded_bytes());
        // A different seed (another batch's header) rejects every record.
        assert_eq!(decode_record(&buf[BATCH_HEADER_BYTES..], seed ^ 1).unwrap_err(), RecordFault::Checksum);
    }

    #[test]
    fn every_single_bit_flip_in_a_record_is_detected() {
        let e = entry(1, 1, b"payload bytes");
        let records = [RecordRef::Entry(&e)];
        let mut buf = vec![0u8; batch_padded_bytes(&records)];
        let seed = encode_batch(&mut buf, 1, 1, &records, &mut Vec::new());
        let len = records[0].encoded_bytes();
        for byte in BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + len {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let hdr_ok = BatchHeader::decode(&bad).is_some();
                let rec_ok = decode_record(&bad[BATCH_HEADER_BYTES..], seed).is_ok();
                assert!(hdr_ok && !rec_ok, "flip {byte}:{bit} undetected");
            }
        }
        for byte in 0..BATCH_HEADER_BYTES {
            let mut bad = buf.clone();
            bad[byte] ^= 0x10;
            assert!(BatchHeader::decode(&bad).is_none(), "header flip {byte} undetected");
        }
    }

    #[test]
    fn names_parse_strictly() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_temp_name(&temp_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
        assert_eq!(parse_segment_name(&temp_name(1)), None);
        assert_eq!(parse_segment_name("notes.txt"), None);
    }
}
