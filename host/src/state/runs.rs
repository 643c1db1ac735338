//! Runs of exports: their record (status, counts, HTTP figures, what the host refused), the
//! contacts each did not deliver, and which run an export's next run continues.

use anyhow::{Context, Result};
use serde::Serialize;

use super::db::{DbRow, Step, params};
use super::{Access, Actor, ExportRecord, State, SyncBasis, now, to_text};
use crate::failure::NotFound;
use crate::fence::Fence;
use crate::run::{RunCounts, RunIssue, RunMode, RunReport};

/// Where a run stands, in words that say what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Waiting for a worker to claim it.
    Queued,
    /// A worker holds it and works on it now.
    Running,
    /// Under way, but its worker is gone (killed, its machine lost, stopped to be replaced, or
    /// cut off from the database): a `serve` worker takes it over within the lease term (or
    /// the next run of the export continues it), from its checkpoints.
    Waiting,
    /// Stopped before the end on purpose (cancelled, a signal to a one-off `export run`): the
    /// next run of the export continues it.
    Interrupted,
    Succeeded,
    /// Ended by a failure; what it settled stays, and the next run continues it (unless its
    /// workers failed on it again and again: then the next run starts afresh).
    Failed,
}

impl RunState {
    /// The state's code, as stored and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Waiting => "waiting",
            RunState::Interrupted => "interrupted",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> RunState {
        match s {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "waiting" => RunState::Waiting,
            "interrupted" => RunState::Interrupted,
            "succeeded" => RunState::Succeeded,
            _ => RunState::Failed,
        }
    }

    /// The state as people read it: what happens next.
    pub fn describe(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Waiting => "waiting for a worker",
            RunState::Interrupted => "interrupted: continues at the next run",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A write of a run by a worker that no longer holds it (another worker took it over): the
/// store refused it.
#[derive(Debug)]
pub struct NotTheHolder(pub i64);

impl std::fmt::Display for NotTheHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} is held by another worker now: this worker's write was refused",
            self.0
        )
    }
}

impl std::error::Error for NotTheHolder {}

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
    /// The export's connection, and who may use it (and so see the run).
    #[serde(skip)]
    pub connection: String,
    #[serde(skip)]
    pub connection_access: Access,
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
    /// While it runs: when the phase under way (sending, then settling leavers) should end,
    /// from the pace so far and the vendor's windows (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_end: Option<String>,
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
    /// Starts a run record, attempted by this process under `fence` (the export's lock; none
    /// for a run recorded only to say why it could not start); `full` when a full run was
    /// asked for, which its continuations keep.
    pub async fn start_run(
        &self,
        export: &ExportRecord,
        trigger: Trigger,
        actor: &Actor,
        full: bool,
        fence: Option<&Fence>,
    ) -> Result<i64> {
        let started = now();
        let done = self
            .db
            .batch(&[Step::new(
                "INSERT INTO runs (export_id, trigger, started_by, status, started_at, worker,
                     full_sync, lease_token)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7) RETURNING id",
                params![
                    export.id,
                    to_text(&trigger),
                    &actor.name,
                    &started,
                    &self.worker,
                    i64::from(full),
                    fence.map(|f| f.token().to_string())
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
                params![run_id, attempt, &self.worker, now_precise()],
            )
            .await?;
        Ok(())
    }

    /// The run of `export` the next run continues: its latest, when that one is unfinished
    /// (under way without a worker, interrupted, or failed after settling something), unless
    /// its workers failed on it too often.
    pub async fn unfinished_run(&self, export: &ExportRecord) -> Result<Option<i64>> {
        self.db
            .query_opt(
                "SELECT id FROM runs WHERE export_id = ?1
                     AND (status IN ('running', 'interrupted')
                         OR (status = 'failed' AND counts IS NOT NULL))
                     AND failures < ?2
                     AND id = (SELECT MAX(id) FROM runs WHERE export_id = ?1 AND status <> 'queued')",
                params![export.id, super::postgres::MAX_FAILURES],
            )
            .await?
            .map(|r| r.get(0))
            .transpose()
    }

    /// Whether a full run was asked of `run` (by any of its attempts).
    pub async fn full_asked(&self, run: Option<i64>) -> Result<bool> {
        let Some(run) = run else {
            return Ok(false);
        };
        Ok(self
            .db
            .query_opt("SELECT full_sync FROM runs WHERE id = ?1", params![run])
            .await?
            .map(|r| r.get::<bool>(0))
            .transpose()?
            .unwrap_or(false))
    }

    /// Marks a run as started again, by this process, under `fence`: its sync state keeps what
    /// it settled, and its undelivered contacts are dropped, to be listed anew by this attempt
    /// (those settled earlier with the reasons the sync state keeps), so that whatever changed
    /// in between (people who left, joined or changed), the list matches the counts. A full
    /// run asked for now, or by an earlier attempt, stays full. Whether the run is full.
    pub async fn resume_run(&self, run_id: i64, fence: &Fence, full: bool) -> Result<bool> {
        let done = self
            .db
            .batch(&[
                Step::new(
                    "UPDATE runs SET status = 'running', attempts = attempts + 1, error = NULL,
                         finished_at = NULL, worker = ?2, lease_token = ?3,
                         full_sync = CASE WHEN ?4 = 1 THEN 1 ELSE full_sync END
                     WHERE id = ?1 RETURNING attempts, full_sync",
                    params![run_id, &self.worker, fence.token(), i64::from(full)],
                ),
                Step::new("DELETE FROM run_issues WHERE run_id = ?1", params![run_id]),
            ])
            .await?
            .context("the run was not resumed")?;
        let row = done[0]
            .first()
            .with_context(|| format!("there is no run {run_id}"))?;
        let (attempt, full): (u64, bool) = (row.get(0)?, row.get(1)?);
        self.note_attempt(run_id, attempt).await?;
        Ok(full)
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

    /// Records how a run attempt ended (its counts were recorded with each settled piece),
    /// and, for a run that completed, what the export is now synced with: only while `fence`
    /// is the run's generation. `false` when another worker holds the run (nothing written).
    pub async fn finish_run(
        &self,
        run_id: i64,
        fence: Option<&Fence>,
        status: RunState,
        error: Option<&str>,
        report: Option<&RunReport>,
        synced: Option<(&ExportRecord, &SyncBasis)>,
    ) -> Result<bool> {
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
        let ended = matches!(status, RunState::Succeeded | RunState::Failed);
        let mut steps = vec![Step::required(
            "UPDATE runs SET status = ?2, error = ?3, finished_at = ?4,
                 refusals = ?5, mode = COALESCE(?6, mode),
                 leave_action = COALESCE(?7, leave_action),
                 counts = COALESCE(?8, counts),
                 segment_size = COALESCE(?9, segment_size)
             WHERE id = ?1 AND (CAST(?10 AS TEXT) IS NULL OR lease_token = ?10)",
            params![
                run_id,
                status.as_str(),
                error,
                ended.then(now),
                serde_json::to_string(&refusals)?,
                mode,
                report.map(|r| r.leave_action.clone()),
                report
                    .map(|r| serde_json::to_string(&r.counts))
                    .transpose()?,
                report.and_then(|r| r.segment_size),
                fence.map(|f| f.token().to_string()),
            ],
        )];
        if let Some(report) = report {
            // The attempt's own figures, final.
            let f = report.figures();
            steps.push(Step::new(
                "UPDATE run_attempts SET requests = ?2, retries = ?3, batches = ?4, seconds = ?5
                 WHERE run_id = ?1 AND attempt = (SELECT attempts FROM runs WHERE id = ?1)",
                params![
                    run_id,
                    f.requests,
                    f.retries,
                    f.batches,
                    f.duration.as_secs_f64()
                ],
            ));
        }
        if let Some((export, basis)) = synced {
            steps.push(Step::new(
                "INSERT INTO sync_basis (export_id, basis, run_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (export_id) DO UPDATE SET basis = excluded.basis,
                     run_id = excluded.run_id",
                params![export.id, serde_json::to_string(basis)?, run_id],
            ));
        }
        Ok(self.db.batch(&steps).await?.is_some())
    }

    /// Ends a run that cannot be continued (its record does not add up), under `fence`: failed
    /// with the reason, and not what the next run continues.
    pub async fn give_up_run(&self, run_id: i64, fence: &Fence, why: &str) -> Result<bool> {
        let written = self
            .db
            .execute(
                "UPDATE runs SET status = 'failed', error = ?3, finished_at = ?4, failures = ?5
                 WHERE id = ?1 AND lease_token = ?2",
                params![
                    run_id,
                    fence.token(),
                    why,
                    now(),
                    super::postgres::MAX_FAILURES
                ],
            )
            .await?;
        Ok(written == 1)
    }

    /// Records that an attempt ended in a failure of its worker (a panic), under `fence`: the
    /// run waits for a worker again, or, after [`MAX_FAILURES`](super::postgres::MAX_FAILURES)
    /// such attempts, ends failed with the reason. Whether it was written.
    pub async fn note_failure(&self, run_id: i64, fence: &Fence, why: &str) -> Result<bool> {
        let max = super::postgres::MAX_FAILURES;
        let written = self
            .db
            .execute(
                "UPDATE runs SET failures = failures + 1,
                     error = ?3,
                     status = CASE WHEN failures + 1 >= ?4 THEN 'failed' ELSE status END,
                     finished_at = CASE WHEN failures + 1 >= ?4 THEN ?5 ELSE finished_at END
                 WHERE id = ?1 AND lease_token = ?2",
                params![run_id, fence.token(), why, max, now()],
            )
            .await?;
        Ok(written == 1)
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
        let run_id = self.start_run(export, trigger, actor, false, None).await?;
        self.finish_run(run_id, None, RunState::Failed, Some(why), None, None)
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

    /// The latest runs, newest first, of one export (by name, removed ones included) or all,
    /// over connections with one of the `open` accesses.
    pub async fn runs(
        &self,
        export: Option<&str>,
        open: &[Access],
        limit: usize,
    ) -> Result<Vec<RunRecord>> {
        if open.is_empty() {
            return Ok(vec![]);
        }
        // The enum's own names, not input: safe to write into the statement.
        let open: Vec<String> = open.iter().map(|a| format!("'{}'", to_text(a))).collect();
        let among = format!(" AND c.access IN ({})", open.join(", "));
        let rows = match export {
            Some(name) => {
                self.db
                    .query(
                        &format!(
                            "{RUN_COLUMNS} WHERE e.name = ?1{among} ORDER BY r.id DESC LIMIT ?2"
                        ),
                        params![name, limit as i64],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(
                        &format!("{RUN_COLUMNS} WHERE 1 = 1{among} ORDER BY r.id DESC LIMIT ?1"),
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

    /// Each export's latest run (removed exports' included).
    pub async fn latest_runs(&self) -> Result<Vec<RunRecord>> {
        let rows = self
            .db
            .query(
                &format!(
                    "{RUN_COLUMNS} WHERE r.id IN (SELECT MAX(id) FROM runs GROUP BY export_id)"
                ),
                vec![],
            )
            .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in &rows {
            runs.push(self.with_liveness(run_row(row)?).await?);
        }
        Ok(runs)
    }

    /// A run recorded as running whose worker is gone waits for another.
    async fn with_liveness(&self, mut run: RunRecord) -> Result<RunRecord> {
        if run.status == RunState::Running && !self.export_running(run.export_id).await? {
            run.status = RunState::Waiting;
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

/// The current time with milliseconds (RFC 3339, UTC), for when attempts start: a takeover
/// often follows within a second.
fn now_precise() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A run, with its figures summed over its attempts (runs recorded before attempts kept their
/// own figures have them on the run).
const RUN_COLUMNS: &str = "SELECT r.id, r.export_id, e.name, c.connector, r.trigger,
    r.started_by, r.status, r.error, r.started_at, r.finished_at, r.attempts, r.mode,
    r.leave_action, r.counts,
    CASE WHEN f.requests > 0 THEN f.requests ELSE r.requests END,
    CASE WHEN f.requests > 0 THEN f.retries ELSE r.retries END,
    CASE WHEN f.seconds > 0 THEN f.seconds ELSE r.seconds END,
    r.refusals, r.segment_size, r.worker, f.batches, c.access, c.name, r.expected_end
    FROM runs r JOIN exports e ON e.id = r.export_id JOIN connections c ON c.id = e.connection_id
    LEFT JOIN (SELECT run_id, CAST(SUM(requests) AS BIGINT) AS requests,
            CAST(SUM(retries) AS BIGINT) AS retries, CAST(SUM(batches) AS BIGINT) AS batches,
            SUM(seconds) AS seconds
        FROM run_attempts GROUP BY run_id) f ON f.run_id = r.id";

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
        counts: {
            let mut counts: RunCounts = counts
                .and_then(|c| serde_json::from_str(&c).ok())
                .unwrap_or_default();
            // Every attempt's batches, once the attempts record them.
            if let Some(batches) = r.get::<Option<u64>>(20)?.filter(|b| *b > 0) {
                counts.batches = batches;
            }
            counts
        },
        requests: r.get(14)?,
        retries: r.get(15)?,
        seconds: r.get(16)?,
        refusals: r.json(17)?,
        worker: r.get(19)?,
        connection_access: r.name(21)?,
        connection: r.get(22)?,
        expected_end: match RunState::parse(&r.get::<String>(6)?) {
            RunState::Running => r.get(23)?,
            _ => None,
        },
        attempt_log: vec![],
    })
}
