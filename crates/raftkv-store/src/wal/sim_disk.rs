//! `SimDisk`: an in-memory [`Disk`] that behaves like a disk losing power.
//!
//! Every file keeps what was made durable (by `sync_data`) apart from what was only written
//! since; every directory keeps its durable names (as of its last `sync_dir`) apart from the
//! creations, renames and removals made since. [`SimDisk::crash`] is a power cut: it drops
//! whatever was not made durable — or, with [`Crash::Tear`], keeps a random prefix of the
//! unsynced writes of each file and cuts the last of those writes at a random byte, as a disk
//! might. Handles opened before a crash stop working, like a dead process's. Write and sync
//! failures (`ENOSPC`, `EIO`) can be injected. Directories themselves are always durable.
//!
//! It is deterministic: the same seed and the same operations give the same state, so a
//! failing crash test replays exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::{Disk, DiskFile};

/// How a simulated power cut treats unsynced data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Everything not covered by a completed sync is gone.
    LoseUnsynced,
    /// Per file, a random number of its unsynced writes survive, the last of them cut at a
    /// random byte (seeded: the same seed tears the same way).
    Tear { seed: u64 },
}

/// A failure to inject into the next operations of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Writes fail with "no space left on device".
    WriteNoSpace,
    /// Writes fail with an I/O error.
    WriteIo,
    /// Syncs fail with an I/O error (and make nothing durable).
    SyncIo,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct FileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Pending>,
}

fn apply(content: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let start = *offset as usize;
            if content.len() < start + data.len() {
                content.resize(start + data.len(), 0);
            }
            content[start..start + data.len()].copy_from_slice(data);
        }
        Pending::SetLen(len) => content.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<u64, FileData>,
    next_id: u64,
    live: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    /// Bumped by every crash: handles from an earlier epoch are dead.
    epoch: u64,
    faults: Vec<(Fault, u32)>,
    syncs: u64,
    /// Mutating operations left before the power goes off (None: no cut planned).
    power_left: Option<u64>,
}

impl State {
    /// Counts one mutating operation; fails it if the power is off.
    fn powered(&mut self) -> io::Result<()> {
        match &mut self.power_left {
            None => Ok(()),
            Some(0) => Err(io::Error::other("simulated power cut: the disk is gone")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }

    fn take_fault(&mut self, kinds: &[Fault]) -> Option<Fault> {
        let slot = self.faults.iter_mut().find(|(f, n)| kinds.contains(f) && *n > 0)?;
        slot.1 -= 1;
        Some(slot.0)
    }
}

fn fault_error(f: Fault) -> io::Error {
    match f {
        Fault::WriteNoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
        Fault::WriteIo | Fault::SyncIo => io::Error::from_raw_os_error(libc::EIO),
    }
}

/// The simulated file system. Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A power cut (see the module docs). Open handles stop working.
    pub fn crash(&self, how: Crash) {
        let mut s = self.lock();
        let mut rng = match how {
            Crash::Tear { seed } => Some(XorShift::new(seed)),
            Crash::LoseUnsynced => None,
        };
        let mut ids: Vec<u64> = s.files.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(file) = s.files.get_mut(&id) else { continue };
            if let Some(rng) = rng.as_mut() {
                let n = file.pending.len();
                let keep = rng.below(n as u64 + 1) as usize;
                for (i, op) in file.pending.iter().take(keep).enumerate() {
                    match op {
                        Pending::Write { offset, data } if i + 1 == keep => {
                            let cut = rng.below(data.len() as u64 + 1) as usize;
                            apply(
                                &mut file.durable,
                                &Pending::Write {
                                    offset: *offset,
                                    data: data[..cut].to_vec(),
                                },
                            );
                        }
                        op => apply(&mut file.durable, op),
                    }
                }
            }
            file.pending.clear();
            file.current = file.durable.clone();
        }
        s.power_left = None;
        s.live = s.durable.clone();
        let referenced: BTreeSet<u64> = s.live.values().copied().collect();
        s.files.retain(|id, _| referenced.contains(id));
        s.epoch += 1;
    }

    /// Lets `ops` more mutating operations (writes, syncs, renames, removals, creations)
    /// succeed, then fails every later one, as if the power went off there; [`crash`](Self::crash)
    /// then decides what the disk kept.
    pub fn power_off_after(&self, ops: u64) {
        self.lock().power_left = Some(ops);
    }

    /// Makes the next `count` operations of kind `fault` fail.
    pub fn inject(&self, fault: Fault, count: u32) {
        self.lock().faults.push((fault, count));
    }

    /// Clears every injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// How many file syncs have completed.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// The current (not necessarily durable) bytes of `path`.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let id = s.live.get(path)?;
        s.files.get(id).map(|f| f.current.clone())
    }

    /// Overwrites bytes of `path` durably, as damage on the medium would (tests flip bits).
    pub fn corrupt(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        let id = *s.live.get(path).ok_or_else(|| not_found(path))?;
        let file = s.files.get_mut(&id).ok_or_else(|| not_found(path))?;
        let op = Pending::Write {
            offset,
            data: bytes.to_vec(),
        };
        apply(&mut file.durable, &op);
        apply(&mut file.current, &op);
        Ok(())
    }

    /// Cuts `path` to `len` bytes durably (tests make torn tails).
    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let id = *s.live.get(path).ok_or_else(|| not_found(path))?;
        let file = s.files.get_mut(&id).ok_or_else(|| not_found(path))?;
        apply(&mut file.durable, &Pending::SetLen(len));
        apply(&mut file.current, &Pending::SetLen(len));
        Ok(())
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

/// A tiny deterministic generator (xorshift64*), so tearing needs no dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        if n == 0 {
            0
        } else {
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }
}

struct SimFile {
    state: Arc<Mutex<State>>,
    id: u64,
    epoch: u64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.epoch != self.epoch || !s.files.contains_key(&self.id) {
            return Err(io::Error::other("file handle from before a simulated crash"));
        }
        f(&mut s, self.id)
    }
}

impl DiskFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(|s, id| {
            let content = &s.files[&id].current;
            let start = (offset as usize).min(content.len());
            let n = buf.len().min(content.len() - start);
            buf[..n].copy_from_slice(&content[start..start + n]);
            Ok(n)
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|s, id| {
            s.powered()?;
            if let Some(f) = s.take_fault(&[Fault::WriteNoSpace, Fault::WriteIo]) {
                return Err(fault_error(f));
            }
            let op = Pending::Write {
                offset,
                data: buf.to_vec(),
            };
            let file = s.files.get_mut(&id).ok_or_else(|| io::Error::other("file vanished"))?;
            apply(&mut file.current, &op);
            file.pending.push(op);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|s, id| {
            s.powered()?;
            if let Some(f) = s.take_fault(&[Fault::SyncIo]) {
                return Err(fault_error(f));
            }
            let file = s.files.get_mut(&id).ok_or_else(|| io::Error::other("file vanished"))?;
            file.durable = file.current.clone();
            file.pending.clear();
            s.syncs += 1;
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|s, id| Ok(s.files[&id].current.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|s, id| {
            s.powered()?;
            let file = s.files.get_mut(&id).ok_or_else(|| io::Error::other("file vanished"))?;
            let op = Pending::SetLen(len);
            apply(&mut file.current, &op);
            file.pending.push(op);
            Ok(())
        })
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        for d in dir.ancestors() {
            s.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        let mut s = self.lock();
        let id = match s.live.get(path) {
            Some(id) => *id,
            None if create => {
                s.powered()?;
                if !path.parent().is_some_and(|d| s.dirs.contains(d)) {
                    return Err(not_found(path));
                }
                s.next_id += 1;
                let id = s.next_id;
                s.files.insert(id, FileData::default());
                s.live.insert(path.to_path_buf(), id);
                id
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            id,
            epoch: s.epoch,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.powered()?;
        let id = s.live.remove(from).ok_or_else(|| not_found(from))?;
        s.live.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.powered()?;
        s.live.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        Ok(s.live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.powered()?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        s.durable.retain(|p, _| !in_dir(p));
        let names: Vec<(PathBuf, u64)> = s
            .live
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        s.durable.extend(names);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.lock();
        s.live.contains_key(path) || s.dirs.contains(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/d")
    }

    #[test]
    fn a_crash_keeps_only_what_was_synced() {
        let disk = SimDisk::new();
        disk.create_dir_all(&dir()).unwrap();
        let path = dir().join("f");
        let f = disk.open(&path, true).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir(&dir()).unwrap();
        f.write_all_at(b" world", 5).unwrap();
        assert_eq!(disk.contents(&path).unwrap(), b"hello world");
        disk.crash(Crash::LoseUnsynced);
        assert_eq!(disk.contents(&path).unwrap(), b"hello");
        assert!(f.len().is_err(), "a handle from before the crash is dead");
    }

    #[test]
    fn a_file_whose_directory_was_never_synced_is_gone_after_a_crash() {
        let disk = SimDisk::new();
        disk.create_dir_all(&dir()).unwrap();
        let f = disk.open(&dir().join("new"), true).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        disk.crash(Crash::LoseUnsynced);
        assert!(!disk.exists(&dir().join("new")));
    }

    #[test]
    fn a_rename_is_durable_only_after_the_directory_sync() {
        let disk = SimDisk::new();
        disk.create_dir_all(&dir()).unwrap();
        for (name, body) in [("a", b"old"), ("b", b"new")] {
            let f = disk.open(&dir().join(name), true).unwrap();
            f.write_all_at(body, 0).unwrap();
            f.sync_data().unwrap();
        }
        disk.sync_dir(&dir()).unwrap();
        disk.rename(&dir().join("b"), &dir().join("a")).unwrap();
        disk.crash(Crash::LoseUnsynced);
        assert_eq!(disk.contents(&dir().join("a")).unwrap(), b"old");
        disk.rename(&dir().join("b"), &dir().join("a")).unwrap();
        disk.sync_dir(&dir()).unwrap();
        disk.crash(Crash::LoseUnsynced);
        assert_eq!(disk.contents(&dir().join("a")).unwrap(), b"new");
        assert!(!disk.exists(&dir().join("b")));
    }

    #[test]
    fn tearing_keeps_a_prefix_of_the_unsynced_writes() {
        for seed in 0..50 {
            let disk = SimDisk::new();
            disk.create_dir_all(&dir()).unwrap();
            let path = dir().join("f");
            let f = disk.open(&path, true).unwrap();
            disk.sync_dir(&dir()).unwrap();
            f.write_all_at(b"abc", 0).unwrap();
            f.sync_data().unwrap();
            f.write_all_at(b"defg", 3).unwrap();
            f.write_all_at(b"hij", 7).unwrap();
            disk.crash(Crash::Tear { seed });
            let got = disk.contents(&path).unwrap();
            assert!(b"abcdefghij".starts_with(&got), "seed {seed}: {got:?}");
            assert!(got.len() >= 3, "synced bytes survive (seed {seed})");
        }
    }

    #[test]
    fn injected_faults_fail_the_next_operations() {
        let disk = SimDisk::new();
        disk.create_dir_all(&dir()).unwrap();
        let f = disk.open(&dir().join("f"), true).unwrap();
        disk.inject(Fault::WriteNoSpace, 1);
        let e = f.write_all_at(b"x", 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        f.write_all_at(b"x", 0).unwrap();
        disk.inject(Fault::SyncIo, 1);
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        disk.crash(Crash::LoseUnsynced);
        assert!(
            disk.contents(&dir().join("f")).is_none(),
            "never synced into its directory"
        );
    }
}
