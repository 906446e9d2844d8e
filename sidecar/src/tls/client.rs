//! Whom outgoing https trusts: the system roots, plus the CAs of
//! `--tls-ca` (a PEM bundle, e.g. the `ca.crt` of the Secret that signed
//! the workers' certificates).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the CA bundle {}: {error}", path.display())]
    Read {
        path: PathBuf,
        /// In the message, not a `source`: `{:#}` would print it twice.
        error: std::io::Error,
    },
    #[error("the CA bundle {} is not usable PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
}

/// Extra roots for https calls; the default trusts the system roots only.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ClientTrust {
    roots: Arc<Vec<reqwest::Certificate>>,
}

impl ClientTrust {
    /// The system roots and, with a path, every certificate of that bundle.
    pub fn from_ca_file(path: Option<&Path>) -> Result<ClientTrust, TrustError> {
        let Some(path) = path else {
            return Ok(ClientTrust::default());
        };
        let pem = std::fs::read(path).map_err(|error| TrustError::Read {
            path: path.to_owned(),
            error,
        })?;
        let bad = |reason: String| TrustError::Pem {
            path: path.to_owned(),
            reason,
        };
        let ders = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if ders.is_empty() {
            return Err(bad("no CERTIFICATE in it".into()));
        }
        let roots = ders
            .iter()
            .map(|der| reqwest::Certificate::from_der(der).map_err(|e| bad(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientTrust {
            roots: Arc::new(roots),
        })
    }

    /// `builder` trusting these roots besides the system's.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        super::init();
        if self.roots.is_empty() {
            return builder;
        }
        builder.tls_certs_merge(self.roots.iter().cloned())
    }
}
