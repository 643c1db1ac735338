//! A worker: fires the schedules that fall due, claims queued runs and runs whose worker is
//! gone, and rides out the state being out of reach.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use futures_util::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Workspace;
use super::runs::RunOutcome;
use crate::fence::Fence;
use crate::run::{NoProgress, Progress};
use crate::schedule::Schedule;

impl Workspace {
    /// Works as one of the state's workers until `stop` is cancelled: fires the schedules
    /// that fall due (each fire queues one run, whichever worker fires it first) and runs
    /// queued runs, and runs whose worker is gone, up to `options.max_runs` at a time. Exports
    /// added, changed or removed meanwhile are picked up within `options.poll`. The state out
    /// of reach (a database restart, a cut connection) pauses the worker, which says so and
    /// tries again; it never ends it. On stop, runs under way finish their batches in flight,
    /// checkpoint and are left waiting for the next worker.
    pub async fn serve(
        self: Arc<Self>,
        stop: CancellationToken,
        options: ServeOptions,
    ) -> Result<()> {
        self.key()?;
        self.source()?;
        self.host()?;
        let worker = self.state.worker().to_string();
        let mut due: HashMap<i64, (String, chrono::DateTime<Utc>)> = HashMap::new();
        let mut running: HashMap<i64, String> = HashMap::new();
        let mut runs: JoinSet<(i64, String, Result<RunOutcome>)> = JoinSet::new();
        let mut outage = Outage::default();
        tracing::info!(%worker, state = %self.state.location(), "serving: scheduled and queued runs");
        loop {
            let now = Utc::now();
            let exports = match self.state.exports().await {
                Ok(exports) => {
                    outage.over();
                    exports
                }
                Err(e) => {
                    let pause = outage.begin(&e);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                        Some(done) = runs.join_next(), if !runs.is_empty() => {
                            log_run(&worker, &mut running, done);
                            continue;
                        }
                    }
                }
            };
            due.retain(|id, _| exports.iter().any(|e| e.id == *id));
            for export in &exports {
                let Some(text) = &export.schedule else {
                    due.remove(&export.id);
                    continue;
                };
                if due.get(&export.id).is_some_and(|(known, _)| known == text) {
                    continue;
                }
                match Schedule::parse(text).map(|s| s.next_after(now)) {
                    Ok(Some(next)) => {
                        tracing::info!(export = %export.name, next = %next.to_rfc3339(), "scheduled");
                        due.insert(export.id, (text.clone(), next));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(export = %export.name, "{e:#}"),
                }
            }
            for export in &exports {
                let Some((text, at)) = due.get_mut(&export.id) else {
                    continue;
                };
                if *at > now {
                    continue;
                }
                let fire = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                match self.state.fire_schedule(export, &fire).await {
                    Ok(Some(run)) => {
                        tracing::info!(export = %export.name, run, %fire, "schedule fired: run queued")
                    }
                    Ok(None) => {
                        tracing::debug!(export = %export.name, %fire, "schedule fired by another worker")
                    }
                    // The state out of reach: fired again at the next look (a fire is
                    // recorded once, whoever records it).
                    Err(e) if crate::pg::is_transient(&e) => {
                        tracing::warn!(export = %export.name, "the schedule could not fire yet: {e:#}");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(export = %export.name, "the schedule could not fire: {e:#}")
                    }
                }
                if let Some(next) = Schedule::parse(text).ok().and_then(|s| s.next_after(now)) {
                    *at = next;
                }
            }
            while running.len() < options.max_runs.max(1) {
                let claim = match self.state.claim_run().await {
                    Ok(Some(claim)) => claim,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("could not claim a queued run: {e:#}");
                        break;
                    }
                };
                let name = self
                    .state
                    .export_by_id(claim.export_id)
                    .await
                    .map(|e| e.name)
                    .unwrap_or_else(|_| format!("#{}", claim.export_id));
                tracing::info!(%worker, export = %name, run = claim.run_id, "run claimed");
                running.insert(claim.export_id, name.clone());
                let workspace = self.clone();
                let (id, run_stop, shutdown) = (claim.export_id, stop.child_token(), stop.clone());
                let watch = options.watch.clone();
                let worker = worker.clone();
                runs.spawn(async move {
                    let run_id = claim.run_id;
                    let fence = claim.lock.fence().clone();
                    let progress: Arc<dyn Progress> = match &watch {
                        Some(watch) => watch.started(run_id, &run_stop),
                        None => Arc::new(NoProgress),
                    };
                    let attempt =
                        workspace.run_claimed(claim, &*progress, Some(run_stop), Some(&shutdown));
                    let outcome = match AssertUnwindSafe(attempt).catch_unwind().await {
                        Ok(outcome) => outcome,
                        Err(panic) => {
                            let why = format!(
                                "worker {worker} failed on the run (it panicked: {})",
                                panic_message(&*panic)
                            );
                            Err(workspace.note_failure(id, run_id, &fence, why).await)
                        }
                    };
                    if let Some(watch) = &watch {
                        let connector = workspace.connector_of(id).await.unwrap_or_default();
                        watch.finished(run_id, &connector, &outcome);
                    }
                    (id, name, outcome)
                });
            }
            let next_due = due
                .values()
                .map(|(_, at)| *at)
                .min()
                .map(|at| (at - Utc::now()).to_std().unwrap_or_default())
                .unwrap_or(options.poll)
                .min(options.poll);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(next_due) => {}
                _ = options.wake.notified() => {}
                Some(done) = runs.join_next(), if !runs.is_empty() => log_run(&worker, &mut running, done),
            }
        }
        tracing::info!(
            runs = runs.len(),
            "stopping: finishing the batches in flight; the runs wait for the next worker"
        );
        while let Some(done) = runs.join_next().await {
            log_run(&worker, &mut running, done);
        }
        Ok(())
    }

    /// Records that this worker failed on a run (a panic), so that the run is not claimed in
    /// a loop: after a few such failures it ends failed with the reason. The lease is given
    /// back at once, for another worker to try. The error to report.
    async fn note_failure(
        &self,
        export_id: i64,
        run_id: i64,
        fence: &Fence,
        why: String,
    ) -> anyhow::Error {
        tracing::error!(run = run_id, "{why}");
        match self.state.note_failure(run_id, fence, &why).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(run = run_id, "the run is another worker's now"),
            Err(e) => tracing::warn!(run = run_id, "the failure could not be recorded: {e:#}"),
        }
        self.state.give_up_lease(export_id, fence).await;
        anyhow::anyhow!(why)
    }
}

/// What a panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// How long the state has been out of reach, so that a worker says so once, backs off, and
/// says when it is back.
#[derive(Default)]
struct Outage {
    since: Option<std::time::Instant>,
    tries: u32,
}

impl Outage {
    /// The state could not be reached: how long to wait before trying again.
    fn begin(&mut self, error: &anyhow::Error) -> Duration {
        if self.since.is_none() {
            tracing::warn!(
                "the state cannot be reached ({error:#}); this worker pauses and tries again (runs under way stop only if their lease cannot be renewed in time)"
            );
            self.since = Some(std::time::Instant::now());
        } else {
            tracing::debug!("the state still cannot be reached: {error:#}");
        }
        self.tries += 1;
        Duration::from_millis(200 << self.tries.min(5))
    }

    /// The state answered.
    fn over(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                "the state is reachable again after {:.1} s; this worker goes on",
                since.elapsed().as_secs_f64()
            );
        }
        self.tries = 0;
    }
}

/// How a worker serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// How often the worker looks for changed exports and queued runs.
    pub poll: Duration,
    /// Runs this worker makes at a time.
    pub max_runs: usize,
    /// Wakes the worker before `poll` is up (a run was queued by this process).
    pub wake: Arc<tokio::sync::Notify>,
    /// Told of each run this worker makes: its progress, and how it ended.
    pub watch: Option<Arc<dyn RunWatch>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            poll: Duration::from_secs(5),
            max_runs: 8,
            wake: Arc::default(),
            watch: None,
        }
    }
}

/// Follows the runs a worker makes (an HTTP server's live progress and metrics).
pub trait RunWatch: Send + Sync {
    /// Run `run_id` starts on this worker: where it reports its progress; cancelling `stop`
    /// ends it as a signal would (its batches in flight settle, the next run continues it).
    fn started(&self, run_id: i64, stop: &CancellationToken) -> Arc<dyn Progress>;
    /// Run `run_id` of an export through `connector` ended (or could not start).
    fn finished(&self, run_id: i64, connector: &str, outcome: &Result<RunOutcome>);
}

fn log_run(
    worker: &str,
    running: &mut HashMap<i64, String>,
    done: std::result::Result<(i64, String, Result<RunOutcome>), tokio::task::JoinError>,
) {
    match done {
        Ok((id, name, outcome)) => {
            running.remove(&id);
            match outcome {
                Ok(o) => tracing::info!(
                    %worker,
                    export = %name,
                    run = o.run_id,
                    status = ?o.report.status,
                    profiles = o.report.counts.profiles,
                    sent = o.report.counts.sent(),
                    "run ended"
                ),
                Err(e) => tracing::warn!(%worker, export = %name, "run refused: {e:#}"),
            }
        }
        Err(e) => tracing::error!("a run panicked: {e}"),
    }
}
