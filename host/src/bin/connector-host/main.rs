//! `connector-host`: the operator's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use connector_host::{
    BrokerPolicy, Connection, ConnectorHost, ConsoleProgress, Credential, Export, FieldMapping,
    FileSource, HostOptions, Limits, RunOptions, Secret,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "connector-host",
    version,
    about = "Export customer-profile segments to email-marketing vendors through sandboxed connector plugins"
)]
struct Cli {
    /// Directory holding the connector components (.wasm).
    #[arg(
        long,
        global = true,
        env = "CONNECTOR_HOST_PLUGINS",
        default_value = "plugins"
    )]
    plugins: PathBuf,
    /// Where compiled connectors are cached [default: $XDG_CACHE_HOME/connector-host or ~/.cache/connector-host].
    #[arg(long, global = true, env = "CONNECTOR_HOST_CACHE")]
    cache_dir: Option<PathBuf>,
    /// Compile connectors at every start instead of caching them.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Largest memory a connector instance may use, in MiB.
    #[arg(long, global = true, default_value_t = 128)]
    memory_mib: usize,
    /// CPU time one connector call may use, in seconds (network waits not counted).
    #[arg(long, global = true, default_value_t = 30.0)]
    cpu_seconds: f64,
    /// Wall-clock time one connector call may take, in seconds.
    #[arg(long, global = true, default_value_t = 300.0)]
    call_timeout_seconds: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the connectors in the plugin directory and the files that did not load.
    Plugins,
    /// Export segments once, with the connection and export given on the command line.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// Connector id, e.g. campaign-monitor.
    #[arg(long)]
    connector: String,
    /// Vendor API base URL, when not the connector's production one (e.g. a local simulator).
    #[arg(long)]
    base_url: Option<String>,
    /// Environment variable holding the vendor credential (never pass it as an argument).
    #[arg(long, default_value = "CONNECTOR_SECRET")]
    secret_env: String,
    /// The credential is an OAuth access token (sent as Bearer) rather than an API key.
    #[arg(long)]
    oauth: bool,
    /// The account's data centre (e.g. us21), for vendors that have them; by default taken from
    /// the API key's suffix.
    #[arg(long)]
    data_centre: Option<String>,
    /// Connector setting, KEY=VALUE (e.g. list-id=...); repeat for several.
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Field mapping, FIELD=COLUMN (e.g. email=email_address); repeat for several.
    #[arg(long = "map", value_name = "FIELD=COLUMN", required = true)]
    mappings: Vec<String>,
    /// Segment to export; repeat for several.
    #[arg(long = "segment", required = true)]
    segments: Vec<String>,
    /// Profiles file (.csv with a header row, or .jsonl).
    #[arg(long)]
    profiles: PathBuf,
    /// Segment memberships file (.csv or .jsonl) with profile_id and segment fields.
    #[arg(long)]
    memberships: PathBuf,
    /// Profile field holding the profile id.
    #[arg(long, default_value = "id")]
    id_column: String,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Requests in flight at once to the vendor [default: the connector's declared vendor limit].
    #[arg(long)]
    max_concurrent_requests: Option<usize>,
    /// Requests per second to the vendor [default: the connector's declared vendor rate].
    #[arg(long)]
    max_requests_per_second: Option<f64>,
    /// Seconds a vendor request may take (connect, first byte, between bytes) before a retry.
    #[arg(long, default_value_t = 120.0)]
    request_timeout_seconds: f64,
    /// Write the contacts that were not delivered, with reasons, to this CSV file.
    #[arg(long)]
    rejections_csv: Option<PathBuf>,
    /// Print the run report as JSON on stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let limits = Limits {
        memory_bytes: cli.memory_mib << 20,
        cpu_time: Some(Duration::try_from_secs_f64(cli.cpu_seconds).context("--cpu-seconds")?),
        call_timeout: Duration::try_from_secs_f64(cli.call_timeout_seconds)
            .context("--call-timeout-seconds")?,
        ..Limits::default()
    };
    let options = HostOptions {
        cache_dir: if cli.no_cache {
            None
        } else {
            cli.cache_dir.clone().or_else(default_cache_dir)
        },
        limits,
    };
    let host = ConnectorHost::open(&cli.plugins, options).await?;
    match cli.command {
        Command::Plugins => {
            list_plugins(&host);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_once(&host, *args).await,
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("connector-host"))
}

fn list_plugins(host: &ConnectorHost) {
    let plugins = host.plugins();
    for p in &plugins.loaded {
        let info = &p.info;
        println!(
            "{} {} ({}), contract {}",
            info.id, info.version, info.display_name, p.contract_version
        );
        println!("  file:      {}", p.path.display());
        println!("  hosts:     {}", info.hosts.join(", "));
        println!("  batch:     up to {} contacts", info.max_batch_size);
        for f in &info.config_fields {
            println!(
                "  setting:   {}{} ({}): {}",
                f.key,
                if f.required { " (required)" } else { "" },
                f.label,
                f.help
            );
        }
        let fields: Vec<String> = info
            .contact_fields
            .iter()
            .map(|f| {
                if f.required {
                    format!("{} (required)", f.key)
                } else {
                    f.key.clone()
                }
            })
            .collect();
        println!("  fields:    {}", fields.join(", "));
    }
    for s in &plugins.skipped {
        println!("skipped {}: {}", s.path.display(), s.reason);
    }
    if plugins.loaded.is_empty() {
        println!("no connectors loaded");
    }
}

async fn run_once(host: &ConnectorHost, args: RunArgs) -> Result<ExitCode> {
    let secret = std::env::var(&args.secret_env)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .with_context(|| {
            format!(
                "no credential: set the environment variable {} to the vendor API key",
                args.secret_env
            )
        })?;
    let mut settings = Vec::new();
    for s in &args.settings {
        let Some((k, v)) = s.split_once('=') else {
            bail!("setting `{s}` must look like KEY=VALUE, e.g. list-id=...");
        };
        settings.push((k.trim().to_string(), v.trim().to_string()));
    }
    let connection = Connection {
        connector: args.connector.clone(),
        base_url: args.base_url.clone(),
        data_centre: args.data_centre.clone(),
        credential: if args.oauth {
            Credential::AccessToken(Secret::new(secret))
        } else {
            Credential::ApiKey(Secret::new(secret))
        },
    };
    let export = Export {
        settings,
        mapping: FieldMapping::parse(&args.mappings)?,
        segments: args.segments.clone(),
    };
    let source = FileSource::new(&args.profiles, &args.memberships, &args.id_column)?;
    let broker = BrokerPolicy {
        max_concurrent_requests: args.max_concurrent_requests,
        max_requests_per_second: args.max_requests_per_second,
        request_timeout: Duration::try_from_secs_f64(args.request_timeout_seconds)
            .context("--request-timeout-seconds")?,
        ..BrokerPolicy::default()
    };
    let options = RunOptions {
        concurrency: args.concurrency,
        broker,
        ..RunOptions::default()
    };
    let progress = ConsoleProgress::new(&args.connector);
    let report = host
        .run_export(&connection, &export, &source, &options, &progress)
        .await?;
    if let Some(path) = &args.rejections_csv {
        write_issues_csv(path, &report.issues)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write_issues_csv(path: &PathBuf, issues: &[connector_host::RunIssue]) -> Result<()> {
    let mut writer =
        csv::Writer::from_path(path).with_context(|| format!("cannot write {}", path.display()))?;
    writer.write_record(["profile_id", "email", "kind", "code", "message"])?;
    for i in issues {
        let kind = serde_json::to_value(i.kind)?;
        writer.write_record([
            &i.profile_id,
            &i.email,
            kind.as_str().unwrap_or(""),
            &i.code,
            &i.message,
        ])?;
    }
    writer.flush()?;
    Ok(())
}
