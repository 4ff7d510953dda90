//! Reading every key under a prefix, page after page: what the coordination recipes and the
//! service registry start from before they follow the prefix with a watch.

use raftkv_proto::v1::{Consistency, KeyValue, RangeRequest};

use crate::client::Client;
use crate::error::ClientError;

/// The first key after every key starting with `prefix` (empty: there is none).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// Every key-value under `prefix`, linearizably, page after page; and the revision of the
/// first page. Later pages may be read at later revisions: a watch from the first page's
/// revision + 1 replays whatever changed in between (callers apply changes idempotently).
pub(crate) async fn read_prefix(client: &Client, prefix: &[u8]) -> Result<(Vec<KeyValue>, u64), ClientError> {
    let mut kvs = Vec::new();
    let mut first_revision = None;
    let mut request = RangeRequest {
        prefix: prefix.to_vec(),
        consistency: Consistency::Linearizable as i32,
        ..Default::default()
    };
    loop {
        let page = client.range(request.clone(), None).await?;
        let revision = page.header.as_ref().map_or(0, |h| h.revision);
        first_revision.get_or_insert(revision);
        kvs.extend(page.kvs);
        if !page.more || page.next_key.is_empty() {
            break;
        }
        request = RangeRequest {
            start: page.next_key,
            end: prefix_end(prefix),
            prefix: Vec::new(),
            ..request
        };
    }
    Ok((kvs, first_revision.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_prefix_is_its_successor() {
        assert_eq!(prefix_end(b"services/api/"), b"services/api0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert!(prefix_end(&[0xff]).is_empty());
    }
}
