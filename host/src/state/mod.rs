//! What the host keeps between runs: connections (credentials sealed under the master key),
//! exports and their run lock, runs with their undelivered contacts and the queue of runs
//! waiting for a worker, each export's sync state, settings and connector approvals.
//!
//! One repository a job (`connections`, `exports`, `runs`, `queue`, `sync`, `settings`), each
//! written once over [`db`], and two engines beneath: SQLite (`sqlite`: one file on one
//! machine, the default) and PostgreSQL (`postgres`: one database for many workers on many
//! machines). What only one engine can do well (a run's journal, export leases, claiming
//! queued runs) is that engine's own.

mod connections;
pub(crate) mod db;
mod exports;
mod journal;
mod keeper;
mod legacy;
mod master_key;
mod oauth_apps;
mod people;
mod postgres;
mod queue;
mod runs;
mod schema;
mod settings;
mod sqlite;
mod sync;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::access::{Access, Actor, Role};
use crate::pg::{postgres_config, redacted};
pub use connections::{ConnectionRecord, NewConnection};
pub use exports::{ExportLock, ExportRecord, NewExport};

pub use master_key::{MASTER_KEY_ENV, MasterKey};
pub use people::{
    AuditEntry, MIN_PASSWORD_CHARS, SESSION_HOURS, Session, TOKEN_PREFIX, TokenInfo, User,
    random_token,
};
pub use queue::Claim;
pub use runs::{RunAttempt, RunRecord, RunState, Trigger};
pub use settings::{LEASE_SECONDS_SETTING, lease_term_of};
pub use sync::SyncBasis;

use db::{Db, params};

/// The saved state, in the engine it was opened with. Safe to share between tasks, and
/// between processes (SQLite in WAL mode on one machine; PostgreSQL from any number).
pub struct State {
    db: Db,
    location: Location,
    /// This process's name in the run history and in leases: `host:pid` unless named.
    worker: String,
    /// PostgreSQL: the vendor accounts' slots, made on first use.
    pg_slots: std::sync::OnceLock<std::sync::Arc<postgres::PgSlots>>,
    /// PostgreSQL: how to connect (for the keeper's own connection), and the keeper of this
    /// process's leases and slots, started on first use.
    pg_config: Option<tokio_postgres::Config>,
    keeper: std::sync::OnceLock<std::sync::Arc<keeper::Keeper>>,
}

/// Where the state is.
enum Location {
    Sqlite(PathBuf),
    /// The URL with its password hidden.
    Postgres(String),
}

/// The current time, as stored (RFC 3339, UTC).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl State {
    /// Opens (creating if needed) the SQLite database at `path` and brings its schema up to
    /// date.
    pub fn open(path: &Path) -> Result<State> {
        let db = sqlite::open(path)?;
        Ok(State {
            db: Db::Sqlite(Mutex::new(db)),
            location: Location::Sqlite(path.to_path_buf()),
            worker: default_worker(),
            pg_slots: Default::default(),
            pg_config: None,
            keeper: Default::default(),
        })
    }

    /// Opens the state at `location`: a `postgres://` (or `postgresql://`) URL, else a
    /// directory holding (or to hold) the SQLite database `state.db`.
    pub async fn connect(location: &str) -> Result<State> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            let pool = postgres::connect(location).await?;
            Ok(State {
                db: Db::Postgres(pool),
                location: Location::Postgres(redacted(location)),
                worker: default_worker(),
                pg_slots: Default::default(),
                pg_config: Some(postgres_config(location)?),
                keeper: Default::default(),
            })
        } else if location.contains("://") {
            bail!(
                "`{}` is neither a directory nor a postgres:// URL; the state is kept in SQLite (give a directory) or PostgreSQL (give a postgres:// URL)",
                redacted(location)
            )
        } else {
            State::open(&Path::new(location).join("state.db"))
        }
    }

    /// Names this process in the run history and in the leases it takes.
    pub fn with_worker(mut self, name: &str) -> State {
        self.worker = name.to_string();
        self
    }

    /// This process's name in the run history and in leases.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The SQLite database file, for the SQLite engine.
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::Sqlite(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }

    /// Where the state is, fit to print (a PostgreSQL URL without its password).
    pub fn location(&self) -> String {
        match &self.location {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => url.clone(),
        }
    }

    /// Where the slots of vendor accounts are counted: in this process (SQLite, one machine),
    /// or in the database, across every worker (PostgreSQL).
    pub fn account_slots(&self) -> std::sync::Arc<dyn crate::broker::AccountSlots> {
        match &self.db {
            Db::Sqlite(_) => crate::broker::ProcessSlots::shared(),
            Db::Postgres(pool) => match self.keeper() {
                Ok(keeper) => self
                    .pg_slots
                    .get_or_init(|| {
                        std::sync::Arc::new(postgres::PgSlots::new(
                            pool.clone(),
                            &self.worker,
                            keeper,
                        ))
                    })
                    .clone(),
                // Without a keeper thread, slots could not outlive a term: the process counts
                // its own requests only (it logs why).
                Err(e) => {
                    tracing::error!("vendor account slots are counted in this process only: {e:#}");
                    crate::broker::ProcessSlots::shared()
                }
            },
        }
    }

    /// PostgreSQL: the keeper of this process's leases and slots.
    fn keeper(&self) -> Result<std::sync::Arc<keeper::Keeper>> {
        if let Some(keeper) = self.keeper.get() {
            return Ok(keeper.clone());
        }
        let config = self
            .pg_config
            .clone()
            .context("leases are kept on PostgreSQL only")?;
        let keeper = std::sync::Arc::new(keeper::Keeper::start(config)?);
        Ok(self.keeper.get_or_init(|| keeper).clone())
    }

    /// Whether the state is shared by workers on several machines (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.db.is_postgres()
    }

    /// Checks `key` is the one this state's credentials are sealed with; the first key used
    /// becomes that key.
    pub async fn check_master_key(&self, key: &MasterKey) -> Result<()> {
        // Two processes starting at once with different keys: one insert wins, both read it.
        self.db
            .execute(
                "INSERT INTO meta (key, value) VALUES ('master-key-id', ?1) ON CONFLICT (key) DO NOTHING",
                params![key.id()],
            )
            .await?;
        let known: String = self
            .db
            .query_one("SELECT value FROM meta WHERE key = 'master-key-id'", vec![])
            .await?
            .get(0)?;
        if known != key.id() {
            bail!(
                "wrong master key: this state's credentials are sealed with key {known}, but the key given is {}; set {MASTER_KEY_ENV} or --master-key-file to the key this state was created with",
                key.id()
            );
        }
        Ok(())
    }
}

/// `host:pid`.
fn default_worker() -> String {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let host = if unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0 {
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        String::from_utf8_lossy(&name[..end]).into_owned()
    } else {
        "localhost".into()
    };
    format!("{host}:{}", std::process::id())
}

/// A serde enum's kebab-case name.
pub(crate) fn to_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => panic!("not a unit enum: {other:?}"),
    }
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

#[cfg(test)]
mod tests;
