//! A vendor's rate limit as simulators keep it: a fixed window from its first request, counting
//! up to a limit (as Laravel's throttle, behind MailerLite, and Brevo's hourly and per-second
//! windows count). What is left and when it resets go into the vendor's rate headers.

use std::time::{Duration, Instant};

/// One window's count.
#[derive(Debug, Clone)]
pub struct Quota {
    pub limit: u32,
    pub window: Duration,
    since: Option<Instant>,
    used: u32,
}

impl Quota {
    /// At most `limit` requests a `window`; `u32::MAX` keeps none.
    pub fn new(limit: u32, window: Duration) -> Quota {
        Quota {
            limit,
            window,
            since: None,
            used: 0,
        }
    }

    /// Whether this quota limits anything.
    pub fn limits(&self) -> bool {
        self.limit != u32::MAX
    }

    /// Counts a request if the window has room, giving what is left and the time until the
    /// window resets; else the time until it resets.
    pub fn take(&mut self) -> Result<(u32, Duration), Duration> {
        let now = Instant::now();
        let since = match self.since {
            Some(since) if now.duration_since(since) < self.window => since,
            _ => {
                self.used = 0;
                *self.since.insert(now)
            }
        };
        let reset = self.window.saturating_sub(now.duration_since(since));
        if self.used >= self.limit {
            return Err(reset);
        }
        self.used += 1;
        Ok((self.limit - self.used, reset))
    }
}

/// Whole seconds, rounded up and at least one: never earlier than the window resets.
pub fn seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_to_its_limit_then_resets() {
        let mut q = Quota::new(2, Duration::from_millis(50));
        assert_eq!(q.take().unwrap().0, 1);
        assert_eq!(q.take().unwrap().0, 0);
        let wait = q.take().unwrap_err();
        assert!(wait <= Duration::from_millis(50));
        std::thread::sleep(wait);
        assert_eq!(q.take().unwrap().0, 1);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_millis(2001)), 3);
    }
}
