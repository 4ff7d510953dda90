//! `NodeMetrics`: every Prometheus metric the node exports.
//!
//! State gauges (role, term, indexes, lag, db size) are set from a [`StateReadings`] taken when
//! scraped ([`super::http`] reads Raft and the store), so they are never stale; event counters
//! (leader changes, requests) and latency histograms (requests, fsync, apply) are updated as
//! things happen. The registry reads nothing itself: any room may count into it without
//! depending on what it measures.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{RaftMetrics, ServerState};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use raftkv_store::{StoreObserver, TypeConfig};

/// Latency buckets, seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The node's state as one scrape sees it: what the gauges are set from.
pub struct StateReadings {
    pub raft: RaftMetrics<TypeConfig>,
    /// The commit index, when Raft could be asked for it.
    pub committed_index: Option<u64>,
    pub db_size_bytes: u64,
    pub disk_free_bytes: u64,
    pub disk_space_alarm: bool,
    pub serving: bool,
    /// Monotonic counts kept by the read path.
    pub linearizable_reads: u64,
    pub read_index_rounds: u64,
    pub leadership_confirmations: u64,
}

/// Every metric a node exports.
pub struct NodeMetrics {
    registry: Registry,
    role: IntGaugeVec,
    term: IntGauge,
    leader_id: IntGauge,
    last_log_index: IntGauge,
    committed_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    purged_index: IntGauge,
    db_size_bytes: IntGauge,
    disk_free_bytes: IntGauge,
    disk_space_alarm: IntGauge,
    replication_lag: IntGaugeVec,
    millis_since_quorum_ack: IntGauge,
    serving: IntGauge,
    leader_changes: IntCounter,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    linearizable_reads: IntCounter,
    read_index_rounds: IntCounter,
    leadership_confirmations: IntCounter,
    fsync_seconds: Histogram,
    apply_seconds: Histogram,
    applied_entries: IntCounter,
    log_group_commits: IntCounter,
    log_group_committed_appends: IntCounter,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl NodeMetrics {
    /// Creates and registers every metric, labelled with the node id.
    pub fn new(node_id: u64) -> prometheus::Result<Arc<Self>> {
        let registry = Registry::new_custom(
            Some("raftkv".into()),
            Some([("node".to_string(), node_id.to_string())].into()),
        )?;
        let role = IntGaugeVec::new(
            Opts::new("role", "1 for the node's current Raft role, 0 for the others"),
            &["role"],
        )?;
        registry.register(Box::new(role.clone()))?;
        let replication_lag = IntGaugeVec::new(
            Opts::new(
                "replication_lag_entries",
                "On the leader: log entries each follower is behind the leader's last log index",
            ),
            &["follower"],
        )?;
        registry.register(Box::new(replication_lag.clone()))?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Client API calls, by RPC and gRPC status code"),
            &["rpc", "code"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Client API call latency, by RPC")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["rpc"],
        )?;
        registry.register(Box::new(request_seconds.clone()))?;
        Ok(Arc::new(Self {
            term: gauge(&registry, "term", "Current Raft term")?,
            leader_id: gauge(&registry, "leader_id", "Id of the leader this node knows (0: none)")?,
            last_log_index: gauge(
                &registry,
                "last_log_index",
                "Index of the last entry in this node's log",
            )?,
            committed_index: gauge(&registry, "committed_index", "Highest log index known committed")?,
            applied_index: gauge(
                &registry,
                "applied_index",
                "Highest log index applied to the state machine",
            )?,
            snapshot_index: gauge(
                &registry,
                "snapshot_index",
                "Last log index covered by the current snapshot",
            )?,
            purged_index: gauge(&registry, "purged_index", "Highest log index purged from the log")?,
            db_size_bytes: gauge(&registry, "db_size_bytes", "Bytes the data directory holds on disk")?,
            disk_free_bytes: gauge(
                &registry,
                "disk_free_bytes",
                "Free bytes on the data directory's filesystem at the last check",
            )?,
            disk_space_alarm: gauge(
                &registry,
                "disk_space_alarm",
                "1 while free space is below --min-free-mb and writes are refused",
            )?,
            millis_since_quorum_ack: gauge(
                &registry,
                "leader_millis_since_quorum_ack",
                "On the leader: ms since a quorum last acknowledged it (-1 elsewhere)",
            )?,
            serving: gauge(&registry, "serving", "1 when the node reports SERVING to health checks")?,
            leader_changes: counter(
                &registry,
                "leader_changes_total",
                "Times the leader this node knows changed",
            )?,
            linearizable_reads: counter(&registry, "linearizable_reads_total", "Linearizable reads served")?,
            read_index_rounds: counter(
                &registry,
                "read_index_rounds_total",
                "Read-index rounds run for them (concurrent reads share one)",
            )?,
            leadership_confirmations: counter(
                &registry,
                "leadership_confirmations_total",
                "Quorum confirmations this node ran as leader",
            )?,
            fsync_seconds: histogram(&registry, "fsync_duration_seconds", "Database fsync latency")?,
            apply_seconds: histogram(
                &registry,
                "apply_duration_seconds",
                "State machine apply latency, per batch",
            )?,
            applied_entries: counter(
                &registry,
                "applied_entries_total",
                "Log entries applied to the state machine",
            )?,
            log_group_commits: counter(
                &registry,
                "log_group_commits_total",
                "Log fsyncs made by the group committer",
            )?,
            log_group_committed_appends: counter(
                &registry,
                "log_group_committed_appends_total",
                "Log appends those fsyncs acknowledged (divide by log_group_commits_total: appends per fsync)",
            )?,
            role,
            replication_lag,
            requests,
            request_seconds,
            registry,
        }))
    }

    /// Counts a leader change.
    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// Times a client API call and counts it under its gRPC status code.
    pub async fn observe<T, F>(&self, rpc: &'static str, call: F) -> Result<T, tonic::Status>
    where
        F: Future<Output = Result<T, tonic::Status>>,
    {
        let started = Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.request_seconds
            .with_label_values(&[rpc])
            .observe(started.elapsed().as_secs_f64());
        self.count(rpc, code);
        result
    }

    /// Counts one answered call by RPC and code (also the calls refused at the gate, which
    /// never reach a handler).
    pub fn count(&self, rpc: &str, code: tonic::Code) {
        self.requests.with_label_values(&[rpc, &format!("{code:?}")]).inc();
    }

    /// Sets a counter that mirrors a monotonic value kept elsewhere.
    fn mirror(counter: &IntCounter, value: u64) {
        let current = counter.get();
        if value > current {
            counter.inc_by(value - current);
        }
    }

    /// Sets the gauges from `r`.
    fn refresh(&self, r: &StateReadings) {
        let m = &r.raft;
        for (name, state) in [
            ("leader", ServerState::Leader),
            ("follower", ServerState::Follower),
            ("candidate", ServerState::Candidate),
            ("learner", ServerState::Learner),
            ("shutdown", ServerState::Shutdown),
        ] {
            self.role.with_label_values(&[name]).set(i64::from(m.state == state));
        }
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(as_i64(m.current_term));
        self.leader_id.set(as_i64(m.current_leader.unwrap_or(0)));
        let last_log = m.last_log_index.unwrap_or(0);
        self.last_log_index.set(as_i64(last_log));
        self.applied_index.set(as_i64(m.last_applied.map_or(0, |l| l.index)));
        self.snapshot_index.set(as_i64(m.snapshot.map_or(0, |l| l.index)));
        self.purged_index.set(as_i64(m.purged.map_or(0, |l| l.index)));
        if let Some(committed) = r.committed_index {
            self.committed_index.set(as_i64(committed));
        }
        self.db_size_bytes.set(as_i64(r.db_size_bytes));
        self.disk_free_bytes.set(as_i64(r.disk_free_bytes));
        self.disk_space_alarm.set(i64::from(r.disk_space_alarm));
        self.replication_lag.reset();
        if let Some(replication) = &m.replication {
            for (follower, matched) in replication {
                let lag = last_log.saturating_sub(matched.map_or(0, |l| l.index));
                self.replication_lag
                    .with_label_values(&[&follower.to_string()])
                    .set(as_i64(lag));
            }
        }
        self.millis_since_quorum_ack
            .set(raftkv_store::types::quorum_ack_age_ms(m).map_or(-1, as_i64));
        self.serving.set(i64::from(r.serving));
        Self::mirror(&self.linearizable_reads, r.linearizable_reads);
        Self::mirror(&self.read_index_rounds, r.read_index_rounds);
        Self::mirror(&self.leadership_confirmations, r.leadership_confirmations);
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self, readings: &StateReadings) -> String {
        self.refresh(readings);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl StoreObserver for NodeMetrics {
    fn fsync(&self, took: Duration) {
        self.fsync_seconds.observe(took.as_secs_f64());
    }

    fn applied(&self, entries: usize, took: Duration) {
        self.apply_seconds.observe(took.as_secs_f64());
        self.applied_entries.inc_by(entries as u64);
    }

    fn log_flush_batch(&self, appends: usize) {
        self.log_group_commits.inc();
        self.log_group_committed_appends.inc_by(appends as u64);
    }
}
