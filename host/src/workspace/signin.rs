//! "Authenticate with <vendor>": the platform's OAuth applications, and a sign-in that ends
//! as a saved connection.

use anyhow::Result;

use super::connections::ConnectionRequest;
use super::connections::check_privacy;
use super::{Workspace, check_name};
use crate::access::{Access, Actor, Operation};
use crate::failure::{Conflict, Missing};
use crate::oauth;
use crate::run::CredentialCheck;
use crate::secret::{Credential, TokenRefresh};
use crate::state::ConnectionRecord;

/// A connection to save once the vendor's sign-in comes back.
#[derive(Debug, Clone)]
pub struct OAuthConnection {
    pub name: String,
    pub connector: String,
    pub access: Access,
    /// As in [`ConnectionRequest::accept_privacy_notice`].
    pub accept_privacy_notice: bool,
}

impl Workspace {
    /// Saves the platform's OAuth application for a connector. Administrators only.
    pub async fn set_oauth_app(
        &self,
        actor: &Actor,
        app: &oauth::OAuthApp,
        client_secret: &crate::Secret,
    ) -> Result<()> {
        self.state
            .set_oauth_app(self.key()?, actor, app, client_secret)
            .await
    }

    /// Starts "Authenticate with <vendor>" for a new connection through `connector`: the
    /// vendor's authorize URL to send the browser to, and what must come back with the code.
    /// Administrators only (they alone add connections).
    pub async fn start_oauth(
        &self,
        actor: &Actor,
        connection: &OAuthConnection,
        redirect_uri: &str,
    ) -> Result<oauth::Authorization> {
        actor.require(Operation::ManageConnections, "add connections")?;
        // What would refuse the connection later is refused before the vendor is involved.
        check_name("connection", &connection.name)?;
        check_privacy(&connection.name, connection.accept_privacy_notice)?;
        if self.state.connection(&connection.name).await.is_ok() {
            return Err(Conflict(format!(
                "a connection named `{}` already exists",
                connection.name
            ))
            .into());
        }
        self.approved_connector(&connection.connector).await?;
        let (app, _) = self.oauth_app_of(&connection.connector).await?;
        oauth::authorize(&app, redirect_uri)
    }

    /// Ends "Authenticate with <vendor>": exchanges the code for tokens, learns the
    /// account's data centre where the vendor needs it, and saves the connection as
    /// [`Workspace::add_connection`] does (the vendor checks the credential first).
    pub async fn finish_oauth(
        &self,
        actor: &Actor,
        connection: OAuthConnection,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&crate::Secret>,
    ) -> Result<(ConnectionRecord, CredentialCheck)> {
        actor.require(Operation::ManageConnections, "add connections")?;
        let (app, secret) = self.oauth_app_of(&connection.connector).await?;
        let network = self.host()?.network();
        let tokens =
            oauth::exchange_code(network, &app, &secret, code, redirect_uri, verifier).await?;
        let data_centre = match &app.metadata_url {
            Some(url) => Some(oauth::data_centre(network, url, &tokens.access_token).await?),
            None => None,
        };
        let refresh = tokens.refresh_token.map(|refresh_token| TokenRefresh {
            refresh_token,
            token_url: app.token_url.clone(),
        });
        self.add_connection(
            actor,
            ConnectionRequest {
                name: connection.name,
                connector: connection.connector,
                base_url: app.base_url.clone(),
                data_centre,
                credential: Credential::OAuth {
                    access_token: tokens.access_token,
                    refresh,
                },
                token_expires_in: tokens.expires_in,
                access: connection.access,
                accept_privacy_notice: connection.accept_privacy_notice,
            },
        )
        .await
    }

    /// The OAuth applications set, by connector (client ids and endpoints; the client
    /// secrets stay sealed).
    pub async fn oauth_apps(&self) -> Result<Vec<oauth::OAuthApp>> {
        self.state.oauth_apps().await
    }

    async fn oauth_app_of(&self, connector: &str) -> Result<(oauth::OAuthApp, crate::Secret)> {
        self.state
            .oauth_app(self.key()?, connector)
            .await?
            .ok_or_else(|| {
                Missing::OAuthApp {
                    connector: connector.to_string(),
                }
                .into()
            })
    }
}
