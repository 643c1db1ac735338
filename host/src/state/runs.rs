//! Runs of exports: their record (status, counts, HTTP figures, what the host refused), the
//! contacts each did not deliver, and which run an export's next run continues.

use anyhow::{Context, Result};
use serde::Serialize;

use super::db::{DbRow, Step, params};
use super::{Actor, ExportRecord, State, now, to_text};
use crate::failure::NotFound;
use crate::run::{RunCounts, RunIssue, RunMode, RunReport};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Waiting for a worker to claim it.
    Queued,
    Running,
    /// Stopped before the end (a shutdown, a crash); the next run of the export continues it.
    Interrupted,
    Succeeded,
    /// Ended by a failure; what it settled stays, and the next run continues it.
    Failed,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> RunState {
        match s {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "interrupted" => RunState::Interrupted,
            "succeeded" => RunState::Succeeded,
            _ => RunState::Failed,
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    OnDemand,
    Schedule,
}

/// One run of an export, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub export_id: i64,
    pub export: String,
    pub connector: String,
    pub trigger: String,
    pub started_by: String,
    pub status: RunState,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// How many times the run was started (1, plus one per continuation).
    pub attempts: u64,
    /// `delta`, or `full: <why>`; unknown for a run that never started sending.
    pub mode: Option<String>,
    /// The leave action it applied (`none` when the export has none).
    pub leave_action: Option<String>,
    /// Members of the segments, when the source knew before reading them.
    pub segment_size: Option<u64>,
    /// The latest attempt's counts: everything the run settled, in its every attempt.
    #[serde(flatten)]
    pub counts: RunCounts,
    pub requests: u64,
    pub retries: u64,
    pub seconds: f64,
    /// What the host refused the connector during the run, in words.
    pub refusals: Vec<String>,
    /// The worker of the latest attempt.
    pub worker: Option<String>,
    /// Every attempt, first first (given by [`State::run`], not in lists).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<RunAttempt>,
}

/// One attempt of a run: which worker made it, and when it started.
#[derive(Debug, Clone, Serialize)]
pub struct RunAttempt {
    pub attempt: u64,
    pub worker: String,
    pub started_at: String,
}

impl State {
    /// Starts a run record, attempted by this process.
    pub async fn start_run(
        &self,
        export: &ExportRecord,
        trigger: Trigger,
        actor: &Actor,
    ) -> Result<i64> {
        let started = now();
        let done = self
            .db
            .batch(&[Step::new(
                "INSERT INTO runs (export_id, trigger, started_by, status, started_at, worker)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5) RETURNING id",
                params![
                    export.id,
                    to_text(&trigger),
                    &actor.name,
                    &started,
                    &self.worker
                ],
            )])
            .await?
            .context("the run was not recorded")?;
        let run_id: i64 = done[0][0].get(0)?;
        self.note_attempt(run_id, 1).await?;
        Ok(run_id)
    }

    /// Records that this process makes attempt `attempt` of a run.
    async fn note_attempt(&self, run_id: i64, attempt: u64) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO run_attempts (run_id, attempt, worker, started_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![run_id, attempt, &self.worker, now()],
            )
            .await?;
        Ok(())
    }

    /// The run of `export` the next run continues: its latest, when that one did not succeed
    /// and settled something (a crash, a kill, a shutdown or a failure cut it short).
    pub async fn unfinished_run(&self, export: &ExportRecord) -> Result<Option<i64>> {
        self.db
            .query_opt(
                "SELECT id FROM runs WHERE export_id = ?1 AND status <> 'succeeded'
                     AND status <> 'queued' AND counts IS NOT NULL
                     AND id = (SELECT MAX(id) FROM runs WHERE export_id = ?1 AND status <> 'queued')",
                params![export.id],
            )
            .await?
            .map(|r| r.get(0))
            .transpose()
    }

    /// Marks a run as started again, by this process: its sync state keeps what it settled,
    /// and the issues it decides anew on each attempt (skipped contacts) are dropped.
    pub async fn resume_run(&self, run_id: i64) -> Result<()> {
        let done = self
            .db
            .batch(&[
                Step::new(
                    "UPDATE runs SET status = 'running', attempts = attempts + 1, error = NULL,
                         finished_at = NULL, worker = ?2 WHERE id = ?1 RETURNING attempts",
                    params![run_id, &self.worker],
                ),
                Step::new(
                    "DELETE FROM run_issues WHERE run_id = ?1 AND stage = 'skipped'",
                    params![run_id],
                ),
            ])
            .await?
            .context("the run was not resumed")?;
        let attempt: u64 = done[0]
            .first()
            .with_context(|| format!("there is no run {run_id}"))?
            .get(0)?;
        self.note_attempt(run_id, attempt).await
    }

    /// Gives up an unfinished run so the next starts afresh (its record stays).
    pub async fn abandon_run(&self, run_id: i64, why: &str) -> Result<()> {
        self.db
            .execute(
                "UPDATE runs SET status = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1",
                params![run_id, why, now()],
            )
            .await?;
        Ok(())
    }

    /// Records how a run attempt ended (its counts were recorded with each settled piece).
    pub async fn finish_run(
        &self,
        run_id: i64,
        status: RunState,
        error: Option<&str>,
        report: Option<&RunReport>,
    ) -> Result<()> {
        let (requests, retries, seconds) = report
            .map(|r| (r.requests, r.retries, r.duration.as_secs_f64()))
            .unwrap_or_default();
        // Refusals of every attempt of the run, each once.
        let known: String = self
            .db
            .query_one("SELECT refusals FROM runs WHERE id = ?1", params![run_id])
            .await?
            .get(0)?;
        let mut refusals: Vec<String> = serde_json::from_str(&known).unwrap_or_default();
        for refusal in report.map(|r| r.refusals.as_slice()).unwrap_or_default() {
            if !refusals.contains(refusal) {
                refusals.push(refusal.clone());
            }
        }
        let mode = report.map(|r| match &r.mode {
            RunMode::Delta => "delta".to_string(),
            RunMode::Full(why) => format!("full: {why}"),
        });
        self.db
            .execute(
                "UPDATE runs SET status = ?2, error = ?3, finished_at = ?4,
                     requests = requests + ?5, retries = retries + ?6, seconds = seconds + ?7,
                     refusals = ?8, mode = COALESCE(?9, mode),
                     leave_action = COALESCE(?10, leave_action),
                     counts = COALESCE(?11, counts),
                     segment_size = COALESCE(?12, segment_size)
                 WHERE id = ?1",
                params![
                    run_id,
                    status.as_str(),
                    error,
                    (status != RunState::Running && status != RunState::Interrupted).then(now),
                    requests,
                    retries,
                    seconds,
                    serde_json::to_string(&refusals)?,
                    mode,
                    report.map(|r| r.leave_action.clone()),
                    report
                        .map(|r| serde_json::to_string(&r.counts))
                        .transpose()?,
                    report.and_then(|r| r.segment_size),
                ],
            )
            .await?;
        Ok(())
    }

    /// Records a run that was asked for but could not start (its connector unapproved, its
    /// lock file unavailable...), so that the history says why nothing happened.
    pub async fn record_refused_run(
        &self,
        export: &ExportRecord,
        trigger: Trigger,
        actor: &Actor,
        why: &str,
    ) -> Result<i64> {
        let run_id = self.start_run(export, trigger, actor).await?;
        self.finish_run(run_id, RunState::Failed, Some(why), None)
            .await?;
        Ok(run_id)
    }

    /// One run, with its every attempt.
    pub async fn run(&self, run_id: i64) -> Result<RunRecord> {
        let row = self
            .db
            .query_opt(&format!("{RUN_COLUMNS} WHERE r.id = ?1"), params![run_id])
            .await?
            .ok_or_else(|| NotFound(format!("there is no run {run_id}")))?;
        let mut run = self.with_liveness(run_row(&row)?).await?;
        run.attempt_log = self
            .db
            .query(
                "SELECT attempt, worker, started_at FROM run_attempts WHERE run_id = ?1
                 ORDER BY attempt",
                params![run_id],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(RunAttempt {
                    attempt: r.get(0)?,
                    worker: r.get(1)?,
                    started_at: r.get(2)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(run)
    }

    /// The latest runs, newest first, of one export (by name, removed ones included) or all.
    pub async fn runs(&self, export: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let rows = match export {
            Some(name) => {
                self.db
                    .query(
                        &format!("{RUN_COLUMNS} WHERE e.name = ?1 ORDER BY r.id DESC LIMIT ?2"),
                        params![name, limit as i64],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(
                        &format!("{RUN_COLUMNS} ORDER BY r.id DESC LIMIT ?1"),
                        params![limit as i64],
                    )
                    .await?
            }
        };
        if let Some(name) = export
            && rows.is_empty()
        {
            let known: bool = self
                .db
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM exports WHERE name = ?1)",
                    params![name],
                )
                .await?
                .get(0)?;
            if !known {
                return Err(NotFound(format!("there is no export named `{name}`")).into());
            }
        }
        let mut runs = Vec::with_capacity(rows.len());
        for row in &rows {
            runs.push(self.with_liveness(run_row(row)?).await?);
        }
        Ok(runs)
    }

    /// A run recorded as running whose process is gone was cut short.
    async fn with_liveness(&self, mut run: RunRecord) -> Result<RunRecord> {
        if run.status == RunState::Running && !self.export_running(run.export_id).await? {
            run.status = RunState::Interrupted;
        }
        Ok(run)
    }

    /// Calls `each` for every contact of a run that was not delivered, in the order recorded.
    pub async fn for_each_issue(
        &self,
        run_id: i64,
        each: &mut (dyn FnMut(RunIssue) -> Result<()> + Send),
    ) -> Result<()> {
        self.run(run_id).await?;
        self.db
            .query_each(
                "SELECT profile_id, email, kind, stage, code, message, since FROM run_issues
                 WHERE run_id = ?1 ORDER BY rowid",
                params![run_id],
                &mut |row| {
                    each(RunIssue {
                        profile_id: row.get(0)?,
                        email: row.get(1)?,
                        kind: row.name(2)?,
                        stage: row.name(3)?,
                        code: row.get(4)?,
                        message: row.get(5)?,
                        since: row.get(6)?,
                    })
                },
            )
            .await
    }
}

const RUN_COLUMNS: &str = "SELECT r.id, r.export_id, e.name, c.connector, r.trigger,
    r.started_by, r.status, r.error, r.started_at, r.finished_at, r.attempts, r.mode,
    r.leave_action, r.counts, r.requests, r.retries, r.seconds, r.refusals, r.segment_size,
    r.worker
    FROM runs r JOIN exports e ON e.id = r.export_id JOIN connections c ON c.id = e.connection_id";

fn run_row(r: &DbRow) -> Result<RunRecord> {
    let counts: Option<String> = r.get(13)?;
    Ok(RunRecord {
        id: r.get(0)?,
        export_id: r.get(1)?,
        export: r.get(2)?,
        connector: r.get(3)?,
        trigger: r.get(4)?,
        started_by: r.get(5)?,
        status: RunState::parse(&r.get::<String>(6)?),
        error: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        attempts: r.get(10)?,
        mode: r.get(11)?,
        leave_action: r.get(12)?,
        segment_size: r.get(18)?,
        counts: counts
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default(),
        requests: r.get(14)?,
        retries: r.get(15)?,
        seconds: r.get(16)?,
        refusals: r.json(17)?,
        worker: r.get(19)?,
        attempt_log: vec![],
    })
}
