//! Running an export: check everything, validate against the vendor, then stream the segment
//! through the connector in batches, several in flight, sending only what the sync state says
//! must go; then apply the export's leave action to those who left the segment. Every profile is
//! accounted for, and each settled piece is recorded before it counts as done.
//!
//! One job a file: [`prepare`] (checks), [`batches`] (reading and deciding), [`call`] (the
//! connector), [`settle`] (outcomes to records), [`leave`] (leavers), [`sync`] (sync state),
//! [`recorder`] (the journal writer), [`counts`] and [`report`] (what the run did), [`plan`]
//! (dry runs).

mod batches;
mod call;
pub mod counts;
mod eta;
mod issue_csv;
mod leave;
mod plan;
mod prepare;
mod probe;
mod recorder;
pub mod report;
mod settle;
pub mod sync;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use counts::RunCounts;
pub use eta::words as duration_words;
pub use issue_csv::IssueCsv;
pub use plan::{Expected, RunPlan};
pub use probe::{Answer, Probe, ProbeExport};
pub use report::{Figures, IssueKind, Reason, RunIssue, RunMode, RunReport, RunStatus, Stage};
pub use sync::{RunJournal, SettledContact, Settlement, SyncReason, SyncState, Synced};

use crate::ConnectorHost;
use crate::broker::{BrokerPolicy, RequestObserver, SharedAccount};
use crate::fence::Fence;
use crate::mapping::FieldMapping;
use crate::plugins::Plugin;
use crate::secret::Credential;
use crate::source::ProfileSource;
use batches::Batch;
use call::{Call, Calls};
use eta::{Eta, TimeLeft};
use recorder::{Recorded, Recorder};
use settle::Piece;
use sync::SyncIndex;

/// A vendor account to export to.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The connector that talks to this vendor.
    pub connector: String,
    /// The API base URL an administrator chose, when not the connector's production one:
    /// one of the connector's declared hosts over https, or a loopback simulator (the only
    /// way plain http or a loopback address is ever reached). May contain `{dc}`, like the
    /// connector's own. A connector can never choose where the credential goes.
    pub base_url: Option<String>,
    /// The account's data centre (e.g. `us21`), for connectors whose base URL contains `{dc}`.
    /// When unset, it is taken from an API key's suffix (`<key>-us21`).
    pub data_centre: Option<String>,
    /// The credential; only the broker ever reads it.
    pub credential: Credential,
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct Export {
    /// The connector's settings (e.g. `list-id`), by key.
    pub settings: Vec<(String, String)>,
    /// Which profile column feeds which contact field.
    pub mapping: FieldMapping,
    /// The segments whose members are sent.
    pub segments: Vec<String>,
    /// What happens at the vendor to contacts sent before that have left the segment: one of
    /// the connector's leave actions, or none (they are only reported).
    pub leave_action: Option<String>,
}

/// How a run behaves. The defaults suit the shipped connectors.
#[derive(Clone)]
pub struct RunOptions {
    /// Batches in flight at once; `None`: twice the requests the connection lets in flight
    /// (the connector's declared vendor limit, or the broker policy's), so that a request slot
    /// freed never waits for the next batch to be encoded.
    pub concurrency: Option<usize>,
    /// Refuse runs with more profiles than this, before anything is sent.
    pub max_profiles: u64,
    /// Rows of the segment the source cannot read that a run skips (each recorded with its
    /// location and reason) before it stops as failed; `None`: any number.
    pub max_bad_rows: Option<u64>,
    /// Extra attempts of a batch whose connector error says it is retryable.
    pub batch_retries: u32,
    /// Retry, timeout and size rules for the connector's HTTP requests.
    pub broker: BrokerPolicy,
    /// Called for every HTTP request the connector makes.
    pub observer: Option<RequestObserver>,
    /// The vendor account the run's requests count against, with other runs and workers
    /// using it (`None`: the run's own limit only).
    pub account: Option<SharedAccount>,
    /// The export's sync state and the run's record. With one, a run sends only contacts that
    /// are new, changed, returning or unsettled, applies the leave action to those who left,
    /// and a run cut short (or failed) continues from what the vendor acknowledged. Without
    /// one, a run sends every contact and nobody is known to leave.
    pub journal: Option<Arc<dyn RunJournal>>,
    /// Send every contact, whatever the sync state says, for this reason (a changed mapping,
    /// `--full`...). Leavers are still found.
    pub full: Option<String>,
    /// Cancelled to stop the run cleanly: no new batch starts, the batches in flight finish and
    /// are settled, and the report says [`RunStatus::Interrupted`].
    pub stop: Option<CancellationToken>,
    /// Hears every contact not delivered, once its piece is settled (the report lists only the
    /// first [`report::MAX_REPORT_ISSUES`]); an error fails the run.
    pub on_issue: Option<IssueListener>,
    /// The lock the run acts under (a lease, across machines): no request to the vendor starts
    /// once it no longer surely holds, and losing it stops the run at once: its batches in
    /// flight are abandoned and those waiting are dropped, unsettled, for the next holder.
    pub fence: Option<Fence>,
}

/// See [`RunOptions::on_issue`].
pub type IssueListener = Arc<dyn Fn(&RunIssue) -> Result<()> + Send + Sync>;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: None,
            max_profiles: 1_000_000,
            max_bad_rows: None,
            batch_retries: 2,
            broker: BrokerPolicy::default(),
            account: None,
            observer: None,
            journal: None,
            full: None,
            stop: None,
            on_issue: None,
            fence: None,
        }
    }
}

/// Receives progress as batches are acknowledged.
pub trait Progress: Send + Sync {
    /// The run is about to send `total` profiles (if known).
    fn begin(&self, _total: Option<u64>) {}
    /// `profiles` more profiles were handled (delivered, skipped or rejected).
    fn advance(&self, _profiles: u64) {}
    /// The segment is done; `leavers` contacts left it and are being settled.
    fn leaving(&self, _leavers: u64) {}
    /// `leavers` more leavers were settled.
    fn advance_leaving(&self, _leavers: u64) {}
    /// The phase under way (sending, then settling leavers) should end in `left`: from the
    /// pace so far and the vendor's windows.
    fn expect(&self, _left: Duration) {}
    /// The run ended.
    fn end(&self) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The outcome of [`ConnectorHost::check_connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialCheck {
    /// The vendor accepted the credential.
    Accepted,
    /// The connector predates credential checks (contract 0.1.0); its exports' `validate`
    /// checks the credential when they are saved.
    NotSupported,
}

impl ConnectorHost {
    /// Runs an export to the end, or until a failure stops it. Problems found before sending
    /// (bad settings, mapping, segments, leave action, credential, list) are errors and nothing
    /// is sent; a failure mid-run ends with a report whose status says what happened and what
    /// was delivered.
    pub async fn run_export(
        &self,
        connection: &Connection,
        export: &Export,
        source: &dyn ProfileSource,
        options: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport> {
        let plugin = self.loaded(&connection.connector)?;
        self.run_export_with(plugin, connection, export, source, options, progress)
            .await
    }

    /// [`Self::run_export`] with this exact connector (the one an approval covers).
    pub(crate) async fn run_export_with(
        &self,
        plugin: Arc<Plugin>,
        connection: &Connection,
        export: &Export,
        source: &dyn ProfileSource,
        options: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport> {
        let started = Instant::now();
        let prepared = self.prepare(plugin, connection, export, source, options)?;
        let stream = source.profiles(&export.segments)?;
        if let Some(total) = stream.total
            && total > options.max_profiles
        {
            bail!(
                "the export's segments hold {total} profiles, over the limit of {} per run; nothing was sent",
                options.max_profiles
            );
        }
        // The vendor's answer and the sync state's scan take time of different kinds.
        let (validated, index) = tokio::join!(
            self.validate(&prepared, "the export did not validate"),
            load_index(options)
        );
        validated?;
        let index = index?;

        let mode = match (&options.full, &options.journal) {
            (Some(why), _) => RunMode::Full(why.clone()),
            (None, None) => RunMode::Full("a run without sync state sends every contact".into()),
            (None, Some(_)) => RunMode::Delta,
        };
        let info = &prepared.plugin.info;
        let concurrency = options
            .concurrency
            .unwrap_or(2 * prepared.broker.in_flight())
            .max(1);
        let lost = options
            .fence
            .as_ref()
            .map(|f| f.lost().clone())
            .unwrap_or_default();
        // The lock lapses at its deadline even if whoever renews it is late.
        let watchdog = options.fence.clone().map(|f| tokio::spawn(f.watch()));
        let expected = Arc::new(TimeLeft::default());
        let mut run = Run {
            lost: lost.clone(),
            report: RunReport::new(
                &info.id,
                &export.segments,
                mode,
                export.leave_action.as_deref(),
            ),
            journal: options.journal.clone(),
            recorder: options.journal.clone().map(|journal| {
                Recorder::start(
                    journal,
                    concurrency,
                    prepared.broker.stats(),
                    started,
                    expected.clone(),
                )
            }),
            on_issue: options.on_issue.clone(),
            progress,
            failure: None,
            broker: prepared.broker.clone(),
            eta: Eta::start(
                stream.total,
                u64::from(info.max_batch_size),
                &prepared.broker.pacing(),
            ),
            eta_done: 0,
            eta_called: (0, 0),
            expected: expected.clone(),
        };
        run.report.segment_size = stream.total;
        progress.begin(stream.total);
        run.expect();
        let calls = Arc::new(Calls {
            sandbox: self.sandbox.clone(),
            plugin: prepared.plugin.clone(),
            config: prepared.config,
            broker: prepared.broker.clone(),
            retries: options.batch_retries,
        });
        let stop = options.stop.clone().unwrap_or_default();
        let size = info.max_batch_size as usize;

        // Phase 1: the segment, read on its own thread and sent batch by batch.
        let (tx, mut rx) = mpsc::channel::<Batch>(concurrency * 2);
        let mapping = prepared.mapping;
        let max_bad_rows = options.max_bad_rows;
        let reader = tokio::task::spawn_blocking(move || {
            let mut index = index;
            let how = batches::Reading {
                mapping: &mapping,
                size,
                max_bad_rows,
            };
            let read = batches::read(stream.rows, &how, &mut index, &mut |_, _| {}, |b| {
                tx.blocking_send(b).is_ok()
            });
            (index, read)
        });
        let mut in_flight = JoinSet::new();
        let mut read_all = false;
        loop {
            if lost.is_cancelled() {
                // Another worker may hold the run: nothing more is sent, and what was in
                // flight is left to the next holder.
                in_flight.abort_all();
                break;
            }
            let stopping = stop.is_cancelled();
            if (read_all || run.failure.is_some() || stopping) && in_flight.is_empty() {
                break;
            }
            let can_send =
                !read_all && run.failure.is_none() && !stopping && in_flight.len() < concurrency;
            let recording = run.recording();
            tokio::select! {
                batch = rx.recv(), if can_send => match batch {
                    Some(batch) if batch.contacts.is_empty() => {
                        run.record(settle::sent(batch, None)).await
                    }
                    Some(batch) => {
                        let calls = calls.clone();
                        in_flight.spawn(async move {
                            let outcome = calls.make(Call::Export, &batch.contacts).await;
                            (batch, outcome)
                        });
                    }
                    None => read_all = true,
                },
                done = in_flight.join_next(), if !in_flight.is_empty() => {
                    match done.expect("set is not empty") {
                        Ok((batch, Ok((outcome, asked)))) => {
                            run.called(batch.counts.profiles, asked);
                            run.record(settle::sent(batch, Some(outcome))).await
                        }
                        Ok((_, Err(e))) => run.fail(format!("{e:#}")),
                        Err(join) => run.fail(format!("batch task failed: {join}")),
                    }
                }
                Some(recorded) = next_recorded(&mut run.recorder), if recording => {
                    run.absorb(recorded)
                }
                _ = stop.cancelled(), if !stopping => {}
                _ = lost.cancelled() => {}
            }
        }
        drop(rx);
        // Everything read and sent is recorded before anyone is found to have left.
        run.flush().await;
        // The reader stops as soon as it finds the channel closed; its own error (an unreadable
        // row) ends the run like a failed batch.
        let index = match reader.await {
            Ok((index, Ok(()))) => Some(index),
            Ok((_, Err(e))) => {
                run.fail(format!("reading profiles failed: {e:#}"));
                None
            }
            Err(join) => {
                run.fail(format!("profile reader failed: {join}"));
                None
            }
        };

        // Phase 2: who left. Only once the whole segment was read and settled: a profile not
        // read is not a leaver.
        if let Some(mut index) = index
            && read_all
            && run.failure.is_none()
            && !stop.is_cancelled()
            && !lost.is_cancelled()
            && run.journal.is_some()
        {
            let action = export.leave_action.as_deref().map(|id| {
                let reversible = info
                    .leave_actions
                    .iter()
                    .any(|a| a.id == id && a.reversible);
                (id, reversible)
            });
            leave::apply(
                &calls,
                &mut run,
                &mut index,
                action,
                size,
                concurrency,
                &stop,
            )
            .await;
            run.flush().await;
        }
        progress.end();
        let stats = prepared.broker.stats();
        run.report.requests = stats.requests();
        run.report.retries = stats.retries();
        run.report.refusals = stats.refusals();
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        if lost.is_cancelled() {
            // Whatever failed after the lock was lost failed because of it.
            run.failure = None;
            run.report.status = RunStatus::Interrupted;
        } else if let Some(mut error) = run.failure.take() {
            // Whatever the connector made of a refusal, the operator reads the host's words.
            if !run.report.refusals.is_empty() {
                error.push_str(&format!(
                    "; the host refused {}",
                    run.report.refusals.join("; ")
                ));
            }
            run.report.status = RunStatus::Failed(error);
        } else if !read_all || stop.is_cancelled() {
            run.report.status = RunStatus::Interrupted;
        }
        run.report.duration = started.elapsed();
        // A continued run lists its earlier attempts' undelivered contacts again: its reasons
        // are the whole run's.
        run.report.assert_adds_up(true);
        Ok(run.report)
    }

    /// What a run of the export would do, without sending anything or changing any state: how
    /// many contacts would be sent (new, changed, returning), left unchanged, skipped, and acted
    /// on as leavers, with a few examples of each. No request reaches the vendor.
    pub async fn plan_export(
        &self,
        connector: &str,
        export: &Export,
        source: &dyn ProfileSource,
        options: &RunOptions,
    ) -> Result<RunPlan> {
        let plugin = self.loaded(connector)?;
        self.plan_export_with(plugin, export, source, options).await
    }

    /// [`Self::plan_export`] with this exact connector.
    pub(crate) async fn plan_export_with(
        &self,
        plugin: Arc<Plugin>,
        export: &Export,
        source: &dyn ProfileSource,
        options: &RunOptions,
    ) -> Result<RunPlan> {
        let started = Instant::now();
        let mapping = prepare::check_export_shape(&plugin, export, source)?;
        let stream = source.profiles(&export.segments)?;
        let index = load_index(options).await?;
        let journal = options.journal.clone();
        let size = plugin.info.max_batch_size as usize;
        let full = options.full.clone();
        let leave_action = export.leave_action.clone().map(|id| {
            let reversible = plugin
                .info
                .leave_actions
                .iter()
                .any(|a| a.id == id && a.reversible);
            (id, reversible)
        });
        let leave_size = leave_action
            .as_ref()
            .and_then(|(id, _)| plugin.info.leave_actions.iter().find(|a| a.id == *id))
            .map_or(size, |a| match a.batch_size as usize {
                0 => size,
                n => n.min(size),
            });
        let mut plan = tokio::task::spawn_blocking(move || {
            plan::plan(
                stream,
                &mapping,
                index,
                size,
                journal.as_deref(),
                full,
                leave_action,
                started,
            )
        })
        .await
        .context("the planner panicked")??;
        // One request a batch of contacts and a call a batch of leavers, at the windows the
        // run would be paced to.
        let requests = plan.counts.to_send().div_ceil(size.max(1) as u64)
            + plan.leaving_to_do.div_ceil(leave_size.max(1) as u64);
        let windows = options
            .broker
            .windows(&crate::broker::VendorLimits::declared(&plugin.info));
        plan.expected = windows
            .iter()
            .filter_map(|w| Some((eta::at_limits(requests, std::slice::from_ref(w))?, w)))
            .max_by_key(|(d, _)| *d)
            .map(|(seconds, w)| plan::Expected {
                seconds,
                limit: w.describe(),
                requests,
            });
        Ok(plan)
    }
}

/// Reads the journal's sync state into memory (on a blocking thread: it is a database scan).
async fn load_index(options: &RunOptions) -> Result<SyncIndex> {
    let journal = options.journal.clone();
    let full = options.full.is_some();
    tokio::task::spawn_blocking(move || SyncIndex::load(journal.as_deref(), full))
        .await
        .context("reading the sync state panicked")?
        .context("reading the export's sync state failed")
}

/// A run under way: its report so far, where it records, and the first failure.
struct Run<'a> {
    /// Cancelled when the run's lock is lost: it stops at once.
    lost: CancellationToken,
    report: RunReport,
    journal: Option<Arc<dyn RunJournal>>,
    /// Writes settled pieces to the journal (none without one).
    recorder: Option<Recorder>,
    on_issue: Option<IssueListener>,
    progress: &'a dyn Progress,
    failure: Option<String>,
    /// The run's requests, whose windows bound its time left.
    broker: Arc<crate::broker::Broker>,
    /// The phase under way's time left, and what it has handled.
    eta: Eta,
    eta_done: u64,
    /// Profiles of the phase's calls that answered, and the requests those calls made.
    eta_called: (u64, u64),
    /// The latest time left, for the journal.
    expected: Arc<TimeLeft>,
}

/// The next piece the recorder took back, if one is pending.
async fn next_recorded(recorder: &mut Option<Recorder>) -> Option<Recorded> {
    recorder.as_mut()?.next().await
}

impl Run<'_> {
    /// Records a settled piece. With a journal it counts once recorded (the recorder writes
    /// it behind the run); without one, at once.
    async fn record(&mut self, piece: Piece) {
        while let Some(recorded) = self.recorder.as_mut().and_then(Recorder::try_next) {
            self.absorb(recorded);
        }
        match &mut self.recorder {
            Some(recorder) => recorder.submit(piece).await,
            None => self.count(piece),
        }
    }

    /// Whether pieces handed to the recorder are waiting to be taken back.
    fn recording(&self) -> bool {
        self.recorder.as_ref().is_some_and(|r| r.pending() > 0)
    }

    /// Counts a piece the recorder recorded, or fails the run if it could not.
    fn absorb(&mut self, recorded: Recorded) {
        match recorded {
            Ok(piece) => self.count(piece),
            Err(e) => self.fail(format!("recording the run in its journal failed: {e}")),
        }
    }

    /// Waits until every piece handed to the recorder is recorded, and counts them.
    async fn flush(&mut self) {
        while let Some(recorded) = next_recorded(&mut self.recorder).await {
            self.absorb(recorded);
        }
    }

    fn count(&mut self, piece: Piece) {
        self.progress.advance(piece.counts.profiles);
        self.eta_done += piece.counts.profiles;
        if piece.counts.leaving > 0 {
            self.progress.advance_leaving(piece.counts.leaving);
            self.eta_done += piece.counts.leaving;
        }
        self.expect();
        self.report.counts.add(&piece.counts);
        for issue in piece.issues {
            if let Some(listener) = &self.on_issue
                && let Err(e) = listener(&issue)
            {
                self.fail(format!("passing on an undelivered contact failed: {e:#}"));
            }
            self.report.note_issue(issue);
        }
    }

    /// A call for `profiles` answered, having made `requests`.
    fn called(&mut self, profiles: u64, requests: u64) {
        self.eta_called.0 += profiles;
        self.eta_called.1 += requests;
    }

    /// Settling `leavers` (acted on in calls of `batch_size`) begins.
    fn leaving(&mut self, leavers: u64, batch_size: u64) {
        self.progress.leaving(leavers);
        self.eta = Eta::start(Some(leavers), batch_size, &self.broker.pacing());
        self.eta_done = 0;
        self.eta_called = (0, 0);
        self.expect();
    }

    /// Tells the progress, and the journal, how long the phase has left.
    fn expect(&mut self) {
        let left = self
            .eta
            .left(self.eta_done, self.eta_called, &self.broker.pacing());
        self.expected.set(left);
        if let Some(left) = left {
            self.progress.expect(left);
        }
    }

    /// Keeps the first failure.
    fn fail(&mut self, error: String) {
        self.failure.get_or_insert(error);
    }
}
