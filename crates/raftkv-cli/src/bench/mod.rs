//! `raftkv bench`: a load generator for raftkv, reporting throughput and latency percentiles.
//!
//! Workloads: `put` (random keys), `get` (random existing keys, at the chosen consistency), and
//! `mixed` (`--read-ratio` of gets). `--clients` requests are in flight at once, spread over
//! `--connections` client instances (each holding one HTTP/2 connection per node). Latencies go
//! into HDR histograms (microsecond precision); the first `--warmup` of the run is not counted.
//! The report includes the CPU time the generator itself used, so a saturated generator shows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use raftkv_client::pb::Consistency;
use raftkv_client::{Client, ClientConfig, ClientError};
use rand::Rng;
use serde_json::json;

use crate::args::{ConsistencyArg, DurationArg};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Gets of random existing keys.
    Get,
    /// Gets and puts, `--read-ratio` of them gets.
    Mixed,
    /// Writes (and reads) while the leader is killed `--kills` times; reports each write
    /// outage and checks that no acknowledged write was lost.
    Failover,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Every request to the leader.
    Leader,
    /// Writes to the leader, reads spread over every node.
    All,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub workload: Workload,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Client instances (connection sets) the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s")]
    pub duration: DurationArg,
    /// Time at the start that is run but not measured.
    #[arg(long, default_value = "2s")]
    pub warmup: DurationArg,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Consistency of the gets.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Where requests go.
    #[arg(long, value_enum, default_value_t = Target::All)]
    pub target: Target,
    /// Share of gets in the mixed workload (0.0-1.0).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// failover: how many times to kill the leader.
    #[arg(long, default_value_t = 5)]
    pub kills: u32,
    /// failover: command that kills node {id} (run with sh -c).
    #[arg(long, default_value = "scripts/cluster.sh kill {id}")]
    pub kill_cmd: String,
    /// failover: command that restarts node {id}.
    #[arg(long, default_value = "scripts/cluster.sh start {id}")]
    pub start_cmd: String,
    /// failover: pause after each restart, before the next kill.
    #[arg(long, default_value = "3s")]
    pub settle: DurationArg,
}

/// What a run measured.
#[derive(Debug)]
pub struct BenchReport {
    pub workload: Workload,
    pub seconds: f64,
    pub ops: u64,
    pub latency: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub generator_cpu_percent: f64,
}

fn key(i: usize) -> String {
    format!("bench/{i:08}")
}

fn cpu_seconds() -> f64 {
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

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::InvalidArgument(_) => "invalid_argument".into(),
        ClientError::Unavailable(_) => "unavailable".into(),
        ClientError::Indeterminate(_) => "indeterminate".into(),
        ClientError::Config(_) => "config".into(),
        ClientError::Server { code, .. } => format!("server_{code:?}").to_lowercase(),
    }
}

/// Runs the benchmark against `endpoints` and returns its report.
pub async fn run(args: &BenchArgs, endpoints: &str, timeout: Duration) -> Result<BenchReport, ClientError> {
    if args.clients == 0 || args.connections == 0 || args.keys == 0 {
        return Err(ClientError::Config(
            "--clients, --connections and --keys must be at least 1".into(),
        ));
    }
    let mut config = ClientConfig::parse(endpoints)?;
    config.timeout = timeout;
    let probe = Client::new(config.clone())?;
    if args.target == Target::Leader {
        let reports = probe.cluster_status().await;
        let (_, addr) =
            crate::output::leader(&reports).ok_or_else(|| ClientError::Unavailable("no leader to target".into()))?;
        config.endpoints = vec![raftkv_client::EndpointSpec::new(addr)];
    }
    let clients: Vec<Client> = (0..args.connections)
        .map(|_| Client::new(config.clone()))
        .collect::<Result<_, _>>()?;
    let value = vec![b'v'; args.value_size];

    if args.workload != Workload::Put {
        // Every key the gets may ask for exists.
        let writers = args.clients.min(64);
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (client, value) = (clients[w % clients.len()].clone(), value.clone());
            let (keys, step) = (args.keys, writers);
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < keys {
                    client.put(key(i), value.clone()).await?;
                    i += step;
                }
                Ok::<_, ClientError>(())
            }));
        }
        for t in tasks {
            t.await
                .map_err(|e| ClientError::Config(format!("preload task failed: {e}")))??;
        }
    }

    let consistency: Consistency = args.consistency.into();
    let warmup = args.warmup.0;
    let measured = args.duration.0;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + warmup;
    let cpu_before = cpu_seconds();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = clients[c % clients.len()].clone();
        let (value, stop) = (value.clone(), stop.clone());
        let (workload, keys, read_ratio) = (args.workload, args.keys, args.read_ratio);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let (k, read) = {
                    let mut rng = rand::rng();
                    let read = match workload {
                        Workload::Put | Workload::Failover => false,
                        Workload::Get => true,
                        Workload::Mixed => rng.random_bool(read_ratio.clamp(0.0, 1.0)),
                    };
                    (key(rng.random_range(0..keys)), read)
                };
                let t0 = Instant::now();
                let result = if read {
                    client.get_with(k, consistency, None).await.map(|_| ())
                } else {
                    client.put(k, value.clone()).await.map(|_| ())
                };
                if t0 < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => {
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => *errors.entry(error_kind(&e)).or_default() += 1,
                }
            }
            (hist, errors)
        }));
    }
    tokio::time::sleep(warmup + measured).await;
    stop.store(true, Ordering::Relaxed);
    let measured_secs = (Instant::now() - measure_from).as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let mut errors = BTreeMap::new();
    for t in tasks {
        let (hist, errs) = t
            .await
            .map_err(|e| ClientError::Config(format!("bench task failed: {e}")))?;
        let _ = latency.add(&hist);
        for (k, v) in errs {
            *errors.entry(k).or_default() += v;
        }
    }
    let total_secs = (warmup + measured).as_secs_f64().max(f64::EPSILON);
    Ok(BenchReport {
        workload: args.workload,
        seconds: measured_secs,
        ops: latency.len(),
        latency,
        errors,
        generator_cpu_percent: 100.0 * cpu / total_secs,
    })
}

impl BenchReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds.max(f64::EPSILON)
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "{:?}: {} ops in {:.1} s = {:.0} ops/s\nlatency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            self.workload,
            self.ops,
            self.seconds,
            self.ops_per_sec(),
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency.max() as f64 / 1000.0,
        );
        out.push_str(&format!(
            "load generator CPU: {:.0}% of one core\n",
            self.generator_cpu_percent
        ));
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!("errors: {}\n", list.join(", ")));
        }
        out
    }

    pub fn json(&self) -> String {
        format!(
            "{}\n",
            json!({
                "workload": format!("{:?}", self.workload).to_lowercase(),
                "seconds": self.seconds,
                "ops": self.ops,
                "ops_per_sec": self.ops_per_sec(),
                "latency_ms": {
                    "p50": self.ms(0.5),
                    "p90": self.ms(0.9),
                    "p99": self.ms(0.99),
                    "p999": self.ms(0.999),
                    "max": self.latency.max() as f64 / 1000.0,
                },
                "errors": self.errors,
                "generator_cpu_percent": self.generator_cpu_percent,
            })
        )
    }
}
