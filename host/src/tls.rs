//! The TLS client settings every outbound connection uses (vendors, OAuth endpoints,
//! PostgreSQL): rustls with ring, the platform's root certificates, and an optional bundle of
//! extra CA certificates (a corporate proxy's, or a test server's).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The CA certificates in the PEM file `path` (`what` names where the file came from, for
/// errors): read when the host starts, so a bad bundle is reported before any run.
pub fn read_bundle(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .map(|cert| cert.with_context(|| format!("a certificate in {what} {}", path.display())))
        .collect::<Result<Vec<_>>>()?;
    if certs.is_empty() {
        bail!(
            "{what} {} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
            path.display()
        );
    }
    // Each must be usable as a trust anchor.
    let mut check = RootCertStore::empty();
    for cert in &certs {
        check
            .add(cert.clone())
            .with_context(|| format!("a CA certificate in {what} {}", path.display()))?;
    }
    Ok(certs)
}

/// A client configuration trusting the platform's roots plus `extra` (from [`read_bundle`]).
/// Where the platform has no readable roots (a container without `ca-certificates`),
/// Mozilla's roots are used.
pub fn client_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = platform_roots().clone();
    for cert in extra {
        // `read_bundle` checked each.
        let _ = roots.add(cert.clone());
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The operating system's trusted roots, read once per process, when first needed (reading
/// them takes milliseconds that commands which never go online should not pay).
fn platform_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
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
}
