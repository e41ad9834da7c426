//! Damage to the unwritten tail of a stopped node's WAL, as a crash in the middle of a
//! write would leave it: garbage, or flipped bytes, in the blocks right after the last
//! batch of the last segment. Recovery must take this for a torn tail (row E4 of the
//! decision table in docs/wal-format.md), drop it and start; acknowledged batches are
//! never touched.
//!
//! The last batch is found by walking the batch headers (magic, header CRC, segment
//! seq, consecutive batch seqs) as the format describes, not by looking for zeroes:
//! a recycled segment holds stale batches of an older seq past its live data.
//!
//! In a recycled segment (its header's RECYCLED flag), bytes with no batch header of
//! this segment past the data are the older life's to recovery (row B2), not a tear it
//! could see; there the damage is a torn write whose header block landed: the next
//! batch's header, intact, over a body of garbage.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::rng::Rng;

/// The WAL's block: every batch starts on one.
const BLOCK_BYTES: u64 = 4096;
const SEGMENT_MAGIC: &[u8; 8] = b"SKIFFWAL";
const BATCH_MAGIC: &[u8; 4] = b"SKWB";
const BATCH_HEADER_BYTES: usize = 32;
/// Segment header flags word, and its RECYCLED bit.
const SEGMENT_FLAGS_OFFSET: usize = 12;
const SEGMENT_FLAG_RECYCLED: u32 = 1;
/// Blocks of the tail that may be damaged: a torn write of up to this many blocks.
const DAMAGE_BLOCKS_MAX: u64 = 3;

/// What was done to a WAL.
#[derive(Clone, Debug)]
pub struct TailDamage {
    pub file: PathBuf,
    /// Where the live data ends (the next batch would go here).
    pub end: u64,
    pub bytes: u64,
    pub how: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("no active WAL segment in {0}")]
    NoSegment(PathBuf),
    #[error("{0}: the last segment is full; nothing past its end to damage")]
    Full(PathBuf),
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// The active segment with the highest seq, its seq, first batch seq, and whether it
/// was recycled.
fn last_segment(wal: &Path) -> Result<(PathBuf, u64, u64, bool), TailError> {
    let io = |e| TailError::Io(wal.to_path_buf(), e);
    let mut names: Vec<PathBuf> = std::fs::read_dir(wal)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    names.sort();
    for p in names.into_iter().rev() {
        let mut head = [0u8; 68];
        let mut f = std::fs::File::open(&p).map_err(|e| TailError::Io(p.clone(), e))?;
        if f.read_exact(&mut head).is_err() {
            continue;
        }
        // An all-zero header is a spare segment.
        if &head[..8] == SEGMENT_MAGIC {
            let recycled = le_u32(&head[SEGMENT_FLAGS_OFFSET..]) & SEGMENT_FLAG_RECYCLED != 0;
            return Ok((p, le_u64(&head[40..]), le_u64(&head[56..]), recycled));
        }
    }
    Err(TailError::NoSegment(wal.to_path_buf()))
}

/// The offset where the segment's live batches end, and the seq the next batch takes.
fn live_end(data: &[u8], seg_seq: u64, first_batch: u64) -> (u64, u64) {
    let mut off = BLOCK_BYTES as usize;
    let mut expect = first_batch;
    while off + BATCH_HEADER_BYTES <= data.len() {
        let h = &data[off..off + BATCH_HEADER_BYTES];
        if &h[..4] != BATCH_MAGIC
            || le_u32(&h[4..]) != crc32c::crc32c(&h[8..32])
            || le_u64(&h[8..]) != expect
            || le_u64(&h[16..]) != seg_seq
        {
            break;
        }
        let body = u64::from(le_u32(&h[24..]));
        off += (BATCH_HEADER_BYTES as u64 + body).div_ceil(BLOCK_BYTES) as usize * BLOCK_BYTES as usize;
        expect += 1;
    }
    (off as u64, expect)
}

/// An intact batch header (docs/wal-format.md): magic, CRC32C of bytes 8..32, batch
/// seq, segment seq, body length, record count.
fn batch_header(batch_seq: u64, segment_seq: u64, body_bytes: usize, records: u32) -> [u8; BATCH_HEADER_BYTES] {
    let mut h = [0u8; BATCH_HEADER_BYTES];
    h[..4].copy_from_slice(BATCH_MAGIC);
    h[8..16].copy_from_slice(&batch_seq.to_le_bytes());
    h[16..24].copy_from_slice(&segment_seq.to_le_bytes());
    h[24..28].copy_from_slice(&(body_bytes as u32).to_le_bytes());
    h[28..32].copy_from_slice(&records.to_le_bytes());
    let crc = crc32c::crc32c(&h[8..32]);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Damages the tail of shard 0's WAL under `data_dir` (the node must be stopped).
///
/// # Errors
/// If the WAL cannot be read or written, or has no room past its last batch.
pub fn damage_tail(data_dir: &Path, rng: &mut Rng) -> Result<TailDamage, TailError> {
    let wal = data_dir.join("shard-0").join("wal");
    let (file, seg_seq, first_batch, recycled) = last_segment(&wal)?;
    let io = |e| TailError::Io(file.clone(), e);
    let data = std::fs::read(&file).map_err(io)?;
    let (end, next_batch) = live_end(&data, seg_seq, first_batch);
    let room = (data.len() as u64).saturating_sub(end);
    if room < BLOCK_BYTES {
        return Err(TailError::Full(file));
    }
    let len = (rng.range(1, DAMAGE_BLOCKS_MAX) * BLOCK_BYTES).min(room);
    let mut region = data[end as usize..(end + len) as usize].to_vec();
    let how = if recycled {
        for b in region.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        let body = len as usize - BATCH_HEADER_BYTES;
        region[..BATCH_HEADER_BYTES].copy_from_slice(&batch_header(next_batch, seg_seq, body, 1));
        "torn batch (recycled segment)"
    } else if rng.chance(500) {
        for b in region.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        "garbage"
    } else {
        // Always in the header of the would-be next batch, so recovery meets it first.
        region[rng.below(BATCH_HEADER_BYTES as u64) as usize] ^= 1 << rng.below(8);
        for _ in 0..rng.range(0, 8) {
            let i = rng.below(len) as usize;
            region[i] ^= 1 << rng.below(8);
        }
        "flipped bits"
    };
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).map_err(io)?;
    f.seek(SeekFrom::Start(end)).map_err(io)?;
    f.write_all(&region).map_err(io)?;
    f.sync_data().map_err(io)?;
    Ok(TailDamage { file, end, bytes: len, how })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, seg: u64, body: usize) -> Vec<u8> {
        let mut h = batch_header(seq, seg, body, 0).to_vec();
        h.extend(std::iter::repeat_n(7u8, body));
        h.resize(h.len().div_ceil(4096) * 4096, 0);
        h
    }

    /// A segment file of seq 3 (first batch 10) with two batches; `recycled` sets the
    /// header flag.
    fn segment(recycled: bool) -> Vec<u8> {
        let mut seg = vec![0u8; 4096];
        seg[..8].copy_from_slice(SEGMENT_MAGIC);
        seg[SEGMENT_FLAGS_OFFSET..SEGMENT_FLAGS_OFFSET + 4].copy_from_slice(&u32::from(recycled).to_le_bytes());
        seg[40..48].copy_from_slice(&3u64.to_le_bytes());
        seg[56..64].copy_from_slice(&10u64.to_le_bytes());
        seg.extend(batch(10, 3, 100));
        seg.extend(batch(11, 3, 5000));
        seg.resize(64 * 4096, 0);
        seg
    }

    #[test]
    fn a_recycled_segment_gets_a_torn_batch_of_its_own_others_garbage_or_flips() {
        for recycled in [false, true] {
            for seed in 0..20 {
                let dir = std::env::temp_dir().join(format!("skiff-waltail-{}-{recycled}-{seed}", std::process::id()));
                let wal = dir.join("shard-0").join("wal");
                std::fs::create_dir_all(&wal).unwrap();
                let path = wal.join(format!("{:020}.wal", 3));
                std::fs::write(&path, segment(recycled)).unwrap();
                let d = damage_tail(&dir, &mut Rng::new(seed)).unwrap();
                let after = std::fs::read(&path).unwrap();
                std::fs::remove_dir_all(&dir).unwrap();
                assert_eq!(d.end, 4 * 4096);
                assert_eq!(after[..d.end as usize], segment(recycled)[..d.end as usize], "live data untouched");
                let h = &after[d.end as usize..d.end as usize + BATCH_HEADER_BYTES];
                let own_header = &h[..4] == BATCH_MAGIC
                    && le_u32(&h[4..]) == crc32c::crc32c(&h[8..32])
                    && le_u64(&h[8..]) == 12
                    && le_u64(&h[16..]) == 3;
                assert_eq!(own_header, recycled, "seed {seed}: {}", d.how);
            }
        }
    }

    #[test]
    fn the_live_end_stops_at_stale_or_missing_batches() {
        let mut seg = vec![0u8; 4096];
        seg.extend(batch(10, 3, 100));
        seg.extend(batch(11, 3, 5000));
        let end = seg.len() as u64;
        // A stale batch of an older segment seq (a recycled file) is not live data.
        seg.extend(batch(12, 2, 100));
        seg.extend(vec![0u8; 4096]);
        assert_eq!(live_end(&seg, 3, 10), (end, 12));
        assert_eq!(end, 4096 * 4);
        // A batch out of sequence ends it too.
        assert_eq!(live_end(&seg, 3, 9), (4096, 9));
    }
}
