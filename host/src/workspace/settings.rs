//! The settings catalogue: what may be set, each value checked when it is set, the value in
//! effect (a default when unset), and the profile source the settings name.

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::Workspace;
use crate::access::{Actor, Operation};
use crate::source::{FileSource, PostgresSource, ProfileSource};
use crate::state::{LEASE_SECONDS_SETTING, lease_term_of};

/// The setting that caps the profiles of one run.
pub const MAX_PROFILES_SETTING: &str = "max-profiles";

/// The setting holding how many unreadable rows a run skips before it stops (none: no limit).
pub const MAX_BAD_ROWS_SETTING: &str = "max-bad-rows";

/// The cap when the setting is absent.
pub const DEFAULT_MAX_PROFILES: u64 = 1_000_000;

/// Every setting, in the order they are shown.
pub const SETTINGS: [&str; 8] = [
    "profiles",
    "memberships",
    "profiles-table",
    "memberships-table",
    "id-column",
    MAX_PROFILES_SETTING,
    MAX_BAD_ROWS_SETTING,
    LEASE_SECONDS_SETTING,
];

/// A setting as it stands: its value, or the default in effect when it is unset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    pub key: &'static str,
    /// The value set, if any.
    pub value: Option<String>,
    /// What applies when it is unset (`None`: nothing, e.g. no limit).
    pub default: Option<String>,
}

impl Setting {
    /// The value in effect.
    pub fn in_effect(&self) -> Option<&str> {
        self.value.as_deref().or(self.default.as_deref())
    }
}

/// A setting changed: the value as stored, and what looking at the profile source found
/// wrong with it (the change is kept; the next run would fail the same way).
#[derive(Debug)]
pub struct SettingChanged {
    pub value: String,
    pub warning: Option<String>,
}

impl Workspace {
    /// Every setting with its value, or its default.
    pub async fn settings(&self) -> Result<Vec<Setting>> {
        let set = self.state.settings().await?;
        let lease = self.state.lease_term().await?;
        Ok(SETTINGS
            .into_iter()
            .map(|key| Setting {
                key,
                value: set.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()),
                default: match key {
                    "id-column" => Some("id".into()),
                    MAX_PROFILES_SETTING => Some(DEFAULT_MAX_PROFILES.to_string()),
                    LEASE_SECONDS_SETTING => Some(lease.as_secs_f64().to_string()),
                    _ => None,
                },
            })
            .collect())
    }

    /// Changes a setting, its value checked first (a file must exist, a number be one, a
    /// table name be one). A profile source that cannot be read as set is said at once: an id
    /// column the profiles lack is refused and the setting kept as it was; a new file or
    /// table is kept with a warning (its id column may be set next). Administrators only.
    pub async fn set_setting(
        &self,
        actor: &Actor,
        key: &str,
        value: &str,
    ) -> Result<SettingChanged> {
        actor.require(Operation::ChangeSettings, "change settings")?;
        let value = checked(key, value)?;
        let before = self.state.setting(key).await?;
        self.state.set_setting(key, &value).await?;
        let warning = match self.check_source().await {
            Ok(()) => None,
            Err(e) if key != "id-column" => Some(crate::text::clean(&format!("{e:#}"), 2_000)),
            Err(e) => {
                match before {
                    Some(before) => self.state.set_setting(key, &before).await?,
                    None => self.state.remove_setting(key).await?,
                }
                return Err(e.context(format!("{key} was not changed")));
            }
        };
        // A URL's password stays out of the audit log.
        let detail = crate::pg::redacted(&value);
        self.state
            .record(actor, "setting.set", key, &detail)
            .await?;
        Ok(SettingChanged { value, warning })
    }

    /// The profile source the settings name, if they name one: files, or a PostgreSQL
    /// database.
    pub async fn source_from_settings(&self) -> Result<Option<Arc<dyn ProfileSource>>> {
        let setting = |key: &'static str| self.state.setting(key);
        let id_column = setting("id-column").await?.unwrap_or_else(|| "id".into());
        let Some(profiles) = setting("profiles").await? else {
            return Ok(None);
        };
        if is_postgres_url(&profiles) {
            let profiles_table = setting("profiles-table").await?;
            let memberships_table = setting("memberships-table").await?;
            return Ok(Some(Arc::new(PostgresSource::new(
                &profiles,
                profiles_table.as_deref().unwrap_or("profiles"),
                memberships_table.as_deref().unwrap_or("memberships"),
                &id_column,
            )?)));
        }
        let Some(memberships) = setting("memberships").await? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(FileSource::new(
            profiles,
            memberships,
            &id_column,
        )?)))
    }

    /// Reads the columns of the profile source the settings name (when they name one), and
    /// checks its id column is among them.
    async fn check_source(&self) -> Result<()> {
        let Some(source) = self.source_from_settings().await? else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || source.columns().map(drop)).await?
    }

    /// The limits of a run the settings set (one read of the store).
    pub(super) async fn run_limits(&self) -> Result<RunLimits> {
        let settings = self.state.settings().await?;
        let get = |key: &str| settings.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let number = |key: &str, v: &String| {
            v.parse()
                .with_context(|| format!("the setting {key} is `{v}`, not a number"))
        };
        Ok(RunLimits {
            max_profiles: match get(MAX_PROFILES_SETTING) {
                None => DEFAULT_MAX_PROFILES,
                Some(v) => number(MAX_PROFILES_SETTING, v)?,
            },
            max_bad_rows: get(MAX_BAD_ROWS_SETTING)
                .map(|v| number(MAX_BAD_ROWS_SETTING, v))
                .transpose()?,
        })
    }
}

/// What the settings cap a run at.
pub(super) struct RunLimits {
    /// Profiles a run reads at most.
    pub max_profiles: u64,
    /// Unreadable rows a run skips before it stops (`None`: no limit).
    pub max_bad_rows: Option<u64>,
}

fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// A setting's value as stored, once checked (a file by its full path).
fn checked(key: &str, value: &str) -> Result<String> {
    Ok(match key {
        "profiles" if is_postgres_url(value) => {
            PostgresSource::check_url(value)?;
            value.to_string()
        }
        "profiles-table" | "memberships-table" => {
            // Checked as a name or a query now, rather than at the first run.
            PostgresSource::check_relation(value).context(key.to_string())?;
            value.trim().to_string()
        }
        "profiles" | "memberships" => std::fs::canonicalize(value)
            .with_context(|| format!("{key}: cannot find {value}"))?
            .to_string_lossy()
            .into_owned(),
        "id-column" if !value.trim().is_empty() => value.trim().to_string(),
        "id-column" => bail!("id-column must name a column, not be blank"),
        MAX_PROFILES_SETTING => match value.parse::<u64>() {
            Ok(n) if n > 0 => n.to_string(),
            _ => bail!("max-profiles must be a positive whole number, not `{value}`"),
        },
        MAX_BAD_ROWS_SETTING => match value.parse::<u64>() {
            Ok(n) => n.to_string(),
            _ => bail!("max-bad-rows must be a whole number, not `{value}`"),
        },
        LEASE_SECONDS_SETTING => {
            lease_term_of(value)?;
            value.trim().to_string()
        }
        _ => bail!(
            "unknown setting `{key}`; settings are {}",
            SETTINGS.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_before_they_are_stored() {
        assert_eq!(checked("max-profiles", "500").unwrap(), "500");
        for (key, value, says) in [
            ("max-profiles", "0", "positive whole number"),
            ("max-bad-rows", "-1", "whole number"),
            ("lease-seconds", "1", "from 2 to 3600"),
            ("id-column", "  ", "must name a column"),
            ("profiles", "/no/such/file.csv", "cannot find"),
            ("colour", "blue", "unknown setting `colour`"),
        ] {
            let err = format!("{:#}", checked(key, value).unwrap_err());
            assert!(err.contains(says), "{key}={value}: {err}");
        }
        assert_eq!(checked("lease-seconds", " 10 ").unwrap(), "10");
    }
}
