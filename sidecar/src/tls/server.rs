//! Serving TLS: `--tls-cert` and `--tls-key` (PEM files, e.g. a
//! `kubernetes.io/tls` Secret's `tls.crt` and `tls.key`) read and checked
//! once at start, so that a missing file, a file that is not PEM or a key
//! that is not the certificate's stops the server with one clear line
//! instead of failing every handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The flags of a TLS listener, shared by `worker` and `frontend`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsOptions {
    /// Serve HTTP and gRPC over TLS with this certificate chain (PEM, the
    /// server's certificate first, e.g. a kubernetes.io/tls Secret's
    /// tls.crt); needs --tls-key.
    #[arg(
        long,
        env = "CODED_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "CODED_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {error}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        /// In the message, not a `source`: `{:#}` would print it twice.
        error: std::io::Error,
    },
    #[error("the TLS {what} {} is not usable PEM: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the TLS key {} does not belong to the certificate {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the TLS certificate {} and key {} are not usable: {error}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    Incomplete,
}

/// A loaded certificate and key; cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// The TLS these flags ask for: none without them.
    pub fn from_options(options: &TlsOptions) -> Result<Option<ServerTls>, TlsError> {
        match (&options.tls_cert, &options.tls_key) {
            (Some(cert), Some(key)) => ServerTls::load(cert, key).map(Some),
            (None, None) => Ok(None),
            // clap refuses this; options built in code may not.
            _ => Err(TlsError::Incomplete),
        }
    }

    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        super::init();
        let cert_pem = read(cert, "certificate")?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert, "certificate", e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_error(
                cert,
                "certificate",
                "no CERTIFICATE in it".into(),
            ));
        }
        let key_pem = read(key, "key")?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            let reason = match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY in it".to_owned(),
                e => e.to_string(),
            };
            pem_error(key, "key", reason)
        })?;
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                },
                error => TlsError::Config {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    error,
                },
            })?;
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// An acceptor offering these ALPN protocols (`h2` for gRPC, whose
    /// clients insist on it; `http/1.1` for the HTTP listener).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    })
}

fn pem_error(path: &Path, what: &'static str, reason: String) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    }
}
