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

/// Header names a connector may not carry its credential in: those that route, frame or
/// secure the request, or that proxies and servers read on its way.
const RESERVED: [&str; 16] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "forwarded",
    "via",
    "cookie",
    "set-cookie",
    "www-authenticate",
];

/// Removes every credential-bearing header: the usual ones, and `also` (the header a
/// connector's scheme names).
pub fn strip(headers: &mut HeaderMap, also: Option<&HeaderName>) {
    for name in AUTH_HEADERS.iter().chain(also) {
        headers.remove(name);
    }
}

/// The header a connector names for its credential, if a credential may go there: a valid
/// header name that neither routes nor frames the request (`Host`, `Content-Length`,
/// hop-by-hop and proxy headers...), with a prefix that can be sent. Checked when the
/// connector is loaded.
pub fn check_header(name: &str, prefix: &str) -> std::result::Result<HeaderName, String> {
    let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
        return Err(format!(
            "`{}` is not an HTTP header name",
            crate::text::clean(name, 80)
        ));
    };
    let lower = parsed.as_str();
    if RESERVED.contains(&lower)
        || lower.starts_with("proxy-")
        || lower.starts_with("x-forwarded-")
        || lower.starts_with("sec-")
    {
        return Err(format!(
            "the credential may not go in the `{lower}` header: the host and the network on the way read it"
        ));
    }
    if prefix.chars().any(char::is_control) || prefix.len() > 64 {
        return Err("the credential's prefix must be at most 64 characters, none of them control characters".into());
    }
    Ok(parsed)
}

/// The header carrying `secret` the way `auth` says, its value marked sensitive so that it is
/// never printed.
pub fn authorization(auth: &AuthScheme, secret: &Secret) -> Result<(HeaderName, HeaderValue)> {
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let mut name = header::AUTHORIZATION;
    let value = match auth {
        AuthScheme::BasicSecretAsUser(password) => {
            format!("Basic {}", b64(format!("{}:{password}", secret.expose())))
        }
        AuthScheme::BasicSecretAsPassword(user) => {
            format!("Basic {}", b64(format!("{user}:{}", secret.expose())))
        }
        AuthScheme::Bearer => format!("Bearer {}", secret.expose()),
        AuthScheme::Header(custom) => {
            name = match check_header(&custom.name, &custom.prefix) {
                Ok(name) => name,
                Err(why) => bail!("{why}"),
            };
            format!("{}{}", custom.prefix, secret.expose())
        }
    };
    let Ok(mut value) = HeaderValue::from_str(&value) else {
        bail!("the credential contains characters that cannot be sent in an HTTP header");
    };
    value.set_sensitive(true);
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_is_encoded_as_the_connector_declares() {
        let secret = Secret::new("k3y".into());
        let (name, cm) =
            authorization(&AuthScheme::BasicSecretAsUser("x".into()), &secret).unwrap();
        assert_eq!(name, header::AUTHORIZATION);
        assert_eq!(cm.to_str().unwrap(), "Basic azN5Ong="); // base64("k3y:x")
        assert!(cm.is_sensitive());
        let (_, mc) =
            authorization(&AuthScheme::BasicSecretAsPassword("user".into()), &secret).unwrap();
        assert_eq!(mc.to_str().unwrap(), "Basic dXNlcjprM3k="); // base64("user:k3y")
        let (_, bearer) = authorization(&AuthScheme::Bearer, &secret).unwrap();
        assert_eq!(bearer.to_str().unwrap(), "Bearer k3y");
        let header = |name: &str, prefix: &str| {
            AuthScheme::Header(crate::contract::HeaderAuth {
                name: name.into(),
                prefix: prefix.into(),
            })
        };
        let (name, brevo) = authorization(&header("api-key", ""), &secret).unwrap();
        assert_eq!((name.as_str(), brevo.to_str().unwrap()), ("api-key", "k3y"));
        assert!(brevo.is_sensitive());
        let (name, klaviyo) =
            authorization(&header("Authorization", "Klaviyo-API-Key "), &secret).unwrap();
        assert_eq!(name, header::AUTHORIZATION);
        assert_eq!(klaviyo.to_str().unwrap(), "Klaviyo-API-Key k3y");
    }

    #[test]
    fn a_header_that_routes_or_frames_the_request_cannot_carry_the_credential() {
        for refused in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "Cookie",
            "Proxy-Authorization",
            "X-Forwarded-For",
            "bad header",
            "",
        ] {
            assert!(check_header(refused, "").is_err(), "{refused}");
        }
        assert!(check_header("api-key", "line\r\nbreak").is_err());
        assert!(check_header("Api-Token", "").is_ok());
    }

    #[test]
    fn every_credential_header_is_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert("Authorization", HeaderValue::from_static("Basic eA=="));
        headers.insert("proxy-authorization", HeaderValue::from_static("x"));
        headers.insert("cookie", HeaderValue::from_static("session=1"));
        headers.insert("set-cookie", HeaderValue::from_static("session=1"));
        headers.insert("x-keep", HeaderValue::from_static("1"));
        headers.insert("api-key", HeaderValue::from_static("k3y"));
        strip(&mut headers, Some(&HeaderName::from_static("api-key")));
        assert_eq!(headers.len(), 1);
    }
}
