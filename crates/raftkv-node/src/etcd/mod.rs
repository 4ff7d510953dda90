//! **etcd**: etcd's v3 API (`etcdserverpb`) on a node's second client port (`--etcd-addr`), so
//! etcd's own clients and tools work against raftkv unchanged.
//!
//! Each etcd call is translated into the native API's request, served by the native service
//! (validation, the write path, read barriers and error mapping stay in one place), and its
//! answer translated back; what raftkv cannot answer faithfully is refused with
//! `UNIMPLEMENTED` naming it, never answered wrongly. docs/etcd-compat.md lists every RPC and
//! option.
//!
//! - [`kv`]: `etcdserverpb.KV` (Range, Put, DeleteRange, Txn; Compact refused);
//! - [`lease`]: `Lease` (grant, revoke, keep-alive stream, time-to-live, list);
//! - [`maintenance`]: `Maintenance` (Status, Alarm, Defragment) and `Cluster` (MemberList);
//! - [`watch`]: `Watch` (the bidirectional stream) over the native watch sessions;
//! - [`auth`]: `Auth` as far as raftkv's tokens map onto it (Authenticate, AuthStatus);
//! - [`forward`]: writes that reach a follower passed on to the leader's etcd port;
//! - [`convert`]: headers, key-values, key ranges and etcd's error messages.
//!
//! May use: `api` (the native services it translates into), `consensus`, and
//! `admission::access` (the tokens etcd's Authenticate hands out).

pub mod auth;
pub mod convert;
pub mod forward;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;
