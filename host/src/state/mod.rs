//! What the host keeps between runs, in one SQLite database, one file a job: connections
//! (credentials sealed under the master key), exports and their run lock, runs with their
//! undelivered contacts, and each export's sync state; here, the database itself, its
//! migrations (versioned below), settings and connector approvals.

mod connections;
mod exports;
mod master_key;
mod runs;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

pub use connections::{
    ConnectionRecord, CredentialKind, NewConnection, StoredCredential, TokenRefresh,
};
pub use exports::{ExportLock, ExportRecord, NewExport};
pub use master_key::{MASTER_KEY_ENV, MasterKey};
pub use runs::{RunRecord, RunState, Trigger};
pub use sync::{RunLedger, SyncBasis};

use crate::approval::Approval;

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
    // 3: each export's sync state; a run's counts as one record; issues by stage; leave actions.
    r#"
    CREATE TABLE sync_contacts (
        export_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        digest INTEGER NOT NULL,
        state INTEGER NOT NULL,
        run_id INTEGER NOT NULL,
        PRIMARY KEY (export_id, email)
    ) WITHOUT ROWID;
    CREATE TABLE sync_reasons (
        export_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        since TEXT NOT NULL,
        PRIMARY KEY (export_id, email)
    ) WITHOUT ROWID;
    CREATE TABLE sync_basis (
        export_id INTEGER PRIMARY KEY,
        basis TEXT NOT NULL,
        run_id INTEGER NOT NULL
    );
    ALTER TABLE exports ADD COLUMN leave_action TEXT;
    ALTER TABLE runs ADD COLUMN counts TEXT;
    ALTER TABLE runs ADD COLUMN mode TEXT;
    ALTER TABLE runs ADD COLUMN leave_action TEXT;
    UPDATE runs SET counts = json_object('profiles', profiles, 'created', created,
        'updated', updated, 'suppressed', suppressed, 'rejected', rejected,
        'duplicates', duplicates, 'batches', batches)
        WHERE profiles > 0;
    ALTER TABLE run_issues ADD COLUMN stage TEXT NOT NULL DEFAULT 'sent';
    ALTER TABLE run_issues ADD COLUMN since TEXT;
    UPDATE run_issues SET stage = 'skipped', kind = 'invalid' WHERE code = 'missing-email';
    UPDATE run_issues SET stage = 'skipped' WHERE kind = 'duplicate';
    DROP TABLE run_batches;
    "#,
    // 4: settled contacts are appended to a log (cheap, in order) and folded into
    // sync_contacts in key order once the log grows past an eighth of it.
    r#"
    CREATE TABLE sync_log (
        seq INTEGER PRIMARY KEY,
        export_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        digest INTEGER NOT NULL,
        state INTEGER NOT NULL,
        run_id INTEGER NOT NULL
    );
    "#,
    // 5: the segment's size as the source knew it before reading.
    r#"
    ALTER TABLE runs ADD COLUMN segment_size INTEGER;
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
        db.pragma_update(None, "cache_size", -16_384)?;
        // Folding a sync log rewrites most of an export's sync state in one transaction; the
        // write-ahead log shrinks back to this size after each checkpoint.
        db.pragma_update(None, "journal_size_limit", 8 << 20)?;
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

pub(crate) fn json_column<T: serde::de::DeserializeOwned>(
    r: &Row,
    i: usize,
) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A serde enum's kebab-case name.
pub(crate) fn to_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => panic!("not a unit enum: {other:?}"),
    }
}

pub(crate) fn from_text<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Creates `dir` (and its parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))
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
