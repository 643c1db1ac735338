//! Dry runs: the same reading and deciding as a run, from the same sync state, with nothing sent
//! and nothing recorded. What a dry run counts is what the next real run counts in its plan.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::batches;
use super::counts::RunCounts;
use super::report::{IssueKind, RunMode};
use super::sync::{Decision, RunJournal, SyncIndex, key_hash};
use crate::mapping::ResolvedMapping;
use crate::source::ProfileStream;
use crate::text::{MAX_LABEL_CHARS, clean};

/// Examples kept for each kind of decision.
const EXAMPLES: usize = 5;

/// What a run of an export would do.
#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    #[serde(flatten)]
    pub mode: RunMode,
    /// The export's leave action (`none` when it has none).
    pub leave_action: String,
    /// The plan's counts (nothing from the vendor: nothing was sent).
    #[serde(flatten)]
    pub counts: RunCounts,
    /// A few addresses for each kind of decision (`new`, `changed`, `unchanged`, `leaving`...).
    pub examples: BTreeMap<String, Vec<String>>,
    /// The run cut short (or failed) that the next run continues, if any: what its attempts
    /// settled counts as settled earlier.
    pub continues_run: Option<i64>,
    /// Leavers the continued run settled already, and those still to settle.
    pub leaving_done_earlier: u64,
    pub leaving_to_do: u64,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// The least time the run would take at the vendor's declared limits (one request a batch
    /// of contacts, and a call a batch of leavers), and the limit that binds; none when the
    /// connector declares no rate.
    pub expected: Option<Expected>,
}

/// How long a run is expected to take at the vendor's limits.
#[derive(Debug, Clone, Serialize)]
pub struct Expected {
    #[serde(serialize_with = "seconds")]
    pub seconds: Duration,
    /// The window that binds, in words (`5 requests a minute for POST /batch`).
    pub limit: String,
    /// The requests counted.
    pub requests: u64,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn category(decision: Decision) -> &'static str {
    match decision {
        Decision::New => "new",
        Decision::Changed => "changed",
        Decision::Returning => "returning",
        Decision::Resent => "resent",
        Decision::Unchanged => "unchanged",
        Decision::StillRejected => "still rejected",
        Decision::StillSuppressed => "still suppressed",
        Decision::Duplicate => "duplicates",
        Decision::Resumed(_) => "settled earlier",
    }
}

/// Reads the segment and the sync state as a run would, and says what it would do.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    stream: ProfileStream,
    mapping: &ResolvedMapping,
    mut index: SyncIndex,
    size: usize,
    journal: Option<&dyn RunJournal>,
    full: Option<String>,
    leave_action: Option<(String, bool)>,
    started: Instant,
) -> Result<RunPlan> {
    let mut examples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut keep = |what: &str, example: String| {
        let kept = examples.entry(what.to_string()).or_default();
        if kept.len() < EXAMPLES {
            kept.push(clean(&example, MAX_LABEL_CHARS));
        }
    };
    let mut counts = RunCounts::default();
    let mut skipped = vec![];
    let how = batches::Reading {
        mapping,
        size,
        max_bad_rows: None,
    };
    batches::read(
        stream.rows,
        &how,
        &mut index,
        &mut |decision, email| keep(category(decision), email.to_string()),
        |batch| {
            counts.add(&batch.counts);
            // A few examples of each kind of row skipped locally (the message says where).
            for issue in batch.issues {
                let what = match issue.kind {
                    IssueKind::Invalid => "invalid",
                    IssueKind::Unreadable => "unreadable",
                    IssueKind::UnknownProfile => "unknown profiles",
                    IssueKind::Duplicate if issue.email.is_empty() => "repeated ids",
                    _ => continue,
                };
                if skipped.iter().filter(|(w, _)| *w == what).count() < EXAMPLES {
                    skipped.push((what, issue.message));
                }
            }
            true
        },
    )?;
    for (what, example) in skipped {
        keep(what, example);
    }
    let before = counts.leaving;
    let leavers = index.leavers(&mut counts, leave_action.as_ref().map(|(_, r)| *r));
    let leaving_done_earlier = counts.leaving - before;
    counts.leaving += leavers.act.len() as u64;
    if let Some(journal) = journal
        && !leavers.act.is_empty()
    {
        journal.synced(&mut |s| {
            if leavers.act.contains_key(&key_hash(s.email)) {
                keep("leaving", s.email.to_string());
            }
            Ok(())
        })?;
    }
    Ok(RunPlan {
        mode: match full {
            Some(why) => RunMode::Full(why),
            None => RunMode::Delta,
        },
        leave_action: leave_action.map_or_else(|| "none".into(), |(id, _)| id),
        counts: counts.plan(),
        examples,
        continues_run: None,
        leaving_done_earlier,
        leaving_to_do: leavers.act.len() as u64,
        duration: started.elapsed(),
        expected: None,
    })
}

impl RunPlan {
    /// For people: what would be sent and why, what would not, who would leave.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut out = String::new();
        let mode = match &self.mode {
            RunMode::Delta => "a delta run".to_string(),
            RunMode::Full(why) => format!("a full run ({})", clean(why, MAX_LABEL_CHARS * 4)),
        };
        let _ = writeln!(
            out,
            "Dry run: nothing was sent or recorded; the next run would be {mode}"
        );
        if let Some(run) = self.continues_run {
            let _ = writeln!(
                out,
                "  the next run continues run {run}: what it settled is not sent again"
            );
        }
        let line = |out: &mut String, label: &str, n: u64, key: Option<&str>| {
            let examples = key
                .and_then(|k| self.examples.get(k))
                .filter(|e| !e.is_empty())
                .map(|e| format!("   e.g. {}", e.join(", ")))
                .unwrap_or_default();
            let _ = writeln!(out, "  {label:<22} {n:>9}{examples}");
        };
        line(&mut out, "rows read", c.profiles, None);
        line(&mut out, "would send", c.to_send(), None);
        for (label, n, key) in [
            ("  new", c.new, "new"),
            ("  changed", c.changed, "changed"),
            ("  returning", c.returning, "returning"),
            ("  resent (full run)", c.resent, "resent"),
        ] {
            if n > 0 || label == "  new" || label == "  changed" {
                line(&mut out, label, n, Some(key));
            }
        }
        line(&mut out, "would not send", c.planned() - c.to_send(), None);
        for (label, n, key) in [
            ("  unchanged", c.unchanged, "unchanged"),
            ("  still rejected", c.still_rejected, "still rejected"),
            ("  still suppressed", c.still_suppressed, "still suppressed"),
            ("  duplicates", c.duplicates, "duplicates"),
            ("  invalid", c.invalid, "invalid"),
            ("  unreadable rows", c.unreadable, "unreadable"),
            ("  repeated ids", c.repeated_ids, "repeated ids"),
            ("  unknown profiles", c.unknown_profiles, "unknown profiles"),
            ("  settled earlier", c.resumed, "settled earlier"),
        ] {
            if n > 0 || label == "  unchanged" {
                line(&mut out, label, n, Some(key));
            }
        }
        let _ = writeln!(
            out,
            "  {:<22} {:>9}   leave action: {}{}",
            "would leave",
            c.leaving,
            self.leave_action,
            self.examples
                .get("leaving")
                .map(|e| format!("; e.g. {}", e.join(", ")))
                .unwrap_or_default()
        );
        if self.leaving_done_earlier > 0 {
            line(
                &mut out,
                "  settled earlier",
                self.leaving_done_earlier,
                None,
            );
            line(&mut out, "  still to do", self.leaving_to_do, None);
        }
        if c.kept > 0 {
            line(&mut out, "kept (still members)", c.kept, None);
        }
        match &self.expected {
            Some(e) => {
                let _ = writeln!(
                    out,
                    "  expected to take at least {} at the vendor's limit of {} ({} requests)",
                    super::eta::words(e.seconds),
                    e.limit,
                    e.requests
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  how long it takes depends on the vendor's speed: the connector declares no rate limit"
                );
            }
        }
        out
    }
}
