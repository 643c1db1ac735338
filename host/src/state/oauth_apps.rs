//! The platform's OAuth applications with the vendors, one per connector: endpoints and
//! client id as JSON, the client secret sealed under the master key.

use anyhow::{Context, Result};

use super::db::params;
use super::{Actor, MasterKey, State, now};
use crate::oauth::OAuthApp;
use crate::secret::Secret;

/// The AEAD context of an app's client secret: it cannot be moved to another connector.
fn secret_context(connector: &str) -> Vec<u8> {
    format!("cdp oauth client secret\0{connector}").into_bytes()
}

impl State {
    /// Saves (or replaces) the OAuth application of `app.connector`. Administrators only.
    pub async fn set_oauth_app(
        &self,
        key: &MasterKey,
        by: &Actor,
        app: &OAuthApp,
        client_secret: &Secret,
    ) -> Result<()> {
        app.check()?;
        let sealed = key.seal(
            client_secret.expose().as_bytes(),
            &secret_context(&app.connector),
        );
        self.db
            .execute(
                "INSERT INTO oauth_apps (connector, app, client_secret, updated_by, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (connector) DO UPDATE SET app = excluded.app,
                     client_secret = excluded.client_secret, updated_by = excluded.updated_by,
                     updated_at = excluded.updated_at",
                params![
                    &app.connector,
                    serde_json::to_string(app)?,
                    sealed,
                    &by.name,
                    now()
                ],
            )
            .await?;
        let detail = format!("client id {}", app.client_id);
        self.record(by, "oauth-app.set", &app.connector, &detail)
            .await
    }

    /// Every connector's OAuth application (without secrets).
    pub async fn oauth_apps(&self) -> Result<Vec<OAuthApp>> {
        self.db
            .query("SELECT app FROM oauth_apps ORDER BY connector", vec![])
            .await?
            .iter()
            .map(|r| r.json(0))
            .collect()
    }

    /// A connector's OAuth application and its client secret, if one is set.
    pub async fn oauth_app(
        &self,
        key: &MasterKey,
        connector: &str,
    ) -> Result<Option<(OAuthApp, Secret)>> {
        let Some(row) = self
            .db
            .query_opt(
                "SELECT app, client_secret FROM oauth_apps WHERE connector = ?1",
                params![connector],
            )
            .await?
        else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.get(1)?;
        let secret = key.open(&sealed, &secret_context(connector))?;
        let secret = String::from_utf8(secret).context("the stored client secret is not text")?;
        Ok(Some((row.json(0)?, Secret::new(secret))))
    }
}
