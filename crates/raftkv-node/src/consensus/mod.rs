//! **consensus**: everything between a client call and the replicated log — openraft's
//! wiring, the write and read paths built on it, membership, and the peer transport.
//!
//! - [`core`]: `NodeCore`, the write path and read barrier the services share;
//! - [`write_batcher`]: many concurrent writes → few log entries;
//! - [`read_index`]: linearizable reads on any node, concurrent reads sharing one round;
//! - [`membership`]: adding, promoting and removing members (run on the leader);
//! - [`removal`]: the removed-node state a node keeps once it is out of the cluster;
//! - [`election_assist`]: faster elections after a leader dies under write load;
//! - [`lease_keeper`]: when leases expire (the leader's deadlines, fresh TTLs on a new
//!   leadership, revokes through the log);
//! - [`leadership`]: who leads as clients see it (check-quorum: a leader without a quorum has
//!   stepped down);
//! - [`transport`]: the peer API, client ([`transport::network`]) and server
//!   ([`transport::peer_service`]) sides.
//!
//! May use: `raftkv-store`, `admission::disk_guard` (writes stop while the disk alarm is on)
//! and `api::error` (the answers a caller gets). It never uses `ops` or `boot`: metrics and
//! health observe it, and boot passes in what it needs.
//! A new Raft mechanism (leases' expiry, leader transfer) or a new peer RPC goes here.

pub mod core;
pub mod election_assist;
pub mod leadership;
pub mod lease_keeper;
pub mod membership;
pub mod read_index;
pub mod removal;
pub mod transport;
pub mod write_batcher;
