//! Reads from any node at a chosen consistency, batched read-index rounds, transactions,
//! range pagination and range deletes — on an in-process three-node cluster.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftkv_client::pb::kv_client::KvClient;
use raftkv_client::pb::{txn_op_response, Consistency, DeleteRequest, GetRequest, RangeRequest, TxnRequest};
use raftkv_client::txn::{self, Op};
use raftkv_client::{Client, ClientConfig};
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(10);

async fn kv(addr: &str) -> KvClient<Channel> {
    KvClient::connect(format!("http://{addr}")).await.expect("connect")
}

fn linearizable(key: &str) -> GetRequest {
    GetRequest {
        key: key.into(),
        consistency: Consistency::Linearizable as i32,
    }
}

/// - A write acknowledged by the leader is seen at once by a linearizable read on every
///   follower, round after round: a follower read is as fresh as a leader read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_linearizable_reads_see_the_latest_acknowledged_write() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    let followers: Vec<u64> = cluster.running().into_iter().filter(|id| *id != leader).collect();
    let mut readers = Vec::new();
    for id in &followers {
        readers.push((*id, kv(&cluster.client_addr(*id)).await));
    }
    for round in 0..100 {
        let put = client.put("counter", round.to_string()).await?;
        for (id, reader) in readers.iter_mut() {
            let got = reader.get(linearizable("counter")).await?.into_inner();
            let kv = got.kv.expect("the key exists");
            assert_eq!(
                kv.value,
                round.to_string().into_bytes(),
                "node {id} returned a stale value"
            );
            assert_eq!(kv.mod_revision, put.revision);
            assert_eq!(
                got.header.expect("header").node_id,
                *id,
                "served by the follower itself"
            );
        }
    }
    let status = client.status_of(&cluster.client_addr(followers[0]), T).await?;
    assert!(status.linearizable_reads >= 100, "{status:?}");
    cluster.shutdown().await;
    Ok(())
}

/// - The leader is cut off from both followers. They elect a new leader and take a write.
/// - The old leader, still believing it leads, must not answer a linearizable read with its
///   old data: it fails (it cannot confirm leadership with a quorum).
/// - Its stale read does answer, from its old state, and says which leader it knows.
/// - Once the links heal it follows the new leader and serves the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_serves_an_old_linearizable_read() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let old = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    client.put("k", "old").await?;
    cluster.wait_applied(cluster.applied_index(old), T).await?;

    tracing::info!(old, "--- isolate the leader");
    let others: Vec<u64> = cluster.running().into_iter().filter(|id| *id != old).collect();
    cluster.isolate(old);
    let new = wait::until(T, "a new leader among the others", || async {
        let m = cluster.node(others[0]).raft.metrics().borrow_watched().clone();
        m.current_leader.filter(|l| *l != old && others.contains(l))
    })
    .await?;
    let majority = Client::new(ClientConfig::new(others.iter().map(|id| cluster.client_addr(*id))))?;
    majority.put("k", "new").await?;

    let mut stale_side = kv(&cluster.client_addr(old)).await;
    for _ in 0..5 {
        let mut req = tonic::Request::new(linearizable("k"));
        req.set_timeout(Duration::from_secs(2));
        match stale_side.get(req).await {
            Ok(r) => panic!(
                "the deposed leader answered a linearizable read: {:?}",
                r.into_inner().kv
            ),
            Err(status) => assert!(
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ),
                "{status:?}"
            ),
        }
    }
    let stale = stale_side
        .get(GetRequest {
            key: b"k".to_vec(),
            consistency: Consistency::Stale as i32,
        })
        .await?
        .into_inner();
    assert_eq!(
        stale.kv.expect("k").value,
        b"old",
        "a stale read shows the isolated node's state"
    );
    assert_ne!(stale.header.expect("header").leader_id, new);

    tracing::info!("--- heal");
    cluster.heal_links();
    wait::until(T, "the old leader to serve the new value", || async {
        let r = kv(&cluster.client_addr(old)).await.get(linearizable("k")).await.ok()?;
        (r.into_inner().kv?.value == b"new").then_some(())
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

/// - 64 concurrent readers on one follower and on the leader: every read returns the right
///   value, and the nodes ran far fewer read-index rounds than they served reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_read_index_rounds() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let client = cluster.client();
    let mut expected = BTreeMap::new();
    for i in 0..20 {
        client.put(format!("k{i}"), format!("v{i}")).await?;
        expected.insert(format!("k{i}"), format!("v{i}"));
    }
    let expected = Arc::new(expected);
    for node in [follower, leader] {
        let addr = cluster.client_addr(node);
        let before = client.status_of(&addr, T).await?;
        let mut tasks = Vec::new();
        for reader in 0..64 {
            let (addr, expected) = (addr.clone(), expected.clone());
            tasks.push(tokio::spawn(async move {
                let mut kv = kv(&addr).await;
                for n in 0..10 {
                    let key = format!("k{}", (reader + n) % 20);
                    let got = kv.get(linearizable(&key)).await.expect("read").into_inner();
                    assert_eq!(got.kv.expect("exists").value, expected[&key].as_bytes());
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let after = client.status_of(&addr, T).await?;
        let reads = after.linearizable_reads - before.linearizable_reads;
        let rounds = after.read_index_rounds - before.read_index_rounds;
        tracing::info!(node, reads, rounds, "--- batching");
        assert_eq!(reads, 640);
        assert!(rounds * 4 < reads, "node {node}: {rounds} rounds for {reads} reads");
    }
    let leader_status = client.status_of(&cluster.client_addr(leader), T).await?;
    assert!(leader_status.leadership_confirmations > 0);
    cluster.shutdown().await;
    Ok(())
}

/// - Ten clients race to take a lock with compare-and-swap from "free" to their own id:
///   exactly one wins, and the lock holds the winner's id.
/// - The same with put-if-absent on a fresh key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_has_exactly_one_winner() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    client.put("lock", "free").await?;
    let mut racers = Vec::new();
    for id in 0..10 {
        let client = client.clone();
        racers.push(tokio::spawn(async move {
            let cas = client
                .compare_and_swap("lock", "free", format!("owner-{id}"))
                .await
                .expect("cas");
            let pia = client
                .put_if_absent("election", format!("owner-{id}"))
                .await
                .expect("put_if_absent");
            (id, cas.succeeded, pia.succeeded)
        }));
    }
    let mut cas_winners = Vec::new();
    let mut pia_winners = Vec::new();
    for r in racers {
        let (id, cas, pia) = r.await?;
        if cas {
            cas_winners.push(id);
        }
        if pia {
            pia_winners.push(id);
        }
    }
    assert_eq!(cas_winners.len(), 1, "{cas_winners:?}");
    assert_eq!(pia_winners.len(), 1, "{pia_winners:?}");
    let lock = client.get("lock").await?.kv.expect("lock");
    assert_eq!(lock.value, format!("owner-{}", cas_winners[0]).into_bytes());
    assert_eq!(lock.version, 2, "one put, one successful swap");
    let election = client.get("election").await?.kv.expect("election");
    assert_eq!(election.value, format!("owner-{}", pia_winners[0]).into_bytes());
    cluster.shutdown().await;
    Ok(())
}

/// - Compares on every field with every operator, on an existing and a missing key; the reply
///   says which branch ran and carries each operation's result; writes in one transaction share
///   its revision and later operations see earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_every_field_and_runs_the_right_branch() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    let first = client.put("k", "b").await?;
    let second = client.put("k", "b").await?; // version 2, create = first, mod = second
    let (create, modr) = (first.revision, second.revision);

    let holds = |c| async {
        let r = client
            .txn(
                TxnRequest {
                    compare: vec![c],
                    ..Default::default()
                },
                None,
            )
            .await
            .expect("txn");
        r.succeeded
    };
    let cases = vec![
        (txn::value("k", Op::Equal, "b"), true),
        (txn::value("k", Op::NotEqual, "b"), false),
        (txn::value("k", Op::Less, "c"), true),
        (txn::value("k", Op::Greater, "c"), false),
        (txn::value("missing", Op::NotEqual, "x"), false),
        (txn::version("k", Op::Equal, 2), true),
        (txn::version("k", Op::Greater, 2), false),
        (txn::version("k", Op::Less, 3), true),
        (txn::version("missing", Op::Equal, 0), true),
        (txn::create_revision("k", Op::Equal, create), true),
        (txn::create_revision("k", Op::NotEqual, create), false),
        (txn::create_revision("k", Op::Less, modr), true),
        (txn::mod_revision("k", Op::Equal, modr), true),
        (txn::mod_revision("k", Op::Greater, create), true),
        (txn::mod_revision("missing", Op::Greater, 0), false),
        (txn::exists("k"), true),
        (txn::exists("missing"), false),
        (txn::missing("missing"), true),
        (txn::missing("k"), false),
    ];
    for (compare, expected) in cases {
        let shown = format!("{compare:?}");
        assert_eq!(holds(compare).await, expected, "{shown}");
    }

    // Both branches, with results in order; writes see earlier writes of the same transaction.
    let r = client
        .txn(
            TxnRequest {
                compare: vec![txn::value("k", Op::Equal, "b"), txn::missing("new")],
                success: vec![txn::put("new", "1"), txn::get("new"), txn::delete("k"), txn::get("k")],
                failure: vec![txn::get("k")],
            },
            None,
        )
        .await?;
    assert!(r.succeeded);
    assert_eq!(r.responses.len(), 4);
    match &r.responses[1].response {
        Some(txn_op_response::Response::Get(g)) => {
            let kv = g.kv.as_ref().expect("sees the put before it");
            assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"1"[..], r.revision));
        }
        other => panic!("{other:?}"),
    }
    match &r.responses[2].response {
        Some(txn_op_response::Response::Delete(d)) => assert_eq!(d.deleted, 1),
        other => panic!("{other:?}"),
    }
    match &r.responses[3].response {
        Some(txn_op_response::Response::Get(g)) => assert!(g.kv.is_none(), "sees the delete before it"),
        other => panic!("{other:?}"),
    }

    let r = client
        .txn(
            TxnRequest {
                compare: vec![txn::exists("k")],
                success: vec![txn::put("k", "should-not-happen")],
                failure: vec![txn::get("new")],
            },
            None,
        )
        .await?;
    assert!(!r.succeeded, "k was deleted");
    assert_eq!(r.responses.len(), 1);
    assert!(client.get("k").await?.kv.is_none(), "the success branch did not run");
    cluster.shutdown().await;
    Ok(())
}

/// - Paging through a range with a small limit visits every key exactly once, in order, while
///   other writes go on (values change, keys elsewhere appear); count-only and keys-only agree
///   with the full result; reverse paging visits them in reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pagination_visits_every_key_once_while_writes_continue() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    for i in 0..300 {
        client.put(format!("page/{i:04}"), "0").await?;
    }
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                client
                    .put(format!("page/{:04}", (i * 7) % 300), i.to_string())
                    .await
                    .expect("overwrite");
                client.put(format!("zzz/{i}"), "x").await.expect("insert elsewhere");
            }
        })
    };
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let mut pager = kv(&cluster.client_addr(follower)).await;
    let prefix_end = b"page0".to_vec();
    let mut seen = Vec::new();
    let mut start = b"page/".to_vec();
    loop {
        let page = pager
            .range(RangeRequest {
                start: start.clone(),
                end: prefix_end.clone(),
                limit: 37,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(page.kvs.len() <= 37);
        seen.extend(page.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()));
        if !page.more {
            break;
        }
        start = page.next_key;
    }
    let expected: Vec<String> = (0..300).map(|i| format!("page/{i:04}")).collect();
    assert_eq!(seen, expected, "every key once, in order");

    let mut reverse_seen = Vec::new();
    let mut end = prefix_end.clone();
    loop {
        let page = pager
            .range(RangeRequest {
                start: b"page/".to_vec(),
                end: end.clone(),
                limit: 50,
                reverse: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        reverse_seen.extend(page.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()));
        if !page.more {
            break;
        }
        end = page.next_key;
    }
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(reverse_seen, reversed);
    writer.await?;

    let full = pager
        .range(RangeRequest {
            prefix: b"page/".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let counted = pager
        .range(RangeRequest {
            prefix: b"page/".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let keys = pager
        .range(RangeRequest {
            prefix: b"page/".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(counted.count, full.kvs.len() as u64);
    assert!(counted.kvs.is_empty());
    let full_keys: Vec<_> = full
        .kvs
        .iter()
        .map(|kv| (&kv.key, kv.mod_revision, kv.version))
        .collect();
    let bare_keys: Vec<_> = keys
        .kvs
        .iter()
        .map(|kv| (&kv.key, kv.mod_revision, kv.version))
        .collect();
    assert_eq!(full_keys, bare_keys);
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()));
    let revision = full.header.expect("header").revision;
    assert!(
        full.kvs.iter().all(|kv| kv.mod_revision <= revision),
        "read at one revision"
    );
    cluster.shutdown().await;
    Ok(())
}

/// - Deleting a prefix or an interval removes exactly those keys and reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_deletes_remove_exactly_the_selected_keys() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    for k in ["a", "job/1", "job/2", "job/3", "jobs", "m", "n", "o"] {
        client.put(k, "v").await?;
    }
    let by_prefix = client
        .delete_request(
            DeleteRequest {
                key: b"job/".to_vec(),
                prefix: true,
                prev_kv: true,
                ..Default::default()
            },
            None,
        )
        .await?;
    assert_eq!(by_prefix.deleted, 3);
    let prev: Vec<_> = by_prefix.prev_kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(prev, [b"job/1".to_vec(), b"job/2".to_vec(), b"job/3".to_vec()]);
    let interval = client
        .delete_request(
            DeleteRequest {
                key: b"m".to_vec(),
                end: b"o".to_vec(),
                ..Default::default()
            },
            None,
        )
        .await?;
    assert_eq!((interval.deleted, interval.prev_kvs.len()), (2, 0));
    let left = client
        .range(
            RangeRequest {
                keys_only: true,
                ..Default::default()
            },
            None,
        )
        .await?;
    let left: Vec<_> = left
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect();
    assert_eq!(left, ["a", "jobs", "o"]);
    cluster.shutdown().await;
    Ok(())
}
