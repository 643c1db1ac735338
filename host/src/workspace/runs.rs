//! A run's life: started or continued under the export's lock, recorded piece by piece by
//! the library, finished under the same lock (or left to the worker that took it over); and
//! the dry run that says what the next run would do.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::Workspace;
use super::exports::saved;
use crate::access::Actor;
use crate::broker::SharedAccount;
use crate::failure::AlreadyRunning;
use crate::fence::Fence;
use crate::plugins::Plugin;
use crate::run::{Progress, RunOptions, RunPlan, RunReport, RunStatus};
use crate::state::{Claim, ExportLock, ExportRecord, RunState, SyncBasis, Trigger};

/// How to run a saved export.
#[derive(Debug, Clone, Copy)]
pub struct RunRequest {
    pub trigger: Trigger,
    /// Start a new run instead of continuing one cut short or failed.
    pub fresh: bool,
    /// Send every contact, not only what changed.
    pub full: bool,
}

impl Default for RunRequest {
    fn default() -> Self {
        RunRequest {
            trigger: Trigger::OnDemand,
            fresh: false,
            full: false,
        }
    }
}

/// What a run of a saved export came to.
pub struct RunOutcome {
    pub run_id: i64,
    /// Whether this run continued one cut short.
    pub resumed: bool,
    pub report: RunReport,
}

/// An attempt of a run about to be made: its record, and the export's lock it holds.
struct Attempt {
    run_id: i64,
    /// Whether an earlier attempt of the run settled something.
    resumed: bool,
    /// Whether a full run was asked for (by this attempt or an earlier one).
    full: bool,
    lock: ExportLock,
}

impl Workspace {
    /// Runs a saved export in this process: continues its run cut short or failed if there
    /// is one (unless `fresh`), else starts a new one. Only what changed is sent (everything
    /// with `full`, or when the mapping, settings or connector version changed since the last
    /// completed run); every settled piece is recorded; `stop` ends the run cleanly.
    pub async fn run_export(
        &self,
        actor: &Actor,
        name: &str,
        how: RunRequest,
        progress: &dyn Progress,
        stop: Option<CancellationToken>,
    ) -> Result<RunOutcome> {
        let RunRequest {
            trigger,
            fresh,
            full,
        } = how;
        let export = self.export(actor, name).await?;
        let lock = match self.state.lock_export(&export).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return Err(AlreadyRunning(format!(
                    "export `{name}` is already running (one run at a time per export)"
                ))
                .into());
            }
            Err(e) => {
                // The run was asked for and cannot start: the history says why.
                let why = format!("the run could not start: {e:#}");
                let run_id = self
                    .state
                    .record_refused_run(&export, trigger, actor, &why)
                    .await?;
                return Err(e.context(format!("run {run_id} of export `{name}` could not start")));
            }
        };

        let fence = lock.fence().clone();
        let unfinished = self.state.unfinished_run(&export).await?;
        let (run_id, resumed, full) = match unfinished {
            Some(id) if !fresh => {
                // The full run an earlier attempt was asked for stays full.
                let full = self.state.resume_run(id, &fence, full).await?;
                (id, true, full)
            }
            other => {
                if let Some(id) = other {
                    self.state
                        .abandon_run(id, &format!("abandoned: {} started afresh", actor.name))
                        .await?;
                }
                let run_id = self
                    .state
                    .start_run(&export, trigger, actor, full, Some(&fence))
                    .await?;
                (run_id, false, full)
            }
        };
        let attempt = Attempt {
            run_id,
            resumed,
            full,
            lock,
        };
        self.execute_run(&export, attempt, progress, stop, None)
            .await
    }

    /// Queues a run of a saved export for the `serve` workers (the same queue scheduled runs
    /// go through); the run's id. A run cut short or failed is queued to be continued, unless
    /// `fresh`; an export has at most one queued run.
    pub async fn queue_export(&self, actor: &Actor, name: &str, how: RunRequest) -> Result<i64> {
        let export = self.export(actor, name).await?;
        self.approved_connector(&export.connector).await?;
        self.state
            .enqueue_run(&export, how.trigger, actor, how.fresh, how.full)
            .await
    }

    /// Runs a run this worker claimed from the queue: continues it when an earlier attempt
    /// made progress (its worker died, or it was queued to continue), else starts it. When
    /// `handover` is cancelled while it runs (the worker is stopping), the run is left waiting
    /// for another worker rather than interrupted.
    pub async fn run_claimed(
        &self,
        claim: Claim,
        progress: &dyn Progress,
        stop: Option<CancellationToken>,
        handover: Option<&CancellationToken>,
    ) -> Result<RunOutcome> {
        let export = self.state.export_by_id(claim.export_id).await?;
        let (resumed, full) = self
            .state
            .start_claimed(claim.run_id, claim.lock.fence())
            .await?;
        let attempt = Attempt {
            run_id: claim.run_id,
            resumed,
            full,
            lock: claim.lock,
        };
        self.execute_run(&export, attempt, progress, stop, handover)
            .await
    }

    /// Runs an attempt of a recorded run while holding its export's lock, and records how it
    /// ended. The run stops cleanly on `stop`, and at once when the lock is lost (a lease that
    /// could not be renewed in time, or that another worker took: that worker continues it).
    async fn execute_run(
        &self,
        export: &ExportRecord,
        attempt: Attempt,
        progress: &dyn Progress,
        stop: Option<CancellationToken>,
        handover: Option<&CancellationToken>,
    ) -> Result<RunOutcome> {
        let Attempt {
            run_id,
            resumed,
            full,
            lock,
        } = attempt;
        let fence = lock.fence().clone();
        let outcome = self
            .attempt_run(export, run_id, full, &fence, progress, stop)
            .await;
        let handed_over = handover.is_some_and(CancellationToken::is_cancelled);
        let outcome = self
            .record_attempt(export, run_id, resumed, &fence, handed_over, outcome)
            .await;
        lock.release().await;
        outcome
    }

    /// Records how an attempt ended, while this worker holds the run: a worker that lost its
    /// lock writes nothing (the run is another worker's, or waits for one).
    async fn record_attempt(
        &self,
        export: &ExportRecord,
        run_id: i64,
        resumed: bool,
        fence: &Fence,
        handed_over: bool,
        attempt: Result<(RunReport, SyncBasis)>,
    ) -> Result<RunOutcome> {
        if fence.lost().is_cancelled() {
            let why = fence.why().unwrap_or_default();
            tracing::warn!(
                run = run_id,
                export = %export.name,
                "this worker stopped the run: its lock on the export was lost ({why}); the worker that takes the run over continues it"
            );
            return match attempt {
                Ok((report, _)) => Ok(RunOutcome {
                    run_id,
                    resumed,
                    report,
                }),
                Err(e) => Err(e.context(format!("run {run_id} of export `{}`", export.name))),
            };
        }
        match attempt {
            Ok((mut report, basis)) => {
                // A continuation that cannot be accounted for is not continued again.
                if let Err(why) = report.check(true) {
                    let why = format!(
                        "the run's report does not add up ({why}); the next run starts afresh"
                    );
                    tracing::error!(run = run_id, "{why}");
                    self.state.give_up_run(run_id, fence, &why).await?;
                    return Err(anyhow::anyhow!(why));
                }
                let (state, error) = match &report.status {
                    RunStatus::Succeeded => (RunState::Succeeded, None),
                    RunStatus::Failed(e) => (RunState::Failed, Some(e.as_str())),
                    // A worker stopping hands the run to the next worker to come.
                    RunStatus::Interrupted if handed_over => (RunState::Running, None),
                    RunStatus::Interrupted => (RunState::Interrupted, None),
                };
                let synced = report.succeeded().then_some((export, &basis));
                self.finish(run_id, fence, state, error, Some(&report), synced)
                    .await?;
                if resumed && let Ok(record) = self.state.run(run_id).await {
                    // What the whole run cost, every attempt's included.
                    report.cover_attempts(
                        record.attempts,
                        crate::run::Figures {
                            requests: record.requests,
                            retries: record.retries,
                            batches: record.counts.batches,
                            duration: Duration::from_secs_f64(record.seconds),
                            left: None,
                        },
                    );
                }
                Ok(RunOutcome {
                    run_id,
                    resumed,
                    report,
                })
            }
            Err(e) if crate::pg::is_transient(&e) => {
                // The state is out of reach: the run stays under way, for the next worker
                // (or the next run) once it is back.
                Err(e.context(format!(
                    "run {run_id} of export `{}` waits for the state to be reachable again",
                    export.name
                )))
            }
            Err(e) => {
                // Refused before sending anything: a new run is over; a resumed one stays
                // resumable with what it had settled.
                let state = if resumed {
                    RunState::Interrupted
                } else {
                    RunState::Failed
                };
                self.finish(run_id, fence, state, Some(&format!("{e:#}")), None, None)
                    .await?;
                Err(e.context(format!("run {run_id} of export `{}`", export.name)))
            }
        }
    }

    /// Writes a run's end under `fence`, trying again while the state is out of reach and the
    /// lock surely holds; a run another worker took over is left to it.
    async fn finish(
        &self,
        run_id: i64,
        fence: &Fence,
        state: RunState,
        error: Option<&str>,
        report: Option<&RunReport>,
        synced: Option<(&ExportRecord, &SyncBasis)>,
    ) -> Result<()> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self
                .state
                .finish_run(run_id, Some(fence), state, error, report, synced)
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    tracing::warn!(
                        run = run_id,
                        "the run was taken over by another worker: this attempt's end is not recorded"
                    );
                    return Ok(());
                }
                Err(e) if crate::pg::is_transient(&e) && fence.holds() => {
                    tracing::warn!(
                        run = run_id,
                        "recording the run's end failed ({e:#}); trying again"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn attempt_run(
        &self,
        export: &ExportRecord,
        run_id: i64,
        full: bool,
        fence: &Fence,
        progress: &dyn Progress,
        stop: Option<CancellationToken>,
    ) -> Result<(RunReport, SyncBasis)> {
        let source = self.source()?;
        let plugin = self.approved_connector(&export.connector).await?;
        let (basis, full) = self.sync_mode(export, &plugin, full).await?;
        let (record, connection) = self.unsealed_by_id(export.connection_id).await?;
        let limits = self.run_limits().await?;
        let options = RunOptions {
            max_profiles: limits.max_profiles,
            max_bad_rows: self.options.max_bad_rows.or(limits.max_bad_rows),
            journal: Some(Arc::new(self.state.journal(export, run_id, fence))),
            // The vendor counts the account's requests, whichever run or worker sends them.
            account: Some(SharedAccount {
                key: format!("{}:{}", record.connector, record.fingerprint),
                slots: self.state.account_slots(),
            }),
            full,
            stop,
            fence: Some(fence.clone()),
            ..self.options.clone()
        };
        let report = self
            .host()?
            .run_export_with(
                plugin,
                &connection,
                &saved(export),
                source,
                &options,
                progress,
            )
            .await?;
        Ok((report, basis))
    }

    /// What the next run of a saved export would do, without sending anything or changing any
    /// state (a dry run). `full` plans a full run.
    pub async fn plan_export(&self, actor: &Actor, name: &str, full: bool) -> Result<RunPlan> {
        let export = self.export(actor, name).await?;
        let plugin = self.approved_connector(&export.connector).await?;
        // The run the next one continues, read as that run's next attempt would read it.
        let continues = self.state.unfinished_run(&export).await?;
        let full = full || self.state.full_asked(continues).await?;
        let (_, full) = self.sync_mode(&export, &plugin, full).await?;
        let options = RunOptions {
            journal: Some(Arc::new(self.state.sync_reader(&export, continues))),
            full,
            ..self.options.clone()
        };
        let mut plan = self
            .host()?
            .plan_export_with(plugin, &saved(&export), self.source()?, &options)
            .await?;
        plan.continues_run = continues;
        Ok(plan)
    }

    /// What a run syncs with, and why it must be full, if it must: asked for, or the mapping,
    /// settings or connector version changed since the last completed run.
    async fn sync_mode(
        &self,
        export: &ExportRecord,
        plugin: &Plugin,
        asked: bool,
    ) -> Result<(SyncBasis, Option<String>)> {
        let basis = SyncBasis {
            connector: plugin.info.id.clone(),
            connector_version: plugin.info.version.clone(),
            mapping: export.mapping.pairs(),
            settings: export.settings.clone(),
        };
        if asked {
            return Ok((basis, Some("a full run was asked for".into())));
        }
        let before = self.state.sync_basis(export).await?;
        let why = before.and_then(|before| basis.full_because(&before));
        Ok((basis, why))
    }

    /// The connector of an export's connection.
    pub(super) async fn connector_of(&self, export_id: i64) -> Result<String> {
        Ok(self.state.export_by_id(export_id).await?.connector)
    }
}
