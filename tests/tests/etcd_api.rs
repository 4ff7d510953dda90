//! etcd's v3 API on a node's etcd port (`--etcd-addr`), driven with the etcd wire messages
//! themselves (raftkv's own generated etcd stubs, so no system protoc is needed): put, range
//! options, revision reads, delete ranges, transactions (with range reads), leases, watches,
//! Status / MemberList, writes forwarded from followers, and the refusals etcd's clients
//! recognise by their message.

use std::time::Duration;

use raftkv_proto::etcd::etcdserverpb::auth_client::AuthClient;
use raftkv_proto::etcd::etcdserverpb::cluster_client::ClusterClient;
use raftkv_proto::etcd::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use raftkv_proto::etcd::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::etcd::etcdserverpb::{
    compare, request_op, response_op, watch_request, AlarmRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthenticateRequest, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, PutRequest, RangeRequest, RequestOp, SnapshotRequest, StatusRequest,
    TxnRequest, WatchCreateRequest, WatchRequest,
};
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::wait;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

const T: Duration = Duration::from_secs(15);

/// Three in-process nodes serving etcd's API on free ports (`tune` adjusts each further).
async fn cluster_with_etcd_ports(tune: impl Fn(&mut raftkv_node::NodeConfig)) -> anyhow::Result<InProcessCluster> {
    InProcessCluster::start_with(3, |c| {
        c.etcd_addr = Some(([127, 0, 0, 1], 0).into());
        tune(c);
    })
    .await
}

/// The URL of node `id`'s etcd port.
fn etcd_url(cluster: &InProcessCluster, id: u64) -> String {
    cluster
        .node(id)
        .etcd_addr
        .map(|a| format!("http://{a}"))
        .unwrap_or_default()
}

async fn etcd_kv(cluster: &InProcessCluster, id: u64) -> anyhow::Result<KvClient<Channel>> {
    Ok(KvClient::connect(etcd_url(cluster, id)).await?)
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
    let cluster = cluster_with_etcd_ports(|_| {}).await?;
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

    // Revision reads: the current revision, an older one within the watch history (the value
    // foo had then), and one in the future.
    let now = all.header.unwrap_or_default().revision;
    let at_now = kv
        .range(RangeRequest {
            revision: now,
            ..range("foo", "")
        })
        .await?
        .into_inner();
    assert_eq!(values(&at_now), ["baz"]);
    let at_first = kv
        .range(RangeRequest {
            revision: header.revision,
            ..range("foo", "")
        })
        .await?
        .into_inner();
    assert_eq!(values(&at_first), ["bar"], "foo as it was at its first put");
    assert_eq!(at_first.kvs[0].version, 1);
    assert_eq!(
        at_first.header.unwrap_or_default().revision,
        now,
        "the header says the current revision"
    );
    let err = kv
        .range(RangeRequest {
            revision: now + 100,
            ..range("foo", "")
        })
        .await
        .expect_err("a future revision");
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );

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
    let cluster = cluster_with_etcd_ports(|_| {}).await?;
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

    let addr = |id: u64| etcd_url(&cluster, id);
    let follower = cluster.running().into_iter().find(|id| *id != leader).unwrap_or(leader);
    let mut maintenance = MaintenanceClient::connect(addr(follower)).await?;
    let status = maintenance.status(StatusRequest {}).await?.into_inner();
    assert_eq!((status.leader, status.version.as_str()), (leader, "3.5.0"));
    assert!(status.raft_index > 0 && status.raft_term > 0 && status.db_size > 0 && !status.is_learner);
    let alarms = maintenance.alarm(AlarmRequest::default()).await?.into_inner();
    assert!(alarms.alarms.is_empty());
    // Snapshot streams a raftkv backup file of the answering node, counting down to 0.
    let mut snapshot = maintenance.snapshot(SnapshotRequest {}).await?.into_inner();
    let (mut file, mut remaining, mut headers) = (Vec::new(), Vec::new(), 0);
    while let Some(chunk) = snapshot.message().await? {
        headers += usize::from(chunk.header.is_some());
        file.extend_from_slice(&chunk.blob);
        remaining.push(chunk.remaining_bytes);
    }
    assert_eq!(headers, 1, "a header on the first message only");
    assert_eq!(remaining.last(), Some(&0));
    assert_eq!(file.len() % 512, 32, "the length etcdctl's snapshot save checks for");
    assert!(remaining.windows(2).all(|w| w[0] > w[1]), "{remaining:?}");
    let (meta, data) = raftkv_proto::backup::read_backup(&file[..])?;
    assert_eq!(meta.node_id, follower);
    assert!(meta.last_index > 0 && !data.is_empty());

    let mut members = ClusterClient::connect(addr(follower)).await?;
    let listed = members.member_list(MemberListRequest::default()).await?.into_inner();
    let mut urls: Vec<(u64, Vec<String>)> = listed.members.iter().map(|m| (m.id, m.client_ur_ls.clone())).collect();
    urls.sort();
    let expected: Vec<(u64, Vec<String>)> = [1, 2, 3].into_iter().map(|id| (id, vec![addr(id)])).collect();
    assert_eq!(urls, expected, "every member with its etcd address");

    // A membership change through a follower's etcd port reaches the leader.
    let victim = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .ok_or_else(|| anyhow::anyhow!("a third node"))?;
    let removed = members
        .member_remove(MemberRemoveRequest { id: victim })
        .await?
        .into_inner();
    let mut left: Vec<u64> = removed.members.iter().map(|m| m.id).collect();
    left.sort();
    let mut expected: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != victim).collect();
    expected.sort();
    assert_eq!(left, expected);
    cluster.shutdown().await;
    Ok(())
}

fn add_member(peer: &str, is_learner: bool) -> MemberAddRequest {
    MemberAddRequest {
        peer_ur_ls: vec![peer.to_string()],
        is_learner,
    }
}

/// etcd's way of growing a cluster: MemberAdd registers a member that has not started (only
/// its peer URL is known; raftkv picks its id), then the node starts with that id and
/// `--join`, publishes its client address, and keeps the role MemberAdd gave it.
/// - MemberAdd through a follower: id 4, a learner, no name, no client URL; the same peer URL
///   again, or one that is not a URL, is refused.
/// - Node 4 started on that peer address: MemberList then names it with its etcd address, it
///   replicates the data, and is still a learner until MemberPromote.
/// - A voter registered and never started (id 5) counts in the membership and is removed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_member_add_registers_a_member_that_joins_when_started() -> anyhow::Result<()> {
    let mut cluster = cluster_with_etcd_ports(|_| {}).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.a_follower(leader)?;
    let mut members = ClusterClient::connect(etcd_url(&cluster, follower)).await?;
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let peer_url = format!("http://{}", peer.local_addr()?);

    let added = members.member_add(add_member(&peer_url, true)).await?.into_inner();
    let member = added.member.ok_or_else(|| anyhow::anyhow!("the added member"))?;
    assert_eq!(
        (member.id, member.name.as_str(), member.is_learner),
        (4, "", true),
        "{member:?}"
    );
    assert_eq!(
        (member.peer_ur_ls, member.client_ur_ls.len()),
        (vec![peer_url.clone()], 0)
    );
    assert_eq!(added.members.len(), 4);
    let again = members
        .member_add(add_member(&peer_url, true))
        .await
        .expect_err("a peer URL in use");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("peerURL exists"), "{}", again.message());
    let bad = members
        .member_add(add_member("http://nowhere/x", false))
        .await
        .expect_err("not a URL");
    assert_eq!(bad.code(), Code::InvalidArgument, "{}", bad.message());

    let mut kv = etcd_kv(&cluster, leader).await?;
    kv.put(put("before-4", "x")).await?;
    let join = vec![cluster.client_addr(leader)];
    cluster
        .start_pristine_on(4, peer, |c| {
            c.join = join.clone();
            c.etcd_addr = Some(([127, 0, 0, 1], 0).into());
        })
        .await?;
    let url4 = etcd_url(&cluster, 4);
    let started = wait::until(T, "node 4 to publish its client address", || {
        let mut members = members.clone();
        async move {
            let listed = members
                .member_list(MemberListRequest::default())
                .await
                .ok()?
                .into_inner();
            listed
                .members
                .into_iter()
                .find(|m| m.id == 4 && !m.client_ur_ls.is_empty())
        }
    })
    .await?;
    assert_eq!(
        (started.name.as_str(), started.client_ur_ls, started.is_learner),
        ("node4", vec![url4.clone()], true),
        "named, reachable, and still the learner MemberAdd made it"
    );
    let mut kv4 = KvClient::connect(url4).await?;
    let serializable = RangeRequest {
        serializable: true,
        ..range("before-4", "")
    };
    wait::until(T, "node 4 to hold the data", || {
        let (mut kv4, r) = (kv4.clone(), serializable.clone());
        async move { (values(&kv4.range(r).await.ok()?.into_inner()) == ["x"]).then_some(()) }
    })
    .await?;
    let promoted = members
        .member_promote(MemberPromoteRequest { id: 4 })
        .await?
        .into_inner();
    assert!(promoted.members.iter().any(|m| m.id == 4 && !m.is_learner));
    assert_eq!(values(&kv4.range(range("before-4", "")).await?.into_inner()), ["x"]);

    let unstarted = members
        .member_add(add_member("http://127.0.0.1:9", false))
        .await?
        .into_inner()
        .member
        .ok_or_else(|| anyhow::anyhow!("the added member"))?;
    assert_eq!((unstarted.id, unstarted.is_learner), (5, false));
    kv.put(put("with-5-registered", "y")).await?;
    let removed = members.member_remove(MemberRemoveRequest { id: 5 }).await?.into_inner();
    let mut left: Vec<u64> = removed.members.iter().map(|m| m.id).collect();
    left.sort();
    assert_eq!(left, [1, 2, 3, 4]);
    cluster.shutdown().await;
    Ok(())
}

/// Leases through the etcd port of a follower (passed on to the leader): a TTL below the
/// minimum is raised to it, the keep-alive stream answers each request, time-to-live lists the
/// keys, and a lease that is gone answers as etcd's does (TTL -1 / 0, "lease not found").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_through_the_etcd_port() -> anyhow::Result<()> {
    let cluster = cluster_with_etcd_ports(|_| {}).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.running().into_iter().find(|id| *id != leader).unwrap_or(leader);
    let addr = etcd_url(&cluster, follower);
    let mut lease = LeaseClient::connect(addr.clone()).await?;
    let mut kv = KvClient::connect(addr).await?;

    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await?
        .into_inner();
    assert_eq!(granted.ttl, 2, "raised to the minimum, 1.5 s, in whole seconds");
    kv.put(PutRequest {
        lease: granted.id,
        ..put("session/a", "1")
    })
    .await?;

    let (requests, inbound) = tokio::sync::mpsc::channel(4);
    let mut replies = lease.lease_keep_alive(ReceiverStream::new(inbound)).await?.into_inner();
    for _ in 0..2 {
        requests.send(LeaseKeepAliveRequest { id: granted.id }).await?;
        let reply = tokio::time::timeout(T, replies.message()).await??;
        assert_eq!(reply.map(|r| (r.id, r.ttl)), Some((granted.id, 2)));
    }

    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: granted.id,
            keys: true,
        })
        .await?
        .into_inner();
    assert_eq!((ttl.granted_ttl, ttl.keys.clone()), (2, vec![b"session/a".to_vec()]));
    assert!(ttl.ttl >= 0 && ttl.ttl <= 2);
    let listed = lease.lease_leases(LeaseLeasesRequest {}).await?.into_inner();
    assert_eq!(listed.leases.iter().map(|l| l.id).collect::<Vec<_>>(), vec![granted.id]);

    lease.lease_revoke(LeaseRevokeRequest { id: granted.id }).await?;
    assert!(kv.range(range("session/a", "")).await?.into_inner().kvs.is_empty());
    let gone = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: granted.id,
            keys: false,
        })
        .await?
        .into_inner();
    assert_eq!(gone.ttl, -1);
    requests.send(LeaseKeepAliveRequest { id: granted.id }).await?;
    let reply = tokio::time::timeout(T, replies.message()).await??;
    assert_eq!(reply.map(|r| r.ttl), Some(0), "a keep-alive of a lease that is gone");
    let err = lease
        .lease_revoke(LeaseRevokeRequest { id: granted.id })
        .await
        .expect_err("revoke twice");
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    cluster.shutdown().await;
    Ok(())
}

/// A watch on a follower's etcd port sees puts and deletes (with prev_kv) in order; a watch
/// from a revision the history no longer holds is created and cancelled at once with
/// compact_revision (and so is a range read at that revision), while the stream's other watch
/// goes on; a transaction reads a range
/// sorted by create revision (what etcd's lock recipe does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_range_reads_in_transactions() -> anyhow::Result<()> {
    let cluster = cluster_with_etcd_ports(|c| c.watch_history = 5).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.running().into_iter().find(|id| *id != leader).unwrap_or(leader);
    let addr = etcd_url(&cluster, follower);
    let mut kv = etcd_kv(&cluster, leader).await?;
    let mut watch = WatchClient::connect(addr).await?;

    let (requests, inbound) = tokio::sync::mpsc::channel(4);
    let mut responses = watch.watch(ReceiverStream::new(inbound)).await?.into_inner();
    let create = |key: &str, range_end: &str, start_revision: i64| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision,
            prev_kv: true,
            ..Default::default()
        })),
    };
    requests.send(create("w/", "w0", 0)).await?;
    let created = tokio::time::timeout(T, responses.message()).await??.unwrap_or_default();
    assert!(created.created && !created.canceled);

    kv.put(put("w/1", "a")).await?;
    kv.delete_range(DeleteRangeRequest {
        key: b"w/1".to_vec(),
        ..Default::default()
    })
    .await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = tokio::time::timeout(T, responses.message()).await??.unwrap_or_default();
        assert_eq!(r.watch_id, created.watch_id);
        seen.extend(r.events.into_iter().map(|e| (e.r#type, e.prev_kv.map(|kv| kv.value))));
    }
    assert_eq!(
        seen,
        vec![(0, None), (1, Some(b"a".to_vec()))],
        "a PUT, then a DELETE with its prev_kv"
    );

    // Past the history (5 revisions): a watch from revision 1 is refused, etcd's way.
    for i in 0..8 {
        kv.put(put(&format!("filler/{i}"), "x")).await?;
    }
    let last = kv
        .put(put("filler/last", "x"))
        .await?
        .into_inner()
        .header
        .unwrap_or_default()
        .revision;
    cluster.wait_revision(last as u64, T).await?;
    requests.send(create("filler/", "filler0", 1)).await?;
    let refused = loop {
        let r = tokio::time::timeout(T, responses.message()).await??.unwrap_or_default();
        if r.canceled {
            break r;
        }
    };
    assert!(refused.created && refused.compact_revision > 1, "{refused:?}");
    assert!(refused.cancel_reason.contains("compacted"), "{}", refused.cancel_reason);
    // So is a range read at a revision the history no longer reaches back to.
    let err = kv
        .range(RangeRequest {
            revision: 1,
            ..range("w/", "w0")
        })
        .await
        .expect_err("a compacted revision");
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    kv.put(put("w/2", "b")).await?;
    let r = tokio::time::timeout(T, responses.message()).await??.unwrap_or_default();
    assert_eq!(r.watch_id, created.watch_id, "the first watch goes on");

    // A lock-style transaction: create my key if missing, then read the queue's first creator.
    let queue = |me: &str| TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: me.into(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            range_end: Vec::new(),
        }],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(put(me, ""))),
            },
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    sort_order: SortOrder::Ascend as i32,
                    sort_target: SortTarget::Create as i32,
                    limit: 1,
                    ..range("lock/", "lock0")
                })),
            },
        ],
        failure: vec![],
    };
    for me in ["lock/b", "lock/a"] {
        let r = kv.txn(queue(me)).await?.into_inner();
        match &r.responses[1].response {
            Some(response_op::Response::ResponseRange(owner)) => {
                assert_eq!(owner.kvs[0].key, b"lock/b", "the first creator owns the lock");
                assert_eq!(owner.count, if me == "lock/b" { 1 } else { 2 });
            }
            other => panic!("expected a range response, got {other:?}"),
        }
    }
    cluster.shutdown().await;
    Ok(())
}

/// With `--auth-file`, etcd's clients authenticate as etcd's do: Authenticate(NAME, TOKEN)
/// gives the token they send as `token` metadata; roles apply as on the native port; users
/// and roles are the file's, not the API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_authentication_maps_onto_raftkv_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let auth_file = dir.path().join("tokens");
    std::fs::write(
        &auth_file,
        "app readwrite app-token-0123456789abcdef\nviewer read viewer-token-0123456789abcdef\n\
         ops admin ops-token-0123456789abcdef\n",
    )?;
    let cluster = cluster_with_etcd_ports(|c| c.auth_file = Some(auth_file.clone())).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let addr = etcd_url(&cluster, leader);
    let mut auth = AuthClient::connect(addr.clone()).await?;
    let mut kv = KvClient::connect(addr).await?;

    let err = kv.range(range("k", "")).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(auth.auth_status(AuthStatusRequest {}).await?.into_inner().enabled);
    let err = auth
        .authenticate(AuthenticateRequest {
            name: "app".into(),
            password: "viewer-token-0123456789abcdef".into(),
        })
        .await
        .expect_err("another user's token");
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password"
        )
    );
    let with_token = |token: &str, message: PutRequest| {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("token", token.parse().expect("a token is valid metadata"));
        request
    };
    let token = auth
        .authenticate(AuthenticateRequest {
            name: "app".into(),
            password: "app-token-0123456789abcdef".into(),
        })
        .await?
        .into_inner()
        .token;
    kv.put(with_token(&token, put("k", "v"))).await?;
    let err = kv
        .put(with_token("viewer-token-0123456789abcdef", put("k", "w")))
        .await
        .expect_err("a read-only user writes");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut add_user = tonic::Request::new(AuthUserAddRequest::default());
    add_user
        .metadata_mut()
        .insert("token", "ops-token-0123456789abcdef".parse()?);
    let err = auth.user_add(add_user).await.expect_err("users are the file's");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("--auth-file"), "{}", err.message());
    cluster.shutdown().await;
    Ok(())
}
