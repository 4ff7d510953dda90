//! Snapshots are built from the state at one point while applies continue: what the builder
//! produces is exactly the state at that point, however much changes during the build.

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use raftkv_store::command::{Command, KeyValue, Request};
use raftkv_store::types::{Entry, LeaderId, LogId};
use raftkv_store::StoreConfig;
use tempfile::TempDir;

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
        payload: EntryPayload::Normal(Request::new(command, 0)),
    }
}

fn put(index: u64, key: &str, value: &str) -> Entry {
    entry(
        index,
        Command::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            prev_kv: false,
        },
    )
}

fn delete(index: u64, key: &str) -> Entry {
    entry(
        index,
        Command::Delete {
            key: key.as_bytes().to_vec(),
            prev_kv: false,
        },
    )
}

fn open() -> (TempDir, raftkv_store::Store) {
    let dir = TempDir::new().unwrap();
    let store = raftkv_store::open(dir.path(), &StoreConfig::default()).unwrap();
    (dir, store)
}

fn dump(store: &raftkv_store::Store) -> Vec<KeyValue> {
    store.handle.reader().dump().unwrap()
}

#[tokio::test]
async fn a_snapshot_is_the_state_at_its_point_even_if_applies_continue_during_the_build() {
    let (_a, mut live) = open();
    let (_b, mut reference) = open();
    let before: Vec<Entry> = (1..=100).map(|i| put(i, &format!("k{i:03}"), "v0")).collect();
    live.state_machine.apply_entries(before.clone()).await.unwrap();
    reference.state_machine.apply_entries(before).await.unwrap();

    // The snapshot point is here.
    let mut builder = live.state_machine.get_snapshot_builder().await;

    // Changes after the point: overwrites, deletes, new keys, spread over several applies.
    let mut index = 100;
    for round in 0..5 {
        let mut batch = Vec::new();
        for i in (round * 20 + 1)..=(round * 20 + 10) {
            index += 1;
            batch.push(put(index, &format!("k{i:03}"), "changed"));
            index += 1;
            batch.push(delete(index, &format!("k{:03}", i + 10)));
            index += 1;
            batch.push(put(index, &format!("new{i:03}"), "x"));
        }
        live.state_machine.apply_entries(batch).await.unwrap();
    }
    assert_ne!(dump(&live), dump(&reference), "the live state moved on");

    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(100));
    let (_c, mut restored) = open();
    restored
        .state_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(dump(&restored), dump(&reference), "exactly the state at the point");

    // The view ended with the build: later applies no longer record before-images, and a new
    // snapshot reflects the live state.
    let later = live
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (_d, mut again) = open();
    again
        .state_machine
        .install_snapshot(&later.meta, later.snapshot)
        .await
        .unwrap();
    assert_eq!(dump(&again), dump(&live));
}

#[tokio::test]
async fn a_builder_dropped_without_building_leaves_nothing_behind() {
    let (_a, mut live) = open();
    live.state_machine.apply_entries([put(1, "a", "1")]).await.unwrap();
    drop(live.state_machine.get_snapshot_builder().await);
    live.state_machine.apply_entries([put(2, "a", "2")]).await.unwrap();
    let snapshot = live
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (_b, mut restored) = open();
    restored
        .state_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(dump(&restored), dump(&live));
}
