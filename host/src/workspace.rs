//! The product an operator runs for months, over the library: saved connections and exports,
//! runs on demand and on schedule, their history, and resumption of runs cut short.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::approval::{self, Approval, ApprovalStatus};
use crate::broker::SharedAccount;
use crate::failure::{AlreadyRunning, Conflict, Forbidden};
use crate::fence::Fence;
use crate::mapping::FieldMapping;
use crate::plugins::Plugin;
use crate::run::{
    Connection, CredentialCheck, Export, NoProgress, Progress, RunOptions, RunPlan, RunReport,
    RunStatus,
};
use crate::schedule::Schedule;
use crate::secret::{Credential, TokenRefresh};
use crate::source::ProfileSource;
use crate::state::{
    Access, Actor, Claim, ConnectionRecord, ExportLock, ExportRecord, MasterKey, NewConnection,
    NewExport, RunState, State, SyncBasis, Trigger, require_administrator,
};
use crate::{ConnectorHost, oauth};

/// The setting that caps the profiles of one run.
pub const MAX_PROFILES_SETTING: &str = "max-profiles";
/// The setting holding how many unreadable rows a run skips before it stops (none: no limit).
pub const MAX_BAD_ROWS_SETTING: &str = "max-bad-rows";
/// The cap when the setting is absent.
pub const DEFAULT_MAX_PROFILES: u64 = 1_000_000;

/// A connection to save.
pub struct ConnectionRequest {
    pub name: String,
    pub connector: String,
    /// The vendor API base URL, when not the connector's production one.
    pub base_url: Option<String>,
    pub data_centre: Option<String>,
    pub credential: Credential,
    /// For OAuth: how long the access token is valid, if the vendor said.
    pub token_expires_in: Option<Duration>,
    pub access: Access,
    /// The acting user accepted the data-privacy notice: exported profiles leave the
    /// platform's compliance boundary. A connection is never saved without it.
    pub accept_privacy_notice: bool,
}

/// A connection to save once the vendor's sign-in comes back.
#[derive(Debug, Clone)]
pub struct OAuthConnection {
    pub name: String,
    pub connector: String,
    pub access: Access,
    /// As in [`ConnectionRequest::accept_privacy_notice`].
    pub accept_privacy_notice: bool,
}

/// What to change in a saved connection; `None` leaves a part as it is.
#[derive(Default)]
pub struct ConnectionChanges {
    /// A new credential (the vendor must accept it before it replaces the old one).
    pub credential: Option<Credential>,
    /// For a new OAuth credential: how long its access token is valid, if the vendor said.
    pub token_expires_in: Option<Duration>,
    pub access: Option<Access>,
}

/// What to change in a saved export; `None` leaves a part as it is. The export is checked
/// again as a whole, with the vendor, before the change is saved.
#[derive(Default)]
pub struct ExportChanges {
    /// Settings to set (others are kept).
    pub set: Vec<(String, String)>,
    /// Settings to remove.
    pub unset: Vec<String>,
    /// The whole mapping, `field=column` pairs.
    pub mapping: Option<Vec<String>>,
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
    /// `field=column` pairs.
    pub mapping: Vec<String>,
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

/// How to run a saved export.
#[derive(Debug, Clone, Copy)]
pub struct RunRequest {
    pub trigger: Trigger,
    /// Start a new run instead of continuing one cut short or failed.
    pub fresh: bool,
    /// Send every contact, not only what changed.
    pub full: bool,
}

impl Default for RunRequest {
    fn default() -> Self {
        RunRequest {
            trigger: Trigger::OnDemand,
            fresh: false,
            full: false,
        }
    }
}

/// What a run of a saved export came to.
pub struct RunOutcome {
    pub run_id: i64,
    /// Whether this run continued one cut short.
    pub resumed: bool,
    pub report: RunReport,
}

/// An attempt of a run about to be made: its record, and the export's lock it holds.
struct Attempt {
    run_id: i64,
    /// Whether an earlier attempt of the run settled something.
    resumed: bool,
    /// Whether a full run was asked for (by this attempt or an earlier one).
    full: bool,
    lock: ExportLock,
}

/// Saved connections and exports over a connector host and a profile source.
pub struct Workspace {
    host: Option<Arc<ConnectorHost>>,
    state: Arc<State>,
    key: Option<MasterKey>,
    source: Option<Arc<dyn ProfileSource>>,
    options: RunOptions,
}

impl Workspace {
    /// A workspace over `state`. Add the connector host to use connectors, the master key to
    /// reach credentials and a profile source to save or run exports; what needs none of them
    /// (listing, removing) works without.
    pub fn new(state: Arc<State>) -> Workspace {
        Workspace {
            host: None,
            state,
            key: None,
            source: None,
            options: RunOptions::default(),
        }
    }

    /// The connectors of this host are the ones connections may use, once approved.
    pub fn with_host(mut self, host: Arc<ConnectorHost>) -> Workspace {
        self.host = Some(host);
        self
    }

    /// Unlocks the stored credentials; refuses a key other than the state's.
    pub async fn with_master_key(mut self, key: MasterKey) -> Result<Workspace> {
        self.state.check_master_key(&key).await?;
        self.state.rekey_fingerprints(&key).await?;
        self.key = Some(key);
        Ok(self)
    }

    /// The profiles exports read.
    pub fn with_source(mut self, source: Arc<dyn ProfileSource>) -> Workspace {
        self.source = Some(source);
        self
    }

    /// How runs behave (concurrency, broker policy); the profile cap comes from the
    /// `max-profiles` setting, the journal and stop signal from the workspace.
    pub fn with_run_options(mut self, options: RunOptions) -> Workspace {
        self.options = options;
        self
    }

    /// The saved state.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The connector host.
    pub fn host(&self) -> Result<&Arc<ConnectorHost>> {
        self.host
            .as_ref()
            .context("no connector host: this needs the plugin directory loaded")
    }

    fn key(&self) -> Result<&MasterKey> {
        self.key.as_ref().context(
            "no master key: set CONNECTOR_HOST_MASTER_KEY, or create a key file with `connector-host key generate` and point --master-key-file at it",
        )
    }

    fn source(&self) -> Result<&dyn ProfileSource> {
        self.source.as_deref().context(
            "no profile source: set one with `connector-host settings set profiles FILE` and `settings set memberships FILE`",
        )
    }

    /// The per-run profile cap (the `max-profiles` setting).
    pub async fn max_profiles(&self) -> Result<u64> {
        match self.state.setting(MAX_PROFILES_SETTING).await? {
            None => Ok(DEFAULT_MAX_PROFILES),
            Some(v) => v.parse().with_context(|| {
                format!("the setting {MAX_PROFILES_SETTING} is `{v}`, not a number")
            }),
        }
    }

    /// Unreadable rows a run skips before it stops, as the settings say (`None`: no limit).
    pub async fn max_bad_rows(&self) -> Result<Option<u64>> {
        self.state
            .setting(MAX_BAD_ROWS_SETTING)
            .await?
            .map(|v| {
                v.parse().with_context(|| {
                    format!("the setting {MAX_BAD_ROWS_SETTING} is `{v}`, not a number")
                })
            })
            .transpose()
    }

    // ---- connectors ----

    /// The connectors in the plugin directory as it is now (a changed file is loaded again),
    /// each with where it stands with its approval.
    pub async fn connectors(&self) -> Result<Vec<(Arc<Plugin>, ApprovalStatus)>> {
        let plugins = self.host()?.refresh().await?;
        let approvals = self.state.approvals().await?;
        Ok(plugins
            .loaded
            .iter()
            .map(|p| {
                let approval = approvals.iter().find(|a| a.connector == p.info.id);
                (p.clone(), ApprovalStatus::of(p, approval))
            })
            .collect())
    }

    /// Approves a connector as its file is now on disk: its content digest and its hosts. With
    /// `digest` (SHA-256, hex, optionally `sha256:`-prefixed), only a file with that digest is
    /// approved: the one the administrator reviewed. Administrators only.
    pub async fn approve_connector(
        &self,
        actor: &Actor,
        id: &str,
        digest: Option<&str>,
    ) -> Result<Approval> {
        require_administrator(actor, "approve connectors")?;
        let host = self.host()?;
        let plugins = host.refresh().await?;
        let plugin = plugins.require(id)?;
        if let Some(reviewed) = digest {
            let reviewed = reviewed.trim();
            let reviewed = reviewed.strip_prefix("sha256:").unwrap_or(reviewed);
            if !reviewed.eq_ignore_ascii_case(&plugin.digest) {
                return Err(Conflict(format!(
                    "connector `{id}` was not approved: its file is sha256:{}, not the sha256:{} that was reviewed; review the file as it is now and approve its digest",
                    plugin.digest,
                    crate::text::clean(reviewed, 80)
                ))
                .into());
            }
        }
        // What is approved is what this process loaded; the file must still hold it.
        let on_disk =
            crate::plugins::digest_on_disk(&plugin.path, host.sandbox_limits().max_plugin_bytes)
                .await?;
        if on_disk != plugin.digest {
            return Err(Conflict(format!(
                "connector `{id}` was not approved: its file changed while it was being approved (sha256:{on_disk} now); review it again"
            ))
            .into());
        }
        let approval = Approval::of(plugin, &actor.name, crate::state::now());
        self.state.approve_connector(&approval).await?;
        let detail = format!("sha256:{}", approval.digest);
        self.state
            .record(actor, "connector.approve", id, &detail)
            .await?;
        Ok(approval)
    }

    /// Withdraws a connector's approval: its connections and exports stop working until it is
    /// approved again. Administrators only.
    pub async fn revoke_connector(&self, actor: &Actor, id: &str) -> Result<()> {
        require_administrator(actor, "revoke connectors")?;
        if !self.state.revoke_connector(id).await? {
            bail!("connector `{id}` has no approval to revoke");
        }
        self.state.record(actor, "connector.revoke", id, "").await
    }

    /// The connector with this id as its file is now, if an administrator approved it so: the
    /// copy every use of it then runs.
    pub async fn approved_connector(&self, id: &str) -> Result<Arc<Plugin>> {
        let plugins = self.host()?.refresh().await?;
        let plugin = plugins.require(id)?;
        approval::require(plugin, self.state.approval(id).await?.as_ref())?;
        Ok(plugin.clone())
    }

    // ---- connections ----

    /// Checks the credential with the vendor, then saves the connection with the credential
    /// sealed. Administrators only.
    pub async fn add_connection(
        &self,
        actor: &Actor,
        request: ConnectionRequest,
    ) -> Result<(ConnectionRecord, CredentialCheck)> {
        require_administrator(actor, "add connections")?;
        check_name("connection", &request.name)?;
        check_privacy(&request.name, request.accept_privacy_notice)?;
        let key = self.key()?;
        let plugin = self.approved_connector(&request.connector).await?;
        if self.state.connection(&request.name).await.is_ok() {
            return Err(Conflict(format!(
                "a connection named `{}` already exists",
                request.name
            ))
            .into());
        }
        let connection = Connection {
            connector: request.connector.clone(),
            base_url: request.base_url.clone(),
            data_centre: request.data_centre.clone(),
            credential: request.credential.clone(),
        };
        let check = self
            .host()?
            .check_connection_with(plugin, &connection)
            .await
            .with_context(|| format!("connection `{}` was not saved", request.name))?;
        let record = self
            .state
            .add_connection(
                key,
                &NewConnection {
                    name: &request.name,
                    connector: &request.connector,
                    base_url: request.base_url.as_deref(),
                    data_centre: request.data_centre.as_deref(),
                    credential: &request.credential,
                    token_expires_at: request.token_expires_in.map(expires_at),
                    access: request.access,
                    checked_at: (check == CredentialCheck::Accepted).then(crate::state::now),
                },
                actor,
            )
            .await?;
        let detail = format!(
            "connector {}, privacy notice accepted, open to {}",
            record.connector,
            crate::state::to_text(&record.access)
        );
        self.state
            .record(actor, "connection.add", &record.name, &detail)
            .await?;
        Ok((record, check))
    }

    /// Checks a saved connection's credential with the vendor again.
    pub async fn test_connection(&self, actor: &Actor, name: &str) -> Result<CredentialCheck> {
        let record = self.state.connection(name).await?;
        permit(actor, &record)?;
        let plugin = self.approved_connector(&record.connector).await?;
        let connection = self.connection(&record).await?;
        let check = self
            .host()?
            .check_connection_with(plugin, &connection)
            .await?;
        if check == CredentialCheck::Accepted {
            self.state.mark_checked(record.id).await?;
        }
        Ok(check)
    }

    /// Replaces a connection's credential (once the vendor accepted the new one) or who may
    /// use it. Administrators only.
    pub async fn update_connection(
        &self,
        actor: &Actor,
        name: &str,
        changes: ConnectionChanges,
    ) -> Result<ConnectionRecord> {
        require_administrator(actor, "change connections")?;
        let record = self.state.connection(name).await?;
        if let Some(credential) = &changes.credential {
            let key = self.key()?;
            let plugin = self.approved_connector(&record.connector).await?;
            let connection = Connection {
                connector: record.connector.clone(),
                base_url: record.base_url.clone(),
                data_centre: record.data_centre.clone(),
                credential: credential.clone(),
            };
            self.host()?
                .check_connection_with(plugin, &connection)
                .await
                .with_context(|| format!("connection `{name}` keeps its old credential"))?;
            self.state
                .replace_credential(
                    key,
                    &record,
                    credential,
                    changes.token_expires_in.map(expires_at),
                )
                .await?;
        }
        let mut detail = vec![];
        if changes.credential.is_some() {
            detail.push("credential replaced".to_string());
        }
        if let Some(access) = changes.access {
            self.state.set_access(record.id, access).await?;
            detail.push(format!("open to {}", crate::state::to_text(&access)));
        }
        self.state
            .record(actor, "connection.update", name, &detail.join(", "))
            .await?;
        self.state.connection(name).await
    }

    /// Removes a connection; history stays. A connection exports use is removed only with
    /// `with_exports`, and its exports with it. Administrators only. Returns the exports
    /// removed.
    pub async fn remove_connection(
        &self,
        actor: &Actor,
        name: &str,
        with_exports: bool,
    ) -> Result<Vec<String>> {
        require_administrator(actor, "remove connections")?;
        let record = self.state.connection(name).await?;
        let users: Vec<String> = self
            .state
            .exports()
            .await?
            .into_iter()
            .filter(|e| e.connection_id == record.id)
            .map(|e| e.name)
            .collect();
        if !users.is_empty() && !with_exports {
            let (which, those, them) = match users.len() {
                1 => ("export", "that export", "it"),
                _ => ("exports", "those exports", "them"),
            };
            bail!(
                "connection `{name}` is used by {which} {}; remove {those} first, or give --with-exports to remove {them} too",
                users.join(", ")
            );
        }
        let removed = self.state.remove_connection(name, actor).await?;
        let detail = match removed.is_empty() {
            true => String::new(),
            false => format!("with exports {}", removed.join(", ")),
        };
        self.state
            .record(actor, "connection.remove", name, &detail)
            .await?;
        Ok(removed)
    }

    // ---- OAuth sign-in with a vendor ----

    /// Saves the platform's OAuth application for a connector. Administrators only.
    pub async fn set_oauth_app(
        &self,
        actor: &Actor,
        app: &oauth::OAuthApp,
        client_secret: &crate::Secret,
    ) -> Result<()> {
        self.state
            .set_oauth_app(self.key()?, actor, app, client_secret)
            .await
    }

    /// Starts "Authenticate with <vendor>" for a new connection through `connector`: the
    /// vendor's authorize URL to send the browser to, and what must come back with the code.
    /// Administrators only (they alone add connections).
    pub async fn start_oauth(
        &self,
        actor: &Actor,
        connection: &OAuthConnection,
        redirect_uri: &str,
    ) -> Result<oauth::Authorization> {
        require_administrator(actor, "add connections")?;
        // What would refuse the connection later is refused before the vendor is involved.
        check_name("connection", &connection.name)?;
        check_privacy(&connection.name, connection.accept_privacy_notice)?;
        if self.state.connection(&connection.name).await.is_ok() {
            return Err(Conflict(format!(
                "a connection named `{}` already exists",
                connection.name
            ))
            .into());
        }
        self.approved_connector(&connection.connector).await?;
        let (app, _) = self.oauth_app_of(&connection.connector).await?;
        oauth::authorize(&app, redirect_uri)
    }

    /// Ends "Authenticate with <vendor>": exchanges the code for tokens, learns the
    /// account's data centre where the vendor needs it, and saves the connection as
    /// [`Workspace::add_connection`] does (the vendor checks the credential first).
    pub async fn finish_oauth(
        &self,
        actor: &Actor,
        connection: OAuthConnection,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&crate::Secret>,
    ) -> Result<(ConnectionRecord, CredentialCheck)> {
        require_administrator(actor, "add connections")?;
        let (app, secret) = self.oauth_app_of(&connection.connector).await?;
        let network = self.host()?.network();
        let tokens =
            oauth::exchange_code(network, &app, &secret, code, redirect_uri, verifier).await?;
        let data_centre = match &app.metadata_url {
            Some(url) => Some(oauth::data_centre(network, url, &tokens.access_token).await?),
            None => None,
        };
        let refresh = tokens.refresh_token.map(|refresh_token| TokenRefresh {
            refresh_token,
            token_url: app.token_url.clone(),
        });
        self.add_connection(
            actor,
            ConnectionRequest {
                name: connection.name,
                connector: connection.connector,
                base_url: app.base_url.clone(),
                data_centre,
                credential: Credential::OAuth {
                    access_token: tokens.access_token,
                    refresh,
                },
                token_expires_in: tokens.expires_in,
                access: connection.access,
                accept_privacy_notice: connection.accept_privacy_notice,
            },
        )
        .await
    }

    async fn oauth_app_of(&self, connector: &str) -> Result<(oauth::OAuthApp, crate::Secret)> {
        self.state
            .oauth_app(self.key()?, connector)
            .await?
            .with_context(|| {
                format!(
                    "no OAuth application is set for connector `{connector}`: an administrator sets one with `connector-host oauth-app set {connector}`"
                )
            })
    }

    /// Reports every request of the runs this workspace makes to `observer` (metrics).
    pub fn with_request_observer(mut self, observer: crate::RequestObserver) -> Workspace {
        self.options.observer = Some(observer);
        self
    }

    /// The library's view of a saved connection, its OAuth token renewed if it expired.
    async fn connection(&self, record: &ConnectionRecord) -> Result<Connection> {
        let key = self.key()?;
        let mut stored = self.state.credential(key, record).await?;
        if let Credential::OAuth { refresh, .. } = &stored
            && token_expired(record.token_expires_at.as_deref())
        {
            let Some(refresh) = refresh.clone() else {
                bail!(
                    "the OAuth access token of connection `{}` expired at {} and it has no refresh token; add the connection again",
                    record.name,
                    record.token_expires_at.as_deref().unwrap_or("?")
                );
            };
            let tokens = oauth::refresh(self.host()?.network(), &refresh)
                .await
                .with_context(|| {
                    format!("renewing the OAuth token of connection `{}`", record.name)
                })?;
            stored = Credential::OAuth {
                access_token: tokens.access_token,
                refresh: Some(TokenRefresh {
                    refresh_token: tokens.refresh_token.unwrap_or(refresh.refresh_token),
                    token_url: refresh.token_url,
                }),
            };
            self.state
                .replace_credential(key, record, &stored, tokens.expires_in.map(expires_at))
                .await?;
            tracing::info!(connection = %record.name, "renewed the OAuth access token");
        }
        Ok(Connection {
            connector: record.connector.clone(),
            base_url: record.base_url.clone(),
            data_centre: record.data_centre.clone(),
            credential: stored,
        })
    }

    // ---- exports ----

    /// Validates an export (settings, mapping against the source's columns, segments, the
    /// connector's `validate` against the vendor) and saves it. Does not run it.
    pub async fn add_export(&self, actor: &Actor, request: ExportRequest) -> Result<ExportRecord> {
        check_name("export", &request.name)?;
        let connection = self.state.connection(&request.connection).await?;
        permit(actor, &connection)?;
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
        let current = self.state.export(name).await?;
        let connection = self.state.connection_by_id(current.connection_id).await?;
        permit(actor, &connection)?;
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
        done: &str,
    ) -> Result<()> {
        let not_done = || format!("export `{}` was not {done}", request.name);
        if let Some(schedule) = &request.schedule {
            Schedule::parse(schedule).with_context(not_done)?;
        }
        let export = Export {
            settings: request.settings.clone(),
            mapping: FieldMapping::parse(&request.mapping).with_context(not_done)?,
            segments: request.segments.clone(),
            leave_action: request.leave_action.clone(),
        };
        let plugin = self.approved_connector(&connection.connector).await?;
        if let Some(id) = &request.leave_action
            && let Some(action) = plugin.info.leave_actions.iter().find(|a| a.id == *id)
            && !action.reversible
            && !request.confirm_irreversible
        {
            bail!(
                "{}: its leave action `{id}` is irreversible ({}); confirm it (--confirm-irreversible) to save the export",
                not_done(),
                action.help
            );
        }
        let library_connection = self.connection(connection).await?;
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
        let export = self.state.export(name).await?;
        permit(
            actor,
            &self.state.connection_by_id(export.connection_id).await?,
        )?;
        self.state.remove_export(name, actor).await?;
        self.state.record(actor, "export.remove", name, "").await
    }

    // ---- runs ----

    /// Runs a saved export in this process: continues its run cut short or failed if there
    /// is one (unless `fresh`), else starts a new one. Only what changed is sent (everything
    /// with `full`, or when the mapping, settings or connector version changed since the last
    /// completed run); every settled piece is recorded; `stop` ends the run cleanly.
    pub async fn run_export(
        &self,
        actor: &Actor,
        name: &str,
        how: RunRequest,
        progress: &dyn Progress,
        stop: Option<CancellationToken>,
    ) -> Result<RunOutcome> {
        let RunRequest {
            trigger,
            fresh,
            full,
        } = how;
        let export = self.state.export(name).await?;
        let record = self.state.connection_by_id(export.connection_id).await?;
        permit(actor, &record)?;
        let lock = match self.state.lock_export(&export).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return Err(AlreadyRunning(format!(
                    "export `{name}` is already running (one run at a time per export)"
                ))
                .into());
            }
            Err(e) => {
                // The run was asked for and cannot start: the history says why.
                let why = format!("the run could not start: {e:#}");
                let run_id = self
                    .state
                    .record_refused_run(&export, trigger, actor, &why)
                    .await?;
                return Err(e.context(format!("run {run_id} of export `{name}` could not start")));
            }
        };

        let fence = lock.fence().clone();
        let unfinished = self.state.unfinished_run(&export).await?;
        let (run_id, resumed, full) = match unfinished {
            Some(id) if !fresh => {
                // The full run an earlier attempt was asked for stays full.
                let full = self.state.resume_run(id, &fence, full).await?;
                (id, true, full)
            }
            other => {
                if let Some(id) = other {
                    self.state
                        .abandon_run(id, &format!("abandoned: {} started afresh", actor.name))
                        .await?;
                }
                let run_id = self
                    .state
                    .start_run(&export, trigger, actor, full, Some(&fence))
                    .await?;
                (run_id, false, full)
            }
        };
        let attempt = Attempt {
            run_id,
            resumed,
            full,
            lock,
        };
        self.execute_run(&export, &record, attempt, progress, stop, None)
            .await
    }

    /// Queues a run of a saved export for the `serve` workers (the same queue scheduled runs
    /// go through); the run's id. A run cut short or failed is queued to be continued, unless
    /// `fresh`; an export has at most one queued run.
    pub async fn queue_export(&self, actor: &Actor, name: &str, how: RunRequest) -> Result<i64> {
        let export = self.state.export(name).await?;
        let record = self.state.connection_by_id(export.connection_id).await?;
        permit(actor, &record)?;
        self.approved_connector(&record.connector).await?;
        self.state
            .enqueue_run(&export, how.trigger, actor, how.fresh, how.full)
            .await
    }

    /// Runs a run this worker claimed from the queue: continues it when an earlier attempt
    /// made progress (its worker died, or it was queued to continue), else starts it. When
    /// `handover` is cancelled while it runs (the worker is stopping), the run is left waiting
    /// for another worker rather than interrupted.
    pub async fn run_claimed(
        &self,
        claim: Claim,
        progress: &dyn Progress,
        stop: Option<CancellationToken>,
        handover: Option<&CancellationToken>,
    ) -> Result<RunOutcome> {
        let export = self.state.export_by_id(claim.export_id).await?;
        let record = self.state.connection_by_id(export.connection_id).await?;
        let (resumed, full) = self
            .state
            .start_claimed(claim.run_id, claim.lock.fence())
            .await?;
        let attempt = Attempt {
            run_id: claim.run_id,
            resumed,
            full,
            lock: claim.lock,
        };
        self.execute_run(&export, &record, attempt, progress, stop, handover)
            .await
    }

    /// Runs an attempt of a recorded run while holding its export's lock, and records how it
    /// ended. The run stops cleanly on `stop`, and at once when the lock is lost (a lease that
    /// could not be renewed in time, or that another worker took: that worker continues it).
    async fn execute_run(
        &self,
        export: &ExportRecord,
        record: &ConnectionRecord,
        attempt: Attempt,
        progress: &dyn Progress,
        stop: Option<CancellationToken>,
        handover: Option<&CancellationToken>,
    ) -> Result<RunOutcome> {
        let Attempt {
            run_id,
            resumed,
            full,
            lock,
        } = attempt;
        let fence = lock.fence().clone();
        let outcome = self
            .attempt_run(export, record, run_id, full, &fence, progress, stop)
            .await;
        let handed_over = handover.is_some_and(CancellationToken::is_cancelled);
        let outcome = self
            .record_attempt(export, run_id, resumed, &fence, handed_over, outcome)
            .await;
        lock.release().await;
        outcome
    }

    /// Records how an attempt ended, while this worker holds the run: a worker that lost its
    /// lock writes nothing (the run is another worker's, or waits for one).
    async fn record_attempt(
        &self,
        export: &ExportRecord,
        run_id: i64,
        resumed: bool,
        fence: &Fence,
        handed_over: bool,
        attempt: Result<(RunReport, SyncBasis)>,
    ) -> Result<RunOutcome> {
        if fence.lost().is_cancelled() {
            let why = fence.why().unwrap_or_default();
            tracing::warn!(
                run = run_id,
                export = %export.name,
                "this worker stopped the run: its lock on the export was lost ({why}); the worker that takes the run over continues it"
            );
            return match attempt {
                Ok((report, _)) => Ok(RunOutcome {
                    run_id,
                    resumed,
                    report,
                }),
                Err(e) => Err(e.context(format!("run {run_id} of export `{}`", export.name))),
            };
        }
        match attempt {
            Ok((mut report, basis)) => {
                // A continuation that cannot be accounted for is not continued again.
                if let Err(why) = report.check(true) {
                    let why = format!(
                        "the run's report does not add up ({why}); the next run starts afresh"
                    );
                    tracing::error!(run = run_id, "{why}");
                    self.state.give_up_run(run_id, fence, &why).await?;
                    return Err(anyhow::anyhow!(why));
                }
                let (state, error) = match &report.status {
                    RunStatus::Succeeded => (RunState::Succeeded, None),
                    RunStatus::Failed(e) => (RunState::Failed, Some(e.as_str())),
                    // A worker stopping hands the run to the next worker to come.
                    RunStatus::Interrupted if handed_over => (RunState::Running, None),
                    RunStatus::Interrupted => (RunState::Interrupted, None),
                };
                let synced = report.succeeded().then_some((export, &basis));
                self.finish(run_id, fence, state, error, Some(&report), synced)
                    .await?;
                if resumed && let Ok(record) = self.state.run(run_id).await {
                    // What the whole run cost, every attempt's included.
                    report.cover_attempts(
                        record.attempts,
                        crate::run::Figures {
                            requests: record.requests,
                            retries: record.retries,
                            batches: record.counts.batches,
                            duration: Duration::from_secs_f64(record.seconds),
                        },
                    );
                }
                Ok(RunOutcome {
                    run_id,
                    resumed,
                    report,
                })
            }
            Err(e) if crate::pg::is_transient(&e) => {
                // The state is out of reach: the run stays under way, for the next worker
                // (or the next run) once it is back.
                Err(e.context(format!(
                    "run {run_id} of export `{}` waits for the state to be reachable again",
                    export.name
                )))
            }
            Err(e) => {
                // Refused before sending anything: a new run is over; a resumed one stays
                // resumable with what it had settled.
                let state = if resumed {
                    RunState::Interrupted
                } else {
                    RunState::Failed
                };
                self.finish(run_id, fence, state, Some(&format!("{e:#}")), None, None)
                    .await?;
                Err(e.context(format!("run {run_id} of export `{}`", export.name)))
            }
        }
    }

    /// Writes a run's end under `fence`, trying again while the state is out of reach and the
    /// lock surely holds; a run another worker took over is left to it.
    async fn finish(
        &self,
        run_id: i64,
        fence: &Fence,
        state: RunState,
        error: Option<&str>,
        report: Option<&RunReport>,
        synced: Option<(&ExportRecord, &SyncBasis)>,
    ) -> Result<()> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self
                .state
                .finish_run(run_id, Some(fence), state, error, report, synced)
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    tracing::warn!(
                        run = run_id,
                        "the run was taken over by another worker: this attempt's end is not recorded"
                    );
                    return Ok(());
                }
                Err(e) if crate::pg::is_transient(&e) && fence.holds() => {
                    tracing::warn!(
                        run = run_id,
                        "recording the run's end failed ({e:#}); trying again"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one private step of two entry points"
    )]
    async fn attempt_run(
        &self,
        export: &ExportRecord,
        record: &ConnectionRecord,
        run_id: i64,
        full: bool,
        fence: &Fence,
        progress: &dyn Progress,
        stop: Option<CancellationToken>,
    ) -> Result<(RunReport, SyncBasis)> {
        let source = self.source()?;
        let plugin = self.approved_connector(&record.connector).await?;
        let (basis, full) = self.sync_mode(export, &plugin, full).await?;
        let connection = self.connection(record).await?;
        let options = RunOptions {
            max_profiles: self.max_profiles().await?,
            max_bad_rows: match self.options.max_bad_rows {
                Some(n) => Some(n),
                None => self.max_bad_rows().await?,
            },
            journal: Some(Arc::new(self.state.journal(export, run_id, fence))),
            // The vendor counts the account's requests, whichever run or worker sends them.
            account: Some(SharedAccount {
                key: format!("{}:{}", record.connector, record.fingerprint),
                slots: self.state.account_slots(),
            }),
            full,
            stop,
            fence: Some(fence.clone()),
            ..self.options.clone()
        };
        let report = self
            .host()?
            .run_export_with(
                plugin,
                &connection,
                &saved(export)?,
                source,
                &options,
                progress,
            )
            .await?;
        Ok((report, basis))
    }

    /// What the next run of a saved export would do, without sending anything or changing any
    /// state (a dry run). `full` plans a full run.
    pub async fn plan_export(&self, actor: &Actor, name: &str, full: bool) -> Result<RunPlan> {
        let export = self.state.export(name).await?;
        let record = self.state.connection_by_id(export.connection_id).await?;
        permit(actor, &record)?;
        let plugin = self.approved_connector(&record.connector).await?;
        // The run the next one continues, read as that run's next attempt would read it.
        let continues = self.state.unfinished_run(&export).await?;
        let full = full || self.state.full_asked(continues).await?;
        let (_, full) = self.sync_mode(&export, &plugin, full).await?;
        let options = RunOptions {
            journal: Some(Arc::new(self.state.sync_reader(&export, continues))),
            full,
            ..self.options.clone()
        };
        let mut plan = self
            .host()?
            .plan_export_with(plugin, &saved(&export)?, self.source()?, &options)
            .await?;
        plan.continues_run = continues;
        Ok(plan)
    }

    /// What a run syncs with, and why it must be full, if it must: asked for, or the mapping,
    /// settings or connector version changed since the last completed run.
    async fn sync_mode(
        &self,
        export: &ExportRecord,
        plugin: &Plugin,
        asked: bool,
    ) -> Result<(SyncBasis, Option<String>)> {
        let basis = SyncBasis {
            connector: plugin.info.id.clone(),
            connector_version: plugin.info.version.clone(),
            mapping: export.mapping.clone(),
            settings: export.settings.clone(),
        };
        if asked {
            return Ok((basis, Some("a full run was asked for".into())));
        }
        let before = self.state.sync_basis(export).await?;
        let why = before.and_then(|before| basis.full_because(&before));
        Ok((basis, why))
    }

    /// The connector of an export's connection.
    async fn connector_of(&self, export_id: i64) -> Result<String> {
        let export = self.state.export_by_id(export_id).await?;
        Ok(self
            .state
            .connection_by_id(export.connection_id)
            .await?
            .connector)
    }

    /// Works as one of the state's workers until `stop` is cancelled: fires the schedules
    /// that fall due (each fire queues one run, whichever worker fires it first) and runs
    /// queued runs, and runs whose worker is gone, up to `options.max_runs` at a time. Exports
    /// added, changed or removed meanwhile are picked up within `options.poll`. The state out
    /// of reach (a database restart, a cut connection) pauses the worker, which says so and
    /// tries again; it never ends it. On stop, runs under way finish their batches in flight,
    /// checkpoint and are left waiting for the next worker.
    pub async fn serve(
        self: Arc<Self>,
        stop: CancellationToken,
        options: ServeOptions,
    ) -> Result<()> {
        self.key()?;
        self.source()?;
        self.host()?;
        let worker = self.state.worker().to_string();
        let mut due: HashMap<i64, (String, chrono::DateTime<Utc>)> = HashMap::new();
        let mut running: HashMap<i64, String> = HashMap::new();
        let mut runs: JoinSet<(i64, String, Result<RunOutcome>)> = JoinSet::new();
        let mut outage = Outage::default();
        tracing::info!(%worker, state = %self.state.location(), "serving: scheduled and queued runs");
        loop {
            let now = Utc::now();
            let exports = match self.state.exports().await {
                Ok(exports) => {
                    outage.over();
                    exports
                }
                Err(e) => {
                    let pause = outage.begin(&e);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                        Some(done) = runs.join_next(), if !runs.is_empty() => {
                            log_run(&worker, &mut running, done);
                            continue;
                        }
                    }
                }
            };
            due.retain(|id, _| exports.iter().any(|e| e.id == *id));
            for export in &exports {
                let Some(text) = &export.schedule else {
                    due.remove(&export.id);
                    continue;
                };
                if due.get(&export.id).is_some_and(|(known, _)| known == text) {
                    continue;
                }
                match Schedule::parse(text).map(|s| s.next_after(now)) {
                    Ok(Some(next)) => {
                        tracing::info!(export = %export.name, next = %next.to_rfc3339(), "scheduled");
                        due.insert(export.id, (text.clone(), next));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(export = %export.name, "{e:#}"),
                }
            }
            for export in &exports {
                let Some((text, at)) = due.get_mut(&export.id) else {
                    continue;
                };
                if *at > now {
                    continue;
                }
                let fire = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                match self.state.fire_schedule(export, &fire).await {
                    Ok(Some(run)) => {
                        tracing::info!(export = %export.name, run, %fire, "schedule fired: run queued")
                    }
                    Ok(None) => {
                        tracing::debug!(export = %export.name, %fire, "schedule fired by another worker")
                    }
                    // The state out of reach: fired again at the next look (a fire is
                    // recorded once, whoever records it).
                    Err(e) if crate::pg::is_transient(&e) => {
                        tracing::warn!(export = %export.name, "the schedule could not fire yet: {e:#}");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(export = %export.name, "the schedule could not fire: {e:#}")
                    }
                }
                if let Some(next) = Schedule::parse(text).ok().and_then(|s| s.next_after(now)) {
                    *at = next;
                }
            }
            while running.len() < options.max_runs.max(1) {
                let claim = match self.state.claim_run().await {
                    Ok(Some(claim)) => claim,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("could not claim a queued run: {e:#}");
                        break;
                    }
                };
                let name = self
                    .state
                    .export_by_id(claim.export_id)
                    .await
                    .map(|e| e.name)
                    .unwrap_or_else(|_| format!("#{}", claim.export_id));
                tracing::info!(%worker, export = %name, run = claim.run_id, "run claimed");
                running.insert(claim.export_id, name.clone());
                let workspace = self.clone();
                let (id, run_stop, shutdown) = (claim.export_id, stop.child_token(), stop.clone());
                let watch = options.watch.clone();
                let worker = worker.clone();
                runs.spawn(async move {
                    let run_id = claim.run_id;
                    let fence = claim.lock.fence().clone();
                    let progress: Arc<dyn Progress> = match &watch {
                        Some(watch) => watch.started(run_id, &run_stop),
                        None => Arc::new(NoProgress),
                    };
                    let attempt =
                        workspace.run_claimed(claim, &*progress, Some(run_stop), Some(&shutdown));
                    let outcome = match AssertUnwindSafe(attempt).catch_unwind().await {
                        Ok(outcome) => outcome,
                        Err(panic) => {
                            let why = format!(
                                "worker {worker} failed on the run (it panicked: {})",
                                panic_message(&*panic)
                            );
                            Err(workspace.note_failure(id, run_id, &fence, why).await)
                        }
                    };
                    if let Some(watch) = &watch {
                        let connector = workspace.connector_of(id).await.unwrap_or_default();
                        watch.finished(run_id, &connector, &outcome);
                    }
                    (id, name, outcome)
                });
            }
            let next_due = due
                .values()
                .map(|(_, at)| *at)
                .min()
                .map(|at| (at - Utc::now()).to_std().unwrap_or_default())
                .unwrap_or(options.poll)
                .min(options.poll);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(next_due) => {}
                _ = options.wake.notified() => {}
                Some(done) = runs.join_next(), if !runs.is_empty() => log_run(&worker, &mut running, done),
            }
        }
        tracing::info!(
            runs = runs.len(),
            "stopping: finishing the batches in flight; the runs wait for the next worker"
        );
        while let Some(done) = runs.join_next().await {
            log_run(&worker, &mut running, done);
        }
        Ok(())
    }

    /// Records that this worker failed on a run (a panic), so that the run is not claimed in
    /// a loop: after a few such failures it ends failed with the reason. The lease is given
    /// back at once, for another worker to try. The error to report.
    async fn note_failure(
        &self,
        export_id: i64,
        run_id: i64,
        fence: &Fence,
        why: String,
    ) -> anyhow::Error {
        tracing::error!(run = run_id, "{why}");
        match self.state.note_failure(run_id, fence, &why).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(run = run_id, "the run is another worker's now"),
            Err(e) => tracing::warn!(run = run_id, "the failure could not be recorded: {e:#}"),
        }
        self.state.give_up_lease(export_id, fence).await;
        anyhow::anyhow!(why)
    }
}

/// What a panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// How long the state has been out of reach, so that a worker says so once, backs off, and
/// says when it is back.
#[derive(Default)]
struct Outage {
    since: Option<std::time::Instant>,
    tries: u32,
}

impl Outage {
    /// The state could not be reached: how long to wait before trying again.
    fn begin(&mut self, error: &anyhow::Error) -> Duration {
        if self.since.is_none() {
            tracing::warn!(
                "the state cannot be reached ({error:#}); this worker pauses and tries again (runs under way stop only if their lease cannot be renewed in time)"
            );
            self.since = Some(std::time::Instant::now());
        } else {
            tracing::debug!("the state still cannot be reached: {error:#}");
        }
        self.tries += 1;
        Duration::from_millis(200 << self.tries.min(5))
    }

    /// The state answered.
    fn over(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                "the state is reachable again after {:.1} s; this worker goes on",
                since.elapsed().as_secs_f64()
            );
        }
        self.tries = 0;
    }
}

/// How a worker serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// How often the worker looks for changed exports and queued runs.
    pub poll: Duration,
    /// Runs this worker makes at a time.
    pub max_runs: usize,
    /// Wakes the worker before `poll` is up (a run was queued by this process).
    pub wake: Arc<tokio::sync::Notify>,
    /// Told of each run this worker makes: its progress, and how it ended.
    pub watch: Option<Arc<dyn RunWatch>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            poll: Duration::from_secs(5),
            max_runs: 8,
            wake: Arc::default(),
            watch: None,
        }
    }
}

/// Follows the runs a worker makes (an HTTP server's live progress and metrics).
pub trait RunWatch: Send + Sync {
    /// Run `run_id` starts on this worker: where it reports its progress; cancelling `stop`
    /// ends it as a signal would (its batches in flight settle, the next run continues it).
    fn started(&self, run_id: i64, stop: &CancellationToken) -> Arc<dyn Progress>;
    /// Run `run_id` of an export through `connector` ended (or could not start).
    fn finished(&self, run_id: i64, connector: &str, outcome: &Result<RunOutcome>);
}

fn log_run(
    worker: &str,
    running: &mut HashMap<i64, String>,
    done: std::result::Result<(i64, String, Result<RunOutcome>), tokio::task::JoinError>,
) {
    match done {
        Ok((id, name, outcome)) => {
            running.remove(&id);
            match outcome {
                Ok(o) => tracing::info!(
                    %worker,
                    export = %name,
                    run = o.run_id,
                    status = ?o.report.status,
                    profiles = o.report.counts.profiles,
                    sent = o.report.counts.sent(),
                    "run ended"
                ),
                Err(e) => tracing::warn!(%worker, export = %name, "run refused: {e:#}"),
            }
        }
        Err(e) => tracing::error!("a run panicked: {e}"),
    }
}

/// A saved export as the library runs it.
fn saved(export: &ExportRecord) -> Result<Export> {
    Ok(Export {
        settings: export.settings.clone(),
        mapping: FieldMapping::parse(&export.mapping)?,
        segments: export.segments.clone(),
        leave_action: export.leave_action.clone(),
    })
}

/// Refuses a role the connection is not open to.
fn permit(actor: &Actor, connection: &ConnectionRecord) -> Result<()> {
    if !connection.access.permits(actor.role) {
        return Err(Forbidden(format!(
            "{} acts as a contributor, and connection `{}` is open to administrators only",
            actor.name, connection.name
        ))
        .into());
    }
    Ok(())
}

/// Refuses a connection whose data-privacy notice was not accepted.
fn check_privacy(name: &str, accepted: bool) -> Result<()> {
    if !accepted {
        bail!(
            "connection `{name}` was not saved: the data-privacy notice must be accepted (exported profiles leave the platform's compliance boundary for the vendor's); pass --accept-privacy-notice"
        );
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.trim() != name || name.chars().any(char::is_control) {
        bail!(
            "`{name}` is not a usable {what} name: give a non-empty name without surrounding spaces or control characters"
        );
    }
    Ok(())
}

fn expires_at(valid_for: Duration) -> String {
    let at = Utc::now() + chrono::Duration::from_std(valid_for).unwrap_or(chrono::Duration::MAX);
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Whether a token expires within the next minute (so it lasts through validation).
fn token_expired(expires_at: Option<&str>) -> bool {
    expires_at
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .is_some_and(|at| at.with_timezone(&Utc) <= Utc::now() + chrono::Duration::seconds(60))
}
