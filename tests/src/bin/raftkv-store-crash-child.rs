//! raftkv-store-crash-child DIR: the victim of the storage crash loop
//! (tests/tests/store_crash_loop.rs). It opens the store in DIR and, forever, appends the next
//! log entry, waits until the store reports it durable, applies it to the state machine, and
//! prints `acked N` — until it is SIGKILLed at a random moment. Every entry it printed must be
//! found after a restart.

use std::io::Write;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{EntryPayload, RaftLogReader};
use raftkv_store::command::{Command, Request};
use raftkv_store::types::{Entry, LeaderId, LogId, Vote};
use raftkv_store::StoreConfig;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: raftkv-store-crash-child DIR");
        std::process::exit(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(std::path::Path::new(&dir))) {
        eprintln!("crash child failed: {e}");
        std::process::exit(1);
    }
}

async fn run(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut store = raftkv_store::open(dir, &StoreConfig::default())?;
    let state = store.log_store.get_log_state().await?;
    let mut next = state.last_log_id.map_or(1, |l| l.index + 1);
    let term = store.log_store.read_vote().await?.map_or(1, |v| v.leader_id().term + 1);
    store.log_store.save_vote(&Vote::new_committed(term, 1)).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "vote {term}")?;
    loop {
        let entry = Entry {
            log_id: LogId::new(LeaderId { term, node_id: 1 }, next),
            payload: EntryPayload::Normal(Request::new(
                Command::Put {
                    key: b"k".to_vec(),
                    value: next.to_string().into_bytes(),
                    prev_kv: false,
                },
                0,
            )),
        };
        store.log_store.blocking_append([entry.clone()]).await?;
        store.state_machine.apply_entries([entry]).await?;
        writeln!(out, "acked {next}")?;
        out.flush()?;
        next += 1;
    }
}
