//! The sandbox and broker hold against hostile connectors: each misbehaviour fails only its own
//! run with a clear error, while a healthy Campaign Monitor export in the same host completes.

use std::time::Duration;

use std::sync::Arc;

use connector_host::broker::DEFAULT_MAX_IN_FLIGHT;
use connector_host::{
    BrokerPolicy, Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource,
    HostOptions, Limits, NetworkOptions, NoProgress, RunOptions, RunReport, RunStatus, Secret,
    StaticResolver,
};
use connector_tests::artifacts;
use connector_tests::harness::{plugin_dir, test_limits};
use connector_tests::hostile::{FloodVendor, variant};
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;

const API_KEY: &str = "sandbox-test-key-8d1f2a";

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
    let plugins = plugin_dir(&[
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("hostile.wasm", artifacts::HOSTILE),
    ]);
    let limits = Limits {
        memory_bytes: 64 << 20,
        cpu_time: Some(Duration::from_secs(1)),
        call_timeout: Duration::from_secs(30),
        ..test_limits()
    };
    let host = ConnectorHost::open(
        plugins.path(),
        HostOptions {
            limits,
            cache_dir: Some(artifacts::COMPILE_CACHE.into()),
            ..HostOptions::default()
        },
    )
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), 5, 400).unwrap();
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

fn connection(w: &World, connector: &str) -> Connection {
    Connection {
        connector: connector.into(),
        base_url: Some(w.sim.base_url()),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(API_KEY.into())),
    }
}

fn export(w: &World, mode: Option<&str>) -> Export {
    let mut settings = vec![("list-id".to_string(), w.list.clone())];
    if let Some(mode) = mode {
        settings.push(("mode".into(), mode.into()));
    }
    Export {
        settings,
        mapping: FieldMapping::parse(&["email=email"]).unwrap(),
        segments: vec!["newsletter".into()],
        leave_action: None,
    }
}

/// Runs the hostile connector in `mode` and a healthy export side by side; returns the hostile
/// run's report after checking the healthy one delivered.
async fn hostile_beside_healthy(w: &World, mode: &str, options: RunOptions) -> RunReport {
    hostile_at(w, &w.sim.base_url(), mode, options).await
}

/// [`hostile_beside_healthy`], with the hostile connection's base URL at `base_url`.
async fn hostile_at(w: &World, base_url: &str, mode: &str, options: RunOptions) -> RunReport {
    let healthy_export = export(w, None);
    let hostile_export = export(w, Some(mode));
    let mut hostile_connection = connection(w, "hostile");
    hostile_connection.base_url = Some(base_url.to_string());
    let healthy_connection = connection(w, "campaign-monitor");
    let defaults = RunOptions::default();
    let (hostile, healthy) = tokio::join!(
        w.host.run_export(
            &hostile_connection,
            &hostile_export,
            &w.source,
            &options,
            &NoProgress
        ),
        w.host.run_export(
            &healthy_connection,
            &healthy_export,
            &w.source,
            &defaults,
            &NoProgress
        ),
    );
    let healthy = healthy.unwrap();
    assert!(
        healthy.succeeded(),
        "the healthy run next to `{mode}` failed: {}",
        healthy.summary()
    );
    assert!(healthy.counts.created + healthy.counts.updated > 0);
    let hostile = hostile.unwrap();
    eprintln!("hostile `{mode}`: {:?}", hostile.status);
    hostile
}

fn failure(report: &RunReport) -> &str {
    match &report.status {
        RunStatus::Failed(error) => error,
        other => panic!(
            "the hostile run did not fail ({other:?}): {}",
            report.summary()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_stopped_by_the_cpu_budget() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "endless-loop", RunOptions::default()).await;
    assert!(
        failure(&report).contains("the connector used more than its CPU budget of 1s for one call"),
        "{}",
        failure(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_the_memory_cap() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "memory-bomb", RunOptions::default()).await;
    assert!(
        failure(&report).contains("the connector exceeded its memory limit of 64 MiB"),
        "{}",
        failure(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_overflows_only_the_connectors_stack() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "stack-overflow", RunOptions::default()).await;
    assert!(
        failure(&report).contains("(stack overflow"),
        "{}",
        failure(&report)
    );
    assert!(
        !failure(&report).contains("wasm backtrace"),
        "{}",
        failure(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_the_run_and_quotes_the_panic_message() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "panic", RunOptions::default()).await;
    let error = failure(&report);
    assert!(
        error.contains("the connector crashed (panic or abort)"),
        "{error}"
    );
    assert!(
        error.contains("hostile connector gave up on purpose"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_forbidden_host_is_refused_and_reported() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "forbidden-host", RunOptions::default()).await;
    assert!(failure(&report).contains("request to https://exfiltrate.example.net/steal?data=contacts failed: refused by the host"), "{}", failure(&report));
    assert_eq!(
        report.refusals,
        ["a request to https://exfiltrate.example.net:443, outside the connection's allowed hosts"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_authorization_header_is_replaced_by_the_connections_credential() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "forged-auth", RunOptions::default()).await;
    assert!(report.succeeded(), "{}", report.summary());
    let requests = w.sim.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() != Some("Basic Zm9yZ2VkOng=")),
        "the forged credential reached the vendor"
    );
    assert!(requests.iter().all(|r| r.status != 401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_is_paced_not_failed() {
    let w = world().await;
    let rate = 20.0;
    let options = RunOptions {
        broker: BrokerPolicy {
            max_requests_per_second: Some(rate),
            ..BrokerPolicy::default()
        },
        ..RunOptions::default()
    };
    let started = w.sim.requests().len();
    let report = hostile_beside_healthy(&w, "flood", options).await;
    assert!(report.succeeded(), "{}", report.summary());
    // The flood's requests (30 a batch plus validation) went out no faster than the rate.
    let flood: Vec<_> = w
        .sim
        .requests()
        .into_iter()
        .skip(started)
        .filter(|r| r.path.starts_with("/api/v3.3/lists/"))
        .collect();
    assert!(
        flood.len() as u64 > report.counts.batches * 30,
        "{}",
        flood.len()
    );
    let span = flood
        .last()
        .unwrap()
        .at
        .duration_since(flood.first().unwrap().at)
        .as_secs_f64();
    assert!(
        span >= (report.requests - 1) as f64 / rate * 0.95,
        "{} requests in {span:.2} s at {rate}/s",
        report.requests
    );
    assert_eq!(report.retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_claiming_more_contacts_than_sent_is_a_contract_violation() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "overclaim", RunOptions::default()).await;
    assert!(
        failure(&report)
            .contains("connector `hostile` broke the contract: its report accounts for"),
        "{}",
        failure(&report)
    );
    assert_eq!(report.counts.created, 0, "a refused report was counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_return_value_is_refused() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "oversized", RunOptions::default()).await;
    assert!(
        failure(&report).contains("over the 4194304-byte limit on what a call may return"),
        "{}",
        failure(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_outside_the_contract_are_refused_at_load_with_the_reason() {
    let dir = plugin_dir(&[
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("file-reader.wasm", artifacts::FILE_READER),
        ("not-a-connector.wasm", artifacts::NOT_A_CONNECTOR),
        ("future.wasm", artifacts::CONTRACT_FUTURE),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let options = HostOptions {
        cache_dir: Some(cache.path().into()),
        ..HostOptions::default()
    };
    let host = ConnectorHost::open(dir.path(), options.clone())
        .await
        .unwrap();
    let plugins = host.plugins();
    assert_eq!(
        plugins
            .loaded
            .iter()
            .map(|p| p.info.id.as_str())
            .collect::<Vec<_>>(),
        ["campaign-monitor"]
    );
    let reason = |file: &str| {
        plugins
            .skipped
            .iter()
            .find(|s| s.path.ends_with(file))
            .map(|s| s.reason.clone())
            .unwrap()
    };
    let file_reader = reason("file-reader.wasm");
    assert!(
        file_reader.starts_with("imports `wasi:filesystem/"),
        "{file_reader}"
    );
    assert!(
        file_reader.contains("which connectors are not allowed"),
        "{file_reader}"
    );
    let command = reason("not-a-connector.wasm");
    assert!(
        command.starts_with(
            "does not export cdp:connector/export-destination (it exports: wasi:cli/run@"
        ),
        "{command}"
    );
    assert_eq!(
        reason("future.wasm"),
        "built for cdp:connector@0.4.0, which this host does not support; it supports cdp:connector@0.1.x, cdp:connector@0.2.x and cdp:connector@0.3.x"
    );

    // Every component that compiled is in the cache; a second start loads from it.
    let cached = || std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(cached(), 4);
    let again = ConnectorHost::open(dir.path(), options).await.unwrap();
    assert_eq!(again.plugins().loaded.len(), 1);
    assert_eq!(cached(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_loopback_ports_than_the_administrators_are_refused() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "other-loopback-port", RunOptions::default()).await;
    let port = w
        .sim
        .base_url()
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let error = failure(&report);
    assert!(
        error.contains(&format!(
            "the host refused a request to http://127.0.0.1:{}, outside the connection's allowed hosts",
            port + 1
        )),
        "{error}"
    );
    assert_eq!(report.counts.created, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_connector_never_finishes_times_out() {
    let w = world().await;
    let options = RunOptions {
        broker: BrokerPolicy {
            request_timeout: Duration::from_secs(1),
            ..BrokerPolicy::default()
        },
        ..RunOptions::default()
    };
    let report = hostile_beside_healthy(&w, "stalled-body", options).await;
    let error = failure(&report);
    assert!(
        error.contains(
            "the host refused a request body the connector did not finish sending within 1 s"
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_held_to_the_default_cap_on_requests_in_flight() {
    let w = world().await;
    let vendor = FloodVendor::start(Duration::from_millis(50)).await;
    let report = hostile_at(
        &w,
        &vendor.base_url(),
        "connection-flood",
        RunOptions::default(),
    )
    .await;
    assert!(report.succeeded(), "{}", report.summary());
    // 200 requests at once per batch, several batches in flight: never more than the cap.
    assert!(vendor.requests() >= 400, "{}", vendor.requests());
    let peak = vendor.peak();
    assert!((2..=DEFAULT_MAX_IN_FLIGHT).contains(&peak), "peak {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_hoarding_host_resources_is_stopped() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "resource-flood", RunOptions::default()).await;
    assert!(
        failure(&report).contains(
            "the connector held more than 1000 host resources (requests, headers, streams) at once"
        ),
        "{}",
        failure(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasons_from_a_connector_cannot_forge_or_hide_lines() {
    let w = world().await;
    let report = hostile_beside_healthy(&w, "forged-report", RunOptions::default()).await;
    assert!(report.succeeded(), "{}", report.summary());
    assert!(report.counts.rejected > 0);
    for issue in &report.issues {
        for text in [&issue.code, &issue.message] {
            assert!(!text.chars().any(char::is_control), "{text:?}");
            assert!(!text.contains('\u{202e}'), "{text:?}");
        }
    }
    let summary = report.summary();
    let starts = summary
        .lines()
        .filter(|l| l.starts_with("Export to"))
        .count();
    assert_eq!(starts, 1, "a forged summary line: {summary}");
    assert!(
        summary.contains(
            "\\x1b[2J\\x1b[H\\x1b[1;32mExport to campaign-monitor (newsletter): succeeded\\r\\n"
        ),
        "{summary}"
    );
    assert!(!summary.contains('\u{1b}') && !summary.contains('\r'));

    let report = hostile_beside_healthy(&w, "forged-error", RunOptions::default()).await;
    let error = failure(&report);
    assert!(!error.chars().any(char::is_control), "{error:?}");
    assert!(
        error.contains("more characters]"),
        "a 5,000-character message was not cut"
    );
    assert!(error.len() < 2_000, "{}", error.len());

    let report = hostile_beside_healthy(&w, "huge-reason", RunOptions::default()).await;
    let longest = report.issues.iter().map(|i| i.message.len()).max().unwrap();
    assert!(
        longest < 1_100,
        "a 3 MiB reason was kept whole ({longest} bytes)"
    );
    assert!(report.summary().len() < 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_name_resolving_to_a_private_address_is_refused_before_dialling() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    variant(
        dir.path(),
        "rebinding.wasm",
        serde_json::json!({
            "id": "rebinding",
            "hosts": ["api.rebinding-vendor.com"],
            "default_base_url": "https://api.rebinding-vendor.com/api",
        }),
    );
    for (address, words) in [
        ("127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("::ffff:127.0.0.1", "a loopback address"),
    ] {
        let resolver = StaticResolver {
            names: [(
                "api.rebinding-vendor.com".to_string(),
                vec![address.parse().unwrap()],
            )]
            .into(),
        };
        let host = ConnectorHost::open(
            dir.path(),
            HostOptions {
                cache_dir: Some(artifacts::COMPILE_CACHE.into()),
                limits: test_limits(),
                network: NetworkOptions {
                    resolver: Some(Arc::new(resolver)),
                    ..NetworkOptions::default()
                },
            },
        )
        .await
        .unwrap();
        let connection = Connection {
            connector: "rebinding".into(),
            base_url: None,
            data_centre: None,
            credential: Credential::ApiKey(Secret::new(API_KEY.into())),
        };
        let err = host
            .run_export(
                &connection,
                &export(&w, Some("flood")),
                &w.source,
                &RunOptions::default(),
                &NoProgress,
            )
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains(&format!(
                "the host refused a connection to api.rebinding-vendor.com resolves to {address}, {words}"
            )),
            "{err}"
        );
        assert!(err.ends_with("nothing was sent"), "{err}");
    }
}
