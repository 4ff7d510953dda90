//! `raftkv bench`, run as a user runs it, in short smoke runs: every workload completes against
//! a real cluster and prints a well-formed report. Nothing here asserts a speed; the figures
//! come from scripts/bench-vs-etcd.sh.

use std::process::{Command, Output};
use std::time::Duration;

use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::script::{text, Script};
use raftkv_tests::workspace_binary;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn endpoints(cluster: &InProcessCluster) -> String {
    cluster
        .running()
        .into_iter()
        .map(|id| cluster.client_addr(id))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `raftkv --endpoints E -o json bench ARGS` off the async runtime.
async fn bench(endpoints: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(workspace_binary("raftkv"));
    cmd.args(["--endpoints", endpoints, "-o", "json", "bench"]).args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run raftkv bench"))
        .await
        .expect("bench thread")
}

fn report(out: &Output) -> Value {
    assert!(out.status.success(), "bench failed: {}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not one JSON report ({e}): {}", text(out)))
}

fn assert_well_formed(r: &Value, workload: &str) {
    assert_eq!(r["driver"], "raftkv", "{r}");
    assert_eq!(r["workload"], workload, "{r}");
    assert!(r["ops"].as_u64().unwrap_or(0) > 0, "no operation succeeded: {r}");
    assert!(r["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    let latency = &r["latency_ms"];
    let (p50, p99, max) = (
        latency["p50"].as_f64().unwrap_or(-1.0),
        latency["p99"].as_f64().unwrap_or(-1.0),
        latency["max"].as_f64().unwrap_or(-1.0),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "percentiles out of order: {r}");
    assert!(latency["p90"].is_number() && latency["p999"].is_number(), "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert!(r["generator_cpu_percent"].is_number(), "{r}");
    assert!(r["elections"].is_u64(), "the election count was not read: {r}");
}

/// put, get (both consistencies, both targets), mixed and txn each complete and report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_steady_workload_runs_and_reports() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let eps = endpoints(&cluster);
    let short = [
        "--duration",
        "700ms",
        "--warmup",
        "200ms",
        "--keys",
        "200",
        "--clients",
        "8",
        "--connections",
        "2",
    ];
    for (workload, extra) in [
        ("put", vec![]),
        ("get", vec!["--consistency", "linearizable", "--target", "all"]),
        ("get", vec!["--consistency", "stale", "--target", "leader"]),
        ("mixed", vec!["--read-ratio", "0.5"]),
        ("txn", vec![]),
        ("watch", vec!["--watchers", "6"]),
    ] {
        let mut args = vec![workload];
        args.extend(short);
        args.extend(extra.iter().copied());
        let r = report(&bench(&eps, &args).await);
        assert_well_formed(&r, workload);
        if workload == "get" {
            assert!(r["consistency"].is_string(), "{r}");
        }
        if workload == "txn" {
            assert!(r["txn_conflicts"].is_u64(), "{r}");
        }
        if workload == "watch" {
            // The writes of the measured part reach each of the 6 watchers (the last ones may
            // still be on their way when the run stops: at least 90 % of 6 × writes).
            let (events, writes) = (r["ops"].as_u64().unwrap_or(0), r["writes"].as_u64().unwrap_or(0));
            assert_eq!(r["watchers"], 6, "{r}");
            assert!(
                writes > 0 && events * 10 >= 54 * writes,
                "{events} events for {writes} writes: {r}"
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}

/// `--total N` measures exactly N operations (when none fails), whatever the time it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_counts_operations_instead_of_time() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let r = report(
        &bench(
            &endpoints(&cluster),
            &[
                "put",
                "--total",
                "150",
                "--warmup",
                "0s",
                "--clients",
                "4",
                "--key-size",
                "24",
            ],
        )
        .await,
    );
    assert_well_formed(&r, "put");
    assert_eq!(r["ops"], 150, "{r}");
    assert_eq!(r["key_size"], 24, "{r}");
    cluster.shutdown().await;
    Ok(())
}

/// Options that cannot work are refused up front with a message naming the option.
#[test]
fn bad_options_are_refused_with_a_usable_message() {
    let run = |args: &[&str]| {
        Command::new(workspace_binary("raftkv"))
            .args(["--endpoints", "127.0.0.1:1", "bench"])
            .args(args)
            .output()
            .expect("run raftkv bench")
    };
    let small_keys = run(&["put", "--keys", "100000", "--key-size", "8"]);
    assert_eq!(small_keys.status.code(), Some(2), "{}", text(&small_keys));
    assert!(
        text(&small_keys).contains("--key-size 8 is too small"),
        "{}",
        text(&small_keys)
    );

    let ratio = run(&["mixed", "--read-ratio", "1.5"]);
    assert_eq!(ratio.status.code(), Some(2), "{}", text(&ratio));
    assert!(text(&ratio).contains("--read-ratio"), "{}", text(&ratio));

    // The default build has no etcd driver and says how to get one; a build with it (cargo
    // feature `etcd`) finds no etcd at port 1 and says that instead.
    let etcd = run(&["put", "--driver", "etcd", "--etcd-endpoints", "127.0.0.1:1"]);
    let without_driver = etcd.status.code() == Some(2) && text(&etcd).contains("--features etcd");
    let no_etcd_there = etcd.status.code() == Some(3);
    assert!(without_driver || no_etcd_there, "{}", text(&etcd));
}

/// With no cluster answering, `bench failover` starts one with scripts/cluster.sh, kills its
/// leader, checks that nothing acknowledged was lost, and stops it again.
#[test]
fn failover_bench_starts_and_stops_its_own_cluster() {
    let s = Script::new();
    let out = Command::new(workspace_binary("raftkv"))
        .current_dir(Script::root())
        .args(["--endpoints", &s.endpoints(), "-o", "json", "bench", "failover"])
        .args([
            "--kills",
            "1",
            "--clients",
            "4",
            "--warmup",
            "300ms",
            "--settle",
            "500ms",
        ])
        .envs(s.env())
        .output()
        .expect("run raftkv bench failover");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("starting a cluster"), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(r["kills"], 1, "{r}");
    assert_eq!(r["acknowledged_lost"], 0, "{r}");
    assert!(r["writes_acknowledged"].as_u64().unwrap_or(0) > 0, "{r}");
    // The cluster it started is gone: no node answers any more.
    let status = s.raftkv(&["--timeout", "1s", "cluster", "leader"]);
    assert!(!status.status.success(), "a node still answers: {}", text(&status));
}
