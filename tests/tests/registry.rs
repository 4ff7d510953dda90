//! The service registry end to end: instances registered on leases by their own clients, a
//! discovery that spreads picks by weight, drops an instance whose heartbeat died within its
//! TTL, falls back to a backup only when no primary is left, follows a weight change within
//! one watch event, and skips an instance whose breaker is open; and `raftkv service` as real
//! processes (a SIGKILLed registrar leaves within its TTL; exit codes).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use raftkv_client::registry::{self, Discovery, InstanceSpec};
use raftkv_client::{BreakerConfig, BreakerState, ClientError};
use raftkv_tests::in_process::InProcessCluster;
use raftkv_tests::process::ProcessCluster;
use raftkv_tests::{wait, workspace_binary};
use tokio::io::{AsyncBufReadExt, BufReader};

const T: Duration = Duration::from_secs(15);
/// The harness's election timeout is at most 300 ms, so the minimum TTL is 5 × 300 = 1.5 s.
const TTL: Duration = Duration::from_millis(1_500);
/// How long an instance whose heartbeat died may take to leave a discovery's view: its TTL,
/// the leader's revoke through the log, the watch event; with room for a slow machine.
const LEAVE_WITHIN: Duration = Duration::from_secs(12);

fn tally(discovery: &Discovery, picks: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..picks {
        if let Some(p) = discovery.pick() {
            *counts.entry(p.id).or_insert(0) += 1;
        }
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn ids(discovery: &Discovery) -> Vec<String> {
    discovery.instances().into_iter().map(|i| i.id).collect()
}

async fn wait_for_ids(discovery: &Discovery, want: &[&str], within: Duration) -> anyhow::Result<()> {
    let what = format!("the discovery to see exactly {want:?}");
    wait::until(within, &what, || async { (ids(discovery) == want).then_some(()) }).await
}

fn primary(address: &str, weight: u32) -> InstanceSpec {
    InstanceSpec::new(address).with_weight(weight)
}

/// a (3) and b (1) primaries, c a backup, each through its own client:
/// - 400 picks are 300/100/0;
/// - a's registration dropped (dead heartbeat): a leaves within its TTL, b gets every pick;
/// - b dropped too: c serves; a and b back: 300/100/0 again;
/// - set_weight(a, 9): once the view has the change, 1000 picks are 900/100;
/// - failures reported for a open its breaker: a is skipped while it is open;
/// - deregister removes at once; set_weight of a missing instance is NotFound; bad names are
///   refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_follow_weights_heartbeats_backups_and_breakers() -> anyhow::Result<()> {
    raftkv_tests::init_tracing();
    let cluster = InProcessCluster::start(3).await?;
    cluster.wait_for_leader(T).await?;
    let (client_a, client_b, client_c) = (cluster.client(), cluster.client(), cluster.client());
    let client = cluster.client();

    let a = registry::register(&client_a, "api", "a", primary("10.0.0.1:80", 3), TTL).await?;
    let b = registry::register(&client_b, "api", "b", primary("10.0.0.2:80", 1), TTL).await?;
    let c = registry::register(&client_c, "api", "c", InstanceSpec::new("10.0.0.3:80").as_backup(), TTL).await?;
    assert_ne!(a.lease(), b.lease());

    // A long open time: the breaker part below must not race its half-open trial.
    let breakers = BreakerConfig {
        open_for: Duration::from_secs(120),
        ..Default::default()
    };
    let discovery = registry::discover_with(&client, "api", breakers).await?;
    assert_eq!(ids(&discovery), ["a", "b", "c"], "discover returns caught up");
    let listed = registry::instances(&client, "api").await?;
    assert_eq!(listed, discovery.instances());
    assert_eq!(
        (listed[0].weight, listed[0].lease, listed[2].backup),
        (3, a.lease(), true)
    );
    assert_eq!(tally(&discovery, 400), counts(&[("a", 300), ("b", 100)]));

    // A dead heartbeat: the keep-alives stop, the lease runs out, the key goes.
    drop(a);
    wait_for_ids(&discovery, &["b", "c"], LEAVE_WITHIN).await?;
    assert_eq!(tally(&discovery, 100), counts(&[("b", 100)]));
    drop(b);
    wait_for_ids(&discovery, &["c"], LEAVE_WITHIN).await?;
    assert_eq!(tally(&discovery, 10), counts(&[("c", 10)]), "the backup serves");
    assert!(discovery.pick().is_some_and(|p| p.backup && p.address == "10.0.0.3:80"));

    // Restarted: the same ids register again and take their shares back.
    let a = registry::register(&client_a, "api", "a", primary("10.0.0.1:80", 3), TTL).await?;
    let b = registry::register(&client_b, "api", "b", primary("10.0.0.2:80", 1), TTL).await?;
    wait_for_ids(&discovery, &["a", "b", "c"], T).await?;
    assert_eq!(tally(&discovery, 400), counts(&[("a", 300), ("b", 100)]));

    // A canary shift at run time: the share moves with the one watch event of the change.
    let mut changes = discovery.changed();
    changes.borrow_and_update();
    let revision = registry::set_weight(&client, "api", "a", 9).await?;
    tokio::time::timeout(T, discovery.wait_for_revision(revision)).await??;
    assert!(changes.has_changed()?, "changed() ticked");
    assert_eq!(tally(&discovery, 1000), counts(&[("a", 900), ("b", 100)]));
    let listed = registry::instances(&client, "api").await?;
    assert_eq!(
        (listed[0].weight, listed[0].lease),
        (9, a.lease()),
        "still on its lease"
    );
    // The key kept its lease: the heartbeat still holds it.
    let on_lease = client.lease_time_to_live(a.lease(), true).await?;
    assert_eq!(on_lease.keys, vec![b"services/api/a".to_vec()]);

    // A failing instance: its breaker opens and it is skipped while open.
    for _ in 0..5 {
        discovery.report("a", false);
    }
    assert!(matches!(discovery.breaker_state("a"), Some(BreakerState::Open { .. })));
    assert_eq!(tally(&discovery, 100), counts(&[("b", 100)]));
    discovery.report("b", true);
    assert_eq!(discovery.breaker_state("b"), Some(BreakerState::Closed));

    // Deregistering revokes: gone from a linearizable read at once.
    b.deregister().await?;
    let listed: Vec<String> = registry::instances(&client, "api")
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, ["a", "c"]);
    assert!(matches!(
        registry::set_weight(&client, "api", "b", 2).await,
        Err(ClientError::NotFound(_))
    ));
    for (service, id) in [("", "a"), ("api", "x/y"), ("a/b", "a")] {
        let refused = registry::set_weight(&client, service, id, 1).await;
        assert!(matches!(refused, Err(ClientError::InvalidArgument(_))), "{refused:?}");
    }
    let empty_address = registry::register(&client, "api", "d", InstanceSpec::new(""), TTL).await;
    assert!(matches!(empty_address, Err(ClientError::InvalidArgument(_))));
    assert!(
        client.leases().await?.len() == 2,
        "a refused registration grants no lease"
    );

    drop(discovery);
    a.deregister().await?;
    c.deregister().await?;
    assert!(registry::instances(&client, "api").await?.is_empty());
    cluster.shutdown().await;
    Ok(())
}

/// A discovery whose watch resumes from a revision no node holds any more (its only node was
/// down while the service changed and the watch history, 5 revisions here, moved on) reads
/// the service again and carries on following it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_reads_the_service_again() -> anyhow::Result<()> {
    raftkv_tests::init_tracing();
    let mut cluster = InProcessCluster::start_with(3, |c| c.watch_history = 5).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    let a = registry::register(&client, "api", "a", primary("10.0.0.1:80", 1), TTL).await?;
    let b = registry::register(&client, "api", "b", primary("10.0.0.2:80", 1), TTL).await?;

    // The discovery knows one node only: a follower, stopped below.
    let watched = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let mut config = raftkv_client::ClientConfig::from_list(&cluster.client_addr(watched));
    config.timeout = Duration::from_secs(2);
    let discovery = registry::discover(&raftkv_client::Client::new(config)?, "api").await?;
    assert_eq!(ids(&discovery), ["a", "b"]);

    cluster.stop(watched).await;
    b.deregister().await?;
    let c = registry::register(&client, "api", "c", primary("10.0.0.3:80", 1), TTL).await?;
    let mut last = 0;
    for i in 0..20 {
        last = client.put(format!("other/{i}"), "x").await?.revision;
    }
    cluster.restart(watched).await?;
    cluster.wait_revision(last, T).await?;
    wait_for_ids(&discovery, &["a", "c"], Duration::from_secs(30)).await?;
    assert!(discovery.revision() >= last, "current to the re-read's revision");

    // And it follows changes again from there.
    a.deregister().await?;
    wait_for_ids(&discovery, &["c"], T).await?;
    c.deregister().await?;
    cluster.shutdown().await;
    Ok(())
}

/// A `raftkv` child process, killed if the test ends before it does.
struct Child {
    child: tokio::process::Child,
    stderr: Option<tokio::process::ChildStderr>,
}

impl Child {
    /// Starts `raftkv --endpoints EP ARGS...` and waits for its first line of output.
    async fn start(endpoints: &str, args: &[&str]) -> anyhow::Result<(Self, String)> {
        let mut child = tokio::process::Command::new(workspace_binary("raftkv"))
            .env_remove("RAFTKV_TOKEN")
            .arg("--endpoints")
            .arg(endpoints)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let stderr = child.stderr.take();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(T, lines.next_line()).await;
        let mut this = Self { child, stderr };
        match first {
            Ok(Ok(Some(line))) => Ok((this, line)),
            other => {
                let _ = this.child.kill().await;
                anyhow::bail!(
                    "{args:?} printed no line ({other:?}); stderr: {}",
                    this.stderr_text().await
                )
            }
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a process we spawned and have not reaped.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Waits (bounded) for the exit code; kills the process if it does not exit in time.
    async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }

    async fn stderr_text(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut text)).await;
        }
        text
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn raftkv(endpoints: &str, args: &[&str]) -> Out {
    let out = std::process::Command::new(workspace_binary("raftkv"))
        .env_remove("RAFTKV_TOKEN")
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

fn listed_ids(endpoints: &str) -> Vec<String> {
    let out = raftkv(endpoints, &["service", "list", "api", "-o", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    parsed
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["id"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// `raftkv service` with real processes: register (held by a child), list, pick --tally,
/// set-weight (0 drains), SIGKILL the registrar (it leaves within its TTL), SIGTERM
/// deregisters (exit 0), a lost registration exits 3; bad input exits 2 and a missing
/// instance 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_registrars_list_pick_set_weight_and_leave() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");

    let register = |id: &'static str, address: &'static str, weight: &'static str| {
        let ep = ep.clone();
        async move {
            Child::start(
                &ep,
                &[
                    "service", "register", "api", id, address, "--weight", weight, "--ttl", "2s",
                ],
            )
            .await
        }
    };
    let (mut web1, line) = register("web-1", "127.0.0.1:9001", "3").await?;
    assert!(
        line.starts_with("registered api/web-1 at 127.0.0.1:9001 (weight 3, primary), lease "),
        "{line}"
    );
    let (mut web2, _) = register("web-2", "127.0.0.1:9002", "1").await?;

    let list = raftkv(&ep, &["service", "list", "api"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert_eq!(
        list.stdout,
        "ID     ADDRESS         WEIGHT  BACKUP\n\
         web-1  127.0.0.1:9001  3       no\n\
         web-2  127.0.0.1:9002  1       no\n"
    );
    let picks = raftkv(&ep, &["service", "pick", "api", "--count", "8", "--tally"]);
    assert_eq!(
        (picks.code, picks.stdout.as_str()),
        (0, "127.0.0.1:9001\t6\n127.0.0.1:9002\t2\n")
    );
    let one = raftkv(&ep, &["service", "pick", "api"]);
    assert_eq!(
        (one.code, one.stdout.as_str()),
        (0, "127.0.0.1:9001\n"),
        "{}",
        one.stderr
    );

    // Drain web-2.
    let drained = raftkv(&ep, &["service", "set-weight", "api", "web-2", "0"]);
    assert_eq!(drained.code, 0, "{}", drained.stderr);
    assert!(drained.stdout.starts_with("OK (revision "), "{}", drained.stdout);
    let picks = raftkv(&ep, &["service", "pick", "api", "--count", "4", "--tally"]);
    assert_eq!(picks.stdout, "127.0.0.1:9001\t4\n127.0.0.1:9002\t0\n");

    // A crashed registrar: its instance leaves within the TTL (and an election, if any).
    web1.signal(libc::SIGKILL);
    assert_eq!(web1.exit_code(T).await, None, "killed by a signal");
    wait::until(Duration::from_secs(15), "web-1 to leave the list", || async {
        (listed_ids(&ep) == ["web-2"]).then_some(())
    })
    .await?;
    // Only a drained instance left: nothing can be picked.
    let none = raftkv(&ep, &["service", "pick", "api"]);
    assert_eq!(none.code, 1, "{}", none.stderr);

    // SIGTERM deregisters at once and exits 0.
    web2.signal(libc::SIGTERM);
    assert_eq!(web2.exit_code(T).await, Some(0), "{}", web2.stderr_text().await);
    assert!(listed_ids(&ep).is_empty());

    let missing = raftkv(&ep, &["service", "set-weight", "api", "web-9", "2"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("not registered"), "{}", missing.stderr);
    let empty_name = raftkv(&ep, &["service", "register", "", "x", "127.0.0.1:1"]);
    assert_eq!(empty_name.code, 2);
    assert!(
        empty_name.stderr.contains("service name is empty"),
        "{}",
        empty_name.stderr
    );
    let slash = raftkv(&ep, &["service", "set-weight", "api", "a/b", "1"]);
    assert_eq!(slash.code, 2);
    assert!(slash.stderr.contains("contains '/'"), "{}", slash.stderr);
    let no_address = raftkv(&ep, &["service", "register", "api", "x", ""]);
    assert_eq!(no_address.code, 2);
    assert!(no_address.stderr.contains("address is empty"), "{}", no_address.stderr);

    // The whole cluster gone: the registration is lost within its TTL; exit code 3.
    let (mut web3, _) = register("web-3", "127.0.0.1:9003", "1").await?;
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    assert_eq!(web3.exit_code(Duration::from_secs(20)).await, Some(3));
    let stderr = web3.stderr_text().await;
    assert!(stderr.contains("registration of api/web-3 lost"), "{stderr}");
    Ok(())
}
