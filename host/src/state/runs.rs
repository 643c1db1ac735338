//! Runs of exports: their record (status, counts, HTTP figures, what the host refused), the
//! contacts each did not deliver, and which run an export's next run continues.

use anyhow::{Context, Result, bail};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Actor, ExportRecord, State, json_column, now, to_text};
use crate::run::{RunCounts, RunIssue, RunMode, RunReport};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
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
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> RunState {
        match s {
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
}

impl State {
    /// Starts a run record.
    pub fn start_run(&self, export: &ExportRecord, trigger: Trigger, actor: &Actor) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO runs (export_id, trigger, started_by, status, started_at)
             VALUES (?1, ?2, ?3, 'running', ?4)",
            params![export.id, to_text(&trigger), actor.name, now()],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// The run of `export` the next run continues: its latest, when that one did not succeed
    /// and settled something (a crash, a kill, a shutdown or a failure cut it short).
    pub fn unfinished_run(&self, export: &ExportRecord) -> Result<Option<i64>> {
        Ok(self
            .db()
            .query_row(
                "SELECT id FROM runs WHERE export_id = ?1 AND status <> 'succeeded'
                     AND counts IS NOT NULL AND id = (SELECT MAX(id) FROM runs WHERE export_id = ?1)",
                [export.id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Marks a run as started again: its sync state keeps what it settled, and the issues it
    /// decides anew on each attempt (skipped contacts) are dropped.
    pub fn resume_run(&self, run_id: i64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE runs SET status = 'running', attempts = attempts + 1, error = NULL,
                 finished_at = NULL WHERE id = ?1",
            [run_id],
        )?;
        tx.execute(
            "DELETE FROM run_issues WHERE run_id = ?1 AND stage = 'skipped'",
            [run_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Gives up an unfinished run so the next starts afresh (its record stays).
    pub fn abandon_run(&self, run_id: i64, why: &str) -> Result<()> {
        self.db().execute(
            "UPDATE runs SET status = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1",
            params![run_id, why, now()],
        )?;
        Ok(())
    }

    /// Records how a run attempt ended (its counts were recorded with each settled piece).
    pub fn finish_run(
        &self,
        run_id: i64,
        status: RunState,
        error: Option<&str>,
        report: Option<&RunReport>,
    ) -> Result<()> {
        let db = self.db();
        let (requests, retries, seconds) = report
            .map(|r| (r.requests, r.retries, r.duration.as_secs_f64()))
            .unwrap_or_default();
        // Refusals of every attempt of the run, each once.
        let known: String =
            db.query_row("SELECT refusals FROM runs WHERE id = ?1", [run_id], |r| {
                r.get(0)
            })?;
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
        db.execute(
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
        )?;
        Ok(())
    }

    /// Records a run that was asked for but could not start (its connector unapproved, its
    /// lock file unavailable...), so that the history says why nothing happened.
    pub fn record_refused_run(
        &self,
        export: &ExportRecord,
        trigger: Trigger,
        actor: &Actor,
        why: &str,
    ) -> Result<i64> {
        let run_id = self.start_run(export, trigger, actor)?;
        self.finish_run(run_id, RunState::Failed, Some(why), None)?;
        Ok(run_id)
    }

    /// One run.
    pub fn run(&self, run_id: i64) -> Result<RunRecord> {
        let run = self
            .db()
            .query_row(&format!("{RUN_COLUMNS} WHERE r.id = ?1"), [run_id], run_row)
            .optional()?
            .with_context(|| format!("there is no run {run_id}"))?;
        Ok(self.with_liveness(run))
    }

    /// The latest runs, newest first, of one export (by name, removed ones included) or all.
    pub fn runs(&self, export: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let runs: Vec<RunRecord> = {
            let db = self.db();
            let mut q = db.prepare(&format!(
                "{RUN_COLUMNS} WHERE (?1 IS NULL OR e.name = ?1) ORDER BY r.id DESC LIMIT ?2"
            ))?;
            q.query_map(params![export, limit as i64], run_row)?
                .collect::<Result<_, _>>()?
        };
        if let Some(name) = export
            && runs.is_empty()
        {
            let known: bool = self.db().query_row(
                "SELECT EXISTS (SELECT 1 FROM exports WHERE name = ?1)",
                [name],
                |r| r.get(0),
            )?;
            if !known {
                bail!("there is no export named `{name}`");
            }
        }
        Ok(runs.into_iter().map(|r| self.with_liveness(r)).collect())
    }

    /// A run recorded as running whose process is gone was cut short.
    fn with_liveness(&self, mut run: RunRecord) -> RunRecord {
        if run.status == RunState::Running && !self.export_running(run.export_id) {
            run.status = RunState::Interrupted;
        }
        run
    }

    /// Calls `each` for every contact of a run that was not delivered, in the order recorded.
    pub fn for_each_issue(
        &self,
        run_id: i64,
        mut each: impl FnMut(RunIssue) -> Result<()>,
    ) -> Result<()> {
        self.run(run_id)?;
        let db = self.db();
        let mut q = db.prepare(
            "SELECT profile_id, email, kind, stage, code, message, since FROM run_issues
             WHERE run_id = ?1 ORDER BY rowid",
        )?;
        let mut rows = q.query([run_id])?;
        while let Some(row) = rows.next()? {
            let text = |i: usize| -> Result<String> { Ok(row.get(i)?) };
            each(RunIssue {
                profile_id: row.get(0)?,
                email: row.get(1)?,
                kind: serde_json::from_value(serde_json::Value::String(text(2)?))?,
                stage: serde_json::from_value(serde_json::Value::String(text(3)?))?,
                code: row.get(4)?,
                message: row.get(5)?,
                since: row.get(6)?,
            })?;
        }
        Ok(())
    }
}

const RUN_COLUMNS: &str = "SELECT r.id, r.export_id, e.name, c.connector, r.trigger,
    r.started_by, r.status, r.error, r.started_at, r.finished_at, r.attempts, r.mode,
    r.leave_action, r.counts, r.requests, r.retries, r.seconds, r.refusals, r.segment_size
    FROM runs r JOIN exports e ON e.id = r.export_id JOIN connections c ON c.id = e.connection_id";

fn run_row(r: &Row) -> rusqlite::Result<RunRecord> {
    let counts: Option<String> = r.get(13)?;
    Ok(RunRecord {
        id: r.get(0)?,
        export_id: r.get(1)?,
        export: r.get(2)?,
        connector: r.get(3)?,
        trigger: r.get(4)?,
        started_by: r.get(5)?,
        status: RunState::parse(&r.get::<_, String>(6)?),
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
        refusals: json_column(r, 17)?,
    })
}
