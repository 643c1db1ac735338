//! `connector-host plugins check FILE.wasm`: the conformance check of the `connector-check`
//! library, with its arguments and its findings in the command line's terms.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use connector_check::{Check, Findings, Outcome, Target};
use connector_host::HostOptions;

use crate::exit;
use crate::input::{parse_settings, read_secret};

#[derive(Args)]
pub struct CheckArgs {
    /// The component to check (a .wasm file; it need not be in the plugin directory).
    file: PathBuf,
    /// The kit's simulator to check against [default: the one for the connector's id].
    #[arg(long, conflicts_with = "base_url")]
    simulator: Option<String>,
    /// Check against this vendor API instead (e.g. your own simulator, or a test account):
    /// the points that need to inspect or fault the vendor are skipped.
    #[arg(long)]
    base_url: Option<String>,
    /// With --base-url: the environment variable holding the account's credential.
    #[arg(long, default_value = "CONNECTOR_SECRET")]
    secret_env: String,
    /// An export setting, KEY=VALUE; with --base-url, the settings of a valid export (with a
    /// simulator, added to its own).
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// With --base-url: settings naming a list the account does not have, for the not-found point.
    #[arg(long = "unknown-setting", value_name = "KEY=VALUE")]
    unknown_settings: Vec<String>,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn check(options: &HostOptions, args: &CheckArgs) -> Result<ExitCode> {
    let target = match &args.base_url {
        Some(base_url) => Target::Vendor {
            base_url: base_url.clone(),
            credential: read_secret(&args.secret_env, "the account's credential")?,
            unknown_settings: parse_settings(&args.unknown_settings)?,
        },
        None => Target::Kit(args.simulator.clone()),
    };
    let findings = connector_check::check(
        options,
        Check {
            file: args.file.clone(),
            target,
            settings: parse_settings(&args.settings)?,
        },
    )
    .await?;
    report(&findings, args.json)
}

fn report(findings: &Findings, as_json: bool) -> Result<ExitCode> {
    let failed = findings.count(Outcome::Failed);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&findings.to_json())?);
    } else {
        for f in &findings.points {
            // A failure stands out in a column of words.
            let word = match f.outcome {
                Outcome::Failed => "FAIL",
                other => other.word(),
            };
            println!("{word:4}  {}: {}", f.point, f.detail);
        }
        for note in &findings.unconfirmed {
            println!("note  the simulator assumed what no source settles: {note}");
        }
        println!(
            "{} points: {} passed, {failed} failed, {} skipped",
            findings.points.len(),
            findings.count(Outcome::Passed),
            findings.count(Outcome::Skipped)
        );
    }
    Ok(ExitCode::from(if failed > 0 {
        exit::FAILED
    } else {
        exit::SUCCESS
    }))
}
