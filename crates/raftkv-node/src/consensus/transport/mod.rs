//! **transport**: the peer API (`raftkv.v1.RaftPeer`), the node-to-node traffic Raft and the
//! read path need.
//!
//! - [`network`]: the client side — cached channels per peer, openraft's `RaftNetwork`,
//!   failure classification, test link faults, incarnation checks;
//! - [`peer_gate`]: one per peer — no more than one unanswered request outstanding, no stream
//!   resets against a frozen peer, and a quiet log while a peer is down;
//! - [`peer_service`]: the server side — hands other nodes' Raft RPCs to this node's Raft and
//!   answers read-index, removal and bootstrap probes.
//!
//! May use: the rest of `consensus` (what it carries), `raftkv-store` (codec, types). It knows
//! no configuration struct: the caller hands it TLS settings and routes.

pub mod network;
pub mod peer_gate;
pub mod peer_service;

/// The URL of `addr` for a gRPC connection with or without TLS.
pub fn url(addr: &str, tls: bool) -> String {
    if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}
