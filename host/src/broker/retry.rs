//! Which failures are worth another attempt, and how long to wait before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime_wasi_http::Error as HttpError;

/// Retries allowed across a run, with the backoff rules.
pub struct Retries {
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    budget: AtomicU64,
}

impl Retries {
    pub fn new(max_attempts: u32, base: Duration, max: Duration, budget: u64) -> Retries {
        Retries {
            max_attempts,
            base_backoff: base,
            max_backoff: max,
            budget: AtomicU64::new(budget),
        }
    }

    /// Whether attempt number `attempts` (1-based, just made) may be followed by another:
    /// attempts left for this request, and retries left in the run's budget.
    pub fn allow(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
            && self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Exponential backoff with jitter (between half and all of the doubled delay), or the
    /// vendor's own hint when it gave one; never longer than `max_backoff`.
    pub fn backoff(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.max_backoff);
        }
        let exp = self
            .base_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        exp.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Statuses that say "try again later": throttling and a gateway or service in trouble.
pub fn is_retryable_status(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// Transport failures another attempt may get past.
pub fn is_retryable_error(error: &HttpError) -> bool {
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
            | HttpError::DnsTimeout
    )
}

/// The wait a throttled answer asks for: `Retry-After` (seconds or an HTTP date), else
/// Campaign Monitor's `X-RateLimit-Reset` (seconds until the window resets).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let seconds = |s: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    };
    if let Some(value) = text("retry-after") {
        if let Some(wait) = seconds(value) {
            return Some(wait);
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc2822(value) {
            let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
            return Some(wait.to_std().unwrap_or_default());
        }
    }
    text("x-ratelimit-reset").and_then(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn retry_hint_reads_retry_after_then_rate_limit_reset() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after", HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            retry_after(&headers),
            Some(Duration::ZERO),
            "a date in the past"
        );
        headers.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
    }

    #[test]
    fn the_run_budget_bounds_retries_across_requests() {
        let retries = Retries::new(3, Duration::from_millis(10), Duration::from_secs(1), 2);
        assert!(retries.allow(1));
        assert!(!retries.allow(3), "no attempts left for this request");
        assert!(retries.allow(2));
        assert!(!retries.allow(1), "the run's budget is spent");
        for attempt in 1..20 {
            let wait = retries.backoff(attempt, None);
            assert!(wait <= Duration::from_secs(1), "{wait:?}");
        }
        assert_eq!(
            retries.backoff(1, Some(Duration::from_secs(90))),
            Duration::from_secs(1)
        );
    }
}
