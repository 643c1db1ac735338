//! HTTPS for the simulators: a certificate authority made at start, whose certificate the
//! host and tests are handed (as a PEM file for `ca_bundle`), and a server certificate it
//! signed for loopback and the vendors' own names. The servers offer HTTP/2 and HTTP/1.1 by
//! ALPN, as the vendors do.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Names the server certificate holds besides 127.0.0.1 and localhost: the vendors' hosts,
/// for tests that resolve them to loopback.
const VENDOR_NAMES: &[&str] = &[
    "api.createsend.com",
    "*.api.mailchimp.com",
    "login.mailchimp.com",
];

/// A test CA and the TLS settings of servers holding a certificate it signed.
pub struct TestCa {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

/// The server certificate a test CA signs, for tests of certificates a client must refuse.
pub struct ServerCertificate {
    /// The names it holds (DNS names or IP addresses).
    pub names: Vec<String>,
    /// Out of date: valid only in the year 2000.
    pub expired: bool,
}

impl Default for ServerCertificate {
    /// For loopback and the vendors' names, valid now.
    fn default() -> Self {
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        names.extend(VENDOR_NAMES.iter().map(|n| n.to_string()));
        ServerCertificate {
            names,
            expired: false,
        }
    }
}

impl TestCa {
    /// A new CA (ECDSA P-256), and a server certificate for loopback and the vendors' names.
    pub fn generate() -> Result<Arc<TestCa>> {
        TestCa::generate_with(ServerCertificate::default())
    }

    /// A new CA, and the server certificate `server` describes.
    pub fn generate_with(server: ServerCertificate) -> Result<Arc<TestCa>> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "connector host test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let mut leaf = CertificateParams::new(server.names)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "vendor simulator");
        if server.expired {
            leaf.not_before = rcgen::date_time_ymd(2000, 1, 1);
            leaf.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &ca)?;

        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(TestCa {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }))
    }

    /// The CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA's certificate to `path` (for `ca_bundle` / `--ca-bundle`).
    pub fn write_ca(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.ca_pem).with_context(|| format!("writing {}", path.display()))
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}
