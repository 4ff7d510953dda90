//! The endpoints: one lazily connected channel, circuit breaker and set of counters per
//! endpoint, the report of them ([`EndpointReport`]), and picking an endpoint for a read by
//! smooth weighted round robin over those whose breaker lets calls through.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::Client;
use crate::breaker::CircuitBreaker;
use crate::config::EndpointSpec;
use crate::error::ClientError;

/// The client's view of one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointReport {
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    /// How many times the breaker changed state.
    pub breaker_transitions: u64,
    /// Attempts sent, and those that failed at the transport level or timed out.
    pub calls: u64,
    pub failures: u64,
    /// Moving average of successful attempts' latency.
    pub latency: Option<Duration>,
}

#[derive(Debug, Default)]
struct EndpointStats {
    calls: u64,
    failures: u64,
    latency_ewma_us: Option<f64>,
}

pub(super) struct EndpointState {
    pub(super) spec: EndpointSpec,
    pub(super) channel: Channel,
    breaker: Mutex<CircuitBreaker>,
    stats: Mutex<EndpointStats>,
}

impl EndpointState {
    fn would_allow(&self, now: Instant) -> bool {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner()).would_allow(now)
    }

    pub(super) fn try_acquire(&self, now: Instant) -> bool {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner()).try_acquire(now)
    }

    /// Records an attempt's outcome in the breaker (`failed`: transport failure or timeout)
    /// and in the counters.
    pub(super) fn record(&self, failed: bool, elapsed: Duration) {
        let now = Instant::now();
        let change = self
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now, !failed);
        if let Some(state) = change {
            tracing::info!(endpoint = %self.spec.addr, breaker = state.name(), "circuit breaker changed state");
        }
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.calls += 1;
        if failed {
            stats.failures += 1;
        } else {
            let us = elapsed.as_micros() as f64;
            stats.latency_ewma_us = Some(stats.latency_ewma_us.map_or(us, |avg| 0.8 * avg + 0.2 * us));
        }
    }

    fn report(&self) -> EndpointReport {
        let (breaker, transitions) = {
            let b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
            (b.state(Instant::now()).name(), b.transitions())
        };
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        EndpointReport {
            addr: self.spec.addr.clone(),
            weight: self.spec.weight,
            backup: self.spec.backup,
            breaker,
            breaker_transitions: transitions,
            calls: stats.calls,
            failures: stats.failures,
            latency: stats.latency_ewma_us.map(|us| Duration::from_micros(us as u64)),
        }
    }
}

impl Client {
    /// The client's view of each of its endpoints.
    pub fn endpoints(&self) -> Vec<EndpointReport> {
        self.snapshot().iter().map(|e| e.report()).collect()
    }

    pub(super) fn snapshot(&self) -> Vec<Arc<EndpointState>> {
        self.inner.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn add_endpoint(&self, spec: EndpointSpec) -> Result<Arc<EndpointState>, ClientError> {
        let mut endpoints = self.inner.endpoints.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = endpoints.iter().find(|e| e.spec.addr == spec.addr) {
            return Ok(e.clone());
        }
        let tls = &self.inner.config.tls;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", spec.addr))
            .map_err(|e| ClientError::Config(format!("endpoint {:?}: {e}", spec.addr)))?;
        if let Some(tls) = tls {
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| ClientError::Config(format!("TLS for {}: {e}", spec.addr)))?;
        }
        let channel = endpoint
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let state = Arc::new(EndpointState {
            spec,
            channel,
            breaker: Mutex::new(CircuitBreaker::new(self.inner.config.breaker)),
            stats: Mutex::new(EndpointStats::default()),
        });
        endpoints.push(state.clone());
        Ok(state)
    }

    /// The endpoint for `addr`, added (as a primary of weight 1) if it is new — leader hints
    /// may name nodes the caller did not list.
    pub(super) fn endpoint(&self, addr: &str) -> Result<Arc<EndpointState>, ClientError> {
        if let Some(e) = self.snapshot().into_iter().find(|e| e.spec.addr == addr) {
            return Ok(e);
        }
        self.add_endpoint(EndpointSpec::new(addr))
    }

    /// Picks an endpoint for a read: smooth weighted round robin over the primaries whose
    /// breaker lets calls through, or over the usable backups when no primary is.
    pub(super) fn pick_for_read(&self, now: Instant) -> Option<Arc<EndpointState>> {
        let endpoints = self.snapshot();
        let usable = |backup: bool| -> Vec<(usize, u32)> {
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.spec.backup == backup && e.would_allow(now))
                .map(|(i, e)| (i, e.spec.weight))
                .collect()
        };
        let mut candidates = usable(false);
        if candidates.is_empty() {
            candidates = usable(true);
        }
        let chosen = self
            .inner
            .balancer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pick(&candidates)?;
        endpoints.get(chosen).cloned()
    }
}
