//! Saved connections: vendor accounts with their credential sealed under the master key.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::db::{DbRow, Step, params};
use super::{Access, Actor, MasterKey, State, now, to_text};
use crate::failure::{Conflict, NotFound};
use crate::secret::{Credential, CredentialKind, Secret, TokenRefresh};

/// A saved connection, without its credential.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    pub id: i64,
    pub name: String,
    pub connector: String,
    pub base_url: Option<String>,
    pub data_centre: Option<String>,
    pub credential_kind: CredentialKind,
    /// SHA-256 prefix of the credential, to tell credentials apart.
    pub fingerprint: String,
    /// When an OAuth access token expires, if the vendor said.
    pub token_expires_at: Option<String>,
    pub access: Access,
    pub privacy_accepted_by: String,
    pub privacy_accepted_at: String,
    pub created_by: String,
    pub created_at: String,
    /// When the vendor last accepted the credential.
    pub checked_at: Option<String>,
    pub removed_at: Option<String>,
}

/// The sealed form of a [`Credential`].
#[derive(Serialize, Deserialize)]
struct SealedCredential {
    secret: String,
    refresh_token: Option<String>,
    token_url: Option<String>,
}

/// A connection to save.
pub struct NewConnection<'a> {
    pub name: &'a str,
    pub connector: &'a str,
    pub base_url: Option<&'a str>,
    pub data_centre: Option<&'a str>,
    pub credential: &'a Credential,
    pub token_expires_at: Option<String>,
    pub access: Access,
    pub checked_at: Option<String>,
}

impl State {
    /// Saves a connection, sealing its credential under `key`.
    pub async fn add_connection(
        &self,
        key: &MasterKey,
        new: &NewConnection<'_>,
        actor: &Actor,
    ) -> Result<ConnectionRecord> {
        let now = now();
        // The unique index on active names settles two processes adding the same name.
        let added = self
            .db
            .execute(
                "INSERT INTO connections (name, connector, base_url, data_centre, credential_kind,
                     credential, fingerprint, token_expires_at, access, privacy_accepted_by,
                     privacy_accepted_at, created_by, created_at, checked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10, ?11, ?12)
                 ON CONFLICT DO NOTHING",
                params![
                    new.name,
                    new.connector,
                    new.base_url,
                    new.data_centre,
                    to_text(&new.credential.kind()),
                    seal_credential(key, new.name, new.credential)?,
                    key.fingerprint(new.credential.secret()),
                    new.token_expires_at.clone(),
                    to_text(&new.access),
                    &actor.name,
                    now,
                    new.checked_at.clone(),
                ],
            )
            .await?;
        if added == 0 {
            return Err(
                Conflict(format!("a connection named `{}` already exists", new.name)).into(),
            );
        }
        self.connection(new.name).await
    }

    /// The active connection called `name`.
    pub async fn connection(&self, name: &str) -> Result<ConnectionRecord> {
        self.db
            .query_opt(
                &format!("{CONNECTION_COLUMNS} WHERE name = ?1 AND removed_at IS NULL"),
                params![name],
            )
            .await?
            .map(|r| connection_row(&r))
            .transpose()?
            .ok_or_else(|| NotFound(format!("there is no connection named `{name}`")).into())
    }

    /// A connection by id, removed or not (for history).
    pub async fn connection_by_id(&self, id: i64) -> Result<ConnectionRecord> {
        connection_row(
            &self
                .db
                .query_one(&format!("{CONNECTION_COLUMNS} WHERE id = ?1"), params![id])
                .await?,
        )
    }

    /// The active connections, by name.
    pub async fn connections(&self) -> Result<Vec<ConnectionRecord>> {
        self.db
            .query(
                &format!("{CONNECTION_COLUMNS} WHERE removed_at IS NULL ORDER BY name"),
                vec![],
            )
            .await?
            .iter()
            .map(connection_row)
            .collect()
    }

    /// A connection by id with its credential unsealed, in one read.
    pub async fn connection_with_credential(
        &self,
        key: &MasterKey,
        id: i64,
    ) -> Result<(ConnectionRecord, Credential)> {
        let row = self
            .db
            .query_one(
                &format!("{CONNECTION_AND_CREDENTIAL} WHERE id = ?1"),
                params![id],
            )
            .await?;
        let record = connection_row(&row)?;
        let credential = unseal(key, &record, row.get(15)?)?;
        Ok((record, credential))
    }

    /// Unseals a connection's credential.
    pub async fn credential(
        &self,
        key: &MasterKey,
        connection: &ConnectionRecord,
    ) -> Result<Credential> {
        let sealed: Option<Vec<u8>> = self
            .db
            .query_one(
                "SELECT credential FROM connections WHERE id = ?1",
                params![connection.id],
            )
            .await?
            .get(0)?;
        unseal(key, connection, sealed)
    }

    /// Replaces a connection's credential (after an OAuth refresh).
    pub async fn replace_credential(
        &self,
        key: &MasterKey,
        connection: &ConnectionRecord,
        credential: &Credential,
        token_expires_at: Option<String>,
    ) -> Result<()> {
        self.db
            .execute(
                "UPDATE connections SET credential = ?2, fingerprint = ?3, token_expires_at = ?4,
                     checked_at = ?5 WHERE id = ?1",
                params![
                    connection.id,
                    seal_credential(key, &connection.name, credential)?,
                    key.fingerprint(credential.secret()),
                    token_expires_at,
                    now(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Recomputes the fingerprints written before they were keyed (12 hex digits of a plain
    /// SHA-256) with `key`; an erased credential keeps none.
    pub async fn rekey_fingerprints(&self, key: &MasterKey) -> Result<()> {
        let old: Vec<ConnectionRecord> = self
            .db
            .query(
                &format!("{CONNECTION_COLUMNS} WHERE length(fingerprint) = 12"),
                vec![],
            )
            .await?
            .iter()
            .map(connection_row)
            .collect::<Result<_>>()?;
        for connection in old {
            let fingerprint = match self.credential(key, &connection).await {
                Ok(credential) => key.fingerprint(credential.secret()),
                Err(_) if connection.removed_at.is_some() => "(erased)".into(),
                Err(e) => return Err(e),
            };
            self.db
                .execute(
                    "UPDATE connections SET fingerprint = ?2 WHERE id = ?1",
                    params![connection.id, fingerprint],
                )
                .await?;
        }
        Ok(())
    }

    /// Sets who may use a connection.
    pub async fn set_access(&self, connection_id: i64, access: Access) -> Result<()> {
        self.db
            .execute(
                "UPDATE connections SET access = ?2 WHERE id = ?1",
                params![connection_id, to_text(&access)],
            )
            .await?;
        Ok(())
    }

    /// Notes that the vendor accepted a connection's credential now.
    pub async fn mark_checked(&self, connection_id: i64) -> Result<()> {
        self.db
            .execute(
                "UPDATE connections SET checked_at = ?2 WHERE id = ?1",
                params![connection_id, now()],
            )
            .await?;
        Ok(())
    }

    /// Removes a connection and the exports that use it (their schedules stop). The sealed
    /// credential is erased; the records stay so that run history remains readable. Returns
    /// the names of the exports removed with it.
    pub async fn remove_connection(&self, name: &str, actor: &Actor) -> Result<Vec<String>> {
        let connection = self.connection(name).await?;
        let now = now();
        let done = self
            .db
            .batch(&[
                Step::new(
                    "UPDATE exports SET removed_at = ?2, removed_by = ?3
                     WHERE connection_id = ?1 AND removed_at IS NULL RETURNING name",
                    params![connection.id, &now, &actor.name],
                ),
                Step::new(
                    "UPDATE connections SET removed_at = ?2, removed_by = ?3, credential = NULL
                     WHERE id = ?1",
                    params![connection.id, &now, &actor.name],
                ),
                // Runs of its exports waiting for a worker will never run.
                Step::new(
                    "UPDATE runs SET status = 'failed', finished_at = ?2,
                         error = 'the export was removed before a worker ran it'
                     WHERE status = 'queued'
                         AND export_id IN (SELECT id FROM exports WHERE connection_id = ?1)",
                    params![connection.id, &now],
                ),
            ])
            .await?
            .context("removing the connection changed nothing")?;
        let mut exports = done[0]
            .iter()
            .map(|r| r.get(0))
            .collect::<Result<Vec<String>>>()?;
        exports.sort();
        Ok(exports)
    }
}

/// The columns of a [`ConnectionRecord`], in `connection_row`'s order.
macro_rules! connection_fields {
    () => {
        "id, name, connector, base_url, data_centre, credential_kind, fingerprint,
        token_expires_at, access, privacy_accepted_by, privacy_accepted_at, created_by,
        created_at, checked_at, removed_at"
    };
}
const CONNECTION_COLUMNS: &str = concat!("SELECT ", connection_fields!(), " FROM connections");
/// With the sealed credential last.
const CONNECTION_AND_CREDENTIAL: &str = concat!(
    "SELECT ",
    connection_fields!(),
    ", credential FROM connections"
);

fn connection_row(r: &DbRow) -> Result<ConnectionRecord> {
    Ok(ConnectionRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        connector: r.get(2)?,
        base_url: r.get(3)?,
        data_centre: r.get(4)?,
        credential_kind: r.name(5)?,
        fingerprint: r.get(6)?,
        token_expires_at: r.get(7)?,
        access: r.name(8)?,
        privacy_accepted_by: r.get(9)?,
        privacy_accepted_at: r.get(10)?,
        created_by: r.get(11)?,
        created_at: r.get(12)?,
        checked_at: r.get(13)?,
        removed_at: r.get(14)?,
    })
}

/// The AEAD context of a connection's credential: a sealed credential cannot be moved to
/// another connection.
fn credential_context(name: &str) -> Vec<u8> {
    format!("cdp connection credential\0{name}").into_bytes()
}

fn seal_credential(key: &MasterKey, name: &str, credential: &Credential) -> Result<Vec<u8>> {
    let refresh = match credential {
        Credential::OAuth {
            refresh: Some(refresh),
            ..
        } => Some(refresh),
        _ => None,
    };
    let plain = serde_json::to_vec(&SealedCredential {
        secret: credential.secret().expose().to_string(),
        refresh_token: refresh.map(|r| r.refresh_token.expose().to_string()),
        token_url: refresh.map(|r| r.token_url.clone()),
    })?;
    Ok(key.seal(&plain, &credential_context(name)))
}

/// A connection's sealed credential, opened with `key`.
fn unseal(
    key: &MasterKey,
    connection: &ConnectionRecord,
    sealed: Option<Vec<u8>>,
) -> Result<Credential> {
    let sealed = sealed.with_context(|| {
        format!(
            "connection `{}` was removed; its credential was erased",
            connection.name
        )
    })?;
    let plain = key
        .open(&sealed, &credential_context(&connection.name))
        .with_context(|| format!("connection `{}`", connection.name))?;
    let sealed: SealedCredential = serde_json::from_slice(&plain)?;
    let secret = Secret::new(sealed.secret);
    Ok(match connection.credential_kind {
        CredentialKind::ApiKey => Credential::ApiKey(secret),
        CredentialKind::OAuth => Credential::OAuth {
            access_token: secret,
            refresh: match (sealed.refresh_token, sealed.token_url) {
                (Some(token), Some(url)) => Some(TokenRefresh {
                    refresh_token: Secret::new(token),
                    token_url: url,
                }),
                _ => None,
            },
        },
    })
}
