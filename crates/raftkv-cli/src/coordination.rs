//! `raftkv lock` and `raftkv elect`: the client library's locks and elections
//! (`raftkv_client::coordination`) for shell scripts.
//!
//! `raftkv lock NAME -- CMD` runs CMD while holding the lock, with the fencing token in
//! `RAFTKV_LOCK_TOKEN` and the lock key in `RAFTKV_LOCK_KEY`; if the lock is lost while CMD
//! runs, CMD is killed (it can no longer know it is alone) and the exit code is 4.

use std::time::Duration;

use raftkv_client::{Client, ClientError};
use tokio::process::Command;

use crate::interrupt::Interrupt;
use crate::{fail, EXIT_SERVER_ERROR, EXIT_USAGE};

/// Exit code after an interrupt (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

/// How long a command that gives up a lock waits for its release to reach the cluster.
const SETTLE: Duration = Duration::from_secs(2);

/// `raftkv lock NAME [--ttl T] [-- CMD...]`.
pub async fn lock(client: &Client, name: &str, ttl: Duration, command: &[String], json: bool) -> u8 {
    let mut interrupt = Interrupt::listen();
    let guard = tokio::select! {
        guard = client.lock(name, ttl) => guard,
        () = interrupt.wait() => {
            // Leaves the queue now rather than when the lease expires.
            client.settle(SETTLE).await;
            return EXIT_INTERRUPTED;
        }
    };
    let guard = match guard {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    let key = String::from_utf8_lossy(guard.key()).into_owned();
    if json {
        println!(
            "{}",
            serde_json::json!({"name": name, "key": key, "token": guard.token(), "lease": format!("{:x}", guard.lease())})
        );
    } else {
        eprintln!("raftkv: locked {name} (token {}, key {key})", guard.token());
    }
    let code = match command.split_first() {
        None => {
            tokio::select! {
                () = interrupt.wait() => 0,
                () = guard.lost() => {
                    eprintln!("raftkv: lost the lock {name} (its lease expired or could not be kept alive)");
                    EXIT_SERVER_ERROR
                }
            }
        }
        Some((program, args)) => {
            let child = Command::new(program)
                .args(args)
                .env("RAFTKV_LOCK_TOKEN", guard.token().to_string())
                .env("RAFTKV_LOCK_KEY", &key)
                .kill_on_drop(true)
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("raftkv: cannot run {program:?}: {e}");
                    let _ = guard.unlock().await;
                    return EXIT_USAGE;
                }
            };
            tokio::select! {
                status = child.wait() => match status {
                    // Killed by a signal: 128 + the signal, as shells report it.
                    Ok(s) => s.code().map_or_else(|| 128 + signal_of(&s), |c| u8::try_from(c).unwrap_or(1)),
                    Err(e) => {
                        eprintln!("raftkv: waiting for {program:?} failed: {e}");
                        EXIT_SERVER_ERROR
                    }
                },
                () = guard.lost() => {
                    eprintln!("raftkv: lost the lock {name}; stopping {program:?}, which can no longer know it is alone");
                    let _ = child.kill().await;
                    EXIT_SERVER_ERROR
                }
                () = interrupt.wait() => {
                    let _ = child.kill().await;
                    EXIT_INTERRUPTED
                }
            }
        }
    };
    // A lease already gone counts as released (unlock says so).
    if let Err(e) = guard.unlock().await {
        eprintln!("raftkv: could not release the lock {name} ({e}); it goes when its lease expires");
    }
    code
}

fn signal_of(status: &std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().and_then(|s| u8::try_from(s).ok()).unwrap_or(0)
}

/// `raftkv elect NAME VALUE`: campaign, say when elected, lead until interrupted (then
/// resign); `raftkv elect NAME` without a value: print the leader's value at every change.
pub async fn elect(client: &Client, name: &str, value: Option<String>, ttl: Duration, json: bool) -> u8 {
    let mut interrupt = Interrupt::listen();
    let Some(value) = value else {
        return observe(client, name, json, interrupt).await;
    };
    let leadership = tokio::select! {
        l = client.campaign(name, value.clone(), ttl) => l,
        () = interrupt.wait() => {
            client.settle(SETTLE).await;
            return EXIT_INTERRUPTED;
        }
    };
    let leadership = match leadership {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let key = String::from_utf8_lossy(leadership.key()).into_owned();
    if json {
        println!(
            "{}",
            serde_json::json!({"name": name, "key": key, "value": value, "revision": leadership.revision()})
        );
    } else {
        println!(
            "elected {name}: {value} (key {key}, revision {})",
            leadership.revision()
        );
    }
    let code = tokio::select! {
        () = interrupt.wait() => 0,
        () = leadership.lost() => {
            eprintln!("raftkv: lost the leadership of {name} (its lease expired or could not be kept alive)");
            EXIT_SERVER_ERROR
        }
    };
    if let Err(e) = leadership.resign().await {
        eprintln!("raftkv: could not resign {name} ({e}); the next candidate leads when the lease expires");
    }
    code
}

async fn observe(client: &Client, name: &str, json: bool, mut interrupt: Interrupt) -> u8 {
    let mut observer = match client.observe_election(name).await {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    loop {
        let leader = tokio::select! {
            l = observer.next() => l,
            () = interrupt.wait() => return 0,
        };
        match leader {
            Ok(leader) if json => {
                let v = leader.map(|l| {
                    serde_json::json!({
                        "value": String::from_utf8_lossy(&l.value),
                        "key": String::from_utf8_lossy(&l.key),
                        "revision": l.revision,
                    })
                });
                println!("{}", v.unwrap_or(serde_json::Value::Null));
            }
            Ok(Some(leader)) => println!("{}", String::from_utf8_lossy(&leader.value)),
            Ok(None) => println!("(no leader)"),
            Err(ClientError::Unavailable(why)) => eprintln!("raftkv: elect: no node reachable ({why}); still trying"),
            Err(e) => return fail(e),
        }
    }
}
