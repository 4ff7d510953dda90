//! Applying lease commands: granting and revoking leases, attaching keys to them, and detaching
//! a key from its lease when a plain put or a delete replaces it.
//!
//! A lease is three kinds of record in the state tree (see `layout`): the lease itself, one
//! record per attached key under the lease (so a revoke finds its keys with one prefix scan),
//! and, per attached key, the lease it belongs to (so a put or delete can detach it). All of
//! them are read through the writes made earlier in the same batch.

use std::collections::BTreeSet;
use std::ops::Bound;

use openraft::ErrorVerb;

use super::super::layout::{key_lease_key, lease_attachment_key, lease_key, lease_keys_prefix, LeaseRecord};
use super::super::{read_err, sm_err};
use super::BatchApplier;
use crate::codec;
use crate::command::{KeyValue, Response};
use crate::types::StorageError;

impl BatchApplier<'_> {
    /// A raw record of the tree, as of the writes so far.
    fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(v) = self.raw.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key).map_err(read_err)?.map(|v| v.to_vec()))
    }

    fn raw_put<T: serde::Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        self.insert_raw(key.clone(), bytes.clone());
        self.raw.insert(key, Some(bytes));
        Ok(())
    }

    fn raw_remove(&mut self, key: Vec<u8>) {
        self.remove_raw(key.clone());
        self.raw.insert(key, None);
    }

    fn raw_decode<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.raw_get(key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(read_err),
        }
    }

    pub(super) fn lease_exists(&self, id: u64) -> Result<bool, StorageError> {
        Ok(self.raw_get(&lease_key(id))?.is_some())
    }

    /// Detaches `key` from the lease it is attached to, if any.
    pub(super) fn detach(&mut self, key: &[u8]) -> Result<(), StorageError> {
        let attachment = key_lease_key(key);
        if let Some(lease) = self.raw_decode::<u64>(&attachment)? {
            self.raw_remove(lease_attachment_key(lease, key));
            self.raw_remove(attachment);
        }
        Ok(())
    }

    /// Attaches `key` to `lease` (the caller has checked that the lease exists and detached the
    /// key from any other).
    fn attach(&mut self, key: &[u8], lease: u64) -> Result<(), StorageError> {
        self.raw_put(lease_attachment_key(lease, key), &())?;
        self.raw_put(key_lease_key(key), &lease)
    }

    pub(super) fn lease_grant(&mut self, id: u64, ttl_ms: u64) -> Result<Response, StorageError> {
        if self.lease_exists(id)? {
            return Ok(Response::LeaseExists { id });
        }
        self.raw_put(lease_key(id), &LeaseRecord { ttl_ms })?;
        Ok(Response::LeaseGranted {
            revision: self.revision,
            id,
            ttl_ms,
        })
    }

    /// Deletes lease `id` and its keys, as one change.
    pub(super) fn lease_revoke(&mut self, change: &mut Option<u64>, id: u64) -> Result<Response, StorageError> {
        if !self.lease_exists(id)? {
            return Ok(Response::LeaseNotFound { id });
        }
        let mut deleted = 0;
        for key in self.keys_of_lease(id)? {
            if self.delete(change, key)?.is_some() {
                deleted += 1;
            }
        }
        self.raw_remove(lease_key(id));
        Ok(Response::LeaseRevoked {
            revision: self.revision,
            deleted,
        })
    }

    /// Puts `key` and attaches it to `lease`, which the caller has checked exists.
    pub(super) fn put_leased(
        &mut self,
        change: &mut Option<u64>,
        key: Vec<u8>,
        value: Vec<u8>,
        lease: u64,
    ) -> Result<Option<KeyValue>, StorageError> {
        let attach_to = key.clone();
        let prev = self.put(change, key, value)?;
        self.attach(&attach_to, lease)?;
        Ok(prev)
    }

    /// The user keys attached to lease `id`, in key order.
    fn keys_of_lease(&self, id: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let prefix = lease_keys_prefix(id);
        let mut keys = BTreeSet::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item.map_err(read_err)?;
            keys.insert(k.to_vec());
        }
        for (k, v) in self
            .raw
            .range::<Vec<u8>, _>((Bound::Included(prefix.clone()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().map(|k| k[prefix.len()..].to_vec()).collect())
    }
}
