//! Shared set-up for host-driven tests: plugin directories holding chosen guest artifacts, a
//! host loaded from them, and the expected outcome of exporting a sample segment.

use std::collections::BTreeMap;
use std::path::Path;

use connector_host::{ConnectorHost, HostOptions, Limits, NetworkOptions};
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

/// Puts the shipped connectors (Campaign Monitor and Mailchimp) into the plugin directory `dir`.
pub fn install_connectors(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(
        artifacts::CAMPAIGN_MONITOR,
        dir.join("campaign-monitor.wasm"),
    )?;
    std::fs::copy(artifacts::MAILCHIMP, dir.join("mailchimp.wasm"))?;
    Ok(())
}

/// The default limits, with a `describe` deadline long enough for a debug build on a loaded
/// two-core machine (compiling is limited by its own CPU time, which load does not change).
pub fn test_limits() -> Limits {
    Limits {
        describe_timeout: std::time::Duration::from_secs(60),
        ..Limits::default()
    }
}

/// A host loaded from `dir`, sharing the compile cache with the other tests.
pub async fn open_host(dir: &Path) -> ConnectorHost {
    open_host_with(dir, NetworkOptions::default())
        .await
        .expect("open host")
}

/// [`open_host`] reaching vendors as `network` says.
pub async fn open_host_with(dir: &Path, network: NetworkOptions) -> anyhow::Result<ConnectorHost> {
    let options = HostOptions {
        cache_dir: Some(artifacts::COMPILE_CACHE.into()),
        limits: test_limits(),
        network,
    };
    ConnectorHost::open(dir, options).await
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
    /// Emails the host refuses itself, as no vendor takes them (each occurrence).
    pub refused_locally: Vec<String>,
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
            // An address no vendor takes is refused wherever it appears; a usable one is
            // sent once.
            if connector_host::email::address(&email).is_err() {
                expected.refused_locally.push(email);
            } else if !seen.insert(email.to_lowercase()) {
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

/// One HTTP/1.1 exchange with a simulator on loopback (`Connection: close`), for tests that
/// call vendor endpoints directly. Returns the status, lowercased headers and body.
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect to simulator");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A run's progress as a test hears it: every estimate of the time left, with when it came
/// and how many profiles were handled by then.
#[derive(Default)]
pub struct HeardEstimates {
    done: std::sync::Mutex<u64>,
    pub said: std::sync::Mutex<Vec<(std::time::Instant, u64, std::time::Duration)>>,
}

impl connector_host::Progress for HeardEstimates {
    fn advance(&self, profiles: u64) {
        *self.done.lock().unwrap() += profiles;
    }
    fn expect(&self, left: std::time::Duration) {
        let done = *self.done.lock().unwrap();
        self.said
            .lock()
            .unwrap()
            .push((std::time::Instant::now(), done, left));
    }
}

impl HeardEstimates {
    /// How far the estimates given once something was handled missed the real end of a run
    /// that began at `started` and took `took`, as shares of `took`: (how many, the worst).
    pub fn misses(&self, started: std::time::Instant, took: std::time::Duration) -> (usize, f64) {
        let said = self.said.lock().unwrap();
        let misses: Vec<f64> = said
            .iter()
            .filter(|(_, done, _)| *done > 0)
            .map(|(at, _, left)| {
                let predicted = at.duration_since(started) + *left;
                (predicted.as_secs_f64() - took.as_secs_f64()).abs() / took.as_secs_f64()
            })
            .collect();
        (misses.len(), misses.iter().cloned().fold(0.0, f64::max))
    }
}
