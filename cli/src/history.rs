//! `connector-host runs ...`: what each run did.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use connector_host::workspace::RunRecord;

use crate::Session;
use crate::output::{IssueCsv, print_table};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    /// Only the runs of this export (removed exports included).
    export: Option<String>,
    /// How many runs to list, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// As JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Option<RunsCommand>,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// One run in full.
    Show {
        /// The run's number, as `connector-host runs` lists it.
        id: i64,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The contacts of a run that were not delivered, with the reasons.
    Rejections {
        /// The run's number.
        id: i64,
        /// As CSV (profile_id, email, kind, stage, code, message, since).
        #[arg(long)]
        csv: bool,
        /// Write to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

pub async fn run(session: &Session<'_>, args: &RunsArgs) -> Result<ExitCode> {
    let workspace = session.bare().await?;
    let actor = session.actor();
    match &args.command {
        None => {
            let runs = workspace
                .runs(&actor, args.export.as_deref(), args.limit)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
                return Ok(ExitCode::SUCCESS);
            }
            if runs.is_empty() {
                println!("no runs yet");
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.export.clone(),
                        r.status.describe().to_string(),
                        r.started_at.clone(),
                        r.finished_at.clone().unwrap_or_else(|| "-".into()),
                        r.counts.sent().to_string(),
                        r.counts.created.to_string(),
                        r.counts.updated.to_string(),
                        r.counts.unchanged.to_string(),
                        (r.counts.rejected + r.counts.still_rejected).to_string(),
                        r.counts.leaving.to_string(),
                        r.retries.to_string(),
                        r.worker.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "RUN",
                    "EXPORT",
                    "STATUS",
                    "STARTED",
                    "ENDED",
                    "SENT",
                    "CREATED",
                    "UPDATED",
                    "UNCHANGED",
                    "REJECTED",
                    "LEFT",
                    "RETRIES",
                    "WORKER",
                ],
                &rows,
            );
        }
        Some(RunsCommand::Show { id, json }) => {
            let run = workspace.run(&actor, *id).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                print_run(&run);
            }
        }
        // An unknown run is an error before anything is written.
        Some(RunsCommand::Rejections { id, csv, output }) => match (output, csv) {
            _ if let Err(e) = workspace.run(&actor, *id).await => return Err(e),
            (Some(path), _) => {
                let mut out = IssueCsv::create(path)?;
                workspace
                    .for_each_issue(&actor, *id, &mut |issue| out.write(&issue))
                    .await?;
                let n = out.finish()?;
                eprintln!("wrote {n} contacts to {}", path.display());
            }
            (None, true) => {
                let mut out = IssueCsv::new(std::io::stdout())?;
                workspace
                    .for_each_issue(&actor, *id, &mut |issue| out.write(&issue))
                    .await?;
                out.finish()?;
            }
            (None, false) => {
                let mut rows = Vec::new();
                workspace
                    .for_each_issue(&actor, *id, &mut |i| {
                        rows.push(vec![
                            i.profile_id,
                            i.email,
                            i.kind.label().to_string(),
                            format!("{:?}", i.stage).to_lowercase(),
                            i.code,
                            i.message,
                            i.since.unwrap_or_default(),
                        ]);
                        Ok(())
                    })
                    .await?;
                if rows.is_empty() {
                    println!("every contact of run {id} was delivered");
                } else {
                    print_table(
                        &[
                            "PROFILE", "EMAIL", "KIND", "STAGE", "CODE", "REASON", "SINCE",
                        ],
                        &rows,
                    );
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn print_run(r: &RunRecord) {
    let c = &r.counts;
    println!("run {} of export {} ({})", r.id, r.export, r.connector);
    println!("  status        {}", r.status.describe());
    if let Some(error) = &r.error {
        println!("  error         {error}");
    }
    println!("  trigger       {} by {}", r.trigger, r.started_by);
    if let Some(mode) = &r.mode {
        println!("  mode          {mode}");
    }
    println!("  started       {}", r.started_at);
    println!(
        "  ended         {}",
        r.finished_at.as_deref().unwrap_or("-")
    );
    if r.attempts > 1 {
        println!(
            "  attempts      {} (continued; {} contacts settled earlier were not sent again)",
            r.attempts, c.resumed
        );
    }
    for a in &r.attempt_log {
        println!(
            "  attempt {:<5} by worker {} at {}",
            a.attempt, a.worker, a.started_at
        );
    }
    if let Some(end) = &r.expected_end {
        println!("  expected end  {end}{}", time_left(end));
    }
    if let Some(size) = r.segment_size {
        println!("  segment       {size} members");
    }
    println!("  rows read     {}", c.profiles);
    println!(
        "  sent          {} (new {}, changed {}, returning {}, resent {})",
        c.sent(),
        c.new,
        c.changed,
        c.returning,
        c.resent
    );
    println!("    created     {}", c.created);
    println!("    updated     {}", c.updated);
    println!("    suppressed  {}", c.suppressed);
    println!("    rejected    {}", c.rejected);
    println!("  not sent      {}", c.not_sent());
    for (label, n) in [
        ("unchanged", c.unchanged),
        ("still rejected", c.still_rejected),
        ("still suppressed", c.still_suppressed),
        ("duplicates", c.duplicates),
        ("invalid", c.invalid),
        ("unreadable", c.unreadable),
        ("repeated ids", c.repeated_ids),
        ("unknown profiles", c.unknown_profiles),
    ] {
        println!("    {label:<17} {n}");
    }
    println!(
        "  left          {} (leave action {}: {} acted on, {} untouched, {} refused)",
        c.leaving,
        r.leave_action.as_deref().unwrap_or("none"),
        c.left,
        c.left_untouched,
        c.left_refused
    );
    println!("  batches       {}", c.batches);
    println!("  requests      {} ({} retries)", r.requests, r.retries);
    for refusal in &r.refusals {
        println!("  refused       {refusal}");
    }
    println!("  time          {:.2} s", r.seconds);
}

/// ` (in about 4 min 10 s)`, from an expected end (UTC) and the clock.
fn time_left(end: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(end)
        .ok()
        .and_then(|end| {
            (end.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .ok()
        })
        .map(|left| format!(" (in about {})", connector_host::duration_words(left)))
        .unwrap_or_default()
}
