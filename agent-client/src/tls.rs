//! TLS for `wss://`: rustls with the `ring` provider, the web's root CAs plus
//! any the application adds, and an optional client certificate.

use std::path::PathBuf;
use std::sync::Arc;

use agent_protocol::Error;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// TLS settings collected by the builder.
#[derive(Default, Clone)]
pub(crate) struct TlsOptions {
    pub(crate) ca_files: Vec<PathBuf>,
    pub(crate) ca_pems: Vec<Vec<u8>>,
    pub(crate) client_cert: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) config: Option<Arc<ClientConfig>>,
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

impl TlsOptions {
    /// The rustls configuration these options describe.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        if let Some(config) = &self.config {
            return Ok(Arc::clone(config));
        }
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut pems: Vec<(String, Vec<u8>)> = Vec::new();
        for path in &self.ca_files {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Config(format!("CA file {}: {e}", path.display())))?;
            pems.push((format!("CA file {}", path.display()), pem));
        }
        for pem in &self.ca_pems {
            pems.push(("CA PEM".to_owned(), pem.clone()));
        }
        for (what, pem) in pems {
            for cert in certs(&pem, &what)? {
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("{what}: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain = certs(chain, "client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|_| Error::Config("client key: no private key in PEM".into()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Config(format!("client certificate: {e}")))?
            }
        };
        Ok(Arc::new(config))
    }
}
