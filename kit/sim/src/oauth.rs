//! The vendors' side of the OAuth 2 authorization-code flow, shared by the simulators: the
//! platform's registered apps, an authorize page where a person picks the account to grant and
//! allows or denies, and the code exchange with the checks a real authorization server makes
//! (client id and secret, the registered redirect URI, one use per code, a short life, PKCE
//! when a challenge was sent).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;

/// A platform's app registered with the vendor.
#[derive(Debug)]
struct App {
    secret: String,
    redirect_uri: String,
}

/// A code handed to the browser, waiting to be exchanged.
#[derive(Debug)]
struct Grant {
    account: usize,
    /// The scopes asked for, as given (`ManageLists,ImportSubscribers`).
    scope: String,
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    issued: Instant,
}

/// The authorize request's parameters the page carries through its form (hidden fields).
pub const AUTHORIZE_PARAMS: [&str; 6] = [
    "client_id",
    "scope",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// How long a code may wait to be exchanged (RFC 6749 recommends at most 10 minutes).
const CODE_LIFE: Duration = Duration::from_secs(600);

/// Apps and codes of one simulated vendor.
#[derive(Default, Debug)]
pub struct OAuthServer {
    apps: HashMap<String, App>,
    grants: HashMap<String, Grant>,
}

/// Why an exchange was refused, as `error` and `error_description`.
pub struct Refusal(pub &'static str, pub &'static str);

/// `application/x-www-form-urlencoded` (or a query string) as pairs.
pub fn form(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    super::form_decode(text)
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn random() -> String {
    format!("{:016x}{:016x}", rand_u64(), rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

impl OAuthServer {
    /// Registers an app whose only redirect URI is `redirect_uri`: (client id, client secret).
    pub fn register(&mut self, redirect_uri: &str) -> (String, String) {
        let (id, secret) = (random(), random());
        self.apps.insert(
            id.clone(),
            App {
                secret: secret.clone(),
                redirect_uri: redirect_uri.into(),
            },
        );
        (id, secret)
    }

    /// The authorize page for `query`, listing `accounts` (index, name) to grant. An unknown
    /// client or a redirect URI it did not register gets an error page, never a redirect.
    ///
    /// With `scopes`, the vendor's scopes: the request must ask for one or more of them
    /// (comma-separated), else it goes back to the app with `error=invalid_scope` (RFC 6749
    /// section 4.1.2.1).
    pub fn authorize_page(
        &self,
        vendor: &str,
        approve_path: &str,
        query: &str,
        accounts: &[(usize, String)],
        scopes: Option<&[&str]>,
    ) -> Response {
        let q = form(query);
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        let Some(app) = self.apps.get(get("client_id")) else {
            return (StatusCode::BAD_REQUEST, Html("<h1>Unknown client_id</h1>")).into_response();
        };
        if app.redirect_uri != get("redirect_uri") {
            return (
                StatusCode::BAD_REQUEST,
                Html("<h1>redirect_uri does not match the application's</h1>"),
            )
                .into_response();
        }
        if let Some(known) = scopes {
            let asked: Vec<&str> = get("scope").split(',').map(str::trim).collect();
            if asked.iter().any(|a| !known.contains(a)) {
                let separator = if app.redirect_uri.contains('?') {
                    '&'
                } else {
                    '?'
                };
                let target = format!(
                    "{}{separator}error=invalid_scope&state={}",
                    app.redirect_uri,
                    encode(get("state"))
                );
                return (StatusCode::SEE_OTHER, [("location", target)]).into_response();
            }
        }
        let hidden: String = AUTHORIZE_PARAMS
            .iter()
            .map(|k| {
                format!(
                    r#"<input type="hidden" name="{k}" value="{}">"#,
                    escape(get(k))
                )
            })
            .collect();
        let options: String = accounts
            .iter()
            .map(|(i, name)| format!(r#"<option value="{i}">{}</option>"#, escape(name)))
            .collect();
        Html(format!(
            r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Authorize · {vendor} (simulator)</title></head>
<body><h1>{vendor} (simulator)</h1><p>An application asks for access to your account.</p>
<form method="post" action="{approve_path}">{hidden}
<label for="account">Account</label> <select id="account" name="account">{options}</select>
<p><button type="submit" name="decision" value="allow" id="allow">Allow access</button>
<button type="submit" name="decision" value="deny" id="deny">Deny</button></p></form></body></html>"#
        ))
        .into_response()
    }

    /// The authorize page's answer: back to the app with a code (or `error=access_denied`).
    pub fn approve(&mut self, body: &[u8]) -> Response {
        let f = form(&String::from_utf8_lossy(body));
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        let (client_id, redirect_uri) = (get("client_id"), get("redirect_uri"));
        if self
            .apps
            .get(&client_id)
            .is_none_or(|a| a.redirect_uri != redirect_uri)
        {
            return (StatusCode::BAD_REQUEST, "unknown client or redirect_uri").into_response();
        }
        let state = encode(&get("state"));
        let separator = if redirect_uri.contains('?') { '&' } else { '?' };
        let target = if get("decision") == "allow" {
            let code = random();
            self.grants.insert(
                code.clone(),
                Grant {
                    account: get("account").parse().unwrap_or(0),
                    scope: get("scope"),
                    client_id,
                    redirect_uri: redirect_uri.clone(),
                    challenge: Some(get("code_challenge")).filter(|c| !c.is_empty()),
                    issued: Instant::now(),
                },
            );
            format!("{redirect_uri}{separator}code={code}&state={state}")
        } else {
            format!("{redirect_uri}{separator}error=access_denied&state={state}")
        };
        (StatusCode::SEE_OTHER, [("location", target)]).into_response()
    }

    /// A code for `account`, as if its owner allowed `client_id` on the authorize page, for
    /// `scope`.
    pub fn grant(
        &mut self,
        account: usize,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
    ) -> String {
        let code = random();
        self.grants.insert(
            code.clone(),
            Grant {
                account,
                scope: scope.into(),
                client_id: client_id.into(),
                redirect_uri: redirect_uri.into(),
                challenge: None,
                issued: Instant::now(),
            },
        );
        code
    }

    /// A token request with `grant_type=authorization_code`: the account the code grants, and
    /// the scopes it was asked for.
    pub fn exchange(&mut self, f: &HashMap<String, String>) -> Result<(usize, String), Refusal> {
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let app = self
            .apps
            .get(get("client_id"))
            .filter(|a| a.secret == get("client_secret"))
            .ok_or(Refusal("invalid_client", "Invalid client credentials"))?;
        let grant = self
            .grants
            .remove(get("code"))
            .filter(|g| g.issued.elapsed() < CODE_LIFE)
            .ok_or(Refusal(
                "invalid_grant",
                "Specified code was invalid or expired",
            ))?;
        if grant.client_id != get("client_id")
            || grant.redirect_uri != get("redirect_uri")
            || grant.redirect_uri != app.redirect_uri
        {
            return Err(Refusal(
                "invalid_grant",
                "The code was issued to another client or redirect_uri",
            ));
        }
        if let Some(challenge) = grant.challenge {
            use sha2::Digest as _;
            let verifier = get("code_verifier");
            let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if verifier.is_empty() || expected != challenge {
                return Err(Refusal("invalid_grant", "PKCE verification failed"));
            }
        }
        Ok((grant.account, grant.scope))
    }
}
