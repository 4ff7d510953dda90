//! `LeaderForwarder`: a follower's etcd port passes writes on to the leader's, as etcd's
//! followers do, so an etcd client may send writes to any member.
//!
//! The native API answers a write on a follower with `UNAVAILABLE` and the leader's client
//! address; etcd's clients do not follow such hints. So on "not the leader" the etcd port asks
//! the leader's native Status for its etcd address (cached until the leader changes) and sends
//! it the original etcd request, marked as forwarded so it is never passed on twice. Not done
//! when the node serves clients over TLS (the forwarder has no client certificate): the "not
//! the leader" answer then stands. Lease calls, which the native API expresses fully, go to
//! the leader's native port instead.

use std::time::Duration;

use raftkv_proto::etcd::etcdserverpb::kv_client::KvClient;
use raftkv_proto::v1::cluster_client::ClusterClient;
use raftkv_proto::v1::StatusRequest;
use tokio::sync::Mutex;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Request metadata marking a write another node forwarded (it must not be forwarded again).
pub const FORWARDED: &str = "raftkv-etcd-forwarded";

/// How long finding the leader's etcd port may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

struct Route {
    leader_client_addr: String,
    kv: KvClient<Channel>,
}

pub struct LeaderForwarder {
    enabled: bool,
    route: Mutex<Option<Route>>,
    /// A channel to the leader's native API (by its client address), for calls the native API
    /// expresses fully (leases).
    native: Mutex<Option<(String, Channel)>>,
}

impl LeaderForwarder {
    /// A forwarder; `enabled` is false when clients talk TLS to this node.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            route: Mutex::new(None),
            native: Mutex::new(None),
        }
    }

    /// The leader's native client address, when `status` is a native "not the leader" answer
    /// that should be passed on.
    pub fn leader_of(&self, status: &Status) -> Option<String> {
        if !self.enabled || status.code() != tonic::Code::Unavailable {
            return None;
        }
        let addr = status
            .metadata()
            .get(raftkv_proto::metadata::LEADER_ADDR)?
            .to_str()
            .ok()?;
        (!addr.is_empty()).then(|| addr.to_string())
    }

    /// A channel to the native API at `leader_client_addr`.
    pub async fn native(&self, leader_client_addr: &str) -> Result<Channel, Status> {
        let mut native = self.native.lock().await;
        if let Some((addr, channel)) = native.as_ref() {
            if addr == leader_client_addr {
                return Ok(channel.clone());
            }
        }
        let channel = Endpoint::from_shared(format!("http://{leader_client_addr}"))
            .map_err(|e| Status::unavailable(format!("etcdserver: not leader; the leader's address is unusable: {e}")))?
            .connect_timeout(LOOKUP_TIMEOUT)
            .connect_lazy();
        *native = Some((leader_client_addr.to_string(), channel.clone()));
        Ok(channel)
    }

    /// Whether a write that found this node not leading should be passed on.
    pub fn should_forward(&self, md: &MetadataMap) -> bool {
        self.enabled && md.get(FORWARDED).is_none()
    }

    /// Forgets the leader's etcd port (it stopped answering): the next write looks again.
    pub async fn forget(&self) {
        *self.route.lock().await = None;
    }

    /// The etcd KV client of the leader whose native client address is `leader_client_addr`.
    pub async fn kv(&self, leader_client_addr: &str) -> Result<KvClient<Channel>, Status> {
        let mut route = self.route.lock().await;
        if let Some(r) = route.as_ref().filter(|r| r.leader_client_addr == leader_client_addr) {
            return Ok(r.kv.clone());
        }
        let unreachable = |why: String| {
            Status::unavailable(format!(
                "etcdserver: not leader; could not reach the leader at {leader_client_addr} to forward the write: {why}"
            ))
        };
        let endpoint = Endpoint::from_shared(format!("http://{leader_client_addr}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(LOOKUP_TIMEOUT)
            .timeout(LOOKUP_TIMEOUT);
        let status = ClusterClient::new(endpoint.connect_lazy())
            .status(StatusRequest {})
            .await
            .map_err(|e| unreachable(e.message().to_string()))?
            .into_inner();
        if status.etcd_addr.is_empty() {
            return Err(Status::failed_precondition(format!(
                "etcdserver: not leader; the leader (node {}) serves no etcd API: send writes to a node started with --etcd-addr that leads",
                status.id
            )));
        }
        let channel = Endpoint::from_shared(format!("http://{}", status.etcd_addr))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_lazy();
        let kv = KvClient::new(channel);
        *route = Some(Route {
            leader_client_addr: leader_client_addr.to_string(),
            kv: kv.clone(),
        });
        Ok(kv)
    }
}

/// Calls the native service's `$method` with `$req` here; when that answers "not the leader"
/// and forwarding is on, calls the same method on the leader's native API through `$client`
/// (the service's generated client). Evaluates to the reply message or the status.
macro_rules! here_or_on_leader {
    ($forwarder:expr, $native:expr, $client:ident, $method:ident, $req:expr) => {{
        let req = $req;
        match $native.$method(tonic::Request::new(req.clone())).await {
            Err(status) => match $forwarder.leader_of(&status) {
                Some(leader) => {
                    let channel = $forwarder.native(&leader).await?;
                    $client::new(channel).$method(tonic::Request::new(req)).await
                }
                None => Err(status),
            },
            ok => ok,
        }
        .map(tonic::Response::into_inner)
    }};
}
pub(crate) use here_or_on_leader;

/// `message` as a forwarded request: marked, and carrying the caller's credentials.
pub fn forwarded_request<T>(message: T, md: &MetadataMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    for key in ["authorization", "token"] {
        if let Some(v) = md.get(key) {
            request.metadata_mut().insert(key, v.clone());
        }
    }
    request
}
