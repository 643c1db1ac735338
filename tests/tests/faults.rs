//! Vendor faults the broker rides through: throttling storms, intermittent server errors, slow
//! answers past the timeout, broken connections. Each run completes and the vendor's ledger
//! holds every contact exactly once.

use std::time::Duration;

use connector_host::{
    BrokerPolicy, Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource,
    NoProgress, RunOptions, RunReport, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{Expected, open_host, plugin_dir};
use connector_tests::sample;
use connector_tests::sim::Faults;
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;

const API_KEY: &str = "faults-test-key-44c1";
const SEED: u64 = 23;
/// Enough profiles for four import batches of the newsletter segment.
const PROFILES: u64 = 5_000;

struct World {
    sim: CampaignMonitorSim,
    list: String,
    host: ConnectorHost,
    _plugins: tempfile::TempDir,
    _data: tempfile::TempDir,
    source: FileSource,
}

async fn world() -> World {
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let list = sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let plugins = plugin_dir(&[("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR)]);
    let host = open_host(plugins.path()).await;
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), SEED, PROFILES).unwrap();
    let source = FileSource::new(&files.profiles, &files.memberships, "id").unwrap();
    World {
        sim,
        list,
        host,
        _plugins: plugins,
        _data: data,
        source,
    }
}

async fn run(w: &World, faults: Faults, broker: BrokerPolicy) -> RunReport {
    w.sim.set_faults(faults);
    let connection = Connection {
        connector: "campaign-monitor".into(),
        base_url: Some(w.sim.base_url()),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(API_KEY.into())),
    };
    let export = Export {
        settings: vec![("list-id".into(), w.list.clone())],
        mapping: FieldMapping::parse(&[
            "email=email",
            "first-name=first_name",
            "last-name=last_name",
        ])
        .unwrap(),
        segments: vec!["newsletter".into()],
        leave_action: None,
    };
    let options = RunOptions {
        broker,
        ..RunOptions::default()
    };
    let report = w
        .host
        .run_export(&connection, &export, &w.source, &options, &NoProgress)
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());
    assert!(report.retries > 0, "no fault was met: {}", report.summary());
    report
}

/// The list holds exactly the segment's deliverable contacts; each import counted once unless
/// `resends_allowed` (a timed-out request the vendor still handled is sent again).
fn assert_every_contact_once(w: &World, report: &RunReport, resends_allowed: bool) {
    let expected = Expected::for_segment(SEED, PROFILES, "newsletter");
    let ledger = w.sim.subscribers(&w.list);
    assert_eq!(
        ledger.keys().collect::<Vec<_>>(),
        expected.delivered.keys().collect::<Vec<_>>(),
        "contacts lost or added"
    );
    assert_eq!(
        report.counts.created + report.counts.updated,
        expected.delivered.len() as u64
    );
    if !resends_allowed {
        let repeated: Vec<_> = ledger
            .values()
            .filter(|s| s.imports != 1)
            .map(|s| (&s.email, s.imports))
            .collect();
        assert!(repeated.is_empty(), "imported more than once: {repeated:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_is_waited_out() {
    let w = world().await;
    let report = run(
        &w,
        Faults {
            throttle_every: 2,
            retry_after_secs: 1,
            ..Faults::default()
        },
        BrokerPolicy::default(),
    )
    .await;
    // Throttled requests are answered before the simulator's handler, so they are not in its log.
    let handled = w.sim.requests().len() as u64;
    assert!(
        report.requests > handled,
        "{} requests, {handled} handled",
        report.requests
    );
    assert_every_contact_once(&w, &report, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermittent_500_and_503_are_retried() {
    let w = world().await;
    let report = run(
        &w,
        Faults {
            error_every: 2,
            ..Faults::default()
        },
        BrokerPolicy::default(),
    )
    .await;
    assert_every_contact_once(&w, &report, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_is_retried() {
    let w = world().await;
    let report = run(
        &w,
        Faults {
            reset_every: 2,
            ..Faults::default()
        },
        BrokerPolicy::default(),
    )
    .await;
    assert_every_contact_once(&w, &report, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_the_timeout_is_retried() {
    let w = world().await;
    let faults = Faults {
        slow_every: 3,
        slow_delay: Duration::from_millis(1500),
        ..Faults::default()
    };
    let policy = BrokerPolicy {
        request_timeout: Duration::from_millis(500),
        ..BrokerPolicy::default()
    };
    let report = run(&w, faults, policy).await;
    // A timed-out import may still have been applied by the vendor; the resend is an upsert, so
    // the list holds each contact once all the same.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_every_contact_once(&w, &report, true);
}
