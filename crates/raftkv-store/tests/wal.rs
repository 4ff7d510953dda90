//! The Raft log's write-ahead log under the failures a disk can have: a write cut short by a
//! crash, a flipped bit, a power cut at any moment (with everything never synced lost), a full
//! disk. All on the simulated disk, so every case replays exactly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openraft::EntryPayload;
use raftkv_store::command::{Command, Request};
use raftkv_store::types::{Entry, LeaderId, LogId, Vote};
use raftkv_store::wal::disk::Disk;
use raftkv_store::wal::sim_disk::{Crash, Fault, SimDisk};
use raftkv_store::wal::{IoMode, Wal, WalOptions};
use raftkv_store::{NoTimings, StoreError};

fn dir() -> PathBuf {
    PathBuf::from("/data/wal")
}

fn options(segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        cache_bytes: 4 * 1024,
        io: IoMode::Inline,
    }
}

fn open(disk: &SimDisk, segment_bytes: u64) -> Result<Wal, StoreError> {
    Wal::open(
        Arc::new(disk.clone()),
        &dir(),
        options(segment_bytes),
        Arc::new(NoTimings),
    )
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        log_id: LogId::new(LeaderId { term, node_id: 1 }, index),
        payload: EntryPayload::Normal(Request::new(
            Command::Put {
                key: format!("key-{index}").into_bytes(),
                value: format!("value of entry {index} in term {term}").into_bytes(),
                prev_kv: false,
            },
            index,
        )),
    }
}

/// Appends `e` and reports whether the log acknowledged it as durable.
fn append(wal: &Wal, e: Entry) -> bool {
    let acked = Arc::new(Mutex::new(None));
    let slot = acked.clone();
    let submitted = wal.append([e], Box::new(move |r| *slot.lock().unwrap() = Some(r.is_ok())));
    submitted.is_ok() && acked.lock().unwrap().unwrap_or(false)
}

fn segment_paths(disk: &SimDisk) -> Vec<PathBuf> {
    let mut names = disk.list(&dir()).unwrap();
    names.retain(|n| n.ends_with(".wal"));
    names.sort();
    names.into_iter().map(|n| dir().join(n)).collect()
}

/// End of the written data in a preallocated segment (the trailer byte is never zero).
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

fn indexes(wal: &Wal) -> Vec<u64> {
    wal.entries(0..=u64::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

/// Writes entries 1..=6, each synced; returns the segment and where entry 6's record starts and
/// ends.
fn six_entries(disk: &SimDisk) -> (PathBuf, usize, usize) {
    let wal = open(disk, 1 << 20).unwrap();
    for i in 1..=5 {
        assert!(append(&wal, entry(i, 1)));
    }
    let path = segment_paths(disk).remove(0);
    let before = data_end(&disk.contents(&path).unwrap());
    assert!(append(&wal, entry(6, 1)));
    let after = data_end(&disk.contents(&path).unwrap());
    (path, before, after)
}

#[tokio::test]
async fn a_last_record_cut_at_any_byte_opens_with_every_entry_before_it() {
    let (_, start, end) = six_entries(&SimDisk::new());
    for cut in start..end {
        for zero_filled in [true, false] {
            let disk = SimDisk::new();
            let (path, _, _) = six_entries(&disk);
            if zero_filled {
                // Preallocated: the unwritten part of the record reads as zeros.
                disk.corrupt(&path, cut as u64, &vec![0; end - cut]).unwrap();
            } else {
                disk.truncate(&path, cut as u64).unwrap();
            }
            disk.crash(Crash::LoseUnsynced);
            let wal = open(&disk, 1 << 20).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(
                indexes(&wal),
                vec![1, 2, 3, 4, 5],
                "cut at {cut}, zero-filled {zero_filled}"
            );
            // The log goes on from there, and what it writes next survives a reopen.
            assert!(append(&wal, entry(6, 2)));
            drop(wal);
            disk.crash(Crash::LoseUnsynced);
            let wal = open(&disk, 1 << 20).unwrap();
            let entries = wal.entries(6..=6, usize::MAX).unwrap();
            assert_eq!(entries[0].log_id.leader_id.term, 2, "cut at {cut}");
        }
    }
}

#[tokio::test]
async fn a_flipped_bit_before_the_tail_refuses_to_open_naming_the_file_and_offset() {
    let disk = SimDisk::new();
    let (path, _, _) = six_entries(&disk);
    let bytes = disk.contents(&path).unwrap();
    // The third record: skip the segment header and two records.
    let (second_end, third_end) = {
        let wal_bytes = &bytes;
        let mut at = 16;
        let mut ends = Vec::new();
        for _ in 0..3 {
            let len = u32::from_le_bytes(wal_bytes[at..at + 4].try_into().unwrap()) as usize;
            at += len + 14;
            ends.push(at);
        }
        (ends[1], ends[2])
    };
    let flip_at = (second_end + third_end) / 2;
    disk.corrupt(&path, flip_at as u64, &[bytes[flip_at] ^ 0x04]).unwrap();
    disk.crash(Crash::LoseUnsynced);
    let err = match open(&disk, 1 << 20) {
        Ok(_) => panic!("a damaged record before the tail was accepted"),
        Err(e) => e.to_string(),
    };
    let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&file_name), "{err}");
    assert!(err.contains(&format!("offset {second_end}")), "{err}");
}

/// What the workload saw acknowledged, to check after the power cut.
#[derive(Default)]
struct Acked {
    entries: Vec<Entry>,
    votes: Vec<Vote>,
    purged: Option<LogId>,
    /// The last purge asked for: one that failed half-way may still have taken effect.
    purge_asked: Option<LogId>,
}

async fn workload(wal: &Wal, acked: &mut Acked, rounds: u64) {
    let mut term = 1;
    for i in 1..=rounds {
        if i % 7 == 0 {
            term += 1;
            let vote = Vote::new(term, 1);
            if wal.save_vote(&vote).await.is_err() {
                return;
            }
            acked.votes.push(vote);
        }
        let e = entry(i, term);
        if !append(wal, e.clone()) {
            return;
        }
        acked.entries.push(e);
        if i % 9 == 0 {
            wal.save_committed(Some(LogId::new(LeaderId { term, node_id: 1 }, i - 1)));
        }
        if i % 11 == 0 {
            let upto = acked.entries[(i as usize) - 6].log_id;
            acked.purge_asked = Some(upto);
            if wal.purge(upto).await.is_err() {
                return;
            }
            acked.purged = Some(upto);
        }
    }
}

#[tokio::test]
async fn after_a_power_cut_at_any_moment_no_acknowledged_entry_is_lost_and_the_vote_never_goes_back() {
    // WAL_SEED=N replays one case.
    let only: Option<u64> = std::env::var("WAL_SEED").ok().and_then(|s| s.parse().ok());
    for seed in 0..300u64 {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let disk = SimDisk::new();
        // Small segments: creations, rollovers and purge deletions happen often.
        let wal = open(&disk, 700).unwrap();
        disk.power_off_after(seed % 240);
        let mut acked = Acked::default();
        workload(&wal, &mut acked, 40).await;
        drop(wal);
        disk.crash(Crash::Tear { seed });
        let wal =
            open(&disk, 700).unwrap_or_else(|e| panic!("seed {seed}: the log refused to open after a power cut: {e}"));
        // The purge point is the last acknowledged one, or the one asked for after it.
        let purged = wal.purged();
        assert!(
            purged == acked.purged || purged == acked.purge_asked,
            "seed {seed}: purge point {purged:?}, acknowledged {:?}, asked {:?}",
            acked.purged,
            acked.purge_asked
        );
        let kept: Vec<&Entry> = acked
            .entries
            .iter()
            .filter(|e| purged.is_none_or(|p| e.log_id.index > p.index))
            .collect();
        if let (Some(first), Some(last)) = (kept.first(), kept.last()) {
            let got = wal
                .entries(first.log_id.index..=last.log_id.index, usize::MAX)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(got.len(), kept.len(), "seed {seed}: acknowledged entries missing");
            for (g, k) in got.iter().zip(&kept) {
                assert_eq!(g, *k, "seed {seed}");
            }
        }
        if let Some(last_vote) = acked.votes.last() {
            let vote = wal
                .vote()
                .unwrap_or_else(|| panic!("seed {seed}: acknowledged vote lost"));
            assert!(
                vote >= *last_vote,
                "seed {seed}: vote went back from {last_vote:?} to {vote:?}"
            );
        }
        // And the log takes writes again.
        let next = wal.last_log_id().map_or(1, |l| l.index + 1);
        assert!(append(&wal, entry(next, 99)), "seed {seed}");
    }
}

#[tokio::test]
async fn entries_evicted_from_memory_are_read_back_from_their_segments() {
    let disk = SimDisk::new();
    let wal = open(&disk, 4096).unwrap();
    let all: Vec<Entry> = (1..=200).map(|i| entry(i, 1)).collect();
    for e in &all {
        assert!(append(&wal, e.clone()));
    }
    assert!(segment_paths(&disk).len() > 3, "small segments roll over");
    assert_eq!(wal.entries(1..=200, usize::MAX).unwrap(), all);
    // A limited read stops at the byte budget, but always returns one entry.
    assert_eq!(wal.entries(1..=200, 1).unwrap().len(), 1);
    drop(wal);
    disk.crash(Crash::LoseUnsynced);
    let wal = open(&disk, 4096).unwrap();
    assert_eq!(wal.entries(1..=200, usize::MAX).unwrap(), all);
}

#[tokio::test]
async fn truncation_and_purge_are_durable_and_whole_segments_go() {
    let disk = SimDisk::new();
    let wal = open(&disk, 1024).unwrap();
    for i in 1..=60 {
        assert!(append(&wal, entry(i, 1)));
    }
    let segments = segment_paths(&disk).len();
    wal.truncate_after(Some(LogId::new(LeaderId { term: 1, node_id: 1 }, 40)))
        .await
        .unwrap();
    for i in 41..=45 {
        assert!(append(&wal, entry(i, 2)));
    }
    wal.purge(LogId::new(LeaderId { term: 1, node_id: 1 }, 30))
        .await
        .unwrap();
    assert!(
        segment_paths(&disk).len() < segments,
        "segments behind the purge point are deleted"
    );
    drop(wal);
    disk.crash(Crash::LoseUnsynced);
    let wal = open(&disk, 1024).unwrap();
    assert_eq!(indexes(&wal), (31..=45).collect::<Vec<_>>());
    let terms: Vec<u64> = wal
        .entries(39..=42, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.log_id.leader_id.term)
        .collect();
    assert_eq!(terms, vec![1, 1, 2, 2], "the truncated tail never comes back");
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_stops_the_log_without_losing_what_was_acknowledged() {
    let disk = SimDisk::new();
    let wal = open(&disk, 1 << 20).unwrap();
    for i in 1..=3 {
        assert!(append(&wal, entry(i, 1)));
    }
    disk.inject(Fault::WriteNoSpace, 1);
    let seen = Arc::new(Mutex::new(None));
    let slot = seen.clone();
    wal.append([entry(4, 1)], Box::new(move |r| *slot.lock().unwrap() = Some(r)))
        .unwrap();
    let err = seen.lock().unwrap().take().unwrap().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Stopped: later writes fail too, rather than leave a hole.
    assert!(wal.save_vote(&Vote::new(2, 1)).await.is_err());
    drop(wal);
    disk.clear_faults();
    disk.crash(Crash::LoseUnsynced);
    let wal = open(&disk, 1 << 20).unwrap();
    assert_eq!(indexes(&wal), vec![1, 2, 3]);
}

#[test]
fn a_data_dir_with_the_log_in_sled_is_refused_with_how_to_move_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree("raft_log")
            .unwrap()
            .insert(1u64.to_be_bytes(), b"old entry")
            .unwrap();
        db.flush().unwrap();
    }
    let err = match raftkv_store::open(dir.path(), &raftkv_store::StoreConfig::default()) {
        Ok(_) => panic!("an old data dir was opened"),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::OldLayout { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("raftkv backup") && msg.contains("raftkvd restore"),
        "{msg}"
    );
}
