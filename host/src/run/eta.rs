//! How long a run has left. Before anything is handled, the vendor's windows say: the
//! batches still to send at the pace of the slowest window, one request a batch. From then
//! on, the pace so far says (profiles handled a second), which covers the windows as the
//! broker keeps them, the vendor's latency, the host's own speed and other runs sharing the
//! account.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::broker::Window;

/// The latest time left, shared with the run's journal writer.
#[derive(Default)]
pub(crate) struct TimeLeft(AtomicU64);

impl TimeLeft {
    pub(crate) fn set(&self, left: Option<Duration>) {
        let millis = left.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1) + 1
        });
        self.0.store(millis, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_millis(n - 1)),
        }
    }
}

/// Estimates the time a run's sending phase has left.
pub(crate) struct Eta {
    started: Instant,
    total: Option<u64>,
    batch_size: u64,
}

impl Eta {
    /// A phase of `total` profiles (when known), sent in batches of `batch_size`, starting now.
    pub(crate) fn start(total: Option<u64>, batch_size: u64) -> Eta {
        Eta {
            started: Instant::now(),
            total,
            batch_size: batch_size.max(1),
        }
    }

    /// Time left once `done` profiles are handled, the requests being paced to `windows`;
    /// `None` when the size is unknown, or nothing is handled yet and no window is declared.
    pub(crate) fn left(&self, done: u64, windows: &[Window]) -> Option<Duration> {
        let total = self.total?;
        let left = total.saturating_sub(done);
        if left == 0 {
            return Some(Duration::ZERO);
        }
        if done == 0 {
            return at_limits(left.div_ceil(self.batch_size), windows);
        }
        Some(self.started.elapsed().mul_f64(left as f64 / done as f64))
    }
}

/// The least time `requests` take at `windows` (each counting all of them), or `None` when
/// none is declared.
pub(crate) fn at_limits(requests: u64, windows: &[Window]) -> Option<Duration> {
    windows
        .iter()
        .map(|w| w.interval().mul_f64(requests as f64))
        .max()
}

/// A duration for people: `2 h 5 min`, `4 min 10 s`, `12 s`.
pub fn words(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_pace_the_windows_say_and_after_the_pace_so_far() {
        let window = Window {
            requests: 102,
            period: Duration::from_secs(50),
            class: None,
        };
        let eta = Eta::start(Some(1000), 50);
        // 20 batches at one request each, 0.5 s apart (50 s over 102, with the 2% margin).
        assert_eq!(
            eta.left(0, std::slice::from_ref(&window)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(eta.left(0, &[]), None);
        // Half done: as long again as it took.
        std::thread::sleep(Duration::from_millis(40));
        let left = eta.left(500, &[window]).unwrap();
        assert!(
            left >= Duration::from_millis(40) && left < Duration::from_secs(1),
            "{left:?}"
        );
        assert_eq!(eta.left(1000, &[]), Some(Duration::ZERO));
        assert_eq!(Eta::start(None, 50).left(10, &[]), None);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(words(Duration::from_secs(12)), "12 s");
        assert_eq!(words(Duration::from_secs(250)), "4 min 10 s");
        assert_eq!(words(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(words(Duration::from_secs(3 * 86400 + 7200)), "3 d 2 h");
    }
}
