//! TLS for `wss://`: rustls with the `ring` provider, a PEM certificate chain
//! and private key (or a ready `ServerConfig`), and optional client
//! certificates verified against a CA (mutual TLS).

use std::path::PathBuf;
use std::sync::Arc;

use agent_protocol::Error;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// Where the server's certificate and key come from.
#[derive(Clone)]
pub(crate) enum Identity {
    Files { cert: PathBuf, key: PathBuf },
    Pem { cert: Vec<u8>, key: Vec<u8> },
}

/// TLS settings collected by the builder.
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    pub(crate) identity: Option<Identity>,
    pub(crate) client_ca: Vec<Vec<u8>>,
    pub(crate) config: Option<Arc<ServerConfig>>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{what}: no certificate in PEM")));
    }
    Ok(certs)
}

impl TlsSettings {
    /// The rustls configuration, or `None` for plain `ws://`.
    pub(crate) fn server_config(&self) -> Result<Option<Arc<ServerConfig>>, Error> {
        if let Some(config) = &self.config {
            return Ok(Some(Arc::clone(config)));
        }
        let Some(identity) = &self.identity else {
            if !self.client_ca.is_empty() {
                return Err(Error::Config(
                    "client certificate CAs need a server certificate and key".into(),
                ));
            }
            return Ok(None);
        };
        let (cert_pem, key_pem) = match identity {
            Identity::Files { cert, key } => {
                (read(cert, "certificate file")?, read(key, "key file")?)
            }
            Identity::Pem { cert, key } => (cert.clone(), key.clone()),
        };
        let chain = certs(&cert_pem, "server certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| Error::Config("server key: no private key in PEM".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        let builder = if self.client_ca.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            for pem in &self.client_ca {
                for cert in certs(pem, "client CA")? {
                    roots
                        .add(cert)
                        .map_err(|e| Error::Config(format!("client CA: {e}")))?;
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::Config(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| Error::Config(format!("server certificate and key: {e}")))?;
        Ok(Some(Arc::new(config)))
    }
}
