//! etcd's v3 API on a node's etcd port (`--etcd-addr`), driven with the etcd wire messages
//! themselves (raftkv's own generated etcd stubs, so no system protoc is needed): put, range
//! options, revision reads, delete ranges, transactions, leases on keys, and the refusals etcd's
//! clients recognise by their message.

use std::time::Duration;

use raftkv_proto::etcd::etcdserverpb::cluster_client::ClusterClient;
use raftkv_proto::etcd::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use raftkv_proto::etcd::etcdserverpb::{
    compare, request_op, response_op, AlarmRequest, CompactionRequest, Compare, DeleteRangeRequest, MemberListRequest,
    PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use raftkv_tests::in_process::InProcessCluster;
use tonic::transport::Channel;
use tonic::Code;

const T: Duration = Duration::from_secs(15);

async fn etcd_kv(cluster: &InProcessCluster, id: u64) -> anyhow::Result<KvClient<Channel>> {
    let addr = cluster
        .node(id)
        .etcd_addr
        .ok_or_else(|| anyhow::anyhow!("node {id} serves no etcd API"))?;
    Ok(KvClient::connect(format!("http://{addr}")).await?)
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn range(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

fn values(r: &raftkv_proto::etcd::etcdserverpb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_kv_api_answers_as_etcd_does() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start_with(3, |c| c.etcd_addr = Some(([127, 0, 0, 1], 0).into())).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut kv = etcd_kv(&cluster, leader).await?;

    // Put and get, with headers and versions as etcd gives them.
    let first = kv.put(put("foo", "bar")).await?.into_inner();
    let header = first.header.unwrap_or_default();
    assert_eq!(header.member_id, leader);
    assert!(header.revision > 0 && header.cluster_id != 0);
    let second = kv
        .put(PutRequest {
            prev_kv: true,
            ..put("foo", "baz")
        })
        .await?
        .into_inner();
    assert_eq!(second.prev_kv.map(|kv| kv.value), Some(b"bar".to_vec()));
    let got = kv.range(range("foo", "")).await?.into_inner();
    assert_eq!(values(&got), ["baz"]);
    assert_eq!((got.kvs[0].version, got.count, got.more), (2, 1, false));
    assert_eq!(got.kvs[0].create_revision, header.revision);

    // Range options: limit (count is every match), every key, count only, keys only, sorting.
    for (k, v) in [("a/1", "z"), ("a/2", "y"), ("a/3", "x")] {
        kv.put(put(k, v)).await?;
    }
    let limited = kv
        .range(RangeRequest {
            limit: 2,
            ..range("a/", "a0")
        })
        .await?
        .into_inner();
    assert_eq!(
        (values(&limited), limited.more, limited.count),
        (vec!["z".into(), "y".into()], true, 3)
    );
    let all = kv
        .range(RangeRequest {
            count_only: true,
            ..range("\0", "\0")
        })
        .await?
        .into_inner();
    assert_eq!((all.count, all.kvs.len()), (4, 0));
    let keys = kv
        .range(RangeRequest {
            keys_only: true,
            ..range("a/", "a0")
        })
        .await?
        .into_inner();
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()) && keys.kvs.len() == 3);
    let by_value = kv
        .range(RangeRequest {
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Value as i32,
            limit: 2,
            ..range("a/", "a0")
        })
        .await?
        .into_inner();
    assert_eq!(values(&by_value), ["x", "y"]);
    let from_a2 = kv.range(range("a/2", "\0")).await?.into_inner();
    assert_eq!(values(&from_a2), ["y", "x", "baz"], "from a/2 to the last key");

    // Revision reads: the current revision is served, older ones are compacted, later ones
    // are in the future.
    let now = all.header.unwrap_or_default().revision;
    let at_now = kv
        .range(RangeRequest {
            revision: now,
            ..range("foo", "")
        })
        .await?
        .into_inner();
    assert_eq!(values(&at_now), ["baz"]);
    for (revision, message) in [
        (1, "etcdserver: mvcc: required revision has been compacted"),
        (now + 100, "etcdserver: mvcc: required revision is a future revision"),
    ] {
        let err = kv
            .range(RangeRequest {
                revision,
                ..range("foo", "")
            })
            .await
            .expect_err("a revision other than the current one");
        assert_eq!((err.code(), err.message()), (Code::OutOfRange, message));
    }

    // Serializable reads on a follower's etcd port.
    let follower = cluster.running().into_iter().find(|id| *id != leader).unwrap_or(leader);
    let mut follower_kv = etcd_kv(&cluster, follower).await?;
    cluster.wait_revision(now as u64, T).await?;
    let stale = follower_kv
        .range(RangeRequest {
            serializable: true,
            ..range("foo", "")
        })
        .await?
        .into_inner();
    assert_eq!(values(&stale), ["baz"]);

    // Transactions: compares, then puts and single-key reads.
    let txn = |value: &str| TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: b"foo".to_vec(),
            target_union: Some(compare::TargetUnion::Value(value.into())),
            range_end: Vec::new(),
        }],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(put("swapped", "yes"))),
            },
            RequestOp {
                request: Some(request_op::Request::RequestRange(range("foo", ""))),
            },
        ],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(range("foo", ""))),
        }],
    };
    let held = kv.txn(txn("baz")).await?.into_inner();
    assert!(held.succeeded);
    assert_eq!(held.responses.len(), 2);
    match &held.responses[1].response {
        Some(response_op::Response::ResponseRange(r)) => assert_eq!(values(r), ["baz"]),
        other => panic!("expected a range response, got {other:?}"),
    }
    let missed = kv.txn(txn("other")).await?.into_inner();
    assert!(!missed.succeeded && missed.responses.len() == 1);

    // Delete ranges, with the deleted key-values.
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: b"a/".to_vec(),
            range_end: b"a0".to_vec(),
            prev_kv: true,
        })
        .await?
        .into_inner();
    assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (3, 3));
    assert!(kv.range(range("a/", "a0")).await?.into_inner().kvs.is_empty());

    // A key on a lease shows its lease; an unknown lease is etcd's "lease not found".
    let lease = cluster.client().lease_grant(Duration::from_secs(60)).await?;
    kv.put(PutRequest {
        lease: lease.id as i64,
        ..put("leased", "1")
    })
    .await?;
    let leased = kv.range(range("leased", "")).await?.into_inner();
    assert_eq!(leased.kvs[0].lease, lease.id as i64);
    let err = kv
        .put(PutRequest {
            lease: 0x1234,
            ..put("leased", "2")
        })
        .await
        .expect_err("an unknown lease");
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    // What raftkv does not do is refused by name; bad input gets etcd's messages.
    let err = kv
        .compact(CompactionRequest {
            revision: 1,
            physical: false,
        })
        .await
        .expect_err("compact");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("Compact"), "{}", err.message());
    let err = kv.put(put("", "v")).await.expect_err("an empty key");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );
    cluster.shutdown().await;
    Ok(())
}

/// A write sent to a follower's etcd port is passed on to the leader (etcd's clients do not
/// follow raftkv's leader hints); Status, MemberList and Alarm answer as etcdctl expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_and_the_cluster_describes_itself() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start_with(3, |c| c.etcd_addr = Some(([127, 0, 0, 1], 0).into())).await?;
    let leader = cluster.wait_for_leader(T).await?;
    for id in cluster.running() {
        let mut kv = etcd_kv(&cluster, id).await?;
        let key = format!("from-{id}");
        let reply = kv.put(put(&key, "1")).await?.into_inner();
        assert_eq!(
            reply.header.unwrap_or_default().member_id,
            leader,
            "applied by the leader"
        );
        let got = kv.range(range(&key, "")).await?.into_inner();
        assert_eq!(values(&got), ["1"], "node {id} reads its own write back");
    }

    let addr = |id: u64| {
        cluster
            .node(id)
            .etcd_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default()
    };
    let follower = cluster.running().into_iter().find(|id| *id != leader).unwrap_or(leader);
    let mut maintenance = MaintenanceClient::connect(addr(follower)).await?;
    let status = maintenance.status(StatusRequest {}).await?.into_inner();
    assert_eq!((status.leader, status.version.as_str()), (leader, "3.5.0"));
    assert!(status.raft_index > 0 && status.raft_term > 0 && status.db_size > 0 && !status.is_learner);
    let alarms = maintenance.alarm(AlarmRequest::default()).await?.into_inner();
    assert!(alarms.alarms.is_empty());

    let mut members = ClusterClient::connect(addr(follower)).await?;
    let listed = members.member_list(MemberListRequest::default()).await?.into_inner();
    let mut urls: Vec<(u64, Vec<String>)> = listed.members.iter().map(|m| (m.id, m.client_ur_ls.clone())).collect();
    urls.sort();
    let expected: Vec<(u64, Vec<String>)> = [1, 2, 3].into_iter().map(|id| (id, vec![addr(id)])).collect();
    assert_eq!(urls, expected, "every member with its etcd address");
    cluster.shutdown().await;
    Ok(())
}
