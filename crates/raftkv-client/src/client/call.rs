//! The call/retry loop every data and membership call goes through: pick a target (the
//! leader for writes, a balanced endpoint for reads), send one attempt with its own timeout,
//! sort a failure ([`classify`]: safe to retry, redirect, unknown outcome, or final) and
//! decide whether to follow a hint, wait for a new leader, back off, or give up.

use std::future::Future;
use std::time::Duration;

use raftkv_proto::{error_kind, metadata};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::Client;
use crate::error::ClientError;
use crate::retry::Backoff;
use crate::session::SeqTicket;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CallKind {
    /// A write: to the leader, numbered for exactly-once when the config says so.
    Write,
    Read,
    /// A call only the leader answers that is safe to repeat (a lease keep-alive, a lease's
    /// time to live): to the leader, never numbered, retried whatever happened to an attempt.
    Leader,
}

impl CallKind {
    fn to_leader(self) -> bool {
        matches!(self, CallKind::Write | CallKind::Leader)
    }
}

/// How one failed attempt bears on the call.
enum Failure {
    /// Certainly not applied; try elsewhere.
    NotStarted(String),
    /// Not applied; the leader is at `addr`.
    Redirect { addr: String, message: String },
    /// May have been applied.
    Unknown(String),
    /// Retrying cannot help.
    Final(ClientError),
}

fn is_connect_error(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

fn describe_code(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Cancelled => "cancelled",
        _ => "error",
    }
}

/// Sorts a failed attempt, and says whether it counts against the endpoint's breaker (only
/// transport failures and timeouts do: any answer from the server means the node is alive).
fn classify(status: &Status) -> (Failure, bool) {
    let md = status.metadata();
    let kind = md.get(metadata::ERROR_KIND).and_then(|v| v.to_str().ok());
    let message = format!("{}: {}", describe_code(status.code()), status.message());
    match kind {
        Some(error_kind::NOT_LEADER) => match md.get(metadata::LEADER_ADDR).and_then(|v| v.to_str().ok()) {
            Some(addr) => (
                Failure::Redirect {
                    addr: addr.to_string(),
                    message,
                },
                false,
            ),
            None => (Failure::NotStarted(message), false),
        },
        Some(error_kind::NO_LEADER) | Some(error_kind::SHUTTING_DOWN) | Some(error_kind::REMOVED) => {
            (Failure::NotStarted(message), false)
        }
        Some(error_kind::INDETERMINATE) => (Failure::Unknown(message), false),
        // Refused before it started: back off, and try elsewhere.
        Some(error_kind::OVERLOADED) => (Failure::NotStarted(message), false),
        // The per-connection call limit (gRPC's own load shedding, no raftkv kind): the same.
        None if status.code() == Code::ResourceExhausted && status.message().contains("Too many active requests") => {
            (Failure::NotStarted(message), false)
        }
        _ => match status.code() {
            Code::Unavailable if is_connect_error(status) => (Failure::NotStarted(message), true),
            // A plaintext client talking to a TLS port fails HTTP/2 framing before the call
            // starts.
            Code::Internal if status.message().contains("h2 protocol error") => (Failure::NotStarted(message), true),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                (Failure::Unknown(message), true)
            }
            _ => (Failure::Final(ClientError::from_status(status)), false),
        },
    }
}

impl Client {
    /// Runs one call with retries until it succeeds, fails for good, or the deadline or the
    /// attempt budget runs out.
    pub(super) async fn call<Req, Resp, F, Fut>(
        &self,
        kind: CallKind,
        timeout: Option<Duration>,
        req: Req,
        send: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let config = &self.inner.config;
        let deadline = Instant::now() + timeout.unwrap_or(config.timeout);
        let ticket: Option<SeqTicket> =
            (kind == CallKind::Write && config.exactly_once).then(|| self.inner.sequence.begin());
        let mut backoff = Backoff::new(config.retry.backoff);
        let mut last_error = String::from("no attempt was made");
        let mut outcome_unknown = false;
        let mut redirect: Option<String> = None;
        let mut attempts = 0;
        let request_id = MetadataValue::try_from(format!("{:016x}", rand::random::<u64>()))
            .map_err(|e| ClientError::Config(format!("request id: {e}")))?;
        loop {
            if Instant::now() >= deadline || attempts >= config.retry.max_attempts {
                let why = if attempts >= config.retry.max_attempts {
                    format!("gave up after {attempts} attempts")
                } else {
                    "deadline passed".to_string()
                };
                // Plaintext against a TLS port fails as a bare transport error: say what to try.
                if config.tls.is_none()
                    && (last_error.contains("transport error") || last_error.contains("h2 protocol"))
                {
                    last_error.push_str(
                        " (if the cluster serves TLS, give the client its CA: --cacert or ClientConfig::tls)",
                    );
                }
                return Err(if outcome_unknown {
                    ClientError::Indeterminate(format!("{why}; last error: {last_error}"))
                } else {
                    ClientError::Unavailable(format!("{why}; last error: {last_error}"))
                });
            }
            let target = match (kind, redirect.take()) {
                (_, Some(addr)) => Some(self.endpoint(&addr)?),
                (CallKind::Write | CallKind::Leader, None) => {
                    let leader = match self.known_leader() {
                        Some(l) => Some(l),
                        None => self.await_leader(deadline).await,
                    };
                    match leader {
                        Some(l) => Some(self.endpoint(&l)?),
                        None => self.pick_for_read(Instant::now()),
                    }
                }
                (CallKind::Read, None) => self.pick_for_read(Instant::now()),
            };
            let Some(target) = target else {
                last_error = "every endpoint's circuit breaker is open".into();
                self.pause(&mut backoff, deadline).await;
                continue;
            };
            let addr = target.spec.addr.clone();
            if !target.try_acquire(Instant::now()) {
                last_error = format!("{addr}: circuit breaker open");
                self.forget_leader(&addr);
                self.pause(&mut backoff, deadline).await;
                continue;
            }
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt_timeout = remaining.min(config.attempt_timeout);
            let mut request = self.request(req.clone());
            request.set_timeout(attempt_timeout);
            request.metadata_mut().insert(metadata::REQUEST_ID, request_id.clone());
            if let Some(t) = &ticket {
                let md = request.metadata_mut();
                md.insert(metadata::CLIENT_ID, MetadataValue::from(self.inner.sequence.client_id));
                md.insert(metadata::REQUEST_SEQ, MetadataValue::from(t.seq));
                md.insert(
                    metadata::ACKED_BELOW,
                    MetadataValue::from(self.inner.sequence.acked_below()),
                );
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout(attempt_timeout, send(target.channel.clone(), request)).await;
            let (failure, transport_failure) = match outcome {
                Ok(Ok(resp)) => {
                    target.record(false, started.elapsed());
                    if kind.to_leader() {
                        self.set_leader(Some(addr));
                    }
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => classify(&status),
                Err(_) => (Failure::Unknown(format!("no reply within {attempt_timeout:?}")), true),
            };
            target.record(transport_failure, started.elapsed());
            match failure {
                Failure::Final(e) => return Err(e),
                Failure::Unknown(msg) => {
                    last_error = format!("{addr}: {msg}");
                    self.forget_leader(&addr);
                    if kind == CallKind::Write {
                        outcome_unknown = true;
                        if ticket.is_none() {
                            return Err(ClientError::Indeterminate(last_error));
                        }
                    }
                    self.pause(&mut backoff, deadline).await;
                }
                Failure::Redirect { addr: hint, message } => {
                    last_error = format!("{addr}: {message}");
                    if hint == addr {
                        // A stale hint pointing back at the node that gave it.
                        self.set_leader(None);
                        self.pause(&mut backoff, deadline).await;
                    } else if kind.to_leader() && self.is_lost_leader(&hint) {
                        // This node's lease on the dead leader has not run out yet: wait for
                        // the election (the next attempt polls for the new leader).
                        self.set_leader(None);
                    } else {
                        tracing::debug!(from = %addr, to = %hint, "following leader hint");
                        self.set_leader(Some(hint.clone()));
                        redirect = Some(hint);
                    }
                }
                Failure::NotStarted(msg) => {
                    last_error = format!("{addr}: {msg}");
                    if kind.to_leader() && transport_failure && self.known_leader().as_deref() == Some(&addr) {
                        // The leader is gone (connection refused): the next attempt polls for
                        // its successor.
                        self.leader_lost(&addr);
                    } else {
                        self.forget_leader(&addr);
                        self.pause(&mut backoff, deadline).await;
                    }
                }
            }
        }
    }

    async fn pause(&self, backoff: &mut Backoff, deadline: Instant) {
        let delay = backoff.next_delay();
        tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    fn status_with(code: Code, kind: Option<&'static str>, leader: Option<&'static str>) -> Status {
        let mut s = Status::new(code, "x");
        if let Some(k) = kind {
            s.metadata_mut()
                .insert(metadata::ERROR_KIND, MetadataValue::from_static(k));
        }
        if let Some(l) = leader {
            s.metadata_mut()
                .insert(metadata::LEADER_ADDR, MetadataValue::from_static(l));
        }
        s
    }

    #[test]
    fn classification_separates_safe_retries_from_unknown_outcomes() {
        let redirect = status_with(Code::Unavailable, Some(error_kind::NOT_LEADER), Some("127.0.0.1:7002"));
        assert!(matches!(classify(&redirect), (Failure::Redirect { addr, .. }, false) if addr == "127.0.0.1:7002"));
        let no_leader = status_with(Code::Unavailable, Some(error_kind::NO_LEADER), None);
        assert!(
            matches!(classify(&no_leader), (Failure::NotStarted(_), false)),
            "the node answered"
        );
        let indeterminate = status_with(Code::Unavailable, Some(error_kind::INDETERMINATE), None);
        assert!(matches!(classify(&indeterminate), (Failure::Unknown(_), false)));
        // A transport failure without our metadata, not at connect time: unknown outcome, and
        // it counts against the endpoint.
        let broken = status_with(Code::Unavailable, None, None);
        assert!(matches!(classify(&broken), (Failure::Unknown(_), true)));
        assert!(matches!(
            classify(&status_with(Code::DeadlineExceeded, None, None)),
            (Failure::Unknown(_), true)
        ));
        assert!(matches!(
            classify(&status_with(Code::InvalidArgument, None, None)),
            (Failure::Final(ClientError::InvalidArgument(_)), false)
        ));
        // Shed before it started: retried after a backoff, without blaming the endpoint.
        let overloaded = status_with(Code::ResourceExhausted, Some(error_kind::OVERLOADED), None);
        assert!(matches!(classify(&overloaded), (Failure::NotStarted(_), false)));
        // A refused token is final: retrying cannot change the answer.
        assert!(matches!(
            classify(&status_with(Code::PermissionDenied, None, None)),
            (Failure::Final(ClientError::PermissionDenied(_)), false)
        ));
        assert!(matches!(
            classify(&status_with(Code::Unauthenticated, None, None)),
            (Failure::Final(ClientError::Unauthenticated(_)), false)
        ));
    }

    #[tokio::test]
    async fn a_write_to_nothing_listening_is_unavailable_not_indeterminate() {
        // Bind then drop a listener to get a loopback port with nothing behind it.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut config = ClientConfig::new([addr]);
        config.timeout = Duration::from_millis(300);
        let client = Client::new(config).unwrap();
        let err = client.put("k", "v").await.unwrap_err();
        assert!(matches!(err, ClientError::Unavailable(_)), "{err}");
    }
}
