//! Running an export: check everything, validate against the vendor, then stream the segment
//! through the connector in batches, several in flight, and account for every profile.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ConnectorHost;
use crate::broker::{
    AllowList, Broker, BrokerPolicy, BrokerSetup, RequestObserver, VendorLimits,
    check_default_base_url,
};
use crate::contract::{self, Contact, ExportConfig};
use crate::mapping::{FieldMapping, ResolvedMapping};
use crate::plugins::Plugin;
use crate::report::{IssueKind, RunIssue, RunReport, RunStatus};
use crate::sandbox::Sandbox;
use crate::secret::Secret;
use crate::source::{Profile, ProfileSource, hash128};
use crate::text::{self, MAX_LABEL_CHARS, MAX_MESSAGE_CHARS};

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

/// How the connection proves who it is to the vendor.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An API key, applied the way the connector declares (`describe().auth`).
    ApiKey(Secret),
    /// An OAuth access token, sent as `Authorization: Bearer`.
    AccessToken(Secret),
}

impl Credential {
    /// The data centre an API key names after its last dash (`<key>-us21`), if any.
    fn key_suffix(&self) -> Option<String> {
        match self {
            Credential::ApiKey(key) => key.expose().rsplit_once('-').map(|(_, dc)| dc.to_string()),
            Credential::AccessToken(_) => None,
        }
    }
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
}

/// How a run behaves. The defaults suit the shipped connectors.
#[derive(Clone)]
pub struct RunOptions {
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Refuse runs with more profiles than this, before anything is sent.
    pub max_profiles: u64,
    /// Extra attempts of a batch whose connector error says it is retryable.
    pub batch_retries: u32,
    /// Retry, timeout and size rules for the connector's HTTP requests.
    pub broker: BrokerPolicy,
    /// Called for every HTTP request the connector makes.
    pub observer: Option<RequestObserver>,
    /// Where settled batches are recorded, so a run cut short can resume without sending them
    /// again. Without one, a run always starts from the beginning.
    pub journal: Option<Arc<dyn RunJournal>>,
    /// Cancelled to stop the run cleanly: no new batch starts, the batches in flight finish and
    /// are settled, and the report says [`RunStatus::Interrupted`].
    pub stop: Option<CancellationToken>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 4,
            max_profiles: 1_000_000,
            batch_retries: 2,
            broker: BrokerPolicy::default(),
            observer: None,
            journal: None,
            stop: None,
        }
    }
}

/// Remembers the settled batches of a run, so that a run cut short (a crash, a kill, a
/// shutdown) resumes where it stopped. Batches are numbered in stream order and identified by a
/// digest of their profiles, so a batch whose profiles changed since is sent again.
pub trait RunJournal: Send + Sync {
    /// The tally of batch `index` if an earlier attempt of this run settled it with the same
    /// `digest`; such a batch is counted and not sent again.
    fn settled(&self, index: u64, digest: [u8; 16]) -> Option<BatchTally>;
    /// Records a settled batch durably. Called once the vendor acknowledged the batch (or when
    /// it held no contact to send), before the run counts it as done; an error fails the run.
    fn settle(&self, batch: &SettledBatch) -> Result<()>;
}

/// What one batch came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTally {
    /// Profiles read for the batch (sent, and settled locally).
    pub profiles: u64,
    pub sent: u64,
    pub created: u64,
    pub updated: u64,
    pub suppressed: u64,
    pub rejected: u64,
    pub duplicates: u64,
}

/// A batch the vendor acknowledged (or that had nothing to send), for the journal.
pub struct SettledBatch<'a> {
    /// The batch's position in the run's stream, from 0.
    pub index: u64,
    /// Digest of the batch's profile ids and emails.
    pub digest: [u8; 16],
    pub tally: BatchTally,
    /// The batch's profiles that were not created or updated, with reasons.
    pub issues: &'a [RunIssue],
}

/// Receives progress as batches are acknowledged.
pub trait Progress: Send + Sync {
    /// The run is about to send `total` profiles (if known).
    fn begin(&self, _total: Option<u64>) {}
    /// `profiles` more profiles were handled (delivered, skipped or rejected).
    fn advance(&self, _profiles: u64) {}
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

/// A run checked and ready: the connector, its config, the resolved mapping, the broker.
struct Prepared {
    plugin: Arc<Plugin>,
    config: ExportConfig,
    mapping: ResolvedMapping,
    broker: Arc<Broker>,
}

impl ConnectorHost {
    /// Checks an export as it would be saved: settings, mapping against the profile source's
    /// fields, segments, and the connector's own `validate` against the vendor. Sends no contact.
    pub async fn check_export(
        &self,
        connection: &Connection,
        export: &Export,
        source: &dyn ProfileSource,
    ) -> Result<()> {
        let prepared = self.prepare(connection, export, source, &RunOptions::default())?;
        self.validate(&prepared, "the export did not validate")
            .await
    }

    /// Runs an export to the end, or until a failure stops it. Problems found before sending
    /// (bad settings, mapping, segments, credential, list) are errors and nothing is sent; a
    /// failure mid-run ends with a report whose status says what happened and what was delivered.
    pub async fn run_export(
        &self,
        connection: &Connection,
        export: &Export,
        source: &dyn ProfileSource,
        options: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport> {
        let started = Instant::now();
        let prepared = self.prepare(connection, export, source, options)?;
        let stream = source.profiles(&export.segments)?;
        if let Some(total) = stream.total
            && total > options.max_profiles
        {
            bail!(
                "the export's segments hold {total} profiles, over the limit of {} per run; nothing was sent",
                options.max_profiles
            );
        }
        self.validate(&prepared, "the export did not validate")
            .await?;

        let mut report = RunReport::new(&prepared.plugin.info.id, &export.segments);
        progress.begin(stream.total);
        let batch_size = prepared.plugin.info.max_batch_size as usize;
        let (tx, mut rx) = mpsc::channel::<Batch>(options.concurrency.max(1) * 2);
        let mapping = prepared.mapping;
        let reader = tokio::task::spawn_blocking(move || {
            cut_batches(stream.profiles, &mapping, batch_size, |batch| {
                tx.blocking_send(batch).is_ok()
            })
        });

        let prepared_call = Arc::new(BatchCall {
            sandbox: self.sandbox.clone(),
            plugin: prepared.plugin.clone(),
            config: prepared.config,
            broker: prepared.broker.clone(),
            retries: options.batch_retries,
        });
        let mut in_flight = JoinSet::new();
        let mut failure: Option<String> = None;
        let mut read_all = false;
        let stop = options.stop.clone().unwrap_or_default();
        let journal = options.journal.as_deref();
        loop {
            let stopping = stop.is_cancelled();
            if (read_all || failure.is_some() || stopping) && in_flight.is_empty() {
                break;
            }
            let can_send = !read_all
                && failure.is_none()
                && !stopping
                && in_flight.len() < options.concurrency.max(1);
            tokio::select! {
                batch = rx.recv(), if can_send => match batch {
                    Some(batch) => {
                        if let Some(tally) = journal.and_then(|j| j.settled(batch.index, batch.digest)) {
                            report.add(&tally);
                            report.resumed_batches += 1;
                            progress.advance(batch.profiles);
                            continue;
                        }
                        progress.advance(batch.profiles - batch.contacts.len() as u64);
                        if batch.contacts.is_empty() {
                            if let Err(e) = settle(journal, &mut report, batch, None) {
                                failure.get_or_insert(format!("{e:#}"));
                            }
                            continue;
                        }
                        let call = prepared_call.clone();
                        in_flight.spawn(async move { call.send(batch).await });
                    }
                    None => read_all = true,
                },
                done = in_flight.join_next(), if !in_flight.is_empty() => {
                    match done.expect("set is not empty") {
                        Ok((batch, Ok(outcome))) => {
                            let contacts = batch.contacts.len() as u64;
                            match settle(journal, &mut report, batch, Some(outcome)) {
                                Ok(()) => progress.advance(contacts),
                                Err(e) => { failure.get_or_insert(format!("{e:#}")); }
                            }
                        }
                        Ok((_, Err(e))) => { failure.get_or_insert(format!("{e:#}")); }
                        Err(join) => { failure.get_or_insert(format!("batch task failed: {join}")); }
                    }
                }
                _ = stop.cancelled(), if !stopping => {}
            }
        }
        drop(rx);
        // The reader stops as soon as it finds the channel closed; its own error (an unreadable
        // row) ends the run like a failed batch.
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(format!("reading profiles failed: {e:#}"));
            }
            Err(join) => {
                failure.get_or_insert(format!("profile reader failed: {join}"));
            }
        }
        progress.end();
        let stats = prepared.broker.stats();
        report.requests = stats.requests();
        report.retries = stats.retries();
        report.refusals = stats.refusals();
        if let Some(mut error) = failure {
            // Whatever the connector made of a refusal, the operator reads the host's words.
            if !report.refusals.is_empty() {
                error.push_str(&format!(
                    "; the host refused {}",
                    report.refusals.join("; ")
                ));
            }
            report.status = RunStatus::Failed(error);
        } else if !read_all {
            report.status = RunStatus::Interrupted;
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Everything that can be checked without the network.
    fn prepare(
        &self,
        connection: &Connection,
        export: &Export,
        source: &dyn ProfileSource,
        options: &RunOptions,
    ) -> Result<Prepared> {
        let plugin = self.plugins.require(&connection.connector)?.clone();
        let info = &plugin.info;
        for (key, _) in &export.settings {
            if !info.config_fields.iter().any(|f| f.key == *key) {
                let known: Vec<&str> = info.config_fields.iter().map(|f| f.key.as_str()).collect();
                bail!(
                    "connector `{}` has no setting `{key}` (it has: {})",
                    info.id,
                    known.join(", ")
                );
            }
        }
        for field in info.config_fields.iter().filter(|f| f.required) {
            if !export
                .settings
                .iter()
                .any(|(k, v)| *k == field.key && !v.trim().is_empty())
            {
                bail!(
                    "the export lacks the required setting `{}` ({}): {}",
                    field.key,
                    field.label,
                    field.help
                );
            }
        }
        let mapping = export.mapping.resolve(info, &source.columns()?)?;
        let (base_url, broker) = self.connect(&plugin, connection, options)?;
        if export.segments.is_empty() {
            bail!("the export names no segment; exports send segments only");
        }
        let known = source.segments()?;
        for segment in &export.segments {
            if !known.contains_key(segment) {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                bail!(
                    "segment `{segment}` does not exist (segments: {})",
                    names.join(", ")
                );
            }
        }
        Ok(Prepared {
            config: ExportConfig {
                base_url,
                settings: export.settings.clone(),
            },
            plugin,
            mapping,
            broker: Arc::new(broker),
        })
    }

    /// The vendor URL and the broker for a connection: the data centre filled in, the base URL
    /// checked (the connector's own must be https on its declared hosts; the administrator's
    /// may also be a loopback simulator), the credential handed to the broker.
    fn connect(
        &self,
        plugin: &Plugin,
        connection: &Connection,
        options: &RunOptions,
    ) -> Result<(String, Broker)> {
        let info = &plugin.info;
        let template = connection
            .base_url
            .as_deref()
            .unwrap_or(&info.default_base_url)
            .trim_end_matches('/');
        let base_url = if template.contains("{dc}") {
            let dc = connection
                .data_centre
                .clone()
                .or_else(|| connection.credential.key_suffix());
            let dc =
                dc.filter(|dc| !dc.is_empty() && dc.bytes().all(|b| b.is_ascii_alphanumeric()));
            let Some(dc) = dc else {
                bail!(
                    "connector `{}` needs the account's data centre (e.g. us21): the API key does not end in -<dc>, and the connection names none",
                    info.id
                );
            };
            template.replace("{dc}", &dc.to_ascii_lowercase())
        } else {
            template.to_string()
        };
        let shown = text::clean(&base_url, MAX_MESSAGE_CHARS);
        let uri: http::Uri = base_url
            .parse()
            .with_context(|| format!("the base URL `{shown}` is not a URL"))?;
        let allowed = match &connection.base_url {
            Some(_) => AllowList::for_base_url(&uri, &info.hosts)
                .with_context(|| format!("the connection's base URL `{shown}` cannot be used"))?,
            None => {
                check_default_base_url(&base_url, &info.hosts).map_err(|why| {
                    anyhow::anyhow!("connector `{}`'s base URL `{shown}` {why}", info.id)
                })?;
                AllowList::declared(&info.hosts)
            }
        };
        let setup = BrokerSetup {
            connector: &info.id,
            allowed,
            auth: &info.auth,
            credential: Some(&connection.credential),
            vendor: VendorLimits {
                max_concurrent_requests: info.max_concurrent_requests,
                max_requests_per_second: info.max_requests_per_second,
            },
            policy: options.broker.clone(),
        };
        let broker = Broker::over_network(setup, &self.network)?
            .with_observer(options.observer.clone())
            .with_connection_label(format!(
                "{} at {}",
                info.id,
                uri.authority().map(|a| a.as_str()).unwrap_or("")
            ));
        Ok((base_url, broker))
    }

    /// Checks that the vendor accepts a connection's credential, as when the connection is
    /// saved: the connector's `validate` with no settings. Sends no contact. Connectors built
    /// for contract 0.1.0 cannot make this check; the answer then says so.
    pub async fn check_connection(&self, connection: &Connection) -> Result<CredentialCheck> {
        let plugin = self.plugins.require(&connection.connector)?.clone();
        if plugin.contract_version < semver::Version::new(0, 1, 1) {
            return Ok(CredentialCheck::NotSupported);
        }
        let (base_url, broker) = self.connect(&plugin, connection, &RunOptions::default())?;
        let prepared = Prepared {
            plugin,
            config: ExportConfig {
                base_url,
                settings: vec![],
            },
            mapping: ResolvedMapping::default(),
            broker: Arc::new(broker),
        };
        self.validate(&prepared, "the vendor did not accept the credential")
            .await
            .map(|()| CredentialCheck::Accepted)
    }

    /// Calls the connector's `validate`; a refusal becomes an error starting with `refused`.
    async fn validate(&self, prepared: &Prepared, refused: &str) -> Result<()> {
        let config = &prepared.config;
        let outcome = self
            .sandbox
            .call(
                &prepared.plugin.pre,
                prepared.broker.clone(),
                self.sandbox.limits().call_timeout,
                async |c, store| {
                    c.cdp_connector_export_destination()
                        .call_validate(store, config)
                        .await
                },
            )
            .await
            .with_context(|| {
                format!(
                    "connector `{}` failed while validating",
                    prepared.plugin.info.id
                )
            })?;
        outcome.map_err(|e| {
            let refusals = prepared.broker.stats().refusals();
            let host_words = match refusals.is_empty() {
                true => String::new(),
                false => format!("; the host refused {}", refusals.join("; ")),
            };
            anyhow::anyhow!(
                "{refused} ({}): {}{host_words}; nothing was sent",
                e.kind,
                text::clean(&e.message, MAX_MESSAGE_CHARS)
            )
        })
    }
}

/// A slice of the segment: the contacts to send, and what was settled locally.
struct Batch {
    /// Position in the run's stream, from 0.
    index: u64,
    /// Digest of the profile ids and emails, to recognise the batch when a run resumes.
    digest: [u8; 16],
    /// Profiles read for this batch, including those settled locally.
    profiles: u64,
    contacts: Vec<Contact>,
    profile_ids: Vec<String>,
    /// Profiles not sent: no email, or an email already sent in this run.
    local_issues: Vec<RunIssue>,
}

/// Maps profiles to contacts, drops duplicates and emailless profiles, and hands out batches of
/// `size` contacts. Stops early when `emit` returns false.
fn cut_batches(
    profiles: Box<dyn Iterator<Item = Result<Profile>> + Send>,
    mapping: &ResolvedMapping,
    size: usize,
    mut emit: impl FnMut(Batch) -> bool,
) -> Result<()> {
    let mut index = 0;
    let mut new_batch = || {
        index += 1;
        Batch {
            index: index - 1,
            digest: [0; 16],
            profiles: 0,
            contacts: Vec::with_capacity(size),
            profile_ids: Vec::with_capacity(size),
            local_issues: vec![],
        }
    };
    let mut seen = HashSet::new();
    let mut batch = new_batch();
    for profile in profiles {
        let profile = profile?;
        batch.profiles += 1;
        let contact = mapping.contact(&profile);
        if contact.email.is_empty() {
            batch.local_issues.push(RunIssue {
                profile_id: profile.id,
                email: String::new(),
                kind: IssueKind::Rejected,
                code: "missing-email".into(),
                message: "The profile has no email address".into(),
            });
        } else if !seen.insert(hash128(&contact.email.trim().to_lowercase())) {
            batch.local_issues.push(RunIssue {
                profile_id: profile.id,
                email: contact.email,
                kind: IssueKind::Duplicate,
                code: "duplicate-email".into(),
                message: "Another profile of this export has the same email; sent once".into(),
            });
        } else {
            batch.contacts.push(contact);
            batch.profile_ids.push(profile.id);
        }
        if batch.contacts.len() == size {
            let full = std::mem::replace(&mut batch, new_batch());
            if !emit(full.sealed()) {
                return Ok(());
            }
        }
    }
    if batch.profiles > 0 {
        emit(batch.sealed());
    }
    Ok(())
}

impl Batch {
    /// Computes the digest once the batch is complete.
    fn sealed(mut self) -> Batch {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for (id, contact) in self.profile_ids.iter().zip(&self.contacts) {
            hash.update(id.as_bytes());
            hash.update([0]);
            hash.update(contact.email.as_bytes());
            hash.update([0]);
        }
        for issue in &self.local_issues {
            hash.update(issue.profile_id.as_bytes());
            hash.update([1]);
        }
        self.digest.copy_from_slice(&hash.finalize()[..16]);
        self
    }
}

/// Accounts for a finished batch: the vendor's outcome (if it was sent) and what was settled
/// locally, recorded in the journal first and then in the report.
fn settle(
    journal: Option<&dyn RunJournal>,
    report: &mut RunReport,
    batch: Batch,
    outcome: Option<contract::BatchReport>,
) -> Result<()> {
    let mut issues = batch.local_issues;
    let mut tally = BatchTally {
        profiles: batch.profiles,
        sent: batch.contacts.len() as u64,
        ..BatchTally::default()
    };
    if let Some(outcome) = outcome {
        tally.created = outcome.created as u64;
        tally.updated = outcome.updated as u64;
        for issue in outcome.issues {
            let i = issue.index as usize;
            issues.push(RunIssue {
                profile_id: batch.profile_ids[i].clone(),
                email: batch.contacts[i].email.clone(),
                kind: match issue.kind {
                    contract::IssueKind::Suppressed => IssueKind::Suppressed,
                    contract::IssueKind::Rejected => IssueKind::Rejected,
                },
                code: text::clean(&issue.code, MAX_LABEL_CHARS),
                message: text::clean(&issue.message, MAX_MESSAGE_CHARS),
            });
        }
    }
    for issue in &issues {
        match issue.kind {
            IssueKind::Suppressed => tally.suppressed += 1,
            IssueKind::Rejected => tally.rejected += 1,
            IssueKind::Duplicate => tally.duplicates += 1,
        }
    }
    if let Some(journal) = journal {
        journal
            .settle(&SettledBatch {
                index: batch.index,
                digest: batch.digest,
                tally,
                issues: &issues,
            })
            .context("recording the batch in the run's journal failed")?;
    }
    report.add(&tally);
    report.issues.extend(issues);
    Ok(())
}

/// What each batch task needs, shared.
struct BatchCall {
    sandbox: Arc<Sandbox>,
    plugin: Arc<Plugin>,
    config: ExportConfig,
    broker: Arc<Broker>,
    retries: u32,
}

impl BatchCall {
    /// Sends a batch, retrying when the connector says the failure is retryable, and checks
    /// the report accounts for each contact exactly once.
    async fn send(&self, batch: Batch) -> (Batch, Result<contract::BatchReport>) {
        let mut attempt = 0;
        loop {
            let config = &self.config;
            let contacts = &batch.contacts;
            let deadline = self.sandbox.limits().call_timeout;
            let outcome = self
                .sandbox
                .call(
                    &self.plugin.pre,
                    self.broker.clone(),
                    deadline,
                    async |c, store| {
                        c.cdp_connector_export_destination()
                            .call_export_batch(store, config, contacts)
                            .await
                    },
                )
                .await;
            let result = match outcome {
                Err(e) => Err(e.context(format!("connector `{}` failed", self.plugin.info.id))),
                Ok(Err(e)) if e.retryable && attempt < self.retries => {
                    attempt += 1;
                    tracing::warn!(
                        connector = %self.plugin.info.id,
                        attempt,
                        "retrying batch: {}",
                        text::clean(&e.message, MAX_MESSAGE_CHARS)
                    );
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                    continue;
                }
                Ok(Err(e)) => Err(anyhow::anyhow!(
                    "{} ({}): {}",
                    self.plugin.info.display_name,
                    e.kind,
                    text::clean(&e.message, MAX_MESSAGE_CHARS)
                )),
                Ok(Ok(report)) => check_report(&self.plugin.info.id, &report, batch.contacts.len())
                    .map(|()| report),
            };
            return (batch, result);
        }
    }
}

/// A batch report must account for every contact exactly once.
fn check_report(connector: &str, report: &contract::BatchReport, contacts: usize) -> Result<()> {
    let accounted = report.created as u64 + report.updated as u64 + report.issues.len() as u64;
    if accounted != contacts as u64 {
        bail!(
            "connector `{connector}` broke the contract: its report accounts for {accounted} contacts ({} created, {} updated, {} issues) but the batch had {contacts}",
            report.created,
            report.updated,
            report.issues.len()
        );
    }
    let mut seen = HashSet::new();
    for issue in &report.issues {
        if issue.index as usize >= contacts || !seen.insert(issue.index) {
            bail!(
                "connector `{connector}` broke the contract: its report names contact #{} {}",
                issue.index,
                if (issue.index as usize) < contacts {
                    "twice"
                } else {
                    "outside the batch"
                }
            );
        }
    }
    Ok(())
}
