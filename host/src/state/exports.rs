//! Saved exports, and the lock that keeps one run of an export at a time across processes
//! and machines.

use std::fs::File;

use anyhow::{Context, Result};
use serde::Serialize;

use super::db::{Db, DbRow, Step, params};
use super::postgres::{self, Lease};
use super::{Access, Actor, State, now, sqlite};
use crate::failure::{Conflict, NotFound};
use crate::fence::Fence;
use crate::mapping::FieldMapping;

/// A saved export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRecord {
    pub id: i64,
    pub name: String,
    pub connection_id: i64,
    pub connection: String,
    /// Who may use the export's connection (and so the export).
    #[serde(skip)]
    pub connection_access: Access,
    pub connector: String,
    pub settings: Vec<(String, String)>,
    /// `field=column` pairs.
    pub mapping: FieldMapping,
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
    pub mapping: &'a FieldMapping,
    pub segments: &'a [String],
    pub schedule: Option<&'a str>,
    pub leave_action: Option<&'a str>,
}

/// Held while a run of an export is under way: no other process, here or on another
/// machine, can start one. SQLite: a lock file, released by the operating system the moment
/// its process ends. PostgreSQL: a lease renewed by the process's keeper, which expires when
/// its worker is gone. Its [`Fence`] says whether it is surely still held, and carries the
/// generation every write of the run is checked against.
pub struct ExportLock {
    held: Held,
    fence: Fence,
}

enum Held {
    File(#[allow(dead_code, reason = "held for its lock")] File),
    Lease(Lease),
}

impl ExportLock {
    pub(super) fn file(file: File) -> ExportLock {
        ExportLock {
            held: Held::File(file),
            fence: Fence::for_life(format!("{:016x}", fastrand::u64(..))),
        }
    }

    pub(super) fn lease(lease: Lease, fence: Fence) -> ExportLock {
        ExportLock {
            held: Held::Lease(lease),
            fence,
        }
    }

    /// Whether the lock is surely held, and the generation the run's writes carry.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Lets the export's next run start at once (a lease is given up rather than left to
    /// expire).
    pub async fn release(self) {
        super::db::count();
        match self.held {
            Held::File(file) => drop(file),
            Held::Lease(lease) => lease.release().await,
        }
    }
}

impl State {
    /// Saves an export.
    pub async fn add_export(&self, new: &NewExport<'_>, actor: &Actor) -> Result<ExportRecord> {
        // The unique index on active names settles two processes adding the same name.
        let added = self
            .db
            .execute(
                "INSERT INTO exports (name, connection_id, settings, mapping, segments, schedule,
                     created_by, created_at, leave_action)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT DO NOTHING",
                params![
                    new.name,
                    new.connection_id,
                    serde_json::to_string(new.settings)?,
                    serde_json::to_string(new.mapping)?,
                    serde_json::to_string(new.segments)?,
                    new.schedule,
                    &actor.name,
                    now(),
                    new.leave_action,
                ],
            )
            .await?;
        if added == 0 {
            return Err(Conflict(format!("an export named `{}` already exists", new.name)).into());
        }
        self.export(new.name).await
    }

    /// Replaces what an export sends and when (its name and connection stay).
    pub async fn update_export(&self, id: i64, new: &NewExport<'_>) -> Result<()> {
        self.db
            .execute(
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
            )
            .await?;
        Ok(())
    }

    /// The active export called `name`.
    pub async fn export(&self, name: &str) -> Result<ExportRecord> {
        self.db
            .query_opt(
                &format!("{EXPORT_COLUMNS} WHERE e.name = ?1 AND e.removed_at IS NULL"),
                params![name],
            )
            .await?
            .map(|r| export_row(&r))
            .transpose()?
            .ok_or_else(|| NotFound(format!("there is no export named `{name}`")).into())
    }

    /// An export by id, removed or not.
    pub async fn export_by_id(&self, id: i64) -> Result<ExportRecord> {
        export_row(
            &self
                .db
                .query_one(&format!("{EXPORT_COLUMNS} WHERE e.id = ?1"), params![id])
                .await?,
        )
    }

    /// The active exports, by name.
    pub async fn exports(&self) -> Result<Vec<ExportRecord>> {
        self.db
            .query(
                &format!("{EXPORT_COLUMNS} WHERE e.removed_at IS NULL ORDER BY e.name"),
                vec![],
            )
            .await?
            .iter()
            .map(export_row)
            .collect()
    }

    /// Removes an export (and so its schedule); its runs stay readable.
    pub async fn remove_export(&self, name: &str, actor: &Actor) -> Result<()> {
        let export = self.export(name).await?;
        let mut steps = vec![
            Step::new(
                "UPDATE exports SET removed_at = ?2, removed_by = ?3 WHERE id = ?1",
                params![export.id, now(), &actor.name],
            ),
            // A run waiting for a worker will never run.
            Step::new(
                "UPDATE runs SET status = 'failed', finished_at = ?2,
                     error = 'the export was removed before a worker ran it'
                 WHERE export_id = ?1 AND status = 'queued'",
                params![export.id, now()],
            ),
        ];
        // Its sync state can serve no run again; its run history stays readable. (Only the
        // SQLite engine keeps a log of settled contacts beside the folded state.)
        let mut tables = vec!["sync_contacts", "sync_reasons", "sync_basis"];
        if !self.db.is_postgres() {
            tables.push("sync_log");
        }
        for table in tables {
            steps.push(Step::new(
                format!("DELETE FROM {table} WHERE export_id = ?1"),
                params![export.id],
            ));
        }
        self.db.batch(&steps).await?;
        Ok(())
    }

    /// Takes the run lock of an export; `None` when a run is already under way.
    pub async fn lock_export(&self, export: &ExportRecord) -> Result<Option<ExportLock>> {
        super::db::count();
        match &self.db {
            Db::Sqlite(_) => {
                let path = self.path().context("a SQLite state has a file")?;
                Ok(sqlite::lock_export(path, export.id)?.map(ExportLock::file))
            }
            Db::Postgres(pool) => {
                let term = self.lease_term().await?;
                let keeper = self.keeper()?;
                let lease =
                    postgres::take_lease(pool, &keeper, export.id, &self.worker, term).await?;
                Ok(lease.map(|(lease, fence)| ExportLock::lease(lease, fence)))
            }
        }
    }

    /// Gives up this process's lease on an export at once, if `fence` is still its token
    /// (after a worker failed on its run), so that another worker need not wait for it to
    /// expire. A lock file goes with its holder.
    pub async fn give_up_lease(&self, export_id: i64, fence: &Fence) {
        if let Db::Postgres(_) = &self.db {
            let _ = self
                .db
                .execute(
                    "DELETE FROM export_leases WHERE export_id = ?1 AND token = ?2",
                    params![export_id, fence.token()],
                )
                .await;
        }
    }

    /// Whether a run of the export is under way in some process.
    pub(super) async fn export_running(&self, export_id: i64) -> Result<bool> {
        match &self.db {
            Db::Sqlite(_) => Ok(self
                .path()
                .is_some_and(|path| sqlite::export_locked(path, export_id))),
            Db::Postgres(pool) => postgres::leased(pool, export_id).await,
        }
    }
}

const EXPORT_COLUMNS: &str = "SELECT e.id, e.name, e.connection_id, c.name, c.connector,
    e.settings, e.mapping, e.segments, e.schedule, e.created_by, e.created_at, e.removed_at,
    e.leave_action, c.access
    FROM exports e JOIN connections c ON c.id = e.connection_id";

fn export_row(r: &DbRow) -> Result<ExportRecord> {
    Ok(ExportRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        connection_id: r.get(2)?,
        connection: r.get(3)?,
        connector: r.get(4)?,
        settings: r.json(5)?,
        mapping: r.json(6)?,
        segments: r.json(7)?,
        schedule: r.get(8)?,
        created_by: r.get(9)?,
        created_at: r.get(10)?,
        removed_at: r.get(11)?,
        leave_action: r.get(12)?,
        connection_access: r.name(13)?,
    })
}
