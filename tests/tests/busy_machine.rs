//! A machine kept busy by other processes does not make the host skip a legitimate connector:
//! compiling is limited by the CPU time of its own threads, not by wall time. Every core spins
//! in other processes (twice over) while the shipped connectors and the JavaScript one compile
//! from scratch with the default limits.
//!
//! One test in its own binary, so the load it makes slows no other test.

use std::process::{Child, Command};
use std::time::Instant;

use connector_host::{ConnectorHost, HostOptions};
use connector_tests::artifacts;
use connector_tests::harness::plugin_dir;

/// Processes that spin until dropped.
struct Spinners(Vec<Child>);

impl Spinners {
    fn start(count: usize) -> Spinners {
        Spinners(
            (0..count)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a busy process")
                })
                .collect(),
        )
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_connectors_load_with_default_limits_on_a_busy_machine() {
    let plugins = plugin_dir(&[
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("mailchimp.wasm", artifacts::MAILCHIMP),
        ("mailerlite.wasm", artifacts::MAILERLITE),
    ]);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _spinners = Spinners::start(2 * cores);
    let started = Instant::now();
    // No cache: every component compiles now, under the default limits.
    let host = ConnectorHost::open(plugins.path(), HostOptions::default())
        .await
        .unwrap();
    let took = started.elapsed();
    let plugins = host.plugins();
    let skipped: Vec<String> = plugins.skipped.iter().map(|s| s.describe()).collect();
    assert!(skipped.is_empty(), "skipped on a busy machine: {skipped:?}");
    let mut ids: Vec<&str> = plugins.loaded.iter().map(|p| p.info.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["campaign-monitor", "mailchimp", "mailerlite"]);
    eprintln!(
        "three connectors compiled in {:.1} s of wall time with {} processes spinning on {cores} cores",
        took.as_secs_f64(),
        2 * cores
    );
}
