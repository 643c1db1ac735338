//! A run's journal over the saved state: it reads the export's sync state and records what
//! the run settles, piece by piece, each in one transaction. Each engine stores it its own
//! way (below); both give the same contract.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, pin_mut};
use rusqlite::params;

use super::runs::NotTheHolder;
use super::{ExportRecord, State, now, to_text};
use crate::fence::Fence;
use crate::pg::is_transient;
use crate::run::{RunJournal, Settlement, SyncReason, SyncState, Synced};

impl State {
    /// The journal of a run: reads the export's sync state and records what the run settles,
    /// each piece only while `fence` is the run's generation (another worker's takeover makes
    /// this worker's writes fail). Made in the runtime whose blocking threads call it.
    pub fn journal(
        self: &Arc<Self>,
        export: &ExportRecord,
        run_id: i64,
        fence: &Fence,
    ) -> RunLedger {
        self.ledger(export, Some((run_id, fence.clone())))
    }

    /// The export's sync state, read-only (for dry runs): as the next attempt of `run` would
    /// read it, when the next run continues one.
    pub fn sync_reader(self: &Arc<Self>, export: &ExportRecord, run: Option<i64>) -> RunLedger {
        RunLedger {
            run_id: run,
            fence: None,
            ..self.ledger(export, None)
        }
    }

    fn ledger(self: &Arc<Self>, export: &ExportRecord, run: Option<(i64, Fence)>) -> RunLedger {
        let (run_id, fence) = run.unzip();
        RunLedger {
            state: self.clone(),
            export_id: export.id,
            run_id,
            fence,
            sizes: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

/// The SQLite engine's count of an export's contacts by state code (the log's latest entries
/// over the folded state).
pub(super) fn sqlite_counts(state: &State, export_id: i64) -> Result<[u64; 256]> {
    let db = state.db.sqlite().expect("the SQLite engine");
    // The log is at most an eighth of the state: its latest entries fit in memory.
    let mut latest: HashMap<String, u8> = HashMap::new();
    {
        let mut q =
            db.prepare("SELECT email, state FROM sync_log WHERE export_id = ?1 ORDER BY seq")?;
        let mut rows = q.query([export_id])?;
        while let Some(r) = rows.next()? {
            latest.insert(r.get(0)?, r.get(1)?);
        }
    }
    let mut by_code = [0u64; 256];
    let mut q = db.prepare("SELECT email, state FROM sync_contacts WHERE export_id = ?1")?;
    let mut rows = q.query([export_id])?;
    while let Some(r) = rows.next()? {
        if !latest.contains_key(r.get_ref(0)?.as_str()?) {
            by_code[r.get::<_, u8>(1)? as usize] += 1;
        }
    }
    for code in latest.values() {
        by_code[*code as usize] += 1;
    }
    Ok(by_code)
}

/// An export's sync state in the database, and the record of the run using it. Its methods
/// block: a run calls them from blocking threads.
pub struct RunLedger {
    state: Arc<State>,
    export_id: i64,
    /// `None` for a read-only ledger (a dry run).
    run_id: Option<i64>,
    /// The run's lock, whose generation each write carries.
    fence: Option<Fence>,
    /// SQLite: rows of the export in `sync_contacts` and in `sync_log`, counted on first need.
    sizes: Mutex<Option<Sizes>>,
    /// PostgreSQL: the runtime its driver runs on.
    runtime: tokio::runtime::Handle,
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
            "INSERT INTO sync_contacts (export_id, email, digest, state, run_id, person)
             SELECT export_id, email, digest, state, run_id, person FROM sync_log
                 WHERE export_id = ?1 ORDER BY email, seq
             ON CONFLICT (export_id, email) DO UPDATE SET digest = excluded.digest,
                 state = excluded.state, run_id = excluded.run_id, person = excluded.person",
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
        super::db::count();
        match self.state.db.postgres() {
            None => self.sqlite_size_hint(),
            Some(pool) => self
                .runtime
                .block_on(pg_size(pool, self.export_id))
                .unwrap_or(0),
        }
    }

    fn synced(&self, each: &mut dyn FnMut(Synced<'_>) -> Result<()>) -> Result<()> {
        super::db::count();
        match self.state.db.postgres() {
            None => self.sqlite_synced(each),
            Some(pool) => self.runtime.block_on(self.pg_synced(pool, each)),
        }
    }

    fn note_figures(&self, figures: &crate::run::Figures) -> Result<()> {
        let (Some(run_id), Some(fence)) = (self.run_id, &self.fence) else {
            return Ok(());
        };
        let note = self.state.db.execute(
            // Never lower than a settled piece wrote (its figures may be a moment newer).
            "UPDATE run_attempts SET requests = ?2, retries = ?3, seconds = ?4
             WHERE run_id = ?1 AND attempt = (SELECT attempts FROM runs WHERE id = ?1)
                 AND requests <= ?2
                 AND EXISTS (SELECT 1 FROM runs WHERE id = ?1 AND lease_token = ?5)",
            crate::state::db::params![
                run_id,
                figures.requests as i64,
                figures.retries as i64,
                figures.duration.as_secs_f64(),
                fence.token()
            ],
        );
        self.runtime.block_on(note)?;
        Ok(())
    }

    fn settle(&self, settlement: &Settlement<'_>) -> Result<()> {
        let (Some(run_id), Some(fence)) = (self.run_id, &self.fence) else {
            bail!("a dry run records nothing");
        };
        let token = fence.token();
        let mut wait = std::time::Duration::from_millis(100);
        let mut failing_since = None;
        loop {
            super::db::count();
            let settled = match self.state.db.postgres() {
                None => self.sqlite_settle(run_id, token, settlement),
                Some(pool) => self.runtime.block_on(pg_settle(
                    pool,
                    self.export_id,
                    run_id,
                    token,
                    settlement,
                )),
            };
            // The database out of reach (a restart, a dropped connection): the piece is tried
            // again for as long as the run's lock surely holds; the run waits meanwhile.
            match settled {
                Err(e) if is_transient(&e) && fence.holds() => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    tracing::warn!(
                        run = run_id,
                        "recording a settled piece failed ({e:#}); trying again while the run's lock holds ({:.1} s so far)",
                        since.elapsed().as_secs_f64()
                    );
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }
}

/// The SQLite engine's journal. Contacts settle in the segment's order, which is random with
/// respect to any key: updating a keyed table in place would rewrite most of its pages at
/// every commit. So a run appends what it settles to `sync_log` (one small sequential write a
/// piece), and the log is folded into `sync_contacts` in key order, one pass over it, once the
/// log outgrows an eighth of it. A contact's current state is its latest log entry, else its
/// `sync_contacts` row.
impl RunLedger {
    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.state.db.sqlite().expect("the SQLite engine")
    }

    fn sqlite_size_hint(&self) -> u64 {
        let db = self.db();
        let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        if sizes.is_none() {
            *sizes = self.count(&db).ok();
        }
        sizes.map_or(0, |s| s.folded + s.log)
    }

    fn sqlite_synced(&self, each: &mut dyn FnMut(Synced<'_>) -> Result<()>) -> Result<()> {
        let db = self.db();
        let mut reasons: Reasons = HashMap::new();
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
            "SELECT email, digest, state, run_id, person FROM sync_contacts WHERE export_id = ?1",
            "SELECT email, digest, state, run_id, person FROM sync_log WHERE export_id = ?1
                 ORDER BY seq",
        ] {
            let mut q = db.prepare(query)?;
            let mut rows = q.query([self.export_id])?;
            while let Some(r) = rows.next()? {
                let email = r.get_ref(0)?.as_str()?;
                each(synced(
                    email,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    Some(r.get::<_, i64>(3)?) == self.run_id,
                    &reasons,
                )?)?;
            }
        }
        Ok(())
    }

    fn sqlite_settle(&self, run_id: i64, token: &str, settlement: &Settlement<'_>) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        // First, and only while this worker holds the run.
        let held = tx.execute(
            "UPDATE runs SET counts = ?2, expected_end = ?4 WHERE id = ?1 AND lease_token = ?3",
            params![
                run_id,
                serde_json::to_string(settlement.counts)?,
                token,
                expected_end(&settlement.figures)
            ],
        )?;
        if held != 1 {
            return Err(NotTheHolder(run_id).into());
        }
        let f = &settlement.figures;
        tx.execute(
            // Never below what the request tally wrote (its count may be a moment newer).
            "UPDATE run_attempts SET
                 requests = CASE WHEN requests > ?2 THEN requests ELSE ?2 END,
                 retries = CASE WHEN retries > ?3 THEN retries ELSE ?3 END,
                 batches = ?4, seconds = ?5
             WHERE run_id = ?1 AND attempt = (SELECT attempts FROM runs WHERE id = ?1)",
            params![
                run_id,
                f.requests as i64,
                f.retries as i64,
                f.batches as i64,
                f.duration.as_secs_f64()
            ],
        )?;
        {
            let mut contact = tx.prepare_cached(
                "INSERT INTO sync_log (export_id, email, digest, state, run_id, person)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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
                    run_id,
                    c.person as i64
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

/// Why refused or kept-out contacts are so, by address: code, message, since.
type Reasons = HashMap<String, (String, String, String)>;

/// One contact of the sync state as both engines store it (its state as a code).
fn synced<'a>(
    email: &'a str,
    person: i64,
    digest: i64,
    code: i64,
    this_run: bool,
    reasons: &'a Reasons,
) -> Result<Synced<'a>> {
    let Some(state) = u8::try_from(code).ok().and_then(SyncState::from_code) else {
        bail!("the sync state of {email} has an unknown code {code}");
    };
    let reason = match state {
        SyncState::Created
        | SyncState::Updated
        | SyncState::Left
        | SyncState::Leaving
        | SyncState::Departed => None,
        _ => reasons.get(email).map(|(code, message, since)| SyncReason {
            code,
            message,
            since,
        }),
    };
    Ok(Synced {
        email,
        person: person as u64,
        digest: digest as u64,
        state,
        this_run,
        reason,
    })
}

/// The PostgreSQL engine's journal: contacts are upserted into `sync_contacts` a piece at a
/// time (arrays bound as one statement each), and read back as a stream.
async fn pg_size(pool: &deadpool_postgres::Pool, export_id: i64) -> Result<u64> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT COUNT(*) FROM sync_contacts WHERE export_id = $1",
            &[&export_id],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

impl RunLedger {
    async fn pg_synced(
        &self,
        pool: &deadpool_postgres::Pool,
        each: &mut dyn FnMut(Synced<'_>) -> Result<()>,
    ) -> Result<()> {
        let client = pool.get().await?;
        let mut reasons: Reasons = HashMap::new();
        for r in client
            .query(
                "SELECT email, code, message, since FROM sync_reasons WHERE export_id = $1",
                &[&self.export_id],
            )
            .await?
        {
            reasons.insert(r.get(0), (r.get(1), r.get(2), r.get(3)));
        }
        let rows = client
            .query_raw(
                "SELECT email, digest, state, run_id, person FROM sync_contacts
                 WHERE export_id = $1",
                [&self.export_id],
            )
            .await?;
        pin_mut!(rows);
        while let Some(r) = rows.next().await {
            let r = r?;
            let email: &str = r.get(0);
            each(synced(
                email,
                r.get::<_, i64>(4),
                r.get::<_, i64>(1),
                r.get::<_, i16>(2).into(),
                Some(r.get::<_, i64>(3)) == self.run_id,
                &reasons,
            )?)?;
        }
        Ok(())
    }
}

async fn pg_settle(
    pool: &deadpool_postgres::Pool,
    export_id: i64,
    run_id: i64,
    token: &str,
    settlement: &Settlement<'_>,
) -> Result<()> {
    // A contact settled twice in one piece is in its last state (one upsert may not touch a
    // row twice).
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, c) in settlement.contacts.iter().enumerate() {
        last.insert(&c.email, i);
    }
    let contacts: Vec<_> = settlement
        .contacts
        .iter()
        .enumerate()
        .filter(|(i, c)| last[c.email.as_str()] == *i)
        .map(|(_, c)| c)
        .collect();
    let emails: Vec<&str> = contacts.iter().map(|c| c.email.as_str()).collect();
    let people: Vec<i64> = contacts.iter().map(|c| c.person as i64).collect();
    let digests: Vec<i64> = contacts.iter().map(|c| c.digest as i64).collect();
    let states: Vec<i16> = contacts.iter().map(|c| c.state as i16).collect();
    let (mut reason_emails, mut codes, mut messages, mut cleared) =
        (vec![], vec![], vec![], vec![]);
    for c in &contacts {
        match &c.reason {
            Some((code, message)) => {
                reason_emails.push(c.email.as_str());
                codes.push(code.as_str());
                messages.push(message.as_str());
            }
            None => cleared.push(c.email.as_str()),
        }
    }
    let issues = settlement.issues;
    let column = |f: fn(&crate::run::RunIssue) -> String| issues.iter().map(f).collect::<Vec<_>>();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // First, and only while this worker holds the run: the row lock taken here orders this
    // piece against a takeover's claim, which changes the run's generation.
    let held = tx
        .execute(
            "UPDATE runs SET counts = $2, expected_end = $4 WHERE id = $1 AND lease_token = $3",
            &[
                &run_id,
                &serde_json::to_string(settlement.counts)?,
                &token,
                &expected_end(&settlement.figures),
            ],
        )
        .await?;
    if held != 1 {
        return Err(NotTheHolder(run_id).into());
    }
    let f = &settlement.figures;
    tx.execute(
        "UPDATE run_attempts SET
             requests = CASE WHEN requests > $2 THEN requests ELSE $2 END,
             retries = CASE WHEN retries > $3 THEN retries ELSE $3 END,
             batches = $4, seconds = $5
         WHERE run_id = $1 AND attempt = (SELECT attempts FROM runs WHERE id = $1)",
        &[
            &run_id,
            &(f.requests as i64),
            &(f.retries as i64),
            &(f.batches as i64),
            &f.duration.as_secs_f64(),
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO sync_contacts (export_id, email, digest, state, run_id, person)
         SELECT $1, email, digest, state, $5, person
             FROM unnest($2::text[], $3::int8[], $4::int2[], $6::int8[])
                 AS t(email, digest, state, person)
         ON CONFLICT (export_id, email) DO UPDATE SET digest = excluded.digest,
             state = excluded.state, run_id = excluded.run_id, person = excluded.person",
        &[&export_id, &emails, &digests, &states, &run_id, &people],
    )
    .await?;
    // A reason keeps the time it first applied while the contact stays refused.
    tx.execute(
        "INSERT INTO sync_reasons (export_id, email, code, message, since)
         SELECT $1, email, code, message, $5
             FROM unnest($2::text[], $3::text[], $4::text[]) AS t(email, code, message)
         ON CONFLICT (export_id, email) DO UPDATE SET code = excluded.code,
             message = excluded.message",
        &[&export_id, &reason_emails, &codes, &messages, &now()],
    )
    .await?;
    tx.execute(
        "DELETE FROM sync_reasons WHERE export_id = $1 AND email = ANY($2::text[])",
        &[&export_id, &cleared],
    )
    .await?;
    let since: Vec<Option<&str>> = issues.iter().map(|i| i.since.as_deref()).collect();
    tx.execute(
        "INSERT INTO run_issues (run_id, batch, profile_id, email, kind, stage, code, message,
             since)
         SELECT $1, 0, profile_id, email, kind, stage, code, message, since
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                 $8::text[]) WITH ORDINALITY
                 AS t(profile_id, email, kind, stage, code, message, since, n)
             ORDER BY n",
        &[
            &run_id,
            &column(|i| i.profile_id.clone()),
            &column(|i| i.email.clone()),
            &column(|i| to_text(&i.kind)),
            &column(|i| to_text(&i.stage)),
            &column(|i| i.code.clone()),
            &column(|i| i.message.clone()),
            &since,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// When a run should end, from its latest figures (UTC, to the second).
fn expected_end(figures: &crate::run::Figures) -> Option<String> {
    let left = chrono::Duration::from_std(figures.left?).ok()?;
    Some((chrono::Utc::now() + left).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::run::{RunCounts, SettledContact};
    use crate::secret::Secret;
    use crate::state::{Access, Actor, MasterKey, NewConnection, NewExport, Role, Trigger};

    /// A state holding two exports.
    async fn two_exports() -> (tempfile::TempDir, Arc<State>, ExportRecord, ExportRecord) {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State::open(&dir.path().join("state.db")).unwrap());
        let actor = Actor {
            name: "ops".into(),
            role: Role::Administrator,
        };
        let credential = crate::secret::Credential::ApiKey(Secret::new("k".into()));
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
            .await
            .unwrap();
        let export = async |name| {
            state
                .add_export(
                    &NewExport {
                        name,
                        connection_id: connection.id,
                        settings: &[],
                        mapping: &crate::FieldMapping::parse(&["email=email"]).unwrap(),
                        segments: &["all".into()],
                        schedule: None,
                        leave_action: None,
                    },
                    &actor,
                )
                .await
                .unwrap()
        };
        let (a, b) = (export("a").await, export("b").await);
        (dir, state, a, b)
    }

    /// A run of `export`, and the fence it is started under.
    async fn run(state: &State, export: &ExportRecord) -> (i64, Fence) {
        let actor = Actor {
            name: "ops".into(),
            role: Role::Administrator,
        };
        let fence = Fence::for_life(format!("test-{}", export.id));
        let run = state
            .start_run(export, Trigger::OnDemand, &actor, false, Some(&fence))
            .await
            .unwrap();
        (run, fence)
    }

    fn settle(ledger: &RunLedger, contacts: Vec<SettledContact>) {
        for piece in contacts.chunks(1000) {
            ledger
                .settle(&Settlement {
                    contacts: piece,
                    issues: &[],
                    counts: &RunCounts::default(),
                    figures: Default::default(),
                })
                .unwrap();
        }
    }

    fn contact(i: u64, state: SyncState) -> SettledContact {
        SettledContact {
            email: format!("c{i}@x.io"),
            person: i + 1,
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
            .db
            .sqlite()
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM sync_log WHERE export_id = ?1",
                [export.id],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn the_log_folds_into_the_sync_state_and_a_contacts_latest_entry_wins() {
        let (_dir, state, a, b) = two_exports().await;
        let (run_a, fence_a) = run(&state, &a).await;
        let first = state.journal(&a, run_a, &fence_a);
        let n = 70_000;
        settle(
            &first,
            (0..n).map(|i| contact(i, SyncState::Created)).collect(),
        );
        // The piece that took the log past 65,536 entries folded it: the 4 pieces after it
        // are all it holds.
        assert_eq!(log_rows(&state, &a), 4_000);
        let (run_b, fence_b) = run(&state, &b).await;
        let other = state.journal(&b, run_b, &fence_b);
        settle(&other, vec![contact(0, SyncState::Updated)]);

        // A second run changes some, in the log over the folded state.
        let (run_a2, fence_a2) = run(&state, &a).await;
        let second = state.journal(&a, run_a2, &fence_a2);
        settle(
            &second,
            (0..10)
                .map(|i| contact(i, SyncState::Left))
                .chain((10..20).map(|i| contact(i, SyncState::Rejected)))
                .collect(),
        );
        let check = async |when: &str| {
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
                state.sync_counts(&a).await.unwrap(),
                vec![
                    (SyncState::Created, n - 20),
                    (SyncState::Rejected, 10),
                    (SyncState::Left, 10)
                ],
                "{when}"
            );
            let b_held = read(&state.sync_reader(&b, None));
            assert_eq!(b_held.len(), 1, "{when}: the other export's state");
            assert_eq!(b_held["c0@x.io"].1, SyncState::Updated, "{when}");
        };
        check("before folding").await;
        second.fold(&mut second.db()).unwrap();
        assert_eq!(log_rows(&state, &a), 0);
        assert_eq!(log_rows(&state, &b), 1, "folding is per export");
        check("after folding").await;

        // A removed export's sync state goes; the other's stays.
        let actor = Actor {
            name: "ops".into(),
            role: Role::Administrator,
        };
        state.remove_export("a", &actor).await.unwrap();
        assert!(read(&state.sync_reader(&a, None)).is_empty());
        assert_eq!(read(&state.sync_reader(&b, None)).len(), 1);
    }
}
