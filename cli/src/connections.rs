//! `connector-host connection ...`: saved vendor accounts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use connector_host::workspace::ConnectionChanges;
use connector_host::{Access, ConnectionRequest, CredentialCheck};
use connector_host::{Credential, CredentialKind, TokenRefresh};

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
        #[command(flatten)]
        credential: CredentialArgs,
        /// Let contributors use the connection too (by default, administrators only).
        #[arg(long)]
        contributors: bool,
        /// Accept the data-privacy notice: exported profiles leave the platform's compliance
        /// boundary for the vendor's. Required.
        #[arg(long)]
        accept_privacy_notice: bool,
    },
    /// Replace a connection's credential (the vendor must accept the new one first) or change
    /// who may use it (administrators only).
    Update {
        /// The connection's name.
        name: String,
        /// Replace the credential with the one in the --secret-env variable.
        #[arg(long)]
        rotate_credential: bool,
        /// The new credential, when rotating.
        #[command(flatten)]
        credential: CredentialArgs,
        /// Let contributors use the connection too.
        #[arg(long, conflicts_with = "administrators_only")]
        contributors: bool,
        /// Let administrators only use the connection.
        #[arg(long)]
        administrators_only: bool,
    },
    /// List the connections.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a connection (its credential only as a fingerprint).
    Show {
        /// The connection's name.
        name: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the connection's credential with the vendor again.
    Test {
        /// The connection's name.
        name: String,
    },
    /// Remove a connection and erase its credential; run history stays (administrators only).
    /// A connection exports use is removed only with --with-exports.
    Remove {
        /// The connection's name.
        name: String,
        /// Remove the exports that use it too (their schedules stop).
        #[arg(long)]
        with_exports: bool,
    },
}

/// How a credential is given: from environment variables, never as an argument.
#[derive(Args)]
pub struct CredentialArgs {
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
}

impl CredentialArgs {
    /// The credential, read from its environment variables.
    fn read(&self) -> Result<Credential> {
        let refresh = match (&self.refresh_token_env, &self.token_url) {
            (Some(var), Some(url)) => Some(TokenRefresh {
                refresh_token: read_secret(var, "the OAuth refresh token")?,
                token_url: url.clone(),
            }),
            _ => None,
        };
        Ok(if self.is_oauth() {
            Credential::OAuth {
                access_token: read_secret(&self.secret_env, "the OAuth access token")?,
                refresh,
            }
        } else {
            Credential::ApiKey(read_secret(&self.secret_env, "the vendor API key")?)
        })
    }

    fn is_oauth(&self) -> bool {
        self.oauth || self.refresh_token_env.is_some() || self.expires_in.is_some()
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
}

pub async fn run(session: &Session<'_>, command: &ConnectionCommand) -> Result<ExitCode> {
    let actor = session.actor();
    match command {
        ConnectionCommand::Add {
            name,
            connector,
            base_url,
            data_centre,
            credential,
            contributors,
            accept_privacy_notice,
        } => {
            let workspace = session.workspace_with_host().await?;
            let request = ConnectionRequest {
                name: name.clone(),
                connector: connector.clone(),
                base_url: base_url.clone(),
                data_centre: data_centre.clone(),
                credential: credential.read()?,
                token_expires_in: credential.expires_in(),
                access: if *contributors {
                    Access::Contributors
                } else {
                    Access::Administrators
                },
                accept_privacy_notice: *accept_privacy_notice,
            };
            let (record, check) = workspace.add_connection(&actor, request).await?;
            println!(
                "saved connection `{}` ({}), credential fingerprint {}",
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
        ConnectionCommand::Update {
            name,
            rotate_credential,
            credential: new_credential,
            contributors,
            administrators_only,
        } => {
            let credential = if *rotate_credential {
                Some(new_credential.read()?)
            } else if new_credential.is_oauth() {
                bail!(
                    "--oauth and its options describe a new credential: give --rotate-credential too"
                );
            } else {
                None
            };
            let access = match (contributors, administrators_only) {
                (true, _) => Some(Access::Contributors),
                (_, true) => Some(Access::Administrators),
                _ => None,
            };
            if credential.is_none() && access.is_none() {
                bail!(
                    "nothing to change: give --rotate-credential, --contributors or --administrators-only"
                );
            }
            // Only a new credential needs the connector and the vendor.
            let workspace = if credential.is_some() {
                session.workspace_with_host().await?
            } else {
                session.workspace(false).await?
            };
            let record = workspace
                .update_connection(
                    &actor,
                    name,
                    ConnectionChanges {
                        credential,
                        token_expires_in: new_credential.expires_in(),
                        access,
                    },
                )
                .await?;
            println!(
                "updated connection `{}`: credential fingerprint {}, usable by {}",
                record.name,
                record.fingerprint,
                self::access(record.access)
            );
        }
        ConnectionCommand::List { json } => {
            let connections = session.bare().await?.connections(&actor).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&connections)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = connections
                .into_iter()
                .map(|c| {
                    vec![
                        c.name,
                        c.connector,
                        kind(c.credential_kind).into(),
                        c.fingerprint,
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
        ConnectionCommand::Show { name, json } => {
            let workspace = session.bare().await?;
            let c = workspace.connection(&actor, name).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&c)?);
                return Ok(ExitCode::SUCCESS);
            }
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
                "  credential        {} fingerprint {}",
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
            let exports: Vec<String> = workspace
                .exports(&actor)
                .await?
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
        ConnectionCommand::Remove { name, with_exports } => {
            let workspace = session.workspace(false).await?;
            let exports = workspace
                .remove_connection(&actor, name, *with_exports)
                .await?;
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
