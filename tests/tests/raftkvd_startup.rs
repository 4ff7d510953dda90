//! `raftkvd` refuses, with a message a person can act on, to start in situations that would
//! put data at risk or cannot work.

use std::path::Path;
use std::process::Command;

use raftkv_tests::{free_port, workspace_binary};

/// Runs raftkvd with `args`; returns its exit code and stderr.
fn raftkvd(args: &[&str]) -> (i32, String) {
    let out = Command::new(workspace_binary("raftkvd"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run raftkvd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs node `id` on `dir` with fresh loopback addresses (or `client` when given) and `extra`
/// flags, expecting it to refuse to start; returns its stderr.
fn refused(id: &str, dir: &Path, client: Option<&str>, extra: &[&str]) -> String {
    let client = client.map_or_else(addr, str::to_string);
    let peer = addr();
    let mut args = vec![
        "--id",
        id,
        "--data-dir",
        dir.to_str().unwrap(),
        "--client-addr",
        &client,
        "--peer-addr",
        &peer,
    ];
    args.extend_from_slice(extra);
    let (code, err) = raftkvd(&args);
    assert_eq!(code, 1, "raftkvd {args:?} should refuse to start: {err}");
    err
}

fn addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn bad_flags_are_a_usage_error() {
    let (code, err) = raftkvd(&["--id", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--data-dir"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, err) = raftkvd(&["--id", "1", "--data-dir", d, "--initial-cluster", "1=nonsense"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ID=CLIENT_ADDR@PEER_ADDR"), "{err}");
}

#[test]
fn inconsistent_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = refused(
        "1",
        dir.path(),
        None,
        &["--election-min-ms", "300", "--election-max-ms", "200"],
    );
    assert!(
        err.contains("--election-min-ms (300) must be below --election-max-ms (200)"),
        "{err}"
    );

    let other = format!("2={}@{}", addr(), addr());
    let err = refused("1", dir.path(), None, &["--initial-cluster", &other]);
    assert!(err.contains("does not list this node's id 1"), "{err}");
}

#[test]
fn a_data_dir_of_another_node_or_with_a_lost_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.json"), r#"{"node_id":1,"incarnation":7}"#).unwrap();
    std::fs::create_dir(dir.path().join("db")).unwrap();
    let err = refused("2", dir.path(), None, &[]);
    assert!(err.contains("belongs to node 1, not node 2"), "{err}");

    std::fs::remove_dir(dir.path().join("db")).unwrap();
    let err = refused("1", dir.path(), None, &[]);
    assert!(err.contains("lost its log and vote"), "{err}");
}

#[test]
fn a_taken_port_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let err = refused("1", dir.path(), Some(&c), &[]);
    assert!(err.contains(&format!("cannot listen on {c}")), "{err}");
}
