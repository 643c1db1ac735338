//! What a connector can make the host hold is bounded: a 512 MiB request body is refused as it
//! streams in (the cap is 32 MiB), and 48 concurrent 16 MiB answers are held to the run's
//! 64 MiB budget. Each hostile run fails with the host's own words while a healthy export
//! beside it completes, and the host's peak memory stays far below what the floods ask for.
//!
//! One test in its own binary (its own process), so the memory measured is this scenario's.

use std::time::Duration;

use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, HostOptions,
    NoProgress, RunOptions, RunReport, RunStatus, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{plugin_dir, test_limits};
use connector_tests::hostile::{BIG_ANSWER, FloodVendor, RssSampler, resident_bytes};
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;

const API_KEY: &str = "bounds-test-key-91c2";
const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_answer_floods_fail_their_own_run_and_memory_stays_bounded() {
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let list = sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let vendor = FloodVendor::start(Duration::ZERO).await;
    let plugins = plugin_dir(&[
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("hostile.wasm", artifacts::HOSTILE),
    ]);
    let options = HostOptions {
        cache_dir: Some(artifacts::COMPILE_CACHE.into()),
        limits: test_limits(),
        ..HostOptions::default()
    };
    let host = ConnectorHost::open(plugins.path(), options).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), 7, 1_200).unwrap();
    let source = FileSource::new(&files.profiles, &files.memberships, "id").unwrap();
    let connection = |connector: &str, base_url: String| Connection {
        connector: connector.into(),
        base_url: Some(base_url),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(API_KEY.into())),
    };
    let export = |mode: Option<&str>| {
        let mut settings = vec![("list-id".to_string(), list.clone())];
        settings.extend(mode.map(|m| ("mode".to_string(), m.to_string())));
        Export {
            settings,
            mapping: FieldMapping::parse(&["email=email"]).unwrap(),
            segments: vec!["newsletter".into()],
            leave_action: None,
        }
    };
    let healthy = connection("campaign-monitor", sim.base_url());
    let hostile = connection("hostile", vendor.base_url());
    let defaults = RunOptions::default();
    let run_beside = async |mode: &str| -> RunReport {
        let (hostile_export, healthy_export) = (export(Some(mode)), export(None));
        let (bad, good) = tokio::join!(
            host.run_export(&hostile, &hostile_export, &source, &defaults, &NoProgress),
            host.run_export(&healthy, &healthy_export, &source, &defaults, &NoProgress),
        );
        let good = good.unwrap();
        assert!(
            good.succeeded(),
            "the healthy run beside `{mode}` failed: {}",
            good.summary()
        );
        assert!(good.counts.created + good.counts.updated > 0);
        bad.unwrap()
    };

    // Warm up the allocator and the instance machinery, then measure from here.
    run_beside("flood").await;
    let baseline = resident_bytes();

    let before = vendor.requests();
    let sampler = RssSampler::start();
    let report = run_beside("huge-body").await;
    let body_peak = sampler.peak();
    drop(sampler);
    let error = failed(&report);
    let too_large = format!(
        "a request body over the 32 MiB limit (to {})",
        vendor
            .base_url()
            .trim_start_matches("http://")
            .trim_end_matches("/api")
    );
    assert!(
        report.refusals.contains(&too_large),
        "{:?}",
        report.refusals
    );
    assert!(
        error.contains(&format!("the host refused {}", report.refusals.join("; "))),
        "{error}"
    );
    assert_eq!(
        vendor.requests() - before,
        1,
        "only the validation reached the vendor"
    );

    let sampler = RssSampler::start();
    let report = run_beside("answer-flood").await;
    let answer_peak = sampler.peak();
    drop(sampler);
    let error = failed(&report);
    assert!(error.contains("the host refused"), "{error}");
    assert_eq!(
        report.refusals,
        ["bodies held at once over the run's 64 MiB budget for requests and answers"]
    );

    let (body_extra, answer_extra) = (
        body_peak.saturating_sub(baseline),
        answer_peak.saturating_sub(baseline),
    );
    eprintln!(
        "host memory: baseline {} MiB; peak during a 512 MiB request body {} MiB (+{} MiB); \
         during 48 concurrent {} MiB answers {} MiB (+{} MiB)",
        baseline / MIB,
        body_peak / MIB,
        body_extra / MIB,
        BIG_ANSWER as u64 / MIB,
        answer_peak / MIB,
        answer_extra / MIB,
    );
    // Unbounded, these floods took the host past 1.1 GiB and 0.9 GiB. Bounded, they cost the
    // caps (32 MiB a body, 64 MiB of bodies per run) plus the instances' own memory: measured
    // at +65 MiB and +97 to +121 MiB here.
    assert!(
        body_extra < 160 * MIB,
        "+{} MiB for the body flood",
        body_extra / MIB
    );
    assert!(
        answer_extra < 200 * MIB,
        "+{} MiB for the answer flood",
        answer_extra / MIB
    );
}

fn failed(report: &RunReport) -> &str {
    match &report.status {
        RunStatus::Failed(error) => error,
        other => panic!(
            "the hostile run did not fail ({other:?}): {}",
            report.summary()
        ),
    }
}
