//! What a batch settles: each contact's new sync state, the contacts not delivered, and the
//! counts of the piece, from the vendor's per-contact outcomes.

use super::batches::Batch;
use super::counts::RunCounts;
use super::report::{IssueKind, RunIssue, Stage};
use super::sync::{SettledContact, SyncState};
use crate::contract::{self, BatchReport};
use crate::text::{self, MAX_LABEL_CHARS, MAX_MESSAGE_CHARS};

/// One piece of a run, ready for the journal.
pub(crate) struct Piece {
    pub contacts: Vec<SettledContact>,
    pub issues: Vec<RunIssue>,
    pub counts: RunCounts,
}

/// A contact who left the segment, as the leave phase handles it.
pub(crate) struct Leaver {
    /// The normalised address.
    pub email: String,
    pub digest: u64,
    pub person: u64,
    /// The leave action was asked of the vendor for them before (an attempt cut short before
    /// it recorded the answer): a vendor that no longer has them had it from this run.
    pub asked: bool,
}

/// The record, made before the vendor is asked, that the leave action is asked for `leaver`.
pub(crate) fn intent(leaver: &Leaver) -> SettledContact {
    SettledContact {
        email: leaver.email.clone(),
        person: leaver.person,
        digest: leaver.digest,
        state: SyncState::Leaving,
        reason: None,
    }
}

/// The vendor's code and message for a contact, cleaned.
fn reason(issue: &contract::ContactIssue) -> (String, String) {
    (
        text::clean(&issue.code, MAX_LABEL_CHARS),
        text::clean(&issue.message, MAX_MESSAGE_CHARS),
    )
}

/// A sent batch: its contacts' outcomes (or none, when nothing was sent), and what was decided
/// locally for the rest of its profiles.
pub(crate) fn sent(batch: Batch, outcome: Option<BatchReport>) -> Piece {
    let mut counts = batch.counts;
    let mut issues = batch.issues;
    let mut contacts = Vec::with_capacity(batch.sent.len());
    if let Some(report) = outcome {
        counts.batches += 1;
        let mut outcomes: Vec<Option<&contract::ContactIssue>> = vec![None; batch.sent.len()];
        for issue in &report.issues {
            outcomes[issue.index as usize] = Some(issue);
        }
        // The report says how many were created, not which: the first delivered ones are.
        let mut created = report.created;
        for ((sent, contact), outcome) in batch.sent.into_iter().zip(&batch.contacts).zip(outcomes)
        {
            let (state, why) = match outcome {
                None if created > 0 => {
                    created -= 1;
                    counts.created += 1;
                    (SyncState::Created, None)
                }
                None => {
                    counts.updated += 1;
                    (SyncState::Updated, None)
                }
                Some(issue) => {
                    let (code, message) = reason(issue);
                    let (state, kind) = match issue.kind {
                        contract::IssueKind::Suppressed => {
                            counts.suppressed += 1;
                            (SyncState::Suppressed, IssueKind::Suppressed)
                        }
                        contract::IssueKind::Rejected => {
                            counts.rejected += 1;
                            (SyncState::Rejected, IssueKind::Rejected)
                        }
                    };
                    issues.push(RunIssue {
                        profile_id: sent.profile_id,
                        email: contact.email.clone(),
                        kind,
                        stage: Stage::Sent,
                        code: code.clone(),
                        message: message.clone(),
                        since: None,
                    });
                    (state, Some((code, message)))
                }
            };
            contacts.push(SettledContact {
                email: sent.key,
                person: sent.person,
                digest: sent.digest,
                state,
                reason: why,
            });
        }
    }
    Piece {
        contacts,
        issues,
        counts,
    }
}

/// Leavers after the leave action (or with none: `outcome` is `None`, and they are recorded
/// as departed, for a leave action added later).
pub(crate) fn left(leavers: Vec<Leaver>, outcome: Option<BatchReport>) -> Piece {
    let acted = outcome.is_some();
    let mut counts = RunCounts {
        leaving: leavers.len() as u64,
        ..RunCounts::default()
    };
    let mut issues = vec![];
    let mut outcomes: Vec<Option<&contract::ContactIssue>> = vec![None; leavers.len()];
    if let Some(report) = &outcome {
        counts.batches += 1;
        for issue in &report.issues {
            outcomes[issue.index as usize] = Some(issue);
        }
    }
    let contacts = leavers
        .into_iter()
        .zip(outcomes)
        .map(|(leaver, outcome)| {
            let (state, why) = match outcome {
                None if !acted => {
                    counts.left += 1;
                    (SyncState::Departed, None)
                }
                None => {
                    counts.left += 1;
                    (SyncState::Left, None)
                }
                // Kept out already, after this run asked: this run's own doing.
                Some(issue) if leaver.asked && issue.kind == contract::IssueKind::Suppressed => {
                    counts.left += 1;
                    (SyncState::Left, None)
                }
                Some(issue) => {
                    let (code, message) = reason(issue);
                    let (state, kind) = match issue.kind {
                        contract::IssueKind::Suppressed => {
                            counts.left_untouched += 1;
                            (SyncState::LeftUntouched, IssueKind::Suppressed)
                        }
                        contract::IssueKind::Rejected => {
                            counts.left_refused += 1;
                            (SyncState::LeftRefused, IssueKind::Rejected)
                        }
                    };
                    issues.push(RunIssue {
                        profile_id: String::new(),
                        email: leaver.email.clone(),
                        kind,
                        stage: Stage::Leaving,
                        code: code.clone(),
                        message: message.clone(),
                        since: None,
                    });
                    (state, Some((code, message)))
                }
            };
            SettledContact {
                email: leaver.email,
                person: leaver.person,
                digest: leaver.digest,
                state,
                reason: why,
            }
        })
        .collect();
    Piece {
        contacts,
        issues,
        counts,
    }
}
