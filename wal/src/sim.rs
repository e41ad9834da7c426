//! A simulated file system for tests and simulations: it keeps, per file, what is
//! durable apart from what was written since the last fdatasync, so a simulated crash
//! can drop, keep or tear (at any byte) each unsynced write; it loses directory changes
//! that were not followed by a directory fsync; and it fails writes, fsyncs and file
//! creation with a chosen errno on demand.
//!
//! A failed fdatasync discards the unsynced writes it should have made durable while
//! leaving them readable, as Linux does after writeback errors ("fsyncgate"): the next
//! fdatasync then succeeds, which is exactly the trap a retrying WAL would fall into.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::fs::{FileSystem, IoBuffer, WalFile};

/// A plain heap buffer; the simulation needs no alignment.
#[derive(Debug, Clone)]
pub struct SimBuffer(Vec<u8>);

impl IoBuffer for SimBuffer {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// One operation, as recorded by [`SimFs::trace`] (inodes are numbered in creation
/// order). Replaying a prefix of a trace with [`SimDisk::replay`] rebuilds the disk as
/// it was at that point, which is how crash states are enumerated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceOp {
    Create {
        path: PathBuf,
        inode: usize,
    },
    Write {
        inode: usize,
        pos: u64,
        data: Vec<u8>,
    },
    Sync {
        inode: usize,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    SyncDir,
    /// A marker a test inserts (for example "append n was reported durable").
    Note(u64),
}

/// What happens to one unsynced write in a simulated crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFate {
    /// It reached the disk.
    Keep,
    /// It never did.
    Drop,
    /// Only its first `n` bytes did.
    Tear(usize),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Writes since the last successful fdatasync, in issue order.
    unsynced: Vec<(u64, Vec<u8>)>,
}

fn apply_write(content: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let pos = pos as usize;
    if content.len() < pos + data.len() {
        content.resize(pos + data.len(), 0);
    }
    content[pos..pos + data.len()].copy_from_slice(data);
}

/// Faults to inject; each fires once, on the n-th matching operation from now (0 = the
/// next one).
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    fsync: Option<(u64, i32)>,
    write: Option<(u64, i32)>,
    create: Option<(u64, i32)>,
    no_direct_io: bool,
}

/// The whole simulated disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    faults: Faults,
    tracing: bool,
    trace: Vec<TraceOp>,
}

impl SimDisk {
    /// Rebuilds a disk by applying `ops` to an empty one.
    ///
    /// # Panics
    /// If the ops are inconsistent (they did not come from a trace).
    pub fn replay(ops: &[TraceOp]) -> SimDisk {
        let mut d = SimDisk::default();
        for op in ops {
            d.apply(op);
        }
        d
    }

    /// Applies one traced operation (the disk as it would be right after it).
    ///
    /// # Panics
    /// If the op does not fit the disk (it did not come from this disk's trace).
    pub fn apply(&mut self, op: &TraceOp) {
        match op {
            TraceOp::Create { path, inode } => {
                assert_eq!(*inode, self.inodes.len(), "replay: inode numbering");
                self.inodes.push(Inode::default());
                self.names.insert(path.clone(), *inode);
            }
            TraceOp::Write { inode, pos, data } => {
                let f = &mut self.inodes[*inode];
                apply_write(&mut f.current, *pos, data);
                f.unsynced.push((*pos, data.clone()));
            }
            TraceOp::Sync { inode } => {
                let f = &mut self.inodes[*inode];
                for (pos, data) in std::mem::take(&mut f.unsynced) {
                    apply_write(&mut f.durable, pos, &data);
                }
            }
            TraceOp::Rename { from, to } => {
                let ino = self.names.remove(from).expect("replay: rename source");
                self.names.insert(to.clone(), ino);
            }
            TraceOp::Remove { path } => {
                self.names.remove(path).expect("replay: remove");
            }
            TraceOp::SyncDir => self.durable_names = self.names.clone(),
            TraceOp::Note(_) => {}
        }
    }

    fn record(&mut self, op: TraceOp) {
        if self.tracing {
            self.trace.push(op);
        }
    }

    /// The disk after a power cut: every file named in the last synced directory state
    /// (or the current one, when `keep_dir_changes`), with its durable content plus
    /// each unsynced write treated as `fate(i, len)` says (`i` counts unsynced writes
    /// across all files, in file-name order then issue order).
    pub fn crash(&self, keep_dir_changes: bool, mut fate: impl FnMut(usize, usize) -> WriteFate) -> SimDisk {
        let names = if keep_dir_changes { &self.names } else { &self.durable_names };
        let mut out = SimDisk { dirs: self.dirs.clone(), ..SimDisk::default() };
        let mut i = 0;
        for (path, &ino) in names {
            let f = &self.inodes[ino];
            let mut content = f.durable.clone();
            for (pos, data) in &f.unsynced {
                match fate(i, data.len()) {
                    WriteFate::Keep => apply_write(&mut content, *pos, data),
                    WriteFate::Drop => {}
                    WriteFate::Tear(n) => apply_write(&mut content, *pos, &data[..n.min(data.len())]),
                }
                i += 1;
            }
            out.names.insert(path.clone(), out.inodes.len());
            out.inodes.push(Inode { durable: content.clone(), current: content, unsynced: Vec::new() });
        }
        out.durable_names = out.names.clone();
        out
    }

    /// Number of unsynced writes a crash would decide about (same counting as `crash`).
    pub fn unsynced_writes(&self, keep_dir_changes: bool) -> usize {
        let names = if keep_dir_changes { &self.names } else { &self.durable_names };
        names.values().map(|&i| self.inodes[i].unsynced.len()).sum()
    }

    /// Current content of every file in `dir`, by file name.
    pub fn files_in(&self, dir: &Path) -> Vec<(String, Vec<u8>)> {
        self.names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, &i)| {
                (p.file_name().expect("file name").to_string_lossy().into_owned(), self.inodes[i].current.clone())
            })
            .collect()
    }
}

/// A handle on a shared [`SimDisk`] implementing [`FileSystem`]. Clones share the disk.
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    disk: Rc<RefCell<SimDisk>>,
}

/// A file of a [`SimFs`].
#[derive(Debug)]
pub struct SimFile {
    disk: Rc<RefCell<SimDisk>>,
    inode: usize,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Counts a fault down; true when it fires now.
fn fires(slot: &mut Option<(u64, i32)>) -> Option<i32> {
    match slot {
        Some((0, e)) => {
            let e = *e;
            *slot = None;
            Some(e)
        }
        Some((n, _)) => {
            *n -= 1;
            None
        }
        None => None,
    }
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// A file system over `disk` (for example one returned by [`SimDisk::crash`]).
    pub fn from_disk(disk: SimDisk) -> SimFs {
        SimFs { disk: Rc::new(RefCell::new(disk)) }
    }

    /// A copy of the disk as it is now.
    pub fn disk(&self) -> SimDisk {
        self.disk.borrow().clone()
    }

    /// Starts recording every operation (see [`TraceOp`]).
    pub fn start_trace(&self) {
        let mut d = self.disk.borrow_mut();
        d.tracing = true;
        d.trace.clear();
    }

    /// The operations recorded since [`SimFs::start_trace`].
    pub fn trace(&self) -> Vec<TraceOp> {
        self.disk.borrow().trace.clone()
    }

    /// Records a test's marker in the trace.
    pub fn note(&self, v: u64) {
        self.disk.borrow_mut().record(TraceOp::Note(v));
    }

    /// The `n`-th fdatasync from now (0 = next) fails with `errno` (EIO, ENOSPC, ...).
    pub fn fail_fsync(&self, n: u64, errno: i32) {
        self.disk.borrow_mut().faults.fsync = Some((n, errno));
    }

    /// The `n`-th write from now fails with `errno`.
    pub fn fail_write(&self, n: u64, errno: i32) {
        self.disk.borrow_mut().faults.write = Some((n, errno));
    }

    /// The `n`-th file creation from now fails with `errno`.
    pub fn fail_create(&self, n: u64, errno: i32) {
        self.disk.borrow_mut().faults.create = Some((n, errno));
    }

    /// Makes [`FileSystem::check_direct_io`] fail, as on tmpfs.
    pub fn set_no_direct_io(&self, v: bool) {
        self.disk.borrow_mut().faults.no_direct_io = v;
    }

    /// Replaces the content of an existing file, durably (a test corrupting the disk).
    ///
    /// # Panics
    /// If the file does not exist.
    pub fn overwrite(&self, path: &Path, content: Vec<u8>) {
        let mut d = self.disk.borrow_mut();
        let ino = *d.names.get(path).expect("overwrite: no such file");
        d.inodes[ino] = Inode { durable: content.clone(), current: content, unsynced: Vec::new() };
    }

    /// Creates a file with `content`, durably (a test planting a file).
    pub fn plant(&self, path: &Path, content: Vec<u8>) {
        let mut d = self.disk.borrow_mut();
        let ino = d.inodes.len();
        d.inodes.push(Inode { durable: content.clone(), current: content, unsynced: Vec::new() });
        d.names.insert(path.to_path_buf(), ino);
        d.durable_names.insert(path.to_path_buf(), ino);
    }

    /// Creates a directory (a test preparing a data dir by hand).
    pub fn create_dir_for_test(&self, dir: &Path) {
        self.disk.borrow_mut().dirs.insert(dir.to_path_buf());
    }

    /// Content of every file in `dir` as it reads now.
    pub fn files_in(&self, dir: &Path) -> Vec<(String, Vec<u8>)> {
        self.disk.borrow().files_in(dir)
    }
}

/// Returns `Pending` once (waking itself), so other ready tasks run first.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

impl WalFile for SimFile {
    type Buffer = SimBuffer;

    async fn write_at(&self, buf: SimBuffer, pos: u64) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        if let Some(e) = fires(&mut d.faults.write) {
            return Err(errno(e));
        }
        let f = &mut d.inodes[self.inode];
        apply_write(&mut f.current, pos, &buf.0);
        f.unsynced.push((pos, buf.0.clone()));
        d.record(TraceOp::Write { inode: self.inode, pos, data: buf.0 });
        Ok(())
    }

    /// A write, then (after letting other tasks run, so that concurrent durable writes
    /// interleave as they do on a real device) a flush of the file: a crash in between
    /// may drop or tear it, and a failed flush loses it as a failed fdatasync does.
    async fn write_durable_at(&self, buf: SimBuffer, pos: u64) -> io::Result<()> {
        self.write_at(buf, pos).await?;
        yield_once().await;
        self.fdatasync().await
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let d = self.disk.borrow();
        let c = &d.inodes[self.inode].current;
        let start = (pos as usize).min(c.len());
        let end = (start + len).min(c.len());
        Ok(c[start..end].to_vec())
    }

    fn read_exact_at_blocking(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.disk.borrow();
        let c = &d.inodes[self.inode].current;
        let pos = pos as usize;
        if pos + buf.len() > c.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&c[pos..pos + buf.len()]);
        Ok(())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        if let Some(e) = fires(&mut d.faults.fsync) {
            // Writeback failed: the dirty data is gone for good, the page cache still
            // shows it, and the error is reported once.
            d.inodes[self.inode].unsynced.clear();
            return Err(errno(e));
        }
        d.apply(&TraceOp::Sync { inode: self.inode });
        d.record(TraceOp::Sync { inode: self.inode });
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.disk.borrow().inodes[self.inode].current.len() as u64)
    }
}

impl FileSystem for SimFs {
    type Buffer = SimBuffer;
    type File = SimFile;

    fn alloc_buffer(&self, len: usize) -> SimBuffer {
        SimBuffer(vec![0; len])
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.borrow_mut().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = self.disk.borrow();
        if !d.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(d.files_in(dir).into_iter().map(|(n, _)| n).collect())
    }

    fn check_direct_io(&self, _dir: &Path) -> Result<(), String> {
        if self.disk.borrow().faults.no_direct_io {
            return Err("its file system does not support O_DIRECT (simulated tmpfs)".into());
        }
        Ok(())
    }

    async fn open(&self, path: &Path) -> io::Result<SimFile> {
        let d = self.disk.borrow();
        let inode = *d.names.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(SimFile { disk: self.disk.clone(), inode })
    }

    async fn create(&self, path: &Path) -> io::Result<SimFile> {
        let mut d = self.disk.borrow_mut();
        if let Some(e) = fires(&mut d.faults.create) {
            return Err(errno(e));
        }
        if d.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let op = TraceOp::Create { path: path.to_path_buf(), inode: d.inodes.len() };
        d.apply(&op);
        let inode = d.inodes.len() - 1;
        d.record(op);
        Ok(SimFile { disk: self.disk.clone(), inode })
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        if !d.names.contains_key(from) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let op = TraceOp::Rename { from: from.to_path_buf(), to: to.to_path_buf() };
        d.apply(&op);
        d.record(op);
        Ok(())
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        if !d.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let op = TraceOp::Remove { path: path.to_path_buf() };
        d.apply(&op);
        d.record(op);
        Ok(())
    }

    async fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.apply(&TraceOp::SyncDir);
        d.record(TraceOp::SyncDir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::default().make().expect("executor").run(f)
    }

    #[test]
    fn crash_keeps_synced_data_and_decides_unsynced_writes() {
        block_on(async {
            let fs = SimFs::new();
            let dir = Path::new("/d");
            fs.create_dir_all(dir).unwrap();
            let f = fs.create(&dir.join("a")).await.unwrap();
            fs.sync_dir(dir).await.unwrap();
            f.write_at(SimBuffer(vec![1; 8]), 0).await.unwrap();
            f.fdatasync().await.unwrap();
            f.write_at(SimBuffer(vec![2; 8]), 8).await.unwrap();
            let disk = fs.disk();
            assert_eq!(disk.unsynced_writes(false), 1);
            let dropped = disk.crash(false, |_, _| WriteFate::Drop);
            assert_eq!(dropped.files_in(dir), vec![("a".to_string(), vec![1; 8])]);
            let torn = disk.crash(false, |_, _| WriteFate::Tear(3));
            let mut want = vec![1; 8];
            want.extend([2, 2, 2]);
            assert_eq!(torn.files_in(dir)[0].1, want);
        });
    }

    #[test]
    fn failed_fsync_loses_the_data_and_the_next_one_succeeds() {
        block_on(async {
            let fs = SimFs::new();
            let dir = Path::new("/d");
            fs.create_dir_all(dir).unwrap();
            let f = fs.create(&dir.join("a")).await.unwrap();
            fs.sync_dir(dir).await.unwrap();
            fs.fail_fsync(0, libc::EIO);
            f.write_at(SimBuffer(vec![7; 4]), 0).await.unwrap();
            assert_eq!(f.fdatasync().await.unwrap_err().raw_os_error(), Some(libc::EIO));
            assert_eq!(f.read_at(0, 4).await.unwrap(), vec![7; 4], "page cache still shows it");
            f.fdatasync().await.expect("the error is reported once");
            let after = fs.disk().crash(false, |_, _| WriteFate::Keep);
            assert_eq!(after.files_in(dir)[0].1, Vec::<u8>::new(), "never made durable");
        });
    }

    #[test]
    fn unsynced_directory_changes_are_lost_and_trace_replays() {
        block_on(async {
            let fs = SimFs::new();
            fs.start_trace();
            let dir = Path::new("/d");
            fs.create_dir_all(dir).unwrap();
            let f = fs.create(&dir.join("a")).await.unwrap();
            f.write_at(SimBuffer(vec![5; 4]), 0).await.unwrap();
            f.fdatasync().await.unwrap();
            assert!(fs.disk().crash(false, |_, _| WriteFate::Keep).files_in(dir).is_empty());
            fs.sync_dir(dir).await.unwrap();
            fs.rename(&dir.join("a"), &dir.join("b")).await.unwrap();
            let crashed = fs.disk().crash(false, |_, _| WriteFate::Keep);
            assert_eq!(crashed.files_in(dir), vec![("a".to_string(), vec![5; 4])]);
            let replayed = SimDisk::replay(&fs.trace());
            assert_eq!(replayed.files_in(dir), fs.files_in(dir));
        });
    }
}
