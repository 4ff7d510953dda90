//! The queue under locks and elections: a contender's place is a key under the queue's prefix,
//! named after its lease and attached to it; its create revision is its place in line. Waiting
//! means watching the one key just ahead until it is deleted, then looking again.

use raftkv_proto::v1::event::EventType;
use raftkv_proto::v1::{txn_op_response, KeyValue, TxnRequest};

use crate::client::{Client, WatchOptions};
use crate::error::ClientError;
use crate::prefix::read_prefix;
use crate::txn;

/// Longest recipe name accepted (lock or election).
const MAX_NAME_LEN: usize = 256;

/// How long a waiter trusts its watch before looking at the queue again.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A contender's place in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    pub key: Vec<u8>,
    /// The key's create revision: the place in line, and the lock's fencing token.
    pub revision: u64,
}

/// The queue prefix of recipe `name` under `root` (`locks/`, `elections/`), refusing names that
/// would overlap another queue or are unusable as a key.
pub(crate) fn queue_prefix(root: &str, name: &str) -> Result<Vec<u8>, ClientError> {
    if name.is_empty() {
        return Err(ClientError::InvalidArgument(
            "the name is empty; give one, e.g. `jobs`".into(),
        ));
    }
    if name.contains('/') {
        return Err(ClientError::InvalidArgument(format!(
            "the name {name:?} contains '/', which would overlap other names' keys; use another separator"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ClientError::InvalidArgument(format!(
            "the name is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    Ok(format!("{root}{name}/").into_bytes())
}

/// Joins the queue under `prefix` with lease `lease`: writes the contender's key (holding
/// `value`) unless it is there already (a retried call), and returns its place.
pub(crate) async fn enqueue(client: &Client, prefix: &[u8], lease: u64, value: Vec<u8>) -> Result<Place, ClientError> {
    let key = [prefix, format!("{lease:016x}").as_bytes()].concat();
    let req = TxnRequest {
        compare: vec![txn::missing(key.clone())],
        success: vec![txn::put_leased(key.clone(), value, lease)],
        failure: vec![txn::get(key.clone())],
    };
    let reply = client.txn(req, None).await?;
    if reply.succeeded {
        return Ok(Place {
            key,
            revision: reply.revision,
        });
    }
    let existing = reply.responses.into_iter().find_map(|r| match r.response {
        Some(txn_op_response::Response::Get(g)) => g.kv,
        _ => None,
    });
    match existing {
        Some(kv) => Ok(Place {
            key,
            revision: kv.create_revision,
        }),
        None => Err(ClientError::Server {
            code: tonic::Code::Internal,
            message: "the queue key was neither created nor found".into(),
        }),
    }
}

/// The key just ahead of `place` in `kvs` (the highest create revision below its own).
fn just_ahead<'a>(kvs: &'a [KeyValue], place: &Place) -> Option<&'a KeyValue> {
    kvs.iter()
        .filter(|kv| kv.create_revision < place.revision)
        .max_by_key(|kv| kv.create_revision)
}

/// Waits until `place` is at the head of the queue under `prefix`. Fails with `NotFound` if
/// the contender's own key is gone (its lease expired or was revoked).
pub(crate) async fn wait_for_head(client: &Client, prefix: &[u8], place: &Place) -> Result<(), ClientError> {
    loop {
        let (kvs, revision) = read_prefix(client, prefix).await?;
        if !kvs
            .iter()
            .any(|kv| kv.key == place.key && kv.create_revision == place.revision)
        {
            return Err(ClientError::NotFound(format!(
                "the queue key {} is gone: its lease expired or was revoked",
                String::from_utf8_lossy(&place.key)
            )));
        }
        let Some(ahead) = just_ahead(&kvs, place) else {
            return Ok(());
        };
        wait_for_delete(client, &ahead.key, revision + 1).await?;
    }
}

/// Waits until `key` is deleted at or after revision `from`. Returns early (the caller looks
/// again) if the history from `from` is no longer held, or after [`RECHECK_EVERY`]: a watch
/// served by a node cut off from the leader hears of nothing yet still looks alive, and a
/// fresh linearizable look at the queue cannot be fooled that way.
async fn wait_for_delete(client: &Client, key: &[u8], from: u64) -> Result<(), ClientError> {
    let mut watcher = client.watch(WatchOptions::key(key).from_revision(from)).await?;
    let recheck = tokio::time::Instant::now() + RECHECK_EVERY;
    loop {
        let next = tokio::select! {
            next = watcher.next() => next,
            () = tokio::time::sleep_until(recheck) => return Ok(()),
        };
        match next {
            Ok(batch) => {
                if batch.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                    return Ok(());
                }
            }
            Err(ClientError::Compacted { .. }) => return Ok(()),
            // No node reachable for a while: keep trying (the caller's lease decides when
            // waiting is pointless).
            Err(ClientError::Unavailable(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create_revision: u64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision,
            ..Default::default()
        }
    }

    #[test]
    fn a_contender_waits_on_the_key_just_ahead_of_it() {
        let kvs = [kv("q/a", 5), kv("q/b", 9), kv("q/c", 7)];
        let place = |r| Place {
            key: Vec::new(),
            revision: r,
        };
        assert_eq!(just_ahead(&kvs, &place(5)), None, "the lowest revision is the head");
        assert_eq!(just_ahead(&kvs, &place(7)).map(|k| k.key.as_slice()), Some(&b"q/a"[..]));
        assert_eq!(just_ahead(&kvs, &place(9)).map(|k| k.key.as_slice()), Some(&b"q/c"[..]));
    }

    #[test]
    fn names_are_checked_and_prefixes_do_not_overlap() {
        assert_eq!(queue_prefix("locks/", "jobs").unwrap(), b"locks/jobs/");
        assert!(matches!(
            queue_prefix("locks/", ""),
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(matches!(
            queue_prefix("locks/", "a/b"),
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(queue_prefix("locks/", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
