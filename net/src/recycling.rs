//! Buffers that frames are cut from without copying: a connection's receive buffer and
//! the encoder's arena of frame heads. The frames still alive keep an allocation in
//! use, so instead of allocating a fresh buffer each time one fills (and paying the page
//! faults of fresh memory, which cost more than the copy from the kernel on the receive
//! path), the owner keeps a few retired buffers and reuses the first one whose frames
//! have all been dropped.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Retired buffers kept for reuse. Enough to cover the frames a Raft loop iteration
/// typically still holds; the bound caps the memory an owner pins at (1 + this) times
/// its buffer size, plus any single larger frame.
pub const RETIRED_BUFFERS_MAX: usize = 4;

/// See the module documentation.
#[derive(Debug)]
pub struct RecyclingBuffer {
    buf: BytesMut,
    retired: VecDeque<BytesMut>,
    chunk_bytes: usize,
    spare_bytes_min: usize,
}

impl RecyclingBuffer {
    /// An empty buffer (nothing is allocated until the first read) that grows in
    /// `chunk_bytes` allocations and reads into at least `spare_bytes_min` free bytes.
    ///
    /// # Panics
    /// If `spare_bytes_min` is 0 or exceeds `chunk_bytes`.
    pub fn new(chunk_bytes: usize, spare_bytes_min: usize) -> RecyclingBuffer {
        assert!(
            spare_bytes_min > 0 && spare_bytes_min <= chunk_bytes,
            "receive buffer needs 0 < spare ({spare_bytes_min}) <= chunk ({chunk_bytes})"
        );
        RecyclingBuffer { buf: BytesMut::new(), retired: VecDeque::new(), chunk_bytes, spare_bytes_min }
    }

    /// Changes the allocation size and the spare minimum, e.g. once a peer has been
    /// authenticated.
    ///
    /// # Panics
    /// As [`RecyclingBuffer::new`].
    pub fn set_sizes(&mut self, chunk_bytes: usize, spare_bytes_min: usize) {
        let fresh = RecyclingBuffer::new(chunk_bytes, spare_bytes_min);
        self.chunk_bytes = fresh.chunk_bytes;
        self.spare_bytes_min = fresh.spare_bytes_min;
    }

    /// The buffered bytes; decoders split complete frames off the front.
    pub fn bytes(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Makes sure the buffer can hold `frame_bytes` in total (the whole frame being
    /// received, when its header said how long it is; 0 if unknown) and has at least
    /// the minimum spare capacity. Callers have checked `frame_bytes` against their cap.
    ///
    /// When the frame's length is unknown and the partial frame already fills much of
    /// a chunk, the new buffer is twice the partial frame: a large request arriving in
    /// many reads is then copied a logarithmic number of times, not once per read.
    pub fn make_room(&mut self, frame_bytes: usize) {
        let len = self.buf.len();
        let need = frame_bytes.max(len + self.spare_bytes_min);
        if self.buf.capacity() >= need || self.buf.try_reclaim(need - len) {
            return;
        }
        let mut size = need.max(self.chunk_bytes);
        if frame_bytes == 0 {
            size = size.max(len.saturating_mul(2));
        }
        let reusable = self.retired.iter_mut().position(|b| b.try_reclaim(size));
        let mut next = match reusable {
            Some(i) => self.retired.remove(i).expect("index is in range"),
            None => BytesMut::with_capacity(size),
        };
        // The partial frame at the end moves to the new buffer: at most one frame's
        // bytes, once per buffer.
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        old.clear();
        if old.capacity() > 0 {
            if self.retired.len() == RETIRED_BUFFERS_MAX {
                self.retired.pop_front();
            }
            self.retired.push_back(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_whose_frames_were_dropped_is_reused() {
        let mut r = RecyclingBuffer::new(1024, 64);
        r.make_room(0);
        let first = r.bytes().as_ptr();
        r.bytes().extend_from_slice(&[1; 1000]);
        let frame = r.bytes().split_to(990).freeze(); // still held by "the node"
        r.make_room(0);
        let second = r.bytes().as_ptr();
        assert_ne!(first, second, "the held buffer cannot be reused");
        assert_eq!(&r.bytes()[..], &[1; 10], "the partial frame moved");
        drop(frame);
        r.bytes().extend_from_slice(&[2; 1000]);
        let held = r.bytes().split_to(1000).freeze();
        r.make_room(0);
        assert_eq!(r.bytes().as_ptr(), first, "the first buffer came back");
        assert_eq!(&r.bytes()[..], &[2; 10]);
        drop(held);
    }

    #[test]
    fn room_is_made_for_a_whole_announced_frame() {
        let mut r = RecyclingBuffer::new(256, 16);
        r.make_room(0);
        r.bytes().extend_from_slice(&[0; 20]);
        r.make_room(5000);
        assert!(r.bytes().capacity() >= 5000);
        assert_eq!(r.bytes().len(), 20);
    }

    #[test]
    fn a_large_frame_of_unknown_length_is_moved_a_logarithmic_number_of_times() {
        let mut r = RecyclingBuffer::new(16 << 10, 4 << 10);
        let mut moves = 0;
        let mut at = None;
        // 4 MiB arriving in reads that fill whatever spare room there is, in 4 KiB
        // pieces (a socket read returns what has arrived).
        while r.bytes().len() < 4 << 20 {
            r.make_room(0);
            if at != Some(r.bytes().as_ptr()) {
                moves += 1;
                at = Some(r.bytes().as_ptr());
            }
            r.bytes().extend_from_slice(&[7; 4 << 10]);
        }
        assert!(moves <= 12, "the partial frame moved {moves} times");
        assert!(r.bytes().capacity() <= 16 << 20, "capacity {} for a 4 MiB frame", r.bytes().capacity());
    }

    #[test]
    fn retired_buffers_are_bounded() {
        let mut r = RecyclingBuffer::new(128, 16);
        let mut held = Vec::new();
        for _ in 0..10 {
            r.make_room(0);
            let spare = r.bytes().capacity() - r.bytes().len();
            r.bytes().extend_from_slice(&vec![0; spare]);
            held.push(r.bytes().split().freeze());
        }
        assert!(r.retired.len() <= RETIRED_BUFFERS_MAX);
    }
}
