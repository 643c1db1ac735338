//! `connector-host run`: one export with everything given on the command line, nothing saved.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use connector_host::{
    BrokerPolicy, Connection, Credential, Export, FieldMapping, FileSource, IssueListener,
    RunIssue, RunOptions,
};

use crate::input::{parse_settings, read_secret};
use crate::output::IssueCsv;
use crate::{Session, exit};
use connector_host::ConsoleProgress;

#[derive(Args)]
pub struct RunArgs {
    /// Connector id, e.g. campaign-monitor.
    #[arg(long)]
    pub connector: String,
    /// Vendor API base URL, when not the connector's production one (e.g. a local simulator).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Environment variable holding the vendor credential (never pass it as an argument).
    #[arg(long, default_value = "CONNECTOR_SECRET")]
    pub secret_env: String,
    /// The credential is an OAuth access token (sent as Bearer) rather than an API key.
    #[arg(long)]
    pub oauth: bool,
    /// The account's data centre (e.g. us21), for vendors that have them; by default taken from
    /// the API key's suffix.
    #[arg(long)]
    pub data_centre: Option<String>,
    /// Connector setting, KEY=VALUE (e.g. list-id=...); repeat for several.
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Field mapping, FIELD=COLUMN (e.g. email=email_address); repeat for several.
    #[arg(long = "map", value_name = "FIELD=COLUMN", required = true)]
    pub mappings: Vec<String>,
    /// Segment to export; repeat for several.
    #[arg(long = "segment", required = true)]
    pub segments: Vec<String>,
    /// Profiles file (.csv with a header row, or .jsonl).
    #[arg(long)]
    pub profiles: PathBuf,
    /// Segment memberships file (.csv or .jsonl) with profile_id and segment fields.
    #[arg(long)]
    pub memberships: PathBuf,
    /// Profile field holding the profile id.
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Batches in flight at once [default: twice the requests the vendor takes at once].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Requests in flight at once to the vendor [default: the connector's declared vendor limit].
    #[arg(long)]
    pub max_concurrent_requests: Option<usize>,
    /// Requests per second to the vendor [default: the connector's declared vendor rate].
    #[arg(long)]
    pub max_requests_per_second: Option<f64>,
    /// Seconds a vendor request may take (connect, first byte, between bytes) before a retry.
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout_seconds: f64,
    /// Write the contacts that were not delivered, with reasons, to this CSV file.
    #[arg(long)]
    pub rejections_csv: Option<PathBuf>,
    /// Rows of the segment that cannot be read (each recorded with its line and reason)
    /// tolerated before the run stops as failed [default: no limit].
    #[arg(long)]
    pub max_bad_rows: Option<u64>,
    /// Exit with 5 when the run succeeded but some contacts were not delivered.
    #[arg(long)]
    pub fail_on_undelivered: bool,
    /// Print the run report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

pub async fn run_once(session: &Session<'_>, args: &RunArgs) -> Result<ExitCode> {
    // Nothing is saved, but the connector must be one an administrator approved.
    let host = session.host().await?;
    let plugins = host.plugins();
    let plugin = plugins.require(&args.connector)?;
    let approval = session.bare().await?.approval(&args.connector).await?;
    connector_host::approval::require(plugin, approval.as_ref())?;
    let secret = read_secret(&args.secret_env, "the vendor API key")?;
    let settings = parse_settings(&args.settings)?;
    let connection = Connection {
        connector: args.connector.clone(),
        base_url: args.base_url.clone(),
        data_centre: args.data_centre.clone(),
        credential: if args.oauth {
            Credential::access_token(secret)
        } else {
            Credential::ApiKey(secret)
        },
    };
    let export = Export {
        settings,
        mapping: FieldMapping::parse(&args.mappings)?,
        segments: args.segments.clone(),
        leave_action: None,
    };
    let source = FileSource::new(&args.profiles, &args.memberships, &args.id_column)?;
    let broker = BrokerPolicy {
        max_concurrent_requests: args.max_concurrent_requests,
        max_requests_per_second: args.max_requests_per_second,
        request_timeout: Duration::try_from_secs_f64(args.request_timeout_seconds)
            .context("--request-timeout-seconds")?,
        ..BrokerPolicy::default()
    };
    // Undelivered contacts go to the CSV as they settle, however many there are.
    let csv = match &args.rejections_csv {
        Some(path) => Some(Arc::new(Mutex::new(IssueCsv::create(path)?))),
        None => None,
    };
    let on_issue: Option<IssueListener> = csv.clone().map(|csv| {
        Arc::new(move |issue: &RunIssue| csv.lock().unwrap_or_else(|p| p.into_inner()).write(issue))
            as IssueListener
    });
    let options = RunOptions {
        concurrency: args.concurrency,
        broker,
        max_bad_rows: args.max_bad_rows,
        on_issue,
        ..RunOptions::default()
    };
    let progress = ConsoleProgress::new(&args.connector);
    let report = host
        .run_export(&connection, &export, &source, &options, &progress)
        .await?;
    drop(options); // its listener holds the CSV
    if let Some(csv) = csv {
        let csv = Arc::try_unwrap(csv)
            .map_err(|_| anyhow::anyhow!("the CSV of undelivered contacts is still in use"))?;
        csv.into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .finish()?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(exit::of_report(&report, args.fail_on_undelivered))
}
