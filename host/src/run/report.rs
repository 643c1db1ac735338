//! What a run did: its counts, every contact that was not delivered (with the reason), HTTP
//! figures, and a summary for people.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::counts::RunCounts;
use crate::text::{MAX_LABEL_CHARS, MAX_MESSAGE_CHARS, clean};

/// Why a contact was not created or updated at the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueKind {
    /// The vendor keeps the contact out on purpose (unsubscribed, cleaned, suppressed...).
    Suppressed,
    /// The vendor refused the contact's data.
    Rejected,
    /// Another profile of this export has the same address; it was sent once.
    Duplicate,
    /// The profile has no usable email address, or a value longer than the vendor takes;
    /// nothing was sent.
    Invalid,
    /// The source could not read the row (its location and why are in the message).
    Unreadable,
    /// A membership names a profile the source does not have.
    UnknownProfile,
}

impl IssueKind {
    /// The kind in words, as the CSV of undelivered contacts and summaries write it.
    pub fn label(self) -> &'static str {
        match self {
            IssueKind::Suppressed => "suppressed",
            IssueKind::Rejected => "rejected",
            IssueKind::Duplicate => "duplicate",
            IssueKind::Invalid => "invalid",
            IssueKind::Unreadable => "unreadable",
            IssueKind::UnknownProfile => "unknown-profile",
        }
    }
}

/// Where in the run an issue arose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The vendor answered so for this run's send.
    Sent,
    /// Not sent this run: a duplicate, no address, or data the vendor refused or keeps out
    /// before and that has not changed since.
    Skipped,
    /// A contact who left the segment: the leave action was refused or not needed.
    Leaving,
}

/// The contacts not delivered for one reason (stage, kind and code), with a few examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub stage: Stage,
    pub kind: IssueKind,
    pub code: String,
    pub count: u64,
    /// The first few: who (an address, or `profile <id>`) and the message.
    pub examples: Vec<(String, String)>,
}

/// Examples a [`Reason`] keeps.
const EXAMPLES: usize = 3;
/// Reasons a report tells apart; past them, a kind's further codes are counted as `other`.
const MAX_REASONS: usize = 100;
/// Undelivered contacts a report lists one by one (all go to the journal and to
/// [`super::RunOptions::on_issue`]).
pub const MAX_REPORT_ISSUES: usize = 10_000;

/// One contact that was not created or updated, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIssue {
    /// The profile (empty for a contact who left the segment).
    pub profile_id: String,
    pub email: String,
    pub kind: IssueKind,
    pub stage: Stage,
    /// The vendor's code, or the host's (`missing-email`, `duplicate-email`).
    pub code: String,
    pub message: String,
    /// When the vendor first refused or kept out this contact, for one not sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", content = "error", rename_all = "kebab-case")]
pub enum RunStatus {
    Succeeded,
    /// The run stopped; what was acknowledged before the failure is delivered and recorded,
    /// and the next run continues from there.
    Failed(String),
    /// The run was asked to stop (e.g. a shutdown): the batches in flight were finished and
    /// settled, the rest not sent. The next run of the export continues from there.
    Interrupted,
}

/// Which contacts a run sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", content = "full_reason", rename_all = "kebab-case")]
pub enum RunMode {
    /// Only contacts that are new, changed, returning or unsettled (every contact, when the
    /// export has no sync state yet).
    Delta,
    /// Every contact, for the reason given.
    Full(String),
}

/// What a run (or one attempt of it) cost: requests sent (each try counts), retries, batches
/// and time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Figures {
    pub requests: u64,
    pub retries: u64,
    pub batches: u64,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// The run's phase under way should end in this long (the journal keeps when).
    #[serde(skip)]
    pub left: Option<Duration>,
}

/// The record of one export run (or what a dry run plans).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub connector: String,
    pub segments: Vec<String>,
    #[serde(flatten)]
    pub status: RunStatus,
    #[serde(flatten)]
    pub mode: RunMode,
    /// The export's leave action (`none` when it has none).
    pub leave_action: String,
    /// Members of the segments, when the source knew before reading them.
    pub segment_size: Option<u64>,
    #[serde(flatten)]
    pub counts: RunCounts,
    /// HTTP requests made (each attempt counts) and how many were retries.
    pub requests: u64,
    pub retries: u64,
    /// What the host refused the connector (a host off its allow-list, a forbidden address, a
    /// body over a cap...), in words, each once.
    pub refusals: Vec<String>,
    /// Contacts not delivered, counted by reason, with examples.
    pub reasons: Vec<Reason>,
    /// The first contacts not delivered (at most [`MAX_REPORT_ISSUES`]), each with its reason.
    pub issues: Vec<RunIssue>,
    /// Contacts not delivered beyond those listed in `issues`.
    pub issues_not_listed: u64,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// The attempts the run took: more than one for a run continued after a crash, a shutdown
    /// or a lost lease. `requests`, `retries`, the counts' `batches` and `duration` are then
    /// the whole run's, every attempt's included.
    pub attempts: u64,
    /// For a run of more than one attempt: the last attempt's own figures.
    pub last_attempt: Option<Figures>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RunReport {
    pub(crate) fn new(
        connector: &str,
        segments: &[String],
        mode: RunMode,
        leave_action: Option<&str>,
    ) -> RunReport {
        RunReport {
            connector: connector.to_string(),
            segments: segments.to_vec(),
            status: RunStatus::Succeeded,
            mode,
            leave_action: leave_action.unwrap_or("none").to_string(),
            segment_size: None,
            counts: RunCounts::default(),
            requests: 0,
            retries: 0,
            refusals: vec![],
            reasons: vec![],
            issues: vec![],
            issues_not_listed: 0,
            duration: Duration::ZERO,
            attempts: 1,
            last_attempt: None,
        }
    }

    /// This attempt's figures.
    pub fn figures(&self) -> Figures {
        Figures {
            requests: self.requests,
            retries: self.retries,
            batches: self.counts.batches,
            duration: self.duration,
            left: None,
        }
    }

    /// Makes the report's figures the whole run's (`attempts` attempts, costing `whole`),
    /// keeping this attempt's beside them.
    pub fn cover_attempts(&mut self, attempts: u64, whole: Figures) {
        if attempts <= 1 {
            return;
        }
        self.last_attempt = Some(self.figures());
        self.attempts = attempts;
        self.requests = whole.requests;
        self.retries = whole.retries;
        self.counts.batches = whole.batches;
        self.duration = whole.duration;
    }

    /// Takes in a contact that was not delivered: counted under its reason, and listed while
    /// the list is short.
    pub(crate) fn note_issue(&mut self, issue: RunIssue) {
        let known = self.reasons.iter().position(|r| {
            (r.stage, r.kind, r.code.as_str()) == (issue.stage, issue.kind, issue.code.as_str())
        });
        let at = match known {
            Some(at) => at,
            None => {
                let code = if self.reasons.len() < MAX_REASONS {
                    issue.code.clone()
                } else {
                    "other".into()
                };
                match self.reasons.iter().position(|r| {
                    (r.stage, r.kind, r.code.as_str()) == (issue.stage, issue.kind, code.as_str())
                }) {
                    Some(at) => at,
                    None => {
                        self.reasons.push(Reason {
                            stage: issue.stage,
                            kind: issue.kind,
                            code,
                            count: 0,
                            examples: vec![],
                        });
                        self.reasons.len() - 1
                    }
                }
            }
        };
        let reason = &mut self.reasons[at];
        reason.count += 1;
        if reason.examples.len() < EXAMPLES {
            let who = match issue.email.as_str() {
                "" => format!("profile {}", issue.profile_id),
                email => email.to_string(),
            };
            reason.examples.push((who, issue.message.clone()));
        }
        if self.issues.len() < MAX_REPORT_ISSUES {
            self.issues.push(issue);
        } else {
            self.issues_not_listed += 1;
        }
    }

    /// Whether the run delivered everything it was asked to.
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }

    /// A report that does not add up is a bug of the host's: debug builds (every test) stop
    /// here; release builds log it and carry on.
    pub(crate) fn assert_adds_up(&self, reasons_of_whole_run: bool) {
        if let Err(e) = self.check(reasons_of_whole_run) {
            debug_assert!(false, "the run's report does not add up: {e}");
            tracing::error!("the run's report does not add up: {e}");
        }
    }

    /// Checks that the report adds up: its counts' identities ([`RunCounts::check`]), a
    /// finished run read a row for every member of the segment, and every contact not delivered is counted under
    /// one reason and listed (or counted as not listed). The reasons of a resumed run's
    /// attempt cover that attempt only, so they are checked once `reasons_of_whole_run` (as
    /// the workspace rebuilds them from the run's history).
    pub fn check(&self, reasons_of_whole_run: bool) -> Result<(), String> {
        let c = &self.counts;
        c.check()?;
        // Every member is read (sent or skipped) or reported unknown; rows read may be more
        // (repeated ids, rows whose id cannot be read), never fewer.
        if let (RunStatus::Succeeded, Some(size)) = (&self.status, self.segment_size)
            && c.profiles < size
        {
            return Err(format!(
                "the segment has {size} members but the finished run read {} rows",
                c.profiles
            ));
        }
        if !reasons_of_whole_run && c.resumed > 0 {
            return Ok(());
        }
        let counted = |stage: Stage, kind: IssueKind| -> u64 {
            self.reasons
                .iter()
                .filter(|r| r.stage == stage && r.kind == kind)
                .map(|r| r.count)
                .sum()
        };
        use IssueKind::*;
        use Stage::*;
        for (stage, kind, count, what) in [
            (Sent, Rejected, c.rejected, "rejected"),
            (Sent, Suppressed, c.suppressed, "suppressed"),
            (Skipped, Rejected, c.still_rejected, "still rejected"),
            (Skipped, Suppressed, c.still_suppressed, "still suppressed"),
            (
                Skipped,
                Duplicate,
                c.duplicates + c.repeated_ids,
                "duplicates",
            ),
            (Skipped, Invalid, c.invalid, "invalid"),
            (Skipped, Unreadable, c.unreadable, "unreadable"),
            (
                Skipped,
                UnknownProfile,
                c.unknown_profiles,
                "unknown profiles",
            ),
            (Leaving, Suppressed, c.left_untouched, "left untouched"),
            (Leaving, Rejected, c.left_refused, "left refused"),
        ] {
            let reasons = counted(stage, kind);
            if reasons != count {
                return Err(format!(
                    "{count} contacts counted {what} but {reasons} under its reasons"
                ));
            }
        }
        let reasons: u64 = self.reasons.iter().map(|r| r.count).sum();
        let listed = self.issues.len() as u64 + self.issues_not_listed;
        if reasons != listed {
            return Err(format!(
                "{reasons} contacts under reasons but {listed} listed or counted as not listed"
            ));
        }
        Ok(())
    }

    /// A human summary: counts, time, and the reasons contacts were not delivered, grouped.
    /// Every text that came from a connector or a profile is cleaned, so no line of the
    /// summary can be forged or hidden.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let c = &self.counts;
        let secs = self.duration.as_secs_f64();
        let rate = if secs > 0.0 {
            c.profiles as f64 / secs
        } else {
            0.0
        };
        let status = match &self.status {
            RunStatus::Succeeded => "succeeded".to_string(),
            RunStatus::Failed(e) => format!("FAILED: {}", clean(e, 4 * MAX_MESSAGE_CHARS)),
            RunStatus::Interrupted => "interrupted before the end".to_string(),
        };
        let mode = match &self.mode {
            RunMode::Delta => "delta run".to_string(),
            RunMode::Full(why) => format!("full run: {}", clean(why, MAX_MESSAGE_CHARS)),
        };
        let _ = writeln!(
            out,
            "Export to {} ({}): {status}",
            self.connector,
            clean(&self.segments.join(", "), MAX_MESSAGE_CHARS)
        );
        let _ = writeln!(out, "  {mode}");
        let line = |out: &mut String, label: &str, n: u64| {
            let _ = writeln!(out, "  {label:<22} {n:>9}");
        };
        if let Some(size) = self.segment_size {
            line(&mut out, "segment members", size);
        }
        line(&mut out, "rows read", c.profiles);
        line(&mut out, "sent", c.sent());
        for (label, n) in [
            ("  created", c.created),
            ("  updated", c.updated),
            ("  suppressed", c.suppressed),
            ("  rejected", c.rejected),
        ] {
            line(&mut out, label, n);
        }
        if c.resumed > 0 {
            line(&mut out, "  of which earlier", c.resumed);
        }
        line(&mut out, "not sent", c.not_sent());
        for (label, n) in [
            ("  unchanged", c.unchanged),
            ("  still rejected", c.still_rejected),
            ("  still suppressed", c.still_suppressed),
            ("  duplicates", c.duplicates),
            ("  invalid", c.invalid),
            ("  unreadable rows", c.unreadable),
            ("  repeated ids", c.repeated_ids),
            ("  unknown profiles", c.unknown_profiles),
        ] {
            if n > 0 || label == "  unchanged" {
                line(&mut out, label, n);
            }
        }
        if c.leaving > 0 || self.leave_action != "none" {
            let _ = writeln!(
                out,
                "  {:<22} {:>9}   (leave action: {})",
                "left the segment", c.leaving, self.leave_action
            );
            for (label, n) in [
                ("  acted on", c.left),
                ("  untouched (kept out)", c.left_untouched),
                ("  refused", c.left_refused),
            ] {
                if n > 0 {
                    line(&mut out, label, n);
                }
            }
        }
        let _ = writeln!(
            out,
            "  batches {}, requests {}, retries {}",
            c.batches, self.requests, self.retries
        );
        if let Some(last) = &self.last_attempt {
            let _ = writeln!(
                out,
                "  over {} attempts; the last: batches {}, requests {}, retries {}, {:.2} s",
                self.attempts,
                last.batches,
                last.requests,
                last.retries,
                last.duration.as_secs_f64()
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
        if !self.reasons.is_empty() {
            let _ = writeln!(out, "  not delivered, by reason:");
            let mut reasons: Vec<&Reason> = self.reasons.iter().collect();
            reasons.sort_by_key(|r| (r.stage, r.kind, std::cmp::Reverse(r.count)));
            for r in reasons {
                let what = match (r.stage, r.kind) {
                    (Stage::Skipped, IssueKind::Rejected) => "still rejected".into(),
                    (Stage::Skipped, IssueKind::Suppressed) => "still suppressed".into(),
                    (Stage::Sent | Stage::Skipped, k) => k.label().to_string(),
                    (Stage::Leaving, IssueKind::Suppressed) => "left, untouched".into(),
                    (Stage::Leaving, _) => "left, refused".into(),
                };
                let messages: Vec<&str> = r.examples.iter().map(|(_, m)| m.as_str()).collect();
                // One message for all: said once; several: each example with its own.
                let examples = if messages.windows(2).all(|w| w[0] == w[1]) {
                    format!(
                        "{} (e.g. {})",
                        clean(messages.first().copied().unwrap_or(""), MAX_MESSAGE_CHARS),
                        r.examples
                            .iter()
                            .map(|(who, _)| clean(who, MAX_LABEL_CHARS))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    r.examples
                        .iter()
                        .map(|(who, m)| {
                            format!(
                                "{}: {}",
                                clean(who, MAX_LABEL_CHARS),
                                clean(m, MAX_MESSAGE_CHARS)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let _ = writeln!(
                    out,
                    "    {:>7} {what} [{}] {examples}",
                    r.count,
                    clean(&r.code, MAX_LABEL_CHARS),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(stage: Stage, kind: IssueKind, code: &str) -> RunIssue {
        RunIssue {
            profile_id: "p1".into(),
            email: "a@example.com".into(),
            kind,
            stage,
            code: code.into(),
            message: "why".into(),
            since: None,
        }
    }

    #[test]
    fn a_report_adds_up_only_when_every_undelivered_contact_has_its_reason() {
        let mut report = RunReport::new("cm", &["vip".into()], RunMode::Delta, None);
        report.segment_size = Some(3);
        report.counts = RunCounts {
            profiles: 3,
            new: 2,
            invalid: 1,
            created: 1,
            rejected: 1,
            ..RunCounts::default()
        };
        report.note_issue(issue(Stage::Sent, IssueKind::Rejected, "1"));
        let missing = report.check(true).unwrap_err();
        assert_eq!(
            missing,
            "1 contacts counted invalid but 0 under its reasons"
        );
        report.note_issue(issue(Stage::Skipped, IssueKind::Invalid, "invalid-email"));
        report.check(true).unwrap();

        // A finished run that read less than the segment, and counts that do not balance.
        report.segment_size = Some(4);
        assert!(
            report
                .check(true)
                .unwrap_err()
                .contains("the segment has 4 members")
        );
        report.segment_size = Some(3);
        report.counts.created = 2;
        assert!(
            report
                .check(true)
                .unwrap_err()
                .contains("2 contacts sent but 3 outcomes")
        );
    }
}
