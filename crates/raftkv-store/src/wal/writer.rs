//! The write-ahead log's I/O: [`Writer`] does every write, in submission order, and [`Io`]
//! runs it — on one dedicated thread, or inline in the caller ([`IoMode::Inline`]).
//!
//! Group commit: the thread takes every operation waiting, writes the appends among them into
//! the active segment, syncs once, then completes them in order. A vote, truncate, purge or
//! sync is a barrier: the appends before it are made durable first. After a failed write or
//! sync the writer stops: that operation and every later one fail (openraft then stops the
//! node) — nothing is acknowledged that might not be on disk.

use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::disk::{self, DiskFile};
use super::record::{segment_header, SEGMENT_HEADER_BYTES};
use super::{segment_name, Done, IoMode, Loc, Shared, COMMITTED_FILE, PURGED_FILE, VOTE_FILE};
use crate::codec;
use crate::types::LogId;
use crate::StoreObserver;

/// One queued operation.
pub(super) enum Op {
    Append {
        /// The records, back to back.
        buf: Vec<u8>,
        /// Each record's entry id, offset in `buf` and length.
        records: Vec<(LogId, usize, usize)>,
        done: Done,
    },
    Truncate {
        after: Option<u64>,
        done: Done,
    },
    Purge {
        upto: LogId,
        done: Done,
    },
    DropPurgedSegments {
        upto: u64,
    },
    Vote {
        bytes: Vec<u8>,
        done: Done,
    },
    Sync {
        done: Done,
    },
}

/// A segment file.
pub(super) struct Segment {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
    pub file: Arc<dyn DiskFile>,
    /// Where the next record goes.
    pub end: u64,
}

/// How often (in group commits) a changed commit index is written out.
const COMMITTED_EVERY: u32 = 64;

/// Does the log's writes. Owned by the I/O thread (or, inline, by a mutex).
pub(super) struct Writer {
    shared: Arc<Shared>,
    segments: Vec<Segment>,
    segment_bytes: u64,
    observer: Arc<dyn StoreObserver>,
    /// Set after a failed write or sync: the log is stopped.
    failed: Option<String>,
    /// Appends written but not yet synced: their dones and where their entries went.
    unsynced: Vec<(Done, Vec<(LogId, Loc)>)>,
    /// The highest index known durable.
    durable_index: u64,
    /// The commit index last written to its file, and group commits since.
    committed_written: Option<LogId>,
    commits_since_committed: u32,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        segments: Vec<Segment>,
        segment_bytes: u64,
        observer: Arc<dyn StoreObserver>,
    ) -> Self {
        let durable_index = shared.mem().last_log_id().map_or(0, |l| l.index);
        Self {
            shared,
            segments,
            segment_bytes,
            observer,
            failed: None,
            unsynced: Vec::new(),
            durable_index,
            committed_written: None,
            commits_since_committed: 0,
        }
    }

    fn stopped(&self) -> io::Error {
        io::Error::other(format!(
            "the write-ahead log stopped after an earlier failure: {}",
            self.failed.as_deref().unwrap_or("unknown")
        ))
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::error!("write-ahead log failed, no further writes: {e}");
        self.failed = Some(e.to_string());
        for (done, _) in self.unsynced.drain(..) {
            done(Err(io::Error::new(e.kind(), e.to_string())));
        }
    }

    /// Runs `ops` in order (one group commit for the appends between barriers).
    pub(super) fn process(&mut self, ops: Vec<Op>) {
        for op in ops {
            match op {
                Op::Append { buf, records, done } => {
                    if self.failed.is_some() {
                        done(Err(self.stopped()));
                        continue;
                    }
                    match self.write_records(&buf, &records) {
                        Ok(locs) => self.unsynced.push((done, locs)),
                        Err(e) => {
                            self.fail(&e);
                            done(Err(e));
                        }
                    }
                }
                barrier => {
                    self.sync_unsynced();
                    self.barrier(barrier);
                }
            }
        }
        self.sync_unsynced();
    }

    fn barrier(&mut self, op: Op) {
        let result = |w: &mut Self, r: io::Result<()>| {
            if let Err(e) = &r {
                w.fail(e);
            }
            r
        };
        match op {
            Op::Append { .. } => {}
            Op::Sync { done } => done(match &self.failed {
                Some(_) => Err(self.stopped()),
                None => Ok(()),
            }),
            Op::Vote { bytes, done } => {
                if self.failed.is_some() {
                    return done(Err(self.stopped()));
                }
                let path = self.shared.dir.join(VOTE_FILE);
                let r = disk::replace_file(&*self.shared.disk, &path, &bytes, disk::Durability::Now);
                done(result(self, r));
            }
            Op::Truncate { after, done } => {
                if self.failed.is_some() {
                    return done(Err(self.stopped()));
                }
                let r = self.truncate(after);
                done(result(self, r));
            }
            Op::Purge { upto, done } => {
                if self.failed.is_some() {
                    return done(Err(self.stopped()));
                }
                let r = self.purge(upto);
                done(result(self, r));
            }
            Op::DropPurgedSegments { upto } => {
                if self.failed.is_none() {
                    if let Err(e) = self.drop_segments_through(upto) {
                        tracing::warn!("could not delete purged log segments: {e}");
                    }
                }
            }
        }
        self.write_committed(true);
    }

    /// The segment to append `len` bytes to, creating the first or the next one as needed.
    fn active_for(&mut self, first_index: u64, len: u64) -> io::Result<usize> {
        let empty = |s: &Segment| s.end == SEGMENT_HEADER_BYTES as u64;
        if self
            .segments
            .last()
            .is_some_and(|s| empty(s) && s.first_index != first_index)
        {
            // An empty segment named for another index (the log was truncated to nothing and
            // starts again elsewhere): replace it, so names always match first entries.
            if let Some(seg) = self.segments.pop() {
                self.shared.disk.remove(&seg.path)?;
            }
        }
        let need_new = match self.segments.last() {
            None => true,
            Some(s) => !empty(s) && s.end + len > self.segment_bytes,
        };
        if need_new {
            if let Some(full) = self.segments.last() {
                // Only the newest segment may end in a torn write: finish this one first.
                full.file.sync_data()?;
            }
            let seq = self.segments.last().map_or(1, |s| s.seq + 1);
            let path = self.shared.dir.join(segment_name(seq, first_index));
            let disk = &self.shared.disk;
            let file = disk.open(&path, true)?;
            if let Err(e) = file.preallocate(self.segment_bytes) {
                // Best effort: on a nearly full disk the segment grows as it is written.
                tracing::warn!(file = %path.display(), "could not preallocate a log segment: {e}");
                file.set_len(0)?;
            }
            file.write_all_at(&segment_header(), 0)?;
            file.sync_data()?;
            disk.sync_dir(&self.shared.dir)?;
            self.segments.push(Segment {
                seq,
                first_index,
                path,
                file,
                end: SEGMENT_HEADER_BYTES as u64,
            });
        }
        Ok(self.segments.len() - 1)
    }

    fn write_records(&mut self, buf: &[u8], records: &[(LogId, usize, usize)]) -> io::Result<Vec<(LogId, Loc)>> {
        let first_index = records.first().map_or(0, |r| r.0.index);
        let i = self.active_for(first_index, buf.len() as u64)?;
        let seg = &mut self.segments[i];
        seg.file.write_all_at(buf, seg.end)?;
        let locs = records
            .iter()
            .map(|(log_id, off, len)| {
                (
                    *log_id,
                    Loc {
                        segment: seg.seq,
                        file: seg.file.clone(),
                        offset: seg.end + *off as u64,
                        len: *len as u32,
                    },
                )
            })
            .collect();
        seg.end += buf.len() as u64;
        Ok(locs)
    }

    /// One sync for every append written since the last: then their entries' places are
    /// published and their dones called, in order.
    fn sync_unsynced(&mut self) {
        if self.unsynced.is_empty() || self.failed.is_some() {
            return;
        }
        let started = Instant::now();
        let synced = match self.segments.last() {
            Some(seg) => seg.file.sync_data(),
            None => Ok(()),
        };
        self.observer.fsync(started.elapsed());
        if let Err(e) = synced {
            self.fail(&e);
            return;
        }
        let batch: Vec<_> = self.unsynced.drain(..).collect();
        self.observer.log_flush_batch(batch.len());
        let mut all_locs = Vec::new();
        let mut dones = Vec::with_capacity(batch.len());
        for (done, locs) in batch {
            if let Some((log_id, _)) = locs.last() {
                self.durable_index = self.durable_index.max(log_id.index);
            }
            all_locs.extend(locs);
            dones.push(done);
        }
        self.shared.mem().written(all_locs);
        for done in dones {
            done(Ok(()));
        }
        self.commits_since_committed += 1;
        self.write_committed(false);
    }

    /// Writes the commit index [`Wal::save_committed`](super::Wal::save_committed) noted,
    /// when it changed, its entries are durable, and it is time (a barrier, or every
    /// [`COMMITTED_EVERY`] group commits).
    fn write_committed(&mut self, now: bool) {
        if self.failed.is_some() || !(now || self.commits_since_committed >= COMMITTED_EVERY) {
            return;
        }
        let committed = self.shared.mem().committed;
        if committed == self.committed_written || committed.map_or(0, |c| c.index) > self.durable_index {
            return;
        }
        let path = self.shared.dir.join(COMMITTED_FILE);
        // Not synced: the commit index is advisory, and the next sync or vote covers it.
        let written = codec::encode(&committed)
            .map_err(io::Error::other)
            .and_then(|bytes| disk::replace_file(&*self.shared.disk, &path, &bytes, disk::Durability::Later));
        if let Err(e) = written {
            tracing::warn!("could not save the commit index: {e}");
        }
        self.committed_written = committed;
        self.commits_since_committed = 0;
    }

    /// Removes every entry after `after`, durably.
    fn truncate(&mut self, after: Option<u64>) -> io::Result<()> {
        let cut = {
            let mut mem = self.shared.mem();
            let from = after.map_or(mem.first, |a| a + 1);
            let cut = mem.slot(from).and_then(|s| s.loc.clone());
            mem.truncate_after(after);
            cut
        };
        let Some(cut) = cut else {
            return Ok(()); // nothing held after `after`
        };
        let disk = self.shared.disk.clone();
        let mut removed = false;
        while self.segments.last().is_some_and(|s| s.seq > cut.segment) {
            if let Some(seg) = self.segments.pop() {
                disk.remove(&seg.path)?;
                removed = true;
            }
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.file.set_len(cut.offset)?;
            if let Err(e) = seg.file.preallocate(self.segment_bytes.max(cut.offset)) {
                tracing::warn!(file = %seg.path.display(), "could not preallocate a log segment: {e}");
            }
            seg.file.sync_data()?;
            seg.end = cut.offset;
        }
        if removed {
            disk.sync_dir(&self.shared.dir)?;
        }
        self.durable_index = self.durable_index.min(after.unwrap_or(0));
        Ok(())
    }

    /// Records the purge point durably, forgets the entries, deletes whole segments behind it.
    fn purge(&mut self, upto: LogId) -> io::Result<()> {
        let bytes = codec::encode(&upto).map_err(io::Error::other)?;
        disk::replace_file(
            &*self.shared.disk,
            &self.shared.dir.join(PURGED_FILE),
            &bytes,
            disk::Durability::Now,
        )?;
        self.shared.mem().purge(upto);
        self.drop_segments_through(upto.index)
    }

    /// Deletes the segments whose entries are all at or below `upto` (never the newest).
    fn drop_segments_through(&mut self, upto: u64) -> io::Result<()> {
        let mut dropped = 0;
        while self.segments.len() > 1 && self.segments[1].first_index <= upto + 1 {
            let seg = self.segments.remove(0);
            self.shared.disk.remove(&seg.path)?;
            dropped += 1;
        }
        if dropped > 0 {
            self.shared.disk.sync_dir(&self.shared.dir)?;
        }
        Ok(())
    }
}

/// Runs the [`Writer`]: on its thread, or inline.
pub(super) enum Io {
    Thread {
        queue: Mutex<Option<mpsc::Sender<Op>>>,
        thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    },
    Inline(Mutex<Writer>),
}

impl Io {
    pub(super) fn start(writer: Writer, mode: IoMode) -> io::Result<Arc<Io>> {
        match mode {
            IoMode::Inline => Ok(Arc::new(Io::Inline(Mutex::new(writer)))),
            IoMode::Thread => {
                let (tx, rx) = mpsc::channel::<Op>();
                let mut writer = writer;
                let thread = std::thread::Builder::new().name("raftkv-wal".into()).spawn(move || {
                    while let Ok(first) = rx.recv() {
                        let mut ops = vec![first];
                        ops.extend(rx.try_iter());
                        writer.process(ops);
                    }
                })?;
                Ok(Arc::new(Io::Thread {
                    queue: Mutex::new(Some(tx)),
                    thread: Mutex::new(Some(thread)),
                }))
            }
        }
    }

    pub(super) fn submit(&self, op: Op) {
        match self {
            Io::Inline(writer) => writer.lock().unwrap_or_else(|e| e.into_inner()).process(vec![op]),
            Io::Thread { queue, .. } => {
                let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                let sent = match &*queue {
                    Some(q) => q.send(op).map_err(|e| e.0),
                    None => Err(op),
                };
                if let Err(op) = sent {
                    fail_unsent(op);
                }
            }
        }
    }
}

/// Completes an operation the I/O thread can no longer take.
fn fail_unsent(op: Op) {
    let gone = || Err(io::Error::other("the write-ahead log is closed"));
    match op {
        Op::Append { done, .. }
        | Op::Truncate { done, .. }
        | Op::Purge { done, .. }
        | Op::Vote { done, .. }
        | Op::Sync { done } => done(gone()),
        Op::DropPurgedSegments { .. } => {}
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Io::Thread { queue, thread } = self {
            // Closing the queue ends the thread once it has done what it holds.
            drop(queue.get_mut().unwrap_or_else(|e| e.into_inner()).take());
            if let Some(t) = thread.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = t.join();
            }
        }
    }
}
