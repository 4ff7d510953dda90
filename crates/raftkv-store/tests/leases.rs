//! Leases in the state machine: granting, attaching keys, revoking (which deletes the keys as
//! one change), detaching a key that is overwritten, refusing a missing lease without applying
//! anything, and leases that survive a reopen and a snapshot install.

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use raftkv_store::command::{BatchedWrite, Command, Request, Response, Txn, TxnOp};
use raftkv_store::types::{Entry, LeaderId, LogId};
use raftkv_store::{EventKind, LeaseInfo, Store, StoreConfig};
use tempfile::TempDir;

/// A state machine fed log entries one index after the other.
struct Replica {
    _dir: TempDir,
    store: Store,
    next_index: u64,
}

impl Replica {
    fn open() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let store = raftkv_store::open(dir.path(), &StoreConfig::default()).expect("open store");
        Self {
            _dir: dir,
            store,
            next_index: 1,
        }
    }

    /// Applies `commands` as consecutive entries of one `apply` call.
    async fn apply(&mut self, commands: Vec<Command>) -> Vec<Response> {
        let entries: Vec<Entry> = commands
            .into_iter()
            .map(|c| {
                let index = self.next_index;
                self.next_index += 1;
                Entry {
                    log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
                    payload: EntryPayload::Normal(Request::new(c, 0)),
                }
            })
            .collect();
        self.store.state_machine.apply_entries(entries).await.expect("apply")
    }

    async fn one(&mut self, command: Command) -> Response {
        self.apply(vec![command]).await.remove(0)
    }

    fn keys(&self) -> Vec<String> {
        let dump = self.store.handle.reader().dump().expect("dump");
        dump.into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn lease_keys(&self, id: u64) -> Vec<String> {
        let keys = self.store.handle.reader().lease_keys(id).expect("lease keys");
        keys.into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }
}

fn grant(id: u64) -> Command {
    Command::LeaseGrant { id, ttl_ms: 5_000 }
}

fn put(key: &str, lease: Option<u64>) -> Command {
    match lease {
        Some(lease) => Command::PutLeased {
            key: key.into(),
            value: b"v".to_vec(),
            prev_kv: false,
            lease,
        },
        None => Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
            prev_kv: false,
        },
    }
}

/// - Two keys on lease 7, one key on no lease; revoking lease 7 deletes exactly its two keys,
///   at one new revision, and the watch history holds both deletes at that revision.
/// - Revoking again: LeaseNotFound, nothing changes.
#[tokio::test]
async fn revoking_a_lease_deletes_its_keys_as_one_change() {
    let mut r = Replica::open();
    assert!(matches!(
        r.one(grant(7)).await,
        Response::LeaseGranted {
            id: 7,
            ttl_ms: 5_000,
            ..
        }
    ));
    r.apply(vec![put("a", Some(7)), put("b", Some(7)), put("c", None)])
        .await;
    assert_eq!(r.lease_keys(7), vec!["a", "b"]);
    let before = r.store.handle.reader().revision();

    let Response::LeaseRevoked { revision, deleted } = r.one(Command::LeaseRevoke { id: 7 }).await else {
        panic!("not revoked")
    };
    assert_eq!((revision, deleted), (before + 1, 2));
    assert_eq!(r.keys(), vec!["c"]);
    assert_eq!(r.store.handle.reader().lease(7).expect("read"), None);
    let history = r.store.handle.reader().changes_since(revision, 100).expect("history");
    let deletes: Vec<(EventKind, u64)> = history.events.iter().map(|e| (e.kind, e.kv.mod_revision)).collect();
    assert_eq!(
        deletes,
        vec![(EventKind::Delete, revision), (EventKind::Delete, revision)]
    );

    assert_eq!(
        r.one(Command::LeaseRevoke { id: 7 }).await,
        Response::LeaseNotFound { id: 7 }
    );
    assert_eq!(
        r.store.handle.reader().revision(),
        revision,
        "a failed revoke changes nothing"
    );
}

/// - A leased key overwritten by a plain put, and another deleted and re-created, leave the
///   lease: revoking it deletes neither.
/// - A key moved from lease 1 to lease 2 goes with lease 2 only.
#[tokio::test]
async fn a_key_overwritten_without_its_lease_no_longer_belongs_to_it() {
    let mut r = Replica::open();
    r.apply(vec![grant(1), grant(2)]).await;
    r.apply(vec![put("plain", Some(1)), put("gone", Some(1)), put("moved", Some(1))])
        .await;
    r.apply(vec![
        put("plain", None),
        Command::Delete {
            key: b"gone".to_vec(),
            prev_kv: false,
        },
        put("gone", None),
        put("moved", Some(2)),
    ])
    .await;
    assert_eq!(r.lease_keys(1), Vec::<String>::new());
    assert_eq!(r.lease_keys(2), vec!["moved"]);
    r.one(Command::LeaseRevoke { id: 1 }).await;
    assert_eq!(r.keys(), vec!["gone", "moved", "plain"]);
    r.one(Command::LeaseRevoke { id: 2 }).await;
    assert_eq!(r.keys(), vec!["gone", "plain"]);
}

/// - A put on a lease that does not exist: LeaseNotFound, no key, no new revision.
/// - A transaction whose chosen branch puts on a missing lease applies none of its branch (not
///   even the plain put before it); the branch not taken is not checked.
/// - Granting an id twice: LeaseExists, the TTL unchanged.
#[tokio::test]
async fn a_missing_lease_refuses_the_write_and_applies_nothing() {
    let mut r = Replica::open();
    r.one(put("base", None)).await;
    let revision = r.store.handle.reader().revision();
    assert_eq!(r.one(put("k", Some(99))).await, Response::LeaseNotFound { id: 99 });

    let txn = |lease| {
        Command::Txn(Txn {
            compares: vec![],
            success: vec![
                TxnOp::Put {
                    key: b"first".to_vec(),
                    value: b"v".to_vec(),
                    prev_kv: false,
                },
                TxnOp::PutLeased {
                    key: b"second".to_vec(),
                    value: b"v".to_vec(),
                    prev_kv: false,
                    lease,
                },
            ],
            failure: vec![TxnOp::PutLeased {
                key: b"never".to_vec(),
                value: b"v".to_vec(),
                prev_kv: false,
                lease: 12345,
            }],
        })
    };
    assert_eq!(r.one(txn(99)).await, Response::LeaseNotFound { id: 99 });
    assert_eq!(r.keys(), vec!["base"]);
    assert_eq!(r.store.handle.reader().revision(), revision);

    r.one(grant(99)).await;
    assert!(matches!(r.one(txn(99)).await, Response::Txn { succeeded: true, .. }));
    assert_eq!(r.lease_keys(99), vec!["second"]);

    assert_eq!(
        r.one(Command::LeaseGrant { id: 99, ttl_ms: 1 }).await,
        Response::LeaseExists { id: 99 }
    );
    let lease = r.store.handle.reader().lease(99).expect("read");
    assert_eq!(lease, Some(LeaseInfo { id: 99, ttl_ms: 5_000 }));
}

/// Grants, leased puts and a revoke merged into one batch entry (as the write batcher merges
/// them) read through each other, in order.
#[tokio::test]
async fn lease_commands_in_one_batch_see_each_other() {
    let mut r = Replica::open();
    let writes = vec![
        grant(5),
        put("x", Some(5)),
        put("y", Some(5)),
        Command::LeaseRevoke { id: 5 },
        grant(6),
        put("z", Some(6)),
    ];
    let batch = Command::Batch(
        writes
            .into_iter()
            .map(|command| BatchedWrite { session: None, command })
            .collect(),
    );
    let Response::Batch(answers) = r.one(batch).await else {
        panic!("not a batch answer")
    };
    assert!(
        matches!(answers[3], Response::LeaseRevoked { deleted: 2, .. }),
        "{answers:?}"
    );
    assert_eq!(r.keys(), vec!["z"]);
    let ids: Vec<u64> = r
        .store
        .handle
        .reader()
        .leases()
        .expect("leases")
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, vec![6]);
}

/// Leases and their keys travel in a snapshot: a replica restored from it revokes the lease
/// and loses the key, like the one that built it.
#[tokio::test]
async fn leases_travel_in_snapshots() {
    let mut source = Replica::open();
    source
        .apply(vec![grant(3), put("held", Some(3)), put("free", None)])
        .await;
    let snapshot = source
        .store
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let mut restored = Replica::open();
    restored
        .store
        .state_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    restored.next_index = source.next_index;
    assert_eq!(
        restored.store.handle.reader().leases().expect("leases"),
        vec![LeaseInfo { id: 3, ttl_ms: 5_000 }]
    );
    assert!(matches!(
        restored.one(Command::LeaseRevoke { id: 3 }).await,
        Response::LeaseRevoked { deleted: 1, .. }
    ));
    assert_eq!(restored.keys(), vec!["free"]);
}

/// Leases survive closing and reopening the store, and every record they add passes the
/// start-up check of stored records.
#[tokio::test]
async fn leases_survive_a_reopen_and_pass_verification() {
    let dir = TempDir::new().expect("temp dir");
    {
        let mut store = raftkv_store::open(dir.path(), &StoreConfig::default()).expect("open");
        let entries: Vec<Entry> = [grant(8), put("k", Some(8))]
            .into_iter()
            .enumerate()
            .map(|(i, c)| Entry {
                log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, i as u64 + 1),
                payload: EntryPayload::Normal(Request::new(c, 0)),
            })
            .collect();
        store.state_machine.apply_entries(entries).await.expect("apply");
        store.handle.flush().expect("flush");
    }
    let store = raftkv_store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    store.handle.verify().expect("every record verifies");
    assert_eq!(
        store.handle.reader().lease(8).expect("read"),
        Some(LeaseInfo { id: 8, ttl_ms: 5_000 })
    );
    assert_eq!(store.handle.reader().lease_keys(8).expect("keys"), vec![b"k".to_vec()]);
}
