//! Reads from the applied state: Range order, limits, paging by count and by bytes, and the
//! keys-only / count-only / reverse variants.

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
