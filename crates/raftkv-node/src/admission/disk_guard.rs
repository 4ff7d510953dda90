//! `DiskGuard`: stop taking writes *before* the disk is full, and take them again by itself
//! once space returns.
//!
//! A write that reaches the log on a full disk fails inside openraft's storage layer, and
//! openraft 0.9 treats any storage error as fatal: the node would stop. So the node watches the
//! free space of its data directory's filesystem (every [`CHECK_INTERVAL`]) and raises an
//! alarm when it falls below `--min-free-mb`: while the alarm is on, client writes on this node
//! are refused at once with RESOURCE_EXHAUSTED (`raftkv-error: no-space`), reads keep working,
//! and Status and the metrics show it. The alarm clears when free space is back above the
//! reserve plus a margin ([`CLEAR_MARGIN_BYTES`], so it does not flap). Entries already in the
//! log, and replication, go on using the reserve, so nothing acknowledged is at risk.
//!
//! The check is per node: a leader whose disk is fine keeps accepting writes while a
//! follower's alarm is on; that follower then lives on its reserve (the operator sees its
//! alarm), and a majority of healthy disks keeps the cluster writable.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the free space is read.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Free space above the reserve needed to clear the alarm.
pub const CLEAR_MARGIN_BYTES: u64 = 8 * 1024 * 1024;

/// The alarm and the last free-space reading, shared with the write path and Status.
#[derive(Debug, Clone)]
pub struct DiskGuard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    reserve_bytes: u64,
    alarm: AtomicBool,
    free_bytes: AtomicU64,
}

impl DiskGuard {
    pub fn new(dir: PathBuf, reserve_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir,
                reserve_bytes,
                alarm: AtomicBool::new(false),
                free_bytes: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Whether writes are refused for lack of space.
    pub fn alarm(&self) -> bool {
        self.inner.alarm.load(Ordering::Acquire)
    }

    /// Free bytes at the last check (`u64::MAX` before the first).
    pub fn free_bytes(&self) -> u64 {
        self.inner.free_bytes.load(Ordering::Acquire)
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.inner.reserve_bytes
    }

    /// Reads the free space now and updates the alarm; returns the reading.
    pub fn check(&self) -> std::io::Result<u64> {
        let free = free_bytes(&self.inner.dir)?;
        self.inner.free_bytes.store(free, Ordering::Release);
        let was = self.alarm();
        let now = next_alarm(was, free, self.inner.reserve_bytes);
        if now != was {
            self.inner.alarm.store(now, Ordering::Release);
            let (free_mb, reserve_mb) = (free / (1024 * 1024), self.inner.reserve_bytes / (1024 * 1024));
            if now {
                tracing::error!(
                    free_mb,
                    reserve_mb,
                    "disk nearly full: refusing writes until space is freed"
                );
            } else {
                tracing::warn!(free_mb, reserve_mb, "disk space is back: taking writes again");
            }
        }
        Ok(free)
    }

    /// Checks every [`CHECK_INTERVAL`] until `shutdown`.
    pub fn spawn(&self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let guard = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = guard.check() {
                            tracing::warn!(dir = %guard.inner.dir.display(), "cannot read free disk space: {e}");
                        }
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        })
    }
}

/// The alarm after a reading of `free` bytes: on below the reserve, off again only above the
/// reserve plus [`CLEAR_MARGIN_BYTES`].
pub fn next_alarm(alarm: bool, free: u64, reserve: u64) -> bool {
    if alarm {
        free < reserve.saturating_add(CLEAR_MARGIN_BYTES)
    } else {
        free < reserve
    }
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable memory of
    // the right type; statvfs fills it in or returns -1.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialized the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(blocks.saturating_mul(block_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    #[test]
    fn the_alarm_rises_below_the_reserve_and_clears_only_past_the_margin() {
        let reserve = 64 * MB;
        assert!(!next_alarm(false, 65 * MB, reserve));
        assert!(next_alarm(false, 63 * MB, reserve));
        assert!(next_alarm(true, 65 * MB, reserve), "within the margin: still on");
        assert!(!next_alarm(true, reserve + CLEAR_MARGIN_BYTES, reserve));
    }

    #[test]
    fn free_space_of_a_real_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let guard = DiskGuard::new(dir.path().to_path_buf(), 0);
        assert!(guard.check().unwrap() > 0);
        assert!(!guard.alarm());
        let impossible = DiskGuard::new(dir.path().to_path_buf(), u64::MAX);
        impossible.check().unwrap();
        assert!(impossible.alarm(), "a reserve larger than any disk raises the alarm");
    }
}
