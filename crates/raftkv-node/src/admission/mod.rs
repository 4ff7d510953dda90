//! **admission**: whether a client call may run at all, decided before it costs anything —
//! tokens and roles, how many calls may run at once, request sizes, and whether the disk has
//! room for another write.
//!
//! - [`gate`]: `ClientGate`, the tower layer in front of the client services that judges a
//!   call by its headers alone;
//! - [`access`]: `AccessControl` (tokens, roles, the RPC → role table) and `Admission` (call
//!   slots);
//! - [`disk_guard`]: `DiskGuard`, the free-space alarm that refuses writes before the disk is
//!   full.
//!
//! May use: `api::error` (refusals are `ApiError`s), `ops::metrics` (refusals are counted).
//! A new limit or a new kind of refusal goes here.

pub mod access;
pub mod disk_guard;
pub mod gate;
