//! The service registry: instances of a service announce themselves under
//! `services/<NAME>/<ID>` on a lease, and clients discover them, spread picks over them by
//! weight, and stop picking an instance whose process died.
//!
//! This module owns the registry's key layout and value format, registration (a lease kept
//! alive is the instance's heartbeat), the read-modify-write of an instance's weight, and
//! [`Discovery`]: a live, local view of one service that picks instances the way the client
//! picks endpoints (smooth weighted round robin over the primaries whose circuit breaker lets
//! calls through, backups only when no primary can serve). It is built only on the client's
//! public calls (leases, watches, ranges, transactions), so any language with a raftkv (or
//! etcd-style) client can take part by writing the same keys.
//!
//! **Format.** The value is JSON: `{"v":1,"address":"10.0.0.7:80","weight":3,"backup":false,
//! "lease":1234}`. Readers ignore fields they do not know (a newer writer may add some) and
//! skip, with a warning, entries whose `v` they do not know or that are not JSON at all: a
//! stray key under `services/` never breaks discovery. `lease` repeats the key's lease id
//! (a key-value does not carry it), so a weight change can keep the key on its lease.
//!
//! **Heartbeat.** [`register`] grants a lease, puts the key on it and keeps the lease alive in
//! the background. If the process dies, the keep-alives stop and the cluster deletes the key
//! when the TTL runs out; every discovery sees the delete through its watch.
//! [`Registration::deregister`] revokes the lease: the instance leaves at once. Registering an
//! id again (a restarted process) overwrites the entry and moves the key to the new lease.
//!
//! **Weight 0 means drained**: the instance stays registered and listed, but gets no new
//! picks, not even as a backup. Set a weight with [`set_weight`] (a compare on the key's
//! mod_revision, retried on conflict), e.g. a canary at 1 beside the stable version at 9.
//!
//! **Discovery** ([`discover`]) reads the service's keys (linearizably), then follows them
//! with a watch from the next revision, in one tokio task that is aborted when the
//! [`Discovery`] is dropped. A watch whose revision was compacted away re-reads the keys and
//! carries on. The view's logic lives in [`ServiceView`], plain functions over events with
//! the time passed in, so it is tested without a cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raftkv_proto::v1::event::EventType;
use raftkv_proto::v1::{Event, KeyValue, TxnRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::balancer::SmoothWeightedRoundRobin;
use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::client::{Client, LeaseKeepAlive, LeaseState, WatchOptions};
use crate::error::ClientError;
use crate::prefix::read_prefix;
use crate::retry::Backoff;
use crate::txn::{self, Op};

/// Every service lives under this prefix: `services/<NAME>/<ID>`.
pub const KEY_PREFIX: &str = "services/";
/// The value format this module writes (the `v` field) and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest service name or instance id, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest instance address, in bytes.
pub const MAX_ADDRESS_LEN: usize = 512;
/// How many times [`set_weight`] re-reads an entry that changed under it before giving up.
const SET_WEIGHT_ATTEMPTS: usize = 32;

/// What an instance announces: where it is reached and how it takes part in picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Where clients reach it (`host:port`, a URL: the registry does not interpret it).
    pub address: String,
    /// Its share of the picks relative to the other primaries; 0: drained (no picks).
    pub weight: u32,
    /// Picked only when no primary can be.
    pub backup: bool,
}

impl InstanceSpec {
    /// A primary of weight 1 at `address`.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            weight: 1,
            backup: false,
        }
    }

    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    pub fn as_backup(mut self) -> Self {
        self.backup = true;
        self
    }
}

/// A registered instance, as read from the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub address: String,
    pub weight: u32,
    pub backup: bool,
    /// The lease its key is attached to (0: none; the key was written by hand).
    pub lease: u64,
    /// The revision of the entry's last change.
    pub mod_revision: u64,
}

/// What [`Discovery::pick`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub id: String,
    pub address: String,
    /// Picked as a backup (no primary could be).
    pub backup: bool,
}

/// The stored value (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEntry {
    #[serde(default = "format_version")]
    v: u32,
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    lease: u64,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

fn default_weight() -> u32 {
    1
}

fn check_name(what: &str, name: &str) -> Result<(), ClientError> {
    if name.is_empty() {
        return Err(ClientError::InvalidArgument(format!("the {what} is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ClientError::InvalidArgument(format!(
            "the {what} is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    if name.contains('/') {
        return Err(ClientError::InvalidArgument(format!(
            "the {what} {name:?} contains '/', which separates the parts of a registry key; use another character"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ClientError::InvalidArgument(format!(
            "the {what} {name:?} contains a control character"
        )));
    }
    Ok(())
}

/// Checks a service name: non-empty, at most [`MAX_NAME_LEN`] bytes, no '/' and no control
/// characters.
pub fn validate_service_name(service: &str) -> Result<(), ClientError> {
    check_name("service name", service)
}

/// Checks an instance id (the same rules as a service name).
pub fn validate_instance_id(id: &str) -> Result<(), ClientError> {
    check_name("instance id", id)
}

/// Checks an instance's announcement: an address that is non-empty, at most
/// [`MAX_ADDRESS_LEN`] bytes and free of control characters.
pub fn validate_spec(spec: &InstanceSpec) -> Result<(), ClientError> {
    if spec.address.trim().is_empty() {
        return Err(ClientError::InvalidArgument(
            "the instance address is empty; give the address clients should reach it at, e.g. 10.0.0.7:8080".into(),
        ));
    }
    if spec.address.len() > MAX_ADDRESS_LEN {
        return Err(ClientError::InvalidArgument(format!(
            "the instance address is {} bytes long; at most {MAX_ADDRESS_LEN} are allowed",
            spec.address.len()
        )));
    }
    if spec.address.chars().any(char::is_control) {
        return Err(ClientError::InvalidArgument(format!(
            "the instance address {:?} contains a control character",
            spec.address
        )));
    }
    Ok(())
}

/// `services/<service>/`: the prefix holding every instance of `service`.
pub fn service_prefix(service: &str) -> Result<String, ClientError> {
    validate_service_name(service)?;
    Ok(format!("{KEY_PREFIX}{service}/"))
}

/// `services/<service>/<id>`: the key of one instance.
pub fn instance_key(service: &str, id: &str) -> Result<String, ClientError> {
    let prefix = service_prefix(service)?;
    validate_instance_id(id)?;
    Ok(format!("{prefix}{id}"))
}

/// The stored value for `spec` on lease `lease`.
pub fn encode_entry(spec: &InstanceSpec, lease: u64) -> Vec<u8> {
    encode(&StoredEntry {
        v: FORMAT_VERSION,
        address: spec.address.clone(),
        weight: spec.weight,
        backup: spec.backup,
        lease,
    })
}

fn encode(entry: &StoredEntry) -> Vec<u8> {
    // Serializing a struct of strings and numbers cannot fail; an empty value would be skipped
    // by every reader, never misread.
    serde_json::to_vec(entry).unwrap_or_default()
}

fn decode(value: &[u8]) -> Result<StoredEntry, String> {
    let entry: StoredEntry = serde_json::from_slice(value).map_err(|e| format!("not a registry entry: {e}"))?;
    if entry.v != FORMAT_VERSION {
        return Err(format!(
            "format version {} (this client reads version {FORMAT_VERSION})",
            entry.v
        ));
    }
    Ok(entry)
}

/// The instance a key-value under `prefix` describes; `Err` says why it is not one.
pub fn decode_instance(prefix: &str, kv: &KeyValue) -> Result<Instance, String> {
    let id = instance_id_of(prefix, &kv.key).ok_or_else(|| "not an instance key".to_string())?;
    let entry = decode(&kv.value)?;
    Ok(Instance {
        id,
        address: entry.address,
        weight: entry.weight,
        backup: entry.backup,
        lease: entry.lease,
        mod_revision: kv.mod_revision,
    })
}

/// The instance id of `key` if it is `prefix` + a valid id.
fn instance_id_of(prefix: &str, key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    let id = std::str::from_utf8(rest).ok()?;
    validate_instance_id(id).ok()?;
    Some(id.to_string())
}

fn decode_all(prefix: &str, kvs: &[KeyValue]) -> Vec<Instance> {
    kvs.iter()
        .filter_map(|kv| match decode_instance(prefix, kv) {
            Ok(instance) => Some(instance),
            Err(why) => {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "registry: skipping a key: {why}");
                None
            }
        })
        .collect()
}

/// Every registered instance of `service`, read linearizably, ordered by id.
pub async fn instances(client: &Client, service: &str) -> Result<Vec<Instance>, ClientError> {
    let prefix = service_prefix(service)?;
    let (kvs, _) = read_prefix(client, prefix.as_bytes()).await?;
    Ok(decode_all(&prefix, &kvs))
}

/// An instance registered by [`register`]: its lease is kept alive until the registration is
/// dropped (the instance then leaves within its TTL) or [`Self::deregister`]ed (at once).
pub struct Registration {
    client: Client,
    service: String,
    id: String,
    key: String,
    lease: u64,
    ttl: Duration,
    keep_alive: LeaseKeepAlive,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("lease", &format_args!("{:x}", self.lease))
            .field("ttl", &self.ttl)
            .field("state", &self.state())
            .finish()
    }
}

impl Registration {
    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The instance's key, `services/<NAME>/<ID>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the key is attached to.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// The TTL the cluster granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How the heartbeat stands ([`LeaseState::Lost`]: the instance is, or must be taken to
    /// be, no longer registered).
    pub fn state(&self) -> LeaseState {
        self.keep_alive.state()
    }

    /// A receiver of the heartbeat's state changes.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.keep_alive.subscribe()
    }

    /// Resolves when the lease is lost (the cluster dropped it, or no keep-alive was confirmed
    /// for a whole TTL): the instance is no longer registered; register again to come back.
    pub async fn lost(&self) {
        self.keep_alive.lost().await
    }

    /// Leaves now: stops the heartbeat and revokes the lease, which deletes the key. A lease
    /// that is already gone is not an error.
    pub async fn deregister(self) -> Result<(), ClientError> {
        let Registration {
            client,
            lease,
            keep_alive,
            ..
        } = self;
        keep_alive.stop().await;
        client.release_lease(lease).await
    }
}

/// Registers instance `id` of `service`: grants a lease of `ttl`, puts `services/<service>/<id>`
/// on it and keeps it alive in the background (see [`Registration`]). An entry already under
/// that id (a previous run of the same instance) is replaced.
pub async fn register(
    client: &Client,
    service: &str,
    id: &str,
    spec: InstanceSpec,
    ttl: Duration,
) -> Result<Registration, ClientError> {
    let key = instance_key(service, id)?;
    validate_spec(&spec)?;
    let grant = client.lease_grant(ttl).await?;
    let granted_ttl = if grant.ttl_ms > 0 {
        Duration::from_millis(grant.ttl_ms)
    } else {
        ttl
    };
    // The heartbeat starts before the put, so a slow put cannot let the lease run out.
    let keep_alive = client.keep_lease_alive(grant.id, granted_ttl);
    if let Err(e) = client
        .put_with_lease(key.clone(), encode_entry(&spec, grant.id), grant.id)
        .await
    {
        keep_alive.stop().await;
        // Best effort: an unused lease also expires by itself, and takes the key with it if the
        // put did happen after all.
        if let Err(revoke) = client.lease_revoke(grant.id).await {
            tracing::debug!(
                lease = format!("{:x}", grant.id),
                "registry: revoking after a failed put: {revoke}"
            );
        }
        return Err(e);
    }
    Ok(Registration {
        client: client.clone(),
        service: service.to_string(),
        id: id.to_string(),
        key,
        lease: grant.id,
        ttl: granted_ttl,
        keep_alive,
    })
}

/// Sets the weight of instance `id` of `service` (0: drained) and returns the revision that
/// holds the change. The entry is read, changed and written back only if its mod_revision is
/// still the one read (re-read and retried otherwise), on the same lease. `NotFound` when the
/// instance is not registered (or its lease has just gone).
pub async fn set_weight(client: &Client, service: &str, id: &str, weight: u32) -> Result<u64, ClientError> {
    let key = instance_key(service, id)?;
    let not_registered = || ClientError::NotFound(format!("instance {id:?} of service {service:?} is not registered"));
    for _ in 0..SET_WEIGHT_ATTEMPTS {
        let current = client.get(key.clone()).await?;
        let Some(kv) = current.kv else {
            return Err(not_registered());
        };
        let mut entry =
            decode(&kv.value).map_err(|why| ClientError::InvalidArgument(format!("{key} cannot be changed: {why}")))?;
        if entry.weight == weight {
            return Ok(kv.mod_revision);
        }
        entry.weight = weight;
        let request = TxnRequest {
            compare: vec![txn::mod_revision(key.clone(), Op::Equal, kv.mod_revision)],
            success: vec![txn::put_leased(key.clone(), encode(&entry), entry.lease)],
            failure: vec![],
        };
        match client.txn(request, None).await {
            Ok(reply) if reply.succeeded => return Ok(reply.revision),
            // Changed (or re-registered) since the read: read it again.
            Ok(_) => continue,
            Err(ClientError::NotFound(_)) => return Err(not_registered()),
            Err(e) => return Err(e),
        }
    }
    Err(ClientError::Unavailable(format!(
        "{key} changed {SET_WEIGHT_ATTEMPTS} times while its weight was being set; nothing was written, try again"
    )))
}

/// One service's instances as a discovery sees them, and the picking state: the whole logic
/// of [`Discovery`], without the network (events in, picks out; time passed in).
#[derive(Debug, Clone)]
pub struct ServiceView {
    prefix: String,
    instances: BTreeMap<String, Instance>,
    breakers: HashMap<String, CircuitBreaker>,
    breaker_config: BreakerConfig,
    balancer: SmoothWeightedRoundRobin,
    revision: u64,
}

impl ServiceView {
    /// An empty view of `service`; every instance gets a breaker with `breaker_config`.
    pub fn new(service: &str, breaker_config: BreakerConfig) -> Result<Self, ClientError> {
        Ok(Self {
            prefix: service_prefix(service)?,
            instances: BTreeMap::new(),
            breakers: HashMap::new(),
            breaker_config,
            balancer: SmoothWeightedRoundRobin::default(),
            revision: 0,
        })
    }

    /// The revision the view is current to: every change up to it is applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The instances, ordered by id.
    pub fn instances(&self) -> Vec<Instance> {
        self.instances.values().cloned().collect()
    }

    /// The breaker state of instance `id` (`None`: unknown instance).
    pub fn breaker_state(&self, id: &str, now: Instant) -> Option<BreakerState> {
        if !self.instances.contains_key(id) {
            return None;
        }
        Some(self.breakers.get(id).map_or(BreakerState::Closed, |b| b.state(now)))
    }

    /// Replaces the instances with those of a full read (`kvs` under the prefix, read at
    /// `revision`). Breakers of instances still present are kept.
    pub fn reset(&mut self, kvs: &[KeyValue], revision: u64) {
        self.instances = decode_all(&self.prefix, kvs)
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let instances = &self.instances;
        self.breakers.retain(|id, _| instances.contains_key(id));
        self.balancer = SmoothWeightedRoundRobin::default();
        self.revision = revision;
    }

    /// Applies one watch batch (changes in revision order, complete up to `revision`).
    /// A change older than what the view holds for a key is ignored, so a batch may repeat
    /// changes a full read already saw. Returns whether the instances changed.
    pub fn apply(&mut self, events: &[Event], revision: u64) -> bool {
        let mut changed = false;
        for event in events {
            let Some(kv) = &event.kv else { continue };
            let Some(id) = instance_id_of(&self.prefix, &kv.key) else {
                continue;
            };
            let held = self.instances.get(&id).map_or(0, |i| i.mod_revision);
            if event.r#type == EventType::Delete as i32 {
                // A delete's kv carries the delete's revision as mod_revision.
                if self.instances.contains_key(&id) && held <= kv.mod_revision {
                    self.instances.remove(&id);
                    self.breakers.remove(&id);
                    changed = true;
                }
                continue;
            }
            if held >= kv.mod_revision {
                continue;
            }
            match decode_instance(&self.prefix, kv) {
                Ok(instance) => {
                    self.instances.insert(id, instance);
                }
                Err(why) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "registry: ignoring an entry: {why}");
                    self.instances.remove(&id);
                    self.breakers.remove(&id);
                }
            }
            changed = true;
        }
        if changed {
            // New shares start from a clean slate: the next picks follow the new weights
            // exactly rather than paying back the old scores.
            self.balancer = SmoothWeightedRoundRobin::default();
        }
        self.revision = self.revision.max(revision);
        changed
    }

    fn allows(&self, id: &str, now: Instant) -> bool {
        self.breakers.get(id).is_none_or(|b| b.would_allow(now))
    }

    /// Picks an instance by smooth weighted round robin over the primaries that are eligible
    /// (weight > 0, breaker letting calls through); over the eligible backups only when no
    /// primary is. `None` when nothing is eligible. A half-open breaker lets one trial pick
    /// through at a time, until its outcome is [`Self::report`]ed.
    pub fn pick(&mut self, now: Instant) -> Option<Picked> {
        let eligible = |backup: bool| -> Vec<(usize, u32)> {
            self.instances
                .values()
                .enumerate()
                .filter(|(_, i)| i.backup == backup && i.weight > 0 && self.allows(&i.id, now))
                .map(|(index, i)| (index, i.weight))
                .collect()
        };
        let mut candidates = eligible(false);
        if candidates.is_empty() {
            candidates = eligible(true);
        }
        let index = self.balancer.pick(&candidates)?;
        let instance = self.instances.values().nth(index)?;
        let picked = Picked {
            id: instance.id.clone(),
            address: instance.address.clone(),
            backup: instance.backup,
        };
        if let Some(breaker) = self.breakers.get_mut(&picked.id) {
            breaker.try_acquire(now);
        }
        Some(picked)
    }

    /// Records the outcome of a call to instance `id` in its circuit breaker (unknown ids are
    /// ignored). Returns the breaker's new state when it changed.
    pub fn report(&mut self, id: &str, success: bool, now: Instant) -> Option<BreakerState> {
        if !self.instances.contains_key(id) {
            return None;
        }
        let config = self.breaker_config;
        let changed = self
            .breakers
            .entry(id.to_string())
            .or_insert_with(|| CircuitBreaker::new(config))
            .record(now, success);
        if let Some(state) = changed {
            tracing::info!(
                instance = id,
                state = state.name(),
                "registry: instance breaker changed state"
            );
            // The eligible set changed: shares start from a clean slate, as after a weight change.
            self.balancer = SmoothWeightedRoundRobin::default();
        }
        changed
    }
}

/// A live view of one service, kept current by a background task (see the module docs).
/// Dropping it stops the task.
pub struct Discovery {
    service: String,
    view: Arc<Mutex<ServiceView>>,
    revision: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("service", &self.service)
            .field("revision", &self.revision())
            .finish()
    }
}

/// Starts discovering `service` with the default breaker settings; see [`discover_with`].
pub async fn discover(client: &Client, service: &str) -> Result<Discovery, ClientError> {
    discover_with(client, service, BreakerConfig::default()).await
}

/// Reads the instances of `service` (linearizably; an error here is returned) and starts
/// following their changes in a tokio task. On return the view is current to the read's
/// revision. Each instance gets a circuit breaker with `breaker_config`, fed by
/// [`Discovery::report`].
pub async fn discover_with(
    client: &Client,
    service: &str,
    breaker_config: BreakerConfig,
) -> Result<Discovery, ClientError> {
    let mut view = ServiceView::new(service, breaker_config)?;
    let prefix = view.prefix.clone();
    let (kvs, revision) = read_prefix(client, prefix.as_bytes()).await?;
    view.reset(&kvs, revision);
    let view = Arc::new(Mutex::new(view));
    let (revision_tx, revision_rx) = watch::channel(revision);
    let task = tokio::spawn(follow(client.clone(), prefix, view.clone(), revision_tx, revision + 1));
    Ok(Discovery {
        service: service.to_string(),
        view,
        revision: revision_rx,
        task,
    })
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery {
    pub fn service(&self) -> &str {
        &self.service
    }

    fn view(&self) -> MutexGuard<'_, ServiceView> {
        // The view holds no invariant a panic half-way could break beyond a stale pick.
        self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Picks an instance (see [`ServiceView::pick`]); `None` when none is eligible.
    pub fn pick(&self) -> Option<Picked> {
        self.view().pick(Instant::now())
    }

    /// Feeds instance `id`'s circuit breaker with a call's outcome (only failures to reach it
    /// or timeouts should count as failures).
    pub fn report(&self, id: &str, success: bool) {
        self.view().report(id, success, Instant::now());
    }

    /// The breaker state of instance `id` (`None`: unknown instance).
    pub fn breaker_state(&self, id: &str) -> Option<BreakerState> {
        self.view().breaker_state(id, Instant::now())
    }

    /// The instances, ordered by id.
    pub fn instances(&self) -> Vec<Instance> {
        self.view().instances()
    }

    /// The revision the view is current to.
    pub fn revision(&self) -> u64 {
        self.view().revision()
    }

    /// A receiver of the view's revision: it changes on every applied batch of changes (and
    /// when a progress notification moves the revision on).
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }

    /// Waits until the view is current to at least `revision` (e.g. the revision a
    /// [`set_weight`] returned). `Unavailable` if the background task has stopped.
    pub async fn wait_for_revision(&self, revision: u64) -> Result<(), ClientError> {
        let mut changed = self.changed();
        changed
            .wait_for(|r| *r >= revision)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Unavailable("the discovery task has stopped".into()))
    }
}

/// The background task of a [`Discovery`]: watch the prefix from `from`, apply each batch;
/// on a compacted revision, read everything again. Runs until aborted.
async fn follow(
    client: Client,
    prefix: String,
    view: Arc<Mutex<ServiceView>>,
    revision_tx: watch::Sender<u64>,
    mut from: u64,
) {
    let lock = || view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let publish = |revision: u64| {
        revision_tx.send_if_modified(|r| {
            let moved = revision > *r;
            *r = (*r).max(revision);
            moved
        });
    };
    let mut backoff = Backoff::new(client.config().retry.backoff);
    loop {
        let options = WatchOptions::prefix(prefix.clone())
            .from_revision(from)
            .with_progress_notify();
        let outcome = match client.watch(options).await {
            Ok(mut watcher) => loop {
                match watcher.next().await {
                    Ok(batch) => {
                        backoff = Backoff::new(client.config().retry.backoff);
                        let revision = {
                            let mut view = lock();
                            view.apply(&batch.events, batch.revision);
                            view.revision()
                        };
                        from = watcher.next_revision().max(revision + 1);
                        publish(revision);
                    }
                    // No node reachable within the client's timeout: keep trying.
                    Err(ClientError::Unavailable(e)) => {
                        tracing::debug!(prefix = %prefix, "registry: watch unavailable, retrying: {e}");
                    }
                    Err(e) => {
                        from = watcher.next_revision().max(from);
                        break e;
                    }
                }
            },
            Err(e) => e,
        };
        match outcome {
            ClientError::Compacted { oldest, .. } => {
                tracing::info!(prefix = %prefix, oldest, "registry: watch revision compacted; reading the service again");
                match read_prefix(&client, prefix.as_bytes()).await {
                    Ok((kvs, revision)) => {
                        lock().reset(&kvs, revision);
                        from = revision + 1;
                        publish(revision);
                        continue;
                    }
                    Err(e) => tracing::warn!(prefix = %prefix, "registry: reading the service failed: {e}"),
                }
            }
            e => tracing::warn!(prefix = %prefix, "registry: watch failed, retrying: {e}"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "api";

    fn kv(id: &str, spec: &InstanceSpec, revision: u64) -> KeyValue {
        KeyValue {
            key: format!("services/{SERVICE}/{id}").into_bytes(),
            value: encode_entry(spec, 7),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        }
    }

    fn put(id: &str, spec: &InstanceSpec, revision: u64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(id, spec, revision)),
            prev_kv: None,
        }
    }

    fn delete(id: &str, revision: u64) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: format!("services/{SERVICE}/{id}").into_bytes(),
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn view() -> ServiceView {
        ServiceView::new(SERVICE, BreakerConfig::default()).unwrap()
    }

    fn tally(view: &mut ServiceView, picks: usize, now: Instant) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            if let Some(p) = view.pick(now) {
                *counts.entry(p.id).or_insert(0) += 1;
            }
        }
        counts
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// a (3), b (1), c (backup).
    fn three() -> ServiceView {
        let mut v = view();
        v.apply(
            &[
                put("a", &InstanceSpec::new("10.0.0.1:80").with_weight(3), 10),
                put("b", &InstanceSpec::new("10.0.0.2:80"), 11),
                put("c", &InstanceSpec::new("10.0.0.3:80").as_backup(), 12),
            ],
            12,
        );
        v
    }

    #[test]
    fn names_and_addresses_are_checked() {
        assert!(instance_key("api", "1").is_ok());
        for (service, id) in [("", "1"), ("api", ""), ("a/b", "1"), ("api", "x/y"), ("api", "x\ny")] {
            let err = instance_key(service, id).unwrap_err();
            assert!(
                matches!(err, ClientError::InvalidArgument(_)),
                "{service:?} {id:?}: {err}"
            );
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(instance_key(&long, "1").is_err());
        assert!(validate_spec(&InstanceSpec::new("")).is_err());
        assert!(validate_spec(&InstanceSpec::new("  ")).is_err());
        assert!(validate_spec(&InstanceSpec::new("10.0.0.1:80")).is_ok());
        let msg = instance_key("api", "x/y").unwrap_err().to_string();
        assert!(msg.contains("'/'"), "{msg}");
    }

    #[test]
    fn the_format_is_versioned_and_tolerant() {
        let spec = InstanceSpec::new("h:1").with_weight(4).as_backup();
        let value: serde_json::Value = serde_json::from_slice(&encode_entry(&spec, 9)).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["address"], "h:1");
        assert_eq!(value["weight"], 4);
        assert_eq!(value["backup"], true);
        assert_eq!(value["lease"], 9);
        let newer = br#"{"v":1,"address":"h:2","weight":2,"zone":"eu-1","lease":3}"#;
        let entry = decode(newer).unwrap();
        assert_eq!((entry.address.as_str(), entry.weight, entry.backup), ("h:2", 2, false));
        assert!(decode(br#"{"v":2,"address":"h:2"}"#).unwrap_err().contains("version 2"));
        assert!(decode(b"hello").is_err());
    }

    #[test]
    fn puts_and_deletes_build_the_view() {
        let mut v = three();
        assert_eq!(v.revision(), 12);
        let ids: Vec<String> = v.instances().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(v.apply(&[delete("b", 13)], 13));
        let ids: Vec<String> = v.instances().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["a", "c"]);
        // An older change than the view holds (a replay after a paged read) is ignored.
        assert!(!v.apply(&[put("a", &InstanceSpec::new("old:1"), 9)], 13));
        assert_eq!(v.instances()[0].address, "10.0.0.1:80");
        // Keys that are not instances, and entries that do not parse, are skipped.
        let mut stray = kv("d", &InstanceSpec::new("x"), 14);
        stray.key = b"services/api/d/extra".to_vec();
        let mut garbage = kv("e", &InstanceSpec::new("x"), 14);
        garbage.value = b"not json".to_vec();
        let events = [stray, garbage].map(|kv| Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        v.apply(&events, 14);
        assert_eq!(v.instances().len(), 2);
        // A progress notification only moves the revision.
        assert!(!v.apply(&[], 20));
        assert_eq!(v.revision(), 20);
    }

    #[test]
    fn shares_follow_the_weights_and_backups_stay_idle() {
        let mut v = three();
        let now = Instant::now();
        assert_eq!(tally(&mut v, 400, now), counts(&[("a", 300), ("b", 100)]));
    }

    #[test]
    fn backups_serve_only_when_no_primary_can() {
        let mut v = three();
        let now = Instant::now();
        v.apply(&[delete("a", 13)], 13);
        assert_eq!(tally(&mut v, 10, now), counts(&[("b", 10)]));
        v.apply(&[delete("b", 14)], 14);
        assert_eq!(tally(&mut v, 10, now), counts(&[("c", 10)]));
        let picked = v.pick(now).unwrap();
        assert!(picked.backup);
        assert_eq!(picked.address, "10.0.0.3:80");
        v.apply(&[put("a", &InstanceSpec::new("10.0.0.1:80").with_weight(3), 15)], 15);
        assert_eq!(tally(&mut v, 10, now), counts(&[("a", 10)]));
        // Weight 0 is drained: not picked, not even as a backup.
        v.apply(
            &[put(
                "c",
                &InstanceSpec::new("10.0.0.3:80").as_backup().with_weight(0),
                16,
            )],
            16,
        );
        v.apply(&[delete("a", 17)], 17);
        assert_eq!(v.pick(now), None);
    }

    #[test]
    fn an_open_breaker_takes_a_primary_out_until_a_trial_succeeds() {
        let mut v = three();
        let now = Instant::now();
        for _ in 0..5 {
            v.report("a", false, now);
        }
        assert!(matches!(v.breaker_state("a", now), Some(BreakerState::Open { .. })));
        assert_eq!(tally(&mut v, 10, now), counts(&[("b", 10)]));
        // Both primaries out: the backup serves.
        for _ in 0..5 {
            v.report("b", false, now);
        }
        assert_eq!(tally(&mut v, 3, now), counts(&[("c", 3)]));
        // After open_for, one trial pick goes to each primary; a success closes its breaker.
        let later = now + BreakerConfig::default().open_for;
        let trials = tally(&mut v, 2, later);
        assert_eq!(trials, counts(&[("a", 1), ("b", 1)]));
        assert_eq!(tally(&mut v, 2, later), counts(&[("c", 2)]), "trials in flight");
        v.report("a", true, later);
        v.report("b", true, later);
        assert_eq!(v.breaker_state("a", later), Some(BreakerState::Closed));
        assert_eq!(tally(&mut v, 400, later), counts(&[("a", 300), ("b", 100)]));
        assert_eq!(v.report("zz", false, later), None, "unknown ids are ignored");
    }

    #[test]
    fn a_weight_change_shifts_the_shares_at_once() {
        let mut v = three();
        let now = Instant::now();
        // Leave the balancer mid-cycle: the change must still give exact shares.
        tally(&mut v, 3, now);
        v.apply(&[put("a", &InstanceSpec::new("10.0.0.1:80").with_weight(9), 13)], 13);
        assert_eq!(v.instances()[0].weight, 9);
        assert_eq!(tally(&mut v, 1000, now), counts(&[("a", 900), ("b", 100)]));
    }

    #[test]
    fn a_full_read_replaces_the_view_and_keeps_live_breakers() {
        let mut v = three();
        let now = Instant::now();
        for _ in 0..5 {
            v.report("a", false, now);
            v.report("b", false, now);
        }
        v.reset(&[kv("a", &InstanceSpec::new("10.0.0.1:80"), 30)], 30);
        assert_eq!(v.revision(), 30);
        assert_eq!(v.instances().len(), 1);
        assert!(matches!(v.breaker_state("a", now), Some(BreakerState::Open { .. })));
        assert_eq!(v.breaker_state("b", now), None);
    }
}
