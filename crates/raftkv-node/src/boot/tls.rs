//! `NodeTls`: the node's TLS settings, loaded once at start from the certificate flags.
//!
//! Two separate trust domains, so a client certificate can never pass for a peer:
//!
//! - **Client API** (`--tls-cert`, `--tls-key`, optional `--tls-client-ca`): the node serves TLS
//!   with its certificate; with `--tls-client-ca` it also requires every client to present a
//!   certificate signed by that CA (mutual TLS). `--join` uses the same CA to check the node it
//!   asks, and the node's certificate as its own.
//! - **Peer API** (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`): always mutual. The node
//!   serves TLS and accepts a peer only with a certificate signed by the peer CA; its own
//!   outgoing peer connections check the other node against that CA and present its
//!   certificate. A host without such a certificate cannot send a Raft message, so it can
//!   neither vote nor be voted for.
//!
//! Certificates are read once at start; a missing or unreadable file stops the node with its
//! path. `raftkv certs` writes a working set for a local cluster (docs/security.md).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::boot::config::NodeConfig;

/// What TLS the node's servers and outgoing connections use; `None` fields mean plaintext.
#[derive(Debug, Clone, Default)]
pub struct NodeTls {
    /// The client API server's settings.
    pub client_server: Option<ServerTlsConfig>,
    /// For the node's own calls to other nodes' client APIs (`--join`).
    pub client_connect: Option<ClientTlsConfig>,
    /// The peer API server's settings (client certificates required).
    pub peer_server: Option<ServerTlsConfig>,
    /// For outgoing peer connections.
    pub peer_connect: Option<ClientTlsConfig>,
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl NodeTls {
    /// Reads the files the flags name (validate() has checked they come in complete sets).
    pub fn load(config: &NodeConfig) -> Result<Self, String> {
        let mut tls = NodeTls::default();
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
            let mut server = ServerTlsConfig::new().identity(identity.clone());
            let mut connect = ClientTlsConfig::new().identity(identity);
            if let Some(ca) = &config.tls_client_ca {
                let ca = Certificate::from_pem(read("--tls-client-ca", ca)?);
                server = server.client_ca_root(ca.clone());
                connect = connect.ca_certificate(ca);
            }
            tls.client_server = Some(server);
            tls.client_connect = Some(connect);
        }
        if let (Some(cert), Some(key), Some(ca)) = (&config.peer_tls_cert, &config.peer_tls_key, &config.peer_tls_ca) {
            let identity = Identity::from_pem(read("--peer-tls-cert", cert)?, read("--peer-tls-key", key)?);
            let ca = Certificate::from_pem(read("--peer-tls-ca", ca)?);
            tls.peer_server = Some(
                ServerTlsConfig::new()
                    .identity(identity.clone())
                    .client_ca_root(ca.clone()),
            );
            tls.peer_connect = Some(ClientTlsConfig::new().identity(identity).ca_certificate(ca));
        }
        Ok(tls)
    }
}
