//! Who may call what on the client API: `AccessControl` (tokens and roles) and `Admission`
//! (how many calls may run at once). Both are checked by the [`ClientGate`] from a call's
//! headers, before its body is read, so a refused call costs no decoding, Raft or storage work.
//!
//! **Tokens.** With `--auth-file`, every client call must carry `authorization: Bearer TOKEN`.
//! The file holds one token per line, `NAME ROLE TOKEN` (`#` starts a comment); ROLE is one of
//! `read` < `readwrite` < `admin`, each allowing everything the one before it does. Which role
//! each RPC needs is [`required_role`], the one table of it. A call without a token, or with an
//! unknown one, is UNAUTHENTICATED; a known token whose role is too low is PERMISSION_DENIED,
//! naming the caller, its role and the role needed. Without `--auth-file` every call is allowed
//! (the local development cluster). Health checks and reflection never need a token: probes and
//! tools must work, and they reveal nothing but the public schema.
//!
//! **Admission.** At most `--max-inflight-requests` calls run at once on a node; one more is
//! refused at once with RESOURCE_EXHAUSTED (`raftkv-error: overloaded`) instead of queueing
//! without bound, and clients back off and retry.
//!
//! [`ClientGate`]: crate::admission::gate::ClientGate

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use raftkv_proto::metadata;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;

use crate::api::error::ApiError;

/// What a token allows; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Get, Range, Status, ListMembers.
    Read,
    /// Also Put, Delete, Txn.
    ReadWrite,
    /// Also membership changes, snapshots and backups.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "readwrite" => Some(Self::ReadWrite),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::ReadWrite => "readwrite",
            Self::Admin => "admin",
        })
    }
}

/// The metadata key etcd's clients carry their token in.
pub const ETCD_TOKEN: &str = "token";

/// RPCs anyone may call, token or not: etcd's Authenticate (how a client gets its token) and
/// AuthStatus (whether it needs one).
const OPEN_RPCS: &[&str] = &["Authenticate", "AuthStatus"];

/// The role each client RPC needs. An RPC missing from the table needs `admin`, so a new RPC
/// is closed until someone decides otherwise.
pub fn required_role(rpc: &str) -> Role {
    match rpc {
        "Get" | "Range" | "Watch" | "Status" | "ListMembers" | "TimeToLive" | "Leases" => Role::Read,
        "Put" | "Delete" | "Txn" | "Grant" | "Revoke" | "KeepAlive" | "KeepAliveOnce" => Role::ReadWrite,
        // etcd's v3 API (the etcd port), same rules.
        "MemberList" | "LeaseTimeToLive" | "LeaseLeases" | "Alarm" => Role::Read,
        "DeleteRange" | "LeaseGrant" | "LeaseRevoke" | "LeaseKeepAlive" => Role::ReadWrite,
        _ => Role::Admin,
    }
}

/// Someone holding a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// The tokens a node accepts (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct AccessControl {
    by_token: HashMap<String, Principal>,
}

impl AccessControl {
    /// Parses an auth file's text; an error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_token = HashMap::new();
        let mut names = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            // `#` starts a comment at the start of a line or after a space, never inside a token.
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.split(" #").next().unwrap_or_default();
            let line = line.split("\t#").next().unwrap_or_default();
            let at = || format!("line {}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, token] = fields[..] else {
                return Err(format!(
                    "{}: expected `NAME ROLE TOKEN`, found {} fields",
                    at(),
                    fields.len()
                ));
            };
            let role = Role::parse(role)
                .ok_or_else(|| format!("{}: role {role:?} is not one of read, readwrite, admin", at()))?;
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{}: the token of {name:?} must be printable ASCII (what gRPC metadata can carry)",
                    at()
                ));
            }
            if token.len() < 16 {
                return Err(format!(
                    "{}: the token of {name:?} is {} characters; use at least 16 (e.g. `openssl rand -hex 16`)",
                    at(),
                    token.len()
                ));
            }
            if names.insert(name.to_string(), ()).is_some() {
                return Err(format!("{}: name {name:?} is used twice", at()));
            }
            let principal = Principal {
                name: name.to_string(),
                role,
            };
            if by_token.insert(token.to_string(), principal).is_some() {
                return Err(format!(
                    "{}: the token of {name:?} is already given to another name",
                    at()
                ));
            }
        }
        if by_token.is_empty() {
            return Err("it holds no token; every call would be refused".into());
        }
        Ok(Self { by_token })
    }

    /// Reads and parses `--auth-file`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--auth-file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--auth-file {}: {e}", path.display()))
    }

    /// The principal named `name` whose token is `token` (etcd's Authenticate: the password is
    /// the raftkv token).
    pub fn check_password(&self, name: &str, token: &str) -> Option<&Principal> {
        self.by_token.get(token).filter(|p| p.name == name)
    }

    /// Who made this call, if its token is known. etcd's clients send theirs as `token` metadata
    /// (what Authenticate returned, the raftkv token itself); everyone else as a Bearer token.
    pub fn identify(&self, md: &MetadataMap) -> Result<&Principal, ApiError> {
        if let Some(etcd_token) = md.get(ETCD_TOKEN).and_then(|v| v.to_str().ok()) {
            return self
                .by_token
                .get(etcd_token.trim())
                .ok_or_else(|| ApiError::Unauthenticated("etcdserver: invalid auth token".into()));
        }
        let header = md
            .get(metadata::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "this cluster requires a token: pass --token (or set RAFTKV_TOKEN) to the CLI, \
                     or send metadata `authorization: Bearer TOKEN`"
                        .into(),
                )
            })?
            .to_str()
            .map_err(|_| ApiError::Unauthenticated("the authorization metadata is not readable text".into()))?;
        let token = header
            .strip_prefix(metadata::BEARER_PREFIX)
            .ok_or_else(|| ApiError::Unauthenticated("the authorization metadata must read `Bearer TOKEN`".into()))?;
        self.by_token
            .get(token.trim())
            .ok_or_else(|| ApiError::Unauthenticated("the token is not valid on this cluster".into()))
    }

    /// Whether the caller of `rpc` may make it.
    pub fn authorize(&self, rpc: &str, md: &MetadataMap) -> Result<(), ApiError> {
        if OPEN_RPCS.contains(&rpc) {
            return Ok(());
        }
        let who = self.identify(md)?;
        let needed = required_role(rpc);
        if who.role >= needed {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "{} has role {}; {rpc} needs role {needed}",
                who.name, who.role
            )))
        }
    }
}

/// Bounds the client calls a node runs at once (see the module docs).
#[derive(Debug, Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot for one call, held until the permit drops; none left is `Overloaded`.
    pub fn admit(&self, node: u64) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                this: node,
                limit: self.limit,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    const FILE: &str = "\
# name   role       token
alice    read       aaaaaaaaaaaaaaaa
bob      readwrite  bbbbbbbbbbbbbbbb   # the app
carol    admin      cccccccccccccccc
";

    fn with_token(token: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert(
            metadata::AUTHORIZATION,
            MetadataValue::try_from(metadata::bearer(token)).unwrap(),
        );
        md
    }

    #[test]
    fn each_role_allows_what_it_includes_and_nothing_more() {
        let acl = AccessControl::parse(FILE).unwrap();
        let allowed = |token: &str, rpc: &str| acl.authorize(rpc, &with_token(token)).is_ok();
        for rpc in ["Get", "Range", "Status", "ListMembers"] {
            assert!(allowed("aaaaaaaaaaaaaaaa", rpc), "read may {rpc}");
        }
        for rpc in ["Put", "Delete", "Txn"] {
            assert!(!allowed("aaaaaaaaaaaaaaaa", rpc), "read may not {rpc}");
            assert!(allowed("bbbbbbbbbbbbbbbb", rpc), "readwrite may {rpc}");
        }
        for rpc in [
            "AddMember",
            "PromoteMember",
            "RemoveMember",
            "Snapshot",
            "Backup",
            "SomethingNew",
        ] {
            assert!(!allowed("bbbbbbbbbbbbbbbb", rpc), "readwrite may not {rpc}");
            assert!(allowed("cccccccccccccccc", rpc), "admin may {rpc}");
        }
        let denied = acl.authorize("Put", &with_token("aaaaaaaaaaaaaaaa")).unwrap_err();
        assert_eq!(
            denied,
            ApiError::PermissionDenied("alice has role read; Put needs role readwrite".into())
        );
    }

    #[test]
    fn a_missing_malformed_or_unknown_token_is_unauthenticated() {
        let acl = AccessControl::parse(FILE).unwrap();
        let unauthenticated = |md: &MetadataMap| matches!(acl.authorize("Get", md), Err(ApiError::Unauthenticated(_)));
        assert!(unauthenticated(&MetadataMap::new()));
        assert!(unauthenticated(&with_token("zzzzzzzzzzzzzzzz")));
        let mut basic = MetadataMap::new();
        basic.insert(metadata::AUTHORIZATION, MetadataValue::from_static("Basic abc"));
        assert!(unauthenticated(&basic));
    }

    #[test]
    fn a_bad_auth_file_is_refused_with_the_line_and_the_reason() {
        let err = |text: &str| AccessControl::parse(text).unwrap_err();
        assert!(err("alice read").contains("line 1: expected `NAME ROLE TOKEN`"));
        assert!(err("alice root aaaaaaaaaaaaaaaa").contains("role \"root\" is not one of"));
        assert!(err("alice read short").contains("use at least 16"));
        assert!(err("a read aaaaaaaaaaaaaaaa\na admin bbbbbbbbbbbbbbbb").contains("line 2: name \"a\" is used twice"));
        assert!(err("a read aaaaaaaaaaaaaaaa\nb admin aaaaaaaaaaaaaaaa").contains("already given"));
        assert!(err("# nothing\n\n").contains("holds no token"));
        assert!(err("a read aaaaaaaaaaaaaaaaé").contains("printable ASCII"));
        let hashed = AccessControl::parse("a read aaaa#aaaaaaaaaaaaaaa # a comment\n").unwrap();
        assert!(
            hashed.authorize("Get", &with_token("aaaa#aaaaaaaaaaaaaaa")).is_ok(),
            "# inside a token is part of it"
        );
    }

    #[test]
    fn admission_refuses_past_its_limit_and_frees_slots_when_calls_end() {
        let admission = Admission::new(2);
        let first = admission.admit(1).unwrap();
        let _second = admission.admit(1).unwrap();
        assert_eq!(
            admission.admit(1).unwrap_err(),
            ApiError::Overloaded { this: 1, limit: 2 }
        );
        drop(first);
        assert!(admission.admit(1).is_ok());
    }
}
