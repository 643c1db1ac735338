//! The one face of the library for every front end (the CLI, the HTTP API and its console):
//! saved connections and exports, runs on demand and on schedule, their history, people and
//! settings. Each capability is a module of its own; each asks the one access rule
//! ([`crate::access`]) before it reads or writes, and the store beneath stays private.
//!
//! | module | its job |
//! |---|---|
//! | `connectors` | the plugin directory's connectors and their approval by digest |
//! | `connections` | connections: add, test, change, remove |
//! | `credentials` | a connection's credential unsealed, its OAuth token renewed |
//! | `signin` | "Authenticate with <vendor>": OAuth applications and sign-in |
//! | `exports` | exports: add, edit, remove, checked with the vendor |
//! | `runs` | a run's life: start or continue, record, finish; dry runs |
//! | `scheduler` | a worker: schedules, the queue, runs whose worker is gone |
//! | `settings` | the settings catalogue, checked values, the profile source they name |
//! | `people` | users, API tokens, sign-in sessions, the audit log |
//! | `views` | every read, access-checked |

mod connections;
mod connectors;
mod credentials;
mod exports;
mod people;
mod runs;
mod scheduler;
mod settings;
mod signin;
mod views;

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::ConnectorHost;
use crate::failure::Missing;
use crate::run::RunOptions;
use crate::source::ProfileSource;
use crate::state::{MasterKey, State};

pub use crate::state::{
    AuditEntry, ConnectionRecord, ExportRecord, LEASE_SECONDS_SETTING, MASTER_KEY_ENV,
    MIN_PASSWORD_CHARS, RunAttempt, RunRecord, RunState, SESSION_HOURS, Session, TOKEN_PREFIX,
    TokenInfo, Trigger, User, create_private_dir, random_token,
};
pub use connections::{ConnectionChanges, ConnectionRequest};
pub use exports::{ExportChanges, ExportRequest};
pub use runs::{RunOutcome, RunRequest};
pub use scheduler::{RunWatch, ServeOptions};
pub use settings::{
    DEFAULT_MAX_PROFILES, MAX_BAD_ROWS_SETTING, MAX_PROFILES_SETTING, SETTINGS, Setting,
    SettingChanged,
};
pub use signin::OAuthConnection;

/// Saved connections and exports over a connector host and a profile source.
pub struct Workspace {
    host: Option<Arc<ConnectorHost>>,
    state: Arc<State>,
    key: Option<MasterKey>,
    source: Option<Arc<dyn ProfileSource>>,
    options: RunOptions,
}

impl Workspace {
    /// The workspace whose state is at `location`: a `postgres://` URL (one database for
    /// many workers), else a directory (SQLite, `state.db` in it), created if new. `worker`
    /// names this process in the run history and in leases (`host:pid` unless named). Add the
    /// connector host to use connectors, the master key to reach credentials and a profile
    /// source to save or run exports; what needs none of them (listing, removing) works
    /// without.
    pub async fn open(location: &str, worker: Option<&str>) -> Result<Workspace> {
        let mut state = State::connect(location).await?;
        if let Some(worker) = worker {
            state = state.with_worker(worker);
        }
        Ok(Workspace::new(Arc::new(state)))
    }

    /// The workspace whose state is the SQLite file at `path`.
    pub fn open_file(path: &std::path::Path) -> Result<Workspace> {
        Ok(Workspace::new(Arc::new(State::open(path)?)))
    }

    /// Where the state is, fit to print (a PostgreSQL URL without its password).
    pub fn location(&self) -> String {
        self.state.location()
    }

    /// Whether workers on several machines share the state (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.state.is_shared()
    }

    /// This process's name in the run history and in leases.
    pub fn worker(&self) -> &str {
        self.state.worker()
    }

    /// How many calls this process made to the store so far (statements, batches, an
    /// engine's own work such as a lease or a settled piece): to measure what an operation
    /// costs, read it before and after.
    pub fn store_calls() -> u64 {
        crate::state::db::calls()
    }

    /// Takes the profile source the settings name, when they name one and none was given.
    pub async fn with_settings_source(self) -> Result<Workspace> {
        if self.source.is_some() {
            return Ok(self);
        }
        Ok(match self.source_from_settings().await? {
            Some(source) => self.with_source(source),
            None => self,
        })
    }

    /// A workspace over `state`.
    pub(crate) fn new(state: Arc<State>) -> Workspace {
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

    fn key(&self) -> Result<&MasterKey, Missing> {
        self.key.as_ref().ok_or(Missing::MasterKey)
    }

    fn source(&self) -> Result<&dyn ProfileSource, Missing> {
        self.source.as_deref().ok_or(Missing::ProfileSource)
    }

    /// Reports every request of the runs this workspace makes to `observer` (metrics).
    pub fn with_request_observer(mut self, observer: crate::RequestObserver) -> Workspace {
        self.options.observer = Some(observer);
        self
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.trim() != name || name.chars().any(char::is_control) {
        bail!(
            "`{name}` is not a usable {what} name: give a non-empty name without surrounding spaces or control characters"
        );
    }
    Ok(())
}
