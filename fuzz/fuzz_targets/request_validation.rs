//! Client requests as any gRPC client could send them (arbitrary protobuf bytes) go through
//! the node's validation; it must refuse bad ones with an error, never panic. The first byte
//! picks the request type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use raftkv_node::request;
use raftkv_proto::v1::{DeleteRequest, PutRequest, RangeRequest, TxnRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(r) = PutRequest::decode(body) {
                let _ = request::put_command(r);
            }
        }
        1 => {
            if let Ok(r) = DeleteRequest::decode(body) {
                let _ = request::delete_command(&r);
            }
        }
        2 => {
            if let Ok(r) = RangeRequest::decode(body) {
                let _ = request::range_query(&r);
            }
        }
        _ => {
            if let Ok(r) = TxnRequest::decode(body) {
                let _ = request::txn_command(r);
            }
        }
    }
});
