//! Running an export: check everything, validate against the vendor, then stream the segment
//! through the connector in batches, several in flight, and account for every profile.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::ConnectorHost;
use crate::broker::{
    AllowedHost, Broker, BrokerPolicy, RequestObserver, VendorLimits, is_loopback,
};
use crate::contract::{self, Contact, ExportConfig};
use crate::mapping::{FieldMapping, ResolvedMapping};
use crate::plugins::Plugin;
use crate::report::{IssueKind, RunIssue, RunReport, RunStatus};
use crate::sandbox::Sandbox;
use crate::secret::Secret;
use crate::source::{Profile, ProfileSource, hash128};

/// A vendor account to export to.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The connector that talks to this vendor.
    pub connector: String,
    /// The API base URL, when not the connector's production one (e.g. a simulator on
    /// loopback). Must be one of the connector's hosts or a loopback address. May contain
    /// `{dc}`, like the connector's own.
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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 4,
            max_profiles: 1_000_000,
            batch_retries: 2,
            broker: BrokerPolicy::default(),
            observer: None,
        }
    }
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
        self.validate(&prepared).await
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
        self.validate(&prepared).await?;

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
        loop {
            if (read_all || failure.is_some()) && in_flight.is_empty() {
                break;
            }
            let can_send =
                !read_all && failure.is_none() && in_flight.len() < options.concurrency.max(1);
            tokio::select! {
                batch = rx.recv(), if can_send => match batch {
                    Some(batch) => {
                        report.profiles += batch.profiles;
                        let skipped = batch.profiles - batch.contacts.len() as u64;
                        for issue in batch.local_issues.iter().cloned() {
                            report.record(issue);
                        }
                        progress.advance(skipped);
                        if batch.contacts.is_empty() {
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
                            report.batches += 1;
                            report.sent += batch.contacts.len() as u64;
                            report.created += outcome.created as u64;
                            report.updated += outcome.updated as u64;
                            for issue in outcome.issues {
                                let i = issue.index as usize;
                                report.record(RunIssue {
                                    profile_id: batch.profile_ids[i].clone(),
                                    email: batch.contacts[i].email.clone(),
                                    kind: match issue.kind {
                                        contract::IssueKind::Suppressed => IssueKind::Suppressed,
                                        contract::IssueKind::Rejected => IssueKind::Rejected,
                                    },
                                    code: issue.code,
                                    message: issue.message,
                                });
                            }
                            progress.advance(batch.contacts.len() as u64);
                        }
                        Ok((_, Err(e))) => { failure.get_or_insert(format!("{e:#}")); }
                        Err(join) => { failure.get_or_insert(format!("batch task failed: {join}")); }
                    }
                }
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
        report.refused_hosts = stats.refused_hosts();
        if let Some(error) = failure {
            report.status = RunStatus::Failed(error);
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
        let uri: http::Uri = base_url
            .parse()
            .with_context(|| format!("the connection's base URL `{base_url}` is not a URL"))?;
        let host = uri.host().unwrap_or_default();
        let declared: Vec<AllowedHost> = info.hosts.iter().map(|h| AllowedHost::https(h)).collect();
        let target = AllowedHost::from_url(&uri)
            .with_context(|| format!("the connection's base URL `{base_url}` is not usable"))?;
        let allowed = if is_loopback(host) {
            vec![target]
        } else if declared.iter().any(|d| d.permits(&target)) {
            declared
        } else {
            bail!(
                "the connection's base URL `{base_url}` is outside the hosts connector `{}` may reach ({})",
                info.id,
                info.hosts.join(", ")
            );
        };
        let broker = Broker::new(
            &info.id,
            allowed,
            &info.auth,
            Some(&connection.credential),
            VendorLimits {
                max_concurrent_requests: info.max_concurrent_requests,
                max_requests_per_second: info.max_requests_per_second,
            },
            options.broker.clone(),
        )?
        .with_observer(options.observer.clone())
        .with_connection_label(format!(
            "{} at {}",
            info.id,
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        ));
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

    async fn validate(&self, prepared: &Prepared) -> Result<()> {
        let config = &prepared.config;
        let outcome = self
            .sandbox
            .call(
                &prepared.plugin.pre,
                prepared.broker.clone(),
                async |c, store| {
                    c.cdp_connector_export_destination()
                        .call_validate(store, config)
                        .await
                },
            )
            .await
            .with_context(|| {
                format!(
                    "connector `{}` failed while validating the export",
                    prepared.plugin.info.id
                )
            })?;
        outcome.map_err(|e| {
            anyhow::anyhow!(
                "the export did not validate ({}): {}; nothing was sent",
                e.kind,
                e.message
            )
        })
    }
}

/// A slice of the segment: the contacts to send, and what was settled locally.
struct Batch {
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
    let new_batch = || Batch {
        profiles: 0,
        contacts: Vec::with_capacity(size),
        profile_ids: Vec::with_capacity(size),
        local_issues: vec![],
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
        if batch.contacts.len() == size && !emit(std::mem::replace(&mut batch, new_batch())) {
            return Ok(());
        }
    }
    if batch.profiles > 0 {
        emit(batch);
    }
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
            let outcome = self
                .sandbox
                .call(&self.plugin.pre, self.broker.clone(), async |c, store| {
                    c.cdp_connector_export_destination()
                        .call_export_batch(store, config, contacts)
                        .await
                })
                .await;
            let result = match outcome {
                Err(e) => Err(e.context(format!("connector `{}` failed", self.plugin.info.id))),
                Ok(Err(e)) if e.retryable && attempt < self.retries => {
                    attempt += 1;
                    tracing::warn!(connector = %self.plugin.info.id, attempt, "retrying batch: {}", e.message);
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                    continue;
                }
                Ok(Err(e)) => Err(anyhow::anyhow!(
                    "{} ({}): {}",
                    self.plugin.info.display_name,
                    e.kind,
                    e.message
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
