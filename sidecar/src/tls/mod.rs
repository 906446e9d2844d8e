//! TLS, both ways. Outgoing https (weights, object storage, https
//! instances) goes through rustls with ring, installed as the process
//! default by [`init`] before any client is built (reqwest is built without
//! a provider of its own, which would need cmake and a C toolchain for
//! aws-lc); [`ClientTrust`] adds the CAs of `--tls-ca` to the system roots.
//! Serving TLS (`--tls-cert`, `--tls-key`) is [`ServerTls`]: the
//! certificate and key loaded and checked at start, then a [`TlsListener`]
//! under the HTTP and the gRPC listener alike.

pub mod client;
pub mod listener;
pub mod server;

pub use client::{ClientTrust, TrustError};
pub use listener::TlsListener;
pub use server::{ServerTls, TlsError, TlsOptions};

/// Installs the provider; idempotent and cheap.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider is already installed: also fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
