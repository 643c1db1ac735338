//! Saved exports, and the lock that keeps one run of an export at a time across processes.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Actor, State, json_column, now};

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
    /// What happens to contacts that left the segment: a leave action of the connector.
    pub leave_action: Option<String>,
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
    pub leave_action: Option<&'a str>,
}

/// Held while a run of an export is under way; another process or task cannot start one.
/// The operating system releases it when the process ends, however it ends.
pub struct ExportLock {
    _file: File,
}

impl State {
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
                 created_by, created_at, leave_action)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                new.name,
                new.connection_id,
                serde_json::to_string(new.settings)?,
                serde_json::to_string(new.mapping)?,
                serde_json::to_string(new.segments)?,
                new.schedule,
                actor.name,
                now(),
                new.leave_action,
            ],
        )?;
        drop(db);
        self.export(new.name)
    }

    /// Replaces what an export sends and when (its name and connection stay).
    pub fn update_export(&self, id: i64, new: &NewExport) -> Result<()> {
        self.db().execute(
            "UPDATE exports SET settings = ?2, mapping = ?3, segments = ?4, schedule = ?5,
                 leave_action = ?6 WHERE id = ?1",
            params![
                id,
                serde_json::to_string(new.settings)?,
                serde_json::to_string(new.mapping)?,
                serde_json::to_string(new.segments)?,
                new.schedule,
                new.leave_action,
            ],
        )?;
        Ok(())
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
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE exports SET removed_at = ?2, removed_by = ?3 WHERE id = ?1",
            params![export.id, now(), actor.name],
        )?;
        // Its sync state can serve no run again; its run history stays readable.
        for table in ["sync_contacts", "sync_log", "sync_reasons", "sync_basis"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE export_id = ?1"),
                [export.id],
            )?;
        }
        tx.commit()?;
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
    pub(super) fn export_running(&self, export_id: i64) -> bool {
        match File::open(self.lock_path(export_id)) {
            Ok(file) => match file.try_lock_shared() {
                Ok(()) => false,
                Err(_) => true,
            },
            Err(_) => false,
        }
    }
}

const EXPORT_COLUMNS: &str = "SELECT e.id, e.name, e.connection_id, c.name, c.connector,
    e.settings, e.mapping, e.segments, e.schedule, e.created_by, e.created_at, e.removed_at,
    e.leave_action
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
        leave_action: r.get(12)?,
    })
}
