//! Every read of the workspace, access-checked by the one rule: a contributor sees the
//! connections opened to contributors, their exports and those exports' runs; anything else
//! is refused as [`crate::failure::Closed`], which the API answers as if it did not exist.

use std::collections::HashMap;

use anyhow::Result;

use super::Workspace;
use crate::access::{Access, Actor, Operation};
use crate::approval::Approval;
use crate::run::{RunIssue, SyncState};
use crate::state::{AuditEntry, ConnectionRecord, ExportRecord, RunRecord};

impl Workspace {
    /// The connections `actor` may use, by name.
    pub async fn connections(&self, actor: &Actor) -> Result<Vec<ConnectionRecord>> {
        Ok(self
            .state
            .connections()
            .await?
            .into_iter()
            .filter(|c| actor.may(Operation::UseConnection(c.access)))
            .collect())
    }

    /// The connection `name`, if `actor` may use it.
    pub async fn connection(&self, actor: &Actor, name: &str) -> Result<ConnectionRecord> {
        let record = self.state.connection(name).await?;
        actor.require_use(record.access, &record.name)?;
        Ok(record)
    }

    /// The exports `actor` may use, by name.
    pub async fn exports(&self, actor: &Actor) -> Result<Vec<ExportRecord>> {
        Ok(self
            .state
            .exports()
            .await?
            .into_iter()
            .filter(|e| actor.may(Operation::UseConnection(e.connection_access)))
            .collect())
    }

    /// The exports `actor` may use, each with its latest run (two reads of the store,
    /// whatever the number of exports).
    pub async fn exports_with_last_run(
        &self,
        actor: &Actor,
    ) -> Result<Vec<(ExportRecord, Option<RunRecord>)>> {
        let exports = self.exports(actor).await?;
        let mut last: HashMap<i64, RunRecord> = self
            .state
            .latest_runs()
            .await?
            .into_iter()
            .map(|r| (r.export_id, r))
            .collect();
        Ok(exports
            .into_iter()
            .map(|e| {
                let run = last.remove(&e.id);
                (e, run)
            })
            .collect())
    }

    /// The export `name`, if `actor` may use its connection.
    pub async fn export(&self, actor: &Actor, name: &str) -> Result<ExportRecord> {
        let export = self.state.export(name).await?;
        actor
            .require_use(export.connection_access, &export.connection)
            .map_err(|closed| closed.about(format!("export named `{name}`")))?;
        Ok(export)
    }

    /// How many contacts the export's sync state holds, by state.
    pub async fn sync_counts(&self, actor: &Actor, name: &str) -> Result<Vec<(SyncState, u64)>> {
        let export = self.export(actor, name).await?;
        self.state.sync_counts(&export).await
    }

    /// The latest runs `actor` may see, newest first: of one export (removed ones included),
    /// or of all.
    pub async fn runs(
        &self,
        actor: &Actor,
        export: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>> {
        let open: Vec<Access> = [Access::Administrators, Access::Contributors]
            .into_iter()
            .filter(|a| actor.may(Operation::UseConnection(*a)))
            .collect();
        let runs = self.state.runs(export, &open, limit).await?;
        // An export closed to the actor is refused, not shown as one without runs.
        if let (Some(name), true) = (export, runs.is_empty())
            && let Ok(export) = self.state.export(name).await
        {
            actor
                .require_use(export.connection_access, &export.connection)
                .map_err(|closed| closed.about(format!("export named `{name}`")))?;
        }
        Ok(runs)
    }

    /// Run `id`, with its every attempt, if `actor` may see its export.
    pub async fn run(&self, actor: &Actor, id: i64) -> Result<RunRecord> {
        let run = self.state.run(id).await?;
        actor
            .require_use(run.connection_access, &run.connection)
            .map_err(|closed| closed.about(format!("run {id}")))?;
        Ok(run)
    }

    /// Calls `each` for every contact run `id` did not deliver, in the order recorded, if
    /// `actor` may see the run.
    pub async fn for_each_issue(
        &self,
        actor: &Actor,
        id: i64,
        each: &mut (dyn FnMut(RunIssue) -> Result<()> + Send),
    ) -> Result<()> {
        self.run(actor, id).await?;
        self.state.for_each_issue(id, each).await
    }

    /// The connector's approval, if an administrator gave one.
    pub async fn approval(&self, connector: &str) -> Result<Option<Approval>> {
        self.state.approval(connector).await
    }

    /// The latest entries of the audit log, newest first.
    pub async fn audit_log(&self, actor: &Actor, limit: u64) -> Result<Vec<AuditEntry>> {
        actor.require(Operation::ReadAuditLog, "read the audit log")?;
        self.state.audit_log(limit).await
    }
}
