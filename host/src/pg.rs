//! Reaching PostgreSQL, for the store and for a profile source alike: connection settings
//! from a URL (with timeouts that notice a silent server), TLS, a URL fit to print, and which
//! errors mean "out of reach for now".

use std::time::Duration;

use anyhow::{Context, Result};

/// The connection settings of a `postgres://` URL. A password is best not written in it (it
/// would show in process lists and settings): without one, `PGPASSWORD` gives it, as for
/// PostgreSQL's own tools.
pub fn postgres_config(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("`{}` is not a PostgreSQL URL", redacted(url)))?;
    if config.get_password().is_none()
        && let Some(password) = std::env::var_os("PGPASSWORD")
    {
        config.password(password.as_encoded_bytes());
    }
    // A server that went away without a word (a cut network, a machine lost) is noticed in
    // seconds, not hours: connecting, an unanswered write and an idle connection each have a
    // deadline, unless the URL sets its own.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(20));
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(10));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(5));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    Ok(config)
}

/// TLS for connections to PostgreSQL (used as the URL's `sslmode` says: `prefer` by default,
/// `require` to refuse a server without it): the platform's public roots, plus the CA
/// certificates in the PEM file `PGSSLROOTCERT` names, for a private CA.
pub fn postgres_tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let extra = match std::env::var_os("PGSSLROOTCERT") {
        Some(path) => crate::tls::read_bundle(std::path::Path::new(&path), "PGSSLROOTCERT")?,
        None => vec![],
    };
    let config = crate::tls::client_config(&extra);
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `url` with its password replaced, fit to print.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:***@{host}{path}")
                }
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// Whether `error` is the database being out of reach for a while (a restart, a dropped
/// connection, a pool with no connection to give) rather than a statement it refused: the
/// same work may succeed once it is back.
pub fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
            if e.is_closed() {
                return true;
            }
            if let Some(code) = e.code() {
                let code = code.code();
                // Connection exceptions, admin shutdown / crash recovery / cannot connect
                // now, too many connections, serialisation failures.
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "53300"
                    || code == "40001"
                    || code == "40P01"
                {
                    return true;
                }
            }
        }
        cause
            .downcast_ref::<deadpool_postgres::PoolError>()
            .is_some()
            || cause.downcast_ref::<std::io::Error>().is_some()
    })
}
