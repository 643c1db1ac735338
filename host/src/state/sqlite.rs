//! The SQLite engine: one database file on one machine, the embedded default. The export
//! lock is a lock file beside it, which the operating system releases the moment its process
//! ends, however it ends.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::create_private_dir;
use super::schema::{self, Engine};

/// Opens (creating if needed) the database at `path`, its schema brought up to date.
pub(super) fn open(path: &Path) -> Result<rusqlite::Connection> {
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
    Ok(db)
}

fn migrate(db: &rusqlite::Connection, path: &Path) -> Result<()> {
    // One migration per transaction, the version read inside it: two processes opening a new
    // state at once apply each migration once.
    loop {
        db.execute_batch("BEGIN IMMEDIATE")?;
        let version: u32 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let next = schema::steps(Engine::Sqlite, version)
            .with_context(|| format!("the state database {}", path.display()));
        let Some((to, sql)) = next.as_ref().map(|s| s.first()).unwrap_or(None) else {
            db.execute_batch("COMMIT")?;
            return next.map(drop);
        };
        let applied = db.execute_batch(&format!("{sql}; PRAGMA user_version = {to};"));
        match applied {
            Ok(()) => db.execute_batch("COMMIT")?,
            Err(e) => {
                db.execute_batch("ROLLBACK")?;
                return Err(e).with_context(|| {
                    format!("migrating {} to schema version {to}", path.display())
                });
            }
        }
    }
}

/// The lock file of an export's runs, beside the database.
fn lock_path(db_path: &Path, export_id: i64) -> PathBuf {
    let mut name = db_path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".export-{export_id}.lock"));
    db_path.with_file_name(name)
}

/// Takes an export's lock file; `None` when a process holds it.
pub(super) fn lock_export(db_path: &Path, export_id: i64) -> Result<Option<File>> {
    let path = lock_path(db_path, export_id);
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Whether some process holds an export's lock file.
pub(super) fn export_locked(db_path: &Path, export_id: i64) -> bool {
    match File::open(lock_path(db_path, export_id)) {
        Ok(file) => file.try_lock_shared().is_err(),
        Err(_) => false,
    }
}
