//! The small file-system trait every WAL file operation goes through, and its real
//! implementation: glommio `DmaFile` (io_uring, O_DIRECT).
//!
//! The trait exists so tests can run the same WAL code over [`crate::sim::SimFs`],
//! which tears writes, loses unsynced data on a simulated crash and fails fsync on
//! demand (raft-engine's `FileSystem`, TigerBeetle's testing storage).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

/// A buffer the WAL fills and hands to [`WalFile::write_at`].
pub trait IoBuffer {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
}

/// One segment file.
// The futures run on the shard's own thread (glommio is thread-per-core), so the
// missing `Send` bound that this lint warns about is intended.
#[allow(async_fn_in_trait)]
pub trait WalFile {
    type Buffer: IoBuffer;

    /// Writes the whole buffer at `pos` (block aligned). A short write is an error.
    async fn write_at(&self, buf: Self::Buffer, pos: u64) -> io::Result<()>;

    /// Reads up to `len` bytes at `pos` (block aligned); shorter only at end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>>;

    /// Reads exactly `buf.len()` bytes at `pos`, blocking the thread. Serves the engine's
    /// synchronous `Storage::entries` for entries no longer in the tail cache.
    fn read_exact_at_blocking(&self, pos: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes the whole buffer at `pos` and returns once that write is durable, as an
    /// `O_DSYNC` write does: the data and a cache flush behind it, in one operation, so
    /// several such writes can be in flight at once and the device merges their
    /// flushes. A short write is an error.
    async fn write_durable_at(&self, buf: Self::Buffer, pos: u64) -> io::Result<()>;

    /// Makes every completed write durable.
    async fn fdatasync(&self) -> io::Result<()>;

    /// Current file length.
    async fn size(&self) -> io::Result<u64>;
}

/// The directory-level operations.
#[allow(async_fn_in_trait)]
pub trait FileSystem {
    type Buffer: IoBuffer;
    type File: WalFile<Buffer = Self::Buffer>;

    /// A write buffer of `len` bytes (a multiple of the block size), suitably aligned.
    /// Its contents are unspecified; the WAL overwrites every byte.
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;

    /// Creates `dir` and its missing parents (start-up only).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// File names in `dir` (start-up only).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// `Err(reason)` when files in `dir` cannot be opened with O_DIRECT.
    fn check_direct_io(&self, dir: &Path) -> Result<(), String>;

    /// Called once when the WAL opens, after [`FileSystem::check_direct_io`] and before
    /// any segment is opened: a real file system can let its runtime probe the device
    /// on a file whose content it controls (see [`DmaFs`]). Nothing by default.
    async fn probe_device(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    /// Opens an existing file for reading and writing.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;

    /// Creates a new, empty file; fails if it exists.
    async fn create(&self, path: &Path) -> io::Result<Self::File>;

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    async fn remove(&self, path: &Path) -> io::Result<()>;

    /// Makes creations, renames and removals in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

impl IoBuffer for DmaBuffer {
    fn as_slice(&self) -> &[u8] {
        self.as_bytes()
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
}

/// The real file system: glommio's io_uring `DmaFile` with O_DIRECT. Must be used from
/// inside a glommio executor.
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaFs;

/// A segment opened through [`DmaFs`]: the O_DIRECT file the WAL writes through, the
/// same file opened again with `O_DSYNC` for durable writes (Linux cannot set
/// `O_DSYNC` per write through glommio, nor change it on an open descriptor), and a
/// buffered read-only descriptor for the synchronous cold-read path (O_DIRECT writes
/// invalidate the page cache range they cover, so buffered reads stay coherent).
#[derive(Debug)]
pub struct DmaSegmentFile {
    dma: DmaFile,
    dsync: DmaFile,
    reader: std::fs::File,
    path: PathBuf,
}

fn check_len(n: usize, len: usize, path: &Path) -> io::Result<()> {
    if n != len {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write to {}: {n} of {len} bytes", path.display()),
        ));
    }
    Ok(())
}

fn glommio_err(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(e)
}

impl WalFile for DmaSegmentFile {
    type Buffer = DmaBuffer;

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<()> {
        let len = buf.len();
        let n = self.dma.write_at(buf, pos).await.map_err(glommio_err)?;
        check_len(n, len, &self.path)
    }

    async fn write_durable_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<()> {
        let len = buf.len();
        let n = self.dsync.write_at(buf, pos).await.map_err(glommio_err)?;
        check_len(n, len, &self.path)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let r = self.dma.read_at(pos, len).await.map_err(glommio_err)?;
        Ok(r.to_vec())
    }

    fn read_exact_at_blocking(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reader.read_exact_at(buf, pos)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.dma.fdatasync().await.map_err(glommio_err)
    }

    async fn size(&self) -> io::Result<u64> {
        self.dma.file_size().await.map_err(glommio_err)
    }
}

impl DmaFs {
    async fn open_with(&self, path: &Path, create: bool) -> io::Result<DmaSegmentFile> {
        let dma =
            OpenOptions::new().read(true).write(true).create_new(create).dma_open(path).await.map_err(glommio_err)?;
        let dsync =
            OpenOptions::new().write(true).custom_flags(libc::O_DSYNC).dma_open(path).await.map_err(glommio_err)?;
        let reader = std::fs::File::open(path)?;
        Ok(DmaSegmentFile { dma, dsync, reader, path: path.to_path_buf() })
    }
}

/// Name of the file [`DmaFs::check_direct_io`] creates and removes at once; a crash can
/// leave it behind, so opening the WAL removes it.
pub const DIRECT_IO_PROBE_NAME: &str = ".odirect-probe";

impl FileSystem for DmaFs {
    type Buffer = DmaBuffer;
    type File = DmaSegmentFile;

    fn alloc_buffer(&self, len: usize) -> DmaBuffer {
        // From the executor's registered io_memory pool when it has room (pre-allocated
        // at executor start), otherwise an aligned heap allocation.
        glommio::allocate_dma_buffer(len)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn check_direct_io(&self, dir: &Path) -> Result<(), String> {
        let c = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized,
        // zero-initialised out-parameter that statfs fills.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(format!("statfs failed: {}", io::Error::last_os_error()));
        }
        if st.f_type as i64 == libc::TMPFS_MAGIC {
            return Err("it is on tmpfs, which has no O_DIRECT (and is not durable); \
                 point the data dir at a disk-backed file system such as ext4 or xfs"
                .into());
        }
        let probe = dir.join(DIRECT_IO_PROBE_NAME);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe);
        let _ = std::fs::remove_file(&probe);
        match opened {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                Err("its file system does not support O_DIRECT; point the data dir at a \
                 disk-backed file system such as ext4 or xfs"
                    .into())
            }
            Err(e) => Err(format!("cannot create a file in it: {e}")),
        }
    }

    /// glommio decides once per device and thread whether its polled io_uring works, by
    /// reading block 0 of the first O_DIRECT file it opens there. An empty file answers
    /// that read without touching the device, the probe wrongly succeeds, and from then
    /// on every DMA read and write goes to the polled ring, whose completions nobody
    /// reaps while the executor sleeps: a durable write then completes only at the next
    /// timer tick (4 ms here, measured), and reads on devices without poll queues fail
    /// with EOPNOTSUPP. The first DMA file the WAL's executor opens is therefore this
    /// one, with one written block, whatever state the segments are in.
    async fn probe_device(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join(DIRECT_IO_PROBE_NAME);
        {
            let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
            f.write_all_at(&[0u8; crate::format::BLOCK_BYTES], 0)?;
        }
        let opened = match OpenOptions::new().read(true).dma_open(&path).await {
            Ok(f) => f.close().await.map(|_| ()).map_err(glommio_err),
            Err(e) => Err(glommio_err(e)),
        };
        std::fs::remove_file(&path)?;
        opened
    }

    async fn open(&self, path: &Path) -> io::Result<DmaSegmentFile> {
        self.open_with(path, false).await
    }

    async fn create(&self, path: &Path) -> io::Result<DmaSegmentFile> {
        // glommio decides once per device whether its polled ring works by reading
        // block 0 of the first file it opens; an empty file answers that read without
        // touching the device, so glommio would wrongly enable polling and every later
        // read would fail with EOPNOTSUPP on devices without poll queues (virtio-blk).
        // Giving the new file one written block first makes the probe real.
        {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
            f.write_all_at(&[0u8; crate::format::BLOCK_BYTES], 0)?;
            f.sync_data()?;
        }
        self.open_with(path, false).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(glommio_err)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(glommio_err)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = glommio::io::Directory::open(dir).await.map_err(glommio_err)?;
        d.sync().await.map_err(glommio_err)?;
        d.close().await.map_err(glommio_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_io_check_accepts_disk_and_refuses_tmpfs() {
        let dir = std::env::temp_dir();
        let on_tmpfs = {
            let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: as in check_direct_io.
            assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
            st.f_type as i64 == libc::TMPFS_MAGIC
        };
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(DmaFs.check_direct_io(here), Ok(()), "the source tree is on disk");
        if Path::new("/dev/shm").is_dir() {
            let e = DmaFs.check_direct_io(Path::new("/dev/shm")).unwrap_err();
            assert!(e.contains("tmpfs"), "{e}");
        }
        if on_tmpfs {
            assert!(DmaFs.check_direct_io(&dir).is_err());
        }
    }
}
