//! Leader elections: [`Client::campaign`] waits to lead election `NAME` and returns a
//! [`Leadership`]; [`Client::election_leader`] and [`Client::observe_election`] tell anyone who
//! leads it now and as it changes.
//!
//! Candidates queue under `elections/NAME/` exactly like lock waiters; the leader is the
//! candidate with the lowest create revision, and its key's value is what it proclaims (an
//! address, say). A leader that dies stops leading within its lease's TTL; the next candidate
//! in line then leads.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_proto::v1::event::EventType;
use raftkv_proto::v1::{Compare, KeyValue, TxnRequest};
use tokio::sync::watch;

use super::lock::{join_and_wait, Held};
use super::queue;
use super::ELECTION_PREFIX;
use crate::client::{Client, LeaseState, WatchOptions, Watcher};
use crate::error::ClientError;
use crate::prefix::read_prefix;
use crate::txn;

/// Who leads an election: the key and value of the candidate at the head of its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The leader key's create revision (a leadership's identity: a new leader has a higher one).
    pub revision: u64,
}

/// The candidate with the lowest create revision among `members`.
fn head(members: &BTreeMap<Vec<u8>, (u64, Vec<u8>)>) -> Option<Leader> {
    members
        .iter()
        .min_by_key(|(_, (revision, _))| *revision)
        .map(|(key, (revision, value))| Leader {
            key: key.clone(),
            value: value.clone(),
            revision: *revision,
        })
}

fn members_of(kvs: Vec<KeyValue>) -> BTreeMap<Vec<u8>, (u64, Vec<u8>)> {
    kvs.into_iter()
        .map(|kv| (kv.key, (kv.create_revision, kv.value)))
        .collect()
}

impl Client {
    /// Campaigns in election `name` with `value`, and returns once this candidate leads. Its
    /// lease (TTL `ttl`) is kept alive until [`Leadership::resign`] or the handle is dropped.
    pub async fn campaign(
        &self,
        name: &str,
        value: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<Leadership, ClientError> {
        let prefix = queue::queue_prefix(ELECTION_PREFIX, name)?;
        let held = join_and_wait(self, &prefix, value.into(), ttl).await?;
        Ok(Leadership {
            client: self.clone(),
            name: name.to_string(),
            held,
        })
    }

    /// Who leads election `name` now (linearizable); `None` when nobody campaigns.
    pub async fn election_leader(&self, name: &str) -> Result<Option<Leader>, ClientError> {
        let prefix = queue::queue_prefix(ELECTION_PREFIX, name)?;
        let (kvs, _) = read_prefix(self, &prefix).await?;
        Ok(head(&members_of(kvs)))
    }

    /// Follows election `name`: [`LeaderObserver::next`] returns each change of leader (or of
    /// the leader's value), starting with the current one.
    pub async fn observe_election(&self, name: &str) -> Result<LeaderObserver, ClientError> {
        let prefix = queue::queue_prefix(ELECTION_PREFIX, name)?;
        let (kvs, revision) = read_prefix(self, &prefix).await?;
        let watcher = self
            .watch(WatchOptions::prefix(prefix.clone()).from_revision(revision + 1))
            .await?;
        Ok(LeaderObserver {
            client: self.clone(),
            prefix,
            watcher,
            members: members_of(kvs),
            reported: None,
            started: false,
        })
    }
}

/// Leading an election ([`Client::campaign`]). Dropping it resigns (in the background).
pub struct Leadership {
    client: Client,
    name: String,
    held: Held,
}

impl Leadership {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leader key (`elections/NAME/<lease id>`).
    pub fn key(&self) -> &[u8] {
        &self.held.place.key
    }

    /// The leader key's create revision: higher for every later leadership.
    pub fn revision(&self) -> u64 {
        self.held.place.revision
    }

    pub fn lease(&self) -> u64 {
        self.held.lease
    }

    /// How the lease stands, as this leader can know it.
    pub fn state(&self) -> LeaseState {
        self.held.keep.state()
    }

    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.held.keep.subscribe()
    }

    /// Resolves when the leadership is lost (the lease is gone or unconfirmed for a TTL).
    pub async fn lost(&self) {
        self.held.keep.lost().await
    }

    /// A compare that holds only while this leadership lasts (for writes only the leader may
    /// make).
    pub fn guard(&self) -> Compare {
        self.held.guard()
    }

    /// Announces a new value (observers see it) if this candidate still leads; `NotFound`
    /// when it no longer does.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        let req = TxnRequest {
            compare: vec![self.held.guard()],
            success: vec![txn::put_leased(self.held.place.key.clone(), value, self.held.lease)],
            failure: Vec::new(),
        };
        if self.client.txn(req, None).await?.succeeded {
            Ok(())
        } else {
            Err(ClientError::NotFound(format!(
                "no longer the leader of election {}",
                self.name
            )))
        }
    }

    /// Steps down: revokes the lease, which deletes the leader key so the next candidate leads
    /// (a lease already gone is not an error).
    pub async fn resign(self) -> Result<(), ClientError> {
        self.held.release().await
    }
}

/// Follows who leads an election ([`Client::observe_election`]).
pub struct LeaderObserver {
    client: Client,
    prefix: Vec<u8>,
    watcher: Watcher,
    members: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    reported: Option<Leader>,
    started: bool,
}

impl LeaderObserver {
    /// The leader as this observer last saw it.
    pub fn leader(&self) -> Option<Leader> {
        head(&self.members)
    }

    /// Waits for the next change of leader and returns it (`None`: nobody leads now). The
    /// first call returns the current leader at once.
    pub async fn next(&mut self) -> Result<Option<Leader>, ClientError> {
        loop {
            let now = head(&self.members);
            if !self.started || now != self.reported {
                self.started = true;
                self.reported = now.clone();
                return Ok(now);
            }
            match self.watcher.next().await {
                Ok(batch) => {
                    for event in batch.events {
                        let Some(kv) = event.kv else { continue };
                        if event.r#type == EventType::Delete as i32 {
                            self.members.remove(&kv.key);
                        } else {
                            self.members.insert(kv.key, (kv.create_revision, kv.value));
                        }
                    }
                }
                Err(ClientError::Compacted { .. }) => {
                    // Missed changes are gone from history: read the queue afresh.
                    let (kvs, revision) = read_prefix(&self.client, &self.prefix).await?;
                    self.members = members_of(kvs);
                    self.watcher = self
                        .client
                        .watch(WatchOptions::prefix(self.prefix.clone()).from_revision(revision + 1))
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_candidate_leads() {
        let mut members = BTreeMap::new();
        assert_eq!(head(&members), None);
        members.insert(b"e/b".to_vec(), (4, b"second".to_vec()));
        members.insert(b"e/a".to_vec(), (9, b"third".to_vec()));
        members.insert(b"e/c".to_vec(), (2, b"first".to_vec()));
        assert_eq!(head(&members).map(|l| l.value), Some(b"first".to_vec()));
        members.remove(b"e/c".as_slice());
        assert_eq!(
            head(&members).map(|l| (l.value, l.revision)),
            Some((b"second".to_vec(), 4))
        );
    }
}
