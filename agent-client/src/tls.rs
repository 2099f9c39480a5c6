//! TLS for `wss://`: rustls with the `ring` provider, the trust anchors the
//! application chose, and an optional client certificate.
//!
//! Trust is one of two sets: the web's root CAs (webpki-roots) when the
//! application names no CA, or *only* the CAs it names (a private PKI), with
//! the web roots added back on request. Naming a CA therefore narrows trust;
//! it never widens it silently.

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
    /// Whether the web roots are trusted; `None`: only when no CA is named.
    pub(crate) web_roots: Option<bool>,
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
    /// The trust anchors these options describe.
    fn roots(&self) -> Result<RootCertStore, Error> {
        let named_ca = !self.ca_files.is_empty() || !self.ca_pems.is_empty();
        let mut roots = RootCertStore::empty();
        if self.web_roots.unwrap_or(!named_ca) {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
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
        if roots.is_empty() {
            return Err(Error::Config(
                "TLS: no trust anchor (web roots turned off and no CA given)".into(),
            ));
        }
        Ok(roots)
    }

    /// The rustls configuration these options describe.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        if let Some(config) = &self.config {
            return Ok(Arc::clone(config));
        }
        let roots = self.roots()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    // A self-signed CA certificate (CN=unit-test CA), made once with openssl;
    // only its parsing matters here.
    const CA_PEM: &str = include_str!("../testdata/unit-ca.pem");

    #[test]
    fn a_named_ca_is_the_only_trust_anchor() {
        let only = TlsOptions {
            ca_pems: vec![CA_PEM.as_bytes().to_vec()],
            ..TlsOptions::default()
        };
        assert_eq!(only.roots().unwrap().len(), 1);
        assert!(only.client_config().is_ok());
    }

    #[test]
    fn web_roots_by_default_or_on_request() {
        let web = webpki_roots::TLS_SERVER_ROOTS.len();
        assert!(web > 10);
        assert_eq!(TlsOptions::default().roots().unwrap().len(), web);
        let both = TlsOptions {
            ca_pems: vec![CA_PEM.as_bytes().to_vec()],
            web_roots: Some(true),
            ..TlsOptions::default()
        };
        assert_eq!(both.roots().unwrap().len(), web + 1);
    }

    #[test]
    fn no_trust_anchor_at_all_is_a_config_error() {
        let none = TlsOptions {
            web_roots: Some(false),
            ..TlsOptions::default()
        };
        assert_eq!(none.roots().unwrap_err().code(), "CONFIG");
        assert_eq!(none.client_config().unwrap_err().code(), "CONFIG");
    }
}
