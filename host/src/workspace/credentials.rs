//! A saved connection's credential, unsealed for a use, its OAuth access token renewed first
//! when it expired.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;

use super::Workspace;
use crate::oauth;
use crate::run::Connection;
use crate::secret::{Credential, TokenRefresh};
use crate::state::ConnectionRecord;

impl Workspace {
    /// The library's view of a saved connection, its OAuth token renewed if it expired.
    pub(super) async fn unsealed(&self, record: &ConnectionRecord) -> Result<Connection> {
        let stored = self.state.credential(self.key()?, record).await?;
        self.renewed(record, stored).await
    }

    /// The saved connection `id` and the library's view of it, read in one call to the store
    /// (a run's way).
    pub(super) async fn unsealed_by_id(&self, id: i64) -> Result<(ConnectionRecord, Connection)> {
        let (record, stored) = self
            .state
            .connection_with_credential(self.key()?, id)
            .await?;
        let connection = self.renewed(&record, stored).await?;
        Ok((record, connection))
    }

    /// `stored` as the library uses it, its OAuth access token renewed first if it expired.
    async fn renewed(
        &self,
        record: &ConnectionRecord,
        mut stored: Credential,
    ) -> Result<Connection> {
        let key = self.key()?;
        if let Credential::OAuth { refresh, .. } = &stored
            && token_expired(record.token_expires_at.as_deref())
        {
            let Some(refresh) = refresh.clone() else {
                bail!(
                    "the OAuth access token of connection `{}` expired at {} and it has no refresh token; add the connection again",
                    record.name,
                    record.token_expires_at.as_deref().unwrap_or("?")
                );
            };
            let tokens = oauth::refresh(self.host()?.network(), &refresh)
                .await
                .with_context(|| {
                    format!("renewing the OAuth token of connection `{}`", record.name)
                })?;
            stored = Credential::OAuth {
                access_token: tokens.access_token,
                refresh: Some(TokenRefresh {
                    refresh_token: tokens.refresh_token.unwrap_or(refresh.refresh_token),
                    token_url: refresh.token_url,
                }),
            };
            self.state
                .replace_credential(key, record, &stored, tokens.expires_in.map(expires_at))
                .await?;
            tracing::info!(connection = %record.name, "renewed the OAuth access token");
        }
        Ok(Connection {
            connector: record.connector.clone(),
            base_url: record.base_url.clone(),
            data_centre: record.data_centre.clone(),
            credential: stored,
        })
    }
}

pub(super) fn expires_at(valid_for: Duration) -> String {
    let at = Utc::now() + chrono::Duration::from_std(valid_for).unwrap_or(chrono::Duration::MAX);
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Whether a token expires within the next minute (so it lasts through validation).
fn token_expired(expires_at: Option<&str>) -> bool {
    expires_at
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .is_some_and(|at| at.with_timezone(&Utc) <= Utc::now() + chrono::Duration::seconds(60))
}
