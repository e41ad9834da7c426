//! The per-peer send queue: two bounded lanes, so that small control messages
//! (heartbeats, votes, read-index traffic) never wait behind megabytes of appends and
//! snapshots, and a slow or dead peer costs bounded memory instead of blocking the Raft
//! loop.
//!
//! Both lanes are bounded in messages and in bytes (OVS's connection backlog threshold:
//! `DEFAULT_MAX_BACKLOG_N_MSGS`, `..._N_BYTES`). A push that would exceed a bound is
//! refused; the caller drops the message (Raft retransmits) and reports the peer
//! unreachable so the leader stops pipelining to it (etcd `ReportUnreachable`).
//!
//! The writer takes one batch at a time: every queued control frame first, then bulk
//! frames up to [`WRITE_BATCH_BYTES_MAX`], or one bulk frame when it alone is larger (a
//! snapshot chunk). A control frame queued while a batch is being written therefore
//! waits at most for that one batch, never for the whole bulk lane.

use std::collections::VecDeque;

use crate::frame::ENTRY_BATCH_BYTES_MAX;
use crate::message::OutFrame;
#[cfg(test)]
use crate::message::Payloads;

/// Default bound on queued bulk messages per peer: the engine keeps at most 512 appends
/// in flight per peer (etcd `maxInflightMsgs`), so a healthy peer never fills it.
pub const BULK_QUEUE_MESSAGES_MAX_DEFAULT: usize = 512;
/// Default bound on queued bulk bytes per peer: 64 full 1 MiB append batches. Bounds the
/// memory a stalled peer pins per shard; a peer that far behind is better served by
/// a snapshot than by more queued appends.
pub const BULK_QUEUE_BYTES_MAX_DEFAULT: usize = 64 * ENTRY_BATCH_BYTES_MAX;
/// Default bound on queued control messages per peer. Control messages are tens of
/// bytes and at most a few per tick; 1,024 means the peer has stopped reading for many
/// heartbeat intervals.
pub const CONTROL_QUEUE_MESSAGES_MAX_DEFAULT: usize = 1024;
/// Default bound on queued control bytes per peer (1,024 messages of at most 64 bytes).
pub const CONTROL_QUEUE_BYTES_MAX_DEFAULT: usize = 64 << 10;
/// Most bulk bytes one write takes after the control frames. Caps how long a control
/// frame queued mid-write waits; well above one 1,024-entry batch of 100-byte entries
/// (about 125 KiB) so coalescing still pays.
pub const WRITE_BATCH_BYTES_MAX: usize = 512 << 10;

const _: () = assert!(BULK_QUEUE_BYTES_MAX_DEFAULT >= 2 * ENTRY_BATCH_BYTES_MAX);
const _: () = assert!(WRITE_BATCH_BYTES_MAX <= BULK_QUEUE_BYTES_MAX_DEFAULT);

/// Which lane a frame travels in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Small, latency-critical frames, written before any queued bulk frame.
    Control,
    /// Appends, snapshots, proposals and bulk application frames.
    Bulk,
}

/// Bounds of one lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneLimits {
    pub messages_max: usize,
    pub bytes_max: usize,
}

/// Bounds of both lanes of a peer's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    pub control: LaneLimits,
    pub bulk: LaneLimits,
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits {
            control: LaneLimits {
                messages_max: CONTROL_QUEUE_MESSAGES_MAX_DEFAULT,
                bytes_max: CONTROL_QUEUE_BYTES_MAX_DEFAULT,
            },
            bulk: LaneLimits { messages_max: BULK_QUEUE_MESSAGES_MAX_DEFAULT, bytes_max: BULK_QUEUE_BYTES_MAX_DEFAULT },
        }
    }
}

#[derive(Debug, Default)]
struct LaneQueue {
    frames: VecDeque<OutFrame>,
    bytes: usize,
}

impl LaneQueue {
    fn has_room(&self, limits: LaneLimits, bytes: usize) -> bool {
        // An empty lane takes any single frame the encoder accepted, so a frame larger
        // than the byte bound (a big snapshot) can still be sent to an idle peer.
        self.frames.is_empty() || (self.frames.len() < limits.messages_max && self.bytes + bytes <= limits.bytes_max)
    }
}

/// The queue of one peer.
#[derive(Debug)]
pub struct SendQueue {
    limits: QueueLimits,
    control: LaneQueue,
    bulk: LaneQueue,
}

/// A push was refused: the lane is full. Carries the frame back to the caller.
#[derive(Debug)]
pub struct QueueFull(pub OutFrame);

impl SendQueue {
    /// An empty queue with the given bounds.
    ///
    /// # Panics
    /// If a lane allows no message at all.
    pub fn new(limits: QueueLimits) -> SendQueue {
        assert!(
            limits.control.messages_max > 0 && limits.bulk.messages_max > 0,
            "each lane must hold at least one message"
        );
        SendQueue { limits, control: LaneQueue::default(), bulk: LaneQueue::default() }
    }

    fn lane(&mut self, lane: Lane) -> (&mut LaneQueue, LaneLimits) {
        match lane {
            Lane::Control => (&mut self.control, self.limits.control),
            Lane::Bulk => (&mut self.bulk, self.limits.bulk),
        }
    }

    /// Queues `frame` in `lane`, or hands it back when the lane is full.
    pub fn push(&mut self, lane: Lane, frame: OutFrame) -> Result<(), QueueFull> {
        let bytes = frame.wire_bytes();
        let (q, limits) = self.lane(lane);
        if !q.has_room(limits, bytes) {
            return Err(QueueFull(frame));
        }
        q.bytes += bytes;
        q.frames.push_back(frame);
        Ok(())
    }

    /// True when `lane` would accept a frame of `bytes` now.
    pub fn has_room(&self, lane: Lane, bytes: usize) -> bool {
        match lane {
            Lane::Control => self.control.has_room(self.limits.control, bytes),
            Lane::Bulk => self.bulk.has_room(self.limits.bulk, bytes),
        }
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.control.frames.is_empty() && self.bulk.frames.is_empty()
    }

    /// Queued (messages, bytes) in `lane`.
    pub fn len(&self, lane: Lane) -> (usize, usize) {
        let q = match lane {
            Lane::Control => &self.control,
            Lane::Bulk => &self.bulk,
        };
        (q.frames.len(), q.bytes)
    }

    /// Moves the next write's frames into `out`: all control frames, then bulk frames
    /// while their bytes stay within `bulk_bytes_max` — but always at least one bulk
    /// frame when any is queued, so a frame larger than the cap (a snapshot chunk) goes
    /// out even while control frames arrive before every write. The control frames
    /// still lead the write.
    pub fn take_batch(&mut self, out: &mut Vec<OutFrame>, bulk_bytes_max: usize) {
        out.extend(self.control.frames.drain(..));
        self.control.bytes = 0;
        let mut taken = 0;
        while let Some(front) = self.bulk.frames.front() {
            let bytes = front.wire_bytes();
            if taken > 0 && taken + bytes > bulk_bytes_max {
                break;
            }
            taken += bytes;
            self.bulk.bytes -= bytes;
            out.push(self.bulk.frames.pop_front().expect("front exists"));
        }
    }

    /// Empties both lanes (the connection was lost); returns how many frames were
    /// dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.control.frames.len() + self.bulk.frames.len();
        self.control = LaneQueue::default();
        self.bulk = LaneQueue::default();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(bytes: usize, marker: u8) -> OutFrame {
        OutFrame::new(Bytes::from(vec![marker; bytes]), Payloads::None)
    }

    fn limits(msgs: usize, bytes: usize) -> QueueLimits {
        QueueLimits {
            control: LaneLimits { messages_max: msgs, bytes_max: bytes },
            bulk: LaneLimits { messages_max: msgs, bytes_max: bytes },
        }
    }

    #[test]
    fn lanes_are_bounded_in_messages_and_bytes_independently() {
        let mut q = SendQueue::new(limits(2, 100));
        q.push(Lane::Bulk, frame(40, 1)).unwrap();
        q.push(Lane::Bulk, frame(40, 2)).unwrap();
        assert!(q.push(Lane::Bulk, frame(1, 3)).is_err(), "message bound");
        let mut q2 = SendQueue::new(limits(10, 100));
        q2.push(Lane::Bulk, frame(60, 1)).unwrap();
        assert!(q2.push(Lane::Bulk, frame(41, 2)).is_err(), "byte bound");
        q2.push(Lane::Bulk, frame(40, 2)).unwrap();
        // A full bulk lane does not stop control traffic.
        q2.push(Lane::Control, frame(10, 9)).unwrap();
        assert_eq!(q2.len(Lane::Bulk), (2, 100));
        assert_eq!(q2.len(Lane::Control), (1, 10));
    }

    #[test]
    fn an_empty_lane_takes_one_oversized_frame() {
        let mut q = SendQueue::new(limits(10, 100));
        q.push(Lane::Bulk, frame(500, 1)).unwrap();
        assert!(q.push(Lane::Bulk, frame(1, 2)).is_err());
    }

    #[test]
    fn batches_put_control_first_and_cap_bulk_bytes() {
        let mut q = SendQueue::new(limits(100, 10_000));
        for i in 0..5 {
            q.push(Lane::Bulk, frame(100, i)).unwrap();
        }
        q.push(Lane::Control, frame(10, 100)).unwrap();
        q.push(Lane::Control, frame(10, 101)).unwrap();
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 250);
        let markers: Vec<u8> = batch.iter().map(|f| f.head[0]).collect();
        assert_eq!(markers, [100, 101, 0, 1], "control first, then bulk within 250 bytes");
        assert_eq!(q.len(Lane::Bulk), (3, 300));
        batch.clear();
        q.take_batch(&mut batch, 50);
        assert_eq!(batch.len(), 1, "one bulk frame even when it alone exceeds the cap");
        // And with control frames in the same write: a bulk frame over the cap is not
        // held back for as long as control traffic keeps coming.
        batch.clear();
        q.push(Lane::Control, frame(10, 102)).unwrap();
        q.take_batch(&mut batch, 50);
        let markers: Vec<u8> = batch.iter().map(|f| f.head[0]).collect();
        assert_eq!(markers, [102, 3], "control first, then the oversized bulk frame");
        assert_eq!(q.clear(), 1);
        assert!(q.is_empty());
    }
}
