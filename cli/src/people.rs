//! `users`, `tokens` and `audit`: who may sign in to the server, and what everyone changed.
//!
//! The CLI acts as this machine's operator: whoever can read the state and the master key can
//! do anything, so these commands need no sign-in. This is how the first administrator is
//! made; after that administrators can manage people through the API and console too.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use connector_host::Role;

use crate::Session;
use crate::input::read_secret;
use crate::output::print_table;

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add a user who signs in to the server (console with a password, programs with a token).
    Add {
        /// The user's name (letters, digits, `.`, `_`, `@`, `-`).
        name: String,
        /// administrator or contributor.
        #[arg(long, value_parser = crate::parse_role)]
        role: Role,
        /// The environment variable holding the console password (at least 12 characters);
        /// without it the user signs in with API tokens only.
        #[arg(long)]
        password_env: Option<String>,
    },
    /// The users and their roles.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user, their tokens and sessions.
    Remove {
        /// The user's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create an API token for a user; it is printed once and kept only as a hash.
    Create {
        /// The user the token signs in.
        user: String,
        /// What the token is for, shown in listings.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// The API tokens (their ids, never the tokens).
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The token's id, as `tokens list` shows it.
        id: String,
    },
}

pub async fn users(session: &Session<'_>, command: &UsersCommand) -> Result<ExitCode> {
    let workspace = session.bare().await?;
    let actor = session.actor();
    match command {
        UsersCommand::Add {
            name,
            role,
            password_env,
        } => {
            let password = password_env
                .as_deref()
                .map(|var| read_secret(var, "the user's password"))
                .transpose()?;
            let user = workspace
                .add_user(&actor, name, *role, password.as_ref())
                .await?;
            println!(
                "added {} `{}`{}",
                user.role.name(),
                user.name,
                if user.has_password {
                    ", who can sign in to the console"
                } else {
                    "; create an API token for them with `tokens create`"
                }
            );
        }
        UsersCommand::List { json } => {
            let users = workspace.users(&actor).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                let rows = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.role.name().into(),
                            if u.has_password { "yes" } else { "no" }.into(),
                            u.created_by.clone(),
                            u.created_at.clone(),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(&["NAME", "ROLE", "PASSWORD", "ADDED BY", "ADDED"], &rows);
            }
        }
        UsersCommand::Remove { name } => {
            workspace.remove_user(&actor, name).await?;
            println!("removed user `{name}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tokens(session: &Session<'_>, command: &TokensCommand) -> Result<ExitCode> {
    let workspace = session.bare().await?;
    let actor = session.actor();
    match command {
        TokensCommand::Create { user, label } => {
            let token = workspace.create_token(&actor, user, label).await?;
            eprintln!("a token for `{user}`; it is shown this once, keep it in a secret store:");
            println!("{}", token.expose());
        }
        TokensCommand::List { json } => {
            let tokens = workspace.tokens(&actor).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                let rows = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.user.clone(),
                            t.label.clone(),
                            t.created_at.clone(),
                            t.last_used_at.clone().unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(&["ID", "USER", "LABEL", "CREATED", "LAST USED"], &rows);
            }
        }
        TokensCommand::Revoke { id } => {
            workspace.revoke_token(&actor, id).await?;
            println!("revoked token {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit`: the latest changes, newest first.
pub async fn audit(session: &Session<'_>, limit: u64, json: bool) -> Result<ExitCode> {
    let entries = session
        .bare()
        .await?
        .audit_log(&session.actor(), limit)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.subject.clone(),
                e.detail.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(&["WHEN", "WHO", "WHAT", "ON", "DETAIL"], &rows);
    Ok(ExitCode::SUCCESS)
}
