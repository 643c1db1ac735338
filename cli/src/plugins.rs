//! `connector-host plugins ...`: what each connector asks for, and approving it.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use connector_host::approval::short;
use connector_host::plugins::display_path;
use connector_host::{ApprovalStatus, Plugin};
use serde_json::json;

use crate::Session;

/// The connectors this build of connector-host carries, as `plugins install` writes them.
const BUNDLED: [(&str, &[u8]); 2] = [
    (
        "campaign-monitor.wasm",
        include_bytes!(concat!(
            env!("CONNECTOR_HOST_BUNDLED_DIR"),
            "/campaign_monitor_connector.wasm"
        )),
    ),
    (
        "mailchimp.wasm",
        include_bytes!(concat!(
            env!("CONNECTOR_HOST_BUNDLED_DIR"),
            "/mailchimp_connector.wasm"
        )),
    ),
];

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PluginsArgs {
    /// List as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Option<PluginsCommand>,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Everything one connector declares: settings, contact fields and their limits, leave
    /// actions, hosts, limits, approval.
    Show {
        /// The connector id, as `connector-host plugins` lists it.
        id: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the connectors bundled with connector-host (Campaign Monitor, Mailchimp) into
    /// the plugin directory; an administrator then approves each.
    Install {
        /// Replace a file of the same name that differs.
        #[arg(long)]
        force: bool,
    },
    /// Approve a connector as its file is now (its content digest and hosts), so connections
    /// and exports may use it (administrators only). A changed file needs approving again.
    Approve {
        /// The connector id, as `connector-host plugins` lists it.
        id: String,
        /// Approve only a file with this SHA-256 digest (as `plugins show ID` printed it when
        /// you reviewed it); a file changed since is refused.
        #[arg(long, value_name = "SHA256")]
        digest: Option<String>,
    },
    /// Check that a component keeps the contract, point by point, against a simulator of the
    /// vendor from the kit (or a vendor API you name); exits 1 when a point fails.
    Check(crate::check::CheckArgs),
    /// Withdraw a connector's approval: its connections and exports stop until it is approved
    /// again (administrators only).
    Revoke {
        /// The connector id.
        id: String,
    },
}

pub async fn run(session: &Session<'_>, args: &PluginsArgs) -> Result<ExitCode> {
    if let Some(PluginsCommand::Install { force }) = &args.command {
        return install(session, *force).await;
    }
    if let Some(PluginsCommand::Check(check)) = &args.command {
        return crate::check::check(session.host_options(), check).await;
    }
    let workspace = session
        .workspace(false)
        .await?
        .with_host(session.host().await?.clone());
    let actor = session.actor();
    match &args.command {
        None if args.json => {
            let listed: Vec<serde_json::Value> = workspace
                .connectors()
                .await?
                .iter()
                .map(|(plugin, status)| plugin_json(plugin, status))
                .collect();
            let skipped: Vec<serde_json::Value> = workspace
                .host()?
                .plugins()
                .skipped
                .iter()
                .map(|s| json!({"file": display_path(&s.path), "reason": s.reason}))
                .collect();
            let value = json!({"connectors": listed, "skipped": skipped});
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        None => {
            list(&workspace).await?;
        }
        Some(PluginsCommand::Show { id, json }) => {
            let connectors = workspace.connectors().await?;
            let Some((plugin, status)) = connectors.iter().find(|(p, _)| p.info.id == *id) else {
                // The same error as any use of an unknown connector, with what there is.
                return Err(workspace.host()?.plugins().require(id).unwrap_err());
            };
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plugin_json(plugin, status))?
                );
            } else {
                print_plugin(plugin, status);
            }
        }
        Some(PluginsCommand::Install { .. } | PluginsCommand::Check(_)) => {
            unreachable!("handled above")
        }
        Some(PluginsCommand::Approve { id, digest }) => {
            let approval = workspace
                .approve_connector(&actor, id, digest.as_deref())
                .await?;
            println!(
                "approved connector `{}` {} (sha256:{}) to reach {}",
                approval.connector,
                approval.version,
                approval.digest,
                approval.hosts.join(", ")
            );
        }
        Some(PluginsCommand::Revoke { id }) => {
            workspace.revoke_connector(&actor, id).await?;
            println!(
                "revoked the approval of connector `{id}`; its exports stop until it is approved again"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the bundled connectors into the plugin directory (created if need be), then
/// compiles them into the cache, so that no later start (of any process sharing the cache)
/// compiles them again.
async fn install(session: &Session<'_>, force: bool) -> Result<ExitCode> {
    let dir = session.plugin_dir()?;
    if !dir.is_dir() {
        connector_host::workspace::create_private_dir(&dir)?;
    }
    for (file, bytes) in BUNDLED {
        let path = dir.join(file);
        match std::fs::read(&path) {
            Ok(existing) if existing == bytes => {
                println!("{} is already installed", path.display());
                continue;
            }
            Ok(_) if !force => bail!(
                "{} exists and differs from the bundled connector; give --force to replace it",
                path.display()
            ),
            _ => {}
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "installed {} (sha256:{})",
            path.display(),
            short(&connector_host::plugins::digest(bytes))
        );
    }
    let plugins = session.host().await?.plugins();
    for (file, _) in BUNDLED {
        if let Some(skipped) = plugins.skipped.iter().find(|s| s.path.ends_with(file)) {
            bail!("{}", skipped.describe());
        }
    }
    println!(
        "compiled{}; an administrator approves each before use: `connector-host plugins` shows what they ask for, `connector-host plugins approve ID` allows one",
        if session.host_options().cache_dir.is_some() {
            " and cached"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A connector as JSON: what it declares and where its approval stands.
fn plugin_json(plugin: &Plugin, status: &ApprovalStatus) -> serde_json::Value {
    let info = &plugin.info;
    json!({
        "id": info.id,
        "display_name": info.display_name,
        "version": info.version,
        "contract": plugin.contract_version.to_string(),
        "file": display_path(&plugin.path),
        "sha256": plugin.digest,
        "approval": match status {
            ApprovalStatus::Approved => json!("approved"),
            ApprovalStatus::NotApproved => json!("not approved"),
            ApprovalStatus::Changed(changes) => json!({"changed": changes}),
        },
        "hosts": info.hosts,
        "default_base_url": info.default_base_url,
        "max_batch_size": info.max_batch_size,
        "max_concurrent_requests": info.max_concurrent_requests,
        "credential": info.auth.describe(),
        "rate_windows": info.rate_windows.iter().map(|w| json!({
            "requests": w.requests, "seconds": w.seconds,
            "method": w.applies_to.as_ref().and_then(|c| c.method.clone()),
            "path_prefix": w.applies_to.as_ref().map(|c| c.path_prefix.clone()),
            "words": w.describe(),
        })).collect::<Vec<_>>(),
        "erasure": info.erasure,
        "settings": info.config_fields.iter().map(|f| json!({
            "key": f.key, "label": f.label, "help": f.help, "required": f.required,
        })).collect::<Vec<_>>(),
        "contact_fields": info.contact_fields.iter().map(|f| json!({
            "key": f.key, "label": f.label, "required": f.required,
            "max_length": (f.max_length > 0).then_some(f.max_length),
        })).collect::<Vec<_>>(),
        "custom_fields": info.custom_fields,
        "custom_field_max_length": (info.custom_field_max_length > 0).then_some(info.custom_field_max_length),
        "leave_actions": info.leave_actions.iter().map(|a| json!({
            "id": a.id, "label": a.label, "help": a.help, "reversible": a.reversible,
            "batch_size": (a.batch_size > 0).then_some(a.batch_size),
        })).collect::<Vec<_>>(),
    })
}

async fn list(workspace: &connector_host::Workspace) -> Result<()> {
    let connectors = workspace.connectors().await?;
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
    println!("  credential: sent as {}", info.auth.describe());
    println!("  batch:     up to {} contacts", info.max_batch_size);
    let mut limits = vec![match info.max_concurrent_requests {
        0 => "no published limit of requests at once".to_string(),
        n => format!("{n} requests at once"),
    }];
    limits.extend(info.rate_windows.iter().map(|w| w.describe()));
    println!("  limits:    {} (per account)", limits.join("; "));
    if let Some(erasure) = &info.erasure {
        println!("  erasure:   {erasure}");
    }
    for f in &info.config_fields {
        println!(
            "  setting:   {}{} ({}): {}",
            f.key,
            if f.required { " (required)" } else { "" },
            f.label,
            f.help
        );
    }
    let limit = |n: u32| {
        if n > 0 {
            format!("up to {n} characters")
        } else {
            "no published limit".into()
        }
    };
    for f in &info.contact_fields {
        println!(
            "  field:     {}{} ({}): {}",
            f.key,
            if f.required { " (required)" } else { "" },
            f.label,
            limit(f.max_length)
        );
    }
    if info.custom_fields {
        println!(
            "  field:     the list's own fields, checked when an export is saved: {}",
            limit(info.custom_field_max_length)
        );
    }
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
