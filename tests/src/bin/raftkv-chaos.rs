//! raftkv-chaos: a chaos run against a three-node cluster (see `raftkv_tests::chaos`).
//! Exit code 0 only if the history is linearizable and the nodes converged; 1 on a violation
//! or divergence; 2 when the checker could not decide within its budget.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use raftkv_client::pb::Consistency;
use raftkv_tests::chaos::{self, ChaosConfig, FaultKind};
use raftkv_tests::linearizability::Verdict;

/// Run clients and a nemesis against a local cluster, then check the history.
#[derive(Debug, Parser)]
#[command(name = "raftkv-chaos", version, about)]
struct Args {
    /// How long clients and faults run: 90s, 2m, 20m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keys the clients share (fewer keys: more contention).
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Faults to inject, comma-separated: kill, pause, partition (empty: none).
    #[arg(long, default_value = "kill,pause,partition", value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// Seed of the fault schedule and the workload (random when omitted; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write history.jsonl, faults.jsonl, report.json and node logs
    /// (default .chaos/<time>-seed<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The raftkvd binary (default: the one next to this binary).
    #[arg(long)]
    raftkvd: Option<PathBuf>,
    /// Checker time budget per key.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    check_budget: Duration,
    /// Use stale reads: a deliberately broken setup, to see the run catch anomalies (it should
    /// fail).
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// Do not run anything: check a history.jsonl written by an earlier run and print the verdict.
    #[arg(long, value_name = "HISTORY")]
    check: Option<PathBuf>,
}

/// Re-checks a saved history; exit code as for a run (convergence is not re-checked).
fn check_saved(path: &std::path::Path, budget: Duration) -> std::process::ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("raftkv-chaos: cannot read {}: {e}", path.display());
            return std::process::ExitCode::from(1);
        }
    };
    let mut history = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<raftkv_tests::linearizability::Op>(line) {
            Ok(op) => history.push(op),
            Err(e) => {
                eprintln!("raftkv-chaos: {}:{}: {e}", path.display(), n + 1);
                return std::process::ExitCode::from(1);
            }
        }
    }
    let report = raftkv_tests::linearizability::check(&history, budget);
    let mut out = std::io::stdout().lock();
    for (key, verdict) in &report.per_key {
        // A closed pipe (`| head`) is not worth a complaint.
        let _ = match verdict {
            Verdict::Linearizable => writeln!(out, "{key}: linearizable"),
            Verdict::Unknown => writeln!(out, "{key}: unknown (checker budget exhausted)"),
            Verdict::Violation(c) => writeln!(out, "{key}: VIOLATION\n{c}"),
        };
    }
    let code = if report.is_linearizable() {
        0
    } else if report.violations().count() > 0 {
        1
    } else {
        2
    };
    std::process::ExitCode::from(code)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s or 2m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("unknown unit {unit:?}; use ms, s or m")),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check {
        return check_saved(path, args.check_budget);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let raftkvd = match args.raftkvd {
        Some(p) => p,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("raftkvd"),
            Err(e) => {
                eprintln!("raftkv-chaos: cannot locate raftkvd: {e}; pass --raftkvd");
                return std::process::ExitCode::from(1);
            }
        },
    };
    if !raftkvd.exists() {
        eprintln!(
            "raftkv-chaos: {} not found; build it or pass --raftkvd",
            raftkvd.display()
        );
        return std::process::ExitCode::from(1);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out_dir = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!(".chaos/{stamp}-seed{seed}")));
    println!(
        "chaos run: seed {seed}, {:?}, {} clients, faults {:?}",
        args.duration, args.clients, args.faults
    );
    let config = ChaosConfig {
        duration: args.duration,
        clients: args.clients,
        keys: args.keys,
        faults: args.faults,
        seed,
        out_dir,
        raftkvd,
        check_budget: args.check_budget,
        read_consistency: if args.unsafe_stale_reads {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkv-chaos: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(chaos::run(config)) {
        Ok(report) => {
            print!("{}", report.summary());
            std::process::ExitCode::from(report.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("raftkv-chaos: the run failed: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
