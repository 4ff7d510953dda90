//! `raftkv lease`, `put --lease`, `raftkv lock` and `raftkv elect` against real `raftkvd`
//! processes, with the holders themselves as processes that get SIGKILLed: a dead holder's
//! keys, lock and leadership go within its TTL (plus the time to notice), a terminated one
//! releases at once.

use std::process::Stdio;
use std::time::Duration;

use raftkv_client::pb::RangeRequest;
use raftkv_tests::process::ProcessCluster;
use raftkv_tests::{wait, workspace_binary};
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(20);
/// The harness's minimum TTL (5 × its 300 ms election maximum).
const TTL: Duration = Duration::from_millis(1_500);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn command(endpoints: &str, args: &[&str]) -> Command {
    let mut c = Command::new(workspace_binary("raftkv"));
    c.env_remove("RAFTKV_TOKEN")
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .kill_on_drop(true);
    c
}

async fn raftkv(endpoints: &str, args: &[&str]) -> anyhow::Result<Out> {
    let out = tokio::time::timeout(T, command(endpoints, args).output()).await??;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Starts a long-running `raftkv` command (killed when dropped).
fn spawn(endpoints: &str, args: &[&str]) -> anyhow::Result<Child> {
    Ok(command(endpoints, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Reads lines from `output` until one contains `text`; returns every line read.
async fn lines_until(output: impl tokio::io::AsyncRead + Unpin, text: &str) -> anyhow::Result<Vec<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(output).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await? {
            let done = line.contains(text);
            seen.push(line);
            if done {
                return Ok(seen);
            }
        }
        anyhow::bail!("the process ended before writing {text:?}; it wrote {seen:?}")
    })
    .await?
}

/// Waits until `child` writes a line on stderr containing `text`.
async fn stderr_line(child: &mut Child, text: &str) -> anyhow::Result<()> {
    let stderr = child
        .stderr
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("stderr is not piped"))?;
    lines_until(stderr, text).await.map(|_| ())
}

fn signal(child: &Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to a child process this test started.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

async fn keys_under(client: &raftkv_client::Client, prefix: &str) -> Option<usize> {
    let req = RangeRequest {
        prefix: prefix.as_bytes().to_vec(),
        ..Default::default()
    };
    client.range(req, None).await.ok().map(|r| r.kvs.len())
}

fn lease_id_in(grant_output: &str) -> anyhow::Result<String> {
    // "lease 694d77aa9e38260f granted with TTL 1.5s"
    grant_output
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no lease id in {grant_output:?}"))
}

/// Grant, put --lease, ttl --keys, list, keep-alive --once, revoke (keys deleted), and the
/// refusals: revoking twice (exit 1), a TTL below the minimum and a malformed id (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands_from_grant_to_revoke() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");

    let grant = raftkv(&ep, &["lease", "grant", "30s"]).await?;
    assert_eq!(grant.code, 0, "{}", grant.stderr);
    assert!(grant.stdout.ends_with("granted with TTL 30s\n"), "{}", grant.stdout);
    let id = lease_id_in(&grant.stdout)?;

    let put = raftkv(&ep, &["put", "session/a", "1", "--lease", &id]).await?;
    assert_eq!(put.code, 0, "{}", put.stderr);
    let ttl = raftkv(&ep, &["lease", "ttl", &id, "--keys"]).await?;
    assert_eq!(ttl.code, 0, "{}", ttl.stderr);
    assert!(
        ttl.stdout.contains("granted TTL 30s") && ttl.stdout.ends_with("session/a\n"),
        "{}",
        ttl.stdout
    );
    let list = raftkv(&ep, &["lease", "list", "-o", "json"]).await?;
    let leases: serde_json::Value = serde_json::from_str(&list.stdout)?;
    assert_eq!(leases[0]["id"], id.as_str());
    let once = raftkv(&ep, &["lease", "keep-alive", &id, "--once"]).await?;
    assert_eq!(once.code, 0, "{}", once.stderr);

    let revoke = raftkv(&ep, &["lease", "revoke", &id]).await?;
    assert_eq!(revoke.stdout, format!("lease {id} revoked (1 keys deleted)\n"));
    assert_eq!(
        raftkv(&ep, &["get", "session/a"]).await?.code,
        1,
        "the key went with its lease"
    );
    let again = raftkv(&ep, &["lease", "revoke", &id]).await?;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("does not exist"), "{}", again.stderr);
    let short = raftkv(&ep, &["lease", "grant", "100ms"]).await?;
    assert_eq!(short.code, 2);
    assert!(short.stderr.contains("1500 ms"), "names the minimum: {}", short.stderr);
    let bad = raftkv(&ep, &["put", "k", "v", "--lease", "not-hex"]).await?;
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("is not a lease id"), "{}", bad.stderr);
    Ok(())
}

/// A `raftkv lease keep-alive` process keeps its key past several TTLs; SIGKILLed, its key
/// goes within the TTL plus the time the leader needs to notice and commit the revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_keep_alive_loses_its_keys_within_the_ttl() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");
    let client = cluster.client();

    let id = lease_id_in(&raftkv(&ep, &["lease", "grant", "1500ms"]).await?.stdout)?;
    assert_eq!(raftkv(&ep, &["put", "alive/a", "1", "--lease", &id]).await?.code, 0);
    let holder = spawn(&ep, &["lease", "keep-alive", &id])?;

    // Three TTLs later, the key is still there: the keep-alives work.
    let until = tokio::time::Instant::now() + TTL * 3;
    while tokio::time::Instant::now() < until {
        assert_eq!(
            keys_under(&client, "alive/").await,
            Some(1),
            "a kept lease lost its key"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    signal(&holder, libc::SIGKILL);
    let killed = tokio::time::Instant::now();
    wait::until(T, "the dead holder's key to go", || async {
        (keys_under(&client, "alive/").await == Some(0)).then_some(())
    })
    .await?;
    let took = killed.elapsed();
    assert!(
        took <= TTL + Duration::from_secs(3),
        "the key outlived its dead holder by {took:?} (TTL {TTL:?})"
    );
    Ok(())
}

/// `raftkv lock NAME -- CMD` runs CMD with its token and exits with CMD's code; a holder that
/// is SIGKILLed blocks the next one for at most about its TTL; one that gets SIGTERM releases
/// the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_runs_a_command_and_a_dead_holder_lets_go() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");
    let client = cluster.client();

    let run = raftkv(
        &ep,
        &["lock", "job", "--", "sh", "-c", "echo token=$RAFTKV_LOCK_TOKEN; exit 7"],
    )
    .await?;
    assert_eq!(run.code, 7, "the command's exit code: {}", run.stderr);
    let token: u64 = run.stdout.trim().trim_start_matches("token=").parse()?;
    assert!(token > 0);
    assert_eq!(
        keys_under(&client, "locks/job/").await,
        Some(0),
        "released after the command"
    );

    let holder = spawn(&ep, &["lock", "job", "--ttl", "1500ms"])?;
    wait::until(T, "the holder to take the lock", || async {
        (keys_under(&client, "locks/job/").await == Some(1)).then_some(())
    })
    .await?;
    signal(&holder, libc::SIGKILL);
    let next = raftkv(&ep, &["lock", "job", "--", "sh", "-c", "echo $RAFTKV_LOCK_TOKEN"]).await?;
    assert_eq!(next.code, 0, "{}", next.stderr);
    let next_token: u64 = next.stdout.trim().parse()?;
    assert!(next_token > token, "tokens grow: {token} then {next_token}");

    let mut polite = spawn(&ep, &["lock", "job", "--ttl", "30s"])?;
    stderr_line(&mut polite, "raftkv: locked job").await?;
    signal(&polite, libc::SIGTERM);
    let status = tokio::time::timeout(T, polite.wait()).await??;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        keys_under(&client, "locks/job/").await,
        Some(0),
        "a terminated holder released its lock at once, not after its 30 s TTL"
    );
    Ok(())
}

/// Two `raftkv elect` candidates and an observer: the first leads; SIGKILLed, the second leads
/// within about the TTL; the observer printed both values in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_hands_over_when_the_leader_dies() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    cluster.wait_for_leader(&[1, 2, 3], T).await?;
    let ep = [1, 2, 3].map(|id| cluster.client_addr(id)).join(",");
    let client = cluster.client();

    let mut observer = spawn(&ep, &["elect", "primary"])?;
    let observed = observer
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout is not piped"))?;
    let observed = tokio::spawn(lines_until(observed, "beta"));
    let alpha = spawn(&ep, &["elect", "primary", "alpha", "--ttl", "1500ms"])?;
    let leader_is = |value: &'static str| {
        let client = client.clone();
        async move {
            let leader = client.election_leader("primary").await.ok()??;
            (leader.value == value.as_bytes()).then_some(())
        }
    };
    wait::until(T, "alpha to lead", || leader_is("alpha")).await?;
    let _beta = spawn(&ep, &["elect", "primary", "beta", "--ttl", "1500ms"])?;
    wait::until(T, "beta to be in line", || async {
        (keys_under(&client, "elections/primary/").await == Some(2)).then_some(())
    })
    .await?;
    signal(&alpha, libc::SIGKILL);
    wait::until(T, "beta to lead", || leader_is("beta")).await?;

    let lines = tokio::time::timeout(T, observed).await???;
    let values: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| *l != "(no leader)")
        .collect();
    assert_eq!(values, vec!["alpha", "beta"], "observer output: {lines:?}");
    signal(&observer, libc::SIGTERM);
    let status = tokio::time::timeout(T, observer.wait()).await??;
    assert_eq!(status.code(), Some(0), "an interrupted observer exits 0");
    Ok(())
}
