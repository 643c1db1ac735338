//! What one connection may hold at once: requests in flight (the vendor's limit, or the
//! host's default when it declares none), requests per second, and bytes of request and
//! answer bodies buffered in the host.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests in flight at once per connection when the vendor declares no limit.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// The most requests in flight a connector may declare for its vendor; an operator can allow
/// more explicitly.
pub const MAX_DECLARED_IN_FLIGHT: usize = 64;

/// Caps requests in flight and paces them.
pub struct Limits {
    slots: Semaphore,
    pacer: Option<Mutex<Pacer>>,
}

impl Limits {
    /// At most `in_flight` requests at once and, when given, `per_second` a second.
    pub fn new(in_flight: usize, per_second: Option<f64>) -> Limits {
        Limits {
            slots: Semaphore::new(in_flight.max(1)),
            pacer: per_second.filter(|r| r.is_finite() && *r > 0.0).map(|r| {
                Mutex::new(Pacer {
                    interval: Duration::from_secs_f64(1.0 / r),
                    next: tokio::time::Instant::now(),
                })
            }),
        }
    }

    /// Waits for a slot and for the pace; the slot is held until the permit is dropped (the
    /// vendor counts a request until it has answered).
    pub async fn admit(&self) -> tokio::sync::SemaphorePermit<'_> {
        let slot = self.slots.acquire().await.expect("never closed");
        if let Some(pacer) = &self.pacer {
            let at = pacer.lock().unwrap().reserve();
            tokio::time::sleep_until(at).await;
        }
        slot
    }
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

    #[tokio::test(start_paused = true)]
    async fn requests_are_paced_and_capped() {
        let limits = Arc::new(Limits::new(2, Some(10.0)));
        let start = tokio::time::Instant::now();
        let mut times = vec![];
        for _ in 0..5 {
            let _slot = limits.admit().await;
            times.push(start.elapsed());
        }
        // One every 100 ms.
        assert_eq!(times[4], Duration::from_millis(400));
        let first = limits.admit().await;
        let second = limits.admit().await;
        let third = tokio::time::timeout(Duration::from_secs(5), limits.admit()).await;
        assert!(
            third.is_err(),
            "a third request went out with two in flight"
        );
        drop((first, second));
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
