//! The store revision: a counter bumped by every change to the data, not the log index.
//! Scenarios: writes merged into one entry, deletes that find nothing, transactions, and
//! replicas that apply the same log in different batches.

use openraft::EntryPayload;
use raftkv_store::command::{BatchedWrite, CmpOp, Command, Compare, CompareTarget, Request, Response, Txn, TxnOp};
use raftkv_store::types::{Entry, LeaderId, LogId};
use raftkv_store::{EventKind, Store, StoreConfig};
use tempfile::TempDir;

fn entry(index: u64, command: Option<Command>) -> Entry {
    Entry {
        log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
        payload: match command {
            Some(c) => EntryPayload::Normal(Request::new(c, 0)),
            None => EntryPayload::Blank,
        },
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
    }
}

fn delete(key: &str) -> Command {
    Command::Delete {
        key: key.into(),
        prev_kv: false,
    }
}

fn open() -> (TempDir, Store) {
    let dir = TempDir::new().expect("temp dir");
    let store = raftkv_store::open(dir.path(), &StoreConfig::default()).expect("open store");
    (dir, store)
}

fn revision_of(response: &Response) -> u64 {
    match response {
        Response::Put { revision, .. } | Response::Delete { revision, .. } | Response::Txn { revision, .. } => {
            *revision
        }
        other => panic!("no revision in {other:?}"),
    }
}

/// - A blank entry, then a put: the put is revision 1 (a blank entry changes nothing).
/// - Three writes merged into one log entry get revisions 2, 3, 4, and each key's
///   mod_revision says which.
#[tokio::test]
async fn every_write_gets_its_own_revision_even_within_one_entry() {
    let (_dir, mut store) = open();
    let first = store
        .state_machine
        .apply_entries(vec![entry(1, None), entry(2, Some(put("a", "1")))])
        .await
        .unwrap();
    assert_eq!(revision_of(&first[1]), 1);

    let batch = Command::Batch(
        ["x", "y", "x"]
            .iter()
            .map(|k| BatchedWrite {
                session: None,
                command: put(k, "v"),
            })
            .collect(),
    );
    let merged = store
        .state_machine
        .apply_entries(vec![entry(3, Some(batch))])
        .await
        .unwrap();
    let Response::Batch(answers) = &merged[0] else {
        panic!("not a batch answer: {merged:?}")
    };
    assert_eq!(answers.iter().map(revision_of).collect::<Vec<_>>(), vec![2, 3, 4]);
    let reader = store.handle.reader();
    let x = reader.get(b"x").unwrap().expect("x");
    assert_eq!((x.create_revision, x.mod_revision, x.version), (2, 4, 2));
    assert_eq!(reader.get(b"y").unwrap().expect("y").mod_revision, 3);
    assert_eq!(reader.revision(), 4);
    assert_eq!(reader.applied_index(), 3, "the log index is a different count");
}

/// - Deleting a missing key changes nothing: no new revision; the answer carries the current one.
/// - Deleting a range of two keys is one change: one revision.
#[tokio::test]
async fn only_deletes_that_remove_something_take_a_revision() {
    let (_dir, mut store) = open();
    let sm = &mut store.state_machine;
    sm.apply_entries(vec![
        entry(1, Some(put("k1", "v"))),
        entry(2, Some(put("k2", "v"))),
        entry(3, Some(put("z", "v"))),
    ])
    .await
    .unwrap();
    let missing = sm.apply_entries(vec![entry(4, Some(delete("nope")))]).await.unwrap();
    assert_eq!(revision_of(&missing[0]), 3, "a delete of nothing took a revision");
    let range = sm
        .apply_entries(vec![entry(
            5,
            Some(Command::DeleteRange {
                start: b"k".to_vec(),
                end: Some(serde_bytes::ByteBuf::from(b"l".to_vec())),
                prev_kv: false,
            }),
        )])
        .await
        .unwrap();
    assert!(
        matches!(
            range[0],
            Response::Delete {
                revision: 4,
                deleted: 2,
                ..
            }
        ),
        "{range:?}"
    );
    assert_eq!(store.handle.reader().revision(), 4);
}

/// - A transaction's writes share one revision.
/// - A transaction that only reads (or whose chosen branch writes nothing) takes none.
/// - A compare on mod_revision sees the new revisions.
#[tokio::test]
async fn a_transaction_is_one_change() {
    let (_dir, mut store) = open();
    let sm = &mut store.state_machine;
    sm.apply_entries(vec![entry(1, Some(put("a", "1")))]).await.unwrap();
    let txn = |compare_rev: u64| {
        Command::Txn(Txn {
            compares: vec![Compare {
                key: b"a".to_vec(),
                target: CompareTarget::ModRevision(CmpOp::Equal, compare_rev),
            }],
            success: vec![
                TxnOp::Put {
                    key: b"a".to_vec(),
                    value: b"2".to_vec(),
                    prev_kv: false,
                },
                TxnOp::Put {
                    key: b"b".to_vec(),
                    value: b"2".to_vec(),
                    prev_kv: false,
                },
            ],
            failure: vec![TxnOp::Get { key: b"a".to_vec() }],
        })
    };
    let done = sm.apply_entries(vec![entry(2, Some(txn(1)))]).await.unwrap();
    assert!(
        matches!(
            done[0],
            Response::Txn {
                revision: 2,
                succeeded: true,
                ..
            }
        ),
        "{done:?}"
    );
    let failed = sm.apply_entries(vec![entry(3, Some(txn(1)))]).await.unwrap();
    assert!(
        matches!(
            failed[0],
            Response::Txn {
                revision: 2,
                succeeded: false,
                ..
            }
        ),
        "{failed:?}"
    );
    let reader = store.handle.reader();
    assert_eq!(reader.get(b"a").unwrap().expect("a").mod_revision, 2);
    assert_eq!(reader.get(b"b").unwrap().expect("b").mod_revision, 2);
    assert_eq!(reader.revision(), 2);
}

/// - Two replicas apply the same log, one entry per batch and all in one batch: they end with
///   the same revisions (the count does not depend on how entries were batched).
#[tokio::test]
async fn replicas_count_alike_however_entries_are_batched() {
    let log: Vec<Entry> = vec![
        entry(1, None),
        entry(2, Some(put("a", "1"))),
        entry(3, Some(delete("missing"))),
        entry(4, None),
        entry(5, Some(put("b", "1"))),
        entry(6, Some(delete("a"))),
    ];
    let (_d1, mut one_by_one) = open();
    for e in log.clone() {
        one_by_one.state_machine.apply_entries(vec![e]).await.unwrap();
    }
    let (_d2, mut all_at_once) = open();
    all_at_once.state_machine.apply_entries(log).await.unwrap();
    for store in [&one_by_one, &all_at_once] {
        let reader = store.handle.reader();
        assert_eq!(reader.revision(), 3);
        assert_eq!(reader.get(b"b").unwrap().expect("b").mod_revision, 2);
    }
}

/// - The watch history holds each change with its previous value, in revision order: a put,
///   an overwrite, a range delete of two keys (one revision, two events).
#[tokio::test]
async fn each_change_is_recorded_for_watchers_with_its_previous_value() {
    let (_dir, mut store) = open();
    store
        .state_machine
        .apply_entries(vec![
            entry(1, Some(put("a", "1"))),
            entry(2, Some(put("a", "2"))),
            entry(3, Some(put("b", "1"))),
            entry(
                4,
                Some(Command::DeleteRange {
                    start: b"a".to_vec(),
                    end: None,
                    prev_kv: false,
                }),
            ),
        ])
        .await
        .unwrap();
    let read = store.handle.reader().changes_since(1, 100).unwrap();
    let seen: Vec<(EventKind, String, u64, Option<String>)> = read
        .events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                e.revision(),
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, "a".into(), 1, None),
            (EventKind::Put, "a".into(), 2, Some("1".into())),
            (EventKind::Put, "b".into(), 3, None),
            (EventKind::Delete, "a".into(), 4, Some("2".into())),
            (EventKind::Delete, "b".into(), 4, Some("1".into())),
        ]
    );
    assert_eq!((read.seen_up_to, read.more), (4, false));
}
