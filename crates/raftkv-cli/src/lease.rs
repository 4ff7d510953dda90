//! `raftkv lease grant|keep-alive|revoke|ttl|list`, and the lease id syntax shared with
//! `raftkv put --lease`: ids are printed and read in hex, as etcd does.

use std::time::Duration;

use clap::Subcommand;
use raftkv_client::{Client, LeaseState};
use serde_json::json;

use crate::args::DurationArg;
use crate::{fail, print, EXIT_NOT_FOUND};

/// A lease id as written on the command line: hex, with or without `0x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseId(pub u64);

impl std::str::FromStr for LeaseId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim().trim_start_matches("0x");
        match u64::from_str_radix(digits, 16) {
            Ok(0) => Err("lease id 0 means no lease; give the id `raftkv lease grant` printed".into()),
            Ok(id) => Ok(Self(id)),
            Err(_) => Err(format!(
                "{s:?} is not a lease id (hex, as `raftkv lease grant` prints it)"
            )),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease with time-to-live TTL (e.g. 10s) and print its id.
    Grant {
        ttl: DurationArg,
        /// Use this id (hex) instead of one the cluster picks.
        #[arg(long)]
        id: Option<LeaseId>,
    },
    /// Keep lease ID alive until interrupted (exit 0) or until it is lost (exit 1).
    KeepAlive {
        id: LeaseId,
        /// Restart its TTL once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Revoke lease ID, deleting every key attached to it.
    Revoke { id: LeaseId },
    /// Print what is left of lease ID's TTL.
    Ttl {
        id: LeaseId,
        /// List the keys attached to it too.
        #[arg(long)]
        keys: bool,
    },
    /// List every lease.
    List,
}

fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// Runs one `raftkv lease` command.
pub async fn run(client: &Client, command: LeaseCommand, json: bool) -> u8 {
    match command {
        LeaseCommand::Grant { ttl, id } => match client.lease_grant_with_id(id.map_or(0, |i| i.0), ttl.0).await {
            Ok(r) if json => print(&format!(
                "{}\n",
                json!({"id": format!("{:x}", r.id), "ttl_ms": r.ttl_ms})
            )),
            Ok(r) => print(&format!("lease {:x} granted with TTL {}\n", r.id, seconds(r.ttl_ms))),
            Err(e) => fail(e),
        },
        LeaseCommand::KeepAlive { id, once: true } => match client.lease_keep_alive_once(id.0).await {
            Ok(r) if json => print(&format!(
                "{}\n",
                json!({"id": format!("{:x}", r.id), "ttl_ms": r.ttl_ms})
            )),
            Ok(r) => print(&format!("lease {:x} kept alive, TTL {}\n", r.id, seconds(r.ttl_ms))),
            Err(e) => fail(e),
        },
        LeaseCommand::KeepAlive { id, once: false } => keep_alive(client, id.0).await,
        LeaseCommand::Revoke { id } => match client.lease_revoke(id.0).await {
            Ok(r) if json => print(&format!(
                "{}\n",
                json!({"id": format!("{:x}", id.0), "deleted": r.deleted})
            )),
            Ok(r) => print(&format!("lease {:x} revoked ({} keys deleted)\n", id.0, r.deleted)),
            Err(e) => fail(e),
        },
        LeaseCommand::Ttl { id, keys } => match client.lease_time_to_live(id.0, keys).await {
            Ok(r) if json => {
                let keys: Vec<String> = r.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
                let v = json!({"id": format!("{:x}", r.id), "ttl_ms": r.ttl_ms, "granted_ttl_ms": r.granted_ttl_ms, "keys": keys});
                print(&format!("{v}\n"))
            }
            Ok(r) => {
                let mut text = format!(
                    "lease {:x}: granted TTL {}, remaining {}\n",
                    r.id,
                    seconds(r.granted_ttl_ms),
                    seconds(r.ttl_ms)
                );
                for key in &r.keys {
                    text.push_str(&format!("{}\n", String::from_utf8_lossy(key)));
                }
                print(&text)
            }
            Err(e) => fail(e),
        },
        LeaseCommand::List => match client.leases().await {
            Ok(leases) if json => {
                let v: Vec<_> = leases
                    .iter()
                    .map(|l| json!({"id": format!("{:x}", l.id), "granted_ttl_ms": l.granted_ttl_ms}))
                    .collect();
                print(&format!("{}\n", serde_json::Value::Array(v)))
            }
            Ok(leases) => print(
                &leases
                    .iter()
                    .map(|l| format!("{:x}\t{}\n", l.id, seconds(l.granted_ttl_ms)))
                    .collect::<String>(),
            ),
            Err(e) => fail(e),
        },
    }
}

/// Keeps lease `id` alive, printing each change of its state, until interrupted or lost.
async fn keep_alive(client: &Client, id: u64) -> u8 {
    let mut interrupt = crate::interrupt::Interrupt::listen();
    // The TTL the lease was granted with sets the keep-alive pace.
    let ttl_ms = match client.lease_keep_alive_once(id).await {
        Ok(r) => r.ttl_ms,
        Err(e) => return fail(e),
    };
    println!("lease {id:x} kept alive, TTL {}", seconds(ttl_ms));
    let keep = client.keep_lease_alive(id, Duration::from_millis(ttl_ms));
    let mut states = keep.subscribe();
    loop {
        tokio::select! {
            () = interrupt.wait() => {
                keep.stop().await;
                return 0;
            }
            changed = states.changed() => {
                if changed.is_err() {
                    return EXIT_NOT_FOUND;
                }
                // Each change of state, not each keep-alive.
                let state = *states.borrow_and_update();
                match state {
                    LeaseState::Alive => println!("lease {id:x} confirmed again"),
                    LeaseState::Unconfirmed => eprintln!("raftkv: lease {id:x}: a keep-alive failed; retrying"),
                    LeaseState::Lost => {
                        eprintln!("raftkv: lease {id:x} is lost (expired, revoked, or unconfirmed for a whole TTL)");
                        return EXIT_NOT_FOUND;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_hex() {
        assert_eq!("694d77aa9e38260f".parse::<LeaseId>(), Ok(LeaseId(0x694d77aa9e38260f)));
        assert_eq!("0x2a".parse::<LeaseId>(), Ok(LeaseId(42)));
        assert!("0".parse::<LeaseId>().is_err());
        assert!("lease-1".parse::<LeaseId>().is_err());
        assert_eq!(seconds(1500), "1.5s");
        assert_eq!(seconds(10_000), "10s");
    }
}
