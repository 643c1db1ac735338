//! Contacts the export sent before that are no longer in its segment: the leave action applied to
//! them in batches (several in flight), or, with none, just recorded as gone. Runs only after
//! the whole segment was read and settled.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::call::{Call, Calls};
use super::counts::RunCounts;
use super::settle::{self, Leaver, Piece};
use super::sync::{SyncIndex, key_hash};
use super::{Run, RunJournal};
use crate::contract::Contact;

/// Leavers recorded at once when there is no leave action to call.
const RECORD_AT_ONCE: usize = 10_000;

/// Finds the leavers and settles each (the failure, if any, is the run's).
pub(super) async fn apply(
    calls: &Arc<Calls>,
    run: &mut Run<'_>,
    index: &SyncIndex,
    action: Option<&str>,
    size: usize,
    concurrency: usize,
    stop: &CancellationToken,
) {
    // Leavers an earlier attempt of this run settled are counted as they were.
    let mut earlier = RunCounts::default();
    let keys = index.leavers(&mut earlier);
    if earlier != RunCounts::default() {
        run.record(Piece {
            contacts: vec![],
            issues: vec![],
            counts: earlier,
        })
        .await;
    }
    if keys.is_empty() {
        return;
    }
    let journal = run.journal.clone().expect("leavers come from a journal");
    let leavers = match addresses(journal, keys).await {
        Ok(leavers) => leavers,
        Err(e) => return run.fail(format!("reading who left the segment failed: {e:#}")),
    };
    tracing::info!(
        leavers = leavers.len(),
        action = action.unwrap_or("none"),
        "contacts left the segment"
    );
    let Some(action) = action else {
        let mut leavers = leavers;
        while !leavers.is_empty() {
            let rest = leavers.split_off(leavers.len().min(RECORD_AT_ONCE));
            run.record(settle::left(std::mem::replace(&mut leavers, rest), None))
                .await;
        }
        return;
    };

    let mut batches = chunks(leavers, size).into_iter();
    let mut in_flight = JoinSet::new();
    loop {
        let can_send = run.failure.is_none() && !stop.is_cancelled();
        while can_send && in_flight.len() < concurrency {
            let Some(batch) = batches.next() else { break };
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
            Ok((batch, Ok(report))) => run.record(settle::left(batch, Some(report))).await,
            Ok((_, Err(e))) => run.fail(format!("{e:#}")),
            Err(join) => run.fail(format!("leave task failed: {join}")),
        }
    }
}

/// The addresses (and digests) of the leavers, read back from the sync state.
async fn addresses(
    journal: Arc<dyn RunJournal>,
    keys: std::collections::HashSet<u64>,
) -> anyhow::Result<Vec<Leaver>> {
    tokio::task::spawn_blocking(move || {
        // Keyed, so that a contact the journal gives twice is kept in its later state.
        let mut leavers = std::collections::HashMap::with_capacity(keys.len());
        journal.synced(&mut |s| {
            let key = key_hash(s.email);
            if keys.contains(&key) {
                leavers.insert(
                    key,
                    Leaver {
                        email: s.email.to_string(),
                        digest: s.digest,
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
