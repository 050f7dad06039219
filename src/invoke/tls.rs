//! TLS to the upstream, for an `https` base URL: rustls with the ring provider (the one
//! the broker clients use), the roots of `upstream.tls.ca_file` (else the system's), and an
//! optional client certificate. The server's certificate must name the base URL's host,
//! which is also sent as SNI. Built once at start-up; `client.rs` wraps each new
//! connection in it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::config::TlsFilesConfig;

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {message}")]
    File {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("upstream.tls.ca_file {0}: no certificate in it")]
    NoCa(PathBuf),
    #[error("the system's CA certificates cannot be loaded: {0}")]
    SystemRoots(String),
    #[error("upstream.base_url: {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("upstream TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a new upstream connection is wrapped in.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The TLS client for `host` (the base URL's host, without brackets for IPv6).
    pub fn new(config: &TlsFilesConfig, host: &str) -> Result<Self, TlsError> {
        let roots = match &config.ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates("upstream.tls.ca_file", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("upstream.tls.ca_file", path, e))?;
                }
                if roots.is_empty() {
                    return Err(TlsError::NoCa(path.clone()));
                }
                roots
            }
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut client = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates("upstream.tls.cert_file", cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| file_error("upstream.tls.key_file", key, e))?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        // HTTP/1.1 only, as the pool speaks.
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsError::ServerName(host.to_string()))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    /// The TLS handshake on a new connection.
    pub async fn wrap(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = (found.errors.first())
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none found".into());
        return Err(TlsError::SystemRoots(why));
    }
    Ok(roots)
}

fn file_error(key: &'static str, path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}
