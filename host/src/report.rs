//! What a run did: counts, every contact that was not delivered (with the reason), HTTP figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a profile was not created or updated at the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueKind {
    /// The vendor keeps the contact out on purpose (unsubscribed, cleaned, suppressed...).
    Suppressed,
    /// The vendor refused the contact's data, or the profile had no email.
    Rejected,
    /// Another profile of this run had the same email; it was sent once.
    Duplicate,
}

/// One profile that was not created or updated, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunIssue {
    pub profile_id: String,
    pub email: String,
    pub kind: IssueKind,
    /// The vendor's code, or the host's (`missing-email`, `duplicate-email`).
    pub code: String,
    pub message: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", content = "error", rename_all = "kebab-case")]
pub enum RunStatus {
    Succeeded,
    /// The run stopped; the batches acknowledged before the failure were delivered.
    Failed(String),
    /// The run was asked to stop (e.g. a shutdown): the batches in flight were finished and
    /// settled, the rest not sent. With a journal, the next run of the export resumes it.
    Interrupted,
}

/// The record of one export run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub connector: String,
    pub segments: Vec<String>,
    pub status: RunStatus,
    /// Segment members read from the source.
    pub profiles: u64,
    /// Contacts handed to the connector (profiles less duplicates and those without email).
    pub sent: u64,
    pub created: u64,
    pub updated: u64,
    pub suppressed: u64,
    pub rejected: u64,
    pub duplicates: u64,
    /// Batches acknowledged by the connector.
    pub batches: u64,
    /// Of those, batches an earlier attempt of this run settled, counted and not sent again.
    pub resumed_batches: u64,
    /// HTTP requests made (each attempt counts) and how many were retries.
    pub requests: u64,
    pub retries: u64,
    /// What the host refused the connector (a host off its allow-list, a forbidden address, a
    /// body over a cap...), in words, each once.
    pub refusals: Vec<String>,
    pub issues: Vec<RunIssue>,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RunReport {
    pub(crate) fn new(connector: &str, segments: &[String]) -> RunReport {
        RunReport {
            connector: connector.to_string(),
            segments: segments.to_vec(),
            status: RunStatus::Succeeded,
            profiles: 0,
            sent: 0,
            created: 0,
            updated: 0,
            suppressed: 0,
            rejected: 0,
            duplicates: 0,
            batches: 0,
            resumed_batches: 0,
            requests: 0,
            retries: 0,
            refusals: vec![],
            issues: vec![],
            duration: Duration::ZERO,
        }
    }

    /// Counts a settled batch (its issues are added by the caller, when it has them).
    pub(crate) fn add(&mut self, tally: &crate::export::BatchTally) {
        self.profiles += tally.profiles;
        self.sent += tally.sent;
        self.created += tally.created;
        self.updated += tally.updated;
        self.suppressed += tally.suppressed;
        self.rejected += tally.rejected;
        self.duplicates += tally.duplicates;
        self.batches += u64::from(tally.sent > 0);
    }

    /// Whether the run delivered everything it was asked to.
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }

    /// A human summary: counts, time, and the reasons contacts were not delivered, grouped.
    /// Every text that came from a connector or a profile is cleaned, so no line of the
    /// summary can be forged or hidden.
    pub fn summary(&self) -> String {
        use crate::text::{MAX_LABEL_CHARS, MAX_MESSAGE_CHARS, clean};
        let mut out = String::new();
        let secs = self.duration.as_secs_f64();
        let rate = if secs > 0.0 {
            self.profiles as f64 / secs
        } else {
            0.0
        };
        let status = match &self.status {
            RunStatus::Succeeded => "succeeded".to_string(),
            RunStatus::Failed(e) => format!("FAILED: {}", clean(e, 4 * MAX_MESSAGE_CHARS)),
            RunStatus::Interrupted => "interrupted before the end".to_string(),
        };
        let _ = writeln!(
            out,
            "Export to {} ({}): {status}",
            self.connector,
            clean(&self.segments.join(", "), MAX_MESSAGE_CHARS)
        );
        let _ = writeln!(out, "  profiles in segment  {:>9}", self.profiles);
        let _ = writeln!(out, "  sent                 {:>9}", self.sent);
        let _ = writeln!(out, "    created            {:>9}", self.created);
        let _ = writeln!(out, "    updated            {:>9}", self.updated);
        let _ = writeln!(out, "    suppressed         {:>9}", self.suppressed);
        let _ = writeln!(out, "    rejected           {:>9}", self.rejected);
        let _ = writeln!(out, "  duplicates skipped   {:>9}", self.duplicates);
        let _ = writeln!(
            out,
            "  batches {}, requests {}, retries {}",
            self.batches, self.requests, self.retries
        );
        if self.resumed_batches > 0 {
            let _ = writeln!(
                out,
                "  resumed: {} batches were settled by an earlier attempt and not sent again",
                self.resumed_batches
            );
        }
        for refusal in &self.refusals {
            let _ = writeln!(
                out,
                "  refused by the host: {}",
                clean(refusal, MAX_MESSAGE_CHARS)
            );
        }
        let _ = writeln!(out, "  time {secs:.2} s ({rate:.0} profiles/s)");
        let mut reasons: BTreeMap<(IssueKind, &str, &str), (u64, Vec<String>)> = BTreeMap::new();
        for issue in &self.issues {
            let entry = reasons
                .entry((issue.kind, issue.code.as_str(), issue.message.as_str()))
                .or_default();
            entry.0 += 1;
            if entry.1.len() < 3 {
                entry.1.push(match issue.email.as_str() {
                    "" => format!("profile {}", clean(&issue.profile_id, MAX_LABEL_CHARS)),
                    email => clean(email, MAX_LABEL_CHARS),
                });
            }
        }
        if !reasons.is_empty() {
            let _ = writeln!(out, "  not delivered, by reason:");
            for ((kind, code, message), (count, examples)) in reasons {
                let kind = format!("{kind:?}").to_lowercase();
                let _ = writeln!(
                    out,
                    "    {count:>7} {kind} [{}] {} (e.g. {})",
                    clean(code, MAX_LABEL_CHARS),
                    clean(message, MAX_MESSAGE_CHARS),
                    examples.join(", ")
                );
            }
        }
        out
    }
}
