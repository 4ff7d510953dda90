//! The `etcd-client` crate — a real etcd client library, not raftkv's own stubs — against
//! raftkv's etcd port: put / get / range options / delete / txn, watches (resumed from a
//! revision, and from one compacted away), leases (grant, keep-alive, expiry), member list and
//! status; and writes through all three endpoints across a SIGKILL of the leader.
//!
//! Built only with the `etcd-client` feature of raftkv-tests: etcd-client's build script needs
//! a system `protoc`. `scripts/test.sh` turns the feature on when `protoc` is installed (CI
//! installs it when it runs as root) and says so when it is not.
#![cfg(feature = "etcd-client")]

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::process::ProcessCluster;
use raftkv_tests::{free_port, wait};

const T: Duration = Duration::from_secs(15);

/// Three in-process nodes serving etcd's API (`tune` adjusts each further).
async fn cluster(tune: impl Fn(&mut raftkv_node::NodeConfig)) -> anyhow::Result<InProcessCluster> {
    InProcessCluster::start_with(3, |c| {
        c.etcd_addr = Some(([127, 0, 0, 1], 0).into());
        tune(c);
    })
    .await
}

/// An etcd client of node `id`'s etcd port only.
async fn client_of(cluster: &InProcessCluster, id: u64) -> anyhow::Result<Client> {
    let addr = cluster
        .node(id)
        .etcd_addr
        .ok_or_else(|| anyhow::anyhow!("node {id} serves no etcd port"))?;
    Ok(Client::connect([addr.to_string()], None).await?)
}

fn keys(r: &etcd_client::GetResponse) -> Vec<String> {
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// - put answers with the previous value on request; a key's revisions and version count as
///   etcd's do;
/// - get with prefix, limit (and `more`), descending sort, keys-only, count-only, a read at an
///   older revision, and a serializable read on a follower;
/// - delete of a prefix returns what it deleted;
/// - a transaction's compares on value, version, create and mod revision pick the branch, and
///   its get runs inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_reads_and_writes() -> anyhow::Result<()> {
    let cluster = cluster(|_| {}).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut etcd = client_of(&cluster, leader).await?;

    let first = etcd.put("app/a", "1", None).await?;
    let created = first.header().map_or(0, |h| h.revision());
    let second = etcd.put("app/a", "2", Some(PutOptions::new().with_prev_key())).await?;
    assert_eq!(second.prev_key().map(|kv| kv.value().to_vec()), Some(b"1".to_vec()));
    for (k, v) in [("app/b", "3"), ("app/c", "4"), ("other", "5")] {
        etcd.put(k, v, None).await?;
    }
    let a = etcd.get("app/a", None).await?;
    let kv = &a.kvs()[0];
    assert_eq!(
        (kv.value(), kv.version(), kv.create_revision()),
        (&b"2"[..], 2, created)
    );
    assert!(kv.mod_revision() > created);

    let all = etcd.get("app/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(
        (keys(&all), all.count()),
        (vec!["app/a".into(), "app/b".into(), "app/c".into()], 3)
    );
    let limited = etcd
        .get("app/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await?;
    assert_eq!((keys(&limited).len(), limited.more(), limited.count()), (2, true, 3));
    let sorted = etcd
        .get(
            "app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await?;
    assert_eq!(keys(&sorted), ["app/c", "app/b", "app/a"]);
    let keys_only = etcd
        .get("app/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await?;
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()) && keys_only.kvs().len() == 3);
    let counted = etcd
        .get("app/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await?;
    assert_eq!((counted.kvs().len(), counted.count()), (0, 3));
    let then = etcd
        .get("app/a", Some(GetOptions::new().with_revision(created)))
        .await?;
    assert_eq!(then.kvs()[0].value(), b"1", "the value at an older revision");
    let follower = cluster.a_follower(leader)?;
    let mut on_follower = client_of(&cluster, follower).await?;
    let stale = wait::until(T, "the follower to apply the puts", || {
        let mut c = on_follower.clone();
        async move {
            let r = c.get("other", Some(GetOptions::new().with_serializable())).await.ok()?;
            (!r.kvs().is_empty()).then_some(r)
        }
    })
    .await?;
    assert_eq!(stale.kvs()[0].value(), b"5");

    let deleted = etcd
        .delete("app/", Some(DeleteOptions::new().with_prefix().with_prev_key()))
        .await?;
    assert_eq!(deleted.deleted(), 3);
    assert_eq!(deleted.prev_kvs().len(), 3);
    assert!(etcd.get("app/a", None).await?.kvs().is_empty());

    // Compares pick the branch; the get inside the transaction sees the branch's own put.
    let rev = etcd.put("cfg", "v1", None).await?.header().map_or(0, |h| h.revision());
    let txn = |value: &str| {
        Txn::new()
            .when([
                Compare::value("cfg", CompareOp::Equal, value),
                Compare::version("cfg", CompareOp::Equal, 1),
                Compare::create_revision("cfg", CompareOp::Equal, rev),
                Compare::mod_revision("cfg", CompareOp::Less, rev + 1),
            ])
            .and_then([TxnOp::put("cfg", "v2", None), TxnOp::get("cfg", None)])
            .or_else([TxnOp::get("cfg", None)])
    };
    let lost = etcd.txn(txn("nope")).await?;
    assert!(!lost.succeeded());
    let won = etcd.txn(txn("v1")).await?;
    assert!(won.succeeded());
    let read = won.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => Some(g.kvs()[0].value().to_vec()),
        _ => None,
    });
    assert_eq!(read, Some(b"v2".to_vec()));
    let ours = on_follower.put("via-follower", "x", None).await?;
    assert_eq!(
        ours.header().map(|h| h.member_id()),
        Some(leader),
        "applied by the leader"
    );
    cluster.shutdown().await;
    Ok(())
}

/// - A prefix watch on a follower sees a put and a delete (with prev_kv), in order;
/// - a watch resumed from an earlier revision replays what happened since;
/// - a watch from a revision the history (5 revisions here) no longer holds is cancelled with
///   the compact revision, so the client knows to re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_watches() -> anyhow::Result<()> {
    let cluster = cluster(|c| c.watch_history = 5).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut writer = client_of(&cluster, leader).await?;
    let mut watcher = client_of(&cluster, cluster.a_follower(leader)?).await?;

    let mut stream = watcher
        .watch("w/", Some(WatchOptions::new().with_prefix().with_prev_key()))
        .await?;
    let start = writer.put("w/1", "a", None).await?.header().map_or(0, |h| h.revision());
    writer.delete("w/1", None).await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = tokio::time::timeout(T, stream.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        for e in r.events() {
            let prev = e.prev_kv().map(|kv| kv.value().to_vec());
            seen.push((e.event_type(), prev));
        }
    }
    assert_eq!(
        seen,
        vec![(EventType::Put, None), (EventType::Delete, Some(b"a".to_vec()))]
    );

    let mut resumed = watcher
        .watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(start)))
        .await?;
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        let r = tokio::time::timeout(T, resumed.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the resumed watch ended"))?;
        replayed.extend(r.events().iter().map(|e| e.event_type()));
    }
    assert_eq!(
        replayed,
        [EventType::Put, EventType::Delete],
        "history replayed from {start}"
    );

    for i in 0..8 {
        writer.put(format!("w/{i}"), "x", None).await?;
    }
    let mut compacted = watcher
        .watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(1)))
        .await?;
    let cancelled = tokio::time::timeout(T, async {
        while let Some(r) = compacted.message().await? {
            if r.canceled() {
                return Ok(r);
            }
        }
        anyhow::bail!("the compacted watch ended without being cancelled")
    })
    .await??;
    assert!(cancelled.compact_revision() > 1, "{}", cancelled.compact_revision());
    cluster.shutdown().await;
    Ok(())
}

/// - A granted lease carries a key; the keep-alive stream answers with the TTL; time-to-live
///   lists the key;
/// - a lease nobody keeps alive expires and takes its key with it;
/// - member list names every member with its etcd address; status reports the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_keeps_leases_and_describes_the_cluster() -> anyhow::Result<()> {
    let cluster = cluster(|_| {}).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut etcd = client_of(&cluster, cluster.a_follower(leader)?).await?;

    let kept = etcd.lease_grant(5, None).await?;
    etcd.put("session/kept", "1", Some(PutOptions::new().with_lease(kept.id())))
        .await?;
    let (mut keeper, mut answers) = etcd.lease_keep_alive(kept.id()).await?;
    keeper.keep_alive().await?;
    let answer = tokio::time::timeout(T, answers.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the keep-alive stream ended"))?;
    assert_eq!((answer.id(), answer.ttl()), (kept.id(), 5));
    let ttl = etcd
        .lease_time_to_live(kept.id(), Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    assert_eq!((ttl.granted_ttl(), ttl.keys()), (5, &[b"session/kept".to_vec()][..]));

    let unkept = etcd.lease_grant(2, None).await?;
    etcd.put("session/unkept", "1", Some(PutOptions::new().with_lease(unkept.id())))
        .await?;
    let stored = etcd.get("session/unkept", None).await?;
    assert_eq!(stored.kvs()[0].lease(), unkept.id());
    wait::until(Duration::from_secs(10), "the unkept lease to expire", || {
        let mut etcd = etcd.clone();
        async move {
            etcd.get("session/unkept", None)
                .await
                .ok()?
                .kvs()
                .is_empty()
                .then_some(())
        }
    })
    .await?;
    assert_eq!(etcd.lease_time_to_live(unkept.id(), None).await?.ttl(), -1);
    assert_eq!(
        etcd.get("session/kept", None).await?.kvs().len(),
        1,
        "the kept lease's key stays"
    );
    etcd.lease_revoke(kept.id()).await?;

    let members = etcd.member_list().await?;
    let listed: BTreeSet<(u64, String)> = members
        .members()
        .iter()
        .map(|m| (m.id(), m.client_urls().join(",")))
        .collect();
    let expected: BTreeSet<(u64, String)> = [1, 2, 3]
        .into_iter()
        .map(|id| {
            let addr = cluster.node(id).etcd_addr.map(|a| a.to_string()).unwrap_or_default();
            (id, format!("http://{addr}"))
        })
        .collect();
    assert_eq!(listed, expected);
    let status = etcd.status().await?;
    assert_eq!((status.leader(), status.version()), (leader, "3.5.0"));
    assert!(status.raft_term() > 0 && status.raft_index() > 0);
    cluster.shutdown().await;
    Ok(())
}

/// Real processes: one etcd client with all three etcd endpoints writes distinct keys while
/// the leader is SIGKILLed; a put that fails is retried (re-putting the same value is
/// harmless). Afterwards every acknowledged put is readable from the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_writes_survive_a_leader_kill() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::prepare(3, &[], raftkv_tests::workspace_binary("raftkvd"))?;
    let mut endpoints = Vec::new();
    for id in [1, 2, 3] {
        let addr = format!("127.0.0.1:{}", free_port());
        cluster.set_node_flags(id, vec!["--etcd-addr".into(), addr.clone()]);
        endpoints.push(addr);
    }
    for id in [1, 2, 3] {
        cluster.start_node(id)?;
    }
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let options = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(1));
    let mut etcd = Client::connect(&endpoints, Some(options)).await?;

    let (mut acknowledged, mut retries) = (Vec::new(), 0);
    for i in 0..200 {
        if i == 50 {
            cluster.kill(leader);
        }
        let key = format!("seq/{i:03}");
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match etcd.put(key.clone(), "x", None).await {
                Ok(_) => break acknowledged.push(key),
                Err(e) => {
                    retries += 1;
                    anyhow::ensure!(tokio::time::Instant::now() < deadline, "{key} never acknowledged: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    eprintln!("200 puts acknowledged after {retries} failed attempts across the kill");
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    cluster.wait_for_leader(&survivors, T).await?;
    // The client's channel still round-robins onto the dead endpoint: read until a live one answers.
    let stored = wait::until(T, "a live endpoint to answer the read", || {
        let mut etcd = etcd.clone();
        async move {
            etcd.get("seq/", Some(GetOptions::new().with_prefix().with_keys_only()))
                .await
                .ok()
        }
    })
    .await?;
    assert_eq!(keys(&stored), acknowledged, "every acknowledged put is there");
    Ok(())
}
