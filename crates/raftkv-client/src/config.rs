//! `ClientConfig`: every client setting in one struct with defaults and `validate()`, and the
//! endpoint list syntax `ADDR[=WEIGHT|=backup],...`.

use std::str::FromStr;
use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::error::ClientError;
use crate::retry::BackoffPolicy;

/// The local three-node cluster started by `scripts/cluster.sh up`.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// One node the client may talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Client API address, `HOST:PORT`.
    pub addr: String,
    /// Share of the reads this endpoint gets among the usable primaries (default 1).
    pub weight: u32,
    /// Used for reads only when no primary endpoint is usable.
    pub backup: bool,
}

impl EndpointSpec {
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            weight: 1,
            backup: false,
        }
    }
}

impl FromStr for EndpointSpec {
    type Err = ClientError;

    /// `ADDR`, `ADDR=WEIGHT` or `ADDR=backup`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, tag) = match s.split_once('=') {
            Some((a, t)) => (a.trim(), Some(t.trim())),
            None => (s.trim(), None),
        };
        if addr.contains("://") || !addr.contains(':') {
            return Err(ClientError::Config(format!(
                "endpoint {addr:?} is not HOST:PORT (e.g. 127.0.0.1:7001)"
            )));
        }
        let mut spec = EndpointSpec::new(addr);
        match tag {
            None => {}
            Some("backup") => spec.backup = true,
            Some(w) => match w.parse::<u32>() {
                Ok(w) if w > 0 => spec.weight = w,
                _ => {
                    return Err(ClientError::Config(format!(
                        "endpoint {s:?}: after '=' give a weight of 1 or more, or 'backup'"
                    )))
                }
            },
        }
        Ok(spec)
    }
}

/// How often and how patiently calls are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delays between attempts.
    pub backoff: BackoffPolicy,
    /// Most attempts one call makes (the deadline may end it sooner).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff: BackoffPolicy::default(),
            max_attempts: 10,
        }
    }
}

/// The client's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// The nodes to talk to.
    pub endpoints: Vec<EndpointSpec>,
    /// Deadline of each call, retries included (default 5 s).
    pub timeout: Duration,
    /// Longest one attempt may take before the client tries elsewhere (default 1 s). A write
    /// attempt that times out is retried only when it is exactly-once.
    pub attempt_timeout: Duration,
    /// How long opening a connection to one endpoint may take (default 1 s).
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// Number writes so the cluster applies a retried write once; makes every write safe to
    /// retry (default on).
    pub exactly_once: bool,
    /// This client's id for exactly-once writes; random when `None`.
    pub client_id: Option<u64>,
    /// Access token sent with every call (`authorization: Bearer TOKEN`), for clusters started
    /// with `--auth-file`.
    pub token: Option<Token>,
    /// TLS to the nodes, for clusters started with `--tls-cert`; plaintext when `None`.
    pub tls: Option<ClientTls>,
}

/// TLS settings: the CA that signed the nodes' client-API certificates, and this client's own
/// certificate and key for clusters that require one (`--tls-client-ca`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM of the CA the nodes' certificates are checked against.
    pub ca_pem: Vec<u8>,
    /// PEM certificate and PEM private key this client presents.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Reads the PEM files: the CA, and optionally a certificate with its key.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, ClientError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ClientError::Config(format!("{what} {}: {e}", p.display())))
        };
        Ok(Self {
            ca_pem: read("CA certificate", ca)?,
            identity: match identity {
                Some((cert, key)) => Some((read("certificate", cert)?, read("key", key)?)),
                None => None,
            },
        })
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.as_ref().map(|_| "<cert and redacted key>"))
            .finish()
    }
}

/// An access token. Its `Debug` output is redacted, so logging a config never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl ClientConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(|a| EndpointSpec::new(a)).collect(),
            timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            exactly_once: true,
            client_id: None,
            token: None,
            tls: None,
        }
    }

    /// Parses a comma-separated endpoint list such as
    /// `127.0.0.1:7001=3,127.0.0.1:7002,127.0.0.1:7003=backup`.
    pub fn parse(list: &str) -> Result<Self, ClientError> {
        let mut config = Self::new(Vec::<String>::new());
        for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            config.endpoints.push(part.parse()?);
        }
        config.validate()?;
        Ok(config)
    }

    /// Like [`Self::parse`], for lists known to be plain `HOST:PORT`s; a malformed list yields
    /// a config that `validate()` (and `Client::new`) will refuse.
    pub fn from_list(list: &str) -> Self {
        Self::parse(list).unwrap_or_else(|_| Self::new(list.split(',').map(str::trim).map(String::from)))
    }

    pub fn validate(&self) -> Result<(), ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints given".into()));
        }
        for e in &self.endpoints {
            e.addr.parse::<EndpointSpec>()?;
        }
        if self.endpoints.iter().all(|e| e.backup) {
            return Err(ClientError::Config(
                "every endpoint is a backup; mark at least one as primary".into(),
            ));
        }
        if self.timeout.is_zero() || self.attempt_timeout.is_zero() {
            return Err(ClientError::Config("timeouts must be positive".into()));
        }
        if let Some(t) = &self.token {
            let t = t.expose();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::Config(
                    "the token must be non-empty printable ASCII without spaces".into(),
                ));
            }
        }
        if self.retry.max_attempts == 0 {
            return Err(ClientError::Config("retry.max_attempts must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.breaker.failure_rate) || self.breaker.half_open_trials == 0 {
            return Err(ClientError::Config(
                "breaker.failure_rate must be within 0..=1 and half_open_trials at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_parse_weights_and_backups() {
        let c = ClientConfig::parse("127.0.0.1:7001=3, 127.0.0.1:7002 ,127.0.0.1:7003=backup").unwrap();
        assert_eq!(
            c.endpoints,
            vec![
                EndpointSpec {
                    addr: "127.0.0.1:7001".into(),
                    weight: 3,
                    backup: false
                },
                EndpointSpec::new("127.0.0.1:7002"),
                EndpointSpec {
                    addr: "127.0.0.1:7003".into(),
                    weight: 1,
                    backup: true
                },
            ]
        );
        assert!(ClientConfig::parse(DEFAULT_ENDPOINTS).is_ok());
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        for (list, why) in [
            ("", "no endpoints"),
            ("http://a:1", "HOST:PORT"),
            ("nohostport", "HOST:PORT"),
            ("a:1=0", "weight of 1 or more"),
            ("a:1=heavy", "weight of 1 or more"),
            ("a:1=backup", "every endpoint is a backup"),
        ] {
            let err = ClientConfig::parse(list).unwrap_err().to_string();
            assert!(err.contains(why), "{list:?}: {err}");
        }
        assert!(ClientConfig::from_list("http://a:1").validate().is_err());
    }
}
