//! `raftkv service`: the service registry from the command line (see the client's
//! `raftkv_client::registry` and docs/client.md, "Service registry").
//!
//! `register` holds an instance registered for as long as the process runs (its lease is the
//! heartbeat), so a script or a supervisor can register a process by running it beside the
//! process; `list` reads the instances; `pick` picks through a discovery as a client would;
//! `set-weight` changes an instance's share (0: drained).

use std::collections::BTreeMap;

use clap::Subcommand;
use raftkv_client::registry::{self, Instance, InstanceSpec};
use raftkv_client::{Client, LeaseState};

use crate::args::DurationArg;
use crate::{fail, print, EXIT_NOT_FOUND, EXIT_UNAVAILABLE};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Register instance ID of service NAME at ADDRESS, then keep it registered (a lease kept
    /// alive) until SIGINT/SIGTERM, which deregisters it (exit code 0). If the registration is
    /// lost (the cluster could not confirm the lease for a whole TTL), exit code 3.
    ///
    /// Example: raftkv service register api web-1 10.0.0.7:8080 --weight 3
    Register {
        name: String,
        id: String,
        address: String,
        /// Share of the picks relative to the other primaries; 0: drained (never picked).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Picked only when no primary can be.
        #[arg(long)]
        backup: bool,
        /// Lease time-to-live: how long the instance stays listed after this process dies. At
        /// least the cluster's minimum (5 election timeouts, and 1 s).
        #[arg(long, default_value = "5s")]
        ttl: DurationArg,
    },
    /// List the instances of service NAME: id, address, weight, backup (`-o json`: one array).
    List { name: String },
    /// Pick instances of service NAME as a client would (smooth weighted round robin over the
    /// primaries, backups only when no primary can serve); print one address per pick.
    Pick {
        name: String,
        /// How many picks.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Print `ADDRESS<TAB>PICKS` per instance instead of every pick.
        #[arg(long)]
        tally: bool,
    },
    /// Set the weight of instance ID of service NAME (0: drained; e.g. 9 and 1 for a canary).
    SetWeight { name: String, id: String, weight: u32 },
}

/// Runs a `raftkv service` command and returns its exit code.
pub async fn run(client: &Client, command: ServiceCommand, json: bool) -> u8 {
    match command {
        ServiceCommand::Register {
            name,
            id,
            address,
            weight,
            backup,
            ttl,
        } => {
            let spec = InstanceSpec {
                address,
                weight,
                backup,
            };
            register_and_hold(client, &name, &id, spec, ttl).await
        }
        ServiceCommand::List { name } => match registry::instances(client, &name).await {
            Ok(instances) if json => print(&format!("{}\n", instances_json(&instances))),
            Ok(instances) => print(&instances_table(&instances)),
            Err(e) => fail(e),
        },
        ServiceCommand::Pick { name, count, tally } => pick(client, &name, count, tally, json).await,
        ServiceCommand::SetWeight { name, id, weight } => {
            match registry::set_weight(client, &name, &id, weight).await {
                Ok(revision) if json => print(&format!("{{\"revision\":{revision}}}\n")),
                Ok(revision) => print(&format!("OK (revision {revision})\n")),
                Err(e) => fail(e),
            }
        }
    }
}

async fn register_and_hold(client: &Client, name: &str, id: &str, spec: InstanceSpec, ttl: DurationArg) -> u8 {
    let role = if spec.backup { "backup" } else { "primary" };
    let (address, weight) = (spec.address.clone(), spec.weight);
    let mut interrupt = crate::interrupt::Interrupt::listen();
    let registration = match registry::register(client, name, id, spec, ttl.0).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    print(&format!(
        "registered {name}/{id} at {address} (weight {weight}, {role}), lease {:x}, ttl {:?}; \
         holding until SIGINT/SIGTERM\n",
        registration.lease(),
        registration.ttl()
    ));
    let mut heartbeat = registration.subscribe();
    let heartbeat_changes = async {
        // The heartbeat's receiver wakes on each change of state, not each keep-alive. A lost
        // lease is reported by the `lost()` branch below; this one then never completes.
        loop {
            if heartbeat.changed().await.is_err() {
                return std::future::pending::<()>().await;
            }
            let state = *heartbeat.borrow_and_update();
            match state {
                LeaseState::Lost => return std::future::pending::<()>().await,
                LeaseState::Unconfirmed => eprintln!("raftkv: heartbeat of {name}/{id} not confirmed, retrying"),
                LeaseState::Alive => eprintln!("raftkv: heartbeat of {name}/{id} confirmed again"),
            }
        }
    };
    tokio::select! {
        _ = registration.lost() => {
            eprintln!(
                "raftkv: registration of {name}/{id} lost: lease {:x} is gone or could not be confirmed within its \
                 ttl; the instance is no longer registered",
                registration.lease()
            );
            EXIT_UNAVAILABLE
        }
        _ = heartbeat_changes => EXIT_UNAVAILABLE,
        () = interrupt.wait() => deregister(registration, name, id).await,
    }
}

async fn deregister(registration: registry::Registration, name: &str, id: &str) -> u8 {
    match registration.deregister().await {
        Ok(()) => {
            eprintln!("raftkv: deregistered {name}/{id}");
            0
        }
        Err(e) => fail(e),
    }
}

async fn pick(client: &Client, name: &str, count: u64, tally: bool, json: bool) -> u8 {
    let discovery = match registry::discover(client, name).await {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let mut picks = Vec::new();
    for _ in 0..count {
        match discovery.pick() {
            Some(p) => picks.push(p.address),
            None => break,
        }
    }
    if picks.is_empty() && count > 0 {
        eprintln!("raftkv: no instance of service {name:?} can be picked (none registered, or all drained)");
        return EXIT_NOT_FOUND;
    }
    if !tally {
        return if json {
            print(&format!("{}\n", serde_json::Value::from(picks)))
        } else {
            print(&picks.iter().map(|a| format!("{a}\n")).collect::<String>())
        };
    }
    // Every instance appears, with 0 when it got no pick (a backup while primaries serve).
    let mut counts: BTreeMap<String, u64> = discovery.instances().into_iter().map(|i| (i.address, 0)).collect();
    for address in picks {
        *counts.entry(address).or_insert(0) += 1;
    }
    if json {
        let object: serde_json::Map<String, serde_json::Value> = counts
            .into_iter()
            .map(|(a, n)| (a, serde_json::Value::from(n)))
            .collect();
        print(&format!("{}\n", serde_json::Value::Object(object)))
    } else {
        print(&counts.iter().map(|(a, n)| format!("{a}\t{n}\n")).collect::<String>())
    }
}

fn instances_json(instances: &[Instance]) -> String {
    serde_json::to_string(instances).unwrap_or_else(|_| "[]".into())
}

fn instances_table(instances: &[Instance]) -> String {
    let rows: Vec<[String; 4]> = instances
        .iter()
        .map(|i| {
            [
                i.id.clone(),
                i.address.clone(),
                i.weight.to_string(),
                if i.backup { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let header = ["ID", "ADDRESS", "WEIGHT", "BACKUP"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_aligned() {
        let instances = vec![
            Instance {
                id: "a".into(),
                address: "127.0.0.1:9001".into(),
                weight: 3,
                backup: false,
                lease: 1,
                mod_revision: 5,
            },
            Instance {
                id: "backup-1".into(),
                address: "h:1".into(),
                weight: 1,
                backup: true,
                lease: 2,
                mod_revision: 6,
            },
        ];
        assert_eq!(
            instances_table(&instances),
            "ID        ADDRESS         WEIGHT  BACKUP\n\
             a         127.0.0.1:9001  3       no\n\
             backup-1  h:1             1       yes\n"
        );
        let json: serde_json::Value = serde_json::from_str(&instances_json(&instances)).unwrap();
        assert_eq!(json[1]["backup"], true);
        assert_eq!(json[0]["weight"], 3);
    }
}
