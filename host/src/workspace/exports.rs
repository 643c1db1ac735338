//! Exports: what to send where, checked as a whole with the vendor before it is saved or
//! changed.

use anyhow::{Context, Result};

use super::{Workspace, check_name};
use crate::access::Actor;
use crate::failure::{Conflict, Missing};
use crate::mapping::FieldMapping;
use crate::run::Export;
use crate::schedule::Schedule;
use crate::state::{ConnectionRecord, ExportRecord, NewExport};

/// What to change in a saved export; `None` leaves a part as it is. The export is checked
/// again as a whole, with the vendor, before the change is saved.
#[derive(Default)]
pub struct ExportChanges {
    /// Settings to set (others are kept).
    pub set: Vec<(String, String)>,
    /// Settings to remove.
    pub unset: Vec<String>,
    /// The whole mapping.
    pub mapping: Option<FieldMapping>,
    /// The whole list of segments.
    pub segments: Option<Vec<String>>,
    /// `Some(None)` removes the schedule.
    pub schedule: Option<Option<String>>,
    /// `Some(None)` removes the leave action.
    pub leave_action: Option<Option<String>>,
    /// Confirms an irreversible leave action being chosen.
    pub confirm_irreversible: bool,
}

/// An export to save.
pub struct ExportRequest {
    pub name: String,
    pub connection: String,
    pub settings: Vec<(String, String)>,
    /// Which profile column feeds which contact field.
    pub mapping: FieldMapping,
    pub segments: Vec<String>,
    /// A cron expression (UTC).
    pub schedule: Option<String>,
    /// What happens to contacts sent before that leave the segment: one of the connector's
    /// leave actions, or none.
    pub leave_action: Option<String>,
    /// The person saving the export confirms an irreversible leave action (unsubscribing,
    /// deleting): without it such an export is not saved.
    pub confirm_irreversible: bool,
}

impl ExportRequest {
    /// The export as the state saves it, on the connection `connection_id`.
    fn to_save(&self, connection_id: i64) -> NewExport<'_> {
        NewExport {
            name: &self.name,
            connection_id,
            settings: &self.settings,
            mapping: &self.mapping,
            segments: &self.segments,
            schedule: self.schedule.as_deref(),
            leave_action: self.leave_action.as_deref(),
        }
    }
}

impl Workspace {
    /// Validates an export (settings, mapping against the source's columns, segments, the
    /// connector's `validate` against the vendor) and saves it. Does not run it.
    pub async fn add_export(&self, actor: &Actor, request: ExportRequest) -> Result<ExportRecord> {
        check_name("export", &request.name)?;
        let connection = self.connection(actor, &request.connection).await?;
        if self.state.export(&request.name).await.is_ok() {
            return Err(
                Conflict(format!("an export named `{}` already exists", request.name)).into(),
            );
        }
        self.check_export_request(&request, &connection, "saved")
            .await?;
        let saved = self
            .state
            .add_export(&request.to_save(connection.id), actor)
            .await?;
        let detail = format!("connection {}", connection.name);
        self.state
            .record(actor, "export.add", &saved.name, &detail)
            .await?;
        Ok(saved)
    }

    /// Changes a saved export, checking it again as a whole (with the vendor) first. A changed
    /// mapping or settings make its next run full; a changed segment makes those no longer in
    /// it leavers.
    pub async fn edit_export(
        &self,
        actor: &Actor,
        name: &str,
        changes: ExportChanges,
    ) -> Result<ExportRecord> {
        let current = self.export(actor, name).await?;
        let connection = self.state.connection_by_id(current.connection_id).await?;
        let mut settings = current.settings.clone();
        settings.retain(|(k, _)| {
            !changes.unset.contains(k) && !changes.set.iter().any(|(s, _)| s == k)
        });
        settings.extend(changes.set.iter().cloned());
        let request = ExportRequest {
            name: current.name.clone(),
            connection: connection.name.clone(),
            settings,
            mapping: changes.mapping.unwrap_or(current.mapping.clone()),
            segments: changes.segments.unwrap_or(current.segments.clone()),
            schedule: changes.schedule.unwrap_or(current.schedule.clone()),
            leave_action: changes.leave_action.unwrap_or(current.leave_action.clone()),
            confirm_irreversible: false,
        };
        // The leave action the export already had was confirmed when it was saved.
        let request = ExportRequest {
            confirm_irreversible: changes.confirm_irreversible
                || request.leave_action == current.leave_action,
            ..request
        };
        self.check_export_request(&request, &connection, "changed")
            .await?;
        self.state
            .update_export(current.id, &request.to_save(connection.id))
            .await?;
        self.state.record(actor, "export.edit", name, "").await?;
        self.state.export(name).await
    }

    /// Checks an export as a whole, with the vendor, before it is saved or changed (`done`
    /// says which, for the error).
    async fn check_export_request(
        &self,
        request: &ExportRequest,
        connection: &ConnectionRecord,
        done: &'static str,
    ) -> Result<()> {
        let not_done = || format!("export `{}` was not {done}", request.name);
        if let Some(schedule) = &request.schedule {
            Schedule::parse(schedule).with_context(not_done)?;
        }
        let export = Export {
            settings: request.settings.clone(),
            mapping: request.mapping.clone(),
            segments: request.segments.clone(),
            leave_action: request.leave_action.clone(),
        };
        let plugin = self.approved_connector(&connection.connector).await?;
        if let Some(id) = &request.leave_action
            && let Some(action) = plugin.info.leave_actions.iter().find(|a| a.id == *id)
            && !action.reversible
            && !request.confirm_irreversible
        {
            return Err(Missing::IrreversibleConsent {
                export: request.name.clone(),
                action: id.clone(),
                help: action.help.clone(),
                done,
            }
            .into());
        }
        let library_connection = self.unsealed(connection).await?;
        self.host()?
            .check_export_with(plugin, &library_connection, &export, self.source()?)
            .await
            .with_context(not_done)
    }

    /// What a look at a sample of the profile source finds wrong, in words (for the person
    /// saving an export: runs skip such rows and record them either way).
    pub fn source_warnings(&self) -> Result<Vec<String>> {
        self.source()?.sample_warnings()
    }

    /// Removes an export and its schedule; its runs stay readable.
    pub async fn remove_export(&self, actor: &Actor, name: &str) -> Result<()> {
        self.export(actor, name).await?;
        self.state.remove_export(name, actor).await?;
        self.state.record(actor, "export.remove", name, "").await
    }
}

/// A saved export as the library runs it.
pub(super) fn saved(export: &ExportRecord) -> Export {
    Export {
        settings: export.settings.clone(),
        mapping: export.mapping.clone(),
        segments: export.segments.clone(),
        leave_action: export.leave_action.clone(),
    }
}
