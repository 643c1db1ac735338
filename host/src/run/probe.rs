//! [`Probe`]: a connector's calls made one at a time over a connection, with the same sandbox
//! limits and broker rules as a run, and every answer returned as the connector gave it. For
//! tools that examine a connector (`connector-host plugins check`), not for exporting.

use std::sync::Arc;

use anyhow::Result;
use wasmtime::Store;

use crate::ConnectorHost;
use crate::broker::Broker;
use crate::contract::{
    BatchReport, Connector, ConnectorError, ConnectorInfo, Contact, ExportConfig,
};
use crate::plugins::Plugin;
use crate::run::{Connection, RunOptions};
use crate::sandbox::PluginState;

/// One connector reached over one connection.
pub struct Probe<'h> {
    host: &'h ConnectorHost,
    plugin: Arc<Plugin>,
    base_url: String,
    broker: Arc<Broker>,
}

/// An export's configuration as a probe sends it.
#[derive(Debug, Clone, Default)]
pub struct ProbeExport {
    pub settings: Vec<(String, String)>,
    /// Mapped contact fields (`email` first).
    pub fields: Vec<String>,
    pub leave_action: Option<String>,
}

/// What one call gave: the connector's own answer, or why there was none (a trap, a limit, a
/// deadline: the error's words).
pub type Answer<T> = Result<Result<T, ConnectorError>>;

impl ConnectorHost {
    /// A probe of `connection`'s connector (loaded, approval not required: nothing is saved).
    pub fn probe(&self, connection: &Connection) -> Result<Probe<'_>> {
        self.probe_with(connection, &RunOptions::default())
    }

    /// [`Self::probe`] under `options`' broker policy (a simulator on this machine need not be
    /// paced to the vendor's windows).
    pub fn probe_with(&self, connection: &Connection, options: &RunOptions) -> Result<Probe<'_>> {
        let plugin = self.plugins().require(&connection.connector)?.clone();
        let (base_url, broker) = self.connect(&plugin, connection, options)?;
        Ok(Probe {
            host: self,
            plugin,
            base_url,
            broker: Arc::new(broker),
        })
    }
}

impl Probe<'_> {
    /// What the connector declared when it loaded.
    pub fn info(&self) -> &ConnectorInfo {
        &self.plugin.info
    }

    /// The connector's component file.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    fn config(&self, export: &ProbeExport) -> ExportConfig {
        ExportConfig {
            base_url: self.base_url.clone(),
            settings: export.settings.clone(),
            fields: export.fields.clone(),
            leave_action: export.leave_action.clone(),
        }
    }

    /// Makes one call with `export`'s configuration, under the run's limits and deadline.
    async fn call<R>(
        &self,
        export: &ProbeExport,
        call: impl AsyncFnOnce(
            &Connector,
            &mut Store<PluginState>,
            &ExportConfig,
        ) -> wasmtime::Result<R>,
    ) -> Result<R> {
        let config = self.config(export);
        let sandbox = &self.host.sandbox;
        sandbox
            .call(
                &self.plugin.pre,
                self.broker.clone(),
                sandbox.limits().call_timeout,
                async |c, store| call(c, store, &config).await,
            )
            .await
    }

    /// `validate`, once.
    pub async fn validate(&self, export: &ProbeExport) -> Answer<()> {
        self.call(export, async |c, store, config| {
            c.validate(store, config).await
        })
        .await
    }

    /// `export-batch`, once (no retry).
    pub async fn export_batch(
        &self,
        export: &ProbeExport,
        contacts: &[Contact],
    ) -> Answer<BatchReport> {
        self.call(export, async |c, store, config| {
            c.export_batch(store, config, contacts).await
        })
        .await
    }

    /// `erase-contacts`, once (no retry): only for a connector that declares an erasure.
    pub async fn erase_contacts(
        &self,
        export: &ProbeExport,
        contacts: &[Contact],
    ) -> Answer<BatchReport> {
        self.call(export, async |c, store, config| {
            c.erase_contacts(store, config, contacts).await
        })
        .await
    }

    /// `apply-leave-action`, once (no retry).
    pub async fn apply_leave_action(
        &self,
        export: &ProbeExport,
        action: &str,
        contacts: &[Contact],
    ) -> Answer<BatchReport> {
        self.call(export, async |c, store, config| {
            c.apply_leave_action(store, config, action, contacts).await
        })
        .await
    }
}
