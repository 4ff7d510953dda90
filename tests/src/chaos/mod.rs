//! The chaos run: concurrent clients record a history of reads, writes and compare-and-swaps
//! on a few keys while a nemesis crashes, freezes and partitions the nodes of a real
//! three-node cluster; then the partitions heal, the cluster must converge, and the history
//! must be linearizable.
//!
//! - Nodes are real `raftkvd` processes; every directed peer link goes through a
//!   [`proxy::LinkProxy`] (`--peer-route`), so partitions need no root and behave like lost
//!   packets (timeouts), not refused connections.
//! - Faults: `kill` (SIGKILL a random node or the leader, restart it later), `pause`
//!   (SIGSTOP/SIGCONT, the long GC pause), `partition` (isolate the leader or a random node,
//!   both ways or one way). The schedule comes from `--seed`, so a run can be replayed (timing
//!   on a real machine still varies).
//! - Each operation is recorded with invocation and completion times and its outcome: ok, failed
//!   (certainly not applied: dropped from the history) or indeterminate (may or may not have
//!   happened: no completion time).
//! - Verdict: [`crate::linearizability::check`] per key, and convergence (every node holds
//!   the same data at the same applied index) after healing.

pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_client::pb::{txn_op_response, Consistency, Role};
use raftkv_client::{Client, ClientConfig, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use crate::linearizability::{self, Op, OpKind, Verdict};
use crate::process::ProcessCluster;
use proxy::LinkProxy;

/// A kind of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "kill" => Ok(Self::Kill),
            "pause" => Ok(Self::Pause),
            "partition" => Ok(Self::Partition),
            other => Err(format!("unknown fault {other:?}; use kill, pause or partition")),
        }
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub duration: Duration,
    pub clients: usize,
    pub keys: usize,
    pub faults: Vec<FaultKind>,
    pub seed: u64,
    /// Where history, fault timeline, report and node logs are written.
    pub out_dir: PathBuf,
    /// The raftkvd binary to run.
    pub raftkvd: PathBuf,
    /// Time budget of the checker, per key.
    pub check_budget: Duration,
    /// Read with this consistency. `Stale` is a deliberately broken setup — stale reads are
    /// not linearizable — that shows the run catches anomalies.
    pub read_consistency: Consistency,
}

/// One injected fault, for the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub kind: FaultKind,
    /// What exactly: `kill node 2 (leader)`, `isolate node 3 one way`...
    pub what: String,
    pub start_ms: f64,
    pub end_ms: f64,
    /// Whether it hit the node that led when it began (which makes one election expected).
    pub on_leader: bool,
    /// Elections between this fault's start and the next one's (or the end of the run): how
    /// far the highest term moved.
    pub elections: u64,
}

/// Faults of one kind on one role, and the elections that followed them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FaultTally {
    pub faults: u64,
    pub elections: u64,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub duration_s: f64,
    pub ops: usize,
    pub ops_by_outcome: BTreeMap<String, usize>,
    pub faults: usize,
    pub faults_by_kind: BTreeMap<String, usize>,
    /// Per kind of fault and the role it hit (`pause follower`, `kill leader`...): how many,
    /// and the elections that followed (before the next fault or the end). A fault on a
    /// follower should cost none; one on the leader, one.
    pub elections_by_fault: BTreeMap<String, FaultTally>,
    /// Each node's term once the run is over and the cluster converged.
    pub terms_at_end: BTreeMap<u64, u64>,
    /// Per key: `linearizable`, `violation` or `unknown`.
    pub verdicts: BTreeMap<String, String>,
    pub counterexamples: BTreeMap<String, String>,
    pub linearizable: bool,
    pub undecided: bool,
    pub converged: bool,
    pub convergence_detail: String,
    pub out_dir: String,
}

impl ChaosReport {
    /// 0 when linearizable and converged; 1 on a violation or divergence; 2 when the checker
    /// could not decide within its budget.
    pub fn exit_code(&self) -> i32 {
        if !self.converged || (!self.linearizable && !self.undecided) {
            1
        } else if self.undecided {
            2
        } else {
            0
        }
    }

    pub fn summary(&self) -> String {
        let mut out = format!(
            "chaos run, seed {}: {:.0} s, {} operations {:?}, {} faults {:?}\n",
            self.seed, self.duration_s, self.ops, self.ops_by_outcome, self.faults, self.faults_by_kind
        );
        let tallies: Vec<String> = self
            .elections_by_fault
            .iter()
            .map(|(what, t)| format!("{what} {} in {}", t.elections, t.faults))
            .collect();
        out.push_str(&format!(
            "elections after faults: {}; terms at the end: {:?}\n",
            tallies.join(", "),
            self.terms_at_end
        ));
        for (key, verdict) in &self.verdicts {
            out.push_str(&format!("  {key}: {verdict}\n"));
        }
        for (key, c) in &self.counterexamples {
            out.push_str(&format!("counterexample for {key}:\n{c}"));
        }
        out.push_str(&format!(
            "converged: {} ({})\n",
            self.converged, self.convergence_detail
        ));
        let verdict = match self.exit_code() {
            0 => "PASS: linearizable and converged",
            2 => "UNDECIDED: the checker ran out of time on some keys",
            _ => "FAIL",
        };
        out.push_str(&format!("{verdict}\nhistory, faults and logs: {}\n", self.out_dir));
        out
    }
}

/// The cluster under test: processes plus the proxies on every directed peer link.
struct Testbed {
    cluster: ProcessCluster,
    proxies: Vec<LinkProxy>,
    killed: Vec<u64>,
    paused: Vec<u64>,
}

impl Testbed {
    async fn start(raftkvd: PathBuf) -> anyhow::Result<Self> {
        let mut cluster = ProcessCluster::prepare(3, &[], raftkvd)?;
        let ids = cluster.ids();
        let mut proxies = Vec::new();
        for from in &ids {
            let mut routes = Vec::new();
            for to in &ids {
                if from == to {
                    continue;
                }
                let target = format!("127.0.0.1:{}", cluster.peer_port(*to)).parse()?;
                let proxy = LinkProxy::start(*from, *to, target).await?;
                routes.push(format!("{to}={}", proxy.addr));
                proxies.push(proxy);
            }
            cluster.set_node_flags(*from, vec!["--peer-route".into(), routes.join(",")]);
        }
        for id in &ids {
            cluster.start_node(*id)?;
        }
        Ok(Self {
            cluster,
            proxies,
            killed: Vec::new(),
            paused: Vec::new(),
        })
    }

    fn links(&self, pred: impl Fn(&LinkProxy) -> bool) -> impl Iterator<Item = &LinkProxy> {
        self.proxies.iter().filter(move |p| pred(p))
    }

    fn heal_all(&mut self) -> anyhow::Result<()> {
        for p in &self.proxies {
            p.heal();
        }
        for id in std::mem::take(&mut self.paused) {
            self.cluster.signal(id, libc::SIGCONT);
        }
        for id in std::mem::take(&mut self.killed) {
            self.cluster.start_node(id)?;
        }
        Ok(())
    }

    /// The leader most nodes agree on, and each answering node's term.
    async fn survey(&self, client: &Client) -> (Option<u64>, BTreeMap<u64, u64>) {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        let mut terms = BTreeMap::new();
        for id in self.cluster.ids() {
            if let Ok(s) = client
                .status_of(&self.cluster.client_addr(id), Duration::from_millis(300))
                .await
            {
                terms.insert(id, s.term);
                if s.role == Role::Leader as i32 {
                    *votes.entry(s.id).or_default() += 2;
                } else if s.leader_id != 0 {
                    *votes.entry(s.leader_id).or_default() += 1;
                }
            }
        }
        let leader = votes.into_iter().max_by_key(|(_, v)| *v).map(|(id, _)| id);
        (leader, terms)
    }
}

fn millis(origin: Instant) -> f64 {
    origin.elapsed().as_secs_f64() * 1000.0
}

fn nanos(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// Runs the nemesis until `stop`, returning the fault timeline.
async fn nemesis(
    bed: &mut Testbed,
    config: &ChaosConfig,
    origin: Instant,
    stop_at: Instant,
    probe: &Client,
) -> anyhow::Result<(Vec<FaultEvent>, u64)> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut timeline: Vec<FaultEvent> = Vec::new();
    let mut last_term = bed.survey(probe).await.1.values().copied().max().unwrap_or(0);
    if config.faults.is_empty() {
        tokio::time::sleep_until(stop_at).await;
        return Ok((timeline, last_term));
    }
    loop {
        let calm = Duration::from_millis(rng.random_range(800..2500));
        if Instant::now() + calm + Duration::from_secs(4) >= stop_at {
            break;
        }
        tokio::time::sleep(calm).await;
        let kind = config.faults[rng.random_range(0..config.faults.len())];
        let ids = bed.cluster.ids();
        let (leader, terms) = bed.survey(probe).await;
        let term = terms.values().copied().max().unwrap_or(last_term).max(last_term);
        if let Some(previous) = timeline.last_mut() {
            previous.elections = term - last_term;
        }
        last_term = term;
        let target_leader = rng.random_bool(0.5) && leader.is_some();
        let target = match (target_leader, leader) {
            (true, Some(l)) => l,
            _ => ids[rng.random_range(0..ids.len())],
        };
        let role = if Some(target) == leader { " (leader)" } else { "" };
        let hold = Duration::from_millis(rng.random_range(500..3000));
        let start_ms = millis(origin);
        let what = match kind {
            FaultKind::Kill => {
                bed.cluster.kill(target);
                bed.killed.push(target);
                tokio::time::sleep(hold).await;
                bed.cluster.start_node(target)?;
                bed.killed.retain(|k| *k != target);
                format!("kill node {target}{role}, restart after {} ms", hold.as_millis())
            }
            FaultKind::Pause => {
                bed.cluster.signal(target, libc::SIGSTOP);
                bed.paused.push(target);
                tokio::time::sleep(hold).await;
                bed.cluster.signal(target, libc::SIGCONT);
                bed.paused.retain(|p| *p != target);
                format!("pause node {target}{role} for {} ms", hold.as_millis())
            }
            FaultKind::Partition => {
                let one_way = rng.random_bool(0.3);
                for p in bed.links(|p| p.from == target || (!one_way && p.to == target)) {
                    p.cut();
                }
                tokio::time::sleep(hold).await;
                for p in &bed.proxies {
                    p.heal();
                }
                let how = if one_way {
                    "one way (it hears, is not heard)"
                } else {
                    "both ways"
                };
                format!("isolate node {target}{role} {how} for {} ms", hold.as_millis())
            }
        };
        tracing::info!("nemesis: {what}");
        timeline.push(FaultEvent {
            kind,
            what,
            start_ms,
            end_ms: millis(origin),
            on_leader: Some(target) == leader,
            elections: 0,
        });
    }
    Ok((timeline, last_term))
}

/// One client's workload: reads, writes and CAS on the shared keys, recorded.
#[allow(clippy::too_many_arguments)]
async fn worker(
    id: u64,
    client: Client,
    keys: usize,
    seed: u64,
    read_consistency: Consistency,
    origin: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Op>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("k{}", rng.random_range(0..keys));
        let roll = rng.random_range(0..10);
        let invoke = nanos(origin);
        let op = if roll < 4 {
            match client.get_with(key.clone(), read_consistency, None).await {
                Ok(r) => {
                    let result = r.kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    seen.insert(key.clone(), result.clone());
                    Some((OpKind::Read { result }, Some(nanos(origin))))
                }
                Err(_) => None, // a failed read has no effect
            }
        } else if roll < 7 {
            let value = format!("c{id}-{n}");
            let outcome = client.put(key.clone(), value.clone()).await;
            let kind = OpKind::Write { value: value.clone() };
            match outcome {
                Ok(_) => {
                    seen.insert(key.clone(), Some(value));
                    Some((kind, Some(nanos(origin))))
                }
                Err(ClientError::Unavailable(_)) => None, // certainly not applied
                Err(_) => Some((kind, None)),             // may or may not have happened
            }
        } else {
            let expected = seen.get(&key).cloned().flatten();
            let new = format!("c{id}-{n}");
            let outcome = match &expected {
                Some(e) => client.compare_and_swap(key.clone(), e.clone(), new.clone()).await,
                None => client.put_if_absent(key.clone(), new.clone()).await,
            };
            match outcome {
                Ok(r) => {
                    // On failure the reply carries the current value.
                    let current = match r.responses.first().and_then(|x| x.response.as_ref()) {
                        Some(txn_op_response::Response::Get(g)) => {
                            g.kv.as_ref().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                        }
                        _ => Some(new.clone()),
                    };
                    seen.insert(key.clone(), current);
                    Some((
                        OpKind::Cas {
                            expected,
                            new,
                            succeeded: Some(r.succeeded),
                        },
                        Some(nanos(origin)),
                    ))
                }
                Err(ClientError::Unavailable(_)) => None,
                Err(_) => Some((
                    OpKind::Cas {
                        expected,
                        new,
                        succeeded: None,
                    },
                    None,
                )),
            }
        };
        if let Some((kind, complete)) = op {
            history.lock().unwrap_or_else(|e| e.into_inner()).push(Op {
                client: id,
                key,
                kind,
                invoke,
                complete,
            });
        }
    }
}

/// Waits until every node has applied the same index and holds the same data.
async fn converge(bed: &Testbed) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = bed.cluster.ids();
    let mut last = String::from("no node answered");
    while Instant::now() < deadline {
        last = match converged_once(bed, &ids).await {
            Ok(detail) => return (true, detail),
            Err(why) => why,
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (false, last)
}

/// One convergence check: `Ok(description)` when all nodes agree, else why not.
async fn converged_once(bed: &Testbed, ids: &[u64]) -> Result<String, String> {
    let mut applied = BTreeMap::new();
    for id in ids {
        let a = bed
            .cluster
            .applied_index(*id)
            .await
            .map_err(|e| format!("node {id} not answering: {e}"))?;
        applied.insert(*id, a);
    }
    let distinct: std::collections::BTreeSet<u64> = applied.values().copied().collect();
    if distinct.len() != 1 {
        return Err(format!("applied indexes differ: {applied:?}"));
    }
    let mut dumps = Vec::new();
    for id in ids {
        dumps.push(
            bed.cluster
                .dump(*id)
                .await
                .map_err(|e| format!("node {id} dump failed: {e}"))?,
        );
    }
    if !dumps.windows(2).all(|w| w[0] == w[1]) {
        return Err("same applied index but different data".into());
    }
    let index = distinct.first().copied().unwrap_or(0);
    Ok(format!(
        "all nodes applied {index} and hold {} identical keys",
        dumps.first().map_or(0, Vec::len)
    ))
}

fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let mut out = String::new();
    for item in items {
        out.push_str(&serde_json::to_string(item)?);
        out.push('\n');
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// Runs one chaos run and writes its artifacts to `config.out_dir`.
pub async fn run(config: ChaosConfig) -> anyhow::Result<ChaosReport> {
    std::fs::create_dir_all(&config.out_dir)?;
    let mut bed = Testbed::start(config.raftkvd.clone()).await?;
    let all: Vec<u64> = bed.cluster.ids();
    bed.cluster.wait_for_leader(&all, Duration::from_secs(30)).await?;
    let probe = bed.cluster.client();

    let origin = Instant::now();
    let stop_at = origin + config.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    let mut workers = Vec::new();
    for c in 0..config.clients {
        let endpoints: Vec<String> = all.iter().map(|id| bed.cluster.client_addr(*id)).collect();
        let mut client_config = ClientConfig::new(endpoints);
        client_config.timeout = Duration::from_secs(3);
        let client = Client::new(client_config)?;
        workers.push(tokio::spawn(worker(
            c as u64 + 1,
            client,
            config.keys,
            config.seed,
            config.read_consistency,
            origin,
            stop.clone(),
            history.clone(),
        )));
    }
    let (mut timeline, term_at_last_fault) = nemesis(&mut bed, &config, origin, stop_at, &probe).await?;
    tokio::time::sleep_until(stop_at).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    let duration_s = origin.elapsed().as_secs_f64();
    bed.heal_all()?;
    let (converged, convergence_detail) = converge(&bed).await;
    let terms_at_end = bed.survey(&probe).await.1;
    let final_term = terms_at_end.values().copied().max().unwrap_or(0);
    if let Some(last) = timeline.last_mut() {
        last.elections = final_term.saturating_sub(term_at_last_fault);
    }

    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|e| e.into_inner()));
    write_jsonl(&config.out_dir.join("history.jsonl"), &history)?;
    write_jsonl(&config.out_dir.join("faults.jsonl"), &timeline)?;
    bed.cluster.save_logs(&config.out_dir)?;

    let checked = linearizability::check(&history, config.check_budget);
    let mut ops_by_outcome = BTreeMap::new();
    for op in &history {
        let kind = match &op.kind {
            OpKind::Read { .. } => "read",
            OpKind::Write { .. } => "write",
            OpKind::Cas { .. } => "cas",
        };
        let outcome = if op.complete.is_some() { "ok" } else { "indeterminate" };
        *ops_by_outcome.entry(format!("{kind}_{outcome}")).or_insert(0) += 1;
    }
    let mut faults_by_kind = BTreeMap::new();
    let mut elections_by_fault: BTreeMap<String, FaultTally> = BTreeMap::new();
    for f in &timeline {
        let kind = format!("{:?}", f.kind).to_lowercase();
        *faults_by_kind.entry(kind.clone()).or_insert(0) += 1;
        let role = if f.on_leader { "leader" } else { "follower" };
        let tally = elections_by_fault.entry(format!("{kind} {role}")).or_default();
        tally.faults += 1;
        tally.elections += f.elections;
    }
    let mut verdicts = BTreeMap::new();
    let mut counterexamples = BTreeMap::new();
    for (key, verdict) in &checked.per_key {
        let name = match verdict {
            Verdict::Linearizable => "linearizable",
            Verdict::Unknown => "unknown (checker budget exhausted)",
            Verdict::Violation(c) => {
                counterexamples.insert(key.clone(), c.to_string());
                "VIOLATION"
            }
        };
        verdicts.insert(key.clone(), name.to_string());
    }
    let report = ChaosReport {
        seed: config.seed,
        duration_s,
        ops: history.len(),
        ops_by_outcome,
        faults: timeline.len(),
        faults_by_kind,
        elections_by_fault,
        terms_at_end,
        verdicts,
        counterexamples,
        linearizable: checked.is_linearizable(),
        undecided: !checked.unknown_keys().is_empty() && checked.violations().count() == 0,
        converged,
        convergence_detail,
        out_dir: config.out_dir.display().to_string(),
    };
    std::fs::write(
        config.out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}
