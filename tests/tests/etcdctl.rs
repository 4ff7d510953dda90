//! etcd's own command-line tool, `etcdctl` (v3 API), against raftkv's etcd port: put, get
//! --prefix, del, txn (interactive input), watch, lease grant / keep-alive / revoke, lock,
//! elect, member list / add / remove, endpoint status, snapshot save (restored with `raftkvd
//! restore`), move-leader — and a stream of `etcdctl put`s across a SIGKILL of
//! the leader that loses no acknowledged write. Skipped, with a message, on a machine without
//! etcdctl (Debian: `apt-get install etcd-client`).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use raftkv_tests::process::ProcessCluster;
use raftkv_tests::{free_port, wait};

const T: Duration = Duration::from_secs(20);

/// `etcdctl`, when this machine has it.
fn etcdctl_path() -> Option<String> {
    let path = std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".to_string());
    let found = Command::new(&path)
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: no etcdctl on this machine (apt-get install etcd-client, or set ETCDCTL_BIN)");
    }
    found.then_some(path)
}

/// A three-node cluster whose nodes serve etcd's API; returns it and the etcd endpoints.
fn cluster_with_etcd_ports() -> anyhow::Result<(ProcessCluster, Vec<String>)> {
    let mut cluster = ProcessCluster::prepare(3, &[], raftkv_tests::workspace_binary("raftkvd"))?;
    let mut endpoints = Vec::new();
    for id in [1, 2, 3] {
        let addr = format!("127.0.0.1:{}", free_port());
        cluster.set_node_flags(id, vec!["--etcd-addr".into(), addr.clone()]);
        endpoints.push(addr);
    }
    for id in [1, 2, 3] {
        cluster.start_node(id)?;
    }
    Ok((cluster, endpoints))
}

struct Etcdctl {
    bin: String,
    endpoints: String,
}

impl Etcdctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg("--command-timeout=10s")
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(args).output()?;
        ok(&out, args)
    }

    fn run_with_input(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        ok(&child.wait_with_output()?, args)
    }
}

fn ok(out: &Output, args: &[&str]) -> anyhow::Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_raftkv() -> anyhow::Result<()> {
    let Some(bin) = etcdctl_path() else { return Ok(()) };
    let (cluster, endpoints) = cluster_with_etcd_ports()?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let etcdctl = Etcdctl {
        bin: bin.clone(),
        endpoints: endpoints.join(","),
    };

    assert_eq!(etcdctl.run(&["put", "greeting", "hello"])?, "OK\n");
    etcdctl.run(&["put", "greetings/2", "hi"])?;
    assert_eq!(
        etcdctl.run(&["get", "--prefix", "greet"])?,
        "greeting\nhello\ngreetings/2\nhi\n"
    );
    assert_eq!(etcdctl.run(&["del", "greetings/2"])?, "1\n");

    let txn = etcdctl.run_with_input(
        &["txn"],
        "value(\"greeting\") = \"hello\"\n\nput greeting bonjour\n\nget greeting\n\n",
    )?;
    assert_eq!(txn, "SUCCESS\n\nOK\n");
    assert_eq!(etcdctl.run(&["get", "greeting", "--print-value-only"])?, "bonjour\n");

    // A watch sees the next change.
    let mut watch = etcdctl
        .command(&["watch", "greeting"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let watched = {
        let stdout = watch.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .take(3)
                .collect::<Result<Vec<_>, _>>()
        })
    };
    wait::until(T, "the watch to see a put", || async {
        etcdctl.run(&["put", "greeting", "hola"]).ok()?;
        watched.is_finished().then_some(())
    })
    .await?;
    let _ = watch.kill();
    let _ = watch.wait();
    let lines = watched.join().map_err(|_| anyhow::anyhow!("watch reader panicked"))??;
    assert_eq!(lines, ["PUT", "greeting", "hola"]);

    // Leases.
    let grant = etcdctl.run(&["lease", "grant", "30"])?;
    let id = grant
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no lease id in {grant:?}"))?
        .to_string();
    etcdctl.run(&["put", "--lease", &id, "session", "1"])?;
    assert!(etcdctl
        .run(&["lease", "keep-alive", "--once", &id])?
        .contains("keepalived with TTL(30)"));
    assert!(etcdctl
        .run(&["lease", "timetolive", "--keys", &id])?
        .contains("attached keys([session])"));
    assert!(etcdctl.run(&["lease", "revoke", &id])?.contains("revoked"));
    assert_eq!(etcdctl.run(&["get", "session"])?, "");

    // Lock and election, etcd's recipes.
    assert_eq!(etcdctl.run(&["lock", "jobs", "echo", "locked"])?, "locked\n");
    let mut candidate = etcdctl
        .command(&["elect", "primary", "alpha"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // `elect --listen` prints the leader's key and value, then follows changes until killed.
    let listen = etcdctl
        .command(&["elect", "--listen", "primary"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let listened = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut listen = listen;
        let lines = listen.stdout.take().map(|s| {
            std::io::BufReader::new(s)
                .lines()
                .take(2)
                .collect::<Result<Vec<_>, _>>()
        });
        let _ = listen.kill();
        let _ = listen.wait();
        lines
    });
    wait::until(T, "the election listener to print the leader", || async {
        listened.is_finished().then_some(())
    })
    .await?;
    let lines = listened
        .join()
        .map_err(|_| anyhow::anyhow!("listener panicked"))?
        .ok_or_else(|| anyhow::anyhow!("no stdout"))??;
    assert!(lines[0].starts_with("primary/") && lines[1] == "alpha", "{lines:?}");
    let _ = candidate.kill();
    let _ = candidate.wait();

    // Cluster views.
    let members = etcdctl.run(&["member", "list"])?;
    for (i, e) in endpoints.iter().enumerate() {
        assert!(
            members.contains(&format!("node{}", i + 1)) && members.contains(e),
            "{members}"
        );
    }
    let status = etcdctl.run(&["endpoint", "status"])?;
    assert_eq!(status.lines().count(), 3, "{status}");
    assert!(status.contains("3.5.0"), "{status}");

    // member add registers an unstarted member (raftkv picks its id); member remove drops it.
    let added = etcdctl.run(&[
        "member",
        "add",
        "node4",
        &format!("--peer-urls=http://127.0.0.1:{}", free_port()),
        "--learner",
    ])?;
    assert!(added.contains("added to cluster"), "{added}");
    let new_id = added
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no member id in {added}"))?
        .to_string();
    assert_eq!(new_id, "4", "{added}");
    let listed = etcdctl.run(&["member", "list"])?;
    assert!(listed.contains("4, unstarted"), "{listed}");
    let removed = etcdctl.run(&["member", "remove", &new_id])?;
    assert!(removed.contains("removed from cluster"), "{removed}");

    // snapshot save (one endpoint, as etcdctl requires) writes a raftkv backup file, which
    // `raftkvd restore` turns into a new cluster's data directory.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("etcd.snapshot");
    let file_arg = file.to_string_lossy().into_owned();
    let one = Etcdctl {
        bin: etcdctl.bin.clone(),
        endpoints: endpoints[0].clone(),
    };
    let saved = one.run(&["snapshot", "save", &file_arg])?;
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let restored_dir = dir.path().join("restored");
    let restored = Command::new(raftkv_tests::workspace_binary("raftkvd"))
        .args(["restore", "--from", &file_arg, "--id", "1", "--data-dir"])
        .arg(&restored_dir)
        .args(["--client-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--peer-addr", &format!("127.0.0.1:{}", free_port())])
        .output()?;
    assert!(
        restored.status.success(),
        "raftkvd restore of etcdctl's snapshot: {}",
        String::from_utf8_lossy(&restored.stderr)
    );

    // move-leader hands leadership to another member.
    let leader_now = || -> anyhow::Result<u64> {
        let json: serde_json::Value = serde_json::from_str(&etcdctl.run(&["endpoint", "status", "-w", "json"])?)?;
        json[0]["Status"]["leader"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no leader in {json}"))
    };
    let before = leader_now()?;
    let target = if before == 1 { 2 } else { 1 };
    let moved = etcdctl.run(&["move-leader", &format!("{target:x}")])?;
    assert!(moved.contains("Leadership transferred"), "{moved}");
    wait::until(T, "the new leader", || async {
        (leader_now().ok()? == target).then_some(())
    })
    .await?;
    Ok(())
}

/// `etcdctl put` with all three endpoints, over and over, while the leader is SIGKILLed: every
/// put etcdctl acknowledged is there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_writes_survive_a_leader_kill() -> anyhow::Result<()> {
    let Some(bin) = etcdctl_path() else { return Ok(()) };
    let (mut cluster, endpoints) = cluster_with_etcd_ports()?;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let etcdctl = Etcdctl {
        bin,
        endpoints: endpoints.join(","),
    };
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        if i == 10 {
            cluster.kill(leader);
        }
        let key = format!("seq/{i:03}");
        if etcdctl.run(&["put", &key, "x"]).is_ok() {
            acknowledged.push(key);
        }
    }
    eprintln!("{} of 40 puts acknowledged", acknowledged.len());
    assert!(
        acknowledged.len() >= 35,
        "most puts went through: {}",
        acknowledged.len()
    );
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    cluster.wait_for_leader(&survivors, T).await?;
    let stored = etcdctl.run(&["get", "--prefix", "seq/", "--keys-only"])?;
    for key in &acknowledged {
        assert!(stored.contains(key.as_str()), "acknowledged {key} was lost");
    }
    Ok(())
}
