//! TLS for outgoing https (weights, object storage, https instances): rustls
//! with ring, installed as the process default before any client is built
//! (reqwest is built without a provider of its own, which would need cmake
//! and a C toolchain for aws-lc).

/// Installs the provider; idempotent and cheap.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider is already installed: also fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
