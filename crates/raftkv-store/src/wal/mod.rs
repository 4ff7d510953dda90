//! The Raft log's own write-ahead log: segment files of checksummed records, group commit on
//! one I/O thread, the vote and commit index in small files beside them. Replaces sled for the
//! log, so a log flush never has to write the state machine's pages too.
//!
//! ## On disk (`<data dir>/wal/`)
//! - `<seq>-<first index>.wal` (both 16 hex digits): segments, preallocated to
//!   [`WalOptions::segment_bytes`] with zeros, holding records in log order (format in
//!   `record`); a segment is synced before the next one is created, so only the last can end
//!   in a torn write;
//! - `vote`, `purged`: replaced by write-temp / fsync / rename / fsync-directory, so a crash
//!   leaves the old or the new value; `committed`: replaced the same way but not synced (it is
//!   advisory: openraft re-learns the commit index from the leader), and only once the entries
//!   it names are durable.
//!
//! ## The contract openraft relies on
//! - [`Wal::append`] makes entries readable at once (they are kept in memory) and returns
//!   without waiting for the disk; the I/O thread writes and `fdatasync`s them — one sync for
//!   every append waiting — and only then calls each append's `done`, in order.
//! - Vote, truncate and purge go through the same queue, behind every append submitted before
//!   them, and complete when durable; a failed write stops the log (every later operation
//!   fails), as openraft expects of storage.
//! - `purge` records the purge point durably before deleting whole segments behind it.
//!
//! ## Opening
//! Every segment is read and every record's checksums checked. A write cut short at the end of
//! the last segment (a crash during an append) is cut off, and the node starts with every
//! entry before it; a damaged record anywhere else refuses start-up, naming the file and the
//! offset.
//!
//! ## Seams
//! Every file operation goes through [`Disk`] ([`StdDisk`] in production,
//! [`sim_disk::SimDisk`] in crash tests). With [`IoMode::Inline`] the I/O work runs in the
//! caller, with no thread, so a deterministic simulator can drive it.

pub mod disk;
mod record;
pub mod sim_disk;
mod writer;

use std::collections::VecDeque;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::codec;
use crate::error::StoreError;
use crate::types::{Entry, LeaderId, LogId, Vote};
use crate::StoreObserver;
pub use disk::{Disk, DiskFile, StdDisk};
use record::{End, Kind, ENTRY_HEADER_BYTES, PAYLOAD_OFFSET};
use writer::{Op, Segment, Writer};

/// What an operation's completion is told.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";
const COMMITTED_FILE: &str = "committed";
const SEGMENT_SUFFIX: &str = ".wal";

/// Where the log's I/O runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// On one dedicated thread (`raftkv-wal`): appends return at once.
    Thread,
    /// In the caller, before each call returns (tests, a simulator).
    Inline,
}

/// Tuning of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Size segments are preallocated to (a segment grows past it only for one huge record).
    pub segment_bytes: u64,
    /// Most bytes of entries kept in memory once durable (entries not yet durable always are);
    /// older ones are read back from their segment.
    pub cache_bytes: usize,
    pub io: IoMode,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 16 * 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            io: IoMode::Thread,
        }
    }
}

/// Where an entry's record lives.
#[derive(Clone)]
struct Loc {
    segment: u64,
    file: Arc<dyn DiskFile>,
    offset: u64,
    len: u32,
}

struct Slot {
    log_id: LogId,
    entry: Option<Entry>,
    loc: Option<Loc>,
    /// Encoded size, for the cache budget.
    bytes: usize,
}

/// The log as memory knows it: what readers see.
struct MemLog {
    /// Index of `slots[0]`.
    first: u64,
    slots: VecDeque<Slot>,
    purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Bytes of entries held in `slots`.
    cached: usize,
    cache_budget: usize,
    /// No slot below this index holds its entry in memory: eviction starts here, so it never
    /// walks the evicted head of the log again.
    evict_from: u64,
}

impl MemLog {
    fn last_log_id(&self) -> Option<LogId> {
        self.slots.back().map(|s| s.log_id).or(self.purged)
    }

    fn next_index(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    fn slot(&self, index: u64) -> Option<&Slot> {
        index.checked_sub(self.first).and_then(|i| self.slots.get(i as usize))
    }

    /// Records where durable entries live, then drops the oldest cached durable entries beyond
    /// the budget.
    fn written(&mut self, locs: Vec<(LogId, Loc)>) {
        for (log_id, loc) in locs {
            if let Some(i) = log_id.index.checked_sub(self.first) {
                if let Some(slot) = self.slots.get_mut(i as usize) {
                    if slot.log_id == log_id {
                        slot.loc = Some(loc);
                    }
                }
            }
        }
        let mut index = self.evict_from.max(self.first);
        while self.cached > self.cache_budget {
            let Some(slot) = index
                .checked_sub(self.first)
                .and_then(|i| self.slots.get_mut(i as usize))
            else {
                break;
            };
            if slot.loc.is_none() {
                break; // not durable yet, nor is anything appended after it
            }
            if slot.entry.take().is_some() {
                self.cached -= slot.bytes;
            }
            index += 1;
        }
        self.evict_from = index;
    }

    /// Drops the slots after `after` (keeps `after`).
    fn truncate_after(&mut self, after: Option<u64>) {
        let keep = after.map_or(0, |a| (a + 1).saturating_sub(self.first)) as usize;
        while self.slots.len() > keep {
            if let Some(slot) = self.slots.pop_back() {
                if slot.entry.is_some() {
                    self.cached -= slot.bytes;
                }
            }
        }
        self.evict_from = self.evict_from.min(self.next_index());
    }

    /// Drops the slots up to `upto` (inclusive).
    fn purge(&mut self, upto: LogId) {
        while self.first <= upto.index {
            match self.slots.pop_front() {
                Some(slot) => {
                    if slot.entry.is_some() {
                        self.cached -= slot.bytes;
                    }
                }
                None => break,
            }
            self.first += 1;
        }
        if self.slots.is_empty() {
            self.first = upto.index + 1;
        }
        self.purged = Some(upto);
    }
}

struct Shared {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    mem: Mutex<MemLog>,
}

impl Shared {
    fn mem(&self) -> MutexGuard<'_, MemLog> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The write-ahead log. Cheap to clone: clones share it; the I/O thread stops when the last
/// clone is dropped, after finishing what was queued.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    io: Arc<writer::Io>,
}

fn corrupt(path: &Path, detail: String) -> StoreError {
    StoreError::Corrupt {
        what: format!("write-ahead log file {}", path.display()),
        detail,
    }
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (seq, first) = stem.split_once('-')?;
    Some((u64::from_str_radix(seq, 16).ok()?, u64::from_str_radix(first, 16).ok()?))
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}{SEGMENT_SUFFIX}")
}

/// The log id an entry record's payload starts with.
fn payload_log_id(payload: &[u8]) -> Option<LogId> {
    let word = |i: usize| {
        payload
            .get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    Some(LogId::new(
        LeaderId {
            term: word(8)?,
            node_id: word(16)?,
        },
        word(0)?,
    ))
}

fn read_meta<T: serde::de::DeserializeOwned>(disk: &dyn Disk, path: &Path) -> Result<Option<T>, StoreError> {
    match disk::read_file(disk, path).map_err(|e| StoreError::io(path, e))? {
        None => Ok(None),
        Some(bytes) => codec::decode(&bytes)
            .map(Some)
            .map_err(|e| corrupt(path, e.to_string())),
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`: reads the vote and purge point, checks every
    /// segment, cuts off a torn tail. See the module docs for what refuses to open.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        options: WalOptions,
        observer: Arc<dyn StoreObserver>,
    ) -> Result<Wal, StoreError> {
        disk.create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let vote: Option<Vote> = read_meta(&*disk, &dir.join(VOTE_FILE))?;
        let purged: Option<LogId> = read_meta(&*disk, &dir.join(PURGED_FILE))?;
        // Advisory: a damaged or missing commit index is re-learned from the leader.
        let committed: Option<LogId> = match read_meta::<Option<LogId>>(&*disk, &dir.join(COMMITTED_FILE)) {
            Ok(c) => c.flatten(),
            Err(e) => {
                tracing::warn!("ignoring the saved commit index: {e}");
                None
            }
        };
        let names = disk.list(dir).map_err(|e| StoreError::io(dir, e))?;
        let mut segment_names: Vec<(u64, u64, String)> = Vec::new();
        for name in names {
            if name.ends_with(".tmp") {
                let path = dir.join(&name);
                disk.remove(&path).map_err(|e| StoreError::io(&path, e))?;
            } else if let Some((seq, first)) = parse_segment_name(&name) {
                segment_names.push((seq, first, name));
            }
        }
        segment_names.sort();

        let mut slots: VecDeque<Slot> = VecDeque::new();
        let mut first: Option<u64> = None;
        let mut segments: Vec<Segment> = Vec::new();
        let mut next_expected: Option<u64> = None;
        let count = segment_names.len();
        for (n, (seq, first_index, name)) in segment_names.into_iter().enumerate() {
            let path = dir.join(&name);
            let file = disk.open(&path, false).map_err(|e| StoreError::io(&path, e))?;
            let len = usize::try_from(file.len().map_err(|e| StoreError::io(&path, e))?)
                .map_err(|_| corrupt(&path, "larger than memory".into()))?;
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, 0)
                .map_err(|e| StoreError::io(&path, e))?;
            let last = n + 1 == count;
            let header_ok = record::check_segment_header(&bytes);
            if let Err(why) = header_ok {
                // The newest segment may have been cut short while it was being created.
                let cut_short = record::segment_header().starts_with(&bytes[..bytes.len().min(16)])
                    || bytes.iter().all(|b| *b == 0);
                if last && cut_short {
                    tracing::warn!(file = %path.display(), "removing a segment whose creation a crash cut short");
                    disk.remove(&path).map_err(|e| StoreError::io(&path, e))?;
                    disk.sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;
                    continue;
                }
                return Err(corrupt(&path, why));
            }
            let (found, end) = record::scan(&bytes);
            let end_at = match end {
                End::Clean { at } => at,
                End::Torn { at } if last => {
                    tracing::warn!(
                        file = %path.display(),
                        offset = at,
                        "cutting off a log write a crash cut short (never acknowledged)"
                    );
                    file.set_len(at as u64).map_err(|e| StoreError::io(&path, e))?;
                    if let Err(e) = file.preallocate(options.segment_bytes.max(at as u64)) {
                        tracing::warn!(file = %path.display(), "could not preallocate a log segment: {e}");
                    }
                    file.sync_data().map_err(|e| StoreError::io(&path, e))?;
                    at
                }
                End::Torn { at } => {
                    return Err(corrupt(
                        &path,
                        format!("record at offset {at} is incomplete, and later segments exist"),
                    ))
                }
                End::Damaged { at, why } => return Err(corrupt(&path, format!("record at offset {at}: {why}"))),
            };
            let mut last_index = None;
            for f in &found {
                let payload = f.payload(&bytes);
                let Kind::Entry = f.kind;
                let log_id = payload_log_id(payload)
                    .ok_or_else(|| corrupt(&path, format!("entry record at offset {} is too short", f.offset)))?;
                let index = log_id.index;
                if last_index.is_none() && index != first_index {
                    return Err(corrupt(
                        &path,
                        format!("first entry is {index}, but the file name says {first_index}"),
                    ));
                }
                // Indexes rise through the files; past the purge point they are contiguous
                // (behind it, a purge may have left older entries in a segment still in use).
                if let Some(expected) = next_expected {
                    let purged_below = purged.is_some_and(|p| index <= p.index + 1 && expected <= p.index + 1);
                    if index < expected || (index != expected && !purged_below) {
                        return Err(corrupt(
                            &path,
                            format!("entry {index} at offset {} follows entry {}", f.offset, expected - 1),
                        ));
                    }
                }
                next_expected = Some(index + 1);
                last_index = Some(index);
                if purged.is_some_and(|p| index <= p.index) {
                    continue;
                }
                if first.is_none() {
                    first = Some(index);
                }
                // Checked here, while the bytes are in memory, so the start-up check need not
                // read the log again (`verify`).
                let entry: Entry = codec::decode_bare(&payload[ENTRY_HEADER_BYTES..]).map_err(|e| {
                    corrupt(
                        &path,
                        format!("entry {index} at offset {} does not decode: {e}", f.offset),
                    )
                })?;
                if entry.log_id != log_id {
                    return Err(corrupt(
                        &path,
                        format!(
                            "record at offset {} is labelled {log_id:?} but holds {:?}",
                            f.offset, entry.log_id
                        ),
                    ));
                }
                slots.push_back(Slot {
                    log_id,
                    entry: None,
                    loc: Some(Loc {
                        segment: seq,
                        file: file.clone(),
                        offset: f.offset as u64,
                        len: f.len as u32,
                    }),
                    bytes: f.len,
                });
            }
            segments.push(Segment {
                seq,
                first_index,
                path,
                file,
                end: end_at as u64,
            });
        }
        let first = match (first, purged) {
            (Some(f), Some(p)) if f != p.index + 1 => {
                return Err(StoreError::Corrupt {
                    what: format!("write-ahead log in {}", dir.display()),
                    detail: format!(
                        "entries after the purge point {} start at {f}: entries are missing",
                        p.index
                    ),
                })
            }
            (Some(f), _) => f,
            (None, Some(p)) => p.index + 1,
            (None, None) => 0,
        };
        // Nothing read at open is held in memory: eviction starts after it.
        let evict_from = first + slots.len() as u64;
        let mem = MemLog {
            first,
            slots,
            purged,
            vote,
            committed,
            cached: 0,
            cache_budget: options.cache_bytes,
            evict_from,
        };
        let shared = Arc::new(Shared {
            disk: disk.clone(),
            dir: dir.to_path_buf(),
            mem: Mutex::new(mem),
        });
        let writer = Writer::new(shared.clone(), segments, options.segment_bytes, observer);
        let io = writer::Io::start(writer, options.io).map_err(|e| StoreError::io(dir, e))?;
        let wal = Wal { shared, io };
        // Segments wholly behind the purge point (a crash between recording a purge and
        // deleting them) go now.
        if let Some(p) = purged {
            wal.submit_and_forget(Op::DropPurgedSegments { upto: p.index });
        }
        Ok(wal)
    }

    fn submit_and_forget(&self, op: Op) {
        self.io.submit(op);
    }

    async fn submit_and_wait(&self, make: impl FnOnce(Done) -> Op) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.io.submit(make(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the write-ahead log's I/O thread is gone")))
    }

    /// Appends `entries` (which must continue the log): readable on return, durable when
    /// `done` is called with `Ok`.
    pub fn append(&self, entries: impl IntoIterator<Item = Entry>, done: Done) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut records = Vec::new();
        let mut mem_slots = Vec::new();
        let mut payload = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            payload.clear();
            payload.extend_from_slice(&log_id.index.to_le_bytes());
            payload.extend_from_slice(&log_id.leader_id.term.to_le_bytes());
            payload.extend_from_slice(&log_id.leader_id.node_id.to_le_bytes());
            codec::encode_bare_into(&entry, &mut payload).map_err(io::Error::other)?;
            let start = buf.len();
            record::encode_record(&mut buf, Kind::Entry, &payload);
            let len = buf.len() - start;
            records.push((log_id, start, len));
            mem_slots.push(Slot {
                log_id,
                entry: Some(entry),
                loc: None,
                bytes: len,
            });
        }
        if records.is_empty() {
            done(Ok(()));
            return Ok(());
        }
        {
            let mut mem = self.shared.mem();
            let got = records[0].0.index;
            if mem.slots.is_empty() && mem.purged.is_none() {
                // A log that never held anything may start anywhere.
                mem.first = got;
            }
            let expected = mem.next_index();
            if got != expected {
                return Err(io::Error::other(format!(
                    "append of entry {got} does not continue the log (next is {expected})"
                )));
            }
            for slot in mem_slots {
                mem.cached += slot.bytes;
                mem.slots.push_back(slot);
            }
        }
        self.io.submit(Op::Append { buf, records, done });
        Ok(())
    }

    /// Removes every entry after `after` (keeps `after`; `None`: all), durably.
    pub async fn truncate_after(&self, after: Option<LogId>) -> io::Result<()> {
        let after = after.map(|l| l.index);
        self.submit_and_wait(|done| Op::Truncate { after, done }).await
    }

    /// Forgets every entry up to `upto` (inclusive): records it durably, then deletes the
    /// segments wholly behind it.
    pub async fn purge(&self, upto: LogId) -> io::Result<()> {
        self.submit_and_wait(|done| Op::Purge { upto, done }).await
    }

    /// Saves the vote durably, after every append submitted before it.
    pub async fn save_vote(&self, vote: &Vote) -> io::Result<()> {
        let bytes = codec::encode(vote).map_err(io::Error::other)?;
        let vote = *vote;
        let r = self.submit_and_wait(|done| Op::Vote { bytes, done }).await;
        if r.is_ok() {
            self.shared.mem().vote = Some(vote);
        }
        r
    }

    /// Notes the commit index; the I/O thread writes it to disk lazily, once the entries it
    /// covers are durable (no I/O, and no wake-up of that thread, here: this runs before every
    /// apply).
    pub fn save_committed(&self, committed: Option<LogId>) {
        self.shared.mem().committed = committed;
    }

    /// Waits until everything submitted so far is durable.
    pub async fn sync(&self) -> io::Result<()> {
        self.submit_and_wait(|done| Op::Sync { done }).await
    }

    pub fn vote(&self) -> Option<Vote> {
        self.shared.mem().vote
    }

    pub fn committed(&self) -> Option<LogId> {
        self.shared.mem().committed
    }

    pub fn purged(&self) -> Option<LogId> {
        self.shared.mem().purged
    }

    /// The id of the last entry (or the purge point, when the log is empty).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.shared.mem().last_log_id()
    }

    /// The id of the last entry held, ignoring purges.
    pub fn last_entry_log_id(&self) -> Option<LogId> {
        self.shared.mem().slots.back().map(|s| s.log_id)
    }

    /// Entries held.
    pub fn entry_count(&self) -> usize {
        self.shared.mem().slots.len()
    }

    /// The entries in `range` that the log holds (from the first held one on), stopping once
    /// they hold `max_bytes` (at least one entry).
    pub fn entries(&self, range: RangeInclusive<u64>, max_bytes: usize) -> io::Result<Vec<Entry>> {
        enum Got {
            Cached(Entry),
            OnDisk(LogId, Loc),
        }
        let mut got = Vec::new();
        {
            let mem = self.shared.mem();
            let start = (*range.start()).max(mem.first);
            let end = (*range.end()).min(mem.next_index().saturating_sub(1));
            let mut bytes = 0;
            let mut index = start;
            while index <= end {
                let Some(slot) = mem.slot(index) else { break };
                if !got.is_empty() && bytes + slot.bytes > max_bytes {
                    break;
                }
                bytes += slot.bytes;
                match (&slot.entry, &slot.loc) {
                    (Some(e), _) => got.push(Got::Cached(e.clone())),
                    (None, Some(loc)) => got.push(Got::OnDisk(slot.log_id, loc.clone())),
                    (None, None) => {
                        return Err(io::Error::other(format!(
                            "entry {index} is neither in memory nor on disk"
                        )))
                    }
                }
                index += 1;
            }
        }
        got.into_iter()
            .map(|g| match g {
                Got::Cached(e) => Ok(e),
                Got::OnDisk(log_id, loc) => read_entry(&self.shared, log_id, &loc),
            })
            .collect()
    }

    /// The start-up check of the log: how many entries it holds. Opening already read every
    /// record, checked both its checksums and decoded its entry, and refuses a damaged one.
    pub fn verify(&self) -> Result<usize, StoreError> {
        Ok(self.entry_count())
    }

    /// Bytes the log's files take on disk.
    pub fn size_on_disk(&self) -> u64 {
        let disk = &self.shared.disk;
        let Ok(names) = disk.list(&self.shared.dir) else {
            return 0;
        };
        names
            .iter()
            .filter_map(|n| disk.open(&self.shared.dir.join(n), false).ok())
            .filter_map(|f| f.len().ok())
            .sum()
    }
}

fn read_entry(shared: &Shared, log_id: LogId, loc: &Loc) -> io::Result<Entry> {
    let mut record = vec![0; loc.len as usize];
    loc.file.read_exact_at(&mut record, loc.offset)?;
    let where_ = || {
        format!(
            "entry {} in segment {} at offset {}",
            log_id.index, loc.segment, loc.offset
        )
    };
    if !record::payload_intact(&record) {
        return Err(io::Error::other(format!(
            "{}: checksum mismatch (the file in {} was damaged after it was written)",
            where_(),
            shared.dir.display()
        )));
    }
    let payload = &record[PAYLOAD_OFFSET..record.len() - 1];
    let entry: Entry = codec::decode_bare(&payload[ENTRY_HEADER_BYTES..])
        .map_err(|e| io::Error::other(format!("{}: {e}", where_())))?;
    if entry.log_id != log_id {
        return Err(io::Error::other(format!(
            "{}: holds entry {:?}",
            where_(),
            entry.log_id
        )));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::sim_disk::SimDisk;

    fn mem_with(durable: u64, pending: u64, budget: usize) -> (MemLog, Arc<dyn DiskFile>) {
        let disk = SimDisk::new();
        disk.create_dir_all(Path::new("/d")).unwrap();
        let file = disk.open(Path::new("/d/f"), true).unwrap();
        let mut mem = MemLog {
            first: 1,
            slots: VecDeque::new(),
            purged: None,
            vote: None,
            committed: None,
            cached: 0,
            cache_budget: budget,
            evict_from: 1,
        };
        for index in 1..=durable + pending {
            let log_id = LogId::new(LeaderId { term: 1, node_id: 1 }, index);
            mem.slots.push_back(Slot {
                log_id,
                entry: Some(Entry {
                    log_id,
                    payload: openraft::EntryPayload::Blank,
                }),
                loc: None,
                bytes: 100,
            });
            mem.cached += 100;
        }
        (mem, file)
    }

    fn loc(file: &Arc<dyn DiskFile>, index: u64) -> Loc {
        Loc {
            segment: 1,
            file: file.clone(),
            offset: index * 100,
            len: 100,
        }
    }

    #[test]
    fn durable_entries_leave_memory_oldest_first_down_to_the_budget_and_pending_ones_stay() {
        let (mut mem, file) = mem_with(10, 5, 700);
        let written = (1..=10).map(|i| (mem.slot(i).unwrap().log_id, loc(&file, i))).collect();
        mem.written(written);
        // 15 entries of 100 bytes, budget 700: the 8 oldest durable ones go.
        assert_eq!(mem.cached, 700);
        let held: Vec<bool> = mem.slots.iter().map(|s| s.entry.is_some()).collect();
        assert_eq!(held, [vec![false; 8], vec![true; 7]].concat());
        assert_eq!(mem.evict_from, 9);
        // Nothing is durable past 10, so a smaller budget stops at the first pending entry.
        mem.cache_budget = 100;
        mem.written(Vec::new());
        assert_eq!(mem.cached, 500);
        assert_eq!(mem.evict_from, 11);
        // A truncation below the cursor brings it back, so re-appended entries can go again.
        mem.truncate_after(Some(5));
        assert_eq!((mem.cached, mem.evict_from), (0, 6));
    }
}
