//! Connections: vendor accounts with their credential, checked with the vendor before they
//! are saved or changed.

use std::time::Duration;

use anyhow::{Context, Result};

use super::credentials::expires_at;
use super::{Workspace, check_name};
use crate::access::{Access, Actor, Operation};
use crate::failure::{Conflict, Missing};
use crate::run::{Connection, CredentialCheck};
use crate::secret::Credential;
use crate::state::{ConnectionRecord, NewConnection};

/// A connection to save.
pub struct ConnectionRequest {
    pub name: String,
    pub connector: String,
    /// The vendor API base URL, when not the connector's production one.
    pub base_url: Option<String>,
    pub data_centre: Option<String>,
    pub credential: Credential,
    /// For OAuth: how long the access token is valid, if the vendor said.
    pub token_expires_in: Option<Duration>,
    pub access: Access,
    /// The acting user accepted the data-privacy notice: exported profiles leave the
    /// platform's compliance boundary. A connection is never saved without it.
    pub accept_privacy_notice: bool,
}

/// What to change in a saved connection; `None` leaves a part as it is.
#[derive(Default)]
pub struct ConnectionChanges {
    /// A new credential (the vendor must accept it before it replaces the old one).
    pub credential: Option<Credential>,
    /// For a new OAuth credential: how long its access token is valid, if the vendor said.
    pub token_expires_in: Option<Duration>,
    pub access: Option<Access>,
}

impl Workspace {
    /// Checks the credential with the vendor, then saves the connection with the credential
    /// sealed. Administrators only.
    pub async fn add_connection(
        &self,
        actor: &Actor,
        request: ConnectionRequest,
    ) -> Result<(ConnectionRecord, CredentialCheck)> {
        actor.require(Operation::ManageConnections, "add connections")?;
        check_name("connection", &request.name)?;
        check_privacy(&request.name, request.accept_privacy_notice)?;
        let key = self.key()?;
        let plugin = self.approved_connector(&request.connector).await?;
        if self.state.connection(&request.name).await.is_ok() {
            return Err(Conflict(format!(
                "a connection named `{}` already exists",
                request.name
            ))
            .into());
        }
        let connection = Connection {
            connector: request.connector.clone(),
            base_url: request.base_url.clone(),
            data_centre: request.data_centre.clone(),
            credential: request.credential.clone(),
        };
        let check = self
            .host()?
            .check_connection_with(plugin, &connection)
            .await
            .with_context(|| format!("connection `{}` was not saved", request.name))?;
        let record = self
            .state
            .add_connection(
                key,
                &NewConnection {
                    name: &request.name,
                    connector: &request.connector,
                    base_url: request.base_url.as_deref(),
                    data_centre: request.data_centre.as_deref(),
                    credential: &request.credential,
                    token_expires_at: request.token_expires_in.map(expires_at),
                    access: request.access,
                    checked_at: (check == CredentialCheck::Accepted).then(crate::state::now),
                },
                actor,
            )
            .await?;
        let detail = format!(
            "connector {}, privacy notice accepted, open to {}",
            record.connector,
            crate::state::to_text(&record.access)
        );
        self.state
            .record(actor, "connection.add", &record.name, &detail)
            .await?;
        Ok((record, check))
    }

    /// Checks a saved connection's credential with the vendor again.
    pub async fn test_connection(&self, actor: &Actor, name: &str) -> Result<CredentialCheck> {
        let record = self.connection(actor, name).await?;
        let plugin = self.approved_connector(&record.connector).await?;
        let connection = self.unsealed(&record).await?;
        let check = self
            .host()?
            .check_connection_with(plugin, &connection)
            .await?;
        if check == CredentialCheck::Accepted {
            self.state.mark_checked(record.id).await?;
        }
        Ok(check)
    }

    /// Replaces a connection's credential (once the vendor accepted the new one) or who may
    /// use it. Administrators only.
    pub async fn update_connection(
        &self,
        actor: &Actor,
        name: &str,
        changes: ConnectionChanges,
    ) -> Result<ConnectionRecord> {
        actor.require(Operation::ManageConnections, "change connections")?;
        let record = self.state.connection(name).await?;
        if let Some(credential) = &changes.credential {
            let key = self.key()?;
            let plugin = self.approved_connector(&record.connector).await?;
            let connection = Connection {
                connector: record.connector.clone(),
                base_url: record.base_url.clone(),
                data_centre: record.data_centre.clone(),
                credential: credential.clone(),
            };
            self.host()?
                .check_connection_with(plugin, &connection)
                .await
                .with_context(|| format!("connection `{name}` keeps its old credential"))?;
            self.state
                .replace_credential(
                    key,
                    &record,
                    credential,
                    changes.token_expires_in.map(expires_at),
                )
                .await?;
        }
        let mut detail = vec![];
        if changes.credential.is_some() {
            detail.push("credential replaced".to_string());
        }
        if let Some(access) = changes.access {
            self.state.set_access(record.id, access).await?;
            detail.push(format!("open to {}", crate::state::to_text(&access)));
        }
        self.state
            .record(actor, "connection.update", name, &detail.join(", "))
            .await?;
        self.state.connection(name).await
    }

    /// Removes a connection; history stays. A connection exports use is removed only with
    /// `with_exports`, and its exports with it. Administrators only. Returns the exports
    /// removed.
    pub async fn remove_connection(
        &self,
        actor: &Actor,
        name: &str,
        with_exports: bool,
    ) -> Result<Vec<String>> {
        actor.require(Operation::ManageConnections, "remove connections")?;
        let record = self.state.connection(name).await?;
        let users: Vec<String> = self
            .state
            .exports()
            .await?
            .into_iter()
            .filter(|e| e.connection_id == record.id)
            .map(|e| e.name)
            .collect();
        if !users.is_empty() && !with_exports {
            return Err(Missing::ExportsRemoved {
                connection: name.to_string(),
                exports: users,
            }
            .into());
        }
        let removed = self.state.remove_connection(name, actor).await?;
        let detail = match removed.is_empty() {
            true => String::new(),
            false => format!("with exports {}", removed.join(", ")),
        };
        self.state
            .record(actor, "connection.remove", name, &detail)
            .await?;
        Ok(removed)
    }
}

/// Refuses a connection whose data-privacy notice was not accepted.
pub(super) fn check_privacy(name: &str, accepted: bool) -> Result<()> {
    if !accepted {
        return Err(Missing::PrivacyNotice {
            connection: name.to_string(),
        }
        .into());
    }
    Ok(())
}
