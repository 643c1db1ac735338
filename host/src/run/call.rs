//! Calling the connector for one batch: sending contacts, or applying the leave action to
//! leavers. A failure the connector calls retryable is retried; the report must account for
//! every contact exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::broker::Broker;
use crate::contract::{BatchReport, Contact, ExportConfig};
use crate::plugins::Plugin;
use crate::sandbox::{HostMemoryBusy, Sandbox};
use crate::text::{self, MAX_MESSAGE_CHARS};

/// What each batch call needs, shared by the run's tasks.
pub(crate) struct Calls {
    pub sandbox: Arc<Sandbox>,
    pub plugin: Arc<Plugin>,
    pub config: ExportConfig,
    pub broker: Arc<Broker>,
    pub retries: u32,
}

/// Which call.
#[derive(Clone, Copy)]
pub(crate) enum Call<'a> {
    Export,
    Leave(&'a str),
}

impl Calls {
    /// Makes one call for `contacts`, retrying while the connector says the failure is
    /// retryable, and checks the report; with the report, the requests the connector asked to
    /// send over every attempt (what the batch cost, for the run's estimate of its time left).
    pub(crate) async fn make(
        &self,
        call: Call<'_>,
        contacts: &[Contact],
    ) -> Result<(BatchReport, u64)> {
        let id = &self.plugin.info.id;
        let mut attempt = 0;
        let asked = std::sync::atomic::AtomicU64::new(0);
        loop {
            let config = &self.config;
            let deadline = self.sandbox.limits().call_timeout;
            let outcome = self
                .sandbox
                .call(
                    &self.plugin.pre,
                    self.broker.clone(),
                    deadline,
                    async |c, store| {
                        let answer = match call {
                            Call::Export => c.export_batch(store, config, contacts).await,
                            Call::Leave(action) => {
                                c.apply_leave_action(store, config, action, contacts).await
                            }
                        };
                        asked.fetch_add(
                            store.data().requests_asked(),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        answer
                    },
                )
                .await;
            match outcome {
                // The host's memory budget was taken by other calls: not the connector's doing,
                // and room comes back as they finish.
                Err(e) if crate::failure::is::<HostMemoryBusy>(&e) && attempt < self.retries => {
                    attempt += 1;
                    tracing::warn!(connector = %id, attempt, "retrying batch: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                Err(e) => return Err(e.context(format!("connector `{id}` failed"))),
                Ok(Err(e)) if e.retryable && attempt < self.retries && self.broker.may_send() => {
                    attempt += 1;
                    tracing::warn!(
                        connector = %id,
                        attempt,
                        "retrying batch: {}",
                        text::clean(&e.message, MAX_MESSAGE_CHARS)
                    );
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                Ok(Err(e)) => bail!(
                    "{} ({}): {}",
                    self.plugin.info.display_name,
                    e.kind,
                    text::clean(&e.message, MAX_MESSAGE_CHARS)
                ),
                Ok(Ok(report)) => {
                    check_report(id, call, &report, contacts.len())?;
                    return Ok((report, asked.into_inner()));
                }
            }
        }
    }
}

/// A report must account for every contact exactly once (and a leave action creates nobody).
fn check_report(
    connector: &str,
    call: Call<'_>,
    report: &BatchReport,
    contacts: usize,
) -> Result<()> {
    let accounted = report.created as u64 + report.updated as u64 + report.issues.len() as u64;
    if accounted != contacts as u64 {
        bail!(
            "connector `{connector}` broke the contract: its report accounts for {accounted} contacts ({} created, {} updated, {} issues) but the batch had {contacts}",
            report.created,
            report.updated,
            report.issues.len()
        );
    }
    if matches!(call, Call::Leave(_)) && report.created > 0 {
        bail!(
            "connector `{connector}` broke the contract: its leave action created {} contacts",
            report.created
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
