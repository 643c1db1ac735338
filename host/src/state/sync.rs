//! Each export's sync state in the database: what the vendor acknowledged, contact by contact
//! (the normalised address, a digest of the fields sent, the outcome, the run that settled it),
//! why refused or kept-out contacts are so (`sync_reasons`), and what the state was synced with
//! (`sync_basis`: connector, version, mapping and settings), so that a change of any of these
//! makes the next run full. A run reads and writes it through its journal ([`super::journal`]).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::db::{Db, params};
use super::{ExportRecord, State, journal};
use crate::run::SyncState;

/// What an export's sync state was made with: a change to any of it makes the next run full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBasis {
    pub connector: String,
    pub connector_version: String,
    pub mapping: Vec<String>,
    pub settings: Vec<(String, String)>,
}

impl SyncBasis {
    /// Why a run with this basis must be full after one made with `before`, if it must.
    pub fn full_because(&self, before: &SyncBasis) -> Option<String> {
        let mut why = vec![];
        if self.connector != before.connector {
            why.push(format!(
                "the connector changed from {} to {}",
                before.connector, self.connector
            ));
        } else if self.connector_version != before.connector_version {
            why.push(format!(
                "connector {} changed from version {} to {}",
                self.connector, before.connector_version, self.connector_version
            ));
        }
        if self.mapping != before.mapping {
            why.push(format!(
                "the mapping changed from {} to {}",
                before.mapping.join(", "),
                self.mapping.join(", ")
            ));
        }
        if self.settings != before.settings {
            let show = |s: &[(String, String)]| {
                s.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            why.push(format!(
                "the settings changed from {} to {}",
                show(&before.settings),
                show(&self.settings)
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

impl State {
    /// What the export's sync state was last completed with, if a run ever completed.
    pub async fn sync_basis(&self, export: &ExportRecord) -> Result<Option<SyncBasis>> {
        let text: Option<String> = self
            .db
            .query_opt(
                "SELECT basis FROM sync_basis WHERE export_id = ?1",
                params![export.id],
            )
            .await?
            .map(|r| r.get(0))
            .transpose()?;
        text.map(|t| serde_json::from_str(&t).context("an unreadable sync basis"))
            .transpose()
    }

    /// Records that `run_id` completed the export's sync with `basis`.
    pub async fn complete_sync(
        &self,
        export: &ExportRecord,
        run_id: i64,
        basis: &SyncBasis,
    ) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO sync_basis (export_id, basis, run_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (export_id) DO UPDATE SET basis = excluded.basis,
                     run_id = excluded.run_id",
                params![export.id, serde_json::to_string(basis)?, run_id],
            )
            .await?;
        Ok(())
    }

    /// How many contacts the export's sync state holds, by state.
    pub async fn sync_counts(&self, export: &ExportRecord) -> Result<Vec<(SyncState, u64)>> {
        let by_code = match &self.db {
            Db::Sqlite(_) => {
                super::db::count();
                journal::sqlite_counts(self, export.id)?
            }
            Db::Postgres(_) => {
                let mut by_code = [0u64; 256];
                for row in self
                    .db
                    .query(
                        "SELECT state, COUNT(*) FROM sync_contacts WHERE export_id = ?1
                         GROUP BY state",
                        params![export.id],
                    )
                    .await?
                {
                    by_code[row.get::<u8>(0)? as usize] = row.get(1)?;
                }
                by_code
            }
        };
        Ok(by_code
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(code, n)| Some((SyncState::from_code(code as u8)?, *n)))
            .collect())
    }
}
