//! The client's fault-tolerance toolkit against fake nodes whose behaviour each test scripts:
//! weighted read balancing, backups, circuit breakers on hung and dead nodes, degraded reads,
//! and exactly-once numbering of retried writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_client::pb::cluster_server::{Cluster, ClusterServer};
use raftkv_client::pb::kv_server::{Kv, KvServer};
use raftkv_client::pb::*;
use raftkv_client::{BreakerConfig, Client, ClientConfig, ClientError, ReadOptions};
use raftkv_proto::{error_kind, metadata};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    Serve,
    /// Never answers (like a SIGSTOPped process).
    Hang,
    /// Answers linearizable reads and writes with "no leader"; stale reads are served.
    NoQuorum,
    /// Fails the first attempt of every write as a broken connection would, then serves.
    DropFirstWriteAttempt,
}

#[derive(Clone)]
struct FakeNode {
    id: u64,
    behavior: Arc<Mutex<Behavior>>,
    /// (client id, seq, acked below) of every write attempt received.
    writes: Arc<Mutex<Vec<(u64, u64, u64)>>>,
    reads: Arc<Mutex<u64>>,
    /// What Status reports, when a test scripts it: (leader address, whether this node is it).
    status_claim: Arc<Mutex<Option<(String, bool)>>>,
}

fn number(md: &tonic::metadata::MetadataMap, key: &str) -> u64 {
    md.get(key)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn no_leader() -> Status {
    let mut s = Status::unavailable("no leader");
    s.metadata_mut()
        .insert(metadata::ERROR_KIND, error_kind::NO_LEADER.parse().unwrap());
    s
}

impl FakeNode {
    fn behavior(&self) -> Behavior {
        *self.behavior.lock().unwrap()
    }

    async fn hang_if_asked(&self) {
        if self.behavior() == Behavior::Hang {
            std::future::pending::<()>().await;
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            node_id: self.id,
            revision: 10 + self.id,
            leader_id: 1,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl Kv for FakeNode {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.hang_if_asked().await;
        let md = request.metadata();
        let seen = (
            number(md, metadata::CLIENT_ID),
            number(md, metadata::REQUEST_SEQ),
            number(md, metadata::ACKED_BELOW),
        );
        let first_attempt = {
            let mut writes = self.writes.lock().unwrap();
            let first = !writes.iter().any(|w| w.0 == seen.0 && w.1 == seen.1);
            writes.push(seen);
            first
        };
        match self.behavior() {
            Behavior::NoQuorum => Err(no_leader()),
            Behavior::DropFirstWriteAttempt if first_attempt => Err(Status::unavailable("connection reset")),
            _ => Ok(Response::new(PutResponse {
                header: self.header(),
                revision: 100,
                prev_kv: None,
            })),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.hang_if_asked().await;
        let linearizable = request.get_ref().consistency != Consistency::Stale as i32;
        if self.behavior() == Behavior::NoQuorum && linearizable {
            return Err(no_leader());
        }
        *self.reads.lock().unwrap() += 1;
        Ok(Response::new(GetResponse {
            header: self.header(),
            kv: Some(KeyValue {
                key: request.into_inner().key,
                value: self.id.to_string().into_bytes(),
                ..Default::default()
            }),
        }))
    }

    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

fn not_faked() -> Status {
    Status::unimplemented("not part of the fake")
}

#[tonic::async_trait]
impl Cluster for FakeNode {
    type BackupStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<BackupChunk, Status>> + Send>>;

    async fn add_member(&self, _: Request<AddMemberRequest>) -> Result<Response<MembersResponse>, Status> {
        Err(not_faked())
    }

    async fn promote_member(&self, _: Request<PromoteMemberRequest>) -> Result<Response<MembersResponse>, Status> {
        Err(not_faked())
    }

    async fn remove_member(&self, _: Request<RemoveMemberRequest>) -> Result<Response<MembersResponse>, Status> {
        Err(not_faked())
    }

    async fn list_members(&self, _: Request<ListMembersRequest>) -> Result<Response<MembersResponse>, Status> {
        Err(not_faked())
    }

    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Result<Response<SnapshotResponse>, Status> {
        Err(not_faked())
    }

    async fn transfer_leader(
        &self,
        _: Request<raftkv_client::pb::TransferLeaderRequest>,
    ) -> Result<Response<raftkv_client::pb::TransferLeaderResponse>, Status> {
        Err(not_faked())
    }

    async fn backup(&self, _: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        Err(not_faked())
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.hang_if_asked().await;
        let claim = self.status_claim.lock().unwrap().clone();
        Ok(Response::new(match claim {
            Some((leader_addr, is_leader)) => StatusResponse {
                id: self.id,
                role: if is_leader { Role::Leader } else { Role::Follower } as i32,
                leader_addr,
                term: 2,
                ..Default::default()
            },
            None => StatusResponse {
                id: self.id,
                role: if self.id == 1 { Role::Leader } else { Role::Follower } as i32,
                ..Default::default()
            },
        }))
    }
}

/// Starts a fake node on 127.0.0.1 and returns it with its address.
async fn fake(id: u64, behavior: Behavior) -> (FakeNode, String) {
    let node = FakeNode {
        id,
        behavior: Arc::new(Mutex::new(behavior)),
        writes: Arc::default(),
        reads: Arc::default(),
        status_claim: Arc::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tonic::transport::Server::builder()
        .add_service(KvServer::new(node.clone()))
        .add_service(ClusterServer::new(node.clone()));
    tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));
    (node, addr)
}

fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn quick_config(list: &str) -> ClientConfig {
    let mut c = ClientConfig::parse(list).unwrap();
    c.timeout = Duration::from_secs(3);
    c.attempt_timeout = Duration::from_millis(150);
    c.breaker = BreakerConfig {
        window: Duration::from_secs(10),
        min_calls: 2,
        failure_rate: 0.5,
        open_for: Duration::from_secs(30),
        half_open_trials: 1,
    };
    c
}

async fn stale_get(client: &Client) -> Result<u64, ClientError> {
    let r = client.get_with("k", Consistency::Stale, None).await?;
    Ok(r.header.unwrap().node_id)
}

#[tokio::test]
async fn reads_follow_the_weights_and_leave_backups_idle() {
    let (_a, a) = fake(1, Behavior::Serve).await;
    let (_b, b) = fake(2, Behavior::Serve).await;
    let (_c, c) = fake(3, Behavior::Serve).await;
    let client = Client::new(quick_config(&format!("{a}=3,{b},{c}"))).unwrap();
    let mut served = BTreeMap::new();
    for _ in 0..500 {
        *served.entry(stale_get(&client).await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(served, BTreeMap::from([(1, 300), (2, 100), (3, 100)]));

    let client = Client::new(quick_config(&format!("{a},{b},{c}=backup"))).unwrap();
    for _ in 0..100 {
        assert_ne!(
            stale_get(&client).await.unwrap(),
            3,
            "the backup serves nothing while primaries are fine"
        );
    }
}

#[tokio::test]
async fn dead_and_hung_primaries_trip_their_breakers_and_the_backup_takes_over() {
    let dead = dead_addr();
    let (_hung, hung) = fake(2, Behavior::Hang).await;
    let (backup_node, backup) = fake(3, Behavior::Serve).await;
    let client = Client::new(quick_config(&format!("{dead},{hung},{backup}=backup"))).unwrap();
    for _ in 0..20 {
        assert_eq!(stale_get(&client).await.unwrap(), 3, "every read ends up on the backup");
    }
    let views: BTreeMap<String, _> = client.endpoints().into_iter().map(|e| (e.addr.clone(), e)).collect();
    assert_eq!(views[&dead].breaker, "open");
    assert_eq!(views[&hung].breaker, "open");
    assert_eq!(views[&backup].breaker, "closed");
    assert!(views[&dead].breaker_transitions >= 1 && views[&hung].failures >= 2);
    // Once both breakers are open no attempt goes to the primaries: 20 reads, a handful of
    // failed attempts to trip the breakers, the rest straight to the backup.
    assert_eq!(*backup_node.reads.lock().unwrap(), 20);
    assert!(views[&dead].calls + views[&hung].calls <= 6, "{views:?}");
}

#[tokio::test]
async fn a_hung_node_among_primaries_is_skipped_after_its_breaker_opens() {
    let (_a, a) = fake(1, Behavior::Serve).await;
    let (hung_node, hung) = fake(2, Behavior::Serve).await;
    let (_c, c) = fake(3, Behavior::Serve).await;
    let client = Client::new(quick_config(&format!("{a},{hung},{c}"))).unwrap();
    for _ in 0..30 {
        stale_get(&client).await.unwrap();
    }
    *hung_node.behavior.lock().unwrap() = Behavior::Hang;
    let mut by_node = BTreeMap::new();
    for _ in 0..60 {
        *by_node.entry(stale_get(&client).await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(by_node.get(&2), None, "no read is served by the hung node");
    let hung_view = client.endpoints().into_iter().find(|e| e.addr == hung).unwrap();
    assert_eq!(hung_view.breaker, "open");
    // The window still held the 10 reads it served before it hung: 10 failures reach the 50%
    // failure rate, and then the breaker stops the bleeding.
    assert_eq!(hung_view.failures, 10, "{hung_view:?}");
}

#[tokio::test]
async fn a_linearizable_read_degrades_to_a_marked_stale_read_only_when_allowed() {
    let (_a, a) = fake(1, Behavior::NoQuorum).await;
    let (_b, b) = fake(2, Behavior::NoQuorum).await;
    let mut config = quick_config(&format!("{a},{b}"));
    config.timeout = Duration::from_millis(800);
    let client = Client::new(config).unwrap();

    let strict = client.get_with("k", Consistency::Linearizable, None).await.unwrap_err();
    assert!(matches!(strict, ClientError::Unavailable(_)), "{strict}");

    let read = client
        .get_opts(
            "k",
            ReadOptions {
                allow_degraded: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(read.degraded);
    let header = read.response.header.unwrap();
    assert!(header.revision > 0, "the degraded answer says how fresh it is");
}

#[tokio::test]
async fn a_write_whose_outcome_is_unknown_is_retried_with_the_same_number() {
    let (node, addr) = fake(1, Behavior::DropFirstWriteAttempt).await;
    let mut config = quick_config(&addr);
    config.breaker = BreakerConfig::default(); // half the attempts fail here by design
    let client = Client::new(config).unwrap();
    client.put("k", "v1").await.expect("retried to success");
    client.put("k", "v2").await.expect("retried to success");
    let writes = node.writes.lock().unwrap().clone();
    assert_eq!(writes.len(), 4, "two attempts per write: {writes:?}");
    let id = client.client_id();
    assert_eq!(writes[0], writes[1], "a retry repeats (client id, seq, acked_below)");
    assert_eq!((writes[0].0, writes[0].1), (id, 1));
    assert_eq!(
        (writes[2].0, writes[2].1, writes[2].2),
        (id, 2, 2),
        "seq 1 is acknowledged"
    );

    // Without exactly-once numbering the same failure cannot be retried safely.
    let mut config = quick_config(&addr);
    config.exactly_once = false;
    let unsafe_client = Client::new(config).unwrap();
    let err = unsafe_client.put("k", "v3").await.unwrap_err();
    assert!(matches!(err, ClientError::Indeterminate(_)), "{err}");
}

#[tokio::test]
async fn an_exhausted_write_is_indeterminate_not_failed_once_its_outcome_was_unknown() {
    let (node, addr) = fake(1, Behavior::Serve).await;
    *node.behavior.lock().unwrap() = Behavior::Hang;
    let mut config = quick_config(&addr);
    config.timeout = Duration::from_millis(500);
    let client = Client::new(config).unwrap();
    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, ClientError::Indeterminate(_)), "{err}");

    let dead = Client::new(quick_config(&dead_addr())).unwrap();
    let err = dead.put("k", "v").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Unavailable(_)),
        "never sent, so certainly not applied: {err}"
    );
}

/// The leader's process is gone (connection refused) while the other nodes still name it (their
/// leader lease has not run out): the client does not keep knocking on the dead node, it polls
/// the others until one of them is the new leader, and the write lands there once.
#[tokio::test]
async fn after_the_leader_dies_the_client_waits_for_its_successor_instead_of_retrying_it() {
    let dead_leader = dead_addr();
    let (b, b_addr) = fake(2, Behavior::Serve).await;
    let (c, c_addr) = fake(3, Behavior::Serve).await;
    for node in [&b, &c] {
        *node.status_claim.lock().unwrap() = Some((dead_leader.clone(), false));
    }
    let mut config = quick_config(&format!("{dead_leader},{b_addr},{c_addr}"));
    config.breaker = BreakerConfig::default();
    let client = Client::new(config).unwrap();

    // The election ends a little later: b becomes the leader and says so.
    let elect = {
        let (b_claim, c_claim, b_addr) = (b.status_claim.clone(), c.status_claim.clone(), b_addr.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            *b_claim.lock().unwrap() = Some((b_addr.clone(), true));
            *c_claim.lock().unwrap() = Some((b_addr, false));
        })
    };
    client.put("k", "v").await.expect("the write lands on the new leader");
    elect.await.unwrap();

    let dead = client.endpoints().into_iter().find(|e| e.addr == dead_leader).unwrap();
    assert_eq!(
        dead.failures, 1,
        "the dead leader was tried once, not once per backoff step: {dead:?}"
    );
    assert_eq!(b.writes.lock().unwrap().len(), 1, "one attempt, on the new leader");
    assert!(c.writes.lock().unwrap().is_empty());
    assert_eq!(client.known_leader(), Some(b_addr));
}
