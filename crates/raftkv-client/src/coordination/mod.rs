//! Coordination recipes built on leases, transactions and watches: distributed locks with
//! fencing tokens ([`LockGuard`]) and leader elections ([`Leadership`], [`LeaderObserver`]).
//!
//! Both are the same queue underneath (`queue`): a contender writes one key under the
//! recipe's prefix, named after its lease and attached to it, and the key's create revision is
//! its place in line. The contender whose key has the lowest create revision holds the lock or
//! leads; every other one watches only the key just ahead of it, and moves up when that key is
//! deleted — by an unlock or resignation (a revoke), or by the cluster when its holder's lease
//! expires. Waking one waiter per release keeps a release cheap however many wait (no
//! thundering herd), and waiters are served in arrival order.
//!
//! A holder's key lives exactly as long as its lease, so a holder that dies or is cut off
//! loses its place within the lease's TTL. The holder itself learns of it from its keep-alives
//! ([`LeaseState::Lost`](crate::LeaseState)), but it may learn late: whatever the holder
//! protects must check the token ([`LockGuard::guard`], a transaction compare that holds
//! only while the key is still the holder's own) — see docs/client.md, "Locks".

mod election;
mod lock;
mod queue;

pub use election::{Leader, LeaderObserver, Leadership};
pub use lock::LockGuard;

/// Where lock queues live: lock `NAME` queues under `locks/NAME/`.
pub const LOCK_PREFIX: &str = "locks/";
/// Where election queues live: election `NAME` queues under `elections/NAME/`.
pub const ELECTION_PREFIX: &str = "elections/";
