//! PostgreSQL: the one thread a process keeps its leases (and its vendor accounts' slots) alive
//! on, with a database connection of its own, apart from the runs' work: a busy runtime or a
//! pool taken by the runs' writes never delays a renewal. Each lease's [`Fence`] learns from it
//! until when the lease is surely held (the renewal's start, plus the term, less a fifth), or
//! that another worker took it over; a renewal that fails is logged with its reason and tried
//! again soon, and a fence whose deadline passes lapses by itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::fence::{self, Fence};

/// How much of a term a lease is surely held after a renewal began: the rest covers a slow
/// round trip and the time between a check of the fence and the request it lets go.
pub(super) fn surely_held(term: Duration) -> Duration {
    term * 4 / 5
}

/// What the keeper renews.
#[derive(Default)]
struct Kept {
    leases: HashMap<String, Lease>,
    /// Vendor account slots by token, with their term.
    slots: HashMap<String, Duration>,
    /// Leases given up (their fence lost): their rows are deleted at the next beat, so that
    /// another worker need not wait for them to expire.
    dropped: Vec<String>,
}

struct Lease {
    export_id: i64,
    term: Duration,
    fence: Fence,
}

/// The process's keeper; its thread ends when the last handle goes.
pub(super) struct Keeper {
    kept: Arc<Mutex<Kept>>,
    beat: Arc<tokio::sync::Notify>,
}

impl Keeper {
    /// Starts the keeper's thread, connecting with `config`.
    pub(super) fn start(config: tokio_postgres::Config) -> Result<Keeper> {
        let kept: Arc<Mutex<Kept>> = Arc::default();
        let beat = Arc::new(tokio::sync::Notify::new());
        let (weak, woken) = (Arc::downgrade(&kept), beat.clone());
        std::thread::Builder::new()
            .name("lease-keeper".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the lease keeper");
                runtime.block_on(keep(config, weak, woken));
            })
            .context("cannot start the lease keeper's thread")?;
        Ok(Keeper { kept, beat })
    }

    /// Renews the lease `token` (of `export_id`, for `term`) until it is released or lost.
    pub(super) fn keep_lease(&self, token: &str, export_id: i64, term: Duration, fence: Fence) {
        self.lock().leases.insert(
            token.to_string(),
            Lease {
                export_id,
                term,
                fence,
            },
        );
        self.beat.notify_one();
    }

    /// Stops renewing the lease `token` (it is being released, or left to expire).
    pub(super) fn forget_lease(&self, token: &str) {
        self.lock().leases.remove(token);
    }

    pub(super) fn keep_slot(&self, token: &str, term: Duration) {
        self.lock().slots.insert(token.to_string(), term);
    }

    pub(super) fn forget_slot(&self, token: &str) {
        self.lock().slots.remove(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The keeper's loop: renews everything kept three times per (shortest) term.
async fn keep(
    config: tokio_postgres::Config,
    kept: Weak<Mutex<Kept>>,
    beat: Arc<tokio::sync::Notify>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    // The first failure of a run of failures is a warning; the rest are counted in it.
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let Some(shared) = kept.upgrade() else {
            return;
        };
        let (every, due) = {
            let mut kept = shared.lock().unwrap_or_else(|p| p.into_inner());
            // Leases whose fence lapsed or was lost are given up.
            let lost: Vec<String> = kept
                .leases
                .iter()
                .filter(|(_, l)| l.fence.lost().is_cancelled())
                .map(|(t, _)| t.clone())
                .collect();
            for token in lost {
                kept.leases.remove(&token);
                kept.dropped.push(token);
            }
            let shortest = kept
                .leases
                .values()
                .map(|l| l.term)
                .chain(kept.slots.values().copied())
                .min();
            let due = Due {
                leases: kept
                    .leases
                    .iter()
                    .map(|(t, l)| (t.clone(), l.export_id, l.term, l.fence.clone()))
                    .collect(),
                slots: kept.slots.iter().map(|(t, d)| (t.clone(), *d)).collect(),
                dropped: std::mem::take(&mut kept.dropped),
            };
            (shortest.map_or(Duration::from_secs(1), |t| t / 3), due)
        };
        drop(shared);
        if !due.is_empty() {
            // A renewal may take at most a third of a term: past that, the next beat tries again.
            let renewal = tokio::time::timeout(every, renew(&config, &mut client, &due)).await;
            let failure = match renewal {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(_) => Some(format!(
                    "no answer from PostgreSQL within {:.1} s",
                    every.as_secs_f64()
                )),
            };
            match failure {
                None => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            "leases renewed again after {:.1} s of failures",
                            since.elapsed().as_secs_f64()
                        );
                    }
                }
                Some(why) => {
                    client = None;
                    if failing_since.is_none() {
                        failing_since = Some(std::time::Instant::now());
                    }
                    tracing::warn!(
                        leases = due.leases.len(),
                        "could not renew the leases this worker holds ({why}); trying again, and each run stops if its lease is not renewed in time"
                    );
                    // Sooner than a full beat, while a lease can still be saved.
                    tokio::select! {
                        _ = tokio::time::sleep(every / 3) => {}
                        _ = beat.notified() => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = beat.notified() => {}
        }
    }
}

/// One beat's work.
struct Due {
    leases: Vec<(String, i64, Duration, Fence)>,
    slots: Vec<(String, Duration)>,
    dropped: Vec<String>,
}

impl Due {
    fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.slots.is_empty() && self.dropped.is_empty()
    }
}

const NOW: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)";

/// Renews the leases and slots due, telling each lease's fence how it went.
async fn renew(
    config: &tokio_postgres::Config,
    client: &mut Option<tokio_postgres::Client>,
    due: &Due,
) -> Result<()> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let (fresh, connection) = config
            .connect(crate::pg::postgres_tls()?)
            .await
            .context("cannot connect to PostgreSQL")?;
        tokio::spawn(connection);
        *client = Some(fresh);
    }
    let db = client.as_ref().expect("connected above");
    if !due.dropped.is_empty() {
        db.execute(
            "DELETE FROM export_leases WHERE token = ANY($1)",
            &[&due.dropped],
        )
        .await?;
    }
    if !due.leases.is_empty() {
        let tokens: Vec<&str> = due.leases.iter().map(|(t, ..)| t.as_str()).collect();
        let terms: Vec<i64> = due
            .leases
            .iter()
            .map(|(_, _, term, _)| term.as_millis() as i64)
            .collect();
        // Measured from before the request: the database extends the lease later than this.
        let sent = fence::clock();
        let renewed: Vec<String> = db
            .query(
                &format!(
                    "UPDATE export_leases l SET expires_ms = {NOW} + t.term
                     FROM unnest($1::text[], $2::int8[]) AS t(token, term)
                     WHERE l.token = t.token RETURNING l.token"
                ),
                &[&tokens, &terms],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (token, export_id, term, fence) in &due.leases {
            if renewed.contains(token) {
                fence.renewed(sent.saturating_add(surely_held(*term).as_nanos() as u64));
            } else {
                tracing::error!(
                    export_id,
                    "the export's lease was taken over by another worker; this worker stops its run at once"
                );
                fence.lose("another worker took its lease over".into());
            }
        }
    }
    if !due.slots.is_empty() {
        let tokens: Vec<&str> = due.slots.iter().map(|(t, _)| t.as_str()).collect();
        let term = due.slots.iter().map(|(_, d)| *d).max().unwrap_or_default();
        db.execute(
            &format!(
                "UPDATE account_slots SET expires_ms = {NOW} + $2
                 WHERE token = ANY($1) AND expires_ms > 0"
            ),
            &[&tokens, &(term.as_millis() as i64)],
        )
        .await?;
    }
    Ok(())
}
