//! What one connection may hold at once: requests in flight (the vendor's limit, or the
//! host's default when it declares none), the vendor's rate windows (shared by every run on
//! an account, and across workers where the store keeps them), and bytes of request and
//! answer bodies buffered in the host.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests in flight at once per connection when the vendor declares no limit.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// The most requests in flight a connector may declare for its vendor; an operator can allow
/// more explicitly.
pub const MAX_DECLARED_IN_FLIGHT: usize = 64;

/// A vendor's rate limit as the broker paces it: at most `requests` in any `period`, counting
/// the requests `class` matches (all of them when none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Window {
    pub requests: u32,
    pub period: Duration,
    pub class: Option<RequestClass>,
}

/// Which requests a window counts: a method (any when none) and the start of the path after
/// the base URL's own path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestClass {
    pub method: Option<http::Method>,
    pub path_prefix: String,
}

/// The share of a window's rate the broker uses: requests are spaced 2% further apart than the
/// vendor's own figure, so that clocks and queues on the way never tip a window over.
const MARGIN: f64 = 1.02;

impl Window {
    /// The least time between two requests of the window.
    pub fn interval(&self) -> Duration {
        self.period
            .mul_f64(MARGIN / f64::from(self.requests.max(1)))
    }

    /// Names the window among an account's (`120/60000/*/` or `5/60000/POST//batch`).
    pub fn key(&self) -> String {
        let (method, prefix) = match &self.class {
            None => ("*".to_string(), ""),
            Some(c) => (
                c.method.as_ref().map_or("*".into(), |m| m.to_string()),
                c.path_prefix.as_str(),
            ),
        };
        format!(
            "{}/{}/{method}/{prefix}",
            self.requests,
            self.period.as_millis()
        )
    }

    /// The window in words: "120 requests a minute", "5 requests a minute for POST /batch".
    pub fn describe(&self) -> String {
        let per = match self.period.as_secs_f64() {
            1.0 => "a second".to_string(),
            60.0 => "a minute".to_string(),
            3600.0 => "an hour".to_string(),
            86400.0 => "a day".to_string(),
            s => format!("in {s} s"),
        };
        let counted = match &self.class {
            None => String::new(),
            Some(class) => format!(
                " for {}{}",
                class
                    .method
                    .as_ref()
                    .map_or(String::new(), |m| format!("{m} ")),
                match class.path_prefix.as_str() {
                    "" => "every path".to_string(),
                    prefix => crate::text::clean(prefix, 80),
                }
            ),
        };
        format!("{} requests {per}{counted}", self.requests)
    }

    fn counts(&self, method: &http::Method, path: &str) -> bool {
        self.class.as_ref().is_none_or(|class| {
            class.method.as_ref().is_none_or(|m| m == method)
                && path.starts_with(class.path_prefix.as_str())
        })
    }
}

/// Caps requests in flight and paces them to the vendor's windows.
pub struct Limits {
    slots: Semaphore,
    /// The path of the connection's base URL: windows' classes match what follows it.
    base_path: String,
    windows: Vec<Arc<Paced>>,
    /// The vendor account the windows are shared on, beyond this process when its store
    /// keeps them (PostgreSQL).
    account: Option<SharedAccount>,
    /// Requests each window counted for these limits' own run (the windows themselves may be
    /// shared with other runs), and the latest send time reserved for one of them.
    counted: Vec<Mutex<(u64, tokio::time::Instant)>>,
    /// Every request these limits admitted, counted by a window or not.
    admitted: std::sync::atomic::AtomicU64,
}

/// How one of a run's windows stands: its pace, the run's requests it counted, and how long
/// until the last of them goes out (what is booked ahead of it).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub interval: Duration,
    pub counted: u64,
    /// Every request of the run so far, this window's or not.
    pub of: u64,
    pub booked: Duration,
}

/// One window with its next free send time.
struct Paced {
    window: Window,
    next: Mutex<tokio::time::Instant>,
}

impl Paced {
    fn new(window: Window) -> Arc<Paced> {
        Arc::new(Paced {
            window,
            next: Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// The time the next request may go out, reserving it.
    fn reserve(&self) -> tokio::time::Instant {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let at = (*next).max(tokio::time::Instant::now());
        *next = at + self.window.interval();
        at
    }

    /// Nothing goes out before `until` (the vendor said to wait).
    fn hold(&self, until: tokio::time::Instant) {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *next = (*next).max(until);
    }
}

impl Limits {
    /// At most `in_flight` requests at once, paced to each of `windows` (a connection whose
    /// base URL has the path `base_path`).
    pub fn new(in_flight: usize, windows: Vec<Window>, base_path: &str) -> Limits {
        let windows: Vec<_> = windows
            .into_iter()
            .filter(|w| w.requests > 0 && !w.period.is_zero())
            .map(Paced::new)
            .collect();
        Limits {
            slots: Semaphore::new(in_flight.max(1)),
            base_path: base_path.trim_end_matches('/').to_string(),
            counted: windows
                .iter()
                .map(|_| Mutex::new((0, tokio::time::Instant::now())))
                .collect(),
            windows,
            account: None,
            admitted: Default::default(),
        }
    }

    /// Shares these limits' windows with every run against `account`: in this process, and
    /// across workers when the account's store keeps windows. The vendor counts the account's
    /// requests, whichever run or worker sends them.
    pub fn share(&mut self, account: &SharedAccount) {
        type Accounts = Mutex<std::collections::HashMap<(String, Window), Arc<Paced>>>;
        static ACCOUNTS: std::sync::OnceLock<Accounts> = std::sync::OnceLock::new();
        let mut accounts = ACCOUNTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for paced in &mut self.windows {
            *paced = accounts
                .entry((account.key.clone(), paced.window.clone()))
                .or_insert_with(|| paced.clone())
                .clone();
        }
        self.account = Some(account.clone());
    }

    /// Waits for a slot and for every window counting a `method` request to `path`; the slot is
    /// held until the permit is dropped (the vendor counts a request until it has answered).
    pub async fn admit(
        &self,
        method: &http::Method,
        path: &str,
    ) -> tokio::sync::SemaphorePermit<'_> {
        let slot = self.slots.acquire().await.expect("never closed");
        let path = path.strip_prefix(self.base_path.as_str()).unwrap_or(path);
        self.admitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut at = None;
        for (paced, counted) in self.windows.iter().zip(&self.counted) {
            if !paced.window.counts(method, path) {
                continue;
            }
            let reserved = match self.reserve_shared(&paced.window).await {
                Some(wait) => tokio::time::Instant::now() + wait,
                None => paced.reserve(),
            };
            let mut counted = counted.lock().unwrap_or_else(|p| p.into_inner());
            counted.0 += 1;
            counted.1 = counted.1.max(reserved);
            at = at.max(Some(reserved));
        }
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
        slot
    }

    /// The wait for `window`'s next send time among every worker, when the account's store
    /// keeps windows; `None` to pace in this process (no such store, or it cannot be reached:
    /// then the run's own writes fail soon after, and this process at least keeps its pace).
    async fn reserve_shared(&self, window: &Window) -> Option<Duration> {
        let account = self.account.as_ref()?;
        let reserved = account
            .slots
            .reserve(&account.key, &window.key(), window.interval())
            .await;
        match reserved {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!("pacing {} in this process only: {e:#}", window.describe());
                None
            }
        }
    }

    /// How each of the vendor's windows stands for this run.
    pub fn pacing(&self) -> Vec<Pacing> {
        let now = tokio::time::Instant::now();
        let of = self.admitted.load(std::sync::atomic::Ordering::Relaxed);
        self.windows
            .iter()
            .zip(&self.counted)
            .map(|(paced, counted)| {
                let (counted, last) = *counted.lock().unwrap_or_else(|p| p.into_inner());
                Pacing {
                    interval: paced.window.interval(),
                    counted,
                    of,
                    booked: last.saturating_duration_since(now),
                }
            })
            .collect()
    }

    /// Holds every window until the vendor's `Retry-After` or rate headers say requests may
    /// go again (a throttled answer, or one saying none are left in the window).
    pub async fn note_answer(&self, status: http::StatusCode, headers: &http::HeaderMap) {
        let Some(wait) = rate_wait(status, headers) else {
            return;
        };
        let until = tokio::time::Instant::now() + wait;
        for paced in &self.windows {
            paced.hold(until);
            if let Some(account) = &self.account
                && let Err(e) = account
                    .slots
                    .hold(&account.key, &paced.window.key(), wait)
                    .await
            {
                tracing::warn!(
                    "holding {} for other workers failed: {e:#}",
                    paced.window.describe()
                );
            }
        }
    }
}

/// How long the vendor asks to wait: `Retry-After` on a 429 or 503, or the reset of a window
/// its rate headers say is spent (`X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`, and the
/// spellings vendors use for them). At most 15 minutes.
pub fn rate_wait(status: http::StatusCode, headers: &http::HeaderMap) -> Option<Duration> {
    let number = |names: &[&str]| {
        names.iter().find_map(|name| {
            headers
                .get(*name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    let wait = if matches!(status.as_u16(), 429 | 503) {
        super::retry::retry_after(headers)
    } else {
        None
    };
    let wait = wait.or_else(|| {
        let remaining = number(&[
            "x-ratelimit-remaining",
            "ratelimit-remaining",
            "x-rate-limit-remaining",
            "x-sib-ratelimit-remaining",
        ])?;
        if remaining > 0.0 {
            return None;
        }
        let reset = number(&[
            "x-ratelimit-reset",
            "ratelimit-reset",
            "x-rate-limit-reset",
            "x-sib-ratelimit-reset",
        ])?;
        // Seconds from now, or a Unix time.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        let seconds = if reset > 1_000_000_000.0 {
            reset - now
        } else {
            reset
        };
        (seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
    })?;
    Some(wait.min(Duration::from_secs(15 * 60)))
}

/// Bytes of bodies a run may hold in the host at once, shared by its requests and answers.
/// A chunk that does not fit is refused at once rather than waited for: whatever holds the
/// budget is the connector's own traffic, so waiting could only deadlock it.
#[derive(Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    limit: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> ByteBudget {
        ByteBudget {
            bytes: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            limit,
        }
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `n` more bytes into `held`, or says the budget is spent.
    pub fn take(&self, n: usize, held: &mut Option<OwnedSemaphorePermit>) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                match held {
                    Some(h) => h.merge(permit),
                    None => *held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_budget_is_shared_and_given_back_when_released() {
        let budget = ByteBudget::new(100);
        let (mut a, mut b) = (None, None);
        assert!(budget.take(60, &mut a));
        assert!(budget.take(30, &mut b));
        assert!(!budget.take(20, &mut b), "over the shared budget");
        drop(a);
        assert!(budget.take(20, &mut b));
        assert_eq!(b.as_ref().map(|p| p.num_permits()), Some(50));
    }

    fn window(requests: u32, seconds: u64, class: Option<(&str, &str)>) -> Window {
        Window {
            requests,
            period: Duration::from_secs(seconds),
            class: class.map(|(method, prefix)| RequestClass {
                method: Some(method.parse().unwrap()),
                path_prefix: prefix.into(),
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_paced_and_capped() {
        let limits = Arc::new(Limits::new(2, vec![window(10, 1, None)], ""));
        let get = http::Method::GET;
        let start = tokio::time::Instant::now();
        let mut times = vec![];
        for _ in 0..5 {
            let _slot = limits.admit(&get, "/x").await;
            times.push(start.elapsed());
        }
        // One every 102 ms (10 a second, 2% apart more).
        assert_eq!(times[4], Duration::from_millis(408));
        let first = limits.admit(&get, "/x").await;
        let second = limits.admit(&get, "/x").await;
        let third = tokio::time::timeout(Duration::from_secs(5), limits.admit(&get, "/x")).await;
        assert!(
            third.is_err(),
            "a third request went out with two in flight"
        );
        drop((first, second));
    }

    /// Windows as vendors state them: never more than a window's requests in any span of its
    /// length, a class counting only its requests, shared by every run on an account.
    #[tokio::test(start_paused = true)]
    async fn every_window_holds_in_any_span_and_classes_count_their_own() {
        let windows = vec![
            window(120, 60, None),
            window(5, 60, Some(("POST", "/batch"))),
        ];
        let run = |account: &str| {
            let mut limits = Limits::new(16, windows.clone(), "/api");
            limits.share(&SharedAccount {
                key: account.into(),
                slots: ProcessSlots::shared(),
            });
            Arc::new(limits)
        };
        let (a, b) = (run("acme"), run("acme"));
        let start = tokio::time::Instant::now();
        let mut sent: Vec<(Duration, bool)> = vec![];
        for i in 0..40 {
            let (limits, post) = if i % 2 == 0 {
                (&a, i % 4 == 0)
            } else {
                (&b, false)
            };
            let (method, path) = match post {
                true => (http::Method::POST, "/api/batch"),
                false => (http::Method::GET, "/api/subscribers/x"),
            };
            let _slot = limits.admit(&method, path).await;
            sent.push((start.elapsed(), post));
        }
        let most_in = |span: Duration, only_posts: bool| {
            sent.iter()
                .map(|(t, _)| {
                    sent.iter()
                        .filter(|(u, p)| *u >= *t && *u < *t + span && (!only_posts || *p))
                        .count()
                })
                .max()
                .unwrap_or(0)
        };
        assert!(most_in(Duration::from_secs(60), true) <= 5);
        assert!(most_in(Duration::from_secs(60), false) <= 120);
        // Ten batches over two runs of one account: the tenth waited out almost two windows.
        let tenth_post = sent.iter().filter(|(_, p)| *p).nth(9).unwrap().0;
        assert!(tenth_post >= Duration::from_secs(108), "{tenth_post:?}");

        // Another account has windows of its own.
        let other = run("other");
        let before = tokio::time::Instant::now();
        let _slot = other.admit(&http::Method::POST, "/api/batch").await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vendor_saying_wait_holds_every_window() {
        let limits = Limits::new(4, vec![window(100, 1, None)], "");
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        limits
            .note_answer(http::StatusCode::TOO_MANY_REQUESTS, &headers)
            .await;
        let start = tokio::time::Instant::now();
        let _slot = limits.admit(&http::Method::GET, "/x").await;
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        let mut spent = http::HeaderMap::new();
        spent.insert("x-ratelimit-remaining", "0".parse().unwrap());
        spent.insert("x-ratelimit-reset", "3".parse().unwrap());
        assert_eq!(
            rate_wait(http::StatusCode::OK, &spent),
            Some(Duration::from_secs(3))
        );
        spent.insert("x-ratelimit-remaining", "4".parse().unwrap());
        assert_eq!(rate_wait(http::StatusCode::OK, &spent), None);
    }
}

/// A vendor account's simultaneous requests, counted beyond one run: a vendor such as
/// Mailchimp limits the account, not a connection or a process. A run's broker takes one of
/// the account's slots for each attempt, on top of its own limit.
pub trait AccountSlots: Send + Sync {
    /// Waits for one of the `capacity` slots of `account`, held until the guard is dropped.
    /// A slot whose holder dies without giving it back must come back by itself, soon (a
    /// shared store leases it, renewed while its holder lives).
    fn acquire<'a>(
        &'a self,
        account: &'a str,
        capacity: usize,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<AccountSlot>>;

    /// Reserves the next send time of one of `account`'s rate windows (`window` names it,
    /// its requests `interval` apart) among every worker, and says how long to wait for it.
    /// `None`: this store keeps no windows, and the process paces them itself (one machine).
    fn reserve<'a>(
        &'a self,
        account: &'a str,
        window: &'a str,
        interval: Duration,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Option<Duration>>> {
        let _ = (account, window, interval);
        Box::pin(async { Ok(None) })
    }

    /// Holds one of `account`'s windows for every worker: nothing goes out for `wait` (the
    /// vendor said so).
    fn hold<'a>(
        &'a self,
        account: &'a str,
        window: &'a str,
        wait: Duration,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<()>> {
        let _ = (account, window, wait);
        Box::pin(async { Ok(()) })
    }
}

/// A slot of a vendor account; given back when dropped.
pub struct AccountSlot {
    _held: Box<dyn Send + Sync>,
}

impl AccountSlot {
    /// A slot that `held` gives back when dropped.
    pub fn new(held: impl Send + Sync + 'static) -> AccountSlot {
        AccountSlot {
            _held: Box::new(held),
        }
    }
}

/// The account a run's requests count against, and where its slots are kept.
#[derive(Clone)]
pub struct SharedAccount {
    /// Names the vendor account (never its credential: the connector and the credential's
    /// keyed fingerprint).
    pub key: String,
    pub slots: Arc<dyn AccountSlots>,
}

/// Slots counted within this process: every run of the process against one account shares
/// them (one machine, one state file).
#[derive(Default)]
pub struct ProcessSlots {
    accounts: Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

impl ProcessSlots {
    /// The process's slots, shared by every state it opens.
    pub fn shared() -> Arc<ProcessSlots> {
        static SLOTS: std::sync::OnceLock<Arc<ProcessSlots>> = std::sync::OnceLock::new();
        SLOTS.get_or_init(Arc::default).clone()
    }

    /// Waits for a slot of `account` among `capacity` in this process.
    pub async fn local(&self, account: &str, capacity: usize) -> OwnedSemaphorePermit {
        let semaphore = self
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(account.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(capacity.max(1))))
            .clone();
        semaphore.acquire_owned().await.expect("never closed")
    }
}

impl AccountSlots for ProcessSlots {
    fn acquire<'a>(
        &'a self,
        account: &'a str,
        capacity: usize,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<AccountSlot>> {
        Box::pin(async move { Ok(AccountSlot::new(self.local(account, capacity).await)) })
    }
}
