//! How fast and lean an export is, against the vendors' own ceilings. Generates its data (nothing
//! stored), runs each simulator in a separate process so the figures are the host's alone, and
//! prints a table. Build in release:
//!
//! `cargo run --release -p connector-tests --bin bench` (add `--help` for the knobs)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use connector_host::state::{CredentialKind, StoredCredential};
use connector_host::{
    Access, Actor, Connection, ConnectionRequest, ConnectorHost, Credential, Export, ExportRequest,
    FieldMapping, HostOptions, MasterKey, NoProgress, ProfileSource, Role, RunOptions, RunReport,
    RunRequest, Secret, State, Workspace,
};
use connector_tests::artifacts;
use connector_tests::sample::GeneratedSource;
use connector_tests::sim::campaign_monitor::{self, CampaignMonitorSim};
use connector_tests::sim::mailchimp::{self, MailchimpSim};
use serde::Serialize;

/// The same allocator as the `connector-host` binary, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Benchmark exports against the vendor simulators")]
struct Args {
    #[command(subcommand)]
    serve: Option<Serve>,
    /// Profiles per export.
    #[arg(long, default_value_t = 1_000_000)]
    profiles: u64,
    /// Latency per vendor call for the ceiling runs, in milliseconds.
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
    /// Requests in flight at the vendor for the ceiling runs (Mailchimp's ceiling is its 10
    /// connections; Campaign Monitor publishes none, so the same number is used for it). Twice
    /// as many batches are prepared at once, so a slot never waits on encoding.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Contacts for the sandbox-cost comparison.
    #[arg(long, default_value_t = 100_000)]
    sandbox_contacts: u64,
    /// Connector copies in the start-up plugin directory.
    #[arg(long, default_value_t = 50)]
    copies: usize,
}

/// Internal: serve one simulator and print how to reach it (the benchmark runs this in a child
/// process).
#[derive(Subcommand)]
enum Serve {
    ServeSim {
        vendor: String,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
}

/// How a child simulator is reached.
#[derive(Serialize, serde::Deserialize)]
struct SimInfo {
    base_url: String,
    key: String,
    list: String,
}

struct SimProcess {
    child: Child,
    info: SimInfo,
}

impl SimProcess {
    fn start(vendor: &str, latency_ms: u64) -> Result<SimProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve-sim", vendor, "--latency-ms", &latency_ms.to_string()])
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let info =
            serde_json::from_str(&line).with_context(|| format!("simulator said: {line}"))?;
        Ok(SimProcess { child, info })
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(vendor: &str, latency_ms: u64) -> Result<()> {
    let latency = Duration::from_millis(latency_ms);
    let _keep;
    let info = match vendor {
        "campaign-monitor" => {
            let sim = CampaignMonitorSim::start_with(
                0,
                campaign_monitor::Behaviour {
                    latency,
                    ..Default::default()
                },
            )
            .await?;
            let key = "bench-key".to_string();
            let list = sim.add_list(&sim.add_client("Bench", &key), "Bench");
            let info = SimInfo {
                base_url: sim.base_url(),
                key,
                list,
            };
            _keep = (Some(sim), None);
            info
        }
        "mailchimp" => {
            let sim = MailchimpSim::start_with(
                0,
                mailchimp::Behaviour {
                    latency,
                    ..Default::default()
                },
            )
            .await?;
            let key = sim.add_account("Bench", "us21");
            let list = sim.add_audience(&key, "Bench");
            let info = SimInfo {
                base_url: sim.base_url("{dc}"),
                key,
                list,
            };
            _keep = (None, Some(sim));
            info
        }
        other => bail!("unknown vendor {other}"),
    };
    println!("{}", serde_json::to_string(&info)?);
    // Serve until the benchmark closes our stdin (or kills us).
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    Ok(())
}

/// Peak resident memory of this process since the last reset, in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn export_to(sim: &SimProcess, connector: &str) -> (Connection, Export) {
    let setting = if connector == "mailchimp" {
        "audience-id"
    } else {
        "list-id"
    };
    (
        Connection {
            connector: connector.into(),
            base_url: Some(sim.info.base_url.clone()),
            data_centre: None,
            credential: Credential::ApiKey(Secret::new(sim.info.key.clone())),
        },
        Export {
            settings: vec![(setting.into(), sim.info.list.clone())],
            mapping: FieldMapping::parse(&[
                "email=email",
                "first-name=first_name",
                "last-name=last_name",
            ])
            .unwrap(),
            segments: vec!["everyone".into()],
            leave_action: None,
        },
    )
}

async fn run(
    host: &ConnectorHost,
    connector: &str,
    sim: &SimProcess,
    source: &dyn ProfileSource,
    in_flight: Option<usize>,
) -> Result<(RunReport, Duration, f64)> {
    let (connection, export) = export_to(sim, connector);
    // With a cap on requests in flight, prepare twice as many batches so no slot waits on one.
    let options = match in_flight {
        Some(n) => RunOptions {
            concurrency: 2 * n,
            broker: connector_host::BrokerPolicy {
                max_concurrent_requests: Some(n),
                ..Default::default()
            },
            ..RunOptions::default()
        },
        None => RunOptions::default(),
    };
    reset_peak_rss();
    let started = Instant::now();
    let report = host
        .run_export(&connection, &export, source, &options, &NoProgress)
        .await?;
    let wall = started.elapsed();
    if !report.succeeded() {
        bail!("{}", report.summary());
    }
    Ok((report, wall, peak_rss_mb()))
}

/// Campaign Monitor's import body, encoded natively: the baseline for the sandbox's cost.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NativeImport<'a> {
    subscribers: Vec<NativeSubscriber<'a>>,
    resubscribe: bool,
    #[serde(rename = "QueueSubscriptionBasedAutoResponders")]
    queue: bool,
    #[serde(rename = "RestartSubscriptionBasedAutoresponders")]
    restart: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NativeSubscriber<'a> {
    email_address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    consent_to_track: &'static str,
}

/// Sends `contacts` profiles to the simulator the way the connector does, natively: the same
/// source, the same JSON, the same HTTP client, without the sandbox.
async fn native_export(sim: &SimProcess, source: &GeneratedSource) -> Result<()> {
    use base64::Engine as _;
    use http_body_util::BodyExt;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:x", sim.info.key))
    );
    let url = format!(
        "{}/subscribers/{}/import.json",
        sim.info.base_url, sim.info.list
    );
    let stream = source.profiles(&["everyone".into()])?;
    let mut batch: Vec<connector_host::Profile> = Vec::with_capacity(1000);
    let mut profiles = stream.profiles.peekable();
    while profiles.peek().is_some() {
        batch.clear();
        batch.extend(
            profiles
                .by_ref()
                .take(1000)
                .filter_map(Result::ok)
                .filter(|p| p.values[1].is_some()),
        );
        let subscribers = batch
            .iter()
            .map(|p| NativeSubscriber {
                email_address: p.values[1].as_deref().unwrap(),
                name: Some(
                    format!(
                        "{} {}",
                        p.values[2].as_deref().unwrap_or(""),
                        p.values[3].as_deref().unwrap_or("")
                    )
                    .trim()
                    .to_string(),
                ),
                consent_to_track: "Unchanged",
            })
            .collect();
        let body = serde_json::to_vec(&NativeImport {
            subscribers,
            resubscribe: false,
            queue: false,
            restart: false,
        })?;
        let request = http::Request::post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json; charset=utf-8")
            .body(
                http_body_util::Full::new(bytes::Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )?;
        let (response, io) = wasmtime_wasi_http::default_send_request(request, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (_, body) = tokio::join!(response.into_body().collect(), io);
        body.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok(())
}

fn copy_plugins(dir: &Path, copies: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..copies {
        let source = if i % 2 == 0 {
            artifacts::CAMPAIGN_MONITOR
        } else {
            artifacts::MAILCHIMP
        };
        std::fs::copy(source, dir.join(format!("connector-{i:02}.wasm")))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Serve::ServeSim { vendor, latency_ms }) = &args.serve {
        return serve(vendor, *latency_ms).await;
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful figures");
    }
    let work = Path::new(artifacts::TARGET_DIR).join("bench");
    let _ = std::fs::remove_dir_all(&work);
    let plugins = work.join("plugins");
    connector_tests::harness::install_connectors(&plugins)?;
    let host = std::sync::Arc::new(
        ConnectorHost::open(
            &plugins,
            HostOptions {
                cache_dir: Some(work.join("cache")),
                ..HostOptions::default()
            },
        )
        .await?,
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "connector-host benchmark: {} profiles per export, {cores} cores\n",
        args.profiles
    );

    println!(
        "1. {} profiles, segment `everyone`, no injected latency",
        args.profiles
    );
    println!(
        "   {:<18} {:>9} {:>12} {:>14} {:>9} {:>9}",
        "vendor", "wall s", "profiles/s", "peak RSS MB", "requests", "sent"
    );
    let source = GeneratedSource {
        seed: 1,
        count: args.profiles,
    };
    for connector in ["campaign-monitor", "mailchimp"] {
        let sim = SimProcess::start(connector, 0)?;
        let (report, wall, rss) = run(&host, connector, &sim, &source, None).await?;
        println!(
            "   {:<18} {:>9.2} {:>12.0} {:>14.1} {:>9} {:>9}",
            connector,
            wall.as_secs_f64(),
            report.counts.profiles as f64 / wall.as_secs_f64(),
            rss,
            report.requests,
            report.counts.sent()
        );
    }

    println!(
        "\n2. Against the vendor ceiling: {} ms a call, {} requests in flight",
        args.latency_ms, args.concurrency
    );
    println!(
        "   {:<18} {:>9} {:>9} {:>10} {:>7}",
        "vendor", "wall s", "batches", "ceiling s", "ratio"
    );
    for connector in ["campaign-monitor", "mailchimp"] {
        let sim = SimProcess::start(connector, args.latency_ms)?;
        let (report, wall, _) =
            run(&host, connector, &sim, &source, Some(args.concurrency)).await?;
        // Every call (validation included) waits the latency; `concurrency` of them at a time.
        let ceiling = (report.counts.batches as f64 / args.concurrency as f64).ceil()
            * args.latency_ms as f64
            / 1000.0
            + args.latency_ms as f64 / 1000.0;
        println!(
            "   {:<18} {:>9.2} {:>9} {:>10.2} {:>7.3}",
            connector,
            wall.as_secs_f64(),
            report.counts.batches,
            ceiling,
            wall.as_secs_f64() / ceiling
        );
    }

    println!(
        "\n3. Sandbox cost: CPU per 1,000 contacts to Campaign Monitor ({} contacts)",
        args.sandbox_contacts
    );
    let small = GeneratedSource {
        seed: 2,
        count: args.sandbox_contacts,
    };
    let sim = SimProcess::start("campaign-monitor", 0)?;
    let before = cpu_time();
    native_export(&sim, &small).await?;
    let native = cpu_time() - before;
    drop(sim);
    // The same export on a host without the CPU budget (no epoch interruption) shows what the
    // limits themselves cost.
    let unlimited = ConnectorHost::open(
        &plugins,
        HostOptions {
            limits: connector_host::Limits {
                cpu_time: None,
                ..Default::default()
            },
            cache_dir: Some(work.join("cache")),
            ..HostOptions::default()
        },
    )
    .await?;
    let mut measure = Vec::new();
    for h in [&host, &unlimited] {
        let sim = SimProcess::start("campaign-monitor", 0)?;
        let before = cpu_time();
        run(h, "campaign-monitor", &sim, &small, Some(1)).await?;
        measure.push(cpu_time() - before);
    }
    let (component, without_limits) = (measure[0], measure[1]);
    let per_k = |d: Duration| d.as_secs_f64() * 1000.0 / (args.sandbox_contacts as f64 / 1000.0);
    println!(
        "   component {:.2} ms, native {:.2} ms, ratio {:.2}",
        per_k(component),
        per_k(native),
        component.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "   the CPU budget's own cost: {:.2} ms without it, {:.2} ms with it ({:+.1}%)",
        per_k(without_limits),
        per_k(component),
        (component.as_secs_f64() / without_limits.as_secs_f64() - 1.0) * 100.0
    );

    println!("\n4. Start-up with {} connector components", args.copies);
    let many = work.join("many");
    copy_plugins(&many, args.copies)?;
    let cache = work.join("many-cache");
    let started = Instant::now();
    let first = ConnectorHost::open(
        &many,
        HostOptions {
            cache_dir: Some(cache.clone()),
            ..HostOptions::default()
        },
    )
    .await?;
    let cold = started.elapsed();
    drop(first);
    let started = Instant::now();
    let warm = ConnectorHost::open(
        &many,
        HostOptions {
            cache_dir: Some(cache),
            ..HostOptions::default()
        },
    )
    .await?;
    let warm_time = started.elapsed();
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        warm.describe("campaign-monitor").await?;
    }
    let instantiate = started.elapsed() / rounds;
    println!(
        "   first start (compiling) {:.2} s, second start (cache) {:.3} s, one fresh instance + describe {:.3} ms",
        cold.as_secs_f64(),
        warm_time.as_secs_f64(),
        instantiate.as_secs_f64() * 1000.0
    );

    println!(
        "\n5. Checkpoints: {} profiles to Campaign Monitor as a saved export (each batch recorded in SQLite)",
        args.profiles
    );
    let sim = SimProcess::start("campaign-monitor", 0)?;
    let (_, plain, _) = run(&host, "campaign-monitor", &sim, &source, None).await?;
    drop(sim);
    let (saved, rss, db_mb) = saved_run(host.clone(), &work, &source).await?;
    println!(
        "   library run {:.2} s, saved run {:.2} s (ratio {:.3}), peak RSS {rss:.1} MB, state database {db_mb:.1} MB",
        plain.as_secs_f64(),
        saved.as_secs_f64(),
        saved.as_secs_f64() / plain.as_secs_f64()
    );
    Ok(())
}

/// Saves a connection and an export in a fresh state and runs it: the journal's cost.
async fn saved_run(
    host: std::sync::Arc<ConnectorHost>,
    work: &Path,
    source: &GeneratedSource,
) -> Result<(Duration, f64, f64)> {
    let sim = SimProcess::start("campaign-monitor", 0)?;
    let db = work.join("state/state.db");
    let workspace = Workspace::new(std::sync::Arc::new(State::open(&db)?))
        .with_host(host)
        .with_master_key(MasterKey::generate())?
        .with_source(std::sync::Arc::new(source.clone()));
    let admin = Actor {
        name: "bench".into(),
        role: Role::Administrator,
    };
    let (connection, export) = export_to(&sim, "campaign-monitor");
    workspace.approve_connector(&admin, "campaign-monitor")?;
    workspace
        .add_connection(
            &admin,
            ConnectionRequest {
                name: "bench".into(),
                connector: connection.connector,
                base_url: connection.base_url,
                data_centre: None,
                credential: StoredCredential {
                    kind: CredentialKind::ApiKey,
                    secret: Secret::new(sim.info.key.clone()),
                    refresh: None,
                },
                token_expires_in: None,
                access: Access::Administrators,
                accept_privacy_notice: true,
            },
        )
        .await?;
    workspace
        .add_export(
            &admin,
            ExportRequest {
                name: "bench".into(),
                connection: "bench".into(),
                settings: export.settings,
                mapping: vec![
                    "email=email".into(),
                    "first-name=first_name".into(),
                    "last-name=last_name".into(),
                ],
                segments: export.segments,
                schedule: None,
                leave_action: None,
                confirm_irreversible: false,
            },
        )
        .await?;
    reset_peak_rss();
    let started = Instant::now();
    let outcome = workspace
        .run_export(&admin, "bench", RunRequest::default(), &NoProgress, None)
        .await?;
    let wall = started.elapsed();
    if !outcome.report.succeeded() {
        bail!("{}", outcome.report.summary());
    }
    let db_bytes: u64 = std::fs::read_dir(db.parent().unwrap())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    Ok((wall, peak_rss_mb(), db_bytes as f64 / 1e6))
}
