//! Every stored payload and peer message goes through `codec::decode`: whatever the bytes (a
//! damaged disk, a confused or hostile peer), it must return an error, never panic or try to
//! allocate without bound. The first byte picks the type, the rest is the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftkv_store::codec;
use raftkv_store::command::Request;
use raftkv_store::types::{Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use raftkv_store::TypeConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let _ = codec::verify(payload);
    match kind % 8 {
        0 => drop(codec::decode::<Entry>(payload)),
        1 => drop(codec::decode::<Request>(payload)),
        2 => drop(codec::decode::<Vote>(payload)),
        3 => drop(codec::decode::<Option<LogId>>(payload)),
        4 => drop(codec::decode::<StoredMembership>(payload)),
        5 => drop(codec::decode::<SnapshotMeta>(payload)),
        6 => drop(codec::decode::<openraft::raft::VoteRequest<TypeConfig>>(payload)),
        _ => drop(codec::decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(payload)),
    }
});
