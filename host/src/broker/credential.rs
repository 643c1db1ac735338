//! The connection's credential on the way out, and none of it on the way back in.

use anyhow::{Result, bail};
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::contract::AuthScheme;
use crate::secret::Secret;

/// Headers a connector may not set (the broker owns credentials) and that never flow back to
/// it, so a credential can never be echoed into the sandbox.
const AUTH_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::PROXY_AUTHENTICATE,
    header::COOKIE,
    header::SET_COOKIE,
];

/// Removes every credential-bearing header.
pub fn strip(headers: &mut HeaderMap) {
    for name in &AUTH_HEADERS {
        headers.remove(name);
    }
}

/// The `Authorization` value for `secret` applied the way `auth` says, marked sensitive so
/// that it is never printed.
pub fn authorization(auth: &AuthScheme, secret: &Secret) -> Result<HeaderValue> {
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let value = match auth {
        AuthScheme::BasicSecretAsUser(password) => {
            format!("Basic {}", b64(format!("{}:{password}", secret.expose())))
        }
        AuthScheme::BasicSecretAsPassword(user) => {
            format!("Basic {}", b64(format!("{user}:{}", secret.expose())))
        }
        AuthScheme::Bearer => format!("Bearer {}", secret.expose()),
    };
    let Ok(mut value) = HeaderValue::from_str(&value) else {
        bail!("the credential contains characters that cannot be sent in an HTTP header");
    };
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_is_encoded_as_the_connector_declares() {
        let secret = Secret::new("k3y".into());
        let cm = authorization(&AuthScheme::BasicSecretAsUser("x".into()), &secret).unwrap();
        assert_eq!(cm.to_str().unwrap(), "Basic azN5Ong="); // base64("k3y:x")
        assert!(cm.is_sensitive());
        let mc = authorization(&AuthScheme::BasicSecretAsPassword("user".into()), &secret).unwrap();
        assert_eq!(mc.to_str().unwrap(), "Basic dXNlcjprM3k="); // base64("user:k3y")
        let bearer = authorization(&AuthScheme::Bearer, &secret).unwrap();
        assert_eq!(bearer.to_str().unwrap(), "Bearer k3y");
    }

    #[test]
    fn every_credential_header_is_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert("Authorization", HeaderValue::from_static("Basic eA=="));
        headers.insert("proxy-authorization", HeaderValue::from_static("x"));
        headers.insert("cookie", HeaderValue::from_static("session=1"));
        headers.insert("set-cookie", HeaderValue::from_static("session=1"));
        headers.insert("x-keep", HeaderValue::from_static("1"));
        strip(&mut headers);
        assert_eq!(headers.len(), 1);
    }
}
