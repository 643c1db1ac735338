//! The queue of runs waiting for a worker. A queued run is a run record in state `queued`;
//! a worker claims the oldest one whose export is free by taking that export's lock (a lease
//! on PostgreSQL), and a run whose worker died (recorded as running, its lock gone) is
//! claimed again the same way and resumed from its checkpoints. A schedule's fire is
//! recorded once per export and time, so that among many workers one queues its run.

use anyhow::{Context, Result};

use super::db::{Db, Step, params};
use super::postgres::{self, Lease};
use super::{Actor, ExportLock, ExportRecord, State, Trigger, now, sqlite, to_text};
use crate::fence::Fence;

/// A run this worker claimed: it holds the export's lock until the run ends.
pub struct Claim {
    pub run_id: i64,
    pub export_id: i64,
    pub lock: ExportLock,
}

/// How many waiting runs a SQLite worker tries to lock in one claim.
const SQLITE_CANDIDATES: i64 = 64;

impl State {
    /// Queues a run of `export` for the workers; its id. An export has at most one queued
    /// run: asking again gives that one. Unless `fresh`, a run of the export cut short or
    /// failed is queued again to be continued, rather than a new one.
    pub async fn enqueue_run(
        &self,
        export: &ExportRecord,
        trigger: Trigger,
        actor: &Actor,
        fresh: bool,
        full: bool,
    ) -> Result<i64> {
        let steps = self.enqueue_steps(export, trigger, actor, fresh, full);
        let done = self
            .db
            .batch(&steps)
            .await?
            .context("the run was not queued")?;
        queued_run(&done)
    }

    /// Fires `export`'s schedule for the time `at`, unless a worker already did: the id of the
    /// run queued, or `None` when this fire was another worker's.
    pub async fn fire_schedule(&self, export: &ExportRecord, at: &str) -> Result<Option<i64>> {
        let actor = Actor {
            name: "scheduler".into(),
            role: super::Role::Administrator,
        };
        let mut steps = vec![Step::required(
            "INSERT INTO schedule_fires (export_id, fire_at, run_id) VALUES (?1, ?2, 0)
             ON CONFLICT DO NOTHING RETURNING export_id",
            params![export.id, at],
        )];
        steps.extend(self.enqueue_steps(export, Trigger::Schedule, &actor, false, false));
        let Some(done) = self.db.batch(&steps).await? else {
            return Ok(None);
        };
        let run_id = queued_run(&done)?;
        self.db
            .execute(
                "UPDATE schedule_fires SET run_id = ?3 WHERE export_id = ?1 AND fire_at = ?2",
                params![export.id, at, run_id],
            )
            .await?;
        Ok(Some(run_id))
    }

    /// The statements that queue a run, in one transaction with whatever precedes them.
    fn enqueue_steps(
        &self,
        export: &ExportRecord,
        trigger: Trigger,
        actor: &Actor,
        fresh: bool,
        full: bool,
    ) -> Vec<Step<'static>> {
        const LATEST_UNFINISHED: &str =
            "id = (SELECT MAX(id) FROM runs WHERE export_id = ?1 AND status <> 'queued')
             AND status IN ('failed', 'interrupted') AND counts IS NOT NULL";
        let earlier = if fresh {
            Step::new(
                format!(
                    "UPDATE runs SET error = ?2, finished_at = ?3, status = 'failed' WHERE {LATEST_UNFINISHED}"
                ),
                params![
                    export.id,
                    format!("abandoned: {} started afresh", actor.name),
                    now()
                ],
            )
        } else {
            Step::new(
                format!(
                    "UPDATE runs SET status = 'queued', full_sync = ?2, error = NULL WHERE {LATEST_UNFINISHED}"
                ),
                params![export.id, i64::from(full)],
            )
        };
        vec![
            earlier,
            Step::new(
                "INSERT INTO runs (export_id, trigger, started_by, status, started_at, full_sync,
                     attempts)
                 SELECT ?1, ?2, ?3, 'queued', ?4, ?5, 0
                 WHERE NOT EXISTS (SELECT 1 FROM runs WHERE export_id = ?1 AND status = 'queued')",
                params![
                    export.id,
                    to_text(&trigger),
                    &actor.name,
                    now(),
                    i64::from(full)
                ],
            ),
            Step::new(
                "SELECT id FROM runs WHERE export_id = ?1 AND status = 'queued'",
                params![export.id],
            ),
        ]
    }

    /// Claims the oldest run waiting for a worker whose export no run holds: a queued run, or
    /// one whose worker died. `None` when there is none.
    pub async fn claim_run(&self) -> Result<Option<Claim>> {
        match &self.db {
            Db::Postgres(pool) => {
                let term = self.lease_term().await?;
                let keeper = self.keeper()?;
                let Some((run_id, export_id, token, sent)) =
                    postgres::claim(pool, &self.worker, term).await?
                else {
                    return Ok(None);
                };
                let (lease, fence) = Lease::held(pool, &keeper, export_id, token, term, sent);
                Ok(Some(Claim {
                    run_id,
                    export_id,
                    lock: ExportLock::lease(lease, fence),
                }))
            }
            Db::Sqlite(_) => {
                let path = self.path().context("a SQLite state has a file")?.to_owned();
                let candidates = self
                    .db
                    .query(
                        "SELECT r.id, r.export_id FROM runs r
                         JOIN exports e ON e.id = r.export_id AND e.removed_at IS NULL
                         WHERE (r.status = 'queued' OR (r.status = 'running'
                             AND r.id = (SELECT MAX(x.id) FROM runs x
                                 WHERE x.export_id = r.export_id AND x.status <> 'queued')))
                             AND r.failures < ?2
                         ORDER BY r.id LIMIT ?1",
                        params![SQLITE_CANDIDATES, postgres::MAX_FAILURES],
                    )
                    .await?;
                for row in candidates {
                    let (run_id, export_id): (i64, i64) = (row.get(0)?, row.get(1)?);
                    let Some(file) = sqlite::lock_export(&path, export_id)? else {
                        continue;
                    };
                    // Taken: is the run still waiting (another process may have run it
                    // between the read and the lock)? If so, it is this lock's from now on.
                    let lock = ExportLock::file(file);
                    let waiting = self
                        .db
                        .execute(
                            "UPDATE runs SET lease_token = ?2 WHERE id = ?1
                                 AND status IN ('queued', 'running')",
                            params![run_id, lock.fence().token()],
                        )
                        .await?;
                    if waiting == 1 {
                        return Ok(Some(Claim {
                            run_id,
                            export_id,
                            lock,
                        }));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Starts a claimed run by this process: continues it (from its checkpoints) when an
    /// earlier attempt made progress, else starts it. Whether it was continued, and whether
    /// a full sync was asked for.
    pub async fn start_claimed(&self, run_id: i64, fence: &Fence) -> Result<(bool, bool)> {
        let attempts: u64 = self
            .db
            .query_one("SELECT attempts FROM runs WHERE id = ?1", params![run_id])
            .await?
            .get(0)?;
        let full = self.resume_run(run_id, fence, false).await?;
        if attempts == 0 {
            self.db
                .execute(
                    "UPDATE runs SET started_at = ?2 WHERE id = ?1",
                    params![run_id, now()],
                )
                .await?;
        }
        Ok((attempts > 0, full))
    }

    /// How many runs wait for a worker.
    pub async fn queued_runs(&self) -> Result<u64> {
        self.db
            .query_one("SELECT COUNT(*) FROM runs WHERE status = 'queued'", vec![])
            .await?
            .get(0)
    }
}

/// The queued run's id, as the last of [`State::enqueue_steps`] reads it.
fn queued_run(done: &[Vec<super::db::DbRow>]) -> Result<i64> {
    done.last()
        .and_then(|rows| rows.first())
        .context("the run was not queued")?
        .get(0)
}
