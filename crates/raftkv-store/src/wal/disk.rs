//! `Disk`: every file operation the write-ahead log makes, behind one narrow trait, so the log
//! can run on the real file system ([`StdDisk`]) or on a simulated one that loses what was
//! never synced at a simulated power cut ([`SimDisk`](super::sim_disk::SimDisk)).
//!
//! The trait is the WAL's whole contact with the outside world: open, read and write at an
//! offset, sync a file's data, set its length, preallocate, rename, remove, list a directory
//! and sync a directory. Nothing in the WAL touches `std::fs` except through it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One open file.
#[allow(clippy::len_without_is_empty)] // a file's length is an I/O result, not a collection size
pub trait DiskFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at or past the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write to this file so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Cuts or extends (with zeros) the file to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves `len` bytes on disk (zeros) so later writes need no allocation; may be a plain
    /// [`set_len`](Self::set_len) where the platform has nothing better.
    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// The file system, as the WAL uses it.
pub trait Disk: Send + Sync + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens `path` for reading and writing, creating it (empty) when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdDisk;

struct StdFile(std::fs::File);

impl DiskFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("preallocation too large"))?;
            // SAFETY: plain syscall on a file descriptor this struct owns; no memory is shared.
            let rc = unsafe { libc::posix_fallocate(self.0.as_raw_fd(), 0, len) };
            if rc == 0 {
                return Ok(());
            }
            // Not supported by the file system (tmpfs on old kernels, some overlays): grow it.
            if rc != libc::EOPNOTSUPP && rc != libc::EINVAL {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        self.0.set_len(len)
    }
}

impl Disk for StdDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Reads the whole file at `path`, `None` when it does not exist.
pub fn read_file(disk: &dyn Disk, path: &Path) -> io::Result<Option<Vec<u8>>> {
    if !disk.exists(path) {
        return Ok(None);
    }
    let file = disk.open(path, false)?;
    let len = usize::try_from(file.len()?).map_err(|_| io::Error::other("file too large"))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(Some(buf))
}

/// Whether [`replace_file`] waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable on return: the new file's data and the directory are synced.
    Now,
    /// Atomic but not synced: a crash may leave the old content (for advisory values).
    Later,
}

/// Replaces the file at `path` with `bytes`, atomically: write a temporary file, rename it over
/// `path` — with [`Durability::Now`] syncing the temporary file first and the directory after. A
/// crash leaves the old content or the new, never a mix.
pub fn replace_file(disk: &dyn Disk, path: &Path, bytes: &[u8], sync: Durability) -> io::Result<()> {
    let tmp = tmp_path(path);
    if disk.exists(&tmp) {
        disk.remove(&tmp)?;
    }
    let file = disk.open(&tmp, true)?;
    file.write_all_at(bytes, 0)?;
    if sync == Durability::Now {
        file.sync_data()?;
    }
    disk.rename(&tmp, path)?;
    match (sync, path.parent()) {
        (Durability::Now, Some(dir)) => disk.sync_dir(dir),
        _ => Ok(()),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}
