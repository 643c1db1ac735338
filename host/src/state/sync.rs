//! Each export's sync state in the database: what the vendor acknowledged, contact by contact
//! (the normalised address, a digest of the fields sent, the outcome, the run that settled it),
//! why refused or kept-out contacts are so (`sync_reasons`), and what the state was synced with
//! (`sync_basis`: connector, version, mapping and settings), so that a change of any of these
//! makes the next run full.
//!
//! Contacts settle in the segment's order, which is random with respect to any key: updating a
//! keyed table in place would rewrite most of its pages at every commit. So a run appends what
//! it settles to `sync_log` (one small sequential write a piece), and the log is folded into
//! `sync_contacts` in key order, one pass over it, once the log outgrows an eighth of it. A
//! contact's current state is its latest log entry, else its `sync_contacts` row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
            sizes: Mutex::new(None),
        }
    }

    /// The export's sync state, read-only (for dry runs).
    pub fn sync_reader(self: &Arc<Self>, export: &ExportRecord) -> RunLedger {
        RunLedger {
            state: self.clone(),
            export_id: export.id,
            run_id: None,
            sizes: Mutex::new(None),
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
        // The log is at most an eighth of the state: its latest entries fit in memory.
        let mut latest: HashMap<String, u8> = HashMap::new();
        {
            let mut q =
                db.prepare("SELECT email, state FROM sync_log WHERE export_id = ?1 ORDER BY seq")?;
            let mut rows = q.query([export.id])?;
            while let Some(r) = rows.next()? {
                latest.insert(r.get(0)?, r.get(1)?);
            }
        }
        let mut by_code = [0u64; 256];
        let mut q = db.prepare("SELECT email, state FROM sync_contacts WHERE export_id = ?1")?;
        let mut rows = q.query([export.id])?;
        while let Some(r) = rows.next()? {
            if !latest.contains_key(r.get_ref(0)?.as_str()?) {
                by_code[r.get::<_, u8>(1)? as usize] += 1;
            }
        }
        for code in latest.values() {
            by_code[*code as usize] += 1;
        }
        Ok(by_code
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(code, n)| Some((SyncState::from_code(code as u8)?, *n)))
            .collect())
    }
}

/// An export's sync state in the database, and the record of the run using it.
pub struct RunLedger {
    state: Arc<State>,
    export_id: i64,
    /// `None` for a read-only ledger (a dry run).
    run_id: Option<i64>,
    /// Rows of the export in `sync_contacts` and in `sync_log`, counted on first need.
    sizes: Mutex<Option<Sizes>>,
}

#[derive(Debug, Clone, Copy)]
struct Sizes {
    folded: u64,
    log: u64,
}

/// Log entries of an export that are always allowed before folding, so that the first runs of
/// an export do not fold at every piece.
const MIN_LOG_TO_FOLD: u64 = 65_536;

impl Sizes {
    /// Whether the log is due to be folded: past an eighth of the folded state, so it never
    /// adds more than that to the database (nor to reading the state).
    fn fold_due(&self) -> bool {
        self.log >= MIN_LOG_TO_FOLD.max(self.folded / 8)
    }
}

impl RunLedger {
    /// Counts the export's rows in both tables.
    fn count(&self, db: &rusqlite::Connection) -> Result<Sizes> {
        let count = |table: &str| -> Result<u64> {
            Ok(db.query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE export_id = ?1"),
                [self.export_id],
                |r| r.get(0),
            )?)
        };
        Ok(Sizes {
            folded: count("sync_contacts")?,
            log: count("sync_log")?,
        })
    }

    /// Folds the export's log into `sync_contacts` in key order (the latest entry of a contact
    /// wins), in one transaction.
    fn fold(&self, db: &mut rusqlite::Connection) -> Result<Sizes> {
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO sync_contacts (export_id, email, digest, state, run_id)
             SELECT export_id, email, digest, state, run_id FROM sync_log
                 WHERE export_id = ?1 ORDER BY email, seq
             ON CONFLICT (export_id, email) DO UPDATE SET digest = excluded.digest,
                 state = excluded.state, run_id = excluded.run_id",
            [self.export_id],
        )?;
        tx.execute(
            "DELETE FROM sync_log WHERE export_id = ?1",
            [self.export_id],
        )?;
        tx.commit()?;
        self.count(db)
    }
}

impl RunJournal for RunLedger {
    fn size_hint(&self) -> u64 {
        let db = self.state.db();
        let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        if sizes.is_none() {
            *sizes = self.count(&db).ok();
        }
        sizes.map_or(0, |s| s.folded + s.log)
    }

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
        // The folded state first, then the log in order: a later entry of a contact wins.
        for query in [
            "SELECT email, digest, state, run_id FROM sync_contacts WHERE export_id = ?1",
            "SELECT email, digest, state, run_id FROM sync_log WHERE export_id = ?1 ORDER BY seq",
        ] {
            let mut q = db.prepare(query)?;
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
                "INSERT INTO sync_log (export_id, email, digest, state, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
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

        let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = match *sizes {
            Some(known) => Sizes {
                log: known.log + settlement.contacts.len() as u64,
                ..known
            },
            None => self.count(&db)?,
        };
        if now.fold_due() {
            now = self
                .fold(&mut db)
                .context("folding the sync log into the sync state")?;
        }
        *sizes = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::run::{RunCounts, SettledContact};
    use crate::secret::Secret;
    use crate::state::{
        Access, Actor, CredentialKind, MasterKey, NewConnection, NewExport, Role, StoredCredential,
        Trigger,
    };

    /// A state holding two exports.
    fn two_exports() -> (tempfile::TempDir, Arc<State>, ExportRecord, ExportRecord) {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State::open(&dir.path().join("state.db")).unwrap());
        let actor = Actor {
            name: "ops".into(),
            role: Role::Administrator,
        };
        let credential = StoredCredential {
            kind: CredentialKind::ApiKey,
            secret: Secret::new("k".into()),
            refresh: None,
        };
        let connection = state
            .add_connection(
                &MasterKey::generate(),
                &NewConnection {
                    name: "acme",
                    connector: "campaign-monitor",
                    base_url: None,
                    data_centre: None,
                    credential: &credential,
                    token_expires_at: None,
                    access: Access::Administrators,
                    checked_at: None,
                },
                &actor,
            )
            .unwrap();
        let export = |name| {
            state
                .add_export(
                    &NewExport {
                        name,
                        connection_id: connection.id,
                        settings: &[],
                        mapping: &["email=email".into()],
                        segments: &["all".into()],
                        schedule: None,
                        leave_action: None,
                    },
                    &actor,
                )
                .unwrap()
        };
        let (a, b) = (export("a"), export("b"));
        (dir, state, a, b)
    }

    fn run(state: &State, export: &ExportRecord) -> i64 {
        let actor = Actor {
            name: "ops".into(),
            role: Role::Administrator,
        };
        state.start_run(export, Trigger::OnDemand, &actor).unwrap()
    }

    fn settle(ledger: &RunLedger, contacts: Vec<SettledContact>) {
        for piece in contacts.chunks(1000) {
            ledger
                .settle(&Settlement {
                    contacts: piece,
                    issues: &[],
                    counts: &RunCounts::default(),
                })
                .unwrap();
        }
    }

    fn contact(i: u64, state: SyncState) -> SettledContact {
        SettledContact {
            email: format!("c{i}@x.io"),
            digest: i,
            state,
            reason: (state == SyncState::Rejected).then(|| ("1".into(), "Invalid".into())),
        }
    }

    /// The export's sync state as a run reads it: email → (digest, state, this run, reason).
    fn read(ledger: &RunLedger) -> BTreeMap<String, (u64, SyncState, bool, Option<String>)> {
        let mut held = BTreeMap::new();
        ledger
            .synced(&mut |s| {
                let reason = s.reason.map(|r| r.message.to_string());
                held.insert(s.email.to_string(), (s.digest, s.state, s.this_run, reason));
                Ok(())
            })
            .unwrap();
        held
    }

    fn log_rows(state: &State, export: &ExportRecord) -> u64 {
        state
            .db()
            .query_row(
                "SELECT COUNT(*) FROM sync_log WHERE export_id = ?1",
                [export.id],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn the_log_folds_into_the_sync_state_and_a_contacts_latest_entry_wins() {
        let (_dir, state, a, b) = two_exports();
        let first = state.journal(&a, run(&state, &a));
        let n = 70_000;
        settle(
            &first,
            (0..n).map(|i| contact(i, SyncState::Created)).collect(),
        );
        // The piece that took the log past 65,536 entries folded it: the 4 pieces after it
        // are all it holds.
        assert_eq!(log_rows(&state, &a), 4_000);
        let other = state.journal(&b, run(&state, &b));
        settle(&other, vec![contact(0, SyncState::Updated)]);

        // A second run changes some, in the log over the folded state.
        let second = state.journal(&a, run(&state, &a));
        settle(
            &second,
            (0..10)
                .map(|i| contact(i, SyncState::Left))
                .chain((10..20).map(|i| contact(i, SyncState::Rejected)))
                .collect(),
        );
        let check = |when: &str| {
            let held = read(&second);
            assert_eq!(held.len(), n as usize, "{when}");
            assert_eq!(held["c5@x.io"], (5, SyncState::Left, true, None), "{when}");
            assert_eq!(
                held["c15@x.io"],
                (15, SyncState::Rejected, true, Some("Invalid".into())),
                "{when}"
            );
            assert_eq!(
                held["c69999@x.io"],
                (69_999, SyncState::Created, false, None)
            );
            assert_eq!(
                state.sync_counts(&a).unwrap(),
                vec![
                    (SyncState::Created, n - 20),
                    (SyncState::Rejected, 10),
                    (SyncState::Left, 10)
                ],
                "{when}"
            );
            let b_held = read(&state.sync_reader(&b));
            assert_eq!(b_held.len(), 1, "{when}: the other export's state");
            assert_eq!(b_held["c0@x.io"].1, SyncState::Updated, "{when}");
        };
        check("before folding");
        second.fold(&mut state.db()).unwrap();
        assert_eq!(log_rows(&state, &a), 0);
        assert_eq!(log_rows(&state, &b), 1, "folding is per export");
        check("after folding");

        // A removed export's sync state goes; the other's stays.
        let actor = Actor {
            name: "ops".into(),
            role: Role::Administrator,
        };
        state.remove_export("a", &actor).unwrap();
        assert!(read(&state.sync_reader(&a)).is_empty());
        assert_eq!(read(&state.sync_reader(&b)).len(), 1);
    }
}
