//! Who is asking: an API token (`Authorization: Bearer cht_...`) for programs, or the
//! console's session cookie (HttpOnly, SameSite=Lax) whose changes must carry the
//! session's CSRF token; the sign-in form itself carries a token tied to the browser. Failed
//! sign-ins are counted per account and per client address ([`Throttle`]); the client address
//! comes from `X-Forwarded-For` only when the peer is a trusted proxy.

use std::collections::{HashMap, VecDeque};
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

/// Failed password sign-ins for one account in [`WINDOW`] after which the account is under
/// attack: its password sign-ins wait for the window (its API tokens still work).
pub const MAX_ACCOUNT_FAILURES: usize = 10;
/// Failed sign-ins from one client address in [`WINDOW`] after which its failures are
/// answered 429; a correct credential for an account not under attack still signs in.
pub const MAX_ADDRESS_FAILURES: usize = 10;
/// Failed sign-ins from one client address in [`WINDOW`] after which its password sign-ins
/// are refused unchecked (a guessing run across many accounts); valid API tokens still work.
pub const MAX_ADDRESS_FAILURES_HARD: usize = 100;
/// How long a failure counts.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Recent failed sign-ins, per account name and per client address, kept apart so that one
/// noisy client behind a shared address (a reverse proxy, an office) does not lock everyone
/// out, and a guessing run against one account does not lock out its other addresses' tokens.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<Failures>,
}

#[derive(Default)]
struct Failures {
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
    by_account: HashMap<String, VecDeque<Instant>>,
    /// Counted since the maps were last swept of old entries.
    since_sweep: usize,
}

/// Failures within the window, dropping older ones.
fn recent(list: &mut VecDeque<Instant>, now: Instant) -> usize {
    while list
        .front()
        .is_some_and(|t| now.duration_since(*t) >= WINDOW)
    {
        list.pop_front();
    }
    list.len()
}

/// How long until the oldest of `list`'s failures stops counting.
fn wait(list: &VecDeque<Instant>, now: Instant) -> u64 {
    list.front().map_or(0, |t| {
        WINDOW.saturating_sub(now.duration_since(*t)).as_secs()
    }) + 1
}

fn too_many(what: &str, seconds: u64) -> Problem {
    let mut problem = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed sign-ins {what}; try again in {seconds} s"),
    );
    problem.retry_after = Some(seconds);
    problem
}

impl Throttle {
    /// Before a password is checked: refused when the account is under attack, or when the
    /// address failed so often that it is guessing across accounts.
    pub fn before_password(&self, ip: IpAddr, account: &str) -> Result<(), Problem> {
        let mut failures = self.failures.lock().unwrap();
        let now = Instant::now();
        if let Some(list) = failures.by_account.get_mut(account)
            && recent(list, now) >= MAX_ACCOUNT_FAILURES
        {
            return Err(too_many("for this account", wait(list, now)));
        }
        if let Some(list) = failures.by_address.get_mut(&ip)
            && recent(list, now) >= MAX_ADDRESS_FAILURES_HARD
        {
            return Err(too_many("from this address", wait(list, now)));
        }
        Ok(())
    }

    /// Counts a failed sign-in (with the account it named, for a password) and says how to
    /// answer it: `unauthorized`, or 429 once the address failed too often.
    pub fn failed(&self, ip: IpAddr, account: Option<&str>, unauthorized: Problem) -> Problem {
        let mut failures = self.failures.lock().unwrap();
        let now = Instant::now();
        failures.since_sweep += 1;
        if failures.since_sweep >= 1024 {
            failures.sweep(now);
        }
        if let Some(account) = account {
            failures
                .by_account
                .entry(account.to_string())
                .or_default()
                .push_back(now);
        }
        let list = failures.by_address.entry(ip).or_default();
        list.push_back(now);
        if recent(list, now) > MAX_ADDRESS_FAILURES {
            return too_many("from this address", wait(list, now));
        }
        unauthorized
    }
}

impl Failures {
    /// Forgets accounts and addresses whose failures are all old.
    fn sweep(&mut self, now: Instant) {
        self.by_address.retain(|_, list| recent(list, now) > 0);
        self.by_account.retain(|_, list| recent(list, now) > 0);
        self.since_sweep = 0;
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

/// The client's address: the peer's, or, when the peer is one of `trusted` proxies, the
/// nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Proxies append: the rightmost entries are the nearest hops.
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map_while(|hop| hop.trim().parse::<IpAddr>().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

fn client_ip_of(server: &Server, parts: &Parts) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    client_ip(peer, &parts.headers, &server.trusted_proxies)
}

/// Reads who is asking, without refusing anyone: `None` when nobody signed in. A valid token
/// is always accepted (tokens are too long to guess); a wrong one counts as a failed sign-in
/// of the client's address.
pub async fn identify(server: &Server, parts: &Parts) -> Result<Option<Caller>, Problem> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim)
            .unwrap_or("");
        return match server.workspace.token_actor(token).await? {
            Some(actor) => Ok(Some(Caller {
                actor,
                via: Via::Token,
            })),
            None => Err(server.throttle.failed(
                client_ip_of(server, parts),
                None,
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "the API token is not valid (revoked, or never issued)",
                ),
            )),
        };
    }
    let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(server.workspace.session(&id).await?.map(|s| Caller {
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

impl FromRequestParts<Arc<Server>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &Arc<Server>,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip_of(server, parts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_forwarded_address_is_believed_only_from_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.1.2.3".parse().unwrap());
        // Through the proxy: the nearest hop that is not a proxy.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        // Straight from a client: its own header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.7"), &headers, &trusted),
            ip("198.51.100.7")
        );
        // A client forging a hop in front of the proxy's: the proxy appended the real one.
        headers.insert("x-forwarded-for", "1.2.3.4, 198.51.100.7".parse().unwrap());
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("198.51.100.7")
        );
        // No header from the proxy: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Nothing trusted: the peer, always.
        assert_eq!(client_ip(ip("10.0.0.1"), &headers, &[]), ip("10.0.0.1"));
    }

    fn unauthorized() -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "no")
    }

    #[test]
    fn failures_count_per_account_and_per_address_apart() {
        let throttle = Throttle::default();
        let (office, home) = (ip("192.0.2.1"), ip("192.0.2.2"));
        // A script at the office fails with bad tokens: its failures turn into 429s...
        for n in 1..=MAX_ADDRESS_FAILURES + 1 {
            let answer = throttle.failed(office, None, unauthorized());
            let expected = if n > MAX_ADDRESS_FAILURES { 429 } else { 401 };
            assert_eq!(answer.status, expected, "failure {n}");
        }
        // ...but ada's password from the same address is still checked.
        assert!(throttle.before_password(office, "ada").is_ok());
        // Someone guesses eve's password: eve's password sign-ins wait, from anywhere.
        for _ in 0..MAX_ACCOUNT_FAILURES {
            throttle.failed(home, Some("eve"), unauthorized());
        }
        let refused = throttle
            .before_password(ip("192.0.2.3"), "eve")
            .unwrap_err();
        assert_eq!(refused.status, 429);
        assert!(refused.retry_after.unwrap() > 0);
        assert!(throttle.before_password(home, "ada").is_ok());
        // A guessing run across accounts from one address is stopped outright.
        for n in 0..MAX_ADDRESS_FAILURES_HARD {
            throttle.failed(home, Some(&format!("user{n}")), unauthorized());
        }
        assert!(throttle.before_password(home, "ada").is_err());
        assert!(throttle.before_password(office, "ada").is_ok());
    }
}
