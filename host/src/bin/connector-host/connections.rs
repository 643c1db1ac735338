//! `connector-host connection ...`: saved vendor accounts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use connector_host::state::{CredentialKind, StoredCredential, TokenRefresh};
use connector_host::{Access, ConnectionRequest, CredentialCheck};

use crate::Session;
use crate::input::read_secret;
use crate::output::print_table;

#[derive(Subcommand)]
pub enum ConnectionCommand {
    /// Check a vendor credential and save it as a connection (administrators only).
    Add {
        /// A name for the connection, e.g. "newsletter-cm".
        name: String,
        /// Connector id, e.g. campaign-monitor.
        #[arg(long)]
        connector: String,
        /// Vendor API base URL, when not the connector's production one (e.g. a simulator).
        #[arg(long)]
        base_url: Option<String>,
        /// The account's data centre (e.g. us21), for vendors that have them; by default
        /// taken from the API key's suffix.
        #[arg(long)]
        data_centre: Option<String>,
        /// Environment variable holding the credential (never pass it as an argument).
        #[arg(long, default_value = "CONNECTOR_SECRET")]
        secret_env: String,
        /// The credential is an OAuth access token (sent as Bearer), not an API key.
        #[arg(long)]
        oauth: bool,
        /// Environment variable holding the OAuth refresh token, for vendors whose tokens
        /// expire; the host renews the access token with it.
        #[arg(long, requires_all = ["oauth", "token_url"])]
        refresh_token_env: Option<String>,
        /// The vendor's OAuth token endpoint, e.g. https://api.createsend.com/oauth/token.
        #[arg(long, requires = "refresh_token_env")]
        token_url: Option<String>,
        /// Seconds the OAuth access token stays valid (the token answer's expires_in).
        #[arg(long, requires = "oauth")]
        expires_in: Option<u64>,
        /// Let contributors use the connection too (by default, administrators only).
        #[arg(long)]
        contributors: bool,
        /// Accept the data-privacy notice: exported profiles leave the platform's compliance
        /// boundary for the vendor's. Required.
        #[arg(long)]
        accept_privacy_notice: bool,
    },
    /// List the connections.
    List,
    /// Show a connection (its credential only as a fingerprint).
    Show { name: String },
    /// Check the connection's credential with the vendor again.
    Test { name: String },
    /// Remove a connection and the exports that use it; run history stays (administrators only).
    Remove { name: String },
}

pub async fn run(session: &Session<'_>, command: &ConnectionCommand) -> Result<ExitCode> {
    let actor = session.actor();
    match command {
        ConnectionCommand::Add {
            name,
            connector,
            base_url,
            data_centre,
            secret_env,
            oauth,
            refresh_token_env,
            token_url,
            expires_in,
            contributors,
            accept_privacy_notice,
        } => {
            let workspace = session.workspace_with_host().await?;
            let what = if *oauth {
                "the OAuth access token"
            } else {
                "the vendor API key"
            };
            let refresh = match (refresh_token_env, token_url) {
                (Some(var), Some(url)) => Some(TokenRefresh {
                    refresh_token: read_secret(var, "the OAuth refresh token")?,
                    token_url: url.clone(),
                }),
                _ => None,
            };
            let request = ConnectionRequest {
                name: name.clone(),
                connector: connector.clone(),
                base_url: base_url.clone(),
                data_centre: data_centre.clone(),
                credential: StoredCredential {
                    kind: if *oauth {
                        CredentialKind::OAuth
                    } else {
                        CredentialKind::ApiKey
                    },
                    secret: read_secret(secret_env, what)?,
                    refresh,
                },
                token_expires_in: expires_in.map(Duration::from_secs),
                access: if *contributors {
                    Access::Contributors
                } else {
                    Access::Administrators
                },
                accept_privacy_notice: *accept_privacy_notice,
            };
            let (record, check) = workspace.add_connection(&actor, request).await?;
            println!(
                "saved connection `{}` ({}), credential sha256:{}",
                record.name, record.connector, record.fingerprint
            );
            match check {
                CredentialCheck::Accepted => println!("the vendor accepted the credential"),
                CredentialCheck::NotSupported => println!(
                    "connector `{}` cannot check credentials on its own (contract 0.1.0); the first export saved checks it",
                    record.connector
                ),
            }
        }
        ConnectionCommand::List => {
            let state = session.state()?;
            let rows: Vec<Vec<String>> = state
                .connections()?
                .into_iter()
                .map(|c| {
                    vec![
                        c.name,
                        c.connector,
                        kind(c.credential_kind).into(),
                        format!("sha256:{}", c.fingerprint),
                        access(c.access).into(),
                        c.checked_at.unwrap_or_else(|| "never".into()),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no connections; add one with `connector-host connection add`");
            } else {
                print_table(
                    &[
                        "NAME",
                        "CONNECTOR",
                        "CREDENTIAL",
                        "FINGERPRINT",
                        "USABLE BY",
                        "CHECKED",
                    ],
                    &rows,
                );
            }
        }
        ConnectionCommand::Show { name } => {
            let state = session.state()?;
            let c = state.connection(name)?;
            println!("connection {}", c.name);
            println!("  connector         {}", c.connector);
            println!(
                "  base URL          {}",
                c.base_url.as_deref().unwrap_or("(the connector's)")
            );
            if let Some(dc) = &c.data_centre {
                println!("  data centre       {dc}");
            }
            println!(
                "  credential        {} sha256:{}",
                kind(c.credential_kind),
                c.fingerprint
            );
            if let Some(at) = &c.token_expires_at {
                println!("  token expires     {at}");
            }
            println!("  usable by         {}", access(c.access));
            println!(
                "  privacy notice    accepted by {} at {}",
                c.privacy_accepted_by, c.privacy_accepted_at
            );
            println!("  created           {} by {}", c.created_at, c.created_by);
            println!(
                "  last checked      {}",
                c.checked_at.as_deref().unwrap_or("never")
            );
            let exports: Vec<String> = state
                .exports()?
                .into_iter()
                .filter(|e| e.connection_id == c.id)
                .map(|e| e.name)
                .collect();
            println!(
                "  exports           {}",
                if exports.is_empty() {
                    "none".into()
                } else {
                    exports.join(", ")
                }
            );
        }
        ConnectionCommand::Test { name } => {
            let workspace = session.workspace_with_host().await?;
            match workspace.test_connection(&actor, name).await? {
                CredentialCheck::Accepted => {
                    println!("connection `{name}`: the vendor accepted the credential")
                }
                CredentialCheck::NotSupported => bail!(
                    "connection `{name}`: its connector cannot check credentials on its own (contract 0.1.0)"
                ),
            }
        }
        ConnectionCommand::Remove { name } => {
            let workspace = session.workspace(false)?;
            let exports = workspace.remove_connection(&actor, name)?;
            println!("removed connection `{name}`; its credential was erased");
            if !exports.is_empty() {
                println!(
                    "removed with it, schedules stopped: {} (their run history stays)",
                    exports.join(", ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kind(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::ApiKey => "api-key",
        CredentialKind::OAuth => "oauth",
    }
}

fn access(access: Access) -> &'static str {
    match access {
        Access::Administrators => "administrators",
        Access::Contributors => "administrators, contributors",
    }
}
