//! `connector-host`: the operator's command line.

mod check;
mod connections;
mod exit;
mod exports;
mod history;
mod input;
mod oauth_apps;
mod output;
mod people;
mod plugins;
mod run_once;
mod words;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use connector_host::{
    Actor, ConnectorHost, HostOptions, Limits, MasterKey, Role, ServeOptions, Workspace,
};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The heading of the options every command takes, shown after each command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "connector-host",
    version,
    about = "Export customer-profile segments to email-marketing vendors through sandboxed connector plugins"
)]
struct Cli {
    /// Directory holding the connector components (.wasm); `plugins install` puts the bundled
    /// ones there [default: $XDG_DATA_HOME/connector-host/plugins or
    /// ~/.local/share/connector-host/plugins, created on first use].
    #[arg(long, global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Where compiled connectors are cached [default: $XDG_CACHE_HOME/connector-host or ~/.cache/connector-host].
    #[arg(long, global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_CACHE")]
    cache_dir: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for vendors, besides the platform's roots (a
    /// corporate proxy's CA, or a test server's).
    #[arg(long, global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_CA_BUNDLE")]
    ca_bundle: Option<PathBuf>,
    /// Compile connectors at every start instead of caching them.
    #[arg(long, global = true, help_heading = GLOBAL)]
    no_cache: bool,
    /// Memory one connector call may use, in MiB: all the memories and tables of its
    /// component's instances together.
    #[arg(long, global = true, help_heading = GLOBAL, default_value_t = 128)]
    memory_mib: usize,
    /// Memory all connector calls of this process may use at once, in MiB; a call that would
    /// go past it waits for room [default: a quarter of the machine's memory, at most 2048].
    #[arg(long, global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_MEMORY_MIB")]
    host_memory_mib: Option<usize>,
    /// CPU time one connector call may use, in seconds (network waits not counted).
    #[arg(long, global = true, help_heading = GLOBAL, default_value_t = 30.0)]
    cpu_seconds: f64,
    /// Wall-clock time one connector call may take, in seconds.
    #[arg(long, global = true, help_heading = GLOBAL, default_value_t = 300.0)]
    call_timeout_seconds: f64,
    /// CPU time compiling one connector may use, in seconds (its own threads' CPU, so a busy
    /// machine does not count; compiled connectors are cached, so this is paid once a file).
    #[arg(
        long,
        global = true, help_heading = GLOBAL,
        env = "CONNECTOR_HOST_COMPILE_CPU_SECONDS",
        default_value_t = 120.0
    )]
    compile_cpu_seconds: f64,
    /// Largest connector file loaded from the plugin directory, in MiB.
    #[arg(long, global = true, help_heading = GLOBAL, default_value_t = 32)]
    max_plugin_mib: u64,
    /// Where the saved state is (connections, exports, run history): a directory (SQLite), or a postgres:// URL shared by workers on several machines [default: $XDG_STATE_HOME/connector-host or ~/.local/state/connector-host].
    #[arg(long, global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_STATE")]
    state: Option<String>,
    /// This process's name in the run history and in the leases it holds [default: HOST:PID].
    #[arg(long, global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_WORKER")]
    worker: Option<String>,
    /// File holding the master key that seals credentials (mode 0600); the environment
    /// variable CONNECTOR_HOST_MASTER_KEY takes precedence [default: $XDG_CONFIG_HOME/connector-host/master.key].
    #[arg(long, global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The role you act in: administrator or contributor.
    #[arg(long = "as", value_name = "ROLE", global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_ROLE", default_value = "administrator", value_parser = parse_role)]
    acting_role: Role,
    /// Your name, recorded with what you do [default: $USER].
    #[arg(long = "user", value_name = "NAME", global = true, help_heading = GLOBAL, env = "CONNECTOR_HOST_USER")]
    acting_user: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The connectors in the plugin directory: what each asks for, and approving them.
    Plugins(plugins::PluginsArgs),
    /// Export segments once, with the connection and export given on the command line
    /// (nothing saved).
    Run(Box<run_once::RunArgs>),
    /// Saved vendor accounts: add, list, show, test, update, remove.
    #[command(subcommand)]
    Connection(connections::ConnectionCommand),
    /// Saved exports: add, list, show, edit, run, remove.
    #[command(subcommand)]
    Export(exports::ExportCommand),
    /// Run history: `runs [EXPORT]`, `runs show ID`, `runs rejections ID --csv`.
    Runs(history::RunsArgs),
    /// Run the exports that have a schedule when they are due, until SIGINT or SIGTERM.
    Serve {
        /// Seconds between looks for new, changed or removed schedules and for queued runs.
        #[arg(long, default_value_t = 5.0)]
        poll_seconds: f64,
        /// Runs this worker makes at a time.
        #[arg(long, default_value_t = 8)]
        max_runs: usize,
        /// Also serve the HTTP API and the web console at this address (e.g. 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The URL people reach the server at, behind a proxy for instance (OAuth redirect
        /// URIs are made from it) [default: http://LISTEN].
        #[arg(long)]
        public_url: Option<String>,
        /// A reverse proxy in front of the server (an address or CIDR block, repeatable): its
        /// X-Forwarded-For names the client whose failed sign-ins are counted. Anyone else's
        /// X-Forwarded-For is ignored.
        #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_cidr)]
        trusted_proxies: Vec<ipnet::IpNet>,
    },
    /// Settings of the saved state: the profile source and the per-run limits (profiles, bad rows).
    #[command(subcommand)]
    Settings(exports::SettingsCommand),
    /// The master key that seals stored credentials.
    #[command(subcommand)]
    Key(KeyCommand),
    /// People who sign in to the server (API and console), with their roles.
    #[command(subcommand)]
    Users(people::UsersCommand),
    /// The platform's OAuth application with each vendor ("Authenticate with <vendor>").
    #[command(subcommand, name = "oauth-app")]
    OAuthApp(oauth_apps::OAuthAppCommand),
    /// API tokens, for programs that use the HTTP API.
    #[command(subcommand)]
    Tokens(people::TokensCommand),
    /// What was changed, by whom, newest first.
    Audit {
        /// How many changes to show.
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Write a new random master key to a file readable by you only (never overwrites).
    Generate {
        /// Where [default: the --master-key-file location].
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// A CIDR block, or a single address (a block of one).
fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{text}` is neither an address nor a CIDR block (e.g. 10.0.0.0/8)"))
}

pub(crate) fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "administrator" | "admin" => Ok(Role::Administrator),
        "contributor" => Ok(Role::Contributor),
        other => Err(format!(
            "`{other}` is not a role: administrator or contributor"
        )),
    }
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`connector-host runs | head -1`) instead of failing to write.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Connectors' sockets are capped at half the descriptors the process may open; raising
    // the soft limit to the hard one gives them, and the host's own files, room.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,connector_host::workspace=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Errors may quote connectors and files: printed cleaned, on one line.
            eprintln!(
                "error: {}",
                connector_host::text::clean(&words::error(&e), 8_000)
            );
            exit::of_error(&e)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let memory_bytes = cli.memory_mib << 20;
    let limits = Limits {
        memory_bytes,
        host_memory_bytes: match cli.host_memory_mib {
            Some(mib) => mib << 20,
            None => connector_host::sandbox::default_host_memory(memory_bytes),
        },
        cpu_time: Some(Duration::try_from_secs_f64(cli.cpu_seconds).context("--cpu-seconds")?),
        call_timeout: Duration::try_from_secs_f64(cli.call_timeout_seconds)
            .context("--call-timeout-seconds")?,
        compile_cpu_time: Duration::try_from_secs_f64(cli.compile_cpu_seconds)
            .context("--compile-cpu-seconds")?,
        max_plugin_bytes: cli.max_plugin_mib << 20,
        ..Limits::default()
    };
    let options = HostOptions {
        cache_dir: if cli.no_cache {
            None
        } else {
            cli.cache_dir.clone().or_else(default_cache_dir)
        },
        limits,
        network: connector_host::NetworkOptions {
            ca_bundle: cli.ca_bundle.clone(),
            ..Default::default()
        },
    };
    if let Command::Key(KeyCommand::Generate { file }) = &cli.command {
        let path = file
            .clone()
            .or_else(|| cli.master_key_file.clone())
            .or_else(default_key_file)
            .context("no place for the key: give --file")?;
        let key = MasterKey::create_file(&path)?;
        println!(
            "wrote a new master key (id {}) to {} (mode 0600)",
            key.id(),
            path.display()
        );
        println!("keep a copy somewhere safe: without it the saved credentials cannot be read");
        return Ok(ExitCode::SUCCESS);
    }
    // The plugin directory is loaded only by the commands that use a connector.
    let context = Session {
        cli: &cli,
        options,
        host: OnceCell::new(),
    };
    match &cli.command {
        Command::Plugins(args) => plugins::run(&context, args).await,
        Command::Run(args) => run_once::run_once(&context, args).await,
        Command::Connection(command) => connections::run(&context, command).await,
        Command::Export(command) => exports::run(&context, command).await,
        Command::Settings(command) => exports::settings(&context, command).await,
        Command::Runs(args) => history::run(&context, args).await,
        Command::Serve {
            poll_seconds,
            max_runs,
            listen,
            public_url,
            trusted_proxies,
        } => {
            let poll = Duration::try_from_secs_f64(*poll_seconds).context("--poll-seconds")?;
            let workspace = context.workspace_with_host().await?;
            let stop = stop_on_signals();
            let options = ServeOptions {
                poll,
                max_runs: *max_runs,
                ..ServeOptions::default()
            };
            let Some(listen) = listen else {
                Arc::new(workspace).serve(stop, options).await?;
                return Ok(ExitCode::SUCCESS);
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let address = listener.local_addr()?;
            let public_url = public_url
                .clone()
                .unwrap_or_else(|| format!("http://{address}"));
            let server =
                connector_host_api::Server::new(workspace, &public_url, trusted_proxies.clone());
            let options = server.serve_options(options);
            // Printed for people and scripts (with --listen 127.0.0.1:0, the port chosen).
            println!("listening on http://{address} (console and API; public URL {public_url})");
            let worker = server.workspace().serve(stop.clone(), options);
            let http = connector_host_api::serve(listener, server, stop);
            let (worker, http) = tokio::join!(worker, http);
            worker.and(http)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Users(command) => people::users(&context, command).await,
        Command::OAuthApp(command) => oauth_apps::run(&context, command).await,
        Command::Tokens(command) => people::tokens(&context, command).await,
        Command::Audit { limit, json } => people::audit(&context, *limit, *json).await,
        Command::Key(_) => unreachable!("handled above"),
    }
}

/// What every command may need, each part made when first asked for.
pub struct Session<'a> {
    cli: &'a Cli,
    options: HostOptions,
    host: OnceCell<Arc<ConnectorHost>>,
}

impl Session<'_> {
    /// Who acts.
    pub fn actor(&self) -> Actor {
        Actor {
            name: self
                .cli
                .acting_user
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "operator".into()),
            role: self.cli.acting_role,
        }
    }

    /// The workspace as saved, for reading and for what needs neither the master key, the
    /// profile source nor the connectors.
    pub async fn bare(&self) -> Result<Workspace> {
        let location = match &self.cli.state {
            Some(location) => location.clone(),
            None => default_state_dir()
                .context("no state directory: give --state")?
                .display()
                .to_string(),
        };
        Workspace::open(&location, self.cli.worker.as_deref()).await
    }

    /// How connectors are loaded and limited.
    pub fn host_options(&self) -> &HostOptions {
        &self.options
    }

    /// The plugin directory: the one given, or the default, created (0700) if missing.
    pub fn plugin_dir(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.cli.plugins {
            return Ok(dir.clone());
        }
        let dir = default_plugin_dir().context("no plugin directory: give --plugins")?;
        if !dir.is_dir() {
            connector_host::workspace::create_private_dir(&dir)?;
        }
        Ok(dir)
    }

    /// The connectors of the plugin directory, loaded on first use.
    pub async fn host(&self) -> Result<&Arc<ConnectorHost>> {
        self.host
            .get_or_try_init(|| async {
                let host = ConnectorHost::open(&self.plugin_dir()?, self.options.clone()).await?;
                Ok(Arc::new(host))
            })
            .await
    }

    /// The workspace with the master key and the connectors, for commands that reach vendors.
    pub async fn workspace_with_host(&self) -> Result<Workspace> {
        Ok(self
            .workspace(true)
            .await?
            .with_host(self.host().await?.clone()))
    }

    /// The workspace, with the master key when `with_key` and the profile source when the
    /// settings name one, without the connectors.
    pub async fn workspace(&self, with_key: bool) -> Result<Workspace> {
        let mut workspace = self.bare().await?.with_settings_source().await?;
        if with_key {
            workspace = workspace.with_master_key(self.master_key()?).await?;
        }
        Ok(workspace)
    }

    fn master_key(&self) -> Result<MasterKey> {
        if let Some(text) = std::env::var(connector_host::workspace::MASTER_KEY_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            return MasterKey::from_text(&text)
                .with_context(|| format!("in {}", connector_host::workspace::MASTER_KEY_ENV));
        }
        let path = self.cli.master_key_file.clone().or_else(default_key_file);
        match path {
            Some(path) if path.exists() || self.cli.master_key_file.is_some() => {
                MasterKey::from_file(&path)
            }
            _ => anyhow::bail!(
                "no master key: set {} or --master-key-file, or create one with `connector-host key generate`",
                connector_host::workspace::MASTER_KEY_ENV
            ),
        }
    }
}

/// A token cancelled at the first SIGINT or SIGTERM; a second one quits at once.
pub fn stop_on_signals() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        for signal in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            if signal > 0 {
                eprintln!("stopping now; the next run resumes from the last checkpoint");
                std::process::exit(130);
            }
            eprintln!("stopping: finishing the batches in flight (signal again to quit at once)");
            token.cancel();
        }
    });
    stop
}

fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("connector-host"))
}

fn default_plugin_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("connector-host/plugins"))
}

fn default_key_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("connector-host/master.key"))
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("connector-host"))
}
