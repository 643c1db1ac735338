//! What a connector call may make the host allocate, counted as one sum: every linear memory
//! and table of every core instance of the component (a component may hold many), from their
//! initial sizes through every growth. Each call has its own cap; all the calls of a host
//! together draw from one host-wide budget, so many calls that each stay under their cap still
//! cannot take the process past it. A call that needs room the host does not have waits for
//! other calls to give theirs back, and fails as retryable when none comes in time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::ResourceLimiterAsync;

/// Bytes one table element costs the host (wasmtime keeps a pointer an element).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// The memory all connector calls of one host hold together, and its cap.
pub(crate) struct HostMemory {
    cap: usize,
    used: Mutex<usize>,
    freed: tokio::sync::Notify,
}

impl HostMemory {
    pub(crate) fn new(cap: usize) -> Arc<HostMemory> {
        Arc::new(HostMemory {
            cap,
            used: Mutex::new(0),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// Bytes held by calls now.
    pub(crate) fn in_use(&self) -> usize {
        *self.used.lock().unwrap()
    }

    fn try_take(&self, bytes: usize) -> bool {
        let mut used = self.used.lock().unwrap();
        if used.saturating_add(bytes) > self.cap {
            return false;
        }
        *used += bytes;
        true
    }

    /// Takes `bytes`, waiting up to `wait` for other calls to give room back.
    async fn take(&self, bytes: usize, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a release between the look and the wait is seen.
            let freed = self.freed.notified();
            if self.try_take(bytes) {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.try_take(bytes);
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut used = self.used.lock().unwrap();
        *used = used.saturating_sub(bytes);
        drop(used);
        self.freed.notify_waiters();
    }
}

/// A call's instance asked for more than the call's own cap allows.
#[derive(Debug)]
pub struct CallMemoryExceeded {
    /// What the instance would have held, in bytes (memories and tables together).
    pub wanted: usize,
    pub cap: usize,
    /// What asked: "a linear memory", "a table", or too many of them.
    pub what: String,
}

impl std::fmt::Display for CallMemoryExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the connector exceeded its memory limit of {} MiB ({} would have taken its memories and tables together to {} MiB)",
            self.cap >> 20,
            self.what,
            self.wanted.div_ceil(1 << 20)
        )
    }
}

impl std::error::Error for CallMemoryExceeded {}

/// The host's budget for all calls was in use by other calls for as long as this call could
/// wait: the call failed, but the same call later may succeed.
#[derive(Debug, Clone, Copy)]
pub struct HostMemoryBusy {
    pub cap: usize,
    pub wanted: usize,
}

impl std::fmt::Display for HostMemoryBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the host's memory budget for connector calls ({} MiB, shared by all calls at once) had no room for {} MiB more; the call can be tried again",
            self.cap >> 20,
            self.wanted.div_ceil(1 << 20)
        )
    }
}

impl std::error::Error for HostMemoryBusy {}

/// How much a call may hold and how many instances, memories and tables it may make.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallCaps {
    pub bytes: usize,
    pub instances: usize,
    pub memories: usize,
    pub tables: usize,
    /// How long a growth waits for room in the host's budget.
    pub wait: Duration,
}

/// The resource limiter of one call's store: counts what the instance holds against the
/// call's cap and the host's budget, and gives the host's share back when the store goes.
pub(crate) struct CallMemory {
    caps: CallCaps,
    held: usize,
    host: Arc<HostMemory>,
}

impl CallMemory {
    pub(crate) fn new(caps: CallCaps, host: Arc<HostMemory>) -> CallMemory {
        CallMemory {
            caps,
            held: 0,
            host,
        }
    }

    async fn grow(&mut self, more: usize, what: &str) -> wasmtime::Result<bool> {
        let wanted = self.held.saturating_add(more);
        if wanted > self.caps.bytes {
            return Err(wasmtime::Error::new(CallMemoryExceeded {
                wanted,
                cap: self.caps.bytes,
                what: what.to_string(),
            }));
        }
        if !self.host.take(more, self.caps.wait).await {
            return Err(wasmtime::Error::new(HostMemoryBusy {
                cap: self.host.cap,
                wanted: more,
            }));
        }
        self.held = wanted;
        Ok(true)
    }
}

impl Drop for CallMemory {
    fn drop(&mut self) {
        self.host.give_back(self.held);
    }
}

#[async_trait::async_trait]
impl ResourceLimiterAsync for CallMemory {
    async fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current), "a linear memory")
            .await
    }

    async fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current);
        self.grow(elements.saturating_mul(TABLE_ELEMENT_BYTES), "a table")
            .await
    }

    fn instances(&self) -> usize {
        self.caps.instances
    }

    fn memories(&self) -> usize {
        self.caps.memories
    }

    fn tables(&self) -> usize {
        self.caps.tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(bytes: usize) -> CallCaps {
        CallCaps {
            bytes,
            instances: 10,
            memories: 10,
            tables: 10,
            wait: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn a_calls_memories_and_tables_count_as_one_sum() {
        let host = HostMemory::new(1 << 30);
        let mut call = CallMemory::new(caps(100 << 20), host.clone());
        assert!(call.memory_growing(0, 60 << 20, None).await.unwrap());
        let second = call.memory_growing(0, 60 << 20, None).await.unwrap_err();
        let exceeded = second.downcast_ref::<CallMemoryExceeded>().unwrap();
        assert_eq!(exceeded.wanted, 120 << 20);
        assert!(call.table_growing(0, 1 << 20, None).await.unwrap());
        assert_eq!(host.in_use(), (60 << 20) + (8 << 20));
        drop(call);
        assert_eq!(host.in_use(), 0, "a finished call gives its room back");
    }

    #[tokio::test]
    async fn calls_share_the_host_budget_and_wait_for_room() {
        let host = HostMemory::new(100 << 20);
        let mut first = CallMemory::new(caps(80 << 20), host.clone());
        assert!(first.memory_growing(0, 70 << 20, None).await.unwrap());
        let mut second = CallMemory::new(caps(80 << 20), host.clone());
        let busy = second.memory_growing(0, 70 << 20, None).await.unwrap_err();
        assert!(busy.downcast_ref::<HostMemoryBusy>().is_some(), "{busy:#}");
        // Room given back while a call waits lets it go on.
        let waiting = tokio::spawn(async move {
            let mut third = CallMemory::new(
                CallCaps {
                    wait: Duration::from_secs(10),
                    ..caps(80 << 20)
                },
                host.clone(),
            );
            let grown = third.memory_growing(0, 70 << 20, None).await.unwrap();
            (grown, host.in_use())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert_eq!(waiting.await.unwrap(), (true, 70 << 20));
    }
}
