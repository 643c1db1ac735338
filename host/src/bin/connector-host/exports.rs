//! `connector-host export ...` and `settings ...`: saved exports and what runs them.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use connector_host::state::Trigger;
use connector_host::workspace::{DEFAULT_MAX_PROFILES, MAX_PROFILES_SETTING};
use connector_host::{ConsoleProgress, ExportRequest, RunRequest, Schedule};

use crate::input::parse_settings;
use crate::output::print_table;
use crate::{Session, stop_on_signals};

#[derive(Subcommand)]
pub enum ExportCommand {
    /// Validate an export against the vendor and the profile source, and save it (does not run it).
    Add {
        /// A name for the export, e.g. "weekly-newsletter".
        name: String,
        /// The connection to send through.
        #[arg(long)]
        connection: String,
        /// Connector setting, KEY=VALUE (e.g. list-id=...); repeat for several.
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Field mapping, FIELD=COLUMN (email required); repeat for several.
        #[arg(long = "map", value_name = "FIELD=COLUMN", required = true)]
        mappings: Vec<String>,
        /// Segment to send; repeat for several.
        #[arg(long = "segment", required = true)]
        segments: Vec<String>,
        /// When to run, as a cron expression in UTC (minute hour day-of-month month
        /// day-of-week), e.g. "0 6 * * *"; `connector-host serve` runs it.
        #[arg(long)]
        schedule: Option<String>,
        /// What happens at the vendor to contacts sent before that leave the segment: one of
        /// the connector's leave actions (`connector-host plugins` lists them), e.g. archive.
        /// Without it, leavers are only reported.
        #[arg(long, value_name = "ACTION")]
        leave_action: Option<String>,
        /// Confirm an irreversible leave action (unsubscribing, deleting): people who rejoin
        /// the segment cannot be added back by the export.
        #[arg(long, requires = "leave_action")]
        confirm_irreversible: bool,
    },
    /// List the exports.
    List,
    /// Show an export and its latest runs.
    Show { name: String },
    /// Remove an export and its schedule; its run history stays.
    Remove { name: String },
    /// Run an export now: only contacts that are new, changed, returning or unsettled are sent,
    /// and the leave action applies to those who left. A run cut short or failed is continued.
    Run {
        /// The export's name.
        name: String,
        /// Start a new run instead of continuing one cut short or failed.
        #[arg(long)]
        fresh: bool,
        /// Send every contact, not only what changed since the last run.
        #[arg(long)]
        full: bool,
        /// Say what a run would do (how many would be sent, skipped and acted on as leavers,
        /// with examples) without sending anything or changing any state.
        #[arg(long, conflicts_with = "fresh")]
        dry_run: bool,
        /// Batches in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Print the run report as JSON on stdout instead of the summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SettingsCommand {
    /// Show the settings.
    Show,
    /// Set one: profiles FILE, memberships FILE, id-column NAME, max-profiles N.
    Set { key: String, value: String },
}

pub async fn run(session: &Session<'_>, command: &ExportCommand) -> Result<ExitCode> {
    let actor = session.actor();
    match command {
        ExportCommand::Add {
            name,
            connection,
            settings,
            mappings,
            segments,
            schedule,
            leave_action,
            confirm_irreversible,
        } => {
            let workspace = session.workspace_with_host().await?;
            let record = workspace
                .add_export(
                    &actor,
                    ExportRequest {
                        name: name.clone(),
                        connection: connection.clone(),
                        settings: parse_settings(settings)?,
                        mapping: mappings.clone(),
                        segments: segments.clone(),
                        schedule: schedule.clone(),
                        leave_action: leave_action.clone(),
                        confirm_irreversible: *confirm_irreversible,
                    },
                )
                .await?;
            println!(
                "saved export `{}` to {} over connection `{}`; it has not run",
                record.name, record.connector, record.connection
            );
            if let Some(text) = &record.schedule {
                println!(
                    "schedule: {text} (UTC): {}",
                    Schedule::parse(text)?.describe()
                );
            }
        }
        ExportCommand::List => {
            let state = session.state()?;
            let rows: Vec<Vec<String>> = state
                .exports()?
                .into_iter()
                .map(|e| {
                    let last = state
                        .runs(Some(&e.name), 1)
                        .ok()
                        .and_then(|r| r.into_iter().next())
                        // A removed export of the same name had its own runs.
                        .filter(|r| r.export_id == e.id)
                        .map(|r| format!("#{} {} {}", r.id, r.status, r.started_at))
                        .unwrap_or_else(|| "never run".into());
                    vec![
                        e.name,
                        e.connection,
                        e.segments.join(","),
                        e.schedule.unwrap_or_else(|| "on demand".into()),
                        last,
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no exports; add one with `connector-host export add`");
            } else {
                print_table(
                    &["NAME", "CONNECTION", "SEGMENTS", "SCHEDULE", "LAST RUN"],
                    &rows,
                );
            }
        }
        ExportCommand::Show { name } => {
            let state = session.state()?;
            let e = state.export(name)?;
            println!("export {}", e.name);
            println!("  connection   {} ({})", e.connection, e.connector);
            for (k, v) in &e.settings {
                println!("  setting      {k} = {v}");
            }
            println!("  mapping      {}", e.mapping.join(", "));
            println!("  segments     {}", e.segments.join(", "));
            println!(
                "  leave action {}",
                e.leave_action
                    .as_deref()
                    .unwrap_or("none (leavers are only reported)")
            );
            let synced: Vec<String> = state
                .sync_counts(&e)?
                .into_iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect();
            if !synced.is_empty() {
                println!("  sync state   {}", synced.join(", "));
            }
            match &e.schedule {
                Some(text) => println!(
                    "  schedule     {text} (UTC): {}",
                    Schedule::parse(text)?.describe()
                ),
                None => println!("  schedule     none (on demand)"),
            }
            println!("  created      {} by {}", e.created_at, e.created_by);
            for r in state
                .runs(Some(name), 5)?
                .into_iter()
                .filter(|r| r.export_id == e.id)
            {
                println!(
                    "  run #{:<6} {:<11} {}  sent {}, unchanged {}, rejected {}, left {}",
                    r.id,
                    r.status,
                    r.started_at,
                    r.counts.sent(),
                    r.counts.unchanged,
                    r.counts.rejected + r.counts.still_rejected,
                    r.counts.leaving
                );
            }
        }
        ExportCommand::Remove { name } => {
            let workspace = session.workspace(false)?;
            workspace.remove_export(&actor, name)?;
            println!("removed export `{name}` and its schedule; its run history stays");
        }
        ExportCommand::Run {
            name,
            fresh,
            full,
            dry_run,
            concurrency,
            json,
        } => {
            if *dry_run {
                let workspace = session.workspace_with_host().await?;
                let plan = workspace.plan_export(&actor, name, *full).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&plan)?);
                } else {
                    print!("{}", plan.summary());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let workspace =
                session
                    .workspace_with_host()
                    .await?
                    .with_run_options(connector_host::RunOptions {
                        concurrency: *concurrency,
                        ..Default::default()
                    });
            let progress = ConsoleProgress::new(name);
            let outcome = workspace
                .run_export(
                    &actor,
                    name,
                    RunRequest {
                        trigger: Trigger::OnDemand,
                        fresh: *fresh,
                        full: *full,
                    },
                    &progress,
                    Some(stop_on_signals()),
                )
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&outcome.report)?);
            } else {
                if outcome.resumed {
                    println!("resumed run {}", outcome.run_id);
                } else {
                    println!("run {}", outcome.run_id);
                }
                print!("{}", outcome.report.summary());
                if !outcome.report.issues.is_empty() {
                    println!(
                        "  every contact not delivered: connector-host runs rejections {} --csv",
                        outcome.run_id
                    );
                }
            }
            return Ok(if outcome.report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn settings(session: &Session<'_>, command: &SettingsCommand) -> Result<ExitCode> {
    let state = session.state()?;
    match command {
        SettingsCommand::Show => {
            let settings = state.settings()?;
            let get = |key: &str| {
                settings
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            println!(
                "profiles      {}",
                get("profiles").unwrap_or_else(|| "(not set)".into())
            );
            println!(
                "memberships   {}",
                get("memberships").unwrap_or_else(|| "(not set)".into())
            );
            println!(
                "id-column     {}",
                get("id-column").unwrap_or_else(|| "id".into())
            );
            println!(
                "max-profiles  {}",
                get(MAX_PROFILES_SETTING).unwrap_or_else(|| DEFAULT_MAX_PROFILES.to_string())
            );
        }
        SettingsCommand::Set { key, value } => {
            if session.actor().role != connector_host::Role::Administrator {
                bail!("only administrators may change settings");
            }
            let value = match key.as_str() {
                "profiles" | "memberships" => std::fs::canonicalize(value)
                    .with_context(|| format!("{key}: cannot find {value}"))?
                    .to_string_lossy()
                    .into_owned(),
                "id-column" if !value.trim().is_empty() => value.trim().to_string(),
                MAX_PROFILES_SETTING => match value.parse::<u64>() {
                    Ok(n) if n > 0 => n.to_string(),
                    _ => bail!("max-profiles must be a positive whole number, not `{value}`"),
                },
                _ => bail!(
                    "unknown setting `{key}`; settings are profiles, memberships, id-column, max-profiles"
                ),
            };
            state.set_setting(key, &value)?;
            println!("{key} = {value}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
