//! Where profiles come from. Embedders implement [`ProfileSource`] over their own store; the
//! host ships [`FileSource`] for CSV and JSON Lines files and [`PostgresSource`] for tables,
//! views or queries in PostgreSQL.
//!
//! A run streams rows: each is a profile, or a row the source could not use ([`SkippedRow`]),
//! which the run records with its reason and goes on. Nothing the source reads vanishes.

mod file;
mod postgres;
mod records;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use file::FileSource;
pub use postgres::PostgresSource;

/// One profile: its id and its values, in the order of [`ProfileSource::columns`].
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: String,
    pub values: Vec<Option<String>>,
}

/// One row of a segment as the source streams it.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Profile(Profile),
    /// A row of the segment the source could not turn into a profile: the run records it as
    /// a local rejection and goes on.
    Skipped(SkippedRow),
}

/// A row the source could not use, and where it is, for the operator to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRow {
    /// The profile id, when the row has a readable one.
    pub profile_id: Option<String>,
    pub reason: SkipReason,
    /// Where the row is, e.g. `profiles.csv line 7`.
    pub location: String,
    /// What is wrong with it, e.g. `4 fields where the header has 5`.
    pub detail: String,
}

/// Why a row was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// The row could not be read as the file's header says (ragged, not UTF-8, bad JSON, no
    /// profile id...).
    Unreadable,
    /// The row repeats a profile id read before; the first row with it is used.
    RepeatedId,
    /// A membership names a profile the profiles do not have.
    UnknownProfile,
}

impl SkipReason {
    /// The code runs record for it.
    pub fn code(self) -> &'static str {
        match self {
            SkipReason::Unreadable => "unreadable-row",
            SkipReason::RepeatedId => "repeated-id",
            SkipReason::UnknownProfile => "unknown-profile",
        }
    }
}

/// The rows of the chosen segments, with the number of members when known up front.
pub struct ProfileStream {
    /// How many distinct profiles the segments list, if the source knows before streaming.
    pub total: Option<u64>,
    /// The rows, each profile once. An `Err` ends the run: the source itself failed (a file
    /// vanished, a connection broke); a row that cannot be used is a [`Row::Skipped`].
    pub rows: Box<dyn Iterator<Item = Result<Row>> + Send>,
}

impl ProfileStream {
    /// A stream of profiles only, for sources that never skip a row.
    pub fn of_profiles(
        total: Option<u64>,
        profiles: impl Iterator<Item = Result<Profile>> + Send + 'static,
    ) -> ProfileStream {
        ProfileStream {
            total,
            rows: Box::new(profiles.map(|p| p.map(Row::Profile))),
        }
    }
}

/// A store of profiles and segment memberships.
pub trait ProfileSource: Send + Sync {
    /// Names of the fields every profile carries (the id column included).
    fn columns(&self) -> Result<Vec<String>>;
    /// The segments the source knows, with their member counts.
    fn segments(&self) -> Result<BTreeMap<String, u64>>;
    /// Streams the rows of the profiles that belong to any of `segments`, each profile once.
    fn profiles(&self, segments: &[String]) -> Result<ProfileStream>;
    /// What a look at a sample of the data finds wrong (bad rows, repeated ids...), in words,
    /// for the operator saving an export. Runs skip such rows and record them either way.
    fn sample_warnings(&self) -> Result<Vec<String>> {
        Ok(vec![])
    }
}

/// A 128-bit hash of a key (a profile id, a normalised email), so a run can remember what it
/// has seen without keeping the values: collisions are out of reach even for billions of keys.
pub(crate) fn hash128(key: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        h.finish() as u128
    };
    (half(1) << 64) | half(2)
}
