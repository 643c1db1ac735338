//! Connector host: exports segments of customer profiles to email-marketing vendors through
//! sandboxed WebAssembly connector plugins.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use connector_host::*;
//! let host = ConnectorHost::open("plugins".as_ref(), HostOptions::default()).await?;
//! let source = FileSource::new("profiles.csv", "memberships.csv", "id")?;
//! let connection = Connection {
//!     connector: "campaign-monitor".into(),
//!     base_url: None,
//!     data_centre: None,
//!     credential: Credential::ApiKey(Secret::new(std::env::var("CM_API_KEY")?)),
//! };
//! let export = Export {
//!     settings: vec![("list-id".into(), "a58ee1d3039b8bec838e6d1482a8a965".into())],
//!     mapping: FieldMapping::parse(&["email=email", "first-name=first_name"])?,
//!     segments: vec!["newsletter".into()],
//!     leave_action: None,
//! };
//! let report = host.run_export(&connection, &export, &source, &RunOptions::default(), &NoProgress).await?;
//! println!("{}", report.summary());
//! # Ok(()) }
//! ```

mod access;
pub mod approval;
pub mod broker;
pub mod contract;
pub mod email;
pub mod failure;
mod fence;
mod mapping;
pub mod oauth;
mod pg;
pub mod plugins;
#[cfg(feature = "console-progress")]
mod progress;
pub mod run;
pub mod sandbox;
mod schedule;
mod secret;
mod source;
pub(crate) mod state;
pub mod text;
mod tls;
pub mod workspace;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;

pub use access::{Access, Actor, Operation, Role};
pub use approval::{Approval, ApprovalStatus};
pub use broker::{
    BrokerPolicy, NetworkOptions, RequestObserver, RequestRecord, Resolve, StaticResolver,
};
pub use fence::Fence;
pub use mapping::FieldMapping;
pub use plugins::{Plugin, Plugins, Skipped};
#[cfg(feature = "console-progress")]
pub use progress::ConsoleProgress;
pub use run::{
    Connection, CredentialCheck, Export, IssueCsv, IssueKind, IssueListener, NoProgress, Probe,
    ProbeExport, Progress, Reason, RunCounts, RunIssue, RunJournal, RunMode, RunOptions, RunPlan,
    RunReport, RunStatus, Stage, duration_words,
};
pub use sandbox::Limits;
pub use schedule::Schedule;
pub use secret::{Credential, CredentialKind, Secret, TokenRefresh};
pub use source::{
    FileSource, PostgresSource, Profile, ProfileSource, ProfileStream, Row, SkipReason, SkippedRow,
};
pub use state::MasterKey;
pub use workspace::{
    ConnectionRequest, ExportRequest, OAuthConnection, RunOutcome, RunRequest, RunWatch,
    ServeOptions, Workspace,
};

/// How to set up a host.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Limits applied to every connector call.
    pub limits: Limits,
    /// Where compiled connectors are cached, so later starts skip compilation.
    pub cache_dir: Option<PathBuf>,
    /// How vendors are reached (the resolver, the cap on open sockets).
    pub network: NetworkOptions,
}

/// A host with the connectors of one plugin directory loaded.
pub struct ConnectorHost {
    sandbox: Arc<sandbox::Sandbox>,
    network: broker::Network,
    dir: PathBuf,
    plugins: std::sync::RwLock<Arc<Plugins>>,
    /// One refresh at a time: a second waits and finds the directory loaded.
    refreshing: tokio::sync::Mutex<()>,
}

impl ConnectorHost {
    /// Loads every connector in `plugin_dir`. Files that are not valid connectors are listed in
    /// [`Plugins::skipped`] with the reason; they do not stop the others from loading.
    pub async fn open(plugin_dir: &Path, options: HostOptions) -> Result<ConnectorHost> {
        let sandbox = Arc::new(sandbox::Sandbox::new(options.limits, options.cache_dir)?);
        let plugins = Plugins::load_dir(&sandbox, plugin_dir).await?;
        Ok(ConnectorHost {
            sandbox,
            network: broker::Network::new(&options.network)?,
            dir: plugin_dir.to_path_buf(),
            plugins: std::sync::RwLock::new(Arc::new(plugins)),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The connectors loaded, and the files skipped, as last loaded (see [`Self::refresh`]).
    pub fn plugins(&self) -> Arc<Plugins> {
        self.plugins.read().unwrap().clone()
    }

    /// Reads the plugin directory again if any file in it was added, changed, replaced or
    /// removed since it was loaded (compiled code comes from the cache), so that what is
    /// listed, approved and run is what is on disk now. Calls under way keep the copy they
    /// started with.
    pub async fn refresh(&self) -> Result<Arc<Plugins>> {
        let _one_at_a_time = self.refreshing.lock().await;
        let current = self.plugins();
        if current.is_current(&self.dir)? {
            return Ok(current);
        }
        let fresh = Arc::new(Plugins::load_dir(&self.sandbox, &self.dir).await?);
        *self.plugins.write().unwrap() = fresh.clone();
        Ok(fresh)
    }

    /// The limits every connector call runs under.
    pub fn sandbox_limits(&self) -> &Limits {
        self.sandbox.limits()
    }

    /// The memory connector calls hold now, and the most they may hold at once.
    pub fn memory_in_use(&self) -> (usize, usize) {
        (
            self.sandbox.memory_in_use(),
            self.sandbox.limits().host_memory_bytes,
        )
    }

    /// How the host reaches vendors.
    pub(crate) fn network(&self) -> &broker::Network {
        &self.network
    }

    /// Asks a connector to describe itself from a fresh instance, as every call starts (useful
    /// to check a plugin, and to measure what setting up a call costs).
    pub async fn describe(&self, connector: &str) -> Result<contract::ConnectorInfo> {
        let plugin = self.plugins().require(connector)?.clone();
        let offline = Arc::new(broker::Broker::offline(connector));
        let deadline = self.sandbox.limits().describe_timeout;
        self.sandbox
            .call(&plugin.pre, offline, deadline, async |c, store| {
                c.describe(store).await
            })
            .await
    }
}
