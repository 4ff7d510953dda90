//! The `raftkv` command line against real `raftkvd` processes: output and exit codes as the
//! README documents them (0 ok, 1 not found, 2 usage, 3 unavailable/indeterminate, 5 token
//! refused).

use std::process::Command;
use std::time::Duration;

use raftkv_tests::process::ProcessCluster;
use raftkv_tests::workspace_binary;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn raftkv(endpoints: &str, args: &[&str]) -> Out {
    raftkv_with_env(endpoints, args, &[])
}

fn raftkv_with_env(endpoints: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = Command::new(workspace_binary("raftkv"))
        .env_remove("RAFTKV_TOKEN")
        .envs(env.iter().copied())
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .expect("run raftkv");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_commands_and_exit_codes() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");

    let put = raftkv(&ep, &["put", "greeting", "hello world"]);
    assert_eq!(put.code, 0, "{}", put.stderr);
    assert!(put.stdout.starts_with("OK (revision "), "{}", put.stdout);

    let get = raftkv(&ep, &["get", "greeting"]);
    assert_eq!((get.code, get.stdout.as_str()), (0, "hello world\n"), "{}", get.stderr);

    let json = raftkv(&ep, &["get", "greeting", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(v["value"], "hello world");
    assert_eq!(v["version"], 1);
    assert_eq!(v["found"], true);

    // A stale read answers from node 3's own state, which may lag the put for a moment: it
    // finds the key once node 3 has applied it.
    let revision: u64 = put
        .stdout
        .trim_start_matches("OK (revision ")
        .trim_end_matches(")\n")
        .parse()?;
    raftkv_tests::wait::until(Duration::from_secs(10), "node 3 to apply the put", || async {
        (cluster.revision(3).await.ok()? >= revision).then_some(())
    })
    .await?;
    let stale = raftkv(&cluster.client_addr(3), &["get", "greeting", "--consistency", "stale"]);
    assert_eq!(stale.code, 0, "{}", stale.stderr);

    let missing = raftkv(&ep, &["get", "no-such-key"]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(missing.stdout.is_empty());

    for k in ["user/1", "user/2", "other"] {
        assert_eq!(raftkv(&ep, &["put", k, "x"]).code, 0);
    }
    let range = raftkv(&ep, &["range", "--prefix", "user/"]);
    assert_eq!(range.stdout, "user/1\tx\nuser/2\tx\n");
    let count = raftkv(&ep, &["range", "", "--count-only"]);
    assert_eq!(count.stdout, "4\n");

    let del = raftkv(&ep, &["del", "other"]);
    assert_eq!((del.code, del.stdout.as_str()), (0, "1\n"));

    let empty_key = raftkv(&ep, &["put", "", "v"]);
    assert_eq!(empty_key.code, 2);
    assert!(empty_key.stderr.contains("key is empty"), "{}", empty_key.stderr);

    let usage = raftkv(&ep, &["put", "only-a-key"]);
    assert_eq!(usage.code, 2);

    // Conditional writes: exit 0 when the compare held, 1 when it did not.
    let created = raftkv(&ep, &["put", "--if-absent", "lock", "me"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let again = raftkv(&ep, &["put", "--if-absent", "lock", "you"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let swapped = raftkv(&ep, &["cas", "lock", "me", "you"]);
    assert_eq!(swapped.code, 0, "{}", swapped.stderr);
    let stale_cas = raftkv(&ep, &["cas", "lock", "me", "them"]);
    assert_eq!(stale_cas.code, 1);
    assert!(
        stale_cas.stderr.contains("the current value is \"you\""),
        "{}",
        stale_cas.stderr
    );

    let txn = raftkv(
        &ep,
        &[
            "txn",
            "--if",
            "value(lock) = you",
            "--if",
            "version(lock) > 1",
            "--then",
            "put owner \"the you\"",
            "--then",
            "get owner",
            "--else",
            "get lock",
        ],
    );
    assert_eq!(txn.code, 0, "{}", txn.stderr);
    assert!(txn.stdout.starts_with("succeeded (revision "), "{}", txn.stdout);
    assert!(txn.stdout.contains("get owner: the you"), "{}", txn.stdout);
    let failed = raftkv(
        &ep,
        &[
            "txn",
            "--if",
            "missing(lock)",
            "--then",
            "del lock",
            "--else",
            "get lock",
            "-o",
            "json",
        ],
    );
    assert_eq!(failed.code, 1);
    let v: serde_json::Value = serde_json::from_str(&failed.stdout)?;
    assert_eq!(v["succeeded"], false);
    assert_eq!(v["responses"][0]["get"]["kv"]["value"], "you");
    let bad = raftkv(&ep, &["txn", "--if", "size(lock) > 1"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("unknown target"), "{}", bad.stderr);

    for k in ["tmp/1", "tmp/2", "tmp/3"] {
        assert_eq!(raftkv(&ep, &["put", k, "x"]).code, 0);
    }
    let del_prefix = raftkv(&ep, &["del", "tmp/", "--prefix"]);
    assert_eq!(del_prefix.stdout, "3\n", "{}", del_prefix.stderr);

    let status = raftkv(&ep, &["cluster", "status", "-o", "json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let v: serde_json::Value = serde_json::from_str(&status.stdout)?;
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "leader").count(), 1);
    assert!(nodes.iter().all(|n| n["addr"].is_string() && n["id"].is_u64()));

    let watch = raftkv(&ep, &["cluster", "watch", "--once", "-o", "json"]);
    assert_eq!(watch.code, 0, "{}", watch.stderr);
    let v: serde_json::Value = serde_json::from_str(&watch.stdout)?;
    let leader = v["leader"].as_u64().expect("a leader");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3));
    assert!(v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == leader && n["role"] == "leader"));

    let table = raftkv(&ep, &["cluster", "status"]);
    assert!(table.stdout.contains("voters up 3/3 (quorum 2)"), "{}", table.stdout);

    // Leadership on demand: to a named voter, then to whichever follower is most up to date.
    let to = if leader == 3 { 2 } else { 3 };
    let moved = raftkv(&ep, &["cluster", "transfer-leader", &to.to_string()]);
    assert_eq!(moved.code, 0, "{}", moved.stderr);
    assert_eq!(moved.stdout, format!("leadership handed to node {to}\n"));
    let now = raftkv(&ep, &["cluster", "leader"]);
    assert!(now.stdout.starts_with(&format!("{to} ")), "{}", now.stdout);
    let again = raftkv(&ep, &["cluster", "transfer-leader", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&again.stdout)?;
    assert!(v["leader_id"].as_u64().is_some_and(|id| id != to), "{}", again.stdout);
    let nobody = raftkv(&ep, &["cluster", "transfer-leader", "9"]);
    assert_eq!(nobody.code, 2, "a bad target is a usage error: {}", nobody.stderr);
    assert!(nobody.stderr.contains("not a voter"), "{}", nobody.stderr);
    Ok(())
}

#[test]
fn an_unreachable_cluster_exits_3() {
    // Port 1: nothing listens there, and no other test's node can take it (a "free" port from
    // the ephemeral range could be bound by a parallel test in the meantime).
    let nowhere = "127.0.0.1:1".to_string();
    let out = raftkv(&nowhere, &["--timeout", "500ms", "put", "k", "v"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("unavailable"), "{}", out.stderr);
    let out = raftkv(&nowhere, &["--timeout", "500ms", "cluster", "status"]);
    assert_eq!(out.code, 3);
    assert!(out.stdout.contains("unreachable"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_throughput_and_latency_as_json() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");
    for (workload, extra) in [
        ("put", vec![]),
        ("get", vec!["--consistency", "stale"]),
        ("mixed", vec!["--target", "leader"]),
    ] {
        let mut args = vec![
            "bench",
            workload,
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--clients",
            "8",
            "--keys",
            "50",
            "-o",
            "json",
        ];
        args.extend(extra);
        let out = raftkv(&ep, &args);
        assert_eq!(out.code, 0, "{workload}: {}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
        assert_eq!(v["workload"], workload);
        assert!(v["ops"].as_u64().unwrap_or(0) > 0, "{workload}: {v}");
        assert!(v["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
        assert!(v["latency_ms"]["p50"].as_f64().unwrap() <= v["latency_ms"]["p99"].as_f64().unwrap());
        assert_eq!(v["errors"], serde_json::json!({}), "{workload}: {v}");
    }
    Ok(())
}

/// - Against nodes started with `--auth-file`, the CLI without a token exits 5 and says how to
///   pass one; `RAFTKV_TOKEN` (or `--token`) makes it work; a read-only token cannot write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tokens_refuses_the_cli_without_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "app readwrite app-token-0123456789\nviewer read view-token-0123456789\n",
    )?;
    let tokens = tokens.display().to_string();
    let mut cluster = ProcessCluster::prepare(3, &["--auth-file", &tokens], workspace_binary("raftkvd"))?;
    cluster.token = Some("view-token-0123456789".into());
    for id in 1..=3 {
        cluster.start_node(id)?;
    }
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");

    let anonymous = raftkv(&ep, &["put", "k", "v"]);
    assert_eq!(anonymous.code, 5, "{}", anonymous.stderr);
    assert!(anonymous.stderr.contains("RAFTKV_TOKEN"), "{}", anonymous.stderr);

    let put = raftkv_with_env(&ep, &["put", "k", "v"], &[("RAFTKV_TOKEN", "app-token-0123456789")]);
    assert_eq!(put.code, 0, "{}", put.stderr);
    let get = raftkv(&ep, &["--token", "view-token-0123456789", "get", "k"]);
    assert_eq!((get.code, get.stdout.as_str()), (0, "v\n"), "{}", get.stderr);
    let denied = raftkv(&ep, &["--token", "view-token-0123456789", "put", "k", "w"]);
    assert_eq!(denied.code, 5, "{}", denied.stderr);
    assert!(
        denied.stderr.contains("viewer has role read; Put needs role readwrite"),
        "{}",
        denied.stderr
    );
    Ok(())
}

/// - `raftkv watch` prints changes as lines (`PUT key value (revision N, was OLD)`, `DELETE ...`)
///   or JSON objects with `-o json`; `--rev 1` replays what was written before it started and
///   `--count N` makes it exit after N changes (0).
/// - A watch of nothing (empty key without --prefix) is a usage error (2) saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_changes_in_order() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");
    for args in [
        &["put", "cfg/a", "1"][..],
        &["put", "other", "x"],
        &["put", "cfg/a", "2"],
        &["del", "cfg/a"],
    ] {
        assert_eq!(raftkv(&ep, args).code, 0, "{args:?}");
    }

    let text = raftkv(
        &ep,
        &["watch", "cfg/", "--prefix", "--rev", "1", "--prev-kv", "--count", "3"],
    );
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert_eq!(
        text.stdout,
        "PUT cfg/a 1 (revision 1)\nPUT cfg/a 2 (revision 3, was 1)\nDELETE cfg/a (revision 4, was 2)\n"
    );

    let json = raftkv(&ep, &["watch", "cfg/a", "--rev", "1", "--count", "2", "-o", "json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let lines: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (&lines[0]["type"], &lines[0]["value"], &lines[0]["mod_revision"]),
        (&"put".into(), &"1".into(), &1.into())
    );
    assert_eq!(lines[1]["version"], 2);

    let nothing = raftkv(&ep, &["watch", ""]);
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
    assert!(nothing.stderr.contains("key is empty"), "{}", nothing.stderr);
    Ok(())
}
