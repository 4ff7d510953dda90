//! Reads from the applied state: Range order, limits, paging by count and by bytes, and the
//! keys-only / count-only / reverse variants, and reads at an older revision (from the history).

use openraft::EntryPayload;
use raftkv_store::command::{Command, Request};
use raftkv_store::types::{Entry, LeaderId, LogId};
use raftkv_store::{prefix_end, RangeQuery, StoreConfig};
use tempfile::TempDir;

async fn store_with(keys: &[(&str, usize)]) -> (TempDir, raftkv_store::Store) {
    let dir = TempDir::new().unwrap();
    let mut store = raftkv_store::open(dir.path(), &StoreConfig::default()).unwrap();
    let entries: Vec<Entry> = keys
        .iter()
        .enumerate()
        .map(|(i, (k, size))| Entry {
            log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, i as u64 + 1),
            payload: EntryPayload::Normal(Request::new(
                Command::Put {
                    key: k.as_bytes().to_vec(),
                    value: vec![b'x'; *size],
                    prev_kv: false,
                },
                0,
            )),
        })
        .collect();
    store.state_machine.apply_entries(entries).await.unwrap();
    (dir, store)
}

fn keys(r: &raftkv_store::RangeResult) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn all(limit: usize) -> RangeQuery {
    RangeQuery {
        limit,
        ..Default::default()
    }
}

#[tokio::test]
async fn range_orders_limits_and_reverses() {
    let (_d, store) = store_with(&[("b", 1), ("a", 1), ("c/1", 1), ("c/2", 1), ("d", 1)]).await;
    let reader = store.handle.reader();

    let r = reader.range(&all(100)).unwrap();
    assert_eq!(keys(&r), ["a", "b", "c/1", "c/2", "d"]);
    assert_eq!((r.more, r.count), (false, 5));

    let r = reader.range(&all(2)).unwrap();
    assert_eq!(keys(&r), ["a", "b"]);
    assert!(r.more);

    let prefix = RangeQuery {
        start: b"c/".to_vec(),
        end: prefix_end(b"c/"),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(keys(&reader.range(&prefix).unwrap()), ["c/1", "c/2"]);

    let interval = RangeQuery {
        start: b"b".to_vec(),
        end: Some(b"d".to_vec()),
        limit: 100,
        reverse: true,
        ..Default::default()
    };
    assert_eq!(keys(&reader.range(&interval).unwrap()), ["c/2", "c/1", "b"]);

    let counted = reader
        .range(&RangeQuery {
            count_only: true,
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (counted.count, counted.kvs.len()),
        (5, 0),
        "count_only counts past the limit"
    );

    let bare = reader
        .range(&RangeQuery {
            keys_only: true,
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert!(bare.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 1));
}

#[tokio::test]
async fn range_pages_by_bytes_but_always_returns_one() {
    let (_d, store) = store_with(&[("a", 600), ("b", 600), ("c", 600), ("huge", 5000)]).await;
    let reader = store.handle.reader();
    let budget = |start: &str| RangeQuery {
        start: start.as_bytes().to_vec(),
        limit: 100,
        byte_budget: Some(1300),
        ..Default::default()
    };
    let page = reader.range(&budget("")).unwrap();
    assert_eq!(keys(&page), ["a", "b"]);
    assert!(page.more);
    let page = reader.range(&budget("c")).unwrap();
    assert_eq!(keys(&page), ["c"], "huge does not fit after c");
    assert!(page.more);
    let page = reader.range(&budget("huge")).unwrap();
    assert_eq!(keys(&page), ["huge"], "a key-value over the budget still comes alone");
    assert!(!page.more);
}

/// A store that applied `commands` (one entry each) with a watch history of `history`
/// revisions.
async fn store_after(commands: Vec<Command>, history: u64) -> (TempDir, raftkv_store::Store) {
    let dir = TempDir::new().unwrap();
    let config = StoreConfig {
        watch_history_revisions: history,
        ..StoreConfig::default()
    };
    let mut store = raftkv_store::open(dir.path(), &config).unwrap();
    let entries: Vec<Entry> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| Entry {
            log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, i as u64 + 1),
            payload: EntryPayload::Normal(Request::new(c, 0)),
        })
        .collect();
    store.state_machine.apply_entries(entries).await.unwrap();
    (dir, store)
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        prev_kv: false,
    }
}

fn values(r: &raftkv_store::RangeResult) -> Vec<(String, String, u64)> {
    r.kvs
        .iter()
        .map(|kv| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (text(&kv.key), text(&kv.value), kv.version)
        })
        .collect()
}

/// Revisions 1-5: put a=1, put b=1, put a=2, delete b, put c=1. Reading at each revision gives
/// that revision's state (values, versions, deleted keys back, later keys absent), with the
/// range's limit / reverse / count options; the result carries the current revision. A
/// revision older than the history (3 revisions kept) is refused with the oldest one readable.
#[tokio::test]
async fn range_at_an_older_revision_undoes_the_later_changes() {
    let delete_b = Command::Delete {
        key: b"b".to_vec(),
        prev_kv: false,
    };
    let commands = vec![put("a", "1"), put("b", "1"), put("a", "2"), delete_b, put("c", "1")];
    let (_d, store) = store_after(commands.clone(), 100).await;
    let reader = store.handle.reader();
    let at = |revision: u64, q: &RangeQuery| reader.range_at(q, revision).unwrap().unwrap();
    let s = |k: &str, v: &str, version: u64| (k.to_string(), v.to_string(), version);

    assert_eq!(values(&at(1, &all(10))), [s("a", "1", 1)]);
    assert_eq!(values(&at(2, &all(10))), [s("a", "1", 1), s("b", "1", 1)]);
    assert_eq!(values(&at(3, &all(10))), [s("a", "2", 2), s("b", "1", 1)]);
    assert_eq!(values(&at(4, &all(10))), [s("a", "2", 2)]);
    assert_eq!(values(&at(5, &all(10))), [s("a", "2", 2), s("c", "1", 1)]);
    assert_eq!(
        at(2, &all(10)).revision,
        5,
        "the current revision, as etcd's header says"
    );
    let reverse_one = RangeQuery {
        reverse: true,
        ..all(1)
    };
    let r = at(3, &reverse_one);
    assert_eq!((values(&r), r.more), (vec![s("b", "1", 1)], true));
    let counted = RangeQuery {
        count_only: true,
        ..all(10)
    };
    assert_eq!(at(3, &counted).count, 2);
    let only_b = RangeQuery {
        start: b"b".to_vec(),
        end: Some(b"c".to_vec()),
        ..all(10)
    };
    assert_eq!(values(&at(2, &only_b)), [s("b", "1", 1)]);

    let (_d, short) = store_after(commands, 3).await;
    let reader = short.handle.reader();
    assert_eq!(
        reader.range_at(&all(10), 1).unwrap(),
        Err(raftkv_store::HistoryError::Compacted { wanted: 1, oldest: 2 })
    );
    assert_eq!(
        values(&reader.range_at(&all(10), 2).unwrap().unwrap()),
        [s("a", "1", 1), s("b", "1", 1)]
    );
}
