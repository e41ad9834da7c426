//! Snapshot files of the KV state: their format, writing one from a clone of the state
//! (off the Ready loop), reading one back, and assembling one received in chunks from
//! the leader.
//!
//! # File format (version 1)
//!
//! ```text
//! header
//!   bytes 0..8     magic "SKIFSNAP"
//!   bytes 8..12    format version, u32 LE (1)
//!   bytes 12..16   header length H in bytes, u32 LE (from byte 0, CRC included)
//!   bytes 16..24   cluster id, u64 LE
//!   bytes 24..28   shard id, u32 LE
//!   bytes 28..36   index, u64 LE   (the last log index the state includes)
//!   bytes 36..44   term, u64 LE    (the term of that entry)
//!   bytes 44..48   election timeout from the log, u32 LE (0: none)
//!   bytes 48..52   voter count V, u32 LE;   then V x u64 LE voter ids
//!   u32 LE learner count L;                 then L x u64 LE learner ids
//!   u64 LE pair count N
//!   u32 LE CRC32C of header bytes 0..H-4
//! body: N x (u32 LE key length, key, u32 LE value length, value)
//! trailer (20 bytes)
//!   u64 LE body length, u32 LE CRC32C of the body, magic "SNAPEND\0"
//! ```
//!
//! A file is written as `<name>.tmp`, fsynced, renamed into place and the directory
//! fsynced, so a crash leaves either the whole snapshot or none. Anything that does not
//! check out — magic, version, either checksum, lengths — is refused naming the file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use skiff_engine::{ConfState, Index, SnapshotMeta, Term};

use crate::kv::Kv;

const MAGIC: &[u8; 8] = b"SKIFSNAP";
const TRAILER_MAGIC: &[u8; 8] = b"SNAPEND\0";
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const TRAILER_BYTES: usize = 20;
/// Largest key or value a snapshot may hold: the client port's bulk cap is far lower;
/// anything bigger in a file is corruption, refused before allocating.
const ITEM_BYTES_MAX: usize = 512 << 20;
/// Largest member list in a header (the engine has no such bound, but a cluster of a
/// million members is corruption).
const MEMBERS_MAX: usize = 1 << 16;
/// Write buffer for snapshot files.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "snapshot {path} is corrupt: {reason}; remove it only if another copy of this shard's state exists (another member, a backup)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// What a snapshot file stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub cluster_id: u64,
    pub shard: u32,
    pub meta: SnapshotMeta,
    pub pairs: u64,
}

/// Where snapshot files live and how they are named.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn new(dir: impl Into<PathBuf>) -> SnapshotDir {
        SnapshotDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file of the snapshot at `index`.
    pub fn file(&self, index: Index) -> PathBuf {
        self.dir.join(format!("snap-{index:020}.skiffsnap"))
    }

    /// The file a snapshot being received is assembled in.
    pub fn partial(&self, index: Index) -> PathBuf {
        self.dir.join(format!("snap-{index:020}.partial"))
    }

    /// Snapshot indexes present (complete files only), ascending.
    pub fn list(&self) -> Result<Vec<Index>, SnapshotError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| SnapshotError::Io { path: self.dir.clone(), source })?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(Ok(i)) = name.strip_prefix("snap-").and_then(|n| n.strip_suffix(".skiffsnap")).map(str::parse) {
                out.push(i);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Removes every snapshot file (complete or partial) below `keep`.
    pub fn remove_older(&self, keep: Index) -> Result<(), SnapshotError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| SnapshotError::Io { path: self.dir.clone(), source })?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let idx =
                name.strip_prefix("snap-").and_then(|n| n.split('.').next()).and_then(|i| i.parse::<Index>().ok());
            if idx.is_some_and(|i| i < keep) {
                let p = e.path();
                std::fs::remove_file(&p).map_err(|source| SnapshotError::Io { path: p, source })?;
            }
        }
        fsync_dir(&self.dir)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

/// fsyncs a directory so that creations, renames and removals in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn encode_header(cluster_id: u64, shard: u32, meta: &SnapshotMeta, pairs: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(64 + 8 * (meta.conf_state.voters.len() + meta.conf_state.learners.len()));
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // length, filled in below
    h.extend_from_slice(&cluster_id.to_le_bytes());
    h.extend_from_slice(&shard.to_le_bytes());
    h.extend_from_slice(&meta.index.to_le_bytes());
    h.extend_from_slice(&meta.term.to_le_bytes());
    h.extend_from_slice(&meta.election_timeout_ticks.to_le_bytes());
    for list in [&meta.conf_state.voters, &meta.conf_state.learners] {
        h.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for id in list {
            h.extend_from_slice(&id.to_le_bytes());
        }
    }
    h.extend_from_slice(&pairs.to_le_bytes());
    let len = (h.len() + 4) as u32;
    h[12..16].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// A small summary of a complete snapshot file carried in the Raft snapshot message:
/// the receiver checks the file it assembled against it before installing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub bytes: u64,
    pub body_crc: u32,
}

impl Descriptor {
    pub const ENCODED_BYTES: usize = 12;

    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(Self::ENCODED_BYTES);
        b.extend_from_slice(&self.bytes.to_le_bytes());
        b.extend_from_slice(&self.body_crc.to_le_bytes());
        Bytes::from(b)
    }

    pub fn decode(b: &[u8]) -> Option<Descriptor> {
        if b.len() != Self::ENCODED_BYTES {
            return None;
        }
        Some(Descriptor {
            bytes: u64::from_le_bytes(b[0..8].try_into().ok()?),
            body_crc: u32::from_le_bytes(b[8..12].try_into().ok()?),
        })
    }
}

/// Writes `kv` as the snapshot at `meta` durably (tmp file, fsync, rename, directory
/// fsync) and returns its descriptor. Blocking: run it off the shard's loop.
pub fn write(
    dir: &SnapshotDir,
    cluster_id: u64,
    shard: u32,
    meta: &SnapshotMeta,
    kv: &Kv,
) -> Result<Descriptor, SnapshotError> {
    let path = dir.file(meta.index);
    let tmp = path.with_extension("tmp");
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io(&tmp))?;
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let header = encode_header(cluster_id, shard, meta, kv.len() as u64);
    w.write_all(&header).map_err(io(&tmp))?;
    let mut crc = 0u32;
    let mut body_len = 0u64;
    for (k, v) in kv.iter() {
        for part in [k, v] {
            let len = (part.len() as u32).to_le_bytes();
            w.write_all(&len).map_err(io(&tmp))?;
            w.write_all(part).map_err(io(&tmp))?;
            crc = crc32c::crc32c_append(crc, &len);
            crc = crc32c::crc32c_append(crc, part);
            body_len += 4 + part.len() as u64;
        }
    }
    w.write_all(&body_len.to_le_bytes()).map_err(io(&tmp))?;
    w.write_all(&crc.to_le_bytes()).map_err(io(&tmp))?;
    w.write_all(TRAILER_MAGIC).map_err(io(&tmp))?;
    let file = w.into_inner().map_err(|e| SnapshotError::Io { path: tmp.clone(), source: e.into_error() })?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    fsync_dir(dir.path())?;
    Ok(Descriptor { bytes: header.len() as u64 + body_len + TRAILER_BYTES as u64, body_crc: crc })
}

struct Reader<'a> {
    path: &'a Path,
    r: std::io::BufReader<File>,
}

impl Reader<'_> {
    fn corrupt(&self, reason: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt { path: self.path.to_path_buf(), reason: reason.into() }
    }
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.corrupt("it ends early")
            } else {
                SnapshotError::Io { path: self.path.to_path_buf(), source: e }
            }
        })
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

fn parse_header(raw: &[u8]) -> Option<(u64, u32, SnapshotMeta, u64)> {
    let u32_at = |o: usize| raw.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let u64_at = |o: usize| raw.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let cluster_id = u64_at(16)?;
    let shard = u32_at(24)?;
    let index = u64_at(28)?;
    let term: Term = u64_at(36)?;
    let et = u32_at(44)?;
    let mut at = 48;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let n = u32_at(at)? as usize;
        at += 4;
        if n > MEMBERS_MAX {
            return None;
        }
        for _ in 0..n {
            list.push(u64_at(at)?);
            at += 8;
        }
    }
    let pairs = u64_at(at)?;
    at += 8;
    (at + 4 == raw.len()).then_some(())?;
    let [voters, learners] = lists;
    let meta = SnapshotMeta { index, term, conf_state: ConfState { voters, learners }, election_timeout_ticks: et };
    Some((cluster_id, shard, meta, pairs))
}

/// Reads and verifies a snapshot file: header, every pair, the body checksum and the
/// trailer. Blocking.
pub fn read(path: &Path) -> Result<(SnapshotHeader, Kv, Descriptor), SnapshotError> {
    let file = File::open(path).map_err(io(path))?;
    let size = file.metadata().map_err(io(path))?.len();
    let mut rd = Reader { path, r: std::io::BufReader::with_capacity(WRITE_BUFFER_BYTES, file) };
    let mut fixed = [0u8; 16];
    rd.exact(&mut fixed)?;
    if &fixed[0..8] != MAGIC {
        return Err(rd.corrupt("bad magic (not a Skiff snapshot)"));
    }
    let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(rd.corrupt(format!("format version {version}, this build reads {SNAPSHOT_FORMAT_VERSION}")));
    }
    let hlen = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes")) as usize;
    if !(56..=64 + 16 * MEMBERS_MAX).contains(&hlen) || hlen as u64 > size {
        return Err(rd.corrupt(format!("header length {hlen} is impossible")));
    }
    let mut header = fixed.to_vec();
    header.resize(hlen, 0);
    rd.exact(&mut header[16..])?;
    let stored = u32::from_le_bytes(header[hlen - 4..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[..hlen - 4]) != stored {
        return Err(rd.corrupt("header checksum mismatch"));
    }
    let (cluster_id, shard, meta, pairs) = parse_header(&header).ok_or_else(|| rd.corrupt("malformed header"))?;
    let mut kv = Kv::new();
    let mut crc = 0u32;
    let mut body_len = 0u64;
    let mut buf = Vec::new();
    for _ in 0..pairs {
        let mut pair = [Bytes::new(), Bytes::new()];
        for part in &mut pair {
            let n = rd.u32()?;
            if n as usize > ITEM_BYTES_MAX || u64::from(n) > size {
                return Err(rd.corrupt(format!("item of {n} bytes")));
            }
            buf.resize(n as usize, 0);
            rd.exact(&mut buf)?;
            crc = crc32c::crc32c_append(crc, &n.to_le_bytes());
            crc = crc32c::crc32c_append(crc, &buf);
            body_len += 4 + u64::from(n);
            *part = Bytes::copy_from_slice(&buf);
        }
        let [k, v] = pair;
        kv.insert(k, v);
    }
    let stored_len = rd.u64()?;
    let stored_crc = rd.u32()?;
    let mut magic = [0u8; 8];
    rd.exact(&mut magic)?;
    if &magic != TRAILER_MAGIC || stored_len != body_len {
        return Err(rd.corrupt("bad trailer"));
    }
    if stored_crc != crc {
        return Err(rd.corrupt("body checksum mismatch"));
    }
    let mut extra = [0u8; 1];
    if rd.r.read(&mut extra).map_err(io(path))? != 0 {
        return Err(rd.corrupt("bytes after the trailer"));
    }
    let desc = Descriptor { bytes: hlen as u64 + body_len + TRAILER_BYTES as u64, body_crc: crc };
    Ok((SnapshotHeader { cluster_id, shard, meta, pairs }, kv, desc))
}

/// Assembles a snapshot received from the leader in chunks, in order, into the partial
/// file; `finish` checks it against the descriptor and renames it into place.
#[derive(Debug)]
pub struct Receiver {
    index: Index,
    path: PathBuf,
    file: File,
    received: u64,
}

impl Receiver {
    /// Starts (or restarts) receiving the snapshot at `index`.
    pub fn start(dir: &SnapshotDir, index: Index) -> Result<Receiver, SnapshotError> {
        let path = dir.partial(index);
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&path).map_err(io(&path))?;
        Ok(Receiver { index, path, file, received: 0 })
    }

    pub fn index(&self) -> Index {
        self.index
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends the chunk at `offset`. Returns false (and keeps nothing) when the chunk
    /// is not the next one: the transfer restarts with the next attempt.
    pub fn chunk(&mut self, offset: u64, data: &[u8]) -> Result<bool, SnapshotError> {
        if offset != self.received {
            return Ok(false);
        }
        self.file.write_all(data).map_err(io(&self.path))?;
        self.received += data.len() as u64;
        Ok(true)
    }

    /// Makes the file durable, verifies it in full (both checksums and every length)
    /// and renames it to its final name. The caller compares the returned descriptor
    /// with the one in the leader's snapshot message before installing.
    pub fn finish(self, dir: &SnapshotDir) -> Result<(SnapshotHeader, Kv, Descriptor), SnapshotError> {
        self.file.sync_all().map_err(io(&self.path))?;
        drop(self.file);
        let (header, kv, desc) = read(&self.path)?;
        if header.meta.index != self.index {
            return Err(SnapshotError::Corrupt {
                path: self.path.clone(),
                reason: format!("holds the snapshot at {}, not {}", header.meta.index, self.index),
            });
        }
        let dest = dir.file(self.index);
        std::fs::rename(&self.path, &dest).map_err(io(&dest))?;
        fsync_dir(dir.path())?;
        Ok((header, kv, desc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: Index) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term: 3,
            conf_state: ConfState { voters: vec![1, 2, 3], learners: vec![4] },
            election_timeout_ticks: 12,
        }
    }

    fn sample() -> Kv {
        let mut kv = Kv::new();
        for i in 0..500 {
            kv.insert(Bytes::from(format!("key{i}")), Bytes::from(vec![i as u8; i % 37]));
        }
        kv
    }

    #[test]
    fn write_read_round_trip_and_listing() {
        let d = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(d.path());
        let kv = sample();
        let desc = write(&dir, 7, 0, &meta(42), &kv).unwrap();
        let (h, back, desc2) = read(&dir.file(42)).unwrap();
        assert_eq!((h.cluster_id, h.shard, h.meta.clone(), h.pairs), (7, 0, meta(42), 500));
        assert_eq!(back.digest(), kv.digest());
        assert_eq!(desc, desc2);
        assert_eq!(desc.bytes, std::fs::metadata(dir.file(42)).unwrap().len());
        write(&dir, 7, 0, &meta(50), &Kv::new()).unwrap();
        assert_eq!(dir.list().unwrap(), vec![42, 50]);
        dir.remove_older(50).unwrap();
        assert_eq!(dir.list().unwrap(), vec![50]);
        assert_eq!(Descriptor::decode(&desc.encode()), Some(desc));
    }

    /// Any single-byte change, and any truncation, is refused naming the file.
    #[test]
    fn every_damage_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(d.path());
        let mut kv = Kv::new();
        kv.insert(Bytes::from_static(b"k"), Bytes::from_static(b"value"));
        write(&dir, 1, 0, &meta(9), &kv).unwrap();
        let path = dir.file(9);
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let e = read(&path).expect_err(&format!("flip at byte {i}"));
            assert!(e.to_string().contains("snap-00000000000000000009"), "{e}");
        }
        for n in 0..good.len() {
            std::fs::write(&path, &good[..n]).unwrap();
            assert!(read(&path).is_err(), "truncated to {n}");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(read(&path).is_err(), "trailing byte");
    }

    #[test]
    fn receiving_in_chunks() {
        let d = tempfile::tempdir().unwrap();
        let src = SnapshotDir::new(d.path().join("src"));
        let dst = SnapshotDir::new(d.path().join("dst"));
        std::fs::create_dir_all(src.path()).unwrap();
        std::fs::create_dir_all(dst.path()).unwrap();
        let kv = sample();
        let desc = write(&src, 1, 0, &meta(77), &kv).unwrap();
        let bytes = std::fs::read(src.file(77)).unwrap();
        let mut rx = Receiver::start(&dst, 77).unwrap();
        assert!(!rx.chunk(5, &bytes[5..10]).unwrap(), "out of order is refused");
        for (i, c) in bytes.chunks(1000).enumerate() {
            assert!(rx.chunk((i * 1000) as u64, c).unwrap());
        }
        let (h, back, got) = rx.finish(&dst).unwrap();
        assert_eq!((h.meta.index, got), (77, desc));
        assert_eq!(back.digest(), kv.digest());
        assert_eq!(dst.list().unwrap(), vec![77]);
        // Chunks of another snapshot's file under this index are refused.
        let mut rx = Receiver::start(&dst, 78).unwrap();
        rx.chunk(0, &bytes).unwrap();
        assert!(rx.finish(&dst).is_err(), "the file holds index 77");
    }
}
