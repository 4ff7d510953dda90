//! Exactly-once application of client writes, in the state machine: duplicates get the saved
//! answer, the session table travels in snapshots, and sessions expire by log time.

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use raftkv_store::command::{ClientSession, Command, Request, Response};
use raftkv_store::sessions::{SESSION_GC_INTERVAL_MS, SESSION_TTL_MS};
use raftkv_store::types::{Entry, LeaderId, LogId};
use raftkv_store::StoreConfig;
use tempfile::TempDir;

fn put(index: u64, ts: u64, seq: u64, acked_below: u64, value: &str) -> Entry {
    Entry {
        log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
        payload: EntryPayload::Normal(Request {
            timestamp_ms: ts,
            session: Some(ClientSession {
                client_id: 77,
                seq,
                acked_below,
            }),
            command: Command::Put {
                key: b"counter".to_vec(),
                value: value.as_bytes().to_vec(),
                prev_kv: false,
            },
        }),
    }
}

fn open() -> (TempDir, raftkv_store::Store) {
    let dir = TempDir::new().unwrap();
    let store = raftkv_store::open(dir.path(), &StoreConfig::default()).unwrap();
    (dir, store)
}

fn version(store: &raftkv_store::Store) -> u64 {
    store
        .handle
        .reader()
        .get(b"counter")
        .unwrap()
        .map_or(0, |kv| kv.version)
}

#[tokio::test]
async fn a_retried_write_applies_once_and_gets_the_first_answer() {
    let (_d, mut store) = open();
    let first = store
        .state_machine
        .apply_entries([put(1, 1000, 1, 1, "a")])
        .await
        .unwrap();
    // The same (client, seq) again, later in the log (a retry after a lost reply), in the same
    // batch as a new write.
    let again = store
        .state_machine
        .apply_entries([put(2, 1001, 1, 1, "a"), put(3, 1002, 2, 1, "b")])
        .await
        .unwrap();
    assert_eq!(again[0], first[0], "the duplicate gets the saved answer");
    // The duplicate changed nothing, so the new write is the store's second change.
    assert_eq!(
        again[1],
        Response::Put {
            revision: 2,
            prev_kv: None
        }
    );
    assert_eq!(version(&store), 2, "two writes applied, not three");

    // Once the client acknowledges seq 1 (acked_below = 2), a late copy of it is refused.
    store
        .state_machine
        .apply_entries([put(4, 1003, 3, 3, "c")])
        .await
        .unwrap();
    let late = store
        .state_machine
        .apply_entries([put(5, 1004, 1, 1, "a")])
        .await
        .unwrap();
    assert_eq!(late[0], Response::AlreadyAcknowledged { client_id: 77, seq: 1 });
    assert_eq!(version(&store), 3);
}

#[tokio::test]
async fn the_session_table_travels_in_snapshots() {
    let (_d, mut leader) = open();
    let (_f, mut follower) = open();
    let first = leader
        .state_machine
        .apply_entries([put(1, 1000, 1, 1, "a")])
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
    // The follower, now holding the snapshot, sees a retry of seq 1: it must not apply it.
    let retry = follower
        .state_machine
        .apply_entries([put(2, 1001, 1, 1, "a")])
        .await
        .unwrap();
    assert_eq!(retry[0], first[0]);
    assert_eq!(version(&follower), 1);
}

#[tokio::test]
async fn idle_sessions_expire_by_log_time() {
    let (_d, mut store) = open();
    store
        .state_machine
        .apply_entries([put(1, 1_000, 1, 1, "a")])
        .await
        .unwrap();
    // Another client keeps the log clock moving; nothing expires before the TTL.
    let other = |index: u64, ts: u64| Entry {
        log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
        payload: EntryPayload::Normal(Request::new(
            Command::Put {
                key: b"other".to_vec(),
                value: b"x".to_vec(),
                prev_kv: false,
            },
            ts,
        )),
    };
    store
        .state_machine
        .apply_entries([other(2, 1_000 + SESSION_TTL_MS)])
        .await
        .unwrap();
    let kept = store
        .state_machine
        .apply_entries([put(3, 1_000 + SESSION_TTL_MS, 1, 1, "a")])
        .await
        .unwrap();
    assert!(
        matches!(kept[0], Response::Put { revision: 1, .. }),
        "still remembered: {kept:?}"
    );

    // Past the TTL (and a sweep interval later), the session is gone: the same seq is new again.
    let later = 1_000 + SESSION_TTL_MS + SESSION_TTL_MS + SESSION_GC_INTERVAL_MS + 1;
    store.state_machine.apply_entries([other(4, later)]).await.unwrap();
    let fresh = store
        .state_machine
        .apply_entries([put(5, later, 1, 1, "a")])
        .await
        .unwrap();
    // Applied anew: the store's fourth change (after a's first put and the two other writes).
    assert!(matches!(fresh[0], Response::Put { revision: 4, .. }), "{fresh:?}");
}
