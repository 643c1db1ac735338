//! What entitles a run to act for its export: the lock (a lease, across machines) its worker
//! holds, as the run sees it. A fence has a token, the lease's generation, which every write
//! of the run carries so that the store refuses it once another worker holds the run; and a
//! deadline on this machine's own clock until which the lease is surely still held (its last
//! renewal, plus the term, less a margin). No request to a vendor starts once the fence no
//! longer holds, and a lost lease stops the run's work at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A run's right to act for its export. Clones share one state.
#[derive(Clone)]
pub struct Fence(Arc<Inner>);

struct Inner {
    token: String,
    /// [`clock`] nanoseconds until which the lock is surely held; `u64::MAX` for a lock that
    /// cannot be lost while the process lives (a lock file).
    until: AtomicU64,
    lost: CancellationToken,
    why: Mutex<Option<String>>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("token", &self.0.token)
            .field("holds", &self.holds())
            .finish()
    }
}

impl Fence {
    /// A fence that holds until it is lost (a lock the operating system keeps for as long as
    /// the process lives).
    pub fn for_life(token: String) -> Fence {
        Fence::new(token, u64::MAX)
    }

    /// A fence holding until `until` ([`clock`] nanoseconds), until renewed.
    pub fn leased(token: String, until: u64) -> Fence {
        Fence::new(token, until)
    }

    fn new(token: String, until: u64) -> Fence {
        Fence(Arc::new(Inner {
            token,
            until: AtomicU64::new(until),
            lost: CancellationToken::new(),
            why: Mutex::new(None),
        }))
    }

    /// The lock's generation, carried by every write of the run.
    pub fn token(&self) -> &str {
        &self.0.token
    }

    /// Whether the lock is surely still held now.
    pub fn holds(&self) -> bool {
        !self.0.lost.is_cancelled() && clock() < self.0.until.load(Ordering::Acquire)
    }

    /// When the lock stops being surely held, unless renewed ([`clock`] nanoseconds).
    pub fn until(&self) -> u64 {
        self.0.until.load(Ordering::Acquire)
    }

    /// The lock was renewed: it is surely held until `until` (never moved back; a lost lock
    /// stays lost).
    pub fn renewed(&self, until: u64) {
        if !self.0.lost.is_cancelled() {
            self.0.until.fetch_max(until, Ordering::AcqRel);
        }
    }

    /// The lock is lost (taken over, or not renewed in time): the run stops.
    pub fn lose(&self, why: String) {
        let mut held = self.0.why.lock().unwrap();
        if held.is_none() {
            *held = Some(why);
        }
        drop(held);
        self.0.until.store(0, Ordering::Release);
        self.0.lost.cancel();
    }

    /// Cancelled when the lock is lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.0.lost
    }

    /// Why the lock was lost, once it was.
    pub fn why(&self) -> Option<String> {
        self.0.why.lock().unwrap().clone()
    }

    /// Loses the lock when its deadline passes unrenewed, even if whoever renews it is late:
    /// runs until the fence is lost.
    pub async fn watch(self) {
        loop {
            let until = self.until();
            if until == u64::MAX {
                self.0.lost.cancelled().await;
                return;
            }
            let now = clock();
            if now >= until {
                if !self.0.lost.is_cancelled() {
                    self.lose(format!(
                        "its lease was not renewed in time (it was surely held until {:.1} s ago)",
                        Duration::from_nanos(now - until).as_secs_f64()
                    ));
                }
                return;
            }
            tokio::select! {
                _ = self.0.lost.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_nanos(until - now)) => {}
            }
        }
    }
}

/// Nanoseconds of this machine's boot-time clock: monotonic, and counting time the machine
/// was suspended (a lease expires in the database's time during a suspension too).
pub fn clock() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// [`clock`] nanoseconds `after` from now.
#[cfg(test)]
fn clock_after(after: Duration) -> u64 {
    clock().saturating_add(after.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_lapses_at_its_deadline_unless_renewed() {
        let fence = Fence::leased("t".into(), clock_after(Duration::from_millis(100)));
        assert!(fence.holds());
        let watch = tokio::spawn(fence.clone().watch());
        tokio::time::sleep(Duration::from_millis(60)).await;
        fence.renewed(clock_after(Duration::from_millis(150)));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(fence.holds(), "renewed in time");
        watch.await.unwrap();
        assert!(!fence.holds());
        assert!(fence.lost().is_cancelled());
        assert!(fence.why().unwrap().contains("not renewed in time"));
    }

    #[test]
    fn a_lost_fence_stays_lost_with_its_first_reason() {
        let fence = Fence::for_life("t".into());
        assert!(fence.holds());
        fence.lose("taken over".into());
        fence.renewed(u64::MAX);
        assert!(!fence.holds());
        fence.lose("again".into());
        assert_eq!(fence.why().as_deref(), Some("taken over"));
    }
}
