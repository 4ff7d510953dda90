//! `scripts/cluster.sh`, the README's first command, driven end to end with the debug binaries
//! (RAFTKV_BIN_DIR) on ports of its own and a temp cluster dir.

use std::process::Command;
use std::time::Duration;

use raftkv_tests::script::{text, Script};
use raftkv_tests::workspace_binary;

#[test]
fn cluster_script_up_kill_start_pause_down_clean() {
    let s = Script::new();

    // A taken port is refused with a message naming it.
    {
        let _squatter = std::net::TcpListener::bind(("127.0.0.1", s.client_base() + 2)).expect("bind");
        let up = s.run(&["up"]);
        assert!(!up.status.success(), "{}", text(&up));
        assert!(text(&up).contains("is already in use"), "{}", text(&up));
        s.run(&["down"]);
    }

    let up = s.run(&["up"]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(text(&up).contains("voters up 3/3 (quorum 2)"), "{}", text(&up));
    let again = s.run(&["up"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));

    assert!(s.raftkv(&["put", "k", "v"]).status.success());
    let leader = s.leader();

    let kill = s.run(&["kill", &leader]);
    assert!(kill.status.success(), "{}", text(&kill));
    let put = s.raftkv(&["put", "after-kill", "v"]);
    assert!(put.status.success(), "write after the leader's death: {}", text(&put));

    assert!(s.run(&["start", &leader]).status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = s.raftkv(&["cluster", "status"]);
        if text(&status).contains("voters up 3/3") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {leader} did not rejoin: {}",
            text(&status)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Pause a follower (leadership may have moved while the old leader was away).
    let current = s.leader();
    let follower = if current == "1" { "2" } else { "1" };
    assert!(s.run(&["pause", follower]).status.success());
    assert!(s.raftkv(&["put", "while-paused", "v"]).status.success());
    assert!(s.run(&["resume", follower]).status.success());

    // `raftkv bench failover` drives this same script to kill and restart leaders.
    let bench = Command::new(workspace_binary("raftkv"))
        .current_dir(Script::root())
        .args(["--endpoints", &s.endpoints(), "-o", "json", "bench", "failover"])
        .args(["--kills", "2", "--clients", "4", "--warmup", "300ms", "--settle", "1s"])
        .envs(s.env())
        .output()
        .expect("run raftkv bench failover");
    assert!(bench.status.success(), "{}", text(&bench));
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("json report");
    assert_eq!(report["kills"], 2, "{report}");
    assert_eq!(report["windows_ms"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["acknowledged_lost"], 0, "{report}");
    assert!(report["writes_acknowledged"].as_u64().unwrap_or(0) > 0);
    assert_eq!(report["errors_other"], serde_json::json!({}), "{report}");

    // Grow by one node, then shrink by another.
    let add = s.run(&["add"]);
    assert!(add.status.success(), "{}", text(&add));
    assert!(text(&add).contains("voters up 4/4"), "{}", text(&add));
    let victim = if s.leader() == "2" { "3" } else { "2" };
    let remove = s.run(&["remove", victim]);
    assert!(remove.status.success(), "{}", text(&remove));
    let status = s.raftkv(&["cluster", "status"]);
    assert!(text(&status).contains("voters up 3/3"), "{}", text(&status));
    assert!(
        !s.run(&["start", victim]).status.success(),
        "a removed node is not a node any more"
    );

    let logs = s.run(&["logs", "1"]);
    assert!(text(&logs).contains("node started"), "{}", text(&logs));
    assert!(!s.run(&["kill", "9"]).status.success(), "unknown node refused");

    let down = s.run(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(text(&down).contains("node 4 stopped"), "{}", text(&down));
    let status = s.raftkv(&["--timeout", "300ms", "cluster", "status"]);
    assert_eq!(status.status.code(), Some(3), "nothing answers after down");

    assert!(s.run(&["clean"]).status.success());
    assert!(!s.dir().join("node1").exists());
}

/// - `up --tls` makes certificates and starts a TLS cluster; the CLI without the CA is refused
///   with a hint, and with the certificates it prints works; a restarted node keeps TLS.
#[test]
fn cluster_script_up_tls_serves_only_clients_with_its_certificates() {
    let s = Script::new();
    let up = s.run(&["up", "--tls"]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(text(&up).contains("TLS is on"), "{}", text(&up));
    let tls = s.dir().join("tls");
    let env = [
        ("RAFTKV_CACERT", tls.join("ca.pem").display().to_string()),
        ("RAFTKV_CERT", tls.join("client.pem").display().to_string()),
        ("RAFTKV_KEY", tls.join("client-key.pem").display().to_string()),
    ];

    let plain = s.raftkv(&["--timeout", "2s", "put", "k", "v"]);
    assert_eq!(plain.status.code(), Some(3), "{}", text(&plain));
    assert!(text(&plain).contains("--cacert"), "{}", text(&plain));

    assert!(s.raftkv_with(&env, &["put", "k", "v"]).status.success());
    let get = s.raftkv_with(&env, &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "v\n", "{}", text(&get));

    assert!(s.run(&["restart", "1"]).status.success());
    let put = s.raftkv_with(&env, &["put", "after-restart", "v"]);
    assert!(put.status.success(), "{}", text(&put));
    let status = s.raftkv_with(&env, &["cluster", "status"]);
    assert!(status.status.success(), "{}", text(&status));
}
