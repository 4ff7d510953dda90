//! Translating between etcd's v3 messages and raftkv's native ones: response headers,
//! key-values, etcd's `key` / `range_end` convention, and the error messages etcd's clients
//! look for.

use raftkv_proto::etcd::etcdserverpb::ResponseHeader as EtcdHeader;
use raftkv_proto::etcd::mvccpb::KeyValue as EtcdKeyValue;
use raftkv_proto::v1::{KeyValue, ResponseHeader};
use tonic::Status;

/// An end key above every key raftkv accepts (keys are at most 4 KiB): "to the last key".
pub const END_OF_KEYS: [u8; 4097] = [0xff; 4097];

/// etcd's messages for the errors its clients recognise by text.
pub mod message {
    pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
    pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
    pub const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
}

pub fn header(h: Option<ResponseHeader>) -> Option<EtcdHeader> {
    h.map(|h| EtcdHeader {
        cluster_id: h.cluster_id,
        member_id: h.node_id,
        revision: revision(h.revision),
        raft_term: h.raft_term,
    })
}

/// A revision as etcd's signed field.
pub fn revision(r: u64) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// A key-value as etcd's; `lease` is the key's lease (raftkv's key-value does not carry it).
pub fn key_value(kv: KeyValue, lease: i64) -> EtcdKeyValue {
    EtcdKeyValue {
        key: kv.key,
        create_revision: revision(kv.create_revision),
        mod_revision: revision(kv.mod_revision),
        version: revision(kv.version),
        value: kv.value,
        lease,
    }
}

/// Which keys an etcd `key` / `range_end` pair selects, as raftkv's `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySelection {
    /// Exactly `key`.
    One(Vec<u8>),
    /// `[start, end)`; an empty `end` means "to the last key".
    Range { start: Vec<u8>, end: Vec<u8> },
}

/// etcd's convention: no `range_end` is one key; `range_end` "\0" is every key from `key` on
/// (and with `key` "\0" too, every key); otherwise `[key, range_end)`.
pub fn selection(key: &[u8], range_end: &[u8]) -> Result<KeySelection, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(message::KEY_NOT_PROVIDED));
    }
    Ok(match range_end {
        [] => KeySelection::One(key.to_vec()),
        [0] => KeySelection::Range {
            start: if key == [0] { Vec::new() } else { key.to_vec() },
            end: Vec::new(),
        },
        end => KeySelection::Range {
            start: key.to_vec(),
            end: end.to_vec(),
        },
    })
}

/// The native `[start, end)` of a selection (for a single key: `[key, key + "\0")`).
pub fn bounds(selection: &KeySelection) -> (Vec<u8>, Vec<u8>) {
    match selection {
        KeySelection::One(key) => {
            let mut end = key.clone();
            end.push(0);
            (key.clone(), end)
        }
        KeySelection::Range { start, end } => (start.clone(), end.clone()),
    }
}

/// An etcd signed count or revision that must not be negative.
pub fn non_negative(what: &str, n: i64) -> Result<u64, Status> {
    u64::try_from(n).map_err(|_| Status::invalid_argument(format!("etcdserver: {what} must not be negative (got {n})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_key_ranges_become_native_bounds() {
        assert_eq!(selection(b"a", b"").unwrap(), KeySelection::One(b"a".to_vec()));
        assert_eq!(bounds(&selection(b"a", b"").unwrap()), (b"a".to_vec(), b"a\0".to_vec()));
        assert_eq!(
            selection(b"\0", b"\0").unwrap(),
            KeySelection::Range {
                start: Vec::new(),
                end: Vec::new()
            },
            "every key"
        );
        assert_eq!(
            bounds(&selection(b"k", b"\0").unwrap()),
            (b"k".to_vec(), Vec::new()),
            "from k on"
        );
        assert_eq!(bounds(&selection(b"a", b"c").unwrap()), (b"a".to_vec(), b"c".to_vec()));
        assert_eq!(selection(b"", b"").unwrap_err().message(), message::KEY_NOT_PROVIDED);
    }
}
