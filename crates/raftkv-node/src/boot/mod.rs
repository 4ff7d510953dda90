//! **boot**: bringing one node to life and taking it down — the `raftkvd` command line, the
//! settings, the data directory's identity and checks, the one-time bootstrap of a cluster,
//! joining one, TLS material, and [`RunningNode`](node::RunningNode), which wires every other
//! room together.
//!
//! - [`daemon`]: the `raftkvd` command line (run, `restore`, `recover`), logging, signals;
//! - [`config`]: `NodeConfig` — every flag, its default and `validate()`;
//! - [`startup`]: start-up errors, data-directory checks, the one-time bootstrap;
//! - [`identity`]: the data directory's owner and incarnation (`node.json`);
//! - [`join`]: a pristine node asking an existing cluster to add it;
//! - [`tls`]: certificates read once at start, for both APIs;
//! - [`node`]: `RunningNode` — start, serve, shut down.
//!
//! May use: every other room (this is where they are wired). Nothing outside `boot` uses it,
//! except that [`config`] is read by whoever needs a setting at start.
//! A new flag goes in [`config`]; a new background task or server is started in [`node`].

pub mod config;
pub mod daemon;
pub mod identity;
pub mod join;
pub mod node;
pub mod startup;
pub mod tls;
