//! Each export's sync state in the database: what the vendor acknowledged, contact by contact
//! (`sync_contacts`: the normalised address, a digest of the fields sent, the outcome, the run
//! that settled it), why refused or kept-out contacts are so (`sync_reasons`), and what the state
//! was synced with (`sync_basis`: connector, version, mapping and settings), so that a change of
//! any of these makes the next run full.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{ExportRecord, State, now, to_text};
use crate::run::{RunJournal, Settlement, SyncReason, SyncState, Synced};

/// What an export's sync state was made with: a change to any of it makes the next run full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBasis {
    pub connector: String,
    pub connector_version: String,
    pub mapping: Vec<String>,
    pub settings: Vec<(String, String)>,
}

impl SyncBasis {
    /// Why a run with this basis must be full after one made with `before`, if it must.
    pub fn full_because(&self, before: &SyncBasis) -> Option<String> {
        let mut why = vec![];
        if self.connector != before.connector {
            why.push(format!(
                "the connector changed from {} to {}",
                before.connector, self.connector
            ));
        } else if self.connector_version != before.connector_version {
            why.push(format!(
                "connector {} changed from version {} to {}",
                self.connector, before.connector_version, self.connector_version
            ));
        }
        if self.mapping != before.mapping {
            why.push(format!(
                "the mapping changed from {} to {}",
                before.mapping.join(", "),
                self.mapping.join(", ")
            ));
        }
        if self.settings != before.settings {
            let show = |s: &[(String, String)]| {
                s.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            why.push(format!(
                "the settings changed from {} to {}",
                show(&before.settings),
                show(&self.settings)
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

impl State {
    /// The journal of a run: reads the export's sync state and records what the run settles.
    pub fn journal(self: &Arc<Self>, export: &ExportRecord, run_id: i64) -> RunLedger {
        RunLedger {
            state: self.clone(),
            export_id: export.id,
            run_id: Some(run_id),
        }
    }

    /// The export's sync state, read-only (for dry runs).
    pub fn sync_reader(self: &Arc<Self>, export: &ExportRecord) -> RunLedger {
        RunLedger {
            state: self.clone(),
            export_id: export.id,
            run_id: None,
        }
    }

    /// What the export's sync state was last completed with, if a run ever completed.
    pub fn sync_basis(&self, export: &ExportRecord) -> Result<Option<SyncBasis>> {
        let text: Option<String> = self
            .db()
            .query_row(
                "SELECT basis FROM sync_basis WHERE export_id = ?1",
                [export.id],
                |r| r.get(0),
            )
            .optional()?;
        text.map(|t| serde_json::from_str(&t).context("an unreadable sync basis"))
            .transpose()
    }

    /// Records that `run_id` completed the export's sync with `basis`.
    pub fn complete_sync(
        &self,
        export: &ExportRecord,
        run_id: i64,
        basis: &SyncBasis,
    ) -> Result<()> {
        self.db().execute(
            "INSERT INTO sync_basis (export_id, basis, run_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (export_id) DO UPDATE SET basis = excluded.basis, run_id = excluded.run_id",
            params![export.id, serde_json::to_string(basis)?, run_id],
        )?;
        Ok(())
    }

    /// How many contacts the export's sync state holds, by state.
    pub fn sync_counts(&self, export: &ExportRecord) -> Result<Vec<(SyncState, u64)>> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT state, COUNT(*) FROM sync_contacts WHERE export_id = ?1 GROUP BY state ORDER BY state",
        )?;
        let rows = q.query_map([export.id], |r| {
            Ok((r.get::<_, u8>(0)?, r.get::<_, u64>(1)?))
        })?;
        let mut counts = vec![];
        for row in rows {
            let (code, n) = row?;
            counts.extend(SyncState::from_code(code).map(|s| (s, n)));
        }
        Ok(counts)
    }
}

/// An export's sync state in the database, and the record of the run using it.
pub struct RunLedger {
    state: Arc<State>,
    export_id: i64,
    /// `None` for a read-only ledger (a dry run).
    run_id: Option<i64>,
}

impl RunJournal for RunLedger {
    fn synced(&self, each: &mut dyn FnMut(Synced<'_>) -> Result<()>) -> Result<()> {
        let db = self.state.db();
        let mut reasons: HashMap<String, (String, String, String)> = HashMap::new();
        {
            let mut q = db.prepare(
                "SELECT email, code, message, since FROM sync_reasons WHERE export_id = ?1",
            )?;
            let mut rows = q.query([self.export_id])?;
            while let Some(r) = rows.next()? {
                reasons.insert(r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?));
            }
        }
        let mut q = db.prepare(
            "SELECT email, digest, state, run_id FROM sync_contacts WHERE export_id = ?1",
        )?;
        let mut rows = q.query([self.export_id])?;
        while let Some(r) = rows.next()? {
            let email = r.get_ref(0)?.as_str()?;
            let code: u8 = r.get(2)?;
            let Some(state) = SyncState::from_code(code) else {
                bail!("the sync state of {email} has an unknown code {code}");
            };
            let reason = match state {
                SyncState::Created | SyncState::Updated | SyncState::Left => None,
                _ => reasons.get(email).map(|(code, message, since)| SyncReason {
                    code,
                    message,
                    since,
                }),
            };
            each(Synced {
                email,
                digest: r.get::<_, i64>(1)? as u64,
                state,
                this_run: Some(r.get::<_, i64>(3)?) == self.run_id,
                reason,
            })?;
        }
        Ok(())
    }

    fn settle(&self, settlement: &Settlement<'_>) -> Result<()> {
        let Some(run_id) = self.run_id else {
            bail!("a dry run records nothing");
        };
        let mut db = self.state.db();
        let tx = db.transaction()?;
        {
            let mut contact = tx.prepare_cached(
                "INSERT INTO sync_contacts (export_id, email, digest, state, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (export_id, email) DO UPDATE SET digest = excluded.digest,
                     state = excluded.state, run_id = excluded.run_id",
            )?;
            // A reason keeps the time it first applied while the contact stays refused.
            let mut reason = tx.prepare_cached(
                "INSERT INTO sync_reasons (export_id, email, code, message, since)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (export_id, email) DO UPDATE SET code = excluded.code,
                     message = excluded.message",
            )?;
            let mut cleared =
                tx.prepare_cached("DELETE FROM sync_reasons WHERE export_id = ?1 AND email = ?2")?;
            let now = now();
            for c in settlement.contacts {
                contact.execute(params![
                    self.export_id,
                    c.email,
                    c.digest as i64,
                    c.state as u8,
                    run_id
                ])?;
                match &c.reason {
                    Some((code, message)) => {
                        reason.execute(params![self.export_id, c.email, code, message, now])?;
                    }
                    None => {
                        cleared.execute(params![self.export_id, c.email])?;
                    }
                }
            }
            let mut issue = tx.prepare_cached(
                "INSERT INTO run_issues (run_id, batch, profile_id, email, kind, stage, code,
                     message, since)
                 VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for i in settlement.issues {
                issue.execute(params![
                    run_id,
                    i.profile_id,
                    i.email,
                    to_text(&i.kind),
                    to_text(&i.stage),
                    i.code,
                    i.message,
                    i.since
                ])?;
            }
        }
        tx.execute(
            "UPDATE runs SET counts = ?2 WHERE id = ?1",
            params![run_id, serde_json::to_string(settlement.counts)?],
        )?;
        tx.commit()?;
        Ok(())
    }
}
