//! Settings (the profile source, per-run limits, the lease term) and administrators'
//! approvals of connectors.

use std::time::Duration;

use anyhow::{Context, Result};

use super::State;
use super::db::{DbRow, params};
use crate::approval::Approval;

/// The setting holding how long, in seconds, an export's lease lasts unrenewed: how soon
/// another worker takes over the run of a worker that died (PostgreSQL).
pub const LEASE_SECONDS_SETTING: &str = "lease-seconds";
pub(super) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A `lease-seconds` value as a term: seconds, from 2 to 3600. A lease is renewed three
/// times a term and held surely for four fifths of it after each renewal: a shorter term
/// would leave a worker no room for one slow round trip to the database.
pub fn lease_term_of(text: &str) -> Result<Duration> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (2.0..=3600.0).contains(s))
        .map(Duration::from_secs_f64)
        .with_context(|| {
            format!(
                "{LEASE_SECONDS_SETTING} must be a number of seconds from 2 to 3600, not `{text}`"
            )
        })
}

impl State {
    /// A setting's value, if set.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        self.db
            .query_opt("SELECT value FROM settings WHERE key = ?1", params![key])
            .await?
            .map(|r| r.get(0))
            .transpose()
    }

    /// Sets a setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .await?;
        Ok(())
    }

    /// Removes a setting (its default applies again).
    pub async fn remove_setting(&self, key: &str) -> Result<()> {
        self.db
            .execute("DELETE FROM settings WHERE key = ?1", params![key])
            .await?;
        Ok(())
    }

    /// Every setting, by key.
    pub async fn settings(&self) -> Result<Vec<(String, String)>> {
        self.db
            .query("SELECT key, value FROM settings ORDER BY key", vec![])
            .await?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
    }

    /// How long a lease lasts unrenewed (the `lease-seconds` setting; 30 by default).
    pub async fn lease_term(&self) -> Result<Duration> {
        match self.setting(LEASE_SECONDS_SETTING).await? {
            None => Ok(DEFAULT_LEASE),
            Some(text) => lease_term_of(&text),
        }
    }

    // ---- connector approvals ----

    /// Records an administrator's approval of a connector, replacing an earlier one.
    pub async fn approve_connector(&self, approval: &Approval) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO connector_approvals (connector, digest, hosts, default_base_url,
                     version, approved_by, approved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (connector) DO UPDATE SET digest = excluded.digest,
                     hosts = excluded.hosts, default_base_url = excluded.default_base_url,
                     version = excluded.version, approved_by = excluded.approved_by,
                     approved_at = excluded.approved_at",
                params![
                    &approval.connector,
                    &approval.digest,
                    serde_json::to_string(&approval.hosts)?,
                    &approval.default_base_url,
                    &approval.version,
                    &approval.approved_by,
                    &approval.approved_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// Withdraws a connector's approval; whether it had one.
    pub async fn revoke_connector(&self, connector: &str) -> Result<bool> {
        let removed = self
            .db
            .execute(
                "DELETE FROM connector_approvals WHERE connector = ?1",
                params![connector],
            )
            .await?;
        Ok(removed > 0)
    }

    /// The approval of a connector, if it has one.
    pub async fn approval(&self, connector: &str) -> Result<Option<Approval>> {
        self.db
            .query_opt(
                &format!("{APPROVAL_COLUMNS} WHERE connector = ?1"),
                params![connector],
            )
            .await?
            .map(|r| approval_row(&r))
            .transpose()
    }

    /// Every approval, by connector id.
    pub async fn approvals(&self) -> Result<Vec<Approval>> {
        self.db
            .query(&format!("{APPROVAL_COLUMNS} ORDER BY connector"), vec![])
            .await?
            .iter()
            .map(approval_row)
            .collect()
    }
}

const APPROVAL_COLUMNS: &str = "SELECT connector, digest, hosts, default_base_url, version,
    approved_by, approved_at FROM connector_approvals";

fn approval_row(r: &DbRow) -> Result<Approval> {
    Ok(Approval {
        connector: r.get(0)?,
        digest: r.get(1)?,
        hosts: r.json(2)?,
        default_base_url: r.get(3)?,
        version: r.get(4)?,
        approved_by: r.get(5)?,
        approved_at: r.get(6)?,
    })
}
