//! Frame bodies for Raft messages and application frames: encoding into a header-plus-
//! payloads gather list (entry payloads are never copied), and decoding that slices
//! payloads out of the received body (never copied either).
//!
//! All integers are little-endian. Every Raft body starts with the same 24 bytes:
//!
//! ```text
//! 0   u64 from    sender node id
//! 8   u64 to      recipient node id
//! 16  u64 term
//! ```
//!
//! followed by the variant's fields (the frame kind says which variant):
//!
//! ```text
//! Append (16)            u64 prev_index, u64 prev_term, u64 commit, u32 count,
//!                        count x entry record, then the payloads back to back
//! AppendResponse (17)    u64 index, u8 reject (0|1), u64 hint_index, u64 hint_term
//! Heartbeat (18)         u64 commit, u64 ctx
//! HeartbeatResponse (19) u64 ctx
//! Vote (20)              u8 flags (bit 0 pre, bit 1 transfer), u64 last_index, u64 last_term
//! VoteResponse (21)      u8 flags (bit 0 pre, bit 1 reject), u64 commit, u64 commit_term
//! Snapshot (22)          u64 index, u64 term, u32 election_timeout_ticks,
//!                        u32 n, n x u64 voter, u32 m, m x u64 learner, then data (rest)
//! TimeoutNow (23)        nothing
//! Propose (24)           u32 count, count x entry record, then the payloads
//! ReadIndex (25)         u64 ctx
//! ReadIndexResponse (26) u64 ctx, u64 index
//! TransferLeader (27)    u64 target
//!
//! entry record (21 bytes, `EntryRecord`): u64 term, u64 index, u8 kind (EntryKind),
//!                        u32 data_len
//! ```
//!
//! The entry records come before all payloads so that the sender's gather list is one
//! contiguous head (frame header + fixed fields + records) plus one slice per payload,
//! not two slices per entry. A body must be consumed exactly: trailing bytes, a payload
//! length that overruns the body, an unknown entry kind or a boolean other than 0/1 are
//! decode errors, and the connection is closed.
//!
//! Application frames (64): `u32 tag`, then opaque bytes (rest of the body).

use bytes::{BufMut, Bytes, BytesMut};
use core::mem::{offset_of, size_of};
use skiff_engine::{ConfState, Entry, EntryKind, Message, MessageBody, NodeId, Snapshot, SnapshotMeta};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::frame::{FRAME_HEADER_BYTES, FrameHeader, FrameKind};
use crate::recycling::RecyclingBuffer;

/// Bytes of the from/to/term prefix of every Raft body.
pub const MESSAGE_PREFIX_BYTES: usize = 24;
/// Bytes of one entry record in an Append or Propose body.
pub const ENTRY_RECORD_BYTES: usize = 21;

/// One entry's fixed fields in an Append or Propose body. The records form a table
/// written and read in place (zerocopy), ahead of the payloads.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EntryRecord {
    pub term: U64,
    pub index: U64,
    pub kind: u8,
    pub data_len: U32,
}

const _: () = assert!(size_of::<EntryRecord>() == ENTRY_RECORD_BYTES);
const _: () = assert!(offset_of!(EntryRecord, kind) == 16);
const _: () = assert!(offset_of!(EntryRecord, data_len) == 17);

/// Bytes an encoder allocates at a time for the heads of the frames it builds; heads are
/// carved out of it so a small message costs no allocation of its own. Large enough for
/// the head of a full 1 MiB batch of 100-byte entries (about 10,000 records).
pub const ENCODE_ARENA_BYTES: usize = 256 << 10;

const _: () = assert!(ENCODE_ARENA_BYTES >= FRAME_HEADER_BYTES + MESSAGE_PREFIX_BYTES + 64);

/// An opaque frame of the node's own, carried on the peer connection next to Raft
/// traffic: relayed client requests and replies, snapshot chunks. The transport neither
/// interprets `tag` nor `body`; the node assigns tags (see `docs/wire-format.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppFrame {
    pub tag: u32,
    pub body: Bytes,
}

/// The reference-counted buffers that complete a frame's body after its head, in
/// order. Entry payloads stay in the entries they came in: moving a message's `Vec`
/// here costs nothing per entry, where building a list of payloads would allocate and
/// touch every reference count.
#[derive(Clone, Debug, Default)]
pub enum Payloads {
    #[default]
    None,
    /// Snapshot data or an application frame's bytes.
    One(Bytes),
    /// The payloads of these entries (empty ones carry nothing).
    Entries(Vec<Entry>),
}

impl Payloads {
    /// The non-empty payloads, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> + '_ {
        let (one, entries): (Option<&Bytes>, &[Entry]) = match self {
            Payloads::None => (None, &[]),
            Payloads::One(b) => (Some(b), &[]),
            Payloads::Entries(e) => (None, e),
        };
        one.into_iter().chain(entries.iter().map(|e| &e.data)).filter(|b| !b.is_empty())
    }
}

/// A frame encoded for sending: `head` is the frame header followed by every fixed-size
/// field of the body; `payloads` are the reference-counted buffers that complete the
/// body, in order. Written with one gather (vectored) write; nothing is copied.
#[derive(Clone, Debug)]
pub struct OutFrame {
    pub head: Bytes,
    pub payloads: Payloads,
    /// Bytes on the wire: head plus payloads (counted once, at encoding).
    wire_bytes: usize,
}

impl OutFrame {
    /// A frame from its parts (tests and queue bookkeeping).
    pub fn new(head: Bytes, payloads: Payloads) -> OutFrame {
        let wire_bytes = head.len() + payloads.iter().map(Bytes::len).sum::<usize>();
        OutFrame { head, payloads, wire_bytes }
    }

    /// Bytes this frame occupies on the wire.
    pub fn wire_bytes(&self) -> usize {
        self.wire_bytes
    }

    /// The whole frame in one contiguous buffer (tests, fuzzing, handshakes).
    pub fn to_contiguous(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.wire_bytes);
        out.extend_from_slice(&self.head);
        for p in self.payloads.iter() {
            out.extend_from_slice(p);
        }
        out
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded body of {len} bytes exceeds the frame cap of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Why a frame body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body ends inside a field")]
    Truncated,
    #[error("{0} bytes left over after the last field")]
    TrailingBytes(usize),
    #[error("boolean field holds {0}")]
    BadBool(u8),
    #[error("flags byte {0:#04x} sets undefined bits")]
    BadFlags(u8),
    #[error("unknown entry kind {0}")]
    BadEntryKind(u8),
    #[error("{count} entries cannot fit in the body")]
    TooManyEntries { count: u64 },
    #[error("{count} node ids cannot fit in the body")]
    TooManyNodes { count: u64 },
    #[error("entry payloads declare more bytes than the body holds")]
    PayloadOverrun,
    #[error("frame kind {0:?} does not carry a Raft message")]
    NotAMessage(FrameKind),
}

/// The frame kind a message travels as.
pub fn frame_kind(body: &MessageBody) -> FrameKind {
    match body {
        MessageBody::Append { .. } => FrameKind::Append,
        MessageBody::AppendResponse { .. } => FrameKind::AppendResponse,
        MessageBody::Heartbeat { .. } => FrameKind::Heartbeat,
        MessageBody::HeartbeatResponse { .. } => FrameKind::HeartbeatResponse,
        MessageBody::Vote { .. } => FrameKind::Vote,
        MessageBody::VoteResponse { .. } => FrameKind::VoteResponse,
        MessageBody::Snapshot { .. } => FrameKind::Snapshot,
        MessageBody::TimeoutNow => FrameKind::TimeoutNow,
        MessageBody::Propose { .. } => FrameKind::Propose,
        MessageBody::ReadIndex { .. } => FrameKind::ReadIndex,
        MessageBody::ReadIndexResponse { .. } => FrameKind::ReadIndexResponse,
        MessageBody::TransferLeader { .. } => FrameKind::TransferLeader,
    }
}

/// Builds [`OutFrame`]s. Owns the arena the heads are carved from, so one encoder lives
/// per shard (it is not shared across threads).
#[derive(Debug)]
pub struct Encoder {
    arena: RecyclingBuffer,
    body_bytes_max: usize,
}

impl Encoder {
    /// An encoder refusing bodies over `body_bytes_max` (the peer's receive cap: a frame
    /// it would reject is not worth sending).
    pub fn new(body_bytes_max: usize) -> Encoder {
        Encoder { arena: RecyclingBuffer::new(ENCODE_ARENA_BYTES, FRAME_HEADER_BYTES), body_bytes_max }
    }

    /// Encodes a Raft message, sharing its payloads (reference counts go up).
    pub fn message(&mut self, msg: &Message) -> Result<OutFrame, EncodeError> {
        let head_body_bytes = MESSAGE_PREFIX_BYTES + fixed_body_bytes(&msg.body);
        self.build(frame_kind(&msg.body), head_body_bytes, |head| {
            put_message(head, msg);
            match &msg.body {
                MessageBody::Append { entries, .. } | MessageBody::Propose { entries } => {
                    Payloads::Entries(entries.clone())
                }
                MessageBody::Snapshot { snapshot } => Payloads::One(snapshot.data.clone()),
                _ => Payloads::None,
            }
        })
    }

    /// Encodes a Raft message the caller gives up, moving its entries (and so their
    /// payloads) into the frame: nothing is allocated or counted per entry.
    pub fn message_owned(&mut self, mut msg: Message) -> Result<OutFrame, EncodeError> {
        let head_body_bytes = MESSAGE_PREFIX_BYTES + fixed_body_bytes(&msg.body);
        self.build(frame_kind(&msg.body), head_body_bytes, |head| {
            put_message(head, &msg);
            match &mut msg.body {
                MessageBody::Append { entries, .. } | MessageBody::Propose { entries } => {
                    Payloads::Entries(std::mem::take(entries))
                }
                MessageBody::Snapshot { snapshot } => Payloads::One(std::mem::take(&mut snapshot.data)),
                _ => Payloads::None,
            }
        })
    }

    /// Encodes an application frame.
    pub fn app(&mut self, frame: &AppFrame) -> Result<OutFrame, EncodeError> {
        self.build(FrameKind::App, 4, |head| {
            head.put_u32_le(frame.tag);
            Payloads::One(frame.body.clone())
        })
    }

    /// Encodes a frame whose whole body is `body` (handshakes).
    pub fn raw(&mut self, kind: FrameKind, body: &[u8]) -> Result<OutFrame, EncodeError> {
        self.build(kind, body.len(), |head| {
            head.extend_from_slice(body);
            Payloads::None
        })
    }

    /// Writes the fixed part with `fill` after a header placeholder, then completes the
    /// header once the body length and checksum over head and payloads are known.
    fn build(
        &mut self,
        kind: FrameKind,
        head_body_bytes: usize,
        fill: impl FnOnce(&mut BytesMut) -> Payloads,
    ) -> Result<OutFrame, EncodeError> {
        let head_bytes = FRAME_HEADER_BYTES + head_body_bytes;
        // Heads are carved from the arena; once every head of an old arena has been
        // written and dropped, the arena is reused rather than a fresh one faulted in.
        self.arena.make_room(head_bytes);
        let arena = self.arena.bytes();
        debug_assert!(arena.is_empty());
        arena.put_bytes(0, FRAME_HEADER_BYTES);
        let payloads = fill(arena);
        debug_assert_eq!(arena.len(), head_bytes, "fixed_body_bytes is exact");
        let payload_bytes: usize = payloads.iter().map(Bytes::len).sum();
        let body_len = arena.len() - FRAME_HEADER_BYTES + payload_bytes;
        if body_len > self.body_bytes_max {
            arena.clear();
            return Err(EncodeError::TooLarge { len: body_len, max: self.body_bytes_max });
        }
        let crc = crc32c_gathered(&arena[FRAME_HEADER_BYTES..], payloads.iter());
        let header = FrameHeader::new(kind, body_len, crc);
        arena[..FRAME_HEADER_BYTES].copy_from_slice(header.as_bytes());
        Ok(OutFrame { head: arena.split().freeze(), payloads, wire_bytes: FRAME_HEADER_BYTES + body_len })
    }
}

/// Payloads shorter than this are checksummed from a staging buffer: each checksum
/// call pays a fixed cost (dispatch, alignment prologue and epilogue, folding the
/// state down) that dominates for ~100-byte entries, while a few KiB go through the
/// folding path at full speed.
const CRC_DIRECT_BYTES_MIN: usize = 512;
/// Size of that staging buffer (on the stack).
const CRC_STAGING_BYTES: usize = 4096;

const _: () = assert!(CRC_DIRECT_BYTES_MIN <= CRC_STAGING_BYTES);

/// CRC32C of `head` followed by every payload, as if they were one buffer (the value
/// [`crate::frame::body_crc32c`] gives for the concatenation).
pub fn crc32c_gathered<'a>(head: &[u8], payloads: impl IntoIterator<Item = &'a Bytes>) -> u32 {
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    crc.update(head);
    let mut stage = [0u8; CRC_STAGING_BYTES];
    let mut staged = 0;
    for p in payloads {
        if p.len() >= CRC_DIRECT_BYTES_MIN || staged + p.len() > CRC_STAGING_BYTES {
            crc.update(&stage[..staged]);
            staged = 0;
        }
        if p.len() >= CRC_DIRECT_BYTES_MIN {
            crc.update(p);
        } else {
            stage[staged..staged + p.len()].copy_from_slice(p);
            staged += p.len();
        }
    }
    crc.update(&stage[..staged]);
    crc.finalize() as u32
}

/// Bytes of the variant's fields that go in the head (everything but payloads).
fn fixed_body_bytes(body: &MessageBody) -> usize {
    match body {
        MessageBody::Append { entries, .. } => 8 * 3 + 4 + ENTRY_RECORD_BYTES * entries.len(),
        MessageBody::AppendResponse { .. } => 8 + 1 + 8 + 8,
        MessageBody::Heartbeat { .. } => 16,
        MessageBody::HeartbeatResponse { .. } => 8,
        MessageBody::Vote { .. } => 1 + 16,
        MessageBody::VoteResponse { .. } => 1 + 16,
        MessageBody::Snapshot { snapshot } => {
            let cs = &snapshot.meta.conf_state;
            8 + 8 + 4 + 4 + 8 * cs.voters.len() + 4 + 8 * cs.learners.len()
        }
        MessageBody::TimeoutNow => 0,
        MessageBody::Propose { entries } => 4 + ENTRY_RECORD_BYTES * entries.len(),
        MessageBody::ReadIndex { .. } => 8,
        MessageBody::ReadIndexResponse { .. } => 16,
        MessageBody::TransferLeader { .. } => 8,
    }
}

fn put_count(head: &mut BytesMut, n: usize) {
    // Lengths are bounded by the frame cap (< 4 GiB) long before they overflow a u32;
    // the caller rejects a body over the cap after encoding.
    head.put_u32_le(u32::try_from(n).expect("count exceeds u32"));
}

/// Entry records; the payloads travel separately, after all records.
fn put_entries(head: &mut BytesMut, entries: &[Entry]) {
    put_count(head, entries.len());
    let start = head.len();
    head.resize(start + ENTRY_RECORD_BYTES * entries.len(), 0);
    let records = <[EntryRecord]>::mut_from_bytes(&mut head[start..]).expect("the table is a whole number of records");
    for (r, e) in records.iter_mut().zip(entries) {
        *r = EntryRecord {
            term: U64::new(e.term),
            index: U64::new(e.index),
            kind: e.kind as u8,
            data_len: U32::new(u32::try_from(e.data.len()).expect("payload length exceeds u32")),
        };
    }
}

fn put_message(head: &mut BytesMut, msg: &Message) {
    head.put_u64_le(msg.from);
    head.put_u64_le(msg.to);
    head.put_u64_le(msg.term);
    put_body(head, &msg.body);
}

fn put_body(head: &mut BytesMut, body: &MessageBody) {
    match body {
        MessageBody::Append { prev_index, prev_term, commit, entries } => {
            head.put_u64_le(*prev_index);
            head.put_u64_le(*prev_term);
            head.put_u64_le(*commit);
            put_entries(head, entries);
        }
        MessageBody::AppendResponse { index, reject, hint_index, hint_term } => {
            head.put_u64_le(*index);
            head.put_u8(u8::from(*reject));
            head.put_u64_le(*hint_index);
            head.put_u64_le(*hint_term);
        }
        MessageBody::Heartbeat { commit, ctx } => {
            head.put_u64_le(*commit);
            head.put_u64_le(*ctx);
        }
        MessageBody::HeartbeatResponse { ctx } | MessageBody::ReadIndex { ctx } => {
            head.put_u64_le(*ctx);
        }
        MessageBody::Vote { pre, last_index, last_term, transfer } => {
            head.put_u8(u8::from(*pre) | (u8::from(*transfer) << 1));
            head.put_u64_le(*last_index);
            head.put_u64_le(*last_term);
        }
        MessageBody::VoteResponse { pre, reject, commit, commit_term } => {
            head.put_u8(u8::from(*pre) | (u8::from(*reject) << 1));
            head.put_u64_le(*commit);
            head.put_u64_le(*commit_term);
        }
        MessageBody::Snapshot { snapshot } => {
            let meta = &snapshot.meta;
            head.put_u64_le(meta.index);
            head.put_u64_le(meta.term);
            head.put_u32_le(meta.election_timeout_ticks);
            for ids in [&meta.conf_state.voters, &meta.conf_state.learners] {
                put_count(head, ids.len());
                for id in ids {
                    head.put_u64_le(*id);
                }
            }
        }
        MessageBody::TimeoutNow => {}
        MessageBody::Propose { entries } => put_entries(head, entries),
        MessageBody::ReadIndexResponse { ctx, index } => {
            head.put_u64_le(*ctx);
            head.put_u64_le(*index);
        }
        MessageBody::TransferLeader { target } => head.put_u64_le(*target),
    }
}

/// A cursor over a received body. Fixed fields are read from the slice; payloads are
/// cut from `body` with `Bytes::slice`, which shares the receive buffer.
struct Reader {
    body: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.body.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadBool(v)),
        }
    }

    /// Two booleans packed in bits 0 and 1; other bits must be clear.
    fn flags2(&mut self) -> Result<(bool, bool), DecodeError> {
        let v = self.u8()?;
        if v & !0b11 != 0 {
            return Err(DecodeError::BadFlags(v));
        }
        Ok((v & 1 != 0, v & 2 != 0))
    }

    fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    fn rest(&mut self) -> Bytes {
        let rest = self.body.slice(self.pos..);
        self.pos = self.body.len();
        rest
    }

    /// A count of `record_bytes`-sized records, checked against what the body can hold
    /// so a forged count never sizes an allocation.
    fn count(&mut self, record_bytes: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        if count > self.remaining() / record_bytes {
            return Err(if record_bytes == ENTRY_RECORD_BYTES {
                DecodeError::TooManyEntries { count: count as u64 }
            } else {
                DecodeError::TooManyNodes { count: count as u64 }
            });
        }
        Ok(count)
    }

    fn node_ids(&mut self) -> Result<Vec<NodeId>, DecodeError> {
        let n = self.count(8)?;
        (0..n).map(|_| self.u64()).collect()
    }

    fn entries(&mut self) -> Result<Vec<Entry>, DecodeError> {
        let count = self.count(ENTRY_RECORD_BYTES)?;
        // Records first, then payloads: read the table in place, then walk the payloads.
        let table_start = self.pos;
        self.take(count * ENTRY_RECORD_BYTES)?;
        let records = <[EntryRecord]>::ref_from_bytes(&self.body[table_start..self.pos])
            .expect("the table is a whole number of records");
        let mut data_pos = self.pos;
        let mut entries = Vec::with_capacity(count);
        for r in records {
            let kind = EntryKind::from_u8(r.kind).ok_or(DecodeError::BadEntryKind(r.kind))?;
            let end = data_pos
                .checked_add(r.data_len.get() as usize)
                .filter(|end| *end <= self.body.len())
                .ok_or(DecodeError::PayloadOverrun)?;
            let data = if end == data_pos { Bytes::new() } else { self.body.slice(data_pos..end) };
            entries.push(Entry { term: r.term.get(), index: r.index.get(), kind, data });
            data_pos = end;
        }
        self.pos = data_pos;
        Ok(entries)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Decodes the body of a Raft frame of `kind`. Entry payloads and snapshot data are
/// slices of `body`.
pub fn decode_message(kind: FrameKind, body: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { body, pos: 0 };
    let from = r.u64()?;
    let to = r.u64()?;
    let term = r.u64()?;
    let body = match kind {
        FrameKind::Append => {
            let prev_index = r.u64()?;
            let prev_term = r.u64()?;
            let commit = r.u64()?;
            MessageBody::Append { prev_index, prev_term, commit, entries: r.entries()? }
        }
        FrameKind::AppendResponse => MessageBody::AppendResponse {
            index: r.u64()?,
            reject: r.bool()?,
            hint_index: r.u64()?,
            hint_term: r.u64()?,
        },
        FrameKind::Heartbeat => MessageBody::Heartbeat { commit: r.u64()?, ctx: r.u64()? },
        FrameKind::HeartbeatResponse => MessageBody::HeartbeatResponse { ctx: r.u64()? },
        FrameKind::Vote => {
            let (pre, transfer) = r.flags2()?;
            MessageBody::Vote { pre, last_index: r.u64()?, last_term: r.u64()?, transfer }
        }
        FrameKind::VoteResponse => {
            let (pre, reject) = r.flags2()?;
            MessageBody::VoteResponse { pre, reject, commit: r.u64()?, commit_term: r.u64()? }
        }
        FrameKind::Snapshot => {
            let index = r.u64()?;
            let term = r.u64()?;
            let election_timeout_ticks = r.u32()?;
            let voters = r.node_ids()?;
            let learners = r.node_ids()?;
            MessageBody::Snapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term,
                        conf_state: ConfState { voters, learners },
                        election_timeout_ticks,
                    },
                    data: r.rest(),
                },
            }
        }
        FrameKind::TimeoutNow => MessageBody::TimeoutNow,
        FrameKind::Propose => MessageBody::Propose { entries: r.entries()? },
        FrameKind::ReadIndex => MessageBody::ReadIndex { ctx: r.u64()? },
        FrameKind::ReadIndexResponse => MessageBody::ReadIndexResponse { ctx: r.u64()?, index: r.u64()? },
        FrameKind::TransferLeader => MessageBody::TransferLeader { target: r.u64()? },
        FrameKind::Hello | FrameKind::HelloAccept | FrameKind::HelloRefuse | FrameKind::App => {
            return Err(DecodeError::NotAMessage(kind));
        }
    };
    r.finish()?;
    Ok(Message { from, to, term, body })
}

/// Decodes the body of an application frame.
pub fn decode_app(body: Bytes) -> Result<AppFrame, DecodeError> {
    let mut r = Reader { body, pos: 0 };
    let tag = r.u32()?;
    Ok(AppFrame { tag, body: r.rest() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    fn append(n: usize) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Append {
                prev_index: 4,
                prev_term: 5,
                commit: 6,
                entries: (0..n)
                    .map(|i| Entry {
                        term: 3,
                        index: 7 + i as u64,
                        kind: EntryKind::Normal,
                        data: Bytes::from(vec![i as u8; i]),
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn append_payloads_are_gathered_not_copied_and_sliced_on_receive() {
        let msg = append(4);
        let mut enc = Encoder::new(1 << 20);
        let out = enc.message(&msg).unwrap();
        // Entry 0 is empty and needs no slice; entries 1..4 are sent from their own
        // buffers.
        assert_eq!(out.payloads.iter().count(), 3);
        let MessageBody::Append { entries, .. } = &msg.body else { unreachable!() };
        for (p, e) in out.payloads.iter().zip(&entries[1..]) {
            assert_eq!(p.as_ptr(), e.data.as_ptr(), "payload is the entry's buffer");
        }
        // Giving the message up moves the same buffers into the frame, same bytes.
        let owned = enc.message_owned(msg.clone()).unwrap();
        assert_eq!(owned.to_contiguous(), out.to_contiguous());
        for (p, q) in owned.payloads.iter().zip(out.payloads.iter()) {
            assert_eq!(p.as_ptr(), q.as_ptr());
        }
        let mut wire = out.to_contiguous();
        let base = wire.as_ptr() as usize;
        let frame = FrameDecoder::new(1 << 20).decode(&mut wire).unwrap().unwrap();
        let got = decode_message(frame.kind, frame.body).unwrap();
        assert_eq!(got, msg);
        let MessageBody::Append { entries, .. } = &got.body else { unreachable!() };
        let last = &entries[3].data;
        let offset = last.as_ptr() as usize - base;
        assert!(offset < out.wire_bytes(), "received payload points into the receive buffer");
    }

    #[test]
    fn gathered_crc_equals_the_crc_of_the_concatenation() {
        let sizes = [0, 1, 100, 511, 512, 4000, 4096, 5000, 7, 3];
        let payloads: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Bytes::from((0..*n).map(|b| (b * 7 + i) as u8).collect::<Vec<u8>>()))
            .collect();
        for take in 0..=payloads.len() {
            let mut all = b"head".to_vec();
            for p in &payloads[..take] {
                all.extend_from_slice(p);
            }
            assert_eq!(crc32c_gathered(b"head", &payloads[..take]), crc32c::crc32c(&all), "first {take} payloads");
        }
    }

    #[test]
    fn encoder_refuses_a_body_over_the_cap() {
        let mut enc = Encoder::new(100);
        assert!(matches!(enc.message(&append(20)), Err(EncodeError::TooLarge { .. })));
        // The encoder stays usable after a refusal.
        assert!(enc.message(&append(1)).is_ok());
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        let mut enc = Encoder::new(1 << 20);
        let body = |m: &Message, enc: &mut Encoder| {
            let mut w = enc.message(m).unwrap().to_contiguous();
            FrameDecoder::new(1 << 20).decode(&mut w).unwrap().unwrap().body
        };
        let m = append(3);
        let good = body(&m, &mut enc);
        // Trailing byte.
        let mut long = BytesMut::from(&good[..]);
        long.put_u8(0);
        assert_eq!(decode_message(FrameKind::Append, long.freeze()), Err(DecodeError::TrailingBytes(1)));
        // Truncated payload area.
        assert_eq!(decode_message(FrameKind::Append, good.slice(..good.len() - 1)), Err(DecodeError::PayloadOverrun));
        // A forged entry count larger than the body could hold.
        let mut forged = BytesMut::from(&good[..]);
        forged[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_message(FrameKind::Append, forged.freeze()), Err(DecodeError::TooManyEntries { .. })));
        // Unknown entry kind.
        let mut bad_kind = BytesMut::from(&good[..]);
        bad_kind[52 + 16] = 9;
        assert_eq!(decode_message(FrameKind::Append, bad_kind.freeze()), Err(DecodeError::BadEntryKind(9)));
        // A boolean that is neither 0 nor 1.
        let resp = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::AppendResponse { index: 1, reject: true, hint_index: 0, hint_term: 0 },
        };
        let mut b = BytesMut::from(&body(&resp, &mut enc)[..]);
        b[32] = 2;
        assert_eq!(decode_message(FrameKind::AppendResponse, b.freeze()), Err(DecodeError::BadBool(2)));
        // Undefined vote flag bits.
        let vote = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::VoteResponse { pre: true, reject: false, commit: 0, commit_term: 0 },
        };
        let mut b = BytesMut::from(&body(&vote, &mut enc)[..]);
        b[24] = 0x81;
        assert_eq!(decode_message(FrameKind::VoteResponse, b.freeze()), Err(DecodeError::BadFlags(0x81)));
        assert_eq!(decode_message(FrameKind::App, good), Err(DecodeError::NotAMessage(FrameKind::App)));
    }

    #[test]
    fn app_frame_round_trips() {
        let mut enc = Encoder::new(1 << 20);
        let app = AppFrame { tag: 7, body: Bytes::from_static(b"relay") };
        let mut w = enc.app(&app).unwrap().to_contiguous();
        let f = FrameDecoder::new(1 << 20).decode(&mut w).unwrap().unwrap();
        assert_eq!(f.kind, FrameKind::App);
        assert_eq!(decode_app(f.body).unwrap(), app);
        assert_eq!(decode_app(Bytes::from_static(b"abc")), Err(DecodeError::Truncated));
    }

    #[test]
    fn heads_share_one_arena_until_it_fills() {
        let mut enc = Encoder::new(1 << 20);
        let hb = Message { from: 1, to: 2, term: 3, body: MessageBody::Heartbeat { commit: 1, ctx: 0 } };
        let a = enc.message(&hb).unwrap();
        let b = enc.message(&hb).unwrap();
        assert_eq!(
            a.head.as_ptr() as usize + a.head.len(),
            b.head.as_ptr() as usize,
            "consecutive heads are adjacent in one allocation"
        );
    }
}
