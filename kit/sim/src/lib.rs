//! The vendor-simulator kit: local HTTP(S) servers that behave like email vendors' real APIs,
//! each keeping a ledger of every contact so tests can prove nothing was lost, duplicated or
//! resubscribed. [`Server`] is the shared part (loopback HTTP/1.1 and HTTP/2, optional TLS,
//! injected [`Faults`], counters); each vendor module (Campaign Monitor, Mailchimp, MailerLite, Brevo)
//! holds its records behind one handler; [`Simulator`] is what a conformance check drives.
//! Nothing here depends on the connector host.

pub mod brevo;
pub mod campaign_monitor;
pub mod delay;
pub mod mailchimp;
pub mod mailerlite;
pub mod oauth;
pub mod quota;
mod senders;
pub mod simulator;
pub mod tls;

pub use simulator::{Held, SIMULATED, Simulator};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

/// Vendor misbehaviour to inject, by request number (1-based, every request counts). Injected
/// faults happen before the simulator handles the request, except `slow`, which delays it.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every Nth request is answered 429 with `Retry-After: retry_after_secs` (0: never).
    pub throttle_every: u64,
    pub retry_after_secs: u64,
    /// Every Nth request is answered 500 or 503, alternately (0: never).
    pub error_every: u64,
    /// Every Nth request is handled only after `slow_delay` (0: never).
    pub slow_every: u64,
    pub slow_delay: Duration,
    /// Every Nth request gets response headers and then a broken connection (0: never).
    pub reset_every: u64,
}

impl Faults {
    fn hits(every: u64, n: u64) -> bool {
        every > 0 && n.is_multiple_of(every)
    }

    /// The injected answer for request `n`, if it gets one instead of the simulator's.
    async fn inject(&self, n: u64) -> Option<Response> {
        if Faults::hits(self.throttle_every, n) {
            let body = r#"{"Code": 429, "Message": "Rate limit exceeded", "title": "Too Many Requests", "status": 429}"#;
            let headers = [
                ("retry-after", self.retry_after_secs.to_string()),
                ("content-type", "application/json".into()),
            ];
            return Some((StatusCode::TOO_MANY_REQUESTS, headers, body).into_response());
        }
        if Faults::hits(self.error_every, n) {
            let status = if (n / self.error_every).is_multiple_of(2) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return Some(
                (
                    status,
                    [("content-type", "application/json")],
                    r#"{"Code": 500, "Message": "Simulated server error"}"#,
                )
                    .into_response(),
            );
        }
        if Faults::hits(self.reset_every, n) {
            let broken = futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated reset",
                ))
            });
            return Some((StatusCode::OK, Body::from_stream(broken)).into_response());
        }
        if Faults::hits(self.slow_every, n) {
            tokio::time::sleep(self.slow_delay).await;
        }
        None
    }
}

/// Runs a simulator's work on its state (its lock held, its CPU spent) on a blocking thread,
/// so that a request waiting for the state never holds up the async workers that move every
/// other connection's bytes. A vendor's network front does not stall while its servers work;
/// a simulator that did would add its own queueing to the network time a benchmark measures.
pub(crate) async fn apart_from_the_network<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(answer) => answer,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Where a simulator listens: a loopback port (0 picks a free one), over plain HTTP or HTTPS.
#[derive(Clone, Default)]
pub struct Listen {
    pub port: u16,
    /// Serve HTTPS with a certificate from this CA.
    pub tls: Option<Arc<tls::TestCa>>,
    /// Find out which process opened each connection (Linux, through `/proc`), so that
    /// [`Server::senders`] tells who sent each request; costs a look through `/proc` each
    /// connection.
    pub identify_senders: bool,
}

impl Listen {
    /// Plain HTTP on `port`.
    pub fn plain(port: u16) -> Listen {
        Listen {
            port,
            ..Listen::default()
        }
    }

    /// HTTPS on a free port, with a certificate from `ca`.
    pub fn tls(ca: &Arc<tls::TestCa>) -> Listen {
        Listen {
            tls: Some(ca.clone()),
            ..Listen::default()
        }
    }

    /// The same, noting which process sent each request.
    pub fn identifying_senders(self) -> Listen {
        Listen {
            identify_senders: true,
            ..self
        }
    }
}

/// A request as it arrived, with the process that sent it (when the server identifies
/// senders).
#[derive(Debug, Clone)]
pub struct Sent {
    /// When it arrived (wall time, to compare with other processes' records).
    pub at: std::time::SystemTime,
    /// The process that opened its connection, if it could be found.
    pub pid: Option<u32>,
    pub method: String,
    pub path: String,
}

/// The process a connection came from, once found (an extension of its requests).
#[derive(Clone, Copy)]
struct SenderPid(Option<u32>);

/// What a server counts: TCP connections accepted, requests answered by the simulator (not
/// by an injected fault) and the time it took to answer them, so a benchmark can set the
/// vendor's own time apart from the network's.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    answered: AtomicU64,
    answer_micros: AtomicU64,
    http2: AtomicU64,
}

/// A loopback HTTP(S) server that hands every request to one handler, with optional injected
/// faults; when dropped it stops accepting and closes the connections it holds open.
pub struct Server {
    origin: String,
    addr: SocketAddr,
    stop: CancellationToken,
    faults: Arc<Mutex<Faults>>,
    counters: Arc<Counters>,
    senders: Arc<Mutex<Vec<Sent>>>,
}

impl Server {
    /// Serves `handler` where `listen` says.
    pub async fn start<F, Fut>(listen: Listen, handler: F) -> anyhow::Result<Server>
    where
        F: Fn(Method, Uri, HeaderMap, Bytes) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen.port)).await?;
        let addr = listener.local_addr()?;
        let faults: Arc<Mutex<Faults>> = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        let senders: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let requests = Arc::new(AtomicU64::new(0));
        let (injected, counted, noted) = (faults.clone(), counters.clone(), senders.clone());
        let app = axum::Router::new()
            .fallback(
                move |sender: Option<axum::Extension<SenderPid>>,
                      method: Method,
                      uri: Uri,
                      headers: HeaderMap,
                      body: Bytes| {
                    let (handler, faults, requests, counted) = (
                        handler.clone(),
                        injected.clone(),
                        requests.clone(),
                        counted.clone(),
                    );
                    if let Some(axum::Extension(SenderPid(pid))) = sender {
                        noted.lock().unwrap().push(Sent {
                            at: std::time::SystemTime::now(),
                            pid,
                            method: method.to_string(),
                            path: uri.path().to_string(),
                        });
                    }
                    async move {
                        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
                        let faults = faults.lock().unwrap().clone();
                        if let Some(answer) = faults.inject(n).await {
                            return answer;
                        }
                        let started = std::time::Instant::now();
                        let mut answer = handler(method, uri, headers, body).await;
                        let took = started.elapsed();
                        counted.answered.fetch_add(1, Ordering::Relaxed);
                        counted
                            .answer_micros
                            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                        // As real APIs do: how long the server itself took.
                        if let Ok(value) =
                            format!("app;dur={:.1}", took.as_secs_f64() * 1000.0).parse()
                        {
                            answer.headers_mut().insert("server-timing", value);
                        }
                        answer
                    }
                },
            )
            .layer(axum::extract::DefaultBodyLimit::max(16 << 20));
        let stop = CancellationToken::new();
        let acceptor = listen.tls.as_ref().map(|ca| ca.acceptor());
        let identify = listen.identify_senders;
        let (accepting, counted) = (stop.clone(), counters.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = accepting.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let _ = stream.set_nodelay(true);
                counted.connections.fetch_add(1, Ordering::Relaxed);
                let (app, stop, acceptor, counted) = (
                    app.clone(),
                    accepting.clone(),
                    acceptor.clone(),
                    counted.clone(),
                );
                tokio::spawn(async move {
                    let app = match (identify, stream.peer_addr()) {
                        (true, Ok(peer)) => {
                            let pid =
                                tokio::task::spawn_blocking(move || senders::owner_of(peer.port()))
                                    .await
                                    .ok()
                                    .flatten();
                            app.layer(axum::Extension(SenderPid(pid)))
                        }
                        _ => app,
                    };
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                                counted.http2.fetch_add(1, Ordering::Relaxed);
                            }
                            serve_connection(tls, app, stop).await
                        }
                        None => serve_connection(stream, app, stop).await,
                    }
                });
            }
        });
        let scheme = if listen.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Server {
            origin: format!("{scheme}://{addr}"),
            addr,
            stop,
            faults,
            counters,
            senders,
        })
    }

    /// Every request so far with the process that sent it, in the order they arrived (empty
    /// unless the server identifies senders: [`Listen::identifying_senders`]).
    pub fn senders(&self) -> Vec<Sent> {
        self.senders.lock().unwrap().clone()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Scheme and address, e.g. `https://127.0.0.1:41234`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Injects `faults` into the requests from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// TLS connections that chose HTTP/2.
    pub fn http2_connections(&self) -> u64 {
        self.counters.http2.load(Ordering::Relaxed)
    }

    /// Requests the simulator answered, and their mean answer time (its own, network aside).
    pub fn answered(&self) -> (u64, Duration) {
        let n = self.counters.answered.load(Ordering::Relaxed);
        let micros = self.counters.answer_micros.load(Ordering::Relaxed);
        (n, Duration::from_micros(micros.checked_div(n).unwrap_or(0)))
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2) until it closes or the server stops.
async fn serve_connection<IO>(io: IO, app: axum::Router, stop: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let serving = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = serving => {}
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One request as a simulator handled it, for tests to inspect.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    /// The Authorization header exactly as received.
    pub authorization: Option<String>,
    pub status: u16,
    /// When the simulator finished handling it.
    pub at: std::time::Instant,
}

/// User and password of an `Authorization: Basic ...` header.
pub fn basic_auth(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The address check the simulated vendors apply: one `@`, a plausible local part, and a
/// domain of at least two labels with an alphabetic top-level domain.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return false;
    }
    let local_ok = local
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"(),:;<>[]\\\"".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let labels_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let tld = labels.last().copied().unwrap_or("");
    local_ok && labels_ok && tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Decodes the `%XX` escapes of a URL path segment; a `+` there is a plus sign (RFC 3986: only
/// a query's form encoding reads it as a space), so `ada+news@example.com` in a path stays so.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes a query or form value (`application/x-www-form-urlencoded`): `+` is a space.
pub fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plus_is_a_space_only_in_a_query() {
        assert_eq!(
            percent_decode("ada+news%40example.com"),
            "ada+news@example.com"
        );
        assert_eq!(form_decode("ada+lovelace%2B1"), "ada lovelace+1");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn email_rule_accepts_ordinary_addresses_and_refuses_broken_ones() {
        for ok in [
            "ada@example.com",
            "Ada.Lovelace+cdp@mail.example.co.uk",
            "x_y-z@a-b.io",
        ] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a da@example.com",
            "ada@exa_mple.com",
            ".ada@example.com",
            "ada..l@example.com",
            "ada@example.c0m",
            "ada@-x.com",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn basic_auth_header_is_decoded() {
        assert_eq!(
            basic_auth("Basic azN5Ong="),
            Some(("k3y".into(), "x".into()))
        );
        assert_eq!(basic_auth("Bearer abc"), None);
    }
}
