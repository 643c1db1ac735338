//! Who is asking: an API token (`Authorization: Bearer cht_...`) for programs, or the
//! console's session cookie (HttpOnly, SameSite=Lax) whose changes must carry the
//! session's CSRF token; the sign-in form itself carries a token tied to the browser. Failed
//! sign-ins are limited per client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use connector_host::Actor;

use crate::Server;
use crate::problem::Problem;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "connector_host_session";
/// The header a script sends the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Failed sign-ins one client address may make in [`WINDOW`] before it must wait.
pub const MAX_FAILURES: usize = 10;
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Recent failed sign-ins, per client address.
#[derive(Default)]
pub struct Limiter {
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl Limiter {
    /// Refuses a client that failed too often lately, saying when to come back.
    pub fn check(&self, ip: IpAddr) -> Result<(), Problem> {
        let mut failures = self.failures.lock().unwrap();
        let now = Instant::now();
        let list = failures.entry(ip).or_default();
        list.retain(|t| now.duration_since(*t) < WINDOW);
        if list.is_empty() {
            // Addresses whose failures are all old are forgotten.
            failures.remove(&ip);
            return Ok(());
        }
        if list.len() >= MAX_FAILURES {
            let wait = WINDOW.saturating_sub(now.duration_since(list[0]));
            let mut problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed sign-ins from this address; try again in {} s",
                    wait.as_secs() + 1
                ),
            );
            problem.retry_after = Some(wait.as_secs() + 1);
            return Err(problem);
        }
        Ok(())
    }

    /// Counts a failed sign-in.
    pub fn failed(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap()
            .entry(ip)
            .or_default()
            .push(Instant::now());
    }
}

/// How the caller signed in.
pub enum Via {
    Token,
    Session { id: String, csrf: String },
}

/// A signed-in caller.
pub struct Caller {
    pub actor: Actor,
    pub via: Via,
}

impl Caller {
    /// The CSRF token forms must carry (empty for token callers, who need none).
    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Session { csrf, .. } => csrf,
            Via::Token => "",
        }
    }

    /// Checks a form's CSRF token against the session's.
    pub fn check_form(&self, given: &str) -> Result<(), Problem> {
        match &self.via {
            Via::Session { csrf, .. } if !constant_time_eq(csrf, given) => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "the form's CSRF token does not match the session; reload the page",
            )),
            _ => Ok(()),
        }
    }
}

pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of the request's cookie `name`, if any.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_string())
}

fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Reads who is asking, without refusing anyone: `None` when nobody signed in. A wrong token
/// counts as a failed sign-in.
pub async fn identify(server: &Server, parts: &Parts) -> Result<Option<Caller>, Problem> {
    let ip = client_ip(parts);
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        server.limiter.check(ip)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        return match server.state().token_actor(token).await? {
            Some(actor) => Ok(Some(Caller {
                actor,
                via: Via::Token,
            })),
            None => {
                server.limiter.failed(ip);
                Err(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "the API token is not valid (revoked, or never issued)",
                ))
            }
        };
    }
    let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(server.state().session(&id).await?.map(|s| Caller {
        actor: s.actor,
        via: Via::Session { id, csrf: s.csrf },
    }))
}

/// An API caller: a token, or a session whose changes carry the CSRF header.
pub struct ApiCaller(pub Caller);

impl FromRequestParts<Arc<Server>> for ApiCaller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &Arc<Server>,
    ) -> Result<Self, Self::Rejection> {
        let caller = identify(server, parts)
            .await?
            .ok_or_else(Problem::unauthorized)?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let given = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            caller.check_form(given)?;
        }
        Ok(ApiCaller(caller))
    }
}

/// A console visitor who signed in; forms check their CSRF token themselves.
pub struct ConsoleCaller(pub Caller);

impl FromRequestParts<Arc<Server>> for ConsoleCaller {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &Arc<Server>,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        match identify(server, parts).await {
            Ok(Some(caller)) => Ok(ConsoleCaller(caller)),
            Ok(None) => Err(axum::response::Redirect::to("/sign-in").into_response()),
            Err(problem) => Err(problem.into_response()),
        }
    }
}

/// The client's address, for limiting failed sign-ins.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}
