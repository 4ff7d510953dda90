//! `raftkv certs`: a complete set of certificates for a TLS cluster on one machine or a lab
//! network, so trying TLS takes one command instead of an afternoon with openssl.
//!
//! Two CAs, because the client and peer APIs are separate trust domains (a client certificate
//! must never pass for a node on the peer port):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | client-API CA: signs the nodes' client-API certificates and client certificates |
//! | `node-N.pem`, `node-N-key.pem` | node N's client-API certificate (`--tls-cert`, `--tls-key`) |
//! | `client.pem`, `client-key.pem` | a client certificate (`raftkv --cert --key`) |
//! | `peer-ca.pem`, `peer-ca-key.pem` | peer CA: signs the nodes' peer certificates (`--peer-tls-ca`) |
//! | `node-N-peer.pem`, `node-N-peer-key.pem` | node N's peer certificate (`--peer-tls-cert`, `--peer-tls-key`) |
//!
//! Node certificates name every `--host` (IP addresses and DNS names) and are good for both
//! server and client authentication (a node is a client of its peers, and of the node it asks
//! to `--join`). Keys are written readable by their owner only. For production, use your own
//! PKI and keep the CA keys offline; these CAs never expire.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// One certificate authority, able to sign.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Authority {
    /// A new self-signed CA; writes `NAME.pem` and `NAME-key.pem`.
    fn create(dir: &Path, name: &str, common_name: &str, written: &mut Vec<PathBuf>) -> Result<Self, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err(name))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(err(name))?;
        let cert = params.self_signed(&key).map_err(err(name))?;
        write_pair(dir, name, &cert, &key, written)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate it signs for `hosts`; writes `NAME.pem` and `NAME-key.pem`.
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        hosts: &[String],
        usages: Vec<ExtendedKeyUsagePurpose>,
        written: &mut Vec<PathBuf>,
    ) -> Result<(), String> {
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(err(name))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = usages;
        let key = KeyPair::generate().map_err(err(name))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err(name))?;
        write_pair(dir, name, &cert, &key, written)
    }
}

/// Writes `NAME.pem` (the certificate) and `NAME-key.pem` (its key, owner-only).
fn write_pair(
    dir: &Path,
    name: &str,
    cert: &rcgen::Certificate,
    key: &KeyPair,
    written: &mut Vec<PathBuf>,
) -> Result<(), String> {
    written.push(write(dir, &format!("{name}.pem"), cert.pem().as_bytes(), false)?);
    written.push(write(
        dir,
        &format!("{name}-key.pem"),
        key.serialize_pem().as_bytes(),
        true,
    )?);
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8], secret: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Writes the whole set for nodes 1..=`nodes` into `dir` (created if missing); refuses to
/// overwrite an existing set. Returns the files written.
pub fn write_cluster_certs(dir: &Path, nodes: u64, hosts: &[String]) -> Result<Vec<PathBuf>, String> {
    if nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if hosts.is_empty() {
        return Err("give at least one --host the nodes are reached at".into());
    }
    if dir.join("ca.pem").exists() {
        return Err(format!(
            "{} already holds a certificate set (ca.pem); use another --dir or remove it",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let both = || vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let mut written = Vec::new();
    let client_ca = Authority::create(dir, "ca", "raftkv client-API CA", &mut written)?;
    let peer_ca = Authority::create(dir, "peer-ca", "raftkv peer CA", &mut written)?;
    for id in 1..=nodes {
        let cn = format!("raftkv node {id}");
        client_ca.issue(dir, &format!("node-{id}"), &cn, hosts, both(), &mut written)?;
        peer_ca.issue(dir, &format!("node-{id}-peer"), &cn, hosts, both(), &mut written)?;
    }
    client_ca.issue(
        dir,
        "client",
        "raftkv client",
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        &mut written,
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_set_is_written_with_private_keys_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let written = write_cluster_certs(dir.path(), 2, &hosts).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "ca.pem",
            "peer-ca-key.pem",
            "node-2.pem",
            "node-2-peer-key.pem",
            "client.pem",
        ] {
            assert!(
                names.contains(&expected.to_string()),
                "{expected} missing from {names:?}"
            );
        }
        let mode = std::fs::metadata(dir.path().join("node-1-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let pem = std::fs::read_to_string(dir.path().join("node-1.pem")).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

        let again = write_cluster_certs(dir.path(), 2, &hosts).unwrap_err();
        assert!(again.contains("already holds a certificate set"), "{again}");
        assert!(write_cluster_certs(dir.path(), 0, &hosts).is_err());
    }
}
