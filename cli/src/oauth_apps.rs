//! `oauth-app`: the platform's OAuth application with each vendor, which "Authenticate with
//! <vendor>" in the console signs in through.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use connector_host::oauth::OAuthApp;

use crate::Session;
use crate::input::read_secret;
use crate::output::print_table;

#[derive(Subcommand)]
pub enum OAuthAppCommand {
    /// Set the OAuth application of a connector: the client id and secret the vendor gave the
    /// platform. The vendor's documented endpoints are used unless given (Campaign Monitor,
    /// Mailchimp); the redirect URI to register with the vendor is the server's
    /// `<public URL>/oauth/callback`.
    Set {
        /// The connector's id (campaign-monitor, mailchimp, ...).
        connector: String,
        /// The client id the vendor gave the platform's application.
        #[arg(long)]
        client_id: String,
        /// The environment variable holding the client secret.
        #[arg(long, default_value = "CONNECTOR_OAUTH_CLIENT_SECRET")]
        client_secret_env: String,
        /// The vendor's authorize page.
        #[arg(long)]
        authorize_url: Option<String>,
        /// The vendor's token endpoint.
        #[arg(long)]
        token_url: Option<String>,
        /// The endpoint that says which data centre the account is in (Mailchimp).
        #[arg(long)]
        metadata_url: Option<String>,
        /// The scopes to ask for, as the vendor writes them.
        #[arg(long)]
        scope: Option<String>,
        /// Send a PKCE challenge (only if the vendor supports it).
        #[arg(long)]
        pkce: bool,
        /// The API base URL of connections made this way (a simulator's); `{dc}` stands for
        /// the data centre.
        #[arg(long)]
        base_url: Option<String>,
    },
    /// The OAuth applications set (never their secrets).
    List,
}

pub async fn run(session: &Session<'_>, command: &OAuthAppCommand) -> Result<ExitCode> {
    match command {
        OAuthAppCommand::Set {
            connector,
            client_id,
            client_secret_env,
            authorize_url,
            token_url,
            metadata_url,
            scope,
            pkce,
            base_url,
        } => {
            let known = OAuthApp::known(connector, client_id);
            let app = OAuthApp {
                connector: connector.clone(),
                client_id: client_id.clone(),
                authorize_url: authorize_url
                    .clone()
                    .or(known.as_ref().map(|k| k.authorize_url.clone()))
                    .with_context(|| format!("give --authorize-url for connector `{connector}`"))?,
                token_url: token_url
                    .clone()
                    .or(known.as_ref().map(|k| k.token_url.clone()))
                    .with_context(|| format!("give --token-url for connector `{connector}`"))?,
                metadata_url: metadata_url
                    .clone()
                    .or(known.as_ref().and_then(|k| k.metadata_url.clone())),
                scope: scope
                    .clone()
                    .or(known.as_ref().and_then(|k| k.scope.clone())),
                pkce: *pkce,
                base_url: base_url.clone(),
            };
            let secret = read_secret(client_secret_env, "the OAuth client secret")?;
            let workspace = session.workspace(true).await?;
            workspace
                .set_oauth_app(&session.actor(), &app, &secret)
                .await?;
            println!(
                "OAuth application of `{connector}` set: client id {}, authorize at {}",
                app.client_id, app.authorize_url
            );
        }
        OAuthAppCommand::List => {
            let apps = session.bare().await?.oauth_apps().await?;
            let rows = apps
                .iter()
                .map(|a| {
                    vec![
                        a.connector.clone(),
                        a.client_id.clone(),
                        a.authorize_url.clone(),
                        a.token_url.clone(),
                    ]
                })
                .collect::<Vec<_>>();
            print_table(&["CONNECTOR", "CLIENT ID", "AUTHORIZE", "TOKEN"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}
