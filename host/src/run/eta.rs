//! How long a run has left. Where the vendor declares rate windows and they bind (requests
//! are booked ahead on them), the windows say: what is booked already, plus the requests still
//! to come (the phase's profiles at what a profile cost in the calls that answered, less what
//! was counted) at each window's pace; the slowest window is the answer. Before any call
//! answered, one request a batch. Where no window binds (the vendor's latency, the host's speed
//! or other runs set the pace), the pace so far says: as long again for the rest as the done
//! part took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::broker::{Pacing, Window};

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

/// Estimates the time a run's phase (sending, or settling leavers) has left.
pub(crate) struct Eta {
    started: Instant,
    total: Option<u64>,
    batch_size: u64,
    /// Each window's count, and every request's, when the phase began (the broker counts
    /// over the whole run).
    base: Vec<(u64, u64)>,
}

impl Eta {
    /// A phase of `total` profiles (when known), sent in batches of `batch_size`, starting now
    /// with the windows standing as `pacing` says.
    pub(crate) fn start(total: Option<u64>, batch_size: u64, pacing: &[Pacing]) -> Eta {
        Eta {
            started: Instant::now(),
            total,
            batch_size: batch_size.max(1),
            base: pacing.iter().map(|p| (p.counted, p.of)).collect(),
        }
    }

    /// Time left once `done` profiles are handled, with `called` (profiles, requests) the
    /// phase's calls that answered and what they cost; `None` when the size is unknown, or
    /// nothing is handled yet and no window is declared.
    pub(crate) fn left(
        &self,
        done: u64,
        called: (u64, u64),
        pacing: &[Pacing],
    ) -> Option<Duration> {
        let total = self.total?;
        let left = total.saturating_sub(done);
        if left == 0 {
            return Some(Duration::ZERO);
        }
        // What a profile costs in requests: from the calls that answered, else one a batch.
        let per_profile = match called {
            (0, _) => 1.0 / self.batch_size as f64,
            (profiles, requests) => requests as f64 / profiles as f64,
        };
        let windows = pacing
            .iter()
            .zip(self.base.iter().chain(std::iter::repeat(&(0, 0))))
            .map(|(p, (counted_before, of_before))| {
                let counted = p.counted.saturating_sub(*counted_before);
                let of = p.of.saturating_sub(*of_before);
                // The share of the requests this window counts.
                let share = if of == 0 {
                    1.0
                } else {
                    counted as f64 / of as f64
                };
                let coming = (per_profile * share * total as f64 - counted as f64).max(0.0);
                (p.booked + p.interval.mul_f64(coming), p.booked > p.interval)
            })
            .max_by_key(|(d, _)| *d);
        match windows {
            // The windows set the pace: they know it best.
            Some((left, true)) => Some(left),
            _ if done > 0 => Some(self.started.elapsed().mul_f64(left as f64 / done as f64)),
            Some((left, false)) => Some(left),
            None => None,
        }
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

    fn pacing(interval_ms: u64, counted: u64, booked_ms: u64) -> Pacing {
        Pacing {
            interval: Duration::from_millis(interval_ms),
            counted,
            of: counted,
            booked: Duration::from_millis(booked_ms),
        }
    }

    #[test]
    fn binding_windows_say_and_otherwise_the_pace_so_far() {
        let eta = Eta::start(Some(1000), 50, &[pacing(500, 0, 0)]);
        // Nothing answered: 20 batches at one request each, 0.5 s apart.
        assert_eq!(
            eta.left(0, (0, 0), &[pacing(500, 0, 0)]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(eta.left(0, (0, 0), &[]), None);
        // Calls for 100 profiles made 100 requests (one a profile); 500 are counted, 100 s of
        // them booked ahead: the other 500 cost 250 s more at the window's pace.
        let left = eta
            .left(100, (100, 100), &[pacing(500, 500, 100_000)])
            .unwrap();
        assert_eq!(left, Duration::from_secs(350));
        // A window with nothing booked ahead does not bind: the pace so far says.
        std::thread::sleep(Duration::from_millis(40));
        let left = eta.left(500, (500, 10), &[pacing(500, 10, 0)]).unwrap();
        assert!(
            left >= Duration::from_millis(40) && left < Duration::from_secs(1),
            "{left:?}"
        );
        assert_eq!(eta.left(1000, (1000, 20), &[]), Some(Duration::ZERO));
        assert_eq!(Eta::start(None, 50, &[]).left(10, (10, 1), &[]), None);
        // A later phase counts only its own requests: one a leaver, 10 of 100 counted.
        let leaving = Eta::start(Some(100), 1, &[pacing(100, 900, 0)]);
        let left = leaving
            .left(10, (10, 10), &[pacing(100, 910, 200)])
            .unwrap();
        assert_eq!(left, Duration::from_millis(200 + 90 * 100));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(words(Duration::from_secs(12)), "12 s");
        assert_eq!(words(Duration::from_secs(250)), "4 min 10 s");
        assert_eq!(words(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(words(Duration::from_secs(3 * 86400 + 7200)), "3 d 2 h");
    }
}
