//! What the host keeps between runs, in one SQLite database: connections (credentials sealed
//! under the master key), exports, runs with their undelivered contacts, and the checkpoints
//! that let a run cut short resume. The schema's migrations are versioned in this file.

mod master_key;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

pub use master_key::{MASTER_KEY_ENV, MasterKey};

use crate::approval::Approval;
use crate::export::{BatchTally, RunJournal, SettledBatch};
use crate::report::RunIssue;
use crate::secret::Secret;

/// The schema, one migration per version (`PRAGMA user_version` counts those applied). Add
/// new versions at the end; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: connections, exports, runs, undelivered contacts, checkpoints.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE connections (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        connector TEXT NOT NULL,
        base_url TEXT,
        data_centre TEXT,
        credential_kind TEXT NOT NULL,
        credential BLOB,
        fingerprint TEXT NOT NULL,
        token_expires_at TEXT,
        access TEXT NOT NULL,
        privacy_accepted_by TEXT NOT NULL,
        privacy_accepted_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        checked_at TEXT,
        removed_by TEXT,
        removed_at TEXT
    );
    CREATE UNIQUE INDEX connections_by_name ON connections(name) WHERE removed_at IS NULL;
    CREATE TABLE exports (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        connection_id INTEGER NOT NULL REFERENCES connections(id),
        settings TEXT NOT NULL,
        mapping TEXT NOT NULL,
        segments TEXT NOT NULL,
        schedule TEXT,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        removed_by TEXT,
        removed_at TEXT
    );
    CREATE UNIQUE INDEX exports_by_name ON exports(name) WHERE removed_at IS NULL;
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        export_id INTEGER NOT NULL REFERENCES exports(id),
        trigger TEXT NOT NULL,
        started_by TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 1,
        profiles INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL DEFAULT 0,
        updated INTEGER NOT NULL DEFAULT 0,
        suppressed INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0,
        batches INTEGER NOT NULL DEFAULT 0,
        resumed_batches INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        retries INTEGER NOT NULL DEFAULT 0,
        seconds REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_by_export ON runs(export_id, id);
    CREATE TABLE run_batches (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        batch INTEGER NOT NULL,
        digest BLOB NOT NULL,
        profiles INTEGER NOT NULL,
        sent INTEGER NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        suppressed INTEGER NOT NULL,
        rejected INTEGER NOT NULL,
        duplicates INTEGER NOT NULL,
        PRIMARY KEY (run_id, batch)
    );
    CREATE TABLE run_issues (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        batch INTEGER NOT NULL,
        profile_id TEXT NOT NULL,
        email TEXT NOT NULL,
        kind TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX run_issues_by_run ON run_issues(run_id, batch);
    "#,
    // 2: administrators' approvals of connectors; what the host refused each run.
    r#"
    CREATE TABLE connector_approvals (
        connector TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        hosts TEXT NOT NULL,
        default_base_url TEXT NOT NULL,
        version TEXT NOT NULL,
        approved_by TEXT NOT NULL,
        approved_at TEXT NOT NULL
    );
    ALTER TABLE runs ADD COLUMN refusals TEXT NOT NULL DEFAULT '[]';
    "#,
];

/// The saved state. Safe to share between tasks and between processes (SQLite in WAL mode).
pub struct State {
    db: Mutex<rusqlite::Connection>,
    path: PathBuf,
}

/// Who acts: a name for the record, and a role for permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

/// The two roles of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Manages connections and may use every connection.
    Administrator,
    /// Builds and runs exports over the connections opened to contributors.
    Contributor,
}

/// Who may attach a connection to an export and run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Administrators only (the default).
    Administrators,
    /// Administrators and contributors.
    Contributors,
}

impl Access {
    /// Whether someone with `role` may use a connection with this access.
    pub fn permits(self, role: Role) -> bool {
        role == Role::Administrator || self == Access::Contributors
    }
}

/// How a connection authenticates (the secret itself is sealed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    ApiKey,
    OAuth,
}

/// A saved connection, without its credential.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    pub id: i64,
    pub name: String,
    pub connector: String,
    pub base_url: Option<String>,
    pub data_centre: Option<String>,
    pub credential_kind: CredentialKind,
    /// SHA-256 prefix of the credential, to tell credentials apart.
    pub fingerprint: String,
    /// When an OAuth access token expires, if the vendor said.
    pub token_expires_at: Option<String>,
    pub access: Access,
    pub privacy_accepted_by: String,
    pub privacy_accepted_at: String,
    pub created_by: String,
    pub created_at: String,
    /// When the vendor last accepted the credential.
    pub checked_at: Option<String>,
    pub removed_at: Option<String>,
}

/// A connection's credential, once unsealed.
pub struct StoredCredential {
    pub kind: CredentialKind,
    pub secret: Secret,
    /// For OAuth: the refresh token and the vendor's token endpoint, when the vendor issues them.
    pub refresh: Option<TokenRefresh>,
}

/// What the host needs to renew an expired OAuth access token.
#[derive(Clone)]
pub struct TokenRefresh {
    pub refresh_token: Secret,
    pub token_url: String,
}

/// The sealed form of [`StoredCredential`].
#[derive(Serialize, Deserialize)]
struct SealedCredential {
    secret: String,
    refresh_token: Option<String>,
    token_url: Option<String>,
}

/// A connection to save.
pub struct NewConnection<'a> {
    pub name: &'a str,
    pub connector: &'a str,
    pub base_url: Option<&'a str>,
    pub data_centre: Option<&'a str>,
    pub credential: &'a StoredCredential,
    pub token_expires_at: Option<String>,
    pub access: Access,
    pub checked_at: Option<String>,
}

/// A saved export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRecord {
    pub id: i64,
    pub name: String,
    pub connection_id: i64,
    pub connection: String,
    pub connector: String,
    pub settings: Vec<(String, String)>,
    /// `field=column` pairs.
    pub mapping: Vec<String>,
    pub segments: Vec<String>,
    /// A cron expression (UTC), when the export runs on a schedule.
    pub schedule: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub removed_at: Option<String>,
}

/// An export to save.
pub struct NewExport<'a> {
    pub name: &'a str,
    pub connection_id: i64,
    pub settings: &'a [(String, String)],
    pub mapping: &'a [String],
    pub segments: &'a [String],
    pub schedule: Option<&'a str>,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    /// Stopped before the end (a shutdown, a crash); the next run of the export resumes it.
    Interrupted,
    Succeeded,
    Failed,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> RunState {
        match s {
            "running" => RunState::Running,
            "interrupted" => RunState::Interrupted,
            "succeeded" => RunState::Succeeded,
            _ => RunState::Failed,
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    OnDemand,
    Schedule,
}

/// One run of an export, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub export_id: i64,
    pub export: String,
    pub connector: String,
    pub trigger: String,
    pub started_by: String,
    pub status: RunState,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// How many times the run was started (1, plus one per resumption).
    pub attempts: u64,
    pub profiles: u64,
    pub sent: u64,
    pub created: u64,
    pub updated: u64,
    pub suppressed: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub batches: u64,
    pub resumed_batches: u64,
    pub requests: u64,
    pub retries: u64,
    pub seconds: f64,
    /// What the host refused the connector during the run, in words.
    pub refusals: Vec<String>,
}

/// Held while a run of an export is under way; another process or task cannot start one.
/// The operating system releases it when the process ends, however it ends.
pub struct ExportLock {
    _file: File,
}

/// The current time, as stored (RFC 3339, UTC).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl State {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<State> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let db = rusqlite::Connection::open(path)
            .with_context(|| format!("cannot open the state database {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        db.busy_timeout(Duration::from_secs(30))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // In WAL mode, NORMAL keeps every commit through a process crash (a checkpoint is on
        // disk once settle returns); only a power cut may lose the last commits.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&db, path)?;
        Ok(State {
            db: Mutex::new(db),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> MutexGuard<'_, rusqlite::Connection> {
        self.db.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Checks `key` is the one this state's credentials are sealed with; the first key used
    /// becomes that key.
    pub fn check_master_key(&self, key: &MasterKey) -> Result<()> {
        let db = self.db();
        let known: Option<String> = db
            .query_row(
                "SELECT value FROM meta WHERE key = 'master-key-id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match known {
            Some(id) if id == key.id() => Ok(()),
            Some(id) => bail!(
                "wrong master key: this state's credentials are sealed with key {id}, but the key given is {}; set {MASTER_KEY_ENV} or --master-key-file to the key this state was created with",
                key.id()
            ),
            None => {
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('master-key-id', ?1)",
                    [key.id()],
                )?;
                Ok(())
            }
        }
    }

    // ---- settings ----

    /// A setting's value, if set.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .db()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.db().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// Every setting, by key.
    pub fn settings(&self) -> Result<Vec<(String, String)>> {
        let db = self.db();
        let mut q = db.prepare("SELECT key, value FROM settings ORDER BY key")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- connector approvals ----

    /// Records an administrator's approval of a connector, replacing an earlier one.
    pub fn approve_connector(&self, approval: &Approval) -> Result<()> {
        self.db().execute(
            "INSERT OR REPLACE INTO connector_approvals (connector, digest, hosts,
                 default_base_url, version, approved_by, approved_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                approval.connector,
                approval.digest,
                serde_json::to_string(&approval.hosts)?,
                approval.default_base_url,
                approval.version,
                approval.approved_by,
                approval.approved_at,
            ],
        )?;
        Ok(())
    }

    /// Withdraws a connector's approval; whether it had one.
    pub fn revoke_connector(&self, connector: &str) -> Result<bool> {
        let removed = self.db().execute(
            "DELETE FROM connector_approvals WHERE connector = ?1",
            [connector],
        )?;
        Ok(removed > 0)
    }

    /// The approval of a connector, if it has one.
    pub fn approval(&self, connector: &str) -> Result<Option<Approval>> {
        Ok(self
            .db()
            .query_row(
                &format!("{APPROVAL_COLUMNS} WHERE connector = ?1"),
                [connector],
                approval_row,
            )
            .optional()?)
    }

    /// Every approval, by connector id.
    pub fn approvals(&self) -> Result<Vec<Approval>> {
        let db = self.db();
        let mut q = db.prepare(&format!("{APPROVAL_COLUMNS} ORDER BY connector"))?;
        let rows = q.query_map([], approval_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- connections ----

    /// Saves a connection, sealing its credential under `key`.
    pub fn add_connection(
        &self,
        key: &MasterKey,
        new: &NewConnection,
        actor: &Actor,
    ) -> Result<ConnectionRecord> {
        let db = self.db();
        let taken: bool = db.query_row(
            "SELECT EXISTS (SELECT 1 FROM connections WHERE name = ?1 AND removed_at IS NULL)",
            [new.name],
            |r| r.get(0),
        )?;
        if taken {
            bail!("a connection named `{}` already exists", new.name);
        }
        let now = now();
        db.execute(
            "INSERT INTO connections (name, connector, base_url, data_centre, credential_kind,
                 credential, fingerprint, token_expires_at, access, privacy_accepted_by,
                 privacy_accepted_at, created_by, created_at, checked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10, ?11, ?12)",
            params![
                new.name,
                new.connector,
                new.base_url,
                new.data_centre,
                to_text(&new.credential.kind),
                seal_credential(key, new.name, new.credential)?,
                new.credential.secret.fingerprint(),
                new.token_expires_at,
                to_text(&new.access),
                actor.name,
                now,
                new.checked_at,
            ],
        )?;
        drop(db);
        self.connection(new.name)
    }

    /// The active connection called `name`.
    pub fn connection(&self, name: &str) -> Result<ConnectionRecord> {
        self.db()
            .query_row(
                &format!("{CONNECTION_COLUMNS} WHERE name = ?1 AND removed_at IS NULL"),
                [name],
                connection_row,
            )
            .optional()?
            .with_context(|| format!("there is no connection named `{name}`"))
    }

    /// A connection by id, removed or not (for history).
    pub fn connection_by_id(&self, id: i64) -> Result<ConnectionRecord> {
        Ok(self.db().query_row(
            &format!("{CONNECTION_COLUMNS} WHERE id = ?1"),
            [id],
            connection_row,
        )?)
    }

    /// The active connections, by name.
    pub fn connections(&self) -> Result<Vec<ConnectionRecord>> {
        let db = self.db();
        let mut q = db.prepare(&format!(
            "{CONNECTION_COLUMNS} WHERE removed_at IS NULL ORDER BY name"
        ))?;
        let rows = q.query_map([], connection_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Unseals a connection's credential.
    pub fn credential(
        &self,
        key: &MasterKey,
        connection: &ConnectionRecord,
    ) -> Result<StoredCredential> {
        let sealed: Option<Vec<u8>> = self.db().query_row(
            "SELECT credential FROM connections WHERE id = ?1",
            [connection.id],
            |r| r.get(0),
        )?;
        let sealed = sealed.with_context(|| {
            format!(
                "connection `{}` was removed; its credential was erased",
                connection.name
            )
        })?;
        let plain = key
            .open(&sealed, &credential_context(&connection.name))
            .with_context(|| format!("connection `{}`", connection.name))?;
        let sealed: SealedCredential = serde_json::from_slice(&plain)?;
        Ok(StoredCredential {
            kind: connection.credential_kind,
            secret: Secret::new(sealed.secret),
            refresh: match (sealed.refresh_token, sealed.token_url) {
                (Some(token), Some(url)) => Some(TokenRefresh {
                    refresh_token: Secret::new(token),
                    token_url: url,
                }),
                _ => None,
            },
        })
    }

    /// Replaces a connection's credential (after an OAuth refresh).
    pub fn replace_credential(
        &self,
        key: &MasterKey,
        connection: &ConnectionRecord,
        credential: &StoredCredential,
        token_expires_at: Option<String>,
    ) -> Result<()> {
        self.db().execute(
            "UPDATE connections SET credential = ?2, fingerprint = ?3, token_expires_at = ?4,
                 checked_at = ?5 WHERE id = ?1",
            params![
                connection.id,
                seal_credential(key, &connection.name, credential)?,
                credential.secret.fingerprint(),
                token_expires_at,
                now(),
            ],
        )?;
        Ok(())
    }

    /// Notes that the vendor accepted a connection's credential now.
    pub fn mark_checked(&self, connection_id: i64) -> Result<()> {
        self.db().execute(
            "UPDATE connections SET checked_at = ?2 WHERE id = ?1",
            params![connection_id, now()],
        )?;
        Ok(())
    }

    /// Removes a connection and the exports that use it (their schedules stop). The sealed
    /// credential is erased; the records stay so that run history remains readable. Returns
    /// the names of the exports removed with it.
    pub fn remove_connection(&self, name: &str, actor: &Actor) -> Result<Vec<String>> {
        let connection = self.connection(name)?;
        let mut db = self.db();
        let tx = db.transaction()?;
        let exports: Vec<String> = {
            let mut q = tx.prepare(
                "SELECT name FROM exports WHERE connection_id = ?1 AND removed_at IS NULL ORDER BY name",
            )?;
            q.query_map([connection.id], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let now = now();
        tx.execute(
            "UPDATE exports SET removed_at = ?2, removed_by = ?3
             WHERE connection_id = ?1 AND removed_at IS NULL",
            params![connection.id, now, actor.name],
        )?;
        tx.execute(
            "UPDATE connections SET removed_at = ?2, removed_by = ?3, credential = NULL WHERE id = ?1",
            params![connection.id, now, actor.name],
        )?;
        tx.commit()?;
        Ok(exports)
    }

    // ---- exports ----

    /// Saves an export.
    pub fn add_export(&self, new: &NewExport, actor: &Actor) -> Result<ExportRecord> {
        let db = self.db();
        let taken: bool = db.query_row(
            "SELECT EXISTS (SELECT 1 FROM exports WHERE name = ?1 AND removed_at IS NULL)",
            [new.name],
            |r| r.get(0),
        )?;
        if taken {
            bail!("an export named `{}` already exists", new.name);
        }
        db.execute(
            "INSERT INTO exports (name, connection_id, settings, mapping, segments, schedule,
                 created_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                new.name,
                new.connection_id,
                serde_json::to_string(new.settings)?,
                serde_json::to_string(new.mapping)?,
                serde_json::to_string(new.segments)?,
                new.schedule,
                actor.name,
                now(),
            ],
        )?;
        drop(db);
        self.export(new.name)
    }

    /// The active export called `name`.
    pub fn export(&self, name: &str) -> Result<ExportRecord> {
        self.db()
            .query_row(
                &format!("{EXPORT_COLUMNS} WHERE e.name = ?1 AND e.removed_at IS NULL"),
                [name],
                export_row,
            )
            .optional()?
            .with_context(|| format!("there is no export named `{name}`"))
    }

    /// The active exports, by name.
    pub fn exports(&self) -> Result<Vec<ExportRecord>> {
        let db = self.db();
        let mut q = db.prepare(&format!(
            "{EXPORT_COLUMNS} WHERE e.removed_at IS NULL ORDER BY e.name"
        ))?;
        let rows = q.query_map([], export_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes an export (and so its schedule); its runs stay readable.
    pub fn remove_export(&self, name: &str, actor: &Actor) -> Result<()> {
        let export = self.export(name)?;
        self.db().execute(
            "UPDATE exports SET removed_at = ?2, removed_by = ?3 WHERE id = ?1",
            params![export.id, now(), actor.name],
        )?;
        Ok(())
    }

    /// Takes the run lock of an export; `None` when a run is already under way.
    pub fn lock_export(&self, export: &ExportRecord) -> Result<Option<ExportLock>> {
        let path = self.lock_path(export.id);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ExportLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    fn lock_path(&self, export_id: i64) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".export-{export_id}.lock"));
        self.path.with_file_name(name)
    }

    /// Whether a run of the export is under way in some process.
    fn export_running(&self, export_id: i64) -> bool {
        match File::open(self.lock_path(export_id)) {
            Ok(file) => match file.try_lock_shared() {
                Ok(()) => false,
                Err(_) => true,
            },
            Err(_) => false,
        }
    }

    // ---- runs ----

    /// Starts a run record.
    pub fn start_run(&self, export: &ExportRecord, trigger: Trigger, actor: &Actor) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO runs (export_id, trigger, started_by, status, started_at)
             VALUES (?1, ?2, ?3, 'running', ?4)",
            params![export.id, to_text(&trigger), actor.name, now()],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// The run of `export` that a crash or a shutdown cut short, if any: the next run resumes it.
    pub fn unfinished_run(&self, export: &ExportRecord) -> Result<Option<i64>> {
        Ok(self
            .db()
            .query_row(
                "SELECT id FROM runs WHERE export_id = ?1 AND status IN ('running', 'interrupted')
                 ORDER BY id DESC LIMIT 1",
                [export.id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Marks a run as started again (its journal keeps the batches it settled).
    pub fn resume_run(&self, run_id: i64) -> Result<()> {
        self.db().execute(
            "UPDATE runs SET status = 'running', attempts = attempts + 1, error = NULL,
                 finished_at = NULL WHERE id = ?1",
            [run_id],
        )?;
        Ok(())
    }

    /// Gives up an unfinished run so the next starts afresh (its record stays).
    pub fn abandon_run(&self, run_id: i64, why: &str) -> Result<()> {
        self.db().execute(
            "UPDATE runs SET status = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1",
            params![run_id, why, now()],
        )?;
        Ok(())
    }

    /// The journal of a run: its settled batches, and where new ones are recorded.
    pub fn journal(self: &std::sync::Arc<Self>, run_id: i64) -> Result<RunLedger> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT batch, digest, profiles, sent, created, updated, suppressed, rejected, duplicates
             FROM run_batches WHERE run_id = ?1",
        )?;
        let settled = q
            .query_map([run_id], |r| {
                let digest: Vec<u8> = r.get(1)?;
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    (
                        digest,
                        BatchTally {
                            profiles: r.get(2)?,
                            sent: r.get(3)?,
                            created: r.get(4)?,
                            updated: r.get(5)?,
                            suppressed: r.get(6)?,
                            rejected: r.get(7)?,
                            duplicates: r.get(8)?,
                        },
                    ),
                ))
            })?
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok(RunLedger {
            state: self.clone(),
            run_id,
            settled,
        })
    }

    /// Records how a run attempt ended. The counts come from its settled batches.
    pub fn finish_run(
        &self,
        run_id: i64,
        status: RunState,
        error: Option<&str>,
        report: Option<&crate::RunReport>,
    ) -> Result<()> {
        let (requests, retries, resumed, seconds) = report
            .map(|r| {
                (
                    r.requests,
                    r.retries,
                    r.resumed_batches,
                    r.duration.as_secs_f64(),
                )
            })
            .unwrap_or_default();
        let db = self.db();
        // Refusals of every attempt of the run, each once.
        let known: String =
            db.query_row("SELECT refusals FROM runs WHERE id = ?1", [run_id], |r| {
                r.get(0)
            })?;
        let mut refusals: Vec<String> = serde_json::from_str(&known).unwrap_or_default();
        for refusal in report.map(|r| r.refusals.as_slice()).unwrap_or_default() {
            if !refusals.contains(refusal) {
                refusals.push(refusal.clone());
            }
        }
        db.execute(
            "UPDATE runs SET status = ?2, error = ?3, finished_at = ?4,
                 requests = requests + ?5, retries = retries + ?6, resumed_batches = ?7,
                 seconds = seconds + ?8, refusals = ?9
             WHERE id = ?1",
            params![
                run_id,
                status.as_str(),
                error,
                (status != RunState::Running && status != RunState::Interrupted).then(now),
                requests,
                retries,
                resumed,
                seconds,
                serde_json::to_string(&refusals)?,
            ],
        )?;
        Ok(())
    }

    /// Records a run that was asked for but could not start (its connector unapproved, its
    /// lock file unavailable...), so that the history says why nothing happened.
    pub fn record_refused_run(
        &self,
        export: &ExportRecord,
        trigger: Trigger,
        actor: &Actor,
        why: &str,
    ) -> Result<i64> {
        let run_id = self.start_run(export, trigger, actor)?;
        self.finish_run(run_id, RunState::Failed, Some(why), None)?;
        Ok(run_id)
    }

    /// One run.
    pub fn run(&self, run_id: i64) -> Result<RunRecord> {
        let run = self
            .db()
            .query_row(&format!("{RUN_COLUMNS} WHERE r.id = ?1"), [run_id], run_row)
            .optional()?
            .with_context(|| format!("there is no run {run_id}"))?;
        Ok(self.with_liveness(run))
    }

    /// The latest runs, newest first, of one export (by name, removed ones included) or all.
    pub fn runs(&self, export: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let runs: Vec<RunRecord> = {
            let db = self.db();
            let mut q = db.prepare(&format!(
                "{RUN_COLUMNS} WHERE (?1 IS NULL OR e.name = ?1) ORDER BY r.id DESC LIMIT ?2"
            ))?;
            q.query_map(params![export, limit as i64], run_row)?
                .collect::<Result<_, _>>()?
        };
        if let Some(name) = export
            && runs.is_empty()
        {
            let known: bool = self.db().query_row(
                "SELECT EXISTS (SELECT 1 FROM exports WHERE name = ?1)",
                [name],
                |r| r.get(0),
            )?;
            if !known {
                bail!("there is no export named `{name}`");
            }
        }
        Ok(runs.into_iter().map(|r| self.with_liveness(r)).collect())
    }

    /// A run recorded as running whose process is gone was cut short.
    fn with_liveness(&self, mut run: RunRecord) -> RunRecord {
        if run.status == RunState::Running && !self.export_running(run.export_id) {
            run.status = RunState::Interrupted;
        }
        run
    }

    /// Calls `each` for every contact of a run that was not delivered, in stream order.
    pub fn for_each_issue(
        &self,
        run_id: i64,
        mut each: impl FnMut(RunIssue) -> Result<()>,
    ) -> Result<()> {
        self.run(run_id)?;
        let db = self.db();
        let mut q = db.prepare(
            "SELECT profile_id, email, kind, code, message FROM run_issues
             WHERE run_id = ?1 ORDER BY batch, rowid",
        )?;
        let mut rows = q.query([run_id])?;
        while let Some(row) = rows.next()? {
            let kind: String = row.get(2)?;
            each(RunIssue {
                profile_id: row.get(0)?,
                email: row.get(1)?,
                kind: serde_json::from_value(serde_json::Value::String(kind))?,
                code: row.get(3)?,
                message: row.get(4)?,
            })?;
        }
        Ok(())
    }
}

/// A run's journal in the state database.
pub struct RunLedger {
    state: std::sync::Arc<State>,
    run_id: i64,
    settled: HashMap<u64, (Vec<u8>, BatchTally)>,
}

impl RunJournal for RunLedger {
    fn settled(&self, index: u64, digest: [u8; 16]) -> Option<BatchTally> {
        self.settled
            .get(&index)
            .filter(|(known, _)| known.as_slice() == digest)
            .map(|(_, tally)| *tally)
    }

    fn settle(&self, batch: &SettledBatch) -> Result<()> {
        let mut db = self.state.db();
        let tx = db.transaction()?;
        let t = &batch.tally;
        // A batch sent again (its profiles changed since an earlier attempt) replaces its record.
        tx.execute(
            "DELETE FROM run_issues WHERE run_id = ?1 AND batch = ?2",
            params![self.run_id, batch.index as i64],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO run_batches (run_id, batch, digest, profiles, sent, created,
                 updated, suppressed, rejected, duplicates)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                self.run_id,
                batch.index as i64,
                batch.digest.as_slice(),
                t.profiles,
                t.sent,
                t.created,
                t.updated,
                t.suppressed,
                t.rejected,
                t.duplicates
            ],
        )?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO run_issues (run_id, batch, profile_id, email, kind, code, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for issue in batch.issues {
                insert.execute(params![
                    self.run_id,
                    batch.index as i64,
                    issue.profile_id,
                    issue.email,
                    to_text(&issue.kind),
                    issue.code,
                    issue.message
                ])?;
            }
        }
        tx.execute(
            "UPDATE runs SET (profiles, sent, created, updated, suppressed, rejected, duplicates,
                 batches) = (SELECT TOTAL(profiles), TOTAL(sent), TOTAL(created), TOTAL(updated),
                 TOTAL(suppressed), TOTAL(rejected), TOTAL(duplicates), COUNT(*) FILTER (WHERE sent > 0)
                 FROM run_batches WHERE run_id = ?1)
             WHERE id = ?1",
            [self.run_id],
        )?;
        tx.commit()?;
        Ok(())
    }
}

const APPROVAL_COLUMNS: &str = "SELECT connector, digest, hosts, default_base_url, version,
    approved_by, approved_at FROM connector_approvals";

fn approval_row(r: &Row) -> rusqlite::Result<Approval> {
    Ok(Approval {
        connector: r.get(0)?,
        digest: r.get(1)?,
        hosts: json_column(r, 2)?,
        default_base_url: r.get(3)?,
        version: r.get(4)?,
        approved_by: r.get(5)?,
        approved_at: r.get(6)?,
    })
}

const CONNECTION_COLUMNS: &str = "SELECT id, name, connector, base_url, data_centre,
    credential_kind, fingerprint, token_expires_at, access, privacy_accepted_by,
    privacy_accepted_at, created_by, created_at, checked_at, removed_at FROM connections";

fn connection_row(r: &Row) -> rusqlite::Result<ConnectionRecord> {
    Ok(ConnectionRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        connector: r.get(2)?,
        base_url: r.get(3)?,
        data_centre: r.get(4)?,
        credential_kind: from_text(&r.get::<_, String>(5)?)?,
        fingerprint: r.get(6)?,
        token_expires_at: r.get(7)?,
        access: from_text(&r.get::<_, String>(8)?)?,
        privacy_accepted_by: r.get(9)?,
        privacy_accepted_at: r.get(10)?,
        created_by: r.get(11)?,
        created_at: r.get(12)?,
        checked_at: r.get(13)?,
        removed_at: r.get(14)?,
    })
}

const EXPORT_COLUMNS: &str = "SELECT e.id, e.name, e.connection_id, c.name, c.connector,
    e.settings, e.mapping, e.segments, e.schedule, e.created_by, e.created_at, e.removed_at
    FROM exports e JOIN connections c ON c.id = e.connection_id";

fn export_row(r: &Row) -> rusqlite::Result<ExportRecord> {
    Ok(ExportRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        connection_id: r.get(2)?,
        connection: r.get(3)?,
        connector: r.get(4)?,
        settings: json_column(r, 5)?,
        mapping: json_column(r, 6)?,
        segments: json_column(r, 7)?,
        schedule: r.get(8)?,
        created_by: r.get(9)?,
        created_at: r.get(10)?,
        removed_at: r.get(11)?,
    })
}

const RUN_COLUMNS: &str = "SELECT r.id, r.export_id, e.name, c.connector, r.trigger,
    r.started_by, r.status, r.error, r.started_at, r.finished_at, r.attempts, r.profiles,
    r.sent, r.created, r.updated, r.suppressed, r.rejected, r.duplicates, r.batches,
    r.resumed_batches, r.requests, r.retries, r.seconds, r.refusals
    FROM runs r JOIN exports e ON e.id = r.export_id JOIN connections c ON c.id = e.connection_id";

fn run_row(r: &Row) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        export_id: r.get(1)?,
        export: r.get(2)?,
        connector: r.get(3)?,
        trigger: r.get(4)?,
        started_by: r.get(5)?,
        status: RunState::parse(&r.get::<_, String>(6)?),
        error: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        attempts: r.get(10)?,
        profiles: r.get(11)?,
        sent: r.get(12)?,
        created: r.get(13)?,
        updated: r.get(14)?,
        suppressed: r.get(15)?,
        rejected: r.get(16)?,
        duplicates: r.get(17)?,
        batches: r.get(18)?,
        resumed_batches: r.get(19)?,
        requests: r.get(20)?,
        retries: r.get(21)?,
        seconds: r.get(22)?,
        refusals: json_column(r, 23)?,
    })
}

fn json_column<T: serde::de::DeserializeOwned>(r: &Row, i: usize) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A serde enum's kebab-case name.
fn to_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => panic!("not a unit enum: {other:?}"),
    }
}

fn from_text<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The AEAD context of a connection's credential: a sealed credential cannot be moved to
/// another connection.
fn credential_context(name: &str) -> Vec<u8> {
    format!("cdp connection credential\0{name}").into_bytes()
}

fn seal_credential(key: &MasterKey, name: &str, credential: &StoredCredential) -> Result<Vec<u8>> {
    let plain = serde_json::to_vec(&SealedCredential {
        secret: credential.secret.expose().to_string(),
        refresh_token: credential
            .refresh
            .as_ref()
            .map(|r| r.refresh_token.expose().to_string()),
        token_url: credential.refresh.as_ref().map(|r| r.token_url.clone()),
    })?;
    Ok(key.seal(&plain, &credential_context(name)))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))
}

fn migrate(db: &rusqlite::Connection, path: &Path) -> Result<()> {
    // One migration per transaction, the version read inside it: two processes opening a new
    // state at once apply each migration once.
    loop {
        db.execute_batch("BEGIN IMMEDIATE")?;
        let version: usize = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let Some(sql) = MIGRATIONS.get(version) else {
            db.execute_batch("COMMIT")?;
            if version > MIGRATIONS.len() {
                bail!(
                    "the state database {} has schema version {version}, newer than this connector-host knows ({}); use a newer connector-host",
                    path.display(),
                    MIGRATIONS.len()
                );
            }
            return Ok(());
        };
        let applied = db.execute_batch(&format!("{sql}; PRAGMA user_version = {};", version + 1));
        match applied {
            Ok(()) => db.execute_batch("COMMIT")?,
            Err(e) => {
                db.execute_batch("ROLLBACK")?;
                return Err(e).with_context(|| {
                    format!(
                        "migrating {} to schema version {}",
                        path.display(),
                        version + 1
                    )
                });
            }
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
