//! Certificates for the TLS tests, made fresh per test with `rcgen`: a CA,
//! a server certificate and a client certificate it signed, and a second CA
//! with a server certificate of its own, for "signed by someone else".

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;

/// A folder of PEM files: `ca.pem`; `server.pem`/`server.key` and
/// `client.pem`/`client.key`, signed by it; `other-ca.pem`, and
/// `rogue.pem`/`rogue.key`, a server certificate that CA signed.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Generates every file. The server certificates are valid for
    /// `localhost` and `127.0.0.1`.
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let (ca_pem, ca) = authority("Sluice test CA");
        let (other_pem, other) = authority("Some other CA");
        write("ca.pem", &ca_pem);
        write("other-ca.pem", &other_pem);
        for (name, issuer) in [("server", &ca), ("client", &ca), ("rogue", &other)] {
            let (cert, key) = leaf(issuer, name);
            write(&format!("{name}.pem"), &cert);
            write(&format!("{name}.key"), &key);
        }
        Pki { dir }
    }

    /// The file `name` (e.g. `ca.pem`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `path(name)` as text, for configs.
    pub fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// A self-signed CA: its certificate, and the issuer that signs with it.
fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate for both server and client use, signed by `issuer`: its
/// PEM and its key's PEM.
fn leaf(issuer: &Issuer<'_, KeyPair>, name: &str) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}
