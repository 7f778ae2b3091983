//! TLS settings for the link: certificates loaded once, at module load.
//!
//! Why at load: a missing or unreadable certificate must refuse the load with
//! a line naming the argument, not surface minutes later as a failed
//! connection. Why always mutual: either node may dial, so each node is both
//! a TLS client and a TLS server and holds a certificate; each verifies the
//! other's against the configured CA. Why `ring` and TLS 1.3 only: a small,
//! well-reviewed provider that needs no extra build tools, and one protocol
//! version to reason about between two nodes we configure together.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::core::config::TlsFiles;
use crate::core::endpoint::Endpoint;

/// Everything a connection needs to speak TLS, shared by all connections.
pub struct TlsSettings {
    /// Used when this node dials the peer.
    pub client: Arc<ClientConfig>,
    /// Used when the peer dials this node.
    pub server: Arc<ServerConfig>,
    /// The name the peer's certificate must carry when we dial it.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(arg: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("argument '{arg}': cannot read '{path}' ({e})"))?;
    for cert in iter {
        out.push(cert.map_err(|e| format!("argument '{arg}': '{path}' is not valid PEM ({e})"))?);
    }
    if out.is_empty() {
        return Err(format!(
            "argument '{arg}': '{path}' holds no PEM certificate"
        ));
    }
    Ok(out)
}

/// Build the TLS settings from the configured files; the error names the
/// argument at fault. Without `tls-server-name` the peer's certificate must
/// carry the host of `peer` as configured: its DNS name, or its IP.
pub fn load(files: &TlsFiles, peer: &Endpoint) -> Result<TlsSettings, String> {
    let chain = certs("tls-cert-file", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "argument 'tls-key-file': cannot read a PEM private key from '{}' ({e})",
            files.key
        )
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("tls-ca-file", &files.ca)? {
        roots.add(ca).map_err(|e| {
            format!(
                "argument 'tls-ca-file': '{}' holds a certificate that cannot be a trust anchor ({e})",
                files.ca
            )
        })?;
    }
    let roots = Arc::new(roots);
    let server_name = server_name(files, peer)?;

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| format!("argument 'tls-ca-file': {e}"))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| key_error(files, e))?;
    // Two nodes keep one long connection: session tickets buy nothing.
    server.send_tls13_tickets = 0;

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("argument 'tls-ca-file': {e}"))?;
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| key_error(files, e))?;
    Ok(TlsSettings {
        client: Arc::new(client),
        server: Arc::new(server),
        server_name,
    })
}

/// The name the peer's certificate must carry when this node dials it:
/// `tls-server-name`, else the host of `peer` (DNS name or IP).
fn server_name(files: &TlsFiles, peer: &Endpoint) -> Result<ServerName<'static>, String> {
    match &files.server_name {
        Some(name) => ServerName::try_from(name.clone()).map_err(|e| {
            format!("argument 'tls-server-name': '{name}' is not a DNS name or IP address ({e})")
        }),
        None => match peer.ip() {
            Some(ip) => Ok(ServerName::IpAddress(ip.into())),
            None => {
                ServerName::try_from(peer.host.trim_end_matches('.').to_string()).map_err(|e| {
                    format!(
                    "argument 'peer': '{}' cannot be a TLS server name ({e}); set tls-server-name",
                    peer.host
                )
                })
            }
        },
    }
}

fn key_error(files: &TlsFiles, e: rustls::Error) -> String {
    format!(
        "argument 'tls-key-file': the key in '{}' does not fit the certificate in '{}' ({e})",
        files.key, files.cert
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("a.crt").display().to_string(),
            key: dir.join("a.key").display().to_string(),
            ca: dir.join("ca.crt").display().to_string(),
            server_name: None,
        }
    }

    fn peer() -> Endpoint {
        Endpoint::parse("127.0.0.1:7101").unwrap()
    }

    #[test]
    fn the_peer_host_is_the_default_server_name() {
        let dir = std::path::Path::new("/nonexistent");
        let named = Endpoint::parse("redis-b.example:7101").unwrap();
        assert_eq!(
            server_name(&files(dir), &named).unwrap(),
            ServerName::try_from("redis-b.example").unwrap()
        );
        assert_eq!(
            server_name(&files(dir), &peer()).unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        let mut explicit = files(dir);
        explicit.server_name = Some("node-b".into());
        assert_eq!(
            server_name(&explicit, &named).unwrap(),
            ServerName::try_from("node-b").unwrap()
        );
    }

    #[test]
    fn missing_files_name_the_argument() {
        let dir = std::env::temp_dir().join(format!("bisync-tls-missing-{}", std::process::id()));
        let err = load(&files(&dir), &peer()).unwrap_err();
        assert!(err.contains("'tls-cert-file'"), "{err}");
    }

    #[test]
    fn garbage_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("bisync-tls-garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.crt"), b"not a certificate\n").unwrap();
        let err = load(&files(&dir), &peer()).unwrap_err();
        assert!(
            err.contains("'tls-cert-file'") && err.contains("no PEM"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
