//! The plugin directory's connectors, and their approval by an administrator (by digest: the
//! file reviewed is the file that runs).

use std::sync::Arc;

use anyhow::{Result, bail};

use super::Workspace;
use crate::access::{Actor, Operation};
use crate::approval::{self, Approval, ApprovalStatus};
use crate::failure::Conflict;
use crate::plugins::Plugin;

impl Workspace {
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
        actor.require(Operation::ApproveConnectors, "approve connectors")?;
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
        actor.require(Operation::ApproveConnectors, "revoke connectors")?;
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
}
