//! Counts a run's requests durably before they leave: a request waits until a record of the
//! run's requests that includes it is written, so that a worker killed at any moment leaves its
//! run's figures with every request the vendor may have received (and at most the few in
//! flight that never arrived). Requests sent together share one write.

use std::sync::Arc;

use tokio::sync::watch;

/// Writes the run's requests and retries so far; an error is logged and the request goes on.
pub type TallyWrite = Arc<dyn Fn(u64, u64) -> anyhow::Result<()> + Send + Sync>;

/// The durable count of one run's requests.
pub struct Tally {
    /// The highest (requests, retries) asked to be covered.
    wanted: watch::Sender<(u64, u64)>,
    /// The requests covered by the last write.
    written: watch::Receiver<u64>,
}

impl Tally {
    /// Starts the writer, which calls `write` on a blocking thread (it is a database write).
    pub fn start(write: TallyWrite) -> Arc<Tally> {
        let (wanted, mut asked) = watch::channel((0, 0));
        let (done, written) = watch::channel(0);
        tokio::spawn(async move {
            // Ends when the tally (and so every request that could ask) is gone.
            while asked.changed().await.is_ok() {
                let (requests, retries) = *asked.borrow_and_update();
                let write = write.clone();
                match tokio::task::spawn_blocking(move || write(requests, retries)).await {
                    Ok(Ok(())) => {}
                    // The count is best effort while the store is out of reach; the run's
                    // own checks (its lock, its settled pieces) decide whether it goes on.
                    Ok(Err(e)) => tracing::warn!("the run's request count was not recorded: {e:#}"),
                    Err(_) => return,
                }
                done.send_replace(requests);
            }
        });
        Arc::new(Tally { wanted, written })
    }

    /// Returns once `requests` (with `retries`) is recorded.
    pub async fn cover(&self, requests: u64, retries: u64) {
        self.wanted.send_modify(|(r, t)| {
            *r = (*r).max(requests);
            *t = (*t).max(retries);
        });
        let mut written = self.written.clone();
        // The writer gone (the runtime shutting down): nothing more to wait for.
        let _ = written.wait_for(|w| *w >= requests).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_request_goes_only_once_a_count_including_it_is_written() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let tally = Tally::start(Arc::new(move |requests, retries| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            seen.lock().unwrap().push((requests, retries));
            Ok(())
        }));
        // Ten requests at once share a few writes; each returns once it is covered.
        let waits: Vec<_> = (1..=10)
            .map(|n| {
                let tally = tally.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    tally.cover(n, 0).await;
                    let log = log.lock().unwrap();
                    assert!(
                        log.iter().any(|(r, _)| *r >= n),
                        "{n} went before it was counted"
                    );
                })
            })
            .collect();
        for wait in waits {
            wait.await.unwrap();
        }
        let log = log.lock().unwrap();
        assert_eq!(log.last().unwrap().0, 10);
        assert!(log.len() < 10, "every request wrote on its own: {log:?}");
    }
}
