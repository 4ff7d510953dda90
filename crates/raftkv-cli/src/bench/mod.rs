//! `raftkv bench`: one load generator for raftkv and, side by side, etcd.
//!
//! Workloads: `put` (random keys), `get` (random existing keys, at the chosen consistency),
//! `mixed` (`--read-ratio` of gets), `txn` (compare-and-swap on counters), and `failover`
//! (writes while the leader is killed, see [`failover`]), `watch` (events to many watchers, see
//! [`watch`]) and `lease` (many leases kept alive, see [`lease`]). `--clients` requests are in flight at
//! once, spread over `--connections` independent clients. The run lasts `--duration` or
//! `--total` operations, after a `--warmup` that is run but not measured. Latencies go into HDR
//! histograms (microsecond precision). The generator reports the CPU it used itself, so a
//! saturated generator shows, and the Raft elections held during the run (from the highest
//! term before and after), so an unstable cluster shows.
//!
//! The systems behind `--driver` live in [`driver`]; reports and their formats in [`report`];
//! `raftkv bench-table` pairs etcd and raftkv reports into one table ([`table`]).

pub mod driver;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod failover;
pub mod lease;
pub mod report;
pub mod table;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;

use crate::args::{ConsistencyArg, DurationArg};
use driver::{CasOutcome, ClientSettings, Driver, DriverKind, OpError};
use report::BenchReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Gets of random existing keys.
    Get,
    /// Gets and puts, `--read-ratio` of them gets.
    Mixed,
    /// Compare-and-swap on counters: "if value = what I last saw, put value+1, else get it".
    Txn,
    /// Writes (and reads) while the leader is killed `--kills` times; reports each write
    /// outage and checks that no acknowledged write was lost.
    Failover,
    /// `--watchers` watchers of the key prefix while `--clients` writers put: events
    /// delivered per second and the delay from a put's start to each event.
    Watch,
    /// `--leases` leases of `--ttl`, each kept alive every third of its TTL: keep-alives per
    /// second, their latency, and elections during the run.
    Lease,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Txn => "txn",
            Workload::Failover => "failover",
            Workload::Watch => "watch",
            Workload::Lease => "lease",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Every request to the leader.
    Leader,
    /// Writes to the leader, reads spread over every node.
    All,
    /// Every request to whichever node the client picks, writes included (an etcd follower
    /// forwards them to its leader); what the failover run uses, so writes follow a new leader.
    #[value(skip)]
    AnyNode,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub workload: Workload,
    /// The system to load: raftkv (at --endpoints) or etcd (at --etcd-endpoints; needs a build
    /// with `--features etcd`).
    #[arg(long, value_enum, default_value_t = DriverKind::Raftkv)]
    pub driver: DriverKind,
    /// The system's name in the report (default: the driver's). `scripts/bench-vs-etcd.sh` runs
    /// the etcd driver against raftkv's etcd port as `--report-as raftkv-etcd`.
    #[arg(long, value_name = "NAME")]
    pub report_as: Option<String>,
    /// etcd client URLs for `--driver etcd`, comma-separated.
    #[arg(long, env = "RAFTKV_BENCH_ETCD_ENDPOINTS", default_value = driver::default_endpoints(DriverKind::Etcd))]
    pub etcd_endpoints: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Independent clients (each with its own connections) the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to measure (after the warm-up); ignored with --total.
    #[arg(long, default_value = "10s")]
    pub duration: DurationArg,
    /// Measure this many operations instead of a duration.
    #[arg(long)]
    pub total: Option<u64>,
    /// get, mixed, txn: pause after writing the key space, before the warm-up, so the
    /// background work that load sets off is not measured.
    #[arg(long, default_value = "5s", value_parser = DurationArg::zero_allowed)]
    pub preload_settle: DurationArg,
    /// Time at the start that is run but not measured (0s: none).
    #[arg(long, default_value = "2s", value_parser = DurationArg::zero_allowed)]
    pub warmup: DurationArg,
    /// Size of the key space (get, mixed and txn write every key before the run).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Key size in bytes (`bench/` and a zero-padded number).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Consistency of the gets (stale is etcd's serializable).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Where requests go.
    #[arg(long, value_enum, default_value_t = Target::All)]
    pub target: Target,
    /// Share of gets in the mixed workload (0.0-1.0).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// watch: how many watchers follow the key prefix (spread over the nodes).
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// lease: how many leases to keep alive.
    #[arg(long, default_value_t = 10_000)]
    pub leases: usize,
    /// lease: the leases' time-to-live (each is kept alive every third of it).
    #[arg(long, default_value = "15s")]
    pub ttl: DurationArg,
    /// failover: how many times to kill the leader.
    #[arg(long, default_value_t = 5)]
    pub kills: u32,
    /// failover: command that kills node {id} (run with sh -c; {id} is raftkv's node id or
    /// etcd's member name).
    #[arg(long, default_value = "scripts/cluster.sh kill {id}")]
    pub kill_cmd: String,
    /// failover: command that restarts node {id}.
    #[arg(long, default_value = "scripts/cluster.sh start {id}")]
    pub start_cmd: String,
    /// failover: pause after each restart, before the next kill.
    #[arg(long, default_value = "3s")]
    pub settle: DurationArg,
    /// failover: when no node answers, start a cluster with this command first (and stop it
    /// with --cluster-down-cmd at the end). Empty: never.
    #[arg(long, default_value = "scripts/cluster.sh up")]
    pub cluster_up_cmd: String,
    /// failover: how to stop a cluster the run started.
    #[arg(long, default_value = "scripts/cluster.sh down")]
    pub cluster_down_cmd: String,
}

impl BenchArgs {
    /// The system's name in reports.
    pub fn system_name(&self) -> String {
        self.report_as.clone().unwrap_or_else(|| self.driver.name().to_string())
    }

    /// Checks the options against each other; the message says which one to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.connections == 0 || self.keys == 0 {
            return Err("--clients, --connections and --keys must be at least 1".into());
        }
        if self.total == Some(0) {
            return Err("--total must be at least 1".into());
        }
        if self.workload == Workload::Lease && self.leases == 0 {
            return Err("--leases must be at least 1".into());
        }
        if self.workload == Workload::Watch && self.watchers == 0 {
            return Err("--watchers must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(format!("--read-ratio must be within 0.0-1.0, not {}", self.read_ratio));
        }
        KeySpace::new(self.keys, self.key_size).map(|_| ())
    }

    /// The endpoints of the system under test.
    pub fn endpoints<'a>(&'a self, raftkv_endpoints: &'a str) -> &'a str {
        match self.driver {
            DriverKind::Raftkv => raftkv_endpoints,
            DriverKind::Etcd => &self.etcd_endpoints,
        }
    }
}

/// The benchmark's keys: `bench/` and the key's number, zero-padded to `--key-size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpace {
    pub keys: usize,
    digits: usize,
}

pub(crate) const KEY_PREFIX: &str = "bench/";

impl KeySpace {
    pub fn new(keys: usize, key_size: usize) -> Result<Self, String> {
        let needed = keys.saturating_sub(1).to_string().len();
        let digits = key_size.saturating_sub(KEY_PREFIX.len());
        if digits < needed {
            return Err(format!(
                "--key-size {key_size} is too small for {keys} keys: it needs at least {} bytes",
                KEY_PREFIX.len() + needed
            ));
        }
        Ok(Self { keys, digits })
    }

    pub fn key(&self, i: usize) -> Vec<u8> {
        format!("{KEY_PREFIX}{i:0width$}", width = self.digits).into_bytes()
    }

    pub fn random(&self) -> (usize, Vec<u8>) {
        let i = rand::rng().random_range(0..self.keys);
        (i, self.key(i))
    }
}

/// Elections held during a run, from the highest term before and after it (unknown if either
/// could not be read).
pub fn elections_between(term_before: Option<u64>, term_after: Option<u64>) -> Option<u64> {
    Some(term_after?.saturating_sub(term_before?))
}

/// CPU seconds this process has used (user + system).
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; a zeroed rusage is a valid initial value.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(usage.ru_utime) + t(usage.ru_stime)
    }
}

/// A latency histogram in microseconds, from 1 µs to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

fn config_error(message: String) -> OpError {
    OpError {
        kind: "config".into(),
        indeterminate: false,
        message,
    }
}

/// Writes every key of the space (`value` for each) before a read or txn run.
async fn preload(driver: &Driver, keys: &KeySpace, value: &[u8], writers: usize) -> Result<(), OpError> {
    let per_task = keys.keys.div_ceil(writers.max(1));
    let mut tasks = Vec::new();
    for w in 0..writers.max(1) {
        let items: Vec<(Vec<u8>, Vec<u8>)> = (w * per_task..((w + 1) * per_task).min(keys.keys))
            .map(|i| (keys.key(i), value.to_vec()))
            .collect();
        let driver = driver.clone();
        tasks.push(tokio::spawn(async move { driver.preload(w, &items).await }));
    }
    for t in tasks {
        t.await
            .map_err(|e| config_error(format!("preload task failed: {e}")))??;
    }
    Ok(())
}

/// What one in-flight request slot measured.
struct SlotResult {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    txn_conflicts: u64,
}

/// What every slot needs to know.
#[derive(Clone)]
struct SlotPlan {
    workload: Workload,
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    linearizable: bool,
    read_ratio: f64,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
    /// With --total: operations started in the measured part so far.
    started: Arc<AtomicU64>,
    total: Option<u64>,
    /// Operations finished in the measured part (for the progress bar).
    finished: Arc<AtomicU64>,
}

async fn run_slot(driver: Driver, slot: usize, plan: SlotPlan) -> SlotResult {
    let mut out = SlotResult {
        latency: new_histogram(),
        errors: BTreeMap::new(),
        txn_conflicts: 0,
    };
    // txn: the value this slot last saw in each counter.
    let mut seen: HashMap<usize, Vec<u8>> = HashMap::new();
    while !plan.stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let measured = t0 >= plan.measure_from;
        if measured {
            if let Some(total) = plan.total {
                if plan.started.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
            }
        }
        let (i, key) = plan.keys.random();
        let read = match plan.workload {
            Workload::Get => true,
            Workload::Mixed => rand::rng().random_bool(plan.read_ratio),
            _ => false,
        };
        let result = match plan.workload {
            Workload::Txn => {
                let expected = seen.get(&i).cloned().unwrap_or_else(|| b"0".to_vec());
                let next = counter_successor(&expected);
                match driver.compare_and_swap(slot, &key, &expected, &next).await {
                    Ok(CasOutcome::Swapped) => {
                        seen.insert(i, next);
                        Ok(())
                    }
                    Ok(CasOutcome::Conflict(current)) => {
                        if measured {
                            out.txn_conflicts += 1;
                        }
                        seen.insert(i, current.unwrap_or_default());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            _ if read => driver.get(slot, &key, plan.linearizable).await.map(|_| ()),
            _ => driver.put(slot, &key, &plan.value).await,
        };
        if !measured {
            continue;
        }
        match result {
            Ok(()) => {
                let _ = out.latency.record(t0.elapsed().as_micros().max(1) as u64);
                plan.finished.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => *out.errors.entry(e.kind).or_default() += 1,
        }
    }
    out
}

/// The next value of a decimal counter (a value that is not a number restarts it at 1).
fn counter_successor(value: &[u8]) -> Vec<u8> {
    let n: u64 = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (n + 1).to_string().into_bytes()
}

/// Checks the options, then connects the driver: what every timed workload starts with.
async fn prepare(
    args: &BenchArgs,
    raftkv_endpoints: &str,
    client: &ClientSettings,
) -> Result<(KeySpace, Driver), OpError> {
    args.validate().map_err(config_error)?;
    let keys = KeySpace::new(args.keys, args.key_size).map_err(config_error)?;
    let driver = Driver::connect(
        args.driver,
        args.endpoints(raftkv_endpoints),
        args.connections,
        args.target,
        client,
    )
    .await?;
    Ok((keys, driver))
}

/// Runs a steady workload (put, get, mixed, txn) and returns its report.
pub async fn run(args: &BenchArgs, raftkv_endpoints: &str, client: &ClientSettings) -> Result<BenchReport, OpError> {
    let (keys, driver) = prepare(args, raftkv_endpoints, client).await?;
    let value = vec![b'v'; args.value_size];
    let preloaded = match args.workload {
        Workload::Get | Workload::Mixed => preload(&driver, &keys, &value, 16).await.map(|_| true)?,
        Workload::Txn => preload(&driver, &keys, b"0", 16).await.map(|_| true)?,
        Workload::Put | Workload::Failover | Workload::Watch | Workload::Lease => false,
    };
    if preloaded {
        // Writing the whole key space sets off background work (etcd snapshots its log every
        // 100,000 entries; raftkv builds snapshots too): let it finish before measuring reads.
        tokio::time::sleep(args.preload_settle.0).await;
    }

    let term_before = driver.max_term().await.ok();
    let start = Instant::now();
    let warmup = args.warmup.0;
    let plan = SlotPlan {
        workload: args.workload,
        keys,
        value: Arc::new(value),
        linearizable: args.consistency == ConsistencyArg::Linearizable,
        read_ratio: args.read_ratio,
        measure_from: start + warmup,
        stop: Arc::new(AtomicBool::new(false)),
        started: Arc::new(AtomicU64::new(0)),
        total: args.total,
        finished: Arc::new(AtomicU64::new(0)),
    };
    let cpu_before = cpu_seconds();
    let tasks: Vec<_> = (0..args.clients)
        .map(|slot| tokio::spawn(run_slot(driver.clone(), slot, plan.clone())))
        .collect();

    let progress = report::Progress::new(
        &args.system_name(),
        args.workload.name(),
        args.total,
        warmup + args.duration.0,
    );
    let deadline = match args.total {
        Some(_) => None,
        None => Some(start + warmup + args.duration.0),
    };
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.update(start.elapsed(), plan.finished.load(Ordering::Relaxed));
        let done = match deadline {
            Some(d) => Instant::now() >= d,
            None => tasks.iter().all(|t| t.is_finished()),
        };
        if done {
            break;
        }
    }
    plan.stop.store(true, Ordering::Relaxed);
    let measured_secs = plan.measure_from.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let mut latency = new_histogram();
    let mut errors = BTreeMap::new();
    let mut txn_conflicts = 0;
    for t in tasks {
        let slot = t.await.map_err(|e| config_error(format!("bench task failed: {e}")))?;
        let _ = latency.add(&slot.latency);
        for (k, v) in slot.errors {
            *errors.entry(k).or_default() += v;
        }
        txn_conflicts += slot.txn_conflicts;
    }
    progress.finish();
    let term_after = driver.max_term().await.ok();
    let total_secs = start.elapsed().as_secs_f64().max(f64::EPSILON);
    Ok(BenchReport {
        driver: args.system_name(),
        workload: args.workload.name().to_string(),
        consistency: matches!(args.workload, Workload::Get | Workload::Mixed).then(|| {
            match args.consistency {
                ConsistencyArg::Linearizable => "linearizable",
                ConsistencyArg::Stale => "stale",
            }
            .to_string()
        }),
        read_ratio: (args.workload == Workload::Mixed).then_some(args.read_ratio),
        target: match args.target {
            Target::Leader => "leader",
            Target::All => "all",
            Target::AnyNode => "any",
        }
        .to_string(),
        clients: args.clients,
        connections: args.connections,
        keys: args.keys,
        key_size: args.key_size,
        value_size: args.value_size,
        seconds: measured_secs,
        ops: latency.len(),
        latency,
        errors,
        txn_conflicts,
        generator_cpu_percent: 100.0 * cpu / total_secs,
        elections: elections_between(term_before, term_after),
        watchers: None,
        writes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_to_the_key_size_and_sort_numerically() {
        let space = KeySpace::new(1000, 16).expect("fits");
        assert_eq!(space.key(7), b"bench/0000000007".to_vec());
        assert_eq!(space.key(999).len(), 16);
        assert!(space.key(99) < space.key(100));
    }

    #[test]
    fn a_key_size_too_small_for_the_key_space_is_refused() {
        let err = KeySpace::new(100_000, 10).expect_err("5 digits do not fit in 4");
        assert!(err.contains("at least 11 bytes"), "{err}");
        assert!(KeySpace::new(100_000, 11).is_ok());
    }

    #[test]
    fn counters_count_up_from_what_was_seen() {
        assert_eq!(counter_successor(b"0"), b"1".to_vec());
        assert_eq!(counter_successor(b"41"), b"42".to_vec());
        assert_eq!(counter_successor(b"not a number"), b"1".to_vec());
    }
}
