//! The sled store against openraft's storage conformance suite, plus the durability
//! scenarios the suite does not cover: reopening after writes, wholesale snapshot install.

use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{EntryPayload, Membership, RaftSnapshotBuilder};
use raftkv_store::command::{Command, Request};
use raftkv_store::types::{Entry, LeaderId, LogId};
use raftkv_store::{LogStore, NodeAddr, StateMachineStore, StoreConfig, TypeConfig};
use tempfile::TempDir;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), openraft::StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let store = raftkv_store::open(dir.path(), &StoreConfig::default()).expect("open store");
        Ok((dir, store.log_store, store.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_passes_openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledStoreBuilder).await {
        panic!("storage suite failed: {e}");
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

fn put(term: u64, index: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request::new(
            Command::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                prev_kv: false,
            },
            0,
        )),
    }
}

fn membership_entry(term: u64, index: u64) -> Entry {
    let nodes = BTreeMap::from([(1u64, NodeAddr::default())]);
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], nodes).expect("valid membership")),
    }
}

#[tokio::test]
async fn applied_state_and_revisions_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let mut store = raftkv_store::open(dir.path(), &StoreConfig::default()).unwrap();
        store
            .state_machine
            .apply_entries(vec![
                membership_entry(1, 1),
                put(1, 2, "a", "1"),
                put(1, 3, "a", "2"),
                put(1, 4, "b", "x"),
            ])
            .await
            .unwrap();
        store.handle.flush().unwrap();
    }
    let mut store = raftkv_store::open(dir.path(), &StoreConfig::default()).unwrap();
    let (applied, membership) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    // Revisions count changes (the membership entry is none): a's puts are revisions 1 and 2.
    let a = store.handle.reader().get(b"a").unwrap().expect("a exists");
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision, a.version),
        (&b"2"[..], 1, 2, 2)
    );
    assert_eq!(store.handle.reader().applied_index(), 4);
    assert_eq!(store.handle.reader().revision(), 3);
    let next = store
        .state_machine
        .apply_entries(vec![put(1, 5, "c", "y")])
        .await
        .unwrap();
    assert_eq!(
        next,
        vec![raftkv_store::command::Response::Put {
            revision: 4,
            prev_kv: None
        }],
        "the count goes on after a reopen"
    );
}

#[tokio::test]
async fn snapshot_install_replaces_state_wholesale() {
    // Leader: keys a, b. Follower: keys c (which the leader never had) and a stale a.
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let mut leader = raftkv_store::open(leader_dir.path(), &StoreConfig::default()).unwrap();
    let mut follower = raftkv_store::open(follower_dir.path(), &StoreConfig::default()).unwrap();
    leader
        .state_machine
        .apply_entries(vec![membership_entry(1, 1), put(1, 2, "a", "new"), put(1, 3, "b", "b")])
        .await
        .unwrap();
    follower
        .state_machine
        .apply_entries(vec![put(1, 1, "a", "old"), put(1, 2, "c", "stale")])
        .await
        .unwrap();

    let snapshot = leader
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    follower
        .state_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();

    let dump = |s: &raftkv_store::Store| {
        s.handle
            .reader()
            .dump()
            .unwrap()
            .into_iter()
            .map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(dump(&follower), dump(&leader));
    assert!(
        follower.handle.reader().get(b"c").unwrap().is_none(),
        "a key absent from the snapshot survived"
    );
    assert_eq!(follower.handle.reader().applied_index(), 3);
    assert_eq!(
        follower.handle.reader().revision(),
        leader.handle.reader().revision(),
        "the revision travels with the snapshot"
    );
    // The changes between the follower's old state and the snapshot are unknown: its watch
    // history starts over after the snapshot's revision.
    let reader = follower.handle.reader();
    assert_eq!(reader.oldest_watchable(), reader.revision() + 1);
    assert!(matches!(
        reader.changes_since(1, 10),
        Err(raftkv_store::HistoryError::Compacted { .. })
    ));

    // And the installed state is what a restart finds.
    drop(follower);
    let mut reopened = raftkv_store::open(follower_dir.path(), &StoreConfig::default()).unwrap();
    assert_eq!(dump(&reopened), dump(&leader));
    let current = reopened
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 3)));
}
