//! The HTTP broker: every request a connector makes passes through here.
//!
//! It refuses hosts outside the allow-list before anything is sent, drops any credential the
//! connector tried to set and adds the connection's own, retries throttled and failed calls with
//! backoff (honouring `Retry-After`), caps response sizes, and strips auth-related headers from
//! answers so a credential can never be echoed back into the sandbox.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Scheme;
use http_body_util::{BodyExt, Full, Limited};
use tracing::Instrument;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpHooks};

use crate::contract::AuthScheme;
use crate::export::Credential;
use crate::secret::Secret;

type WasiBody = wasmtime_wasi_http::WasiBody;
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// Headers a connector may not set (the broker owns credentials) and that never flow back to it.
const AUTH_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::PROXY_AUTHENTICATE,
    header::COOKIE,
    header::SET_COOKIE,
];

/// How the broker retries and bounds requests. Defaults suit the vendors' documented behaviour.
#[derive(Debug, Clone)]
pub struct BrokerPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff delay; doubled each retry, with jitter, up to `max_backoff`.
    pub base_backoff: Duration,
    /// Longest wait between attempts, also the cap on a vendor's `Retry-After`.
    pub max_backoff: Duration,
    /// Retries allowed across a whole run; once spent, failures go back to the connector.
    pub retry_budget: u64,
    /// Time allowed for connecting, for the first byte of the answer, and between its bytes.
    pub request_timeout: Duration,
    /// Largest response body handed to a connector.
    pub max_response_bytes: usize,
    /// Requests in flight at once per connection; `None` takes the connector's declared vendor
    /// limit (`max-concurrent-requests`).
    pub max_concurrent_requests: Option<usize>,
    /// Requests per second per connection; `None` takes the connector's declared vendor rate.
    pub max_requests_per_second: Option<f64>,
}

impl Default for BrokerPolicy {
    fn default() -> Self {
        BrokerPolicy {
            max_attempts: 6,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            retry_budget: 1_000,
            request_timeout: Duration::from_secs(120),
            max_response_bytes: 16 << 20,
            max_concurrent_requests: None,
            max_requests_per_second: None,
        }
    }
}

/// One host a connection may reach: exact (`api.createsend.com`) or a wildcard for one or more
/// leading labels (`*.api.mailchimp.com`), with the scheme and port allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    pattern: String,
    scheme: Scheme,
    port: u16,
}

impl AllowedHost {
    /// A production host: HTTPS on port 443.
    pub fn https(pattern: &str) -> AllowedHost {
        AllowedHost {
            pattern: pattern.to_ascii_lowercase(),
            scheme: Scheme::HTTPS,
            port: 443,
        }
    }

    /// Exactly the scheme, host and port of `url` (used for a connection's base URL).
    pub fn from_url(url: &http::Uri) -> Result<AllowedHost> {
        let scheme = url.scheme().cloned().context("URL has no scheme")?;
        let host = url.host().context("URL has no host")?;
        let port = url.port_u16().unwrap_or(default_port(&scheme));
        Ok(AllowedHost {
            pattern: host.to_ascii_lowercase(),
            scheme,
            port,
        })
    }

    /// Whether `other` (an exact host) is covered by this entry.
    pub fn permits(&self, other: &AllowedHost) -> bool {
        self.matches(&other.scheme, &other.pattern, other.port)
    }

    fn matches(&self, scheme: &Scheme, host: &str, port: u16) -> bool {
        if *scheme != self.scheme || port != self.port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => host == self.pattern,
        }
    }
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTP { 80 } else { 443 }
}

/// Whether `host` is a loopback address, where vendor simulators run.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What a run's requests did, for the run report.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: AtomicU64,
    retries: AtomicU64,
    refused: Mutex<BTreeSet<String>>,
}

impl HttpStats {
    /// Requests sent to vendors (each attempt counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Attempts that were retries.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Hosts the broker refused, as `host:port`.
    pub fn refused_hosts(&self) -> Vec<String> {
        self.refused.lock().unwrap().iter().cloned().collect()
    }
}

/// What one brokered request looked like, for embedders that audit traffic (and for tests).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub authority: String,
    pub path: String,
    /// Header names the connector itself set, before the broker changed anything.
    pub connector_header_names: Vec<String>,
    /// Final status, or `None` when the request was refused or never got an answer.
    pub status: Option<u16>,
    pub attempts: u32,
    pub latency: Duration,
}

/// Called for every brokered request.
pub type RequestObserver = Arc<dyn Fn(&RequestRecord) + Send + Sync>;

/// The broker of one run: the allow-list and credential of its connection, and its policy.
pub struct Broker {
    connector: String,
    /// Names the connection in traces (never its credential).
    connection: String,
    allowed: Vec<AllowedHost>,
    authorization: Option<HeaderValue>,
    policy: BrokerPolicy,
    stats: Arc<HttpStats>,
    retry_budget: AtomicU64,
    observer: Option<RequestObserver>,
    /// Caps requests in flight, when the vendor or the policy sets a limit.
    slots: Option<tokio::sync::Semaphore>,
    /// Spaces requests out, when the vendor or the policy sets a rate.
    pacer: Option<Mutex<Pacer>>,
}

/// Hands out send times at most one per `interval`, so requests never exceed a rate.
struct Pacer {
    interval: Duration,
    next: tokio::time::Instant,
}

impl Pacer {
    /// The time the next request may go out, reserving it.
    fn reserve(&mut self) -> tokio::time::Instant {
        let at = self.next.max(tokio::time::Instant::now());
        self.next = at + self.interval;
        at
    }
}

/// What the connector declares about its vendor's limits (0: none published).
#[derive(Debug, Clone, Copy, Default)]
pub struct VendorLimits {
    pub max_concurrent_requests: u32,
    pub max_requests_per_second: u32,
}

impl Broker {
    /// A broker for a run of `connector` that may reach `allowed`, adding `credential` to every
    /// request it lets through: an API key as the connector's `auth` says, a token as Bearer.
    pub fn new(
        connector: &str,
        allowed: Vec<AllowedHost>,
        auth: &AuthScheme,
        credential: Option<&Credential>,
        vendor: VendorLimits,
        policy: BrokerPolicy,
    ) -> Result<Broker> {
        let concurrency = policy
            .max_concurrent_requests
            .or(match vendor.max_concurrent_requests {
                0 => None,
                n => Some(n as usize),
            });
        let rate = policy
            .max_requests_per_second
            .or(match vendor.max_requests_per_second {
                0 => None,
                n => Some(n as f64),
            });
        let authorization = credential
            .map(|c| match c {
                Credential::ApiKey(key) => authorization_header(auth, key),
                Credential::AccessToken(token) => authorization_header(&AuthScheme::Bearer, token),
            })
            .transpose()?;
        Ok(Broker {
            connector: connector.to_string(),
            connection: String::new(),
            allowed,
            authorization,
            retry_budget: AtomicU64::new(policy.retry_budget),
            policy,
            stats: Arc::default(),
            observer: None,
            slots: concurrency.map(|n| tokio::sync::Semaphore::new(n.max(1))),
            pacer: rate.filter(|r| *r > 0.0).map(|r| {
                Mutex::new(Pacer {
                    interval: Duration::from_secs_f64(1.0 / r),
                    next: tokio::time::Instant::now(),
                })
            }),
        })
    }

    /// A broker that refuses every request (for `describe`, which must not use the network).
    pub fn offline(connector: &str) -> Broker {
        Broker::new(
            connector,
            vec![],
            &AuthScheme::Bearer,
            None,
            VendorLimits::default(),
            BrokerPolicy::default(),
        )
        .expect("no credential to encode")
    }

    /// Names the connection in traces.
    pub fn with_connection_label(mut self, label: String) -> Broker {
        self.connection = label;
        self
    }

    /// Reports every request to `observer`.
    pub fn with_observer(mut self, observer: Option<RequestObserver>) -> Broker {
        self.observer = observer;
        self
    }

    /// Counters of this broker's requests.
    pub fn stats(&self) -> Arc<HttpStats> {
        self.stats.clone()
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let Some(host) = uri.host() else { return false };
        let port = uri.port_u16().unwrap_or(default_port(&scheme));
        self.allowed.iter().any(|a| a.matches(&scheme, host, port))
    }

    async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let mut record = RequestRecord {
            method: parts.method.to_string(),
            authority: parts
                .uri
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            path: parts.uri.path().to_string(),
            connector_header_names: parts.headers.keys().map(|k| k.to_string()).collect(),
            status: None,
            attempts: 0,
            latency: Duration::ZERO,
        };
        // One span per request; the credential is never a field (the path carries no query).
        let span = tracing::debug_span!(
            "request",
            connector = %self.connector,
            connection = %self.connection,
            host = %record.authority,
            method = %record.method,
            path = %record.path,
            status = tracing::field::Empty,
            retries = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        let result = self
            .send_checked(&mut parts, body, options, &mut record)
            .instrument(span.clone())
            .await;
        record.latency = started.elapsed();
        span.record("status", record.status.unwrap_or(0));
        span.record("retries", record.attempts.saturating_sub(1));
        span.record("latency_ms", record.latency.as_millis() as u64);
        tracing::debug!(parent: &span, "request finished");
        if let Some(observer) = &self.observer {
            observer(&record);
        }
        result
    }

    async fn send_checked(
        &self,
        parts: &mut http::request::Parts,
        body: WasiBody,
        options: Option<RequestOptions>,
        record: &mut RequestRecord,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        if !self.allows(&parts.uri) {
            tracing::warn!(connector = %self.connector, host = %record.authority, "refused request to a host outside the allow-list");
            self.stats
                .refused
                .lock()
                .unwrap()
                .insert(record.authority.clone());
            return Err(HttpError::HttpRequestDenied);
        }
        for name in &AUTH_HEADERS {
            parts.headers.remove(name);
        }
        if let Some(value) = &self.authorization {
            parts.headers.insert(header::AUTHORIZATION, value.clone());
        }
        let body = body.collect().await?.to_bytes();
        let timeout = self.policy.request_timeout;
        let options = RequestOptions {
            connect_timeout: Some(options.and_then(|o| o.connect_timeout).unwrap_or(timeout)),
            first_byte_timeout: Some(
                options
                    .and_then(|o| o.first_byte_timeout)
                    .unwrap_or(timeout),
            ),
            between_bytes_timeout: Some(
                options
                    .and_then(|o| o.between_bytes_timeout)
                    .unwrap_or(timeout),
            ),
        };

        loop {
            record.attempts += 1;
            let attempt = {
                // Held for the whole attempt: the vendor counts a connection until it answers.
                let _slot = match &self.slots {
                    Some(slots) => Some(slots.acquire().await.expect("never closed")),
                    None => None,
                };
                if let Some(pacer) = &self.pacer {
                    let at = pacer.lock().unwrap().reserve();
                    tokio::time::sleep_until(at).await;
                }
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                self.attempt(parts, body.clone(), options).await
            };
            let retry_after = match &attempt {
                Ok((status, headers, _)) if is_retryable_status(*status) => {
                    Some(retry_after(headers))
                }
                Ok(_) => None,
                Err(e) if is_retryable_error(e) => Some(None),
                Err(_) => None,
            };
            if let Some(hint) = retry_after
                && record.attempts < self.policy.max_attempts
                && self.take_retry()
            {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(self.backoff(record.attempts, hint)).await;
                continue;
            }
            let (status, headers, bytes) = attempt?;
            record.status = Some(status.as_u16());
            let mut response = http::Response::new(
                Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            for name in &AUTH_HEADERS {
                response.headers_mut().remove(name);
            }
            return Ok(response);
        }
    }

    /// One try: send, and read the whole (capped) answer.
    async fn attempt(
        &self,
        parts: &http::request::Parts,
        body: Bytes,
        options: RequestOptions,
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), HttpError> {
        let mut request = http::Request::new(
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        let (response, io) =
            wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
        let (head, body) = response.into_parts();
        // The body only arrives while the connection is driven, so read both together.
        let (collected, _) = tokio::join!(
            Limited::new(body, self.policy.max_response_bytes).collect(),
            io
        );
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return Err(match e.downcast::<HttpError>() {
                    Ok(e) => *e,
                    Err(_) => {
                        HttpError::HttpResponseBodySize(Some(self.policy.max_response_bytes as u64))
                    }
                });
            }
        };
        Ok((head.status, head.headers, bytes))
    }

    fn take_retry(&self) -> bool {
        self.retry_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Exponential backoff with full jitter, or the vendor's own hint when it gave one.
    fn backoff(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.policy.max_backoff);
        }
        let exp = self
            .policy
            .base_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.policy.max_backoff);
        exp.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

fn is_retryable_status(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

fn is_retryable_error(error: &HttpError) -> bool {
    matches!(
        error,
        HttpError::Hyper(_)
            | HttpError::Connect(_)
            | HttpError::ConnectionRefused
            | HttpError::ConnectionTerminated
            | HttpError::ConnectionTimeout
            | HttpError::ConnectionReadTimeout
            | HttpError::ConnectionWriteTimeout
            | HttpError::HttpResponseIncomplete
            | HttpError::HttpResponseTimeout
    )
}

/// The wait a throttled answer asks for: `Retry-After` in seconds, else Campaign Monitor's
/// `X-RateLimit-Reset` (seconds until the window resets).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    ["retry-after", "x-ratelimit-reset"]
        .iter()
        .find_map(|name| {
            headers
                .get(*name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

fn authorization_header(auth: &AuthScheme, secret: &Secret) -> Result<HeaderValue> {
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

/// The hooks wasmtime-wasi-http calls; they hand every request to the run's [`Broker`].
pub(crate) struct BrokerHooks(pub(crate) Arc<Broker>);

impl WasiHttpHooks for BrokerHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_io: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>
    {
        let broker = self.0.clone();
        Box::new(async move {
            let response = broker.send(request, options).await?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_exact_and_wildcard_hosts_only_on_their_scheme_and_port() {
        let exact = AllowedHost::https("api.createsend.com");
        let wild = AllowedHost::https("*.api.mailchimp.com");
        let https = Scheme::HTTPS;
        assert!(exact.matches(&https, "API.createsend.com", 443));
        assert!(!exact.matches(&https, "evil-api.createsend.com", 443));
        assert!(!exact.matches(&Scheme::HTTP, "api.createsend.com", 80));
        assert!(!exact.matches(&https, "api.createsend.com", 8443));
        assert!(wild.matches(&https, "us21.api.mailchimp.com", 443));
        assert!(!wild.matches(&https, "api.mailchimp.com", 443));
        assert!(!wild.matches(&https, "us21.api.mailchimp.com.evil.com", 443));
        assert!(!wild.matches(&https, "evilapi.mailchimp.com", 443));
    }

    #[test]
    fn credential_is_encoded_as_the_connector_declares() {
        let secret = Secret::new("k3y".into());
        let cm = authorization_header(&AuthScheme::BasicSecretAsUser("x".into()), &secret).unwrap();
        assert_eq!(cm.to_str().unwrap(), "Basic azN5Ong="); // base64("k3y:x")
        assert!(cm.is_sensitive());
        let mc = authorization_header(&AuthScheme::BasicSecretAsPassword("user".into()), &secret)
            .unwrap();
        assert_eq!(mc.to_str().unwrap(), "Basic dXNlcjprM3k="); // base64("user:k3y")
        let bearer = authorization_header(&AuthScheme::Bearer, &secret).unwrap();
        assert_eq!(bearer.to_str().unwrap(), "Bearer k3y");
    }

    #[test]
    fn retry_hint_reads_retry_after_then_rate_limit_reset() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after", HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("api.createsend.com"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
