//! Renewing an OAuth access token with its refresh token (RFC 6749 section 6), for vendors
//! whose tokens expire. The host does it, never a connector: connectors see no credential.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use wasmtime_wasi_http::RequestOptions;

use crate::broker::is_loopback;
use crate::secret::Secret;
use crate::state::TokenRefresh;

/// What the token endpoint gave back.
pub struct Tokens {
    pub access_token: Secret,
    /// A new refresh token, when the vendor rotates them.
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<Duration>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Exchanges the refresh token for a new access token.
pub async fn refresh(refresh: &TokenRefresh) -> Result<Tokens> {
    let uri: http::Uri = refresh
        .token_url
        .parse()
        .with_context(|| format!("the token URL `{}` is not a URL", refresh.token_url))?;
    let secure = uri.scheme_str() == Some("https");
    if !secure && !is_loopback(uri.host().unwrap_or_default()) {
        bail!(
            "the token URL `{}` is not https; refresh tokens are only sent over TLS",
            refresh.token_url
        );
    }
    let body = format!(
        "grant_type=refresh_token&refresh_token={}",
        form_encode(refresh.refresh_token.expose())
    );
    let request = http::Request::post(uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )?;
    let options = RequestOptions {
        connect_timeout: Some(TIMEOUT),
        first_byte_timeout: Some(TIMEOUT),
        between_bytes_timeout: Some(TIMEOUT),
    };
    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options))
        .await
        .map_err(|e| anyhow::anyhow!("the token endpoint could not be reached: {e:?}"))?;
    let (head, body) = response.into_parts();
    // The body only arrives while the connection is driven, so read both together.
    let (collected, _) = tokio::join!(Limited::new(body, 64 << 10).collect(), io);
    let bytes = collected
        .map_err(|e| anyhow::anyhow!("reading the token endpoint's answer failed: {e}"))?
        .to_bytes();
    let answer: TokenAnswer = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "the token endpoint answered HTTP {} without a JSON token",
            head.status
        )
    })?;
    match answer.access_token {
        Some(token) if head.status.is_success() => Ok(Tokens {
            access_token: Secret::new(token),
            refresh_token: answer.refresh_token.map(Secret::new),
            expires_in: answer.expires_in.map(Duration::from_secs),
        }),
        _ => bail!(
            "the token endpoint refused the refresh (HTTP {}): {} {}",
            head.status,
            answer.error.unwrap_or_default(),
            answer.error_description.unwrap_or_default()
        ),
    }
}

/// `application/x-www-form-urlencoded` value encoding.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
