//! Renewing an OAuth access token with its refresh token (RFC 6749 section 6), for vendors
//! whose tokens expire. The host does it, never a connector: connectors see no credential.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use crate::broker::{DialPolicy, Network, SendError, Transport, is_loopback_name};
use crate::failure::Unavailable;
use crate::secret::Secret;
use crate::state::TokenRefresh;
use crate::text;

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

/// Exchanges the refresh token for a new access token, over the host's network (so the
/// token endpoint's addresses are checked like a vendor's). The token URL is the one an
/// administrator saved: https, or a loopback simulator.
pub async fn refresh(network: &Network, refresh: &TokenRefresh) -> Result<Tokens> {
    let shown = text::clean(&refresh.token_url, text::MAX_MESSAGE_CHARS);
    let uri: http::Uri = refresh
        .token_url
        .parse()
        .with_context(|| format!("the token URL `{shown}` is not a URL"))?;
    let secure = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = is_loopback_name(host);
    if !secure && !loopback {
        bail!("the token URL `{shown}` is not https; refresh tokens are only sent over TLS");
    }
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let dial = DialPolicy {
        loopback: loopback.then(|| (host.to_ascii_lowercase(), port)),
    };
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
        .body(Bytes::from(body))?;
    let response = match network.transport(dial, 0).send(request, TIMEOUT).await {
        Ok(response) => response,
        Err(SendError::Refused(why)) => bail!("the host refused {why}"),
        Err(SendError::Failed(e)) => {
            return Err(
                Unavailable(format!("the token endpoint could not be reached: {e}")).into(),
            );
        }
    };
    let (head, body) = response.into_parts();
    let collected = tokio::time::timeout(TIMEOUT, Limited::new(body, 64 << 10).collect())
        .await
        .map_err(|_| Unavailable("the token endpoint's answer did not arrive in time".into()))?;
    let bytes = collected
        .map_err(|e| Unavailable(format!("reading the token endpoint's answer failed: {e}")))?
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
            text::clean(&answer.error.unwrap_or_default(), text::MAX_LABEL_CHARS),
            text::clean(
                &answer.error_description.unwrap_or_default(),
                text::MAX_MESSAGE_CHARS
            )
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
