//! The TLS client settings every outbound connection uses (vendors, OAuth endpoints,
//! PostgreSQL): rustls with ring, the platform's root certificates, and an optional bundle of
//! extra CA certificates (a corporate proxy's, or a test server's).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// A client configuration trusting the platform's roots plus the CA certificates in the PEM
/// file `extra` (`what` names where that file came from, for errors). Where the platform has
/// no readable roots (a container without `ca-certificates`), Mozilla's roots are used.
pub fn client_config(extra: Option<&Path>, what: &str) -> Result<rustls::ClientConfig> {
    let mut roots = platform_roots();
    if let Some(path) = extra {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read {what} {}", path.display()))?
        {
            let cert =
                cert.with_context(|| format!("a certificate in {what} {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("a CA certificate in {what} {}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            bail!(
                "{what} {} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                path.display()
            );
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The operating system's trusted roots, read once per process.
fn platform_roots() -> RootCertStore {
    static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no root certificates in the platform's store ({} errors); using Mozilla's",
                    found.errors.len()
                );
                return RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
            }
            roots
        })
        .clone()
}
