//! `connector-host export ...` and `settings ...`: saved exports and what runs them.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use connector_host::run::SyncState;
use connector_host::workspace::{ExportChanges, MAX_BAD_ROWS_SETTING, Trigger};
use connector_host::{ExportRequest, FieldMapping, RunRequest, Schedule};

use connector_host::ConsoleProgress;

use crate::exit;
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
    /// Change a saved export: what is given replaces what it had, and the export is checked
    /// again as a whole with the vendor before the change is saved. A changed mapping or
    /// setting makes its next run full.
    Edit {
        /// The export's name.
        name: String,
        /// Set a connector setting, KEY=VALUE (others are kept); repeat for several.
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Remove a connector setting; repeat for several.
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
        /// The whole new mapping, FIELD=COLUMN; repeat for several.
        #[arg(long = "map", value_name = "FIELD=COLUMN")]
        mappings: Vec<String>,
        /// The whole new list of segments; repeat for several.
        #[arg(long = "segment")]
        segments: Vec<String>,
        /// A new schedule (cron, UTC).
        #[arg(long, conflicts_with = "no_schedule")]
        schedule: Option<String>,
        /// Run on demand only.
        #[arg(long)]
        no_schedule: bool,
        /// A new leave action (`connector-host plugins show ID` lists them).
        #[arg(long, value_name = "ACTION", conflicts_with = "no_leave_action")]
        leave_action: Option<String>,
        /// Only report leavers from now on.
        #[arg(long)]
        no_leave_action: bool,
        /// Confirm a new irreversible leave action.
        #[arg(long)]
        confirm_irreversible: bool,
    },
    /// List the exports, with their last and next runs.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an export, its sync state and its latest runs.
    Show {
        /// The export's name.
        name: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an export and its schedule; its run history stays.
    Remove {
        /// The export's name.
        name: String,
    },
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
        /// Batches in flight at once [default: twice the requests the vendor takes at once].
        #[arg(long)]
        concurrency: Option<usize>,
        /// Rows of the segment that cannot be read (each recorded with its line and reason)
        /// tolerated before the run stops as failed [default: the max-bad-rows setting, else
        /// no limit].
        #[arg(long)]
        max_bad_rows: Option<u64>,
        /// Exit with 5 when the run succeeded but some contacts were not delivered.
        #[arg(long)]
        fail_on_undelivered: bool,
        /// Print the run report as JSON on stdout instead of the summary.
        #[arg(long)]
        json: bool,
        /// Hand the run to the `serve` workers instead of running it here: it waits in the
        /// queue (scheduled runs wait there too) until a worker claims it; prints its number.
        #[arg(long, conflicts_with_all = ["dry_run", "json", "fail_on_undelivered"])]
        queue: bool,
    },
}

#[derive(Subcommand)]
pub enum SettingsCommand {
    /// Show the settings.
    Show {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set one: profiles FILE or postgres://URL, memberships FILE, profiles-table and
    /// memberships-table (a table, view or parenthesised query, with profiles from PostgreSQL),
    /// id-column NAME, max-profiles N, max-bad-rows N, lease-seconds N.
    Set {
        /// profiles, memberships, profiles-table, memberships-table, id-column, max-profiles,
        /// max-bad-rows or lease-seconds.
        key: String,
        /// The value: a file, a column name or a number.
        value: String,
    },
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
                        mapping: FieldMapping::parse(mappings)?,
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
                    "schedule: {text} (UTC): {}; next run {}",
                    Schedule::parse(text)?.describe(),
                    next_run(&record.schedule)
                );
            }
            warn_about_source(&workspace);
        }
        ExportCommand::Edit {
            name,
            settings,
            unset,
            mappings,
            segments,
            schedule,
            no_schedule,
            leave_action,
            no_leave_action,
            confirm_irreversible,
        } => {
            let changes = ExportChanges {
                set: parse_settings(settings)?,
                unset: unset.clone(),
                mapping: (!mappings.is_empty())
                    .then(|| FieldMapping::parse(mappings))
                    .transpose()?,
                segments: (!segments.is_empty()).then(|| segments.clone()),
                schedule: match (schedule, no_schedule) {
                    (Some(text), _) => Some(Some(text.clone())),
                    (None, true) => Some(None),
                    (None, false) => None,
                },
                leave_action: match (leave_action, no_leave_action) {
                    (Some(action), _) => Some(Some(action.clone())),
                    (None, true) => Some(None),
                    (None, false) => None,
                },
                confirm_irreversible: *confirm_irreversible,
            };
            let workspace = session.workspace_with_host().await?;
            let record = workspace.edit_export(&actor, name, changes).await?;
            println!(
                "changed export `{}`: mapping {}; segments {}; leave action {}; schedule {} (next run {})",
                record.name,
                record.mapping,
                record.segments.join(", "),
                record.leave_action.as_deref().unwrap_or("none"),
                record.schedule.as_deref().unwrap_or("none"),
                next_run(&record.schedule)
            );
            if let (Some(action), Some(_)) = (&record.leave_action, leave_action) {
                let departed = workspace
                    .sync_counts(&actor, &record.name)
                    .await?
                    .into_iter()
                    .find(|(state, _)| *state == SyncState::Departed)
                    .map_or(0, |(_, n)| n);
                if departed > 0 {
                    println!(
                        "{departed} contacts left the segment while no leave action was set: the next run applies {action} to those still out of it"
                    );
                }
            }
            warn_about_source(&workspace);
        }
        ExportCommand::List { json } => {
            let listed = session.bare().await?.exports_with_last_run(&actor).await?;
            if *json {
                let values: Vec<serde_json::Value> = listed
                    .iter()
                    .map(|(e, last)| {
                        serde_json::json!({
                            "export": e,
                            "last_run": last,
                            "next_run": next_run_at(&e.schedule).map(|at| at.to_rfc3339()),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&values)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = listed
                .into_iter()
                .map(|(e, last)| {
                    vec![
                        e.name,
                        e.connection,
                        e.segments.join(","),
                        e.schedule.clone().unwrap_or_else(|| "on demand".into()),
                        last.map(|r| format!("#{} {} {}", r.id, r.status, r.started_at))
                            .unwrap_or_else(|| "never run".into()),
                        next_run(&e.schedule),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no exports; add one with `connector-host export add`");
            } else {
                print_table(
                    &[
                        "NAME",
                        "CONNECTION",
                        "SEGMENTS",
                        "SCHEDULE",
                        "LAST RUN",
                        "NEXT RUN",
                    ],
                    &rows,
                );
            }
        }
        ExportCommand::Show { name, json } => {
            let workspace = session.bare().await?;
            let e = workspace.export(&actor, name).await?;
            // A removed export of the same name had its own runs.
            let runs: Vec<_> = workspace
                .runs(&actor, Some(name), 5)
                .await?
                .into_iter()
                .filter(|r| r.export_id == e.id)
                .collect();
            let sync_counts = workspace.sync_counts(&actor, name).await?;
            if *json {
                let synced: serde_json::Map<String, serde_json::Value> = sync_counts
                    .iter()
                    .map(|(state, n)| (state.to_string(), (*n).into()))
                    .collect();
                let value = serde_json::json!({
                    "export": e,
                    "sync_state": synced,
                    "next_run": next_run_at(&e.schedule).map(|at| at.to_rfc3339()),
                    "runs": runs,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("export {}", e.name);
            println!("  connection   {} ({})", e.connection, e.connector);
            for (k, v) in &e.settings {
                println!("  setting      {k} = {v}");
            }
            println!("  mapping      {}", e.mapping);
            println!("  segments     {}", e.segments.join(", "));
            println!(
                "  leave action {}",
                e.leave_action
                    .as_deref()
                    .unwrap_or("none (leavers are only reported)")
            );
            let synced: Vec<String> = sync_counts
                .into_iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect();
            if !synced.is_empty() {
                println!("  sync state   {}", synced.join(", "));
            }
            match &e.schedule {
                Some(text) => println!(
                    "  schedule     {text} (UTC): {}; next run {}",
                    Schedule::parse(text)?.describe(),
                    next_run(&e.schedule)
                ),
                None => println!("  schedule     none (on demand)"),
            }
            println!("  created      {} by {}", e.created_at, e.created_by);
            for r in runs {
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
            let workspace = session.workspace(false).await?;
            workspace.remove_export(&actor, name).await?;
            println!("removed export `{name}` and its schedule; its run history stays");
        }
        ExportCommand::Run {
            name,
            fresh,
            full,
            dry_run,
            concurrency,
            max_bad_rows,
            fail_on_undelivered,
            json,
            queue,
        } => {
            let how = RunRequest {
                trigger: Trigger::OnDemand,
                fresh: *fresh,
                full: *full,
            };
            if *queue {
                let workspace = session.workspace_with_host().await?;
                let run_id = workspace.queue_export(&actor, name, how).await?;
                println!("run {run_id} queued: a `connector-host serve` worker will claim it");
                return Ok(ExitCode::SUCCESS);
            }
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
                        max_bad_rows: *max_bad_rows,
                        ..Default::default()
                    });
            let progress = ConsoleProgress::new(name);
            let outcome = workspace
                .run_export(&actor, name, how, &progress, Some(stop_on_signals()))
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
            return Ok(exit::of_report(&outcome.report, *fail_on_undelivered));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// When a schedule next fires (UTC), if the export has one that parses.
fn next_run_at(schedule: &Option<String>) -> Option<chrono::DateTime<chrono::Utc>> {
    Schedule::parse(schedule.as_deref()?)
        .ok()?
        .next_after(chrono::Utc::now())
}

/// [`next_run_at`] for people: `2026-11-24 06:00:00 UTC`, or `-` (on demand).
fn next_run(schedule: &Option<String>) -> String {
    next_run_at(schedule)
        .map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Warns of rows the profile source will skip, from a look at a sample of it.
fn warn_about_source(workspace: &connector_host::Workspace) {
    match workspace.source_warnings() {
        Ok(warnings) => {
            for warning in warnings {
                eprintln!("warning: {warning}");
            }
        }
        Err(e) => eprintln!("warning: could not look at the profile data: {e:#}"),
    }
}

pub async fn settings(session: &Session<'_>, command: &SettingsCommand) -> Result<ExitCode> {
    let workspace = session.bare().await?;
    match command {
        SettingsCommand::Show { json } => {
            let settings = workspace.settings().await?;
            if *json {
                let object: serde_json::Map<String, serde_json::Value> = settings
                    .iter()
                    .map(|s| (s.key.to_string(), s.in_effect().into()))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&object)?);
                return Ok(ExitCode::SUCCESS);
            }
            for setting in &settings {
                let unset = match setting.key {
                    MAX_BAD_ROWS_SETTING => "no limit",
                    _ => "(not set)",
                };
                println!(
                    "{:<13} {}",
                    setting.key,
                    setting.in_effect().unwrap_or(unset)
                );
            }
        }
        SettingsCommand::Set { key, value } => {
            let changed = workspace.set_setting(&session.actor(), key, value).await?;
            if let Some(warning) = changed.warning {
                eprintln!("warning: {warning}");
            }
            println!("{key} = {}", changed.value);
        }
    }
    Ok(ExitCode::SUCCESS)
}
