//! Certificates made for a test: a CA, and a server certificate it signs
//! for the given DNS names, as PEM files in a temporary directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct Certs {
    /// Holds the files; removed when dropped.
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make(names: &[&str]) -> Certs {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "coded-serving test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(names)
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");

    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    Certs {
        ca: write("ca.crt", ca_cert.pem()),
        cert: write("tls.crt", cert.pem()),
        key: write("tls.key", key.serialize_pem()),
        dir,
    }
}
