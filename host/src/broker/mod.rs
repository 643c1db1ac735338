//! The HTTP broker: every request a connector makes passes through here, one small layer at a
//! time:
//!
//! 1. [`destination`]: the URL must be on the connection's allow-list (declared hosts over
//!    HTTPS, or the administrator's own base URL);
//! 2. [`credential`]: whatever credential the connector set is dropped, the connection's added;
//! 3. [`body`]: the request body is read whole, under a size cap and the run's byte budget, with
//!    a deadline, before anything is sent (it is kept for retries);
//! 4. [`limits`]: a slot among the requests in flight, and the pace;
//! 5. [`retry`]: throttling and transport failures are tried again with backoff;
//! 6. [`transport`]: the one seam to the network, which resolves names itself and checks every
//!    [`address`] it dials.
//!
//! What the host refuses is recorded in words for the run's report, whatever the connector
//! makes of the error it gets.

pub mod address;
mod body;
mod credential;
pub mod destination;
mod limits;
mod retry;
mod tally;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use tracing::Instrument;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpHooks};

pub use address::{DialPolicy, Resolve, SystemResolver};
pub use credential::check_header as check_credential_header;
pub use destination::{AllowList, check_declared_host, check_default_base_url, is_loopback_name};
pub use limits::{
    AccountSlot, AccountSlots, DEFAULT_MAX_IN_FLIGHT, Limits, MAX_DECLARED_IN_FLIGHT, Pacing,
    ProcessSlots, RequestClass, SharedAccount, Window, rate_wait,
};
pub use transport::{Network, NetworkOptions, SendError, Sending, StaticResolver, Transport};

use crate::contract::AuthScheme;
use crate::fence::Fence;
use crate::secret::Credential;
use crate::text;
use body::{BodyError, HeldBody};
pub use tally::{Tally, TallyWrite};

type WasiBody = wasmtime_wasi_http::WasiBody;
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

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
    /// The longest wait for each step of a request: the connector finishing its body,
    /// connecting and the answer's head, and each piece of the answer's body. A connector may
    /// ask for shorter waits, never longer.
    pub request_timeout: Duration,
    /// Largest request body a connector may send; a larger one is refused as it streams in.
    pub max_request_bytes: usize,
    /// Largest answer body handed to a connector.
    pub max_response_bytes: usize,
    /// Bytes of request and answer bodies a run may hold in the host at once.
    pub max_buffered_bytes: usize,
    /// Requests in flight at once per connection; `None` takes the connector's declared vendor
    /// limit (at most [`MAX_DECLARED_IN_FLIGHT`]), or [`DEFAULT_MAX_IN_FLIGHT`] when it
    /// declares none.
    pub max_concurrent_requests: Option<usize>,
    /// Requests per second per connection, in place of the vendor's windows the connector
    /// declares; `None` takes those.
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
            max_request_bytes: 32 << 20,
            max_response_bytes: 16 << 20,
            max_buffered_bytes: 64 << 20,
            max_concurrent_requests: None,
            max_requests_per_second: None,
        }
    }
}

impl BrokerPolicy {
    /// Requests in flight allowed for a vendor declaring `vendor`.
    pub fn in_flight(&self, vendor: &VendorLimits) -> usize {
        self.max_concurrent_requests
            .unwrap_or(match vendor.max_concurrent_requests {
                0 => DEFAULT_MAX_IN_FLIGHT,
                n => (n as usize).min(MAX_DECLARED_IN_FLIGHT),
            })
            .max(1)
    }

    /// The windows a vendor declaring `vendor` is paced to: the operator's rate in place of
    /// them, when one is set.
    pub fn windows(&self, vendor: &VendorLimits) -> Vec<Window> {
        match self.max_requests_per_second {
            // A whole rate reads as that many a second; another as one per its interval.
            Some(rate) if rate.is_finite() && rate >= 1.0 && rate.fract() == 0.0 => vec![Window {
                requests: rate.min(f64::from(u32::MAX)) as u32,
                period: Duration::from_secs(1),
                class: None,
            }],
            Some(rate) if rate.is_finite() && rate > 0.0 => vec![Window {
                requests: 1,
                period: Duration::from_secs_f64(1.0 / rate),
                class: None,
            }],
            _ => vendor.windows.clone(),
        }
    }
}

/// What the connector declares about its vendor's limits (0 and none: none published).
#[derive(Debug, Clone, Default)]
pub struct VendorLimits {
    pub max_concurrent_requests: u32,
    pub windows: Vec<Window>,
}

impl VendorLimits {
    /// The limits a connector's description declares.
    pub fn declared(info: &crate::contract::ConnectorInfo) -> VendorLimits {
        VendorLimits {
            max_concurrent_requests: info.max_concurrent_requests,
            windows: info.rate_windows.iter().map(Window::from).collect(),
        }
    }
}

impl From<&crate::contract::RateWindow> for Window {
    fn from(w: &crate::contract::RateWindow) -> Window {
        Window {
            requests: w.requests,
            period: Duration::from_secs(u64::from(w.seconds)),
            class: w.applies_to.as_ref().map(|c| limits::RequestClass {
                method: c
                    .method
                    .as_deref()
                    .and_then(|m| http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok()),
                path_prefix: c.path_prefix.clone(),
            }),
        }
    }
}

/// What a run's requests did, for the run report.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: AtomicU64,
    retries: AtomicU64,
    refusals: Mutex<Vec<String>>,
}

/// The most distinct refusals a run's report lists.
const MAX_REFUSALS: usize = 20;

impl HttpStats {
    /// Requests sent to vendors (each attempt counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Attempts that were retries.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// What the host refused the connector, in words, each once.
    pub fn refusals(&self) -> Vec<String> {
        self.refusals.lock().unwrap().clone()
    }
}

/// What one brokered request looked like, for embedders that audit traffic (and for tests).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The connector that made the request (its id).
    pub connector: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    /// Header names the connector itself set, before the broker changed anything.
    pub connector_header_names: Vec<String>,
    /// Final status, or `None` when the request was refused or never got an answer.
    pub status: Option<u16>,
    pub attempts: u32,
    /// Attempts the vendor answered with 429 Too Many Requests.
    pub throttled: u32,
    pub latency: Duration,
}

/// Called for every brokered request.
pub type RequestObserver = Arc<dyn Fn(&RequestRecord) + Send + Sync>;

/// The broker of one run: the allow-list and credential of its connection, its limits, and
/// its transport.
pub struct Broker {
    connector: String,
    /// Names the connection in traces (never its credential).
    connection: String,
    allowed: AllowList,
    /// The credential's header, as the connector's scheme names it, and its value.
    authorization: Option<(header::HeaderName, HeaderValue)>,
    policy: BrokerPolicy,
    limits: limits::Limits,
    /// The vendor account's slots, shared with other runs (and workers) using the account.
    account: Option<SharedAccount>,
    /// The lock of the run: no attempt starts once it no longer surely holds.
    fence: Option<Fence>,
    /// The run's durable count of requests: none leaves before it is counted.
    tally: Option<Arc<Tally>>,
    /// Requests in flight at once: this run's limit, and the account's.
    in_flight: usize,
    retries: retry::Retries,
    budget: limits::ByteBudget,
    transport: Arc<dyn Transport>,
    stats: Arc<HttpStats>,
    observer: Option<RequestObserver>,
}

/// Everything a broker applies to one connection's requests.
pub struct BrokerSetup<'a> {
    pub connector: &'a str,
    pub allowed: AllowList,
    pub auth: &'a AuthScheme,
    pub credential: Option<&'a Credential>,
    pub vendor: VendorLimits,
    pub policy: BrokerPolicy,
    /// The path of the connection's base URL (windows' classes match what follows it).
    pub base_path: &'a str,
}

impl Broker {
    /// A broker sending over the host's network, with connections kept alive for reuse.
    pub fn over_network(setup: BrokerSetup, network: &Network) -> Result<Broker> {
        let keep_alive = setup.policy.in_flight(&setup.vendor);
        let transport = network.transport(setup.allowed.dial_policy().clone(), keep_alive);
        Broker::with_transport(setup, Arc::new(transport))
    }

    /// A broker sending through `transport` (tests answer requests in-process this way). A
    /// credential is applied the way the connector's `auth` says (an API key), or as Bearer
    /// (an OAuth token).
    pub fn with_transport(setup: BrokerSetup, transport: Arc<dyn Transport>) -> Result<Broker> {
        let authorization = setup
            .credential
            .map(|c| match c {
                Credential::ApiKey(key) => credential::authorization(setup.auth, key),
                Credential::OAuth {
                    access_token: token,
                    ..
                } => credential::authorization(&AuthScheme::Bearer, token),
            })
            .transpose()?;
        let policy = setup.policy;
        let in_flight = policy.in_flight(&setup.vendor);
        Ok(Broker {
            connector: setup.connector.to_string(),
            connection: String::new(),
            allowed: setup.allowed,
            authorization,
            limits: limits::Limits::new(in_flight, policy.windows(&setup.vendor), setup.base_path),
            account: None,
            fence: None,
            tally: None,
            in_flight,
            retries: retry::Retries::new(
                policy.max_attempts,
                policy.base_backoff,
                policy.max_backoff,
                policy.retry_budget,
            ),
            budget: limits::ByteBudget::new(policy.max_buffered_bytes),
            policy,
            transport,
            stats: Arc::default(),
            observer: None,
        })
    }

    /// Counts this broker's requests against a vendor account shared with other runs and
    /// workers: each attempt also holds one of the account's slots.
    pub fn with_account(mut self, account: Option<SharedAccount>) -> Broker {
        if let Some(account) = &account {
            self.limits.share(account);
        }
        self.account = account;
        self
    }

    /// Sends nothing once `fence` no longer holds (the run's lock was lost, or could not be
    /// renewed in time: another worker may hold the run).
    pub fn with_fence(mut self, fence: Option<Fence>) -> Broker {
        self.fence = fence;
        self
    }

    /// Sends each request only once `tally` has recorded a count that includes it.
    pub fn with_tally(mut self, tally: Option<Arc<Tally>>) -> Broker {
        self.tally = tally;
        self
    }

    /// One of the account's slots, when the broker shares one. Waits while the account's
    /// slots are taken; a store that cannot be reached is retried (sending without a slot
    /// could exceed the vendor's limit).
    async fn account_slot(&self) -> Option<AccountSlot> {
        let account = self.account.as_ref()?;
        let mut wait = Duration::from_millis(50);
        loop {
            match account.slots.acquire(&account.key, self.in_flight).await {
                Ok(slot) => return Some(slot),
                Err(e) => {
                    tracing::warn!(connector = %self.connector, "could not take a slot of the vendor account: {e:#}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A broker that refuses every request (for `describe`, which must not use the network).
    pub fn offline(connector: &str) -> Broker {
        let setup = BrokerSetup {
            connector,
            allowed: AllowList::nothing(),
            auth: &AuthScheme::Bearer,
            credential: None,
            vendor: VendorLimits::default(),
            policy: BrokerPolicy::default(),
            base_path: "",
        };
        Broker::with_transport(setup, Arc::new(NoNetwork)).expect("no credential to encode")
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

    /// Whether a request could be sent now (the run's lock, if any, surely holds).
    pub fn may_send(&self) -> bool {
        self.fence.as_ref().is_none_or(Fence::holds)
    }

    /// Requests this broker lets in flight at once.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How each of the vendor's windows stands for this broker's requests.
    pub fn pacing(&self) -> Vec<limits::Pacing> {
        self.limits.pacing()
    }

    /// Counters of this broker's requests.
    pub fn stats(&self) -> Arc<HttpStats> {
        self.stats.clone()
    }

    /// Sends a connector's request through every layer and returns the vendor's answer, read
    /// whole. `options` are the connector's own timeouts, honoured up to the policy's.
    pub async fn send<B>(
        &self,
        request: http::Request<B>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<HeldBody>, HttpError>
    where
        B: hyper::body::Body<Data = Bytes, Error = HttpError> + Unpin,
    {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let mut record = RequestRecord {
            connector: self.connector.clone(),
            method: parts.method.to_string(),
            authority: parts
                .uri
                .authority()
                .map(|a| text::clean(a.as_str(), text::MAX_LABEL_CHARS))
                .unwrap_or_default(),
            path: text::clean(parts.uri.path(), text::MAX_MESSAGE_CHARS),
            connector_header_names: parts.headers.keys().map(|k| k.to_string()).collect(),
            status: None,
            attempts: 0,
            throttled: 0,
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

    async fn send_checked<B>(
        &self,
        parts: &mut http::request::Parts,
        body: B,
        options: Option<RequestOptions>,
        record: &mut RequestRecord,
    ) -> Result<http::Response<HeldBody>, HttpError>
    where
        B: hyper::body::Body<Data = Bytes, Error = HttpError> + Unpin,
    {
        if let Err(why) = self.allowed.check(&parts.uri) {
            return Err(self.refuse(why, HttpError::HttpRequestDenied));
        }
        let credential_header = self.authorization.as_ref().map(|(name, _)| name);
        credential::strip(&mut parts.headers, credential_header);
        if let Some((name, value)) = &self.authorization {
            parts.headers.insert(name.clone(), value.clone());
        }
        let waits = Waits::new(&self.policy, options);
        let to = &record.authority;
        let limit = self.policy.max_request_bytes;
        // Kept whole for retries, holding its share of the budget until the last attempt.
        let (request_body, _held) = match body::read(body, limit, &self.budget, waits.body).await {
            Ok(held) => held.into_bytes(),
            Err(e) => {
                return Err(match e {
                    BodyError::TooLarge { limit } => self.refuse(
                        format!("a request body over the {} limit (to {to})", size(limit)),
                        HttpError::HttpRequestBodySize(Some(limit as u64)),
                    ),
                    BodyError::OverBudget { budget } => self.over_budget(budget),
                    BodyError::Stalled(wait) => self.refuse(
                        format!(
                            "a request body the connector did not finish sending within {} (to {to})",
                            seconds(wait)
                        ),
                        HttpError::ConnectionWriteTimeout,
                    ),
                    BodyError::Failed(e) => e,
                });
            }
        };

        loop {
            record.attempts += 1;
            let attempt = {
                // Held for the whole attempt: the vendor counts a request until it answered.
                let _slot = self.limits.admit(&parts.method, parts.uri.path()).await;
                let _account = self.account_slot().await;
                let requests = self.stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(tally) = &self.tally {
                    tally.cover(requests, self.stats.retries()).await;
                }
                // Checked last, after every wait (slots, windows, the durable count, which a
                // database cut off can hold for long): the moment the request would leave. A
                // request counted but not sent is one the figures may hold too many.
                if let Some(fence) = &self.fence
                    && !fence.holds()
                {
                    tracing::warn!(
                        connector = %self.connector,
                        "a request was not sent: the run's lock no longer surely holds ({})",
                        fence.why().unwrap_or_else(|| "its renewal is late".into())
                    );
                    return Err(HttpError::HttpRequestDenied);
                }
                self.attempt(parts, request_body.clone(), &waits).await
            };
            if let Ok(answer) = &attempt {
                // The vendor's word on its windows holds every run on the account.
                self.limits
                    .note_answer(answer.status(), answer.headers())
                    .await;
                if answer.status() == http::StatusCode::TOO_MANY_REQUESTS {
                    record.throttled += 1;
                }
            }
            let retry_hint = match &attempt {
                Ok(answer) if retry::is_retryable_status(answer.status()) => {
                    Some(retry::retry_after(answer.headers()))
                }
                Err(Failure::Network(e)) if retry::is_retryable_error(e) => Some(None),
                _ => None,
            };
            if let Some(hint) = retry_hint
                && self.retries.allow(record.attempts)
            {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                drop(attempt);
                tokio::time::sleep(self.retries.backoff(record.attempts, hint)).await;
                continue;
            }
            let mut answer = match attempt {
                Ok(answer) => answer,
                Err(Failure::Network(e)) => return Err(e),
                Err(Failure::Refused(why, code)) => return Err(self.refuse(why, code)),
            };
            record.status = Some(answer.status().as_u16());
            credential::strip(
                answer.headers_mut(),
                self.authorization.as_ref().map(|(name, _)| name),
            );
            return Ok(answer);
        }
    }

    /// One try: send, and read the whole answer under the caps.
    async fn attempt(
        &self,
        parts: &http::request::Parts,
        body: Bytes,
        waits: &Waits,
    ) -> Result<http::Response<HeldBody>, Failure> {
        let mut request = http::Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        let answer = match self.transport.send(request, waits.answer).await {
            Ok(answer) => answer,
            Err(SendError::Refused(why)) => {
                return Err(Failure::Refused(why, HttpError::DestinationIpProhibited));
            }
            Err(SendError::Failed(e)) => return Err(Failure::Network(e)),
        };
        let (head, body) = answer.into_parts();
        let limit = self.policy.max_response_bytes;
        let from = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default();
        match body::read(body, limit, &self.budget, waits.between_bytes).await {
            Ok(held) => Ok(http::Response::from_parts(head, HeldBody::new(held))),
            Err(BodyError::TooLarge { limit }) => Err(Failure::Refused(
                format!(
                    "an answer over the {} limit (from {})",
                    size(limit),
                    text::clean(from, text::MAX_LABEL_CHARS)
                ),
                HttpError::HttpResponseBodySize(Some(limit as u64)),
            )),
            Err(BodyError::OverBudget { budget }) => Err(Failure::Refused(
                budget_words(budget),
                HttpError::HttpResponseBodySize(None),
            )),
            Err(BodyError::Stalled(_)) => Err(Failure::Network(HttpError::ConnectionReadTimeout)),
            Err(BodyError::Failed(e)) => Err(Failure::Network(e)),
        }
    }

    fn over_budget(&self, budget: usize) -> HttpError {
        self.refuse(budget_words(budget), HttpError::HttpRequestBodySize(None))
    }

    /// Records a refusal in the run's stats and logs it; returns the error for the connector.
    fn refuse(&self, why: String, code: HttpError) -> HttpError {
        tracing::warn!(connector = %self.connector, "refused {why}");
        let mut refusals = self.stats.refusals.lock().unwrap();
        if refusals.len() < MAX_REFUSALS && !refusals.contains(&why) {
            refusals.push(why);
        }
        code
    }
}

/// Why one attempt got no usable answer.
enum Failure {
    /// The host refused it (words for the report, and the code for the connector).
    Refused(String, HttpError),
    Network(HttpError),
}

/// The waits of one request: the connector's own, capped by the policy.
struct Waits {
    body: Duration,
    answer: Duration,
    between_bytes: Duration,
}

impl Waits {
    fn new(policy: &BrokerPolicy, options: Option<RequestOptions>) -> Waits {
        let cap = policy.request_timeout;
        let pick = |asked: Option<Duration>| asked.map_or(cap, |a| a.min(cap));
        let options = options.unwrap_or_default();
        Waits {
            body: cap,
            answer: pick(options.first_byte_timeout),
            between_bytes: pick(options.between_bytes_timeout),
        }
    }
}

fn budget_words(budget: usize) -> String {
    format!(
        "bodies held at once over the run's {} budget for requests and answers",
        size(budget)
    )
}

/// A byte count in words (`32 MiB`, `512 KiB`, `100 bytes`).
fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b}-byte"),
    }
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// A transport for brokers that must never reach the network.
struct NoNetwork;

impl Transport for NoNetwork {
    fn send(&self, _: http::Request<Bytes>, _: Duration) -> Sending {
        Box::pin(async { Err(SendError::Refused("any request at all".into())) })
    }
}

/// Largest write a connector's request body stream takes at once, so that bodies waiting for
/// a slot hold little in the host.
const BODY_CHUNK: usize = 64 << 10;

/// The hooks wasmtime-wasi-http calls; they hand every request to the run's [`Broker`].
pub(crate) struct BrokerHooks {
    broker: Arc<Broker>,
    /// Requests this call asked to send (what a batch costs, for the run's estimate).
    asked: u64,
}

impl BrokerHooks {
    pub(crate) fn new(broker: Arc<Broker>) -> BrokerHooks {
        BrokerHooks { broker, asked: 0 }
    }

    /// Requests the call asked to send so far.
    pub(crate) fn asked(&self) -> u64 {
        self.asked
    }
}

impl WasiHttpHooks for BrokerHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_io: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>
    {
        self.asked += 1;
        let broker = self.broker.clone();
        Box::new(async move {
            let response = broker.send(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(async { Ok(()) }) as IoFuture,
            ))
        })
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// An in-process vendor: answers with `answer(n)` for the n-th request (from 1).
    struct Scripted<F> {
        answer: F,
        seen: AtomicUsize,
        in_flight: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
        requests: Mutex<Vec<http::Request<Bytes>>>,
        delay: Duration,
    }

    fn scripted<F>(delay: Duration, answer: F) -> Arc<Scripted<F>>
    where
        F: Fn(usize) -> http::Response<Bytes> + Send + Sync + 'static,
    {
        Arc::new(Scripted {
            answer,
            seen: AtomicUsize::new(0),
            in_flight: Arc::default(),
            peak: Arc::default(),
            requests: Mutex::default(),
            delay,
        })
    }

    impl<F> Transport for Scripted<F>
    where
        F: Fn(usize) -> http::Response<Bytes> + Send + Sync + 'static,
    {
        fn send(&self, request: http::Request<Bytes>, _: Duration) -> Sending {
            let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            self.requests.lock().unwrap().push(request);
            let answer = (self.answer)(n).map(|b| {
                http_body_util::Full::new(b)
                    .map_err(|never| match never {})
                    .boxed_unsync()
            });
            let (in_flight, delay) = (self.in_flight.clone(), self.delay);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(answer)
            })
        }
    }

    fn status(code: u16, headers: &[(&str, &str)], body: &'static str) -> http::Response<Bytes> {
        let mut answer = http::Response::builder().status(code);
        for (k, v) in headers {
            answer = answer.header(*k, *v);
        }
        answer.body(Bytes::from_static(body.as_bytes())).unwrap()
    }

    fn broker(transport: Arc<dyn Transport>, policy: BrokerPolicy, vendor: VendorLimits) -> Broker {
        let setup = BrokerSetup {
            connector: "test",
            allowed: AllowList::declared(&["api.vendor-test.com".into()]),
            auth: &AuthScheme::Bearer,
            credential: Some(&Credential::ApiKey(crate::Secret::new("s3cret".into()))),
            vendor,
            policy,
            base_path: "",
        };
        Broker::with_transport(setup, transport).unwrap()
    }

    /// A credential in a header of the connector's naming (contract 0.3): set by the host over
    /// whatever the connector put there, and stripped from the answer.
    #[tokio::test(start_paused = true)]
    async fn a_header_credential_goes_out_in_its_header_and_never_comes_back() {
        let vendor = scripted(Duration::ZERO, |_| {
            status(200, &[("api-key", "s3cret"), ("x-keep", "1")], "ok")
        });
        let auth = AuthScheme::Header(crate::contract::HeaderAuth {
            name: "api-key".into(),
            prefix: String::new(),
        });
        let setup = BrokerSetup {
            connector: "test",
            allowed: AllowList::declared(&["api.vendor-test.com".into()]),
            auth: &auth,
            credential: Some(&Credential::ApiKey(crate::Secret::new("s3cret".into()))),
            vendor: VendorLimits::default(),
            policy: BrokerPolicy::default(),
            base_path: "",
        };
        let broker = Broker::with_transport(setup, vendor.clone()).unwrap();
        let forged = http::Request::get("https://api.vendor-test.com/x")
            .header("api-key", "forged")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let answer = send(&broker, forged).await.unwrap();
        assert!(
            answer.headers().get("api-key").is_none(),
            "the credential flowed back"
        );
        assert_eq!(answer.headers()["x-keep"], "1");
        let requests = vendor.requests.lock().unwrap();
        assert_eq!(requests[0].headers()["api-key"], "s3cret");
        assert_eq!(requests[0].headers().get_all("api-key").iter().count(), 1);
        assert!(requests[0].headers().get("authorization").is_none());
    }

    fn get(url: &str) -> http::Request<http_body_util::Full<Bytes>> {
        http::Request::get(url)
            .header("authorization", "Basic Zm9yZ2Vk")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    }

    async fn send(
        broker: &Broker,
        request: http::Request<http_body_util::Full<Bytes>>,
    ) -> Result<http::Response<HeldBody>, HttpError> {
        broker
            .send(request.map(|b| b.map_err(|never| match never {})), None)
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_requests_wait_as_the_vendor_asks_then_succeed() {
        let vendor = scripted(Duration::ZERO, |n| match n {
            1 | 2 => status(429, &[("retry-after", "7")], "slow down"),
            _ => status(200, &[("set-cookie", "session=1")], "ok"),
        });
        let broker = broker(
            vendor.clone(),
            BrokerPolicy::default(),
            VendorLimits::default(),
        );
        let start = tokio::time::Instant::now();
        let answer = send(&broker, get("https://api.vendor-test.com/x"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert!(
            answer.headers().get("set-cookie").is_none(),
            "auth headers flow back"
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(14),
            "two waits of Retry-After: 7"
        );
        assert_eq!(
            (broker.stats().requests(), broker.stats().retries()),
            (3, 2)
        );
        // The connector's forged credential never went out; the connection's did, each time.
        for request in vendor.requests.lock().unwrap().iter() {
            assert_eq!(request.headers()["authorization"], "Bearer s3cret");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_hint_backoff_grows_and_gives_up_after_the_last_attempt() {
        let vendor = scripted(Duration::ZERO, |_| status(503, &[], "down"));
        let policy = BrokerPolicy {
            max_attempts: 4,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
            ..BrokerPolicy::default()
        };
        let broker = broker(vendor, policy, VendorLimits::default());
        let start = tokio::time::Instant::now();
        let answer = send(&broker, get("https://api.vendor-test.com/x"))
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            503,
            "the last answer goes back to the connector"
        );
        assert_eq!(broker.stats().requests(), 4);
        // Waits of 200, 400 and 800 ms, each with jitter between half and all of it.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited <= Duration::from_millis(1400),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_never_exceed_the_cap_even_when_the_vendor_declares_none() {
        let vendor = scripted(Duration::from_secs(1), |_| status(200, &[], "ok"));
        let broker = Arc::new(broker(
            vendor.clone(),
            BrokerPolicy::default(),
            VendorLimits::default(),
        ));
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let broker = broker.clone();
            sends.spawn(async move { send(&broker, get("https://api.vendor-test.com/x")).await });
        }
        while let Some(done) = sends.join_next().await {
            assert_eq!(done.unwrap().unwrap().status(), 200);
        }
        assert_eq!(vendor.peak.load(Ordering::SeqCst), DEFAULT_MAX_IN_FLIGHT);

        // A vendor limit declared far too high is held to the host's ceiling.
        let declared = VendorLimits {
            max_concurrent_requests: 1_000_000,
            windows: vec![],
        };
        assert_eq!(
            BrokerPolicy::default().in_flight(&declared),
            MAX_DECLARED_IN_FLIGHT
        );
    }

    #[tokio::test]
    async fn requests_off_the_allow_list_and_oversized_bodies_are_refused_before_sending() {
        let vendor = scripted(Duration::ZERO, |_| status(200, &[], "ok"));
        let policy = BrokerPolicy {
            max_request_bytes: 1 << 10,
            ..BrokerPolicy::default()
        };
        let broker = broker(vendor.clone(), policy, VendorLimits::default());
        for url in [
            "https://evil.example.net/steal",
            "http://api.vendor-test.com/x",
            "https://api.vendor-test.com:8443/x",
            "https://user@api.vendor-test.com/x",
        ] {
            let refused = send(&broker, get(url)).await.unwrap_err();
            assert!(
                matches!(refused, HttpError::HttpRequestDenied),
                "{url}: {refused:?}"
            );
        }
        let big = http::Request::post("https://api.vendor-test.com/x")
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 4 << 10])))
            .unwrap();
        let refused = send(&broker, big).await.unwrap_err();
        assert!(
            matches!(refused, HttpError::HttpRequestBodySize(Some(1024))),
            "{refused:?}"
        );
        assert_eq!(vendor.seen.load(Ordering::SeqCst), 0, "something was sent");
        let refusals = broker.stats().refusals();
        assert_eq!(
            refusals,
            [
                "a request to https://evil.example.net:443, outside the connection's allowed hosts",
                "a request to http://api.vendor-test.com:80, outside the connection's allowed hosts",
                "a request to https://api.vendor-test.com:8443, outside the connection's allowed hosts",
                "a request to user@api.vendor-test.com with a user name in its URL",
                "a request body over the 1 KiB limit (to api.vendor-test.com)",
            ]
        );
    }

    #[tokio::test]
    async fn answers_are_capped_one_by_one_and_together() {
        static BIG: [u8; 600] = [b'x'; 600];
        let vendor = scripted(Duration::ZERO, |_| {
            http::Response::new(Bytes::from_static(&BIG))
        });
        let policy = BrokerPolicy {
            max_response_bytes: 1000,
            max_buffered_bytes: 1000,
            ..BrokerPolicy::default()
        };
        let broker = broker(vendor, policy, VendorLimits::default());
        let first = send(&broker, get("https://api.vendor-test.com/a"))
            .await
            .unwrap();
        // The first answer is still held by the connector: a second does not fit beside it.
        let second = send(&broker, get("https://api.vendor-test.com/b"))
            .await
            .unwrap_err();
        assert!(
            matches!(second, HttpError::HttpResponseBodySize(None)),
            "{second:?}"
        );
        drop(first);
        assert!(
            send(&broker, get("https://api.vendor-test.com/c"))
                .await
                .is_ok()
        );
        assert_eq!(
            broker.stats().refusals(),
            ["bodies held at once over the run's 1000-byte budget for requests and answers"]
        );
    }
}
