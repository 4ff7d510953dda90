//! The sizes and counts the client API accepts. A request over one is refused with a message
//! naming the limit (see [`super::request`]); the node sizes its gRPC message limits from them.

/// Largest key accepted by the client API, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value accepted by the client API, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most key-values one Range reply carries; larger ranges are paged (`more`).
pub const MAX_RANGE_LIMIT: u64 = 10_000;
/// Most compares plus operations one transaction may hold.
pub const MAX_TXN_OPS: usize = 128;
/// Most key and value bytes one Range reply carries (past the first key-value), so a reply
/// stays under gRPC's common 4 MiB default message limit; larger ranges are paged (`more`).
pub const MAX_RANGE_REPLY_BYTES: usize = 3 * 1024 * 1024;
