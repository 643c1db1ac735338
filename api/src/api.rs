//! The JSON API under `/api/v1`: thin handlers over the library's `Workspace`, each documented
//! for the OpenAPI document (`/openapi.json`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use connector_host::workspace::{ConnectionChanges, ExportChanges};
use connector_host::workspace::{ConnectionRecord, ExportRecord, RunRecord, RunState};
use connector_host::{
    Access, ApprovalStatus, ConnectionRequest, Credential, CredentialKind, ExportRequest,
    FieldMapping, Plugin, Secret,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::Server;
use crate::auth::ApiCaller;
use crate::problem::{Answer, Problem};

/// A connector in the plugin directory and whether an administrator approved it.
#[derive(Serialize, ToSchema)]
pub struct ConnectorView {
    pub id: String,
    pub display_name: String,
    pub version: String,
    pub sha256: String,
    /// `approved`, `not approved`, or `changed` (approved once; the file or hosts changed since).
    pub approval: String,
    /// What changed since the approval.
    pub changes: Vec<String>,
    pub hosts: Vec<String>,
    /// The export settings it asks for.
    pub settings: Vec<FieldView>,
    /// The contact fields an export maps profile columns to.
    pub contact_fields: Vec<FieldView>,
    /// What it can do to contacts who left an export's segments.
    pub leave_actions: Vec<FieldView>,
    /// How the host sends the connection's credential to the vendor, in words.
    pub credential: String,
    /// The vendor's limits it declares, in words (requests at once, rate windows).
    pub limits: Vec<String>,
    /// What erasing a person at the vendor does, when the connector can.
    pub erasure: Option<String>,
}

/// A setting, contact field or leave action a connector declares.
#[derive(Serialize, ToSchema)]
pub struct FieldView {
    pub key: String,
    pub label: String,
    pub required: bool,
}

impl ConnectorView {
    pub fn of(plugin: &Plugin, status: &ApprovalStatus) -> ConnectorView {
        let info = &plugin.info;
        let (approval, changes) = match status {
            ApprovalStatus::Approved => ("approved", vec![]),
            ApprovalStatus::NotApproved => ("not approved", vec![]),
            ApprovalStatus::Changed(changes) => ("changed", changes.clone()),
        };
        ConnectorView {
            id: info.id.clone(),
            display_name: info.display_name.clone(),
            version: info.version.clone(),
            sha256: plugin.digest.clone(),
            approval: approval.into(),
            changes,
            hosts: info.hosts.clone(),
            settings: info
                .config_fields
                .iter()
                .map(|f| FieldView {
                    key: f.key.clone(),
                    label: f.label.clone(),
                    required: f.required,
                })
                .collect(),
            contact_fields: info
                .contact_fields
                .iter()
                .map(|f| FieldView {
                    key: f.key.clone(),
                    label: f.label.clone(),
                    required: f.required,
                })
                .collect(),
            leave_actions: info
                .leave_actions
                .iter()
                .map(|a| FieldView {
                    key: a.id.clone(),
                    label: a.label.clone(),
                    required: false,
                })
                .collect(),
            credential: info.auth.describe(),
            limits: limits_of(info),
            erasure: info.erasure.clone(),
        }
    }
}

/// A connector's declared limits, in words.
pub fn limits_of(info: &connector_host::contract::ConnectorInfo) -> Vec<String> {
    let mut limits = vec![match info.max_concurrent_requests {
        0 => "no published limit of requests at once".to_string(),
        n => format!("{n} requests at once"),
    }];
    limits.extend(info.rate_windows.iter().map(|w| w.describe()));
    limits
}

/// Who may use a connection.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum AccessView {
    /// Administrators only.
    Administrators,
    /// Administrators and contributors.
    Contributors,
}

impl From<AccessView> for Access {
    fn from(a: AccessView) -> Access {
        match a {
            AccessView::Administrators => Access::Administrators,
            AccessView::Contributors => Access::Contributors,
        }
    }
}

impl From<Access> for AccessView {
    fn from(a: Access) -> AccessView {
        match a {
            Access::Administrators => AccessView::Administrators,
            Access::Contributors => AccessView::Contributors,
        }
    }
}

/// A saved vendor account (never its credential: only a fingerprint).
#[derive(Serialize, ToSchema)]
pub struct ConnectionView {
    pub name: String,
    pub connector: String,
    pub base_url: Option<String>,
    pub data_centre: Option<String>,
    /// `api-key` or `oauth`.
    pub credential: String,
    pub fingerprint: String,
    pub access: AccessView,
    pub privacy_accepted_by: String,
    pub privacy_accepted_at: String,
    pub created_by: String,
    pub created_at: String,
    pub checked_at: Option<String>,
}

impl From<ConnectionRecord> for ConnectionView {
    fn from(c: ConnectionRecord) -> ConnectionView {
        ConnectionView {
            credential: match c.credential_kind {
                CredentialKind::ApiKey => "api-key",
                CredentialKind::OAuth => "oauth",
            }
            .into(),
            name: c.name,
            connector: c.connector,
            base_url: c.base_url,
            data_centre: c.data_centre,
            fingerprint: c.fingerprint,
            access: c.access.into(),
            privacy_accepted_by: c.privacy_accepted_by,
            privacy_accepted_at: c.privacy_accepted_at,
            created_by: c.created_by,
            created_at: c.created_at,
            checked_at: c.checked_at,
        }
    }
}

/// A connection to add with an API key (OAuth connections are added by "Authenticate with
/// <vendor>" in the console).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    pub name: String,
    pub connector: String,
    /// The vendor API key; stored sealed, never shown again.
    pub api_key: String,
    /// The vendor API base URL, when not the connector's own (a simulator).
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub data_centre: Option<String>,
    /// Who may use it (administrators by default).
    #[serde(default)]
    pub access: Option<AccessView>,
    /// Must be true: exported profiles leave the platform's compliance boundary.
    pub accept_privacy_notice: bool,
}

/// Changes to a connection; absent parts stay.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatch {
    /// A new API key (kept only once the vendor accepts it).
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub access: Option<AccessView>,
}

/// A saved export.
#[derive(Serialize, ToSchema)]
pub struct ExportView {
    pub name: String,
    pub connection: String,
    pub connector: String,
    pub settings: BTreeMap<String, String>,
    /// Contact field → profile column.
    pub mapping: BTreeMap<String, String>,
    pub segments: Vec<String>,
    pub schedule: Option<String>,
    pub leave_action: Option<String>,
    pub created_by: String,
    pub created_at: String,
}

impl From<ExportRecord> for ExportView {
    fn from(e: ExportRecord) -> ExportView {
        ExportView {
            name: e.name,
            connection: e.connection,
            connector: e.connector,
            settings: e.settings.into_iter().collect(),
            mapping: e.mapping.0.into_iter().collect(),
            segments: e.segments,
            schedule: e.schedule,
            leave_action: e.leave_action,
            created_by: e.created_by,
            created_at: e.created_at,
        }
    }
}

/// An export to save (checked with the vendor first; nothing is sent).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExport {
    pub name: String,
    pub connection: String,
    /// The connector's settings, e.g. `{"list-id": "..."}`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Contact field → profile column, e.g. `{"email": "email"}`.
    pub mapping: BTreeMap<String, String>,
    pub segments: Vec<String>,
    /// A cron expression, UTC.
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub leave_action: Option<String>,
    /// Confirms an irreversible leave action.
    #[serde(default)]
    pub confirm_irreversible: bool,
}

/// Changes to an export; absent parts stay. The export is checked again as a whole.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportPatch {
    /// Settings to set (others kept).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Settings to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// The whole mapping.
    #[serde(default)]
    pub mapping: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub segments: Option<Vec<String>>,
    /// A cron expression; an empty one removes the schedule.
    #[serde(default)]
    pub schedule: Option<String>,
    /// A leave action; an empty one removes it.
    #[serde(default)]
    pub leave_action: Option<String>,
    #[serde(default)]
    pub confirm_irreversible: bool,
}

/// How to run an export.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RunAsk {
    /// Send every contact, not only what changed.
    #[serde(default)]
    pub full: bool,
    /// Start afresh instead of continuing a run cut short.
    #[serde(default)]
    pub fresh: bool,
}

/// A run queued for the workers.
#[derive(Serialize, ToSchema)]
pub struct Queued {
    pub run_id: i64,
    /// Where to follow it.
    pub events: String,
}

/// A run: its state and counts.
#[derive(Serialize, ToSchema)]
pub struct RunView {
    pub id: i64,
    pub export: String,
    pub connector: String,
    pub trigger: String,
    pub started_by: String,
    /// queued, running, waiting (its worker is gone: another takes it over), interrupted
    /// (the next run continues it), succeeded or failed.
    pub status: String,
    /// The status as people read it, saying what happens next (`waiting for a worker`,
    /// `interrupted: continues at the next run`...).
    pub status_text: String,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub attempts: u64,
    pub mode: Option<String>,
    pub segment_size: Option<u64>,
    /// Every count of the run (profiles, created, updated, rejected, ...).
    #[schema(value_type = Object)]
    pub counts: serde_json::Map<String, serde_json::Value>,
    pub requests: u64,
    pub retries: u64,
    pub seconds: f64,
    pub worker: Option<String>,
    /// While it runs: when the phase under way (sending, then settling leavers) should end
    /// (UTC), from the pace so far and the vendor's limits.
    pub expected_end: Option<String>,
}

pub fn run_status(s: RunState) -> String {
    s.as_str().to_string()
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> RunView {
        let counts = match serde_json::to_value(&r.counts) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => Default::default(),
        };
        RunView {
            id: r.id,
            export: r.export,
            connector: r.connector,
            trigger: r.trigger,
            started_by: r.started_by,
            status: run_status(r.status),
            status_text: r.status.describe().to_string(),
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
            attempts: r.attempts,
            mode: r.mode,
            segment_size: r.segment_size,
            counts,
            requests: r.requests,
            retries: r.retries,
            seconds: r.seconds,
            worker: r.worker,
            expected_end: r.expected_end,
        }
    }
}

/// What a dry run found: what the next run would send, skip and do to leavers.
#[derive(Serialize, ToSchema)]
pub struct PlanView {
    /// `delta`, or why the run would be full.
    #[schema(value_type = Object)]
    pub plan: serde_json::Value,
}

/// Who is signed in.
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub name: String,
    /// administrator or contributor.
    pub role: String,
}

#[derive(Deserialize, IntoParams)]
pub struct RunsQuery {
    /// Only this export's runs.
    pub export: Option<String>,
    /// How many, newest first (default 50, at most 1000).
    pub limit: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
pub struct RemoveQuery {
    /// Remove the connection's exports too.
    #[serde(default)]
    pub with_exports: bool,
}

/// A mapping as the library takes it: each field to its column, checked.
fn mapping_of(mapping: &BTreeMap<String, String>) -> anyhow::Result<FieldMapping> {
    FieldMapping::from_columns(mapping)
}

#[utoipa::path(get, path = "/api/v1/me", tag = "people",
    responses((status = 200, body = Me), (status = 401, body = Problem)))]
pub async fn me(caller: ApiCaller) -> Json<Me> {
    Json(Me {
        name: caller.0.actor.name.clone(),
        role: caller.0.actor.role.name().into(),
    })
}

#[utoipa::path(get, path = "/api/v1/connectors", tag = "connectors",
    responses((status = 200, body = [ConnectorView]), (status = 401, body = Problem)))]
pub async fn connectors(
    State(server): State<Arc<Server>>,
    _caller: ApiCaller,
) -> Answer<Json<Vec<ConnectorView>>> {
    let list = server.workspace.connectors().await?;
    Ok(Json(
        list.iter().map(|(p, s)| ConnectorView::of(p, s)).collect(),
    ))
}

/// What an administrator approves.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ApproveAsk {
    /// The SHA-256 of the file that was reviewed (hex, optionally `sha256:`-prefixed): only a
    /// file with this digest is approved. Without it, the file as it is on disk now.
    #[serde(default)]
    pub digest: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/connectors/{id}/approve", tag = "connectors",
    params(("id" = String, Path, description = "The connector's id")),
    request_body(content = ApproveAsk, description = "Optional: the digest that was reviewed"),
    responses((status = 200, body = ConnectorView), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "The file's digest is not the one reviewed")))]
pub async fn approve_connector(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Option<Json<ApproveAsk>>, JsonRejection>,
) -> Answer<Json<ConnectorView>> {
    let Path(id) = id?;
    let ask = body?.map(|Json(ask)| ask).unwrap_or_default();
    server
        .workspace
        .approve_connector(&caller.0.actor, &id, ask.digest.as_deref())
        .await?;
    let list = server.workspace.connectors().await?;
    let (plugin, status) = list
        .iter()
        .find(|(p, _)| p.info.id == id)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no connector `{id}`")))?;
    Ok(Json(ConnectorView::of(plugin, status)))
}

#[utoipa::path(get, path = "/api/v1/connections", tag = "connections",
    responses((status = 200, body = [ConnectionView], description = "The connections the caller may use"),
        (status = 401, body = Problem)))]
pub async fn connections(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
) -> Answer<Json<Vec<ConnectionView>>> {
    let list = server.workspace.connections(&caller.0.actor).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

#[utoipa::path(post, path = "/api/v1/connections", tag = "connections", request_body = NewConnection,
    responses((status = 201, body = ConnectionView), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem), (status = 502, body = Problem)))]
pub async fn add_connection(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    body: Result<Json<NewConnection>, JsonRejection>,
) -> Answer<(StatusCode, Json<ConnectionView>)> {
    let Json(body) = body?;
    let (record, _) = server
        .workspace
        .add_connection(
            &caller.0.actor,
            ConnectionRequest {
                name: body.name,
                connector: body.connector,
                base_url: body.base_url,
                data_centre: body.data_centre,
                credential: Credential::ApiKey(Secret::new(body.api_key)),
                token_expires_in: None,
                access: body.access.unwrap_or(AccessView::Administrators).into(),
                accept_privacy_notice: body.accept_privacy_notice,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[utoipa::path(get, path = "/api/v1/connections/{name}", tag = "connections",
    params(("name" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn connection(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Json<ConnectionView>> {
    let Path(name) = name?;
    Ok(Json(
        server
            .workspace
            .connection(&caller.0.actor, &name)
            .await?
            .into(),
    ))
}

#[utoipa::path(patch, path = "/api/v1/connections/{name}", tag = "connections",
    params(("name" = String, Path)), request_body = ConnectionPatch,
    responses((status = 200, body = ConnectionView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem),
        (status = 502, body = Problem)))]
pub async fn update_connection(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ConnectionPatch>, JsonRejection>,
) -> Answer<Json<ConnectionView>> {
    let (Path(name), Json(body)) = (name?, body?);
    let changes = ConnectionChanges {
        credential: body.api_key.map(|key| Credential::ApiKey(Secret::new(key))),
        token_expires_in: None,
        access: body.access.map(Into::into),
    };
    let record = server
        .workspace
        .update_connection(&caller.0.actor, &name, changes)
        .await?;
    Ok(Json(record.into()))
}

#[utoipa::path(post, path = "/api/v1/connections/{name}/test", tag = "connections",
    params(("name" = String, Path)),
    responses((status = 204, description = "The vendor accepted the credential"), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem),
        (status = 502, body = Problem)))]
pub async fn test_connection(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
) -> Answer<StatusCode> {
    let Path(name) = name?;
    server.workspace.connection(&caller.0.actor, &name).await?;
    server
        .workspace
        .test_connection(&caller.0.actor, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/connections/{name}", tag = "connections",
    params(("name" = String, Path), RemoveQuery),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn remove_connection(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Answer<StatusCode> {
    let (Path(name), Query(query)) = (name?, query?);
    server
        .workspace
        .remove_connection(&caller.0.actor, &name, query.with_exports)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/exports", tag = "exports",
    responses((status = 200, body = [ExportView], description = "Exports on connections the caller may use"),
        (status = 401, body = Problem)))]
pub async fn exports(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
) -> Answer<Json<Vec<ExportView>>> {
    let list = server.workspace.exports(&caller.0.actor).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

#[utoipa::path(post, path = "/api/v1/exports", tag = "exports", request_body = NewExport,
    responses((status = 201, body = ExportView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem), (status = 502, body = Problem)))]
pub async fn add_export(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    body: Result<Json<NewExport>, JsonRejection>,
) -> Answer<(StatusCode, Json<ExportView>)> {
    let Json(body) = body?;
    server
        .workspace
        .connection(&caller.0.actor, &body.connection)
        .await?;
    let record = server
        .workspace
        .add_export(
            &caller.0.actor,
            ExportRequest {
                name: body.name,
                connection: body.connection,
                settings: body.settings.into_iter().collect(),
                mapping: mapping_of(&body.mapping)?,
                segments: body.segments,
                schedule: body.schedule.filter(|s| !s.trim().is_empty()),
                leave_action: body.leave_action.filter(|s| !s.trim().is_empty()),
                confirm_irreversible: body.confirm_irreversible,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[utoipa::path(get, path = "/api/v1/exports/{name}", tag = "exports",
    params(("name" = String, Path)),
    responses((status = 200, body = ExportView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn export(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Json<ExportView>> {
    let Path(name) = name?;
    Ok(Json(
        server
            .workspace
            .export(&caller.0.actor, &name)
            .await?
            .into(),
    ))
}

#[utoipa::path(patch, path = "/api/v1/exports/{name}", tag = "exports",
    params(("name" = String, Path)), request_body = ExportPatch,
    responses((status = 200, body = ExportView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem),
        (status = 502, body = Problem)))]
pub async fn edit_export(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ExportPatch>, JsonRejection>,
) -> Answer<Json<ExportView>> {
    let (Path(name), Json(body)) = (name?, body?);
    server.workspace.export(&caller.0.actor, &name).await?;
    let empty_is_none = |s: String| (!s.trim().is_empty()).then_some(s);
    let changes = ExportChanges {
        set: body.settings.into_iter().collect(),
        unset: body.unset,
        mapping: body.mapping.as_ref().map(mapping_of).transpose()?,
        segments: body.segments,
        schedule: body.schedule.map(empty_is_none),
        leave_action: body.leave_action.map(empty_is_none),
        confirm_irreversible: body.confirm_irreversible,
    };
    let record = server
        .workspace
        .edit_export(&caller.0.actor, &name, changes)
        .await?;
    Ok(Json(record.into()))
}

#[utoipa::path(delete, path = "/api/v1/exports/{name}", tag = "exports",
    params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn remove_export(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
) -> Answer<StatusCode> {
    let Path(name) = name?;
    server.workspace.export(&caller.0.actor, &name).await?;
    server
        .workspace
        .remove_export(&caller.0.actor, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/exports/{name}/dry-run", tag = "exports",
    params(("name" = String, Path)), request_body(content = RunAsk, description = "`full` plans a full run"),
    responses((status = 200, body = PlanView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn dry_run(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<RunAsk>, JsonRejection>,
) -> Answer<Json<PlanView>> {
    let (Path(name), Json(body)) = (name?, body?);
    server.workspace.export(&caller.0.actor, &name).await?;
    let plan = server
        .workspace
        .plan_export(&caller.0.actor, &name, body.full)
        .await?;
    Ok(Json(PlanView {
        plan: serde_json::to_value(&plan).map_err(anyhow::Error::from)?,
    }))
}

#[utoipa::path(post, path = "/api/v1/exports/{name}/runs", tag = "runs",
    params(("name" = String, Path)), request_body = RunAsk,
    responses((status = 202, body = Queued, description = "Queued for the workers"), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
pub async fn run_export(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<RunAsk>, JsonRejection>,
) -> Answer<(StatusCode, Json<Queued>)> {
    let (Path(name), Json(body)) = (name?, body?);
    server.workspace.export(&caller.0.actor, &name).await?;
    let run_id = server.queue_run(&caller.0.actor, &name, body).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            run_id,
            events: format!("/api/v1/runs/{run_id}/events"),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = [RunView]), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn runs(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Answer<Json<Vec<RunView>>> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50).clamp(1, 1000) as usize;
    let list = server
        .workspace
        .runs(&caller.0.actor, query.export.as_deref(), limit)
        .await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", params(("id" = i64, Path)),
    responses((status = 200, body = RunView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn run(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    id: Result<Path<i64>, PathRejection>,
) -> Answer<Json<RunView>> {
    let Path(id) = id?;
    Ok(Json(
        server.workspace.run(&caller.0.actor, id).await?.into(),
    ))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/rejections", tag = "runs", params(("id" = i64, Path)),
    responses((status = 200, content_type = "text/csv", body = String,
        description = "Every contact not delivered: profile_id, email, kind, stage, code, message, since"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn rejections(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    id: Result<Path<i64>, PathRejection>,
) -> Answer<Response> {
    let Path(id) = id?;
    rejections_csv(&server, &caller.0.actor, id).await
}

/// A run's undelivered contacts as a CSV download, if `actor` may see the run.
pub async fn rejections_csv(
    server: &Server,
    actor: &connector_host::Actor,
    id: i64,
) -> Answer<Response> {
    let mut out = connector_host::IssueCsv::new(Vec::new())?;
    server
        .workspace
        .for_each_issue(actor, id, &mut |issue| out.write(&issue))
        .await?;
    let bytes = out.into_inner()?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"run-{id}-rejections.csv\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs", params(("id" = i64, Path)),
    responses((status = 202, description = "The run stops after its batches in flight; the next run continues it"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn cancel_run(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    id: Result<Path<i64>, PathRejection>,
) -> Answer<StatusCode> {
    let Path(id) = id?;
    let run = server.workspace.run(&caller.0.actor, id).await?;
    server.cancel_run(&caller.0.actor, &run).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/events", tag = "runs", params(("id" = i64, Path)),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "Server-sent events: `progress` with {status, done, total} while the run goes, then `end` with the run"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn run_events(
    State(server): State<Arc<Server>>,
    caller: ApiCaller,
    id: Result<Path<i64>, PathRejection>,
) -> Answer<Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let Path(id) = id?;
    server.workspace.run(&caller.0.actor, id).await?;
    let actor = caller.0.actor.clone();
    Ok(Sse::new(crate::events(server, actor, id)).keep_alive(KeepAlive::default()))
}
