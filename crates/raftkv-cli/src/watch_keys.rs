//! `raftkv watch`: prints the changes to a key, a prefix or a range as they happen, through
//! the client library's resuming [`Watcher`](raftkv_client::Watcher).

use std::io::Write;

use raftkv_client::{Client, ClientError, WatchOptions};

use crate::output;

/// Prints every change `options` selects (text, or JSON lines with `json`) until `count`
/// changes were printed, or forever.
pub async fn print_changes(
    client: &Client,
    options: WatchOptions,
    count: Option<u64>,
    json: bool,
) -> Result<(), ClientError> {
    let mut watcher = client.watch(options).await?;
    let mut printed = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        let batch = match watcher.next().await {
            Ok(batch) => batch,
            // No node reachable for now: the watch goes on once one is.
            Err(ClientError::Unavailable(why)) => {
                eprintln!("raftkv: watch: no node reachable ({why}); still trying");
                continue;
            }
            Err(e) => return Err(e),
        };
        for event in &batch.events {
            if count.is_some_and(|c| printed >= c) {
                break;
            }
            let line = if json {
                output::event_json(event, batch.node_id)
            } else {
                output::event_text(event)
            };
            // A closed pipe (e.g. `| head`) ends the watch quietly.
            if stdout.write_all(line.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                return Ok(());
            }
            printed += 1;
        }
    }
}
