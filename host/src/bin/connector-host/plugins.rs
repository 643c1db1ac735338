//! `connector-host plugins ...`: what each connector asks for, and approving it.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use connector_host::approval::short;
use connector_host::plugins::display_path;
use connector_host::{ApprovalStatus, Plugin};

use crate::Session;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PluginsArgs {
    #[command(subcommand)]
    command: Option<PluginsCommand>,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Approve a connector as it is now (its content digest and hosts), so connections and
    /// exports may use it (administrators only). A changed file needs approving again.
    Approve {
        /// The connector id, as `connector-host plugins` lists it.
        id: String,
    },
    /// Withdraw a connector's approval: its connections and exports stop until it is approved
    /// again (administrators only).
    Revoke {
        /// The connector id.
        id: String,
    },
}

pub async fn run(session: &Session<'_>, args: &PluginsArgs) -> Result<ExitCode> {
    let workspace = session
        .workspace(false)?
        .with_host(session.host().await?.clone());
    let actor = session.actor();
    match &args.command {
        None => {
            list(&workspace)?;
        }
        Some(PluginsCommand::Approve { id }) => {
            let approval = workspace.approve_connector(&actor, id)?;
            println!(
                "approved connector `{}` {} (sha256:{}) to reach {}",
                approval.connector,
                approval.version,
                short(&approval.digest),
                approval.hosts.join(", ")
            );
        }
        Some(PluginsCommand::Revoke { id }) => {
            workspace.revoke_connector(&actor, id)?;
            println!(
                "revoked the approval of connector `{id}`; its exports stop until it is approved again"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(workspace: &connector_host::Workspace) -> Result<()> {
    let connectors = workspace.connectors()?;
    for (plugin, status) in &connectors {
        print_plugin(plugin, status);
    }
    let host = workspace.host()?;
    for s in &host.plugins().skipped {
        println!("skipped {}", s.describe());
    }
    if connectors.is_empty() {
        println!("no connectors loaded");
    }
    Ok(())
}

fn print_plugin(plugin: &Plugin, status: &ApprovalStatus) {
    let info = &plugin.info;
    println!(
        "{} {} ({}), contract {}",
        info.id, info.version, info.display_name, plugin.contract_version
    );
    match status {
        ApprovalStatus::Approved => println!("  approval:  approved"),
        ApprovalStatus::NotApproved => println!(
            "  approval:  NOT APPROVED: review what it asks for below, then `connector-host plugins approve {}`",
            info.id
        ),
        ApprovalStatus::Changed(changes) => println!(
            "  approval:  CHANGED since it was approved: {}; approve it again to use it",
            changes.join("; ")
        ),
    }
    println!("  file:      {}", display_path(&plugin.path));
    println!("  sha256:    {}", plugin.digest);
    println!("  hosts:     {}", info.hosts.join(", "));
    println!("  base URL:  {}", info.default_base_url);
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
    println!(
        "  fields:    {}{}",
        fields.join(", "),
        if info.custom_fields {
            ", and the list's own fields (checked when an export is saved)"
        } else {
            ""
        }
    );
    if info.leave_actions.is_empty() {
        println!("  leave:     no leave actions (leavers are only reported)");
    }
    for a in &info.leave_actions {
        println!(
            "  leave:     {} ({}, {}): {}",
            a.id,
            a.label,
            if a.reversible {
                "reversible"
            } else {
                "IRREVERSIBLE"
            },
            a.help
        );
    }
}
