//! The state machine's on-disk layout: the names of its sled trees, the keys of its records,
//! and how a user key's value is stored. Everything that decides what the bytes on disk mean
//! is here, so a change to the format shows up in this one file.
//!
//! See the parent module for why data and metadata share one tree, and how the generation in
//! `sm_control` picks the live one.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::KeyValue;
use crate::error::StoreError;

pub(super) const CONTROL_TREE: &str = "sm_control";
pub(super) const STATE_TREE_PREFIX: &str = "sm_state.";
pub(super) const KEY_GENERATION: &[u8] = b"generation";

pub(super) const DATA_PREFIX: u8 = b'd';
pub(super) const KEY_LAST_APPLIED: &[u8] = b"m/last_applied";
pub(super) const KEY_MEMBERSHIP: &[u8] = b"m/membership";
pub(crate) const KEY_CLUSTER_ID: &[u8] = b"m/cluster_id";
/// The log clock: the largest leader timestamp applied (see crate::sessions).
pub(super) const KEY_CLOCK: &[u8] = b"m/clock";
/// Log-clock time of the last expired-session sweep.
pub(super) const KEY_SESSION_GC: &[u8] = b"m/session_gc";
/// The store's revision: bumped by every change to the data (see `apply`). Missing in a state
/// written before revisions were counted per write; see [`stored_revision`].
pub(super) const KEY_REVISION: &[u8] = b"m/revision";
/// Ids of nodes removed from the membership: never to be reused.
pub(super) const KEY_REMOVED_IDS: &[u8] = b"m/removed_ids";

/// Lease records: `l/` + lease id (8 bytes, big-endian) -> codec [`LeaseRecord`].
pub(super) const LEASE_PREFIX: &[u8] = b"l/";
/// A lease's keys: `k/` + lease id (8 bytes, big-endian) + user key -> codec `()`, so revoking
/// a lease finds its keys with one prefix scan.
pub(super) const LEASE_KEYS_PREFIX: &[u8] = b"k/";
/// The lease a key is attached to: `a/` + user key -> codec lease id, so a put or delete of the
/// key detaches it from that lease.
pub(super) const KEY_LEASE_PREFIX: &[u8] = b"a/";

/// A lease as stored. Its deadline is not stored: it lives in the leader's memory (a new
/// leader restarts every lease's TTL), so nothing here depends on a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LeaseRecord {
    pub(super) ttl_ms: u64,
}

pub(super) fn lease_key(id: u64) -> Vec<u8> {
    [LEASE_PREFIX, &id.to_be_bytes()].concat()
}

pub(super) fn lease_keys_prefix(id: u64) -> Vec<u8> {
    [LEASE_KEYS_PREFIX, &id.to_be_bytes()].concat()
}

pub(super) fn lease_attachment_key(id: u64, user_key: &[u8]) -> Vec<u8> {
    [LEASE_KEYS_PREFIX, &id.to_be_bytes(), user_key].concat()
}

pub(super) fn key_lease_key(user_key: &[u8]) -> Vec<u8> {
    [KEY_LEASE_PREFIX, user_key].concat()
}

/// The lease id in a key that starts with `prefix` followed by the id.
pub(super) fn lease_id_after(prefix: &[u8], key: &[u8]) -> Result<u64, StoreError> {
    key.get(prefix.len()..prefix.len() + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            what: "lease record key".into(),
            detail: format!("{} bytes", key.len()),
        })
}

/// A user key's value and revision metadata as stored (the key itself is the tree key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredValue {
    #[serde(with = "serde_bytes")]
    pub(super) value: Vec<u8>,
    pub(super) create_revision: u64,
    pub(super) mod_revision: u64,
    pub(super) version: u64,
}

impl StoredValue {
    pub(super) fn into_key_value(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

pub(super) fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(user_key);
    k
}

pub(super) fn state_tree_name(generation: u64) -> String {
    format!("{STATE_TREE_PREFIX}{generation}")
}

pub(super) fn read_record<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(b) => Ok(Some(codec::decode(&b)?)),
    }
}

/// The store revision recorded in `tree`. A state from before revisions were counted per write
/// has none; its revisions were log indexes, all at most the last applied one, so counting on
/// from that index never reuses a revision.
pub(super) fn stored_revision(tree: &sled::Tree) -> Result<u64, StoreError> {
    if let Some(revision) = read_record::<u64>(tree, KEY_REVISION)? {
        return Ok(revision);
    }
    let applied: Option<crate::types::LogId> = read_record(tree, KEY_LAST_APPLIED)?.flatten();
    Ok(applied.map_or(0, |l| l.index))
}
