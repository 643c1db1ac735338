//! Shared set-up for host-driven tests: plugin directories holding chosen guest artifacts, a
//! host loaded from them, and the expected outcome of exporting a sample segment.

use std::collections::BTreeMap;
use std::path::Path;

use connector_host::{ConnectorHost, HostOptions};
use tempfile::TempDir;

use crate::artifacts;
use crate::sample::{self, SampleProfile};
use crate::sim::is_valid_email;

/// A temporary plugin directory holding `files`, each given as (file name, source path).
pub fn plugin_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, source) in files {
        std::fs::copy(source, dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {source}: {e}"));
    }
    dir
}

/// A host loaded from `dir`, sharing the compile cache with the other tests.
pub async fn open_host(dir: &Path) -> ConnectorHost {
    let options = HostOptions {
        cache_dir: Some(artifacts::COMPILE_CACHE.into()),
        ..HostOptions::default()
    };
    ConnectorHost::open(dir, options).await.expect("open host")
}

/// What exporting `segment` of a sample must produce, computed from the generator alone.
#[derive(Debug, Default)]
pub struct Expected {
    /// Segment members.
    pub profiles: u64,
    /// Valid, de-duplicated emails (lowercased) with the name the vendor should hold.
    pub delivered: BTreeMap<String, SampleProfile>,
    /// Emails the vendor must refuse as invalid (first occurrence of each).
    pub invalid: Vec<String>,
    /// Members without an email.
    pub missing_email: u64,
    /// Members whose email (ignoring case) an earlier member already had.
    pub duplicates: u64,
}

impl Expected {
    pub fn for_segment(seed: u64, count: u64, segment: &str) -> Expected {
        let mut expected = Expected::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..count {
            let p = sample::profile(seed, i);
            if !p.segments.contains(&segment) {
                continue;
            }
            expected.profiles += 1;
            let Some(email) = p.email.clone() else {
                expected.missing_email += 1;
                continue;
            };
            if !seen.insert(email.to_lowercase()) {
                expected.duplicates += 1;
            } else if is_valid_email(&email) {
                expected.delivered.insert(email.to_lowercase(), p);
            } else {
                expected.invalid.push(email);
            }
        }
        expected
    }

    /// Contacts handed to the connector.
    pub fn sent(&self) -> u64 {
        (self.delivered.len() + self.invalid.len()) as u64
    }
}

/// The subscriber name Campaign Monitor should hold for a profile (first and last joined).
pub fn full_name(p: &SampleProfile) -> String {
    match &p.first_name {
        Some(first) => format!("{first} {}", p.last_name),
        None => p.last_name.clone(),
    }
}
