//! Contacts the export sent before that are no longer in its segment: the leave action applied to
//! them in batches (several in flight), or, with none, just recorded as gone. Runs only after
//! the whole segment was read and settled.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::call::{Call, Calls};
use super::counts::RunCounts;
use super::report::{IssueKind, RunIssue, Stage};
use super::settle::{self, Leaver, Piece};
use super::sync::{SyncIndex, SyncState, key_hash};
use super::{Run, RunJournal};
use crate::contract::Contact;

/// Leavers recorded at once when there is no leave action to call.
const RECORD_AT_ONCE: usize = 10_000;

/// Leavers a leave-action call takes at most unless the action declares its own batch size:
/// each call's contacts are recorded once it returns, so a crash re-does at most this many a
/// call in flight (and, knowing it asked, the next attempt counts those the vendor no longer
/// has as its own work).
const LEAVE_AT_ONCE: usize = 100;

/// Finds the leavers and settles each (the failure, if any, is the run's). `action`: the
/// export's leave action and whether it is reversible.
pub(super) async fn apply(
    calls: &Arc<Calls>,
    run: &mut Run<'_>,
    index: &mut SyncIndex,
    action: Option<(&str, bool)>,
    size: usize,
    concurrency: usize,
    stop: &CancellationToken,
) {
    // Leavers an earlier attempt of this run settled are counted as they were, with their
    // reasons.
    let mut earlier = RunCounts::default();
    let found = index.leavers(&mut earlier, action.map(|(_, reversible)| reversible));
    let journal = run.journal.clone().expect("leavers come from a journal");
    if earlier != RunCounts::default() {
        let issues = match earlier_issues(journal.clone(), found.earlier).await {
            Ok(issues) => issues,
            Err(e) => return run.fail(format!("reading who left the segment failed: {e:#}")),
        };
        run.record(Piece {
            contacts: vec![],
            issues,
            counts: earlier,
        })
        .await;
    }
    if found.act.is_empty() {
        return;
    }
    let leavers = match addresses(journal, found.act).await {
        Ok(leavers) => leavers,
        Err(e) => return run.fail(format!("reading who left the segment failed: {e:#}")),
    };
    tracing::info!(
        leavers = leavers.len(),
        action = action.map_or("none", |(a, _)| a),
        "contacts left the segment"
    );
    let Some((action, _)) = action else {
        run.leaving(leavers.len() as u64, RECORD_AT_ONCE as u64);
        let mut leavers = leavers;
        while !leavers.is_empty() {
            let rest = leavers.split_off(leavers.len().min(RECORD_AT_ONCE));
            run.record(settle::left(std::mem::replace(&mut leavers, rest), None))
                .await;
        }
        return;
    };

    // The action's own batch size (a vendor acting on one person a request declares 1: each
    // leaver is then recorded as soon as the vendor acknowledged it).
    let declared = calls
        .plugin
        .info
        .leave_actions
        .iter()
        .find(|a| a.id == action)
        .map_or(0, |a| a.batch_size as usize);
    let per_call = match declared {
        0 => size.min(LEAVE_AT_ONCE),
        n => n.min(size),
    };
    run.leaving(leavers.len() as u64, per_call as u64);
    let mut batches = chunks(leavers, per_call).into_iter().peekable();
    let mut in_flight = JoinSet::new();
    loop {
        let can_send = run.failure.is_none() && !stop.is_cancelled() && !run.lost.is_cancelled();
        let mut ready = vec![];
        while can_send && in_flight.len() + ready.len() < concurrency {
            let Some(batch) = batches.next() else { break };
            ready.push(batch);
        }
        if !ready.is_empty() {
            // Before the vendor is asked: that it is being asked, durably.
            let intents = ready.iter().flatten().map(settle::intent).collect();
            run.record(Piece {
                contacts: intents,
                issues: vec![],
                counts: RunCounts::default(),
            })
            .await;
            run.flush().await;
            if run.failure.is_some() || run.lost.is_cancelled() {
                break;
            }
        }
        for batch in ready {
            let (calls, action) = (calls.clone(), action.to_string());
            in_flight.spawn(async move {
                let contacts: Vec<Contact> = batch
                    .iter()
                    .map(|l| Contact {
                        email: l.email.clone(),
                        first_name: None,
                        last_name: None,
                        attributes: vec![],
                    })
                    .collect();
                let outcome = calls.make(Call::Leave(&action), &contacts).await;
                (batch, outcome)
            });
        }
        let done = tokio::select! {
            done = in_flight.join_next() => done,
            // The run's lock was lost: what is in flight is left to the next holder.
            _ = run.lost.cancelled() => {
                in_flight.abort_all();
                return;
            }
        };
        let Some(done) = done else {
            break;
        };
        match done {
            Ok((batch, Ok((report, asked)))) => {
                run.called(batch.len() as u64, asked);
                run.record(settle::left(batch, Some(report))).await
            }
            Ok((_, Err(e))) => run.fail(format!("{e:#}")),
            Err(join) => run.fail(format!("leave task failed: {join}")),
        }
    }
}

/// The issues of leavers an earlier attempt of this run settled with an answer (left
/// untouched, or refused), read back with their reasons.
async fn earlier_issues(
    journal: Arc<dyn RunJournal>,
    keys: HashMap<u64, SyncState>,
) -> anyhow::Result<Vec<RunIssue>> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    tokio::task::spawn_blocking(move || {
        let mut issues = HashMap::with_capacity(keys.len());
        journal.synced(&mut |s| {
            let key = key_hash(s.email);
            if let Some(state) = keys.get(&key) {
                let kind = match state {
                    SyncState::LeftRefused => IssueKind::Rejected,
                    _ => IssueKind::Suppressed,
                };
                let reason = s.reason.as_ref();
                issues.insert(
                    key,
                    RunIssue {
                        profile_id: String::new(),
                        email: s.email.to_string(),
                        kind,
                        stage: Stage::Leaving,
                        code: reason.map(|r| r.code.to_string()).unwrap_or_default(),
                        message: reason.map(|r| r.message.to_string()).unwrap_or_default(),
                        since: reason.map(|r| r.since.to_string()),
                    },
                );
            }
            Ok(())
        })?;
        let mut issues: Vec<RunIssue> = issues.into_values().collect();
        issues.sort_unstable_by(|a, b| a.email.cmp(&b.email));
        Ok(issues)
    })
    .await?
}

/// The addresses (and digests, and people) of the leavers, read back from the sync state.
async fn addresses(
    journal: Arc<dyn RunJournal>,
    keys: HashMap<u64, SyncState>,
) -> anyhow::Result<Vec<Leaver>> {
    tokio::task::spawn_blocking(move || {
        // Keyed, so that a contact the journal gives twice is kept in its later state.
        let mut leavers = HashMap::with_capacity(keys.len());
        journal.synced(&mut |s| {
            let key = key_hash(s.email);
            if let Some(state) = keys.get(&key) {
                leavers.insert(
                    key,
                    Leaver {
                        email: s.email.to_string(),
                        digest: s.digest,
                        person: s.person,
                        asked: *state == SyncState::Leaving,
                    },
                );
            }
            Ok(())
        })?;
        let mut leavers: Vec<Leaver> = leavers.into_values().collect();
        leavers.sort_unstable_by(|a, b| a.email.cmp(&b.email));
        Ok(leavers)
    })
    .await?
}

fn chunks(mut leavers: Vec<Leaver>, size: usize) -> Vec<Vec<Leaver>> {
    let mut out = vec![];
    while !leavers.is_empty() {
        let rest = leavers.split_off(leavers.len().min(size.max(1)));
        out.push(std::mem::replace(&mut leavers, rest));
    }
    out
}
