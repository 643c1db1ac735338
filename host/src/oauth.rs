//! OAuth 2 for vendor connections, done by the host and never by a connector (connectors see
//! no credential): the authorization-code flow (RFC 6749 section 4.1, with `state`, and PKCE,
//! RFC 7636, where the vendor supports it), renewing an access token with its refresh token
//! (section 6), and the vendor's metadata call that says where an account lives (Mailchimp's
//! data centre).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::broker::{DialPolicy, Network, SendError, Transport, is_loopback_name};
use crate::failure::Unavailable;
use crate::secret::Secret;
use crate::secret::TokenRefresh;
use crate::text;

/// What the token endpoint gave back.
pub struct Tokens {
    pub access_token: Secret,
    /// A new refresh token, when the vendor rotates them.
    pub refresh_token: Option<Secret>,
    /// `None` when the token does not expire (Mailchimp answers `expires_in: 0`).
    pub expires_in: Option<Duration>,
}

/// A platform's OAuth application registered with a vendor, for one connector: where its
/// authorize page, token endpoint and (optionally) metadata endpoint are, and its client id.
/// The client secret is kept apart, sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OAuthApp {
    pub connector: String,
    pub client_id: String,
    pub authorize_url: String,
    pub token_url: String,
    /// Called with the new token to learn the account's data centre (`dc` in the answer).
    pub metadata_url: Option<String>,
    /// Scopes to ask for, as the vendor writes them (Campaign Monitor: comma-separated).
    pub scope: Option<String>,
    /// Send a PKCE challenge (only where the vendor supports it).
    pub pkce: bool,
    /// The API base URL of connections made through this app, when not the connector's own
    /// (a simulator's); `{dc}` stands for the data centre.
    pub base_url: Option<String>,
}

impl OAuthApp {
    /// The vendor's documented endpoints for a connector this host knows, with `client_id`.
    /// Campaign Monitor: `/oauth` and `/oauth/token` on api.createsend.com, scopes
    /// `ManageLists,ImportSubscribers`. Mailchimp: login.mailchimp.com's `/oauth2/authorize`,
    /// `/oauth2/token` and `/oauth2/metadata` (no scopes). Neither documents PKCE.
    pub fn known(connector: &str, client_id: &str) -> Option<OAuthApp> {
        let (authorize, token, metadata, scope) = match connector {
            "campaign-monitor" => (
                "https://api.createsend.com/oauth",
                "https://api.createsend.com/oauth/token",
                None,
                Some("ManageLists,ImportSubscribers"),
            ),
            "mailchimp" => (
                "https://login.mailchimp.com/oauth2/authorize",
                "https://login.mailchimp.com/oauth2/token",
                Some("https://login.mailchimp.com/oauth2/metadata"),
                None,
            ),
            _ => return None,
        };
        Some(OAuthApp {
            connector: connector.into(),
            client_id: client_id.into(),
            authorize_url: authorize.into(),
            token_url: token.into(),
            metadata_url: metadata.map(Into::into),
            scope: scope.map(Into::into),
            pkce: false,
            base_url: None,
        })
    }

    /// Checks the URLs: each https, or http on loopback (a simulator).
    pub fn check(&self) -> Result<()> {
        if self.client_id.trim().is_empty() {
            bail!("the OAuth client id is empty");
        }
        for url in [
            Some(&self.authorize_url),
            Some(&self.token_url),
            self.metadata_url.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            endpoint(url)?;
        }
        Ok(())
    }
}

/// One sign-in with a vendor under way: what goes in the authorize URL, and what must come
/// back with the code.
pub struct Authorization {
    /// Where to send the person's browser.
    pub url: String,
    /// The `state` the vendor hands back: ties the answer to this request (CSRF).
    pub state: String,
    /// The PKCE verifier, when the app uses PKCE.
    pub verifier: Option<Secret>,
}

/// Starts the authorization-code flow: the authorize URL with a fresh `state` (and PKCE
/// challenge), for the browser to visit.
pub fn authorize(app: &OAuthApp, redirect_uri: &str) -> Result<Authorization> {
    endpoint(&app.authorize_url)?;
    let state = random_text();
    let verifier = app.pkce.then(random_text);
    let mut query = vec![
        ("response_type", "code".to_string()),
        ("client_id", app.client_id.clone()),
        ("redirect_uri", redirect_uri.to_string()),
        ("state", state.clone()),
    ];
    if let Some(scope) = &app.scope {
        query.push(("scope", scope.clone()));
    }
    if let Some(verifier) = &verifier {
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        query.push(("code_challenge", challenge));
        query.push(("code_challenge_method", "S256".into()));
    }
    let separator = if app.authorize_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "{}{separator}{}",
        app.authorize_url,
        query
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    );
    Ok(Authorization {
        state,
        verifier: verifier.map(Secret::new),
        url,
    })
}

/// Exchanges an authorization code for tokens at the app's token endpoint.
pub async fn exchange_code(
    network: &Network,
    app: &OAuthApp,
    client_secret: &Secret,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&Secret>,
) -> Result<Tokens> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", app.client_id.as_str()),
        ("client_secret", client_secret.expose()),
        ("redirect_uri", redirect_uri),
        ("code", code),
    ];
    if let Some(verifier) = verifier {
        form.push(("code_verifier", verifier.expose()));
    }
    token_request(network, &app.token_url, &form, "the authorization code").await
}

/// Exchanges the refresh token for a new access token, over the host's network (so the
/// token endpoint's addresses are checked like a vendor's). The token URL is the one an
/// administrator saved: https, or a loopback simulator.
pub async fn refresh(network: &Network, refresh: &TokenRefresh) -> Result<Tokens> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.refresh_token.expose()),
    ];
    token_request(network, &refresh.token_url, &form, "the refresh").await
}

/// The data centre of the account an access token belongs to, from the vendor's metadata
/// endpoint (Mailchimp: `Authorization: OAuth <token>`, answer `{"dc": "us21", ...}`; a bad
/// token is an `error` in the body, whatever the status).
pub async fn data_centre(network: &Network, metadata_url: &str, token: &Secret) -> Result<String> {
    #[derive(Deserialize)]
    struct Metadata {
        dc: Option<String>,
        error: Option<String>,
        error_description: Option<String>,
    }
    let (uri, dial) = endpoint(metadata_url)?;
    let request = http::Request::get(uri)
        .header(
            http::header::AUTHORIZATION,
            format!("OAuth {}", token.expose()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Bytes::new())?;
    let (status, bytes) = send(network, dial, request, "the metadata endpoint").await?;
    let answer: Metadata = serde_json::from_slice(&bytes)
        .with_context(|| format!("the metadata endpoint answered HTTP {status} without JSON"))?;
    match answer.dc {
        Some(dc)
            if status.is_success()
                && answer.error.is_none()
                && !dc.is_empty()
                && dc.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            Ok(dc)
        }
        _ => bail!(
            "the metadata endpoint did not say where the account is (HTTP {status}): {} {}",
            text::clean(&answer.error.unwrap_or_default(), text::MAX_LABEL_CHARS),
            text::clean(
                &answer.error_description.unwrap_or_default(),
                text::MAX_MESSAGE_CHARS
            )
        ),
    }
}

/// A form POST to a token endpoint, its JSON answer as tokens.
async fn token_request(
    network: &Network,
    token_url: &str,
    form: &[(&str, &str)],
    what: &str,
) -> Result<Tokens> {
    #[derive(Deserialize)]
    struct TokenAnswer {
        access_token: Option<String>,
        refresh_token: Option<String>,
        expires_in: Option<u64>,
        error: Option<String>,
        error_description: Option<String>,
    }
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let (uri, dial) = endpoint(token_url)?;
    let request = http::Request::post(uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Bytes::from(body))?;
    let (status, bytes) = send(network, dial, request, "the token endpoint").await?;
    let answer: TokenAnswer = serde_json::from_slice(&bytes).with_context(|| {
        format!("the token endpoint answered HTTP {status} without a JSON token")
    })?;
    match answer.access_token {
        Some(token) if status.is_success() && !token.is_empty() => Ok(Tokens {
            access_token: Secret::new(token),
            refresh_token: answer
                .refresh_token
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            expires_in: answer
                .expires_in
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        }),
        _ => bail!(
            "the token endpoint refused {what} (HTTP {status}): {} {}",
            text::clean(&answer.error.unwrap_or_default(), text::MAX_LABEL_CHARS),
            text::clean(
                &answer.error_description.unwrap_or_default(),
                text::MAX_MESSAGE_CHARS
            )
        ),
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// A vendor OAuth endpoint as a URI and the dial policy for it: https, or plain http to a
/// loopback simulator (tokens never cross a network in the clear).
fn endpoint(url: &str) -> Result<(http::Uri, DialPolicy)> {
    let shown = text::clean(url, text::MAX_MESSAGE_CHARS);
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("the OAuth URL `{shown}` is not a URL"))?;
    let secure = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = is_loopback_name(host);
    if !(secure || loopback && uri.scheme_str() == Some("http")) {
        bail!("the OAuth URL `{shown}` is not https; tokens are only sent over TLS");
    }
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let dial = DialPolicy {
        loopback: loopback.then(|| (host.to_ascii_lowercase(), port)),
    };
    Ok((uri, dial))
}

/// Sends one request to an OAuth endpoint through the host's network; status and body.
async fn send(
    network: &Network,
    dial: DialPolicy,
    request: http::Request<Bytes>,
    who: &str,
) -> Result<(http::StatusCode, Bytes)> {
    let response = match network.transport(dial, 0).send(request, TIMEOUT).await {
        Ok(response) => response,
        Err(SendError::Refused(why)) => bail!("the host refused {why}"),
        Err(SendError::Failed(e)) => {
            return Err(Unavailable(format!("{who} could not be reached: {e}")).into());
        }
    };
    let (head, body) = response.into_parts();
    let collected = tokio::time::timeout(TIMEOUT, Limited::new(body, 64 << 10).collect())
        .await
        .map_err(|_| Unavailable(format!("{who}'s answer did not arrive in time")))?;
    let bytes = collected
        .map_err(|e| Unavailable(format!("reading {who}'s answer failed: {e}")))?
        .to_bytes();
    Ok((head.status, bytes))
}

/// 256 random bits, base64url (a `state`, a PKCE verifier).
fn random_text() -> String {
    use chacha20poly1305::aead::OsRng;
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `application/x-www-form-urlencoded` value encoding.
pub fn form_encode(value: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_carries_state_scope_and_a_pkce_challenge() {
        let mut app = OAuthApp::known("campaign-monitor", "cid 1").unwrap();
        app.pkce = true;
        let a = authorize(&app, "https://cdp.example/oauth/callback").unwrap();
        assert!(a.url.starts_with("https://api.createsend.com/oauth?response_type=code&client_id=cid%201&redirect_uri=https%3A%2F%2Fcdp.example%2Foauth%2Fcallback&state="), "{}", a.url);
        assert!(a.url.contains("&scope=ManageLists%2CImportSubscribers"));
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(
            a.verifier.as_ref().unwrap().expose().as_bytes(),
        ));
        assert!(a.url.ends_with(&format!(
            "&code_challenge={challenge}&code_challenge_method=S256"
        )));
        assert_ne!(a.state, authorize(&app, "x").unwrap().state);
    }

    #[test]
    fn oauth_endpoints_must_be_tls_unless_on_loopback() {
        assert!(endpoint("https://login.mailchimp.com/oauth2/token").is_ok());
        assert!(endpoint("http://127.0.0.1:9/oauth2/token").is_ok());
        let e = endpoint("http://login.mailchimp.com/oauth2/token").unwrap_err();
        assert!(e.to_string().contains("not https"), "{e}");
        assert!(endpoint("ftp://127.0.0.1/x").is_err());
    }
}
