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
use connector_host::{
    Access, Actor, Connection, ConnectionRequest, ConnectorHost, Credential, Export, ExportRequest,
    FieldMapping, HostOptions, MasterKey, NoProgress, ProfileSource, Role, RunOptions, RunReport,
    RunRequest, Secret, Workspace,
};
use connector_tests::artifacts;
use connector_tests::sample::{self, GeneratedSource};
use connector_tests::sim::Listen;
use connector_tests::sim::campaign_monitor::{self, CampaignMonitorSim};
use connector_tests::sim::delay::DelayProxy;
use connector_tests::sim::mailchimp::{self, MailchimpSim};
use connector_tests::sim::tls::TestCa;
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;

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
    /// Round-trip time on the wire for the ceiling runs (over TLS), in milliseconds.
    #[arg(long, default_value_t = 50)]
    rtt_ms: u64,
    /// Requests in flight at the vendor for the ceiling runs (Mailchimp's ceiling is its 10
    /// connections; Campaign Monitor publishes none, so the same number is used for it). Twice
    /// as many batches are prepared at once, so a slot never waits on encoding.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Contacts for the sandbox-cost comparison.
    #[arg(long, default_value_t = 100_000)]
    sandbox_contacts: u64,
    /// Connector components in the start-up plugin directory.
    #[arg(long, default_value_t = 50)]
    copies: usize,
    /// Contacts each vendor of section 8 gets under its own limits (the time is the limits'
    /// to give: 400 is about 40 s at Brevo's 10 a second and 2 min at MailerLite's 5 imports
    /// a minute).
    #[arg(long, default_value_t = 400)]
    paced_contacts: u64,
    /// Run only these sections (1 to 8; repeat the flag for several). All by default.
    #[arg(long = "section")]
    sections: Vec<u8>,
}

/// Internal: serve one simulator and print how to reach it (the benchmark runs this in a child
/// process).
#[derive(Subcommand)]
enum Serve {
    ServeSim {
        vendor: String,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// The simulated account's name (its API key derives from it).
        #[arg(long, default_value = "Bench")]
        account: String,
        /// Serve HTTPS, writing the CA's certificate to this file.
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// Put a proxy adding this round-trip time in front, in milliseconds.
        #[arg(long, default_value_t = 0)]
        rtt_ms: u64,
    },
    /// A `serve` worker on a PostgreSQL state.
    ServeWorker {
        #[arg(long)]
        state: String,
        #[arg(long)]
        key_file: std::path::PathBuf,
        #[arg(long)]
        plugins: std::path::PathBuf,
        #[arg(long)]
        cache: std::path::PathBuf,
        #[arg(long)]
        name: String,
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
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

/// How the benchmark reaches a child simulator: over TLS (its CA written to `tls_ca`), and
/// through a proxy adding `rtt` when not zero.
#[derive(Default, Clone)]
struct Wire {
    tls_ca: Option<std::path::PathBuf>,
    rtt: Duration,
}

/// What a simulator counted: connections accepted, requests it answered and its own mean
/// answer time.
#[derive(Serialize, serde::Deserialize)]
struct SimStats {
    connections: u64,
    answered: u64,
    mean_answer_ms: f64,
}

impl SimProcess {
    /// CPU time the simulator's process has used (user and system), from `/proc`.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the command's closing parenthesis, by position (some, such as
        // tpgid, are -1 when the process has no terminal): state first, utime the 12th,
        // stime the 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
        // SAFETY: sysconf only reads a constant of the system.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let used = field(11) + field(12);
        Duration::from_secs_f64(used as f64 / ticks)
    }

    /// A connection named `name` to this simulator's account through `connector`, the
    /// privacy notice accepted.
    fn connection(&self, name: &str, connector: &str) -> ConnectionRequest {
        ConnectionRequest {
            name: name.into(),
            connector: connector.into(),
            base_url: Some(self.info.base_url.clone()),
            data_centre: None,
            credential: Credential::ApiKey(Secret::new(self.info.key.clone())),
            token_expires_in: None,
            access: Access::Administrators,
            accept_privacy_notice: true,
        }
    }

    fn start(vendor: &str, latency_ms: u64) -> Result<SimProcess> {
        SimProcess::start_on(vendor, latency_ms, "Bench", &Wire::default())
    }

    /// A simulator whose one account is called `account` (accounts of different names have
    /// different credentials).
    fn start_account(vendor: &str, latency_ms: u64, account: &str) -> Result<SimProcess> {
        SimProcess::start_on(vendor, latency_ms, account, &Wire::default())
    }

    fn start_on(vendor: &str, latency_ms: u64, account: &str, wire: &Wire) -> Result<SimProcess> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve-sim", vendor, "--latency-ms", &latency_ms.to_string()])
            .args(["--account", account])
            .args(["--rtt-ms", &wire.rtt.as_millis().to_string()]);
        if let Some(ca) = &wire.tls_ca {
            command.arg("--tls-ca").arg(ca);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let info =
            serde_json::from_str(&line).with_context(|| format!("simulator said: {line}"))?;
        Ok(SimProcess {
            child,
            info,
            stdin,
            stdout,
        })
    }

    /// What the simulator counted so far.
    fn stats(&mut self) -> Result<SimStats> {
        use std::io::Write as _;
        writeln!(self.stdin, "stats")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("simulator said: {line}"))
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The simulator a child process serves.
enum Sim {
    CampaignMonitor(CampaignMonitorSim),
    Mailchimp(MailchimpSim),
}

async fn serve(vendor: &str, latency_ms: u64, account: &str, wire: &Wire) -> Result<()> {
    let latency = Duration::from_millis(latency_ms);
    let listen = match &wire.tls_ca {
        Some(path) => {
            let ca = TestCa::generate()?;
            ca.write_ca(path)?;
            Listen::tls(&ca)
        }
        None => Listen::plain(0),
    };
    let (mut info, sim) = match vendor {
        "campaign-monitor" => {
            let sim = CampaignMonitorSim::start_on(
                listen,
                campaign_monitor::Behaviour {
                    latency,
                    ..Default::default()
                },
            )
            .await?;
            let key = "bench-key".to_string();
            let list = sim.add_list(&sim.add_client(account, &key), "Bench");
            let info = SimInfo {
                base_url: sim.base_url(),
                key,
                list,
            };
            (info, Sim::CampaignMonitor(sim))
        }
        "mailchimp" => {
            let sim = MailchimpSim::start_on(
                listen,
                mailchimp::Behaviour {
                    latency,
                    ..Default::default()
                },
            )
            .await?;
            let key = sim.add_account(account, "us21");
            let list = sim.add_audience(&key, "Bench");
            let info = SimInfo {
                base_url: sim.base_url("{dc}"),
                key,
                list,
            };
            (info, Sim::Mailchimp(sim))
        }
        other => bail!("unknown vendor {other}"),
    };
    let server = match &sim {
        Sim::CampaignMonitor(cm) => cm.server(),
        Sim::Mailchimp(mc) => mc.server(),
    };
    let addr = server.addr();
    let _proxy = if wire.rtt.is_zero() {
        None
    } else {
        let proxy = DelayProxy::start(addr, wire.rtt).await?;
        info.base_url = info
            .base_url
            .replace(&addr.to_string(), &proxy.addr().to_string());
        Some(proxy)
    };
    println!("{}", serde_json::to_string(&info)?);
    // Answer `stats` lines; serve until the benchmark closes our stdin (or kills us).
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "stats" {
            let (answered, mean) = server.answered();
            let stats = SimStats {
                connections: server.connections(),
                answered,
                mean_answer_ms: mean.as_secs_f64() * 1000.0,
            };
            println!("{}", serde_json::to_string(&stats)?);
        }
    }
    Ok(())
}

/// A memory figure of this process from `/proc/self/status`, in MB.
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Peak resident memory of this process since the last reset, in MB.
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident memory of this process now, in MB.
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
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
    // With a cap on requests in flight (the run prepares twice as many batches by default, so
    // no slot waits on one).
    let options = match in_flight {
        Some(n) => RunOptions {
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
    let mut profiles = stream
        .rows
        .filter_map(|row| match row {
            Ok(connector_host::Row::Profile(p)) => Some(p),
            _ => None,
        })
        .peekable();
    while profiles.peek().is_some() {
        batch.clear();
        batch.extend(
            profiles
                .by_ref()
                .take(1000)
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

/// Fills `dir` with `copies` distinct connectors: the two real ones, and variants of a third
/// (each its own id and digest, so each compiles), as a directory of many vendors would be.
fn copy_plugins(dir: &Path, copies: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(
        artifacts::CAMPAIGN_MONITOR,
        dir.join("campaign-monitor.wasm"),
    )?;
    std::fs::copy(artifacts::MAILCHIMP, dir.join("mailchimp.wasm"))?;
    for i in 2..copies {
        connector_tests::hostile::variant(
            dir,
            &format!("connector-{i:02}.wasm"),
            serde_json::json!({"id": format!("connector-{i:02}")}),
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match &args.serve {
        Some(Serve::ServeSim {
            vendor,
            latency_ms,
            account,
            tls_ca,
            rtt_ms,
        }) => {
            let wire = Wire {
                tls_ca: tls_ca.clone(),
                rtt: Duration::from_millis(*rtt_ms),
            };
            return serve(vendor, *latency_ms, account, &wire).await;
        }
        Some(Serve::ServeWorker {
            state,
            key_file,
            plugins,
            cache,
            name,
        }) => return serve_worker(state, key_file, plugins, cache, name).await,
        None => {}
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
        "connector-host benchmark: {} profiles per export, {cores} cores",
        args.profiles
    );
    let bench = Bench {
        source: GeneratedSource {
            seed: 1,
            count: args.profiles,
        },
        args,
        host,
        plugins,
        work,
    };
    let wanted = |n: u8| bench.args.sections.is_empty() || bench.args.sections.contains(&n);
    if wanted(1) {
        bench.throughput().await?;
    }
    if wanted(2) {
        bench.ceiling().await?;
    }
    if wanted(3) {
        bench.sandbox_cost().await?;
    }
    if wanted(4) {
        bench.start_up().await?;
    }
    if wanted(5) {
        bench.sync().await?;
    }
    if wanted(6) {
        bench.files().await?;
    }
    if wanted(7) {
        bench.workers().await?;
    }
    if wanted(8) {
        bench.vendor_limits().await?;
    }
    Ok(())
}

impl Bench {
    /// Brevo and MailerLite under their own limits, kept by their simulators (in this process:
    /// the pace is the vendors', not the host's): the wall time against the ceiling the
    /// binding window allows for the requests made, the estimate of the time left at a
    /// quarter and at half way against the real end, and what a million contacts take there.
    async fn vendor_limits(&self) -> Result<()> {
        use connector_tests::sim::brevo::{self, BrevoSim};
        use connector_tests::sim::mailerlite::{self, MailerLiteSim};
        let n = self.args.paced_contacts;
        println!(
            "\n8. Vendors' own limits: {n} new contacts each, paced by the windows the connectors declare"
        );
        println!(
            "   {:<11} {:>8} {:>9} {:>10} {:>7} {:>11} {:>11} {:>12}",
            "vendor",
            "requests",
            "wall s",
            "ceiling s",
            "ratio",
            "ETA@25% err",
            "ETA@50% err",
            "1M contacts"
        );
        let dir = tempfile::tempdir()?;
        std::fs::copy(artifacts::BREVO, dir.path().join("brevo.wasm"))?;
        std::fs::copy(artifacts::MAILERLITE, dir.path().join("mailerlite.wasm"))?;
        let host = ConnectorHost::open(
            dir.path(),
            HostOptions {
                cache_dir: Some(self.work.join("cache")),
                ..HostOptions::default()
            },
        )
        .await?;
        let source = GeneratedSource { seed: 3, count: n };
        let mapping = FieldMapping::parse(&[
            "email=email",
            "first-name=first_name",
            "last-name=last_name",
        ])?;
        let brevo =
            BrevoSim::start_with(Listen::plain(0), "xkeysib-bench", brevo::RateLimits::REAL)
                .await?;
        let list = brevo.add_list("Bench");
        let mailerlite =
            MailerLiteSim::start_with(Listen::plain(0), "ml-bench", mailerlite::RateLimits::REAL)
                .await?;
        let group = mailerlite.add_group("Bench");
        // (vendor, connection, setting, the binding window's interval with the host's 2%
        // margin, requests a million contacts need at it)
        let vendors = [
            (
                "Brevo",
                "brevo",
                brevo.base_url(),
                "xkeysib-bench",
                ("list-id", list.to_string()),
                1.02 / 10.0,
                1_000_000.0,
            ),
            (
                "MailerLite",
                "mailerlite",
                mailerlite.base_url(),
                "ml-bench",
                ("group-id", group),
                1.02 * 60.0 / 5.0,
                1_000_000.0 / 50.0,
            ),
        ];
        for (name, connector, base_url, key, setting, interval, million) in vendors {
            let connection = Connection {
                connector: connector.into(),
                base_url: Some(base_url),
                data_centre: None,
                credential: Credential::ApiKey(Secret::new(key.into())),
            };
            let export = Export {
                settings: vec![(setting.0.into(), setting.1)],
                mapping: mapping.clone(),
                segments: vec!["everyone".into()],
                leave_action: None,
            };
            let estimates = connector_tests::harness::HeardEstimates::default();
            let started = Instant::now();
            let report = host
                .run_export(
                    &connection,
                    &export,
                    &source,
                    &RunOptions::default(),
                    &estimates,
                )
                .await?;
            let wall = started.elapsed().as_secs_f64();
            if !report.succeeded() {
                bail!("{name}: {}", report.summary());
            }
            // The binding window's requests: every one for Brevo, the imports for MailerLite.
            let paced = match connector {
                "brevo" => report.requests,
                _ => report.counts.batches,
            };
            let ceiling = (paced.saturating_sub(1)) as f64 * interval;
            let error_at = |share: f64| {
                let said = estimates.said.lock().unwrap();
                said.iter()
                    .find(|(_, done, _)| *done as f64 >= share * report.counts.profiles as f64)
                    .map(|(at, _, left)| {
                        let predicted =
                            at.duration_since(started).as_secs_f64() + left.as_secs_f64();
                        format!("{:+.1}%", (predicted - wall) / wall * 100.0)
                    })
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "   {:<11} {:>8} {:>9.1} {:>10.1} {:>7.3} {:>11} {:>11} {:>10.1} h",
                name,
                report.requests,
                wall,
                ceiling,
                wall / ceiling,
                error_at(0.25),
                error_at(0.5),
                million * interval / 3600.0
            );
        }
        Ok(())
    }
}

/// A worker process of section 7: serves the state until killed.
async fn serve_worker(
    state: &str,
    key_file: &Path,
    plugins: &Path,
    cache: &Path,
    name: &str,
) -> Result<()> {
    let host = std::sync::Arc::new(
        ConnectorHost::open(
            plugins,
            HostOptions {
                cache_dir: Some(cache.to_path_buf()),
                ..HostOptions::default()
            },
        )
        .await?,
    );
    let key = MasterKey::from_file(key_file)?;
    let workspace = std::sync::Arc::new(
        Workspace::open(state, Some(name))
            .await?
            .with_host(host)
            .with_master_key(key)
            .await?
            .with_settings_source()
            .await?,
    );
    let options = connector_host::ServeOptions {
        poll: Duration::from_millis(100),
        max_runs: 8,
        ..Default::default()
    };
    workspace
        .serve(tokio_util::sync::CancellationToken::new(), options)
        .await
}

/// What every section shares.
struct Bench {
    args: Args,
    host: std::sync::Arc<ConnectorHost>,
    plugins: std::path::PathBuf,
    work: std::path::PathBuf,
    /// The segment of `--profiles` generated profiles.
    source: GeneratedSource,
}

impl Bench {
    /// The same profiles from files: reading the segment alone (CSV, JSON Lines, against the
    /// generator), then a Campaign Monitor export from each source, so the ratios come from
    /// one run.
    async fn files(&self) -> Result<()> {
        let count = self.args.profiles;
        println!("\n6. Profile files: {count} profiles, segment `everyone`");
        let dir = self.work.join("files");
        let csv = sample::write_csv(&dir.join("csv"), self.source.seed, count)?;
        let jsonl = sample::write_jsonl(&dir.join("jsonl"), self.source.seed, count)?;
        let csv = connector_host::FileSource::new(&csv.profiles, &csv.memberships, "id")?;
        let jsonl = connector_host::FileSource::new(&jsonl.profiles, &jsonl.memberships, "id")?;
        // The same profiles in tables of a PostgreSQL server started for the benchmark.
        let url = connector_tests::postgres::database().await;
        sample::write_postgres(&url, self.source.seed, count).await?;
        let postgres = connector_host::PostgresSource::new(&url, "profiles", "memberships", "id")?;
        let sources: [(&str, &dyn ProfileSource); 4] = [
            ("generated", &self.source),
            ("CSV", &csv),
            ("JSON Lines", &jsonl),
            ("PostgreSQL", &postgres),
        ];
        println!(
            "   {:<12} {:>8} {:>12} {:>13} {:>10} {:>13} {:>9}",
            "source", "read s", "rows/s", "read RSS MB", "export s", "export RSS MB", "vs gen."
        );
        let mut baseline = None;
        for (name, source) in sources {
            reset_peak_rss();
            let started = Instant::now();
            let segment = ["everyone".to_string()];
            let mut rows = 0u64;
            for row in source.profiles(&segment)?.rows {
                row?;
                rows += 1;
            }
            let read = started.elapsed();
            let read_rss = peak_rss_mb();
            let sim = SimProcess::start("campaign-monitor", 0)?;
            let (report, wall, rss) =
                run(&self.host, "campaign-monitor", &sim, source, None).await?;
            anyhow::ensure!(report.counts.profiles == rows, "{name}: rows differ");
            let base = *baseline.get_or_insert(wall.as_secs_f64());
            println!(
                "   {:<12} {:>8.2} {:>12.0} {:>13.1} {:>10.2} {:>13.1} {:>9.2}",
                name,
                read.as_secs_f64(),
                rows as f64 / read.as_secs_f64(),
                read_rss,
                wall.as_secs_f64(),
                rss,
                wall.as_secs_f64() / base
            );
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// Worker processes sharing one PostgreSQL state: 20 Mailchimp exports over two accounts,
    /// each account's 10 connections shared by every worker, against the accounts' ceiling.
    async fn workers(&self) -> Result<()> {
        let (exports, per_export, latency_ms) = (20usize, 50_000u64, self.args.latency_ms);
        println!(
            "\n7. Workers on one PostgreSQL state: {exports} Mailchimp exports of {per_export} profiles over 2 accounts, {latency_ms} ms a call, 10 connections an account"
        );
        println!(
            "   {:<8} {:>9} {:>9} {:>10} {:>7} {:>13}",
            "workers", "wall s", "requests", "ceiling s", "ratio", "workers used"
        );
        let dir = self.work.join("workers");
        let files = sample::write_csv(&dir.join("data"), self.source.seed, per_export)?;
        let sims = [
            SimProcess::start_account("mailchimp", latency_ms, "Acme")?,
            SimProcess::start_account("mailchimp", latency_ms, "Globex")?,
        ];
        let admin = Actor {
            name: "bench".into(),
            role: Role::Administrator,
        };
        // The workers read the master key from a file, as an operator's processes would.
        let key_file = dir.join("master.key");
        MasterKey::create_file(&key_file)?;
        for workers in [1usize, 2, 4] {
            let url = connector_tests::postgres::database().await;
            let workspace = Workspace::open(&url, Some("bench"))
                .await?
                .with_host(self.host.clone())
                .with_master_key(MasterKey::from_file(&key_file)?)
                .await?
                .with_source(std::sync::Arc::new(connector_host::FileSource::new(
                    &files.profiles,
                    &files.memberships,
                    "id",
                )?));
            for (key, file) in [
                ("profiles", &files.profiles),
                ("memberships", &files.memberships),
            ] {
                workspace
                    .set_setting(&admin, key, &file.display().to_string())
                    .await?;
            }
            workspace
                .approve_connector(&admin, "mailchimp", None)
                .await?;
            for (i, sim) in sims.iter().enumerate() {
                workspace
                    .add_connection(&admin, sim.connection(&format!("account-{i}"), "mailchimp"))
                    .await?;
            }
            for e in 0..exports {
                workspace
                    .add_export(
                        &admin,
                        ExportRequest {
                            name: format!("export-{e:02}"),
                            connection: format!("account-{}", e % 2),
                            settings: vec![("audience-id".into(), sims[e % 2].info.list.clone())],
                            mapping: FieldMapping::parse(&["email=email", "first-name=first_name"])
                                .unwrap(),
                            segments: vec!["everyone".into()],
                            schedule: None,
                            leave_action: None,
                            confirm_irreversible: false,
                        },
                    )
                    .await?;
            }
            let started = Instant::now();
            for e in 0..exports {
                workspace
                    .queue_export(&admin, &format!("export-{e:02}"), RunRequest::default())
                    .await?;
            }
            let mut children = vec![];
            for w in 0..workers {
                children.push(
                    Command::new(std::env::current_exe()?)
                        .args(["serve-worker", "--state", &url, "--name", &format!("w{w}")])
                        .arg("--plugins")
                        .arg(&self.plugins)
                        .arg("--cache")
                        .arg(self.work.join("cache"))
                        .arg("--key-file")
                        .arg(&key_file)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()?,
                );
            }
            let runs = loop {
                let runs = workspace.runs(&admin, None, 100).await?;
                if runs.len() == exports
                    && runs.iter().all(|r| {
                        matches!(
                            r.status,
                            connector_host::workspace::RunState::Succeeded
                                | connector_host::workspace::RunState::Failed
                        )
                    })
                {
                    break runs;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let wall = started.elapsed();
            for mut child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(failed) = runs.iter().find(|r| r.error.is_some()) {
                bail!("run {} failed: {:?}", failed.id, failed.error);
            }
            // Each account's requests (validation included), 10 at a time, the accounts side
            // by side: an export's account is its number's parity.
            let per_account = |account: usize| -> u64 {
                runs.iter()
                    .filter(|r| {
                        r.export
                            .rsplit('-')
                            .next()
                            .and_then(|n| n.parse::<usize>().ok())
                            .is_some_and(|n| n % 2 == account)
                    })
                    .map(|r| r.requests)
                    .sum()
            };
            let requests = per_account(0) + per_account(1);
            let ceiling =
                per_account(0).max(per_account(1)).div_ceil(10) as f64 * latency_ms as f64 / 1000.0;
            let used: std::collections::BTreeSet<_> =
                runs.iter().filter_map(|r| r.worker.clone()).collect();
            println!(
                "   {:<8} {:>9.2} {:>9} {:>10.2} {:>7.3} {:>13}",
                workers,
                wall.as_secs_f64(),
                requests,
                ceiling,
                wall.as_secs_f64() / ceiling,
                used.len()
            );
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    async fn throughput(&self) -> Result<()> {
        println!(
            "\n1. {} profiles, segment `everyone`, no injected latency",
            self.args.profiles
        );
        // Host and simulator share the machine's cores: their CPU times show which one the
        // wall time waits on.
        println!(
            "   {:<18} {:>9} {:>12} {:>14} {:>9} {:>9} {:>11} {:>10}",
            "vendor",
            "wall s",
            "profiles/s",
            "peak RSS MB",
            "requests",
            "sent",
            "host CPU s",
            "sim CPU s"
        );
        for connector in ["campaign-monitor", "mailchimp"] {
            let sim = SimProcess::start(connector, 0)?;
            let (host_before, sim_before) = (cpu_time(), sim.cpu());
            let (report, wall, rss) = run(&self.host, connector, &sim, &self.source, None).await?;
            let (host_cpu, sim_cpu) = (cpu_time() - host_before, sim.cpu() - sim_before);
            println!(
                "   {:<18} {:>9.2} {:>12.0} {:>14.1} {:>9} {:>9} {:>11.2} {:>10.2}",
                connector,
                wall.as_secs_f64(),
                report.counts.profiles as f64 / wall.as_secs_f64(),
                rss,
                report.requests,
                report.counts.sent(),
                host_cpu.as_secs_f64(),
                sim_cpu.as_secs_f64()
            );
        }
        Ok(())
    }

    /// Against the vendor ceiling over a real network path: HTTPS with `--rtt-ms` added on
    /// the wire, once with kept-alive connections (HTTP/2) and once with a new connection a
    /// request, so the ratio shows what reuse buys.
    async fn ceiling(&self) -> Result<()> {
        let (latency_ms, concurrency) = (self.args.latency_ms, self.args.concurrency);
        let rtt = Duration::from_millis(self.args.rtt_ms);
        println!(
            "\n2. Against the vendor ceiling over TLS: {latency_ms} ms a call, {} ms round trip, {concurrency} requests in flight",
            rtt.as_millis()
        );
        println!(
            "   {:<18} {:<12} {:>8} {:>8} {:>9} {:>12} {:>10} {:>7}",
            "vendor",
            "connections",
            "wall s",
            "batches",
            "opened",
            "answer ms",
            "ceiling s",
            "ratio"
        );
        for connector in ["campaign-monitor", "mailchimp"] {
            for fresh in [false, true] {
                let ca = self.work.join(format!("{connector}-ca.pem"));
                let wire = Wire {
                    tls_ca: Some(ca.clone()),
                    rtt,
                };
                let mut sim = SimProcess::start_on(connector, latency_ms, "Bench", &wire)?;
                let host = ConnectorHost::open(
                    &self.plugins,
                    HostOptions {
                        cache_dir: Some(self.work.join("cache")),
                        network: connector_host::NetworkOptions {
                            ca_bundle: Some(ca),
                            fresh_connections: fresh,
                            ..Default::default()
                        },
                        ..HostOptions::default()
                    },
                )
                .await?;
                let (report, wall, _) =
                    run(&host, connector, &sim, &self.source, Some(concurrency)).await?;
                let stats = sim.stats()?;
                // Each call takes the vendor's own answer time (as the simulator measured it)
                // plus one round trip, `concurrency` at a time, after the validation's calls
                // one by one (Campaign Monitor makes one, Mailchimp two: every request that is
                // not a batch); the first connections' TCP and TLS handshakes add two round
                // trips.
                if report.retries > 0 {
                    bail!(
                        "{connector}: {} retries; the ceiling assumes none",
                        report.retries
                    );
                }
                let call = stats.mean_answer_ms / 1000.0 + rtt.as_secs_f64();
                let rounds = (report.counts.batches as f64 / concurrency as f64).ceil();
                let validation = report.requests.saturating_sub(report.counts.batches) as f64;
                let ceiling = (rounds + validation) * call + 2.0 * rtt.as_secs_f64();
                println!(
                    "   {:<18} {:<12} {:>8.2} {:>8} {:>9} {:>12.1} {:>10.2} {:>7.3}",
                    connector,
                    if fresh { "one each" } else { "kept alive" },
                    wall.as_secs_f64(),
                    report.counts.batches,
                    stats.connections,
                    stats.mean_answer_ms,
                    ceiling,
                    wall.as_secs_f64() / ceiling
                );
            }
        }
        Ok(())
    }

    async fn sandbox_cost(&self) -> Result<()> {
        let contacts = self.args.sandbox_contacts;
        println!(
            "\n3. Sandbox cost: CPU per 1,000 contacts to Campaign Monitor ({contacts} contacts)"
        );
        let small = GeneratedSource {
            seed: 2,
            count: contacts,
        };
        let sim = SimProcess::start("campaign-monitor", 0)?;
        let before = cpu_time();
        native_export(&sim, &small).await?;
        let native = cpu_time() - before;
        drop(sim);
        // The same export on a host without the CPU budget (no epoch interruption) shows what
        // the limits themselves cost.
        let unlimited = ConnectorHost::open(
            &self.plugins,
            HostOptions {
                limits: connector_host::Limits {
                    cpu_time: None,
                    ..Default::default()
                },
                cache_dir: Some(self.work.join("cache")),
                ..HostOptions::default()
            },
        )
        .await?;
        let mut measure = Vec::new();
        for h in [&*self.host, &unlimited] {
            let sim = SimProcess::start("campaign-monitor", 0)?;
            let before = cpu_time();
            run(h, "campaign-monitor", &sim, &small, Some(1)).await?;
            measure.push(cpu_time() - before);
        }
        let (component, without_limits) = (measure[0], measure[1]);
        // What is not the connector's: the host's own work on the segment (mapping, address
        // checks, sync decisions), as a dry run does it for any connector; and, on the native
        // side, generating the profiles.
        let sim = SimProcess::start("campaign-monitor", 0)?;
        let (_, export) = export_to(&sim, "campaign-monitor");
        let before = cpu_time();
        self.host
            .plan_export("campaign-monitor", &export, &small, &RunOptions::default())
            .await?;
        let host_work = cpu_time() - before;
        let before = cpu_time();
        let generated = small.profiles(&["everyone".into()])?.rows.count();
        let generating = cpu_time() - before;
        let per_k = |d: Duration| d.as_secs_f64() * 1000.0 / (contacts as f64 / 1000.0);
        println!(
            "   component {:.2} ms, native {:.2} ms, ratio {:.2} (end to end)",
            per_k(component),
            per_k(native),
            component.as_secs_f64() / native.as_secs_f64()
        );
        let (connector, native_client) = (
            component.saturating_sub(host_work),
            native.saturating_sub(generating),
        );
        println!(
            "   the connector's own share: component {:.2} ms (less the host's {:.2} ms), native {:.2} ms (less generating {generated} profiles, {:.2} ms), ratio {:.2}",
            per_k(connector),
            per_k(host_work),
            per_k(native_client),
            per_k(generating),
            connector.as_secs_f64() / native_client.as_secs_f64()
        );
        println!(
            "   the CPU budget's own cost: {:.2} ms without it, {:.2} ms with it ({:+.1}%)",
            per_k(without_limits),
            per_k(component),
            (component.as_secs_f64() / without_limits.as_secs_f64() - 1.0) * 100.0
        );
        Ok(())
    }

    async fn start_up(&self) -> Result<()> {
        let copies = self.args.copies;
        println!("\n4. Start-up with {copies} connector components");
        let many = self.work.join("many");
        copy_plugins(&many, copies)?;
        let options = HostOptions {
            cache_dir: Some(self.work.join("many-cache")),
            ..HostOptions::default()
        };
        let started = Instant::now();
        drop(ConnectorHost::open(&many, options.clone()).await?);
        let cold = started.elapsed();
        let started = Instant::now();
        let warm = ConnectorHost::open(&many, options).await?;
        let warm_time = started.elapsed();
        if warm.plugins().loaded.len() != copies {
            bail!(
                "{} of {copies} connectors loaded",
                warm.plugins().loaded.len()
            );
        }
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
        Ok(())
    }

    async fn sync(&self) -> Result<()> {
        println!(
            "\n5. Sync: a saved export of {} profiles; runs: the first, one with nothing changed, \
             a delta after 1% changed their first name and 0.5% left, and a full one on that data",
            self.args.profiles
        );
        println!(
            "   {:<18} {:<10} {:>7} {:>9} {:>7} {:>6} {:>8} {:>7} {:>7} {:>8} {:>7} {:>7}",
            "vendor",
            "run",
            "wall s",
            "requests",
            "sent",
            "left",
            "RSS MB",
            "+peak",
            "sync MB",
            "history",
            "file MB",
            "store"
        );
        for (connector, leave_action) in
            [("campaign-monitor", "unsubscribe"), ("mailchimp", "untag")]
        {
            let runs = sync_runs(
                self.host.clone(),
                &self.work,
                connector,
                leave_action,
                &self.source,
            )
            .await?;
            for (name, run) in ["first", "unchanged", "delta", "full"].iter().zip(&runs) {
                let s = &run.state;
                println!(
                    "   {:<18} {:<10} {:>7.2} {:>9} {:>7} {:>6} {:>8.1} {:>7.1} {:>7.1} {:>8.1} {:>7.1} {:>7}",
                    connector,
                    name,
                    run.wall.as_secs_f64(),
                    run.report.requests,
                    run.report.counts.sent(),
                    run.report.counts.left,
                    run.rss_before_mb,
                    run.peak_rss_mb - run.rss_before_mb,
                    s.sync_mb,
                    s.history_mb,
                    s.file_mb,
                    run.store_calls
                );
            }
            println!(
                "   {:<18} delta / full: wall {:.3}, requests {:.3}",
                "",
                runs[2].wall.as_secs_f64() / runs[3].wall.as_secs_f64(),
                runs[2].report.requests as f64 / runs[3].report.requests as f64
            );
        }
        Ok(())
    }
}

/// The generated profiles, before or after a while: afterwards every 100th profile has a new
/// first name and every 200th has left the segment (spread evenly, so every batch holds some).
struct Evolving {
    base: GeneratedSource,
    later: std::sync::atomic::AtomicBool,
}

impl ProfileSource for Evolving {
    fn columns(&self) -> Result<Vec<String>> {
        self.base.columns()
    }

    fn segments(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        self.base.segments()
    }

    fn profiles(&self, segments: &[String]) -> Result<connector_host::ProfileStream> {
        let stream = self.base.profiles(segments)?;
        if !self.later.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(stream);
        }
        use connector_host::Row;
        let index = |p: &connector_host::Profile| p.id[1..].parse::<u64>().unwrap_or(0);
        let rows = stream
            .rows
            .filter(move |row| !matches!(row, Ok(Row::Profile(p)) if index(p) % 200 == 7))
            .map(move |row| match row {
                Ok(Row::Profile(mut p)) if index(&p) % 100 == 3 => {
                    p.values[2] = Some(format!("Renamed{}", index(&p)));
                    Ok(Row::Profile(p))
                }
                other => other,
            });
        Ok(connector_host::ProfileStream {
            total: None,
            rows: Box::new(rows),
        })
    }
}

/// One run of a saved export.
struct SyncRun {
    report: RunReport,
    wall: Duration,
    rss_before_mb: f64,
    peak_rss_mb: f64,
    state: StateSizes,
    /// Calls to the store the run made (statements, leases, settled pieces).
    store_calls: u64,
}

/// Where the state database's bytes are, in MB.
struct StateSizes {
    /// The sync state: `sync_contacts`, `sync_log` and `sync_reasons`.
    sync_mb: f64,
    /// The run history: runs and their undelivered contacts.
    history_mb: f64,
    /// The database file and its write-ahead log.
    file_mb: f64,
}

fn state_sizes(db: &Path) -> Result<StateSizes> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let bytes = |tables: &str| -> Result<f64> {
        let sql = format!("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN ({tables})");
        Ok(conn.query_row(&sql, [], |r| r.get::<_, i64>(0))? as f64 / 1e6)
    };
    let file: u64 = std::fs::read_dir(db.parent().unwrap())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.db"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    Ok(StateSizes {
        sync_mb: bytes("'sync_contacts', 'sync_log', 'sync_reasons'")?,
        history_mb: bytes("'runs', 'run_issues', 'run_issues_by_run'")?,
        file_mb: file as f64 / 1e6,
    })
}

/// A saved export with `leave_action` in a fresh state, run four times: first, again with
/// nothing changed, after the segment evolved, and in full on the evolved segment.
async fn sync_runs(
    host: std::sync::Arc<ConnectorHost>,
    work: &Path,
    connector: &str,
    leave_action: &str,
    source: &GeneratedSource,
) -> Result<Vec<SyncRun>> {
    let sim = SimProcess::start(connector, 0)?;
    let dir = work.join(format!("state-{connector}"));
    let db = dir.join("state.db");
    let evolving = std::sync::Arc::new(Evolving {
        base: source.clone(),
        later: false.into(),
    });
    let workspace = Workspace::open_file(&db)?
        .with_host(host)
        .with_master_key(MasterKey::generate())
        .await?
        .with_source(evolving.clone());
    let admin = Actor {
        name: "bench".into(),
        role: Role::Administrator,
    };
    let (connection, export) = export_to(&sim, connector);
    let mut settings = export.settings;
    if leave_action == "untag" {
        settings.push(("membership-tag".into(), "bench-members".into()));
    }
    workspace.approve_connector(&admin, connector, None).await?;
    workspace
        .add_connection(&admin, sim.connection("bench", &connection.connector))
        .await?;
    workspace
        .add_export(
            &admin,
            ExportRequest {
                name: "bench".into(),
                connection: "bench".into(),
                settings,
                mapping: FieldMapping::parse(&[
                    "email=email",
                    "first-name=first_name",
                    "last-name=last_name",
                ])
                .unwrap(),
                segments: export.segments,
                schedule: None,
                leave_action: Some(leave_action.into()),
                confirm_irreversible: true,
            },
        )
        .await?;
    let mut runs = Vec::new();
    for (later, full) in [(false, false), (false, false), (true, false), (true, true)] {
        evolving
            .later
            .store(later, std::sync::atomic::Ordering::SeqCst);
        let rss_before_mb = rss_mb();
        reset_peak_rss();
        let started = Instant::now();
        let how = RunRequest {
            full,
            ..RunRequest::default()
        };
        let calls_before = Workspace::store_calls();
        let outcome = workspace
            .run_export(&admin, "bench", how, &NoProgress, None)
            .await?;
        let store_calls = Workspace::store_calls() - calls_before;
        let wall = started.elapsed();
        if !outcome.report.succeeded() {
            bail!("{}", outcome.report.summary());
        }
        runs.push(SyncRun {
            state: state_sizes(&db)?,
            report: outcome.report,
            wall,
            rss_before_mb,
            peak_rss_mb: peak_rss_mb(),
            store_calls,
        });
    }
    Ok(runs)
}
