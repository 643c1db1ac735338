//! The PostgreSQL engine: one database shared by every worker, on as many machines as the
//! platform runs. Runs of an export are kept one at a time by a lease (a row with an expiry,
//! renewed by a heartbeat while the run goes on): a worker that dies stops renewing, and once
//! the lease expires another worker takes the run over from its checkpoints.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::keeper::{self, Keeper};
use super::schema::{self, Engine};
use crate::fence::{self, Fence};
use crate::pg::{postgres_config, postgres_tls, redacted};

/// Attempts of a run that ended in a failure of its worker (a panic) before no worker takes
/// it again and it ends failed.
pub(super) const MAX_FAILURES: i64 = 3;

/// Any key for the advisory lock that keeps migrations one process at a time.
const MIGRATION_LOCK: i64 = 0x636f_6e6e_6563_746f;

/// Connects to the database at `url` (a `postgres://` URL) and brings its schema up to date.
pub(super) async fn connect(url: &str) -> Result<Pool> {
    let config = postgres_config(url)?;
    let manager = Manager::from_config(
        config,
        postgres_tls()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(16)
        .wait_timeout(Some(Duration::from_secs(60)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("cannot build the PostgreSQL connection pool")?;
    let mut client = pool
        .get()
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redacted(url)))?;
    migrate(&mut client)
        .await
        .with_context(|| format!("migrating the state database at {}", redacted(url)))?;
    drop(client);
    Ok(pool)
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<()> {
    // Every process starting at once waits on one advisory lock, then reads the version.
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .await?;
    let version: i64 = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await?
        .map_or(0, |r| r.get(0));
    let steps = schema::steps(Engine::Postgres, version as u32)?;
    if steps.is_empty() {
        return Ok(());
    }
    for (to, sql) in &steps {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("schema version {to}"))?;
    }
    let latest = i64::from(schema::latest());
    tx.execute("DELETE FROM schema_version", &[]).await?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&latest],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

const NOW: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)";

/// An export's lease, held by this process: renewed by the process's keeper until released.
pub(super) struct Lease {
    pool: Pool,
    keeper: Arc<Keeper>,
    token: String,
}

/// Takes an export's lease for `worker` if no live lease holds it: the lease and the fence the
/// run acts under.
pub(super) async fn take_lease(
    pool: &Pool,
    keeper: &Arc<Keeper>,
    export_id: i64,
    worker: &str,
    term: Duration,
) -> Result<Option<(Lease, Fence)>> {
    let token = format!("{:016x}", fastrand::u64(..));
    let client = pool.get().await.context("no PostgreSQL connection")?;
    let sent = fence::clock();
    let taken = client
        .query_opt(
            &format!(
                "INSERT INTO export_leases (export_id, worker, token, expires_ms)
                 VALUES ($1, $2, $3, {NOW} + $4)
                 ON CONFLICT (export_id) DO UPDATE SET worker = excluded.worker,
                     token = excluded.token, expires_ms = excluded.expires_ms
                 WHERE export_leases.expires_ms < {NOW}
                 RETURNING export_id"
            ),
            &[&export_id, &worker, &token, &(term.as_millis() as i64)],
        )
        .await?;
    if taken.is_none() {
        return Ok(None);
    }
    Ok(Some(Lease::held(
        pool, keeper, export_id, token, term, sent,
    )))
}

impl Lease {
    /// A lease this process took at `sent` ([`fence::clock`]) for `term`, by `take_lease` or
    /// the queue's claim: kept alive from now on, with its fence.
    pub(super) fn held(
        pool: &Pool,
        keeper: &Arc<Keeper>,
        export_id: i64,
        token: String,
        term: Duration,
        sent: u64,
    ) -> (Lease, Fence) {
        let fence = Fence::leased(
            token.clone(),
            sent.saturating_add(keeper::surely_held(term).as_nanos() as u64),
        );
        keeper.keep_lease(&token, export_id, term, fence.clone());
        let lease = Lease {
            pool: pool.clone(),
            keeper: keeper.clone(),
            token,
        };
        (lease, fence)
    }

    /// Gives the lease up now, so that the export's next run need not wait for it to expire.
    pub(super) async fn release(self) {
        self.keeper.forget_lease(&self.token);
        if let Ok(client) = self.pool.get().await {
            let _ = client
                .execute("DELETE FROM export_leases WHERE token = $1", &[&self.token])
                .await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Released by `release` in the normal course; otherwise it expires by itself.
        self.keeper.forget_lease(&self.token);
    }
}

/// Whether a live lease holds the export.
pub(super) async fn leased(pool: &Pool, export_id: i64) -> Result<bool> {
    let client = pool.get().await.context("no PostgreSQL connection")?;
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM export_leases
                     WHERE export_id = $1 AND expires_ms >= {NOW})"
            ),
            &[&export_id],
        )
        .await?;
    Ok(row.get(0))
}

/// Claims the oldest run waiting for a worker (queued, or running under a lease that
/// expired) whose export no live lease holds, taking that export's lease and making it the
/// run's generation in the same transaction: from then on the run's writes by any earlier
/// holder are refused. Rows another worker is claiming at the same moment are skipped, not
/// waited for. The run's id, its export, the lease's token and when it was sent
/// ([`fence::clock`]).
pub(super) async fn claim(
    pool: &Pool,
    worker: &str,
    term: Duration,
) -> Result<Option<(i64, i64, String, u64)>> {
    let token = format!("{:016x}", fastrand::u64(..));
    let client = pool.get().await.context("no PostgreSQL connection")?;
    let sent = fence::clock();
    let row = client
        .query_opt(
            &format!(
                "WITH pick AS (
                     SELECT r.id, r.export_id FROM runs r
                     JOIN exports e ON e.id = r.export_id AND e.removed_at IS NULL
                     WHERE (r.status = 'queued' OR (r.status = 'running'
                             AND r.id = (SELECT MAX(x.id) FROM runs x
                                 WHERE x.export_id = r.export_id AND x.status <> 'queued')))
                         AND r.failures < {MAX_FAILURES}
                         AND NOT EXISTS (SELECT 1 FROM export_leases l
                             WHERE l.export_id = r.export_id AND l.expires_ms >= {NOW})
                     ORDER BY r.id LIMIT 1
                     FOR UPDATE OF r SKIP LOCKED),
                 lease AS (
                     INSERT INTO export_leases (export_id, worker, token, expires_ms)
                     SELECT export_id, $1, $2, {NOW} + $3 FROM pick
                     ON CONFLICT (export_id) DO UPDATE SET worker = excluded.worker,
                         token = excluded.token, expires_ms = excluded.expires_ms
                     WHERE export_leases.expires_ms < {NOW}
                     RETURNING export_id),
                 fenced AS (
                     UPDATE runs SET lease_token = $2
                     FROM pick JOIN lease USING (export_id) WHERE runs.id = pick.id
                     RETURNING runs.id, runs.export_id)
                 SELECT id, export_id FROM fenced"
            ),
            &[&worker, &token, &(term.as_millis() as i64)],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1), token, sent)))
}

/// A vendor account's slots, counted in the database so that every worker using the account
/// shares them: each is a row taken with `SKIP LOCKED` for the length of a request and given
/// back after. A taken slot is leased like an export (the `lease-seconds` term), renewed by the
/// process's keeper with its leases: a worker killed while holding slots stops renewing them,
/// and they are free again within the term. The process's own slots come first, so that at
/// most `capacity` of its requests wait on the database.
pub(super) struct PgSlots {
    pool: Pool,
    worker: String,
    keeper: Arc<Keeper>,
    local: Arc<crate::broker::ProcessSlots>,
    /// Accounts (and capacities) whose rows exist.
    known: Mutex<HashSet<(String, usize)>>,
    /// The lease term, read on first use (once a process, not every request: a changed
    /// `lease-seconds` reaches the slots when the worker restarts).
    term: tokio::sync::OnceCell<Duration>,
    /// Held while looking for a free slot: the process's waiting requests look one at a
    /// time, so that they never crowd out its other uses of the database.
    looking: tokio::sync::Mutex<()>,
}

impl PgSlots {
    pub(super) fn new(pool: Pool, worker: &str, keeper: Arc<Keeper>) -> PgSlots {
        PgSlots {
            pool,
            worker: worker.to_string(),
            keeper,
            local: Arc::default(),
            known: Mutex::default(),
            term: tokio::sync::OnceCell::new(),
            looking: tokio::sync::Mutex::new(()),
        }
    }

    /// The term a taken slot lasts unrenewed.
    async fn term(&self) -> Result<Duration> {
        let term = self
            .term
            .get_or_try_init(|| async {
                let client = self.pool.get().await.context("no PostgreSQL connection")?;
                let row = client
                    .query_opt(
                        "SELECT value FROM settings WHERE key = $1",
                        &[&super::LEASE_SECONDS_SETTING],
                    )
                    .await?;
                match row {
                    Some(row) => super::lease_term_of(&row.get::<_, String>(0)),
                    None => Ok(super::settings::DEFAULT_LEASE),
                }
            })
            .await?;
        Ok(*term)
    }

    async fn take(&self, account: &str, capacity: usize) -> Result<Option<(i32, String)>> {
        let term = self.term().await?;
        let client = self.pool.get().await.context("no PostgreSQL connection")?;
        let known = (account.to_string(), capacity);
        if !self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&known)
        {
            client
                .execute(
                    "INSERT INTO account_slots (account, slot)
                     SELECT $1, g FROM generate_series(0, $2 - 1) AS g ON CONFLICT DO NOTHING",
                    &[&account, &(capacity as i32)],
                )
                .await?;
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(known);
        }
        let token = format!("{:016x}", fastrand::u64(..));
        // Renewed from the moment it is taken: the keeper may beat before this returns.
        self.keeper.keep_slot(&token, term);
        let row = client
            .query_opt(
                &format!(
                    "UPDATE account_slots s SET token = $3, worker = $4, expires_ms = {NOW} + $5
                     FROM (SELECT slot FROM account_slots
                           WHERE account = $1 AND slot < $2 AND expires_ms < {NOW}
                           ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED) AS free
                     WHERE s.account = $1 AND s.slot = free.slot
                     RETURNING s.slot"
                ),
                &[
                    &account,
                    &(capacity as i32),
                    &token,
                    &self.worker,
                    &(term.as_millis() as i64),
                ],
            )
            .await
            .map(|row| row.map(|r| r.get::<_, i32>(0)));
        if !matches!(row, Ok(Some(_))) {
            self.keeper.forget_slot(&token);
        }
        Ok(row?.map(|slot| (slot, token)))
    }
}

/// A slot taken in the database; given back when dropped.
struct PgSlot {
    pool: Pool,
    keeper: Arc<Keeper>,
    account: String,
    slot: i32,
    token: String,
}

impl Drop for PgSlot {
    fn drop(&mut self) {
        self.keeper.forget_slot(&self.token);
        let (pool, account, slot, token) = (
            self.pool.clone(),
            std::mem::take(&mut self.account),
            self.slot,
            std::mem::take(&mut self.token),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(client) = pool.get().await {
                    let _ = client
                        .execute(
                            "UPDATE account_slots SET expires_ms = 0
                             WHERE account = $1 AND slot = $2 AND token = $3",
                            &[&account, &slot, &token],
                        )
                        .await;
                }
            });
        }
    }
}

impl crate::broker::AccountSlots for PgSlots {
    /// One statement a request: the window's next send time moves on by `interval` from
    /// whichever is later, itself or now (the database's clock, the same for every worker),
    /// and the request waits until the time it reserved.
    fn reserve<'a>(
        &'a self,
        account: &'a str,
        window: &'a str,
        interval: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Duration>>> {
        Box::pin(async move {
            let client = self.pool.get().await.context("no PostgreSQL connection")?;
            let interval = interval.as_millis().max(1) as i64;
            let row = client
                .query_one(
                    &format!(
                        "INSERT INTO account_windows AS w (account, window_key, next_ms)
                         VALUES ($1, $2, {NOW} + $3)
                         ON CONFLICT (account, window_key)
                         DO UPDATE SET next_ms = GREATEST(w.next_ms, {NOW}) + $3
                         RETURNING w.next_ms - $3 - {NOW}"
                    ),
                    &[&account, &window, &interval],
                )
                .await?;
            let wait: i64 = row.get(0);
            Ok(Some(Duration::from_millis(wait.max(0) as u64)))
        })
    }

    fn hold<'a>(
        &'a self,
        account: &'a str,
        window: &'a str,
        wait: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let client = self.pool.get().await.context("no PostgreSQL connection")?;
            client
                .execute(
                    &format!(
                        "UPDATE account_windows SET next_ms = GREATEST(next_ms, {NOW} + $3)
                         WHERE account = $1 AND window_key = $2"
                    ),
                    &[&account, &window, &(wait.as_millis() as i64)],
                )
                .await?;
            Ok(())
        })
    }

    fn acquire<'a>(
        &'a self,
        account: &'a str,
        capacity: usize,
    ) -> futures_util::future::BoxFuture<'a, Result<crate::broker::AccountSlot>> {
        Box::pin(async move {
            let local = self.local.local(account, capacity).await;
            let mut wait = Duration::from_millis(2);
            loop {
                let looking = self.looking.lock().await;
                let taken = self.take(account, capacity).await?;
                drop(looking);
                if let Some((slot, token)) = taken {
                    let held = PgSlot {
                        pool: self.pool.clone(),
                        keeper: self.keeper.clone(),
                        account: account.to_string(),
                        slot,
                        token,
                    };
                    return Ok(crate::broker::AccountSlot::new((local, held)));
                }
                // Every slot is taken by other workers: look again soon, with jitter.
                tokio::time::sleep(wait + Duration::from_millis(fastrand::u64(..5))).await;
                wait = (wait * 2).min(Duration::from_millis(40));
            }
        })
    }
}
