//! How long a run will take, as the operator is told it: a dry run's expected duration at the
//! vendor's limits, and the time left a run reports as it goes, both against the duration of
//! a real run paced by a window.

use std::time::Instant;

use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, HostOptions,
    RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{HeardEstimates, plugin_dir, test_limits};
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;

const API_KEY: &str = "eta-test-key-0b7d21";

/// Twelve batches of a thousand at four requests a second (a window of the operator's): the
/// dry run's expected duration and every estimate after the first batch are within 10% of
/// the time the run really took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_paced_by_a_window_ends_when_it_said_it_would() {
    let plugins = plugin_dir(&[("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR)]);
    let host = ConnectorHost::open(
        plugins.path(),
        HostOptions {
            limits: test_limits(),
            cache_dir: Some(artifacts::COMPILE_CACHE.into()),
            ..HostOptions::default()
        },
    )
    .await
    .unwrap();
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let list = sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let data = tempfile::tempdir().unwrap();
    let csv = sample::write_csv(data.path(), 7, 12_000).unwrap();
    let source = FileSource::new(&csv.profiles, &csv.memberships, "id").unwrap();
    let export = Export {
        settings: vec![("list-id".into(), list)],
        mapping: FieldMapping::parse(&["email=email"]).unwrap(),
        segments: vec!["everyone".into()],
        leave_action: None,
    };
    let connection = Connection {
        connector: "campaign-monitor".into(),
        base_url: Some(sim.base_url()),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(API_KEY.into())),
    };
    let mut options = RunOptions::default();
    options.broker.max_requests_per_second = Some(4.0);

    let plan = host
        .plan_export("campaign-monitor", &export, &source, &options)
        .await
        .unwrap();
    let expected = plan.expected.clone().expect("a window is set");
    assert!(
        plan.summary().contains("expected to take at least"),
        "{}",
        plan.summary()
    );

    let heard = HeardEstimates::default();
    let started = Instant::now();
    let report = host
        .run_export(&connection, &export, &source, &options, &heard)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(report.succeeded(), "{}", report.summary());
    assert_eq!(expected.requests, report.counts.batches);
    assert!(report.counts.batches >= 10, "{}", report.counts.batches);

    let dry_ratio = took.as_secs_f64() / expected.seconds.as_secs_f64();
    println!(
        "{} batches took {:.2} s; the dry run expected at least {:.2} s at {}: ratio {dry_ratio:.3}",
        report.counts.batches,
        took.as_secs_f64(),
        expected.seconds.as_secs_f64(),
        expected.limit
    );
    assert!(
        (0.9..=1.1).contains(&dry_ratio),
        "the dry run expected {expected:?}, the run took {took:?}"
    );

    let (estimates, worst) = heard.misses(started, took);
    assert!(estimates >= 5, "{estimates} estimates");
    println!(
        "{estimates} estimates while sending; the worst missed the end by {:.1}% of the run",
        worst * 100.0
    );
    assert!(
        worst <= 0.10,
        "estimates missed the end by up to {worst:.3}"
    );
    let said = heard.said.lock().unwrap();
    let ended = started + took;
    // The first estimate, before anything was handled, came from the window alone.
    let (at, _, left) = said.first().expect("an estimate at the start");
    let first = (at.duration_since(started) + *left).as_secs_f64() / took.as_secs_f64();
    assert!((0.85..=1.1).contains(&first), "first estimate {first:.3}");
    assert!(said.last().unwrap().0 <= ended);
}
