//! Contract 0.3 as a connector author meets it: components of every supported version load
//! (0.2's one rate becomes a window), a credential goes in a header of the connector's naming
//! unless that header would subvert the request, and the vendor's rate windows hold across
//! every run on one account.

use std::time::Duration;

use connector_host::broker::{ProcessSlots, SharedAccount};
use connector_host::contract::{AuthScheme, RateWindow};
use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, HostOptions,
    NoProgress, ProbeExport, RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{plugin_dir, test_limits};
use connector_tests::hostile::variant;
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::{CampaignMonitorSim, SubscriberState};
use serde_json::json;

const API_KEY: &str = "contract-test-key-5c1e77";

async fn host(dir: &std::path::Path) -> ConnectorHost {
    ConnectorHost::open(
        dir,
        HostOptions {
            limits: test_limits(),
            cache_dir: Some(artifacts::COMPILE_CACHE.into()),
            ..HostOptions::default()
        },
    )
    .await
    .unwrap()
}

fn connection(connector: &str, sim: &CampaignMonitorSim) -> Connection {
    Connection {
        connector: connector.into(),
        base_url: Some(sim.base_url()),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(API_KEY.into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_of_every_supported_contract_load_and_run() {
    let dir = plugin_dir(&[
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("v0-1.wasm", artifacts::CONTRACT_V0_1),
        ("v0-2.wasm", artifacts::CONTRACT_V0_2),
    ]);
    let host = host(dir.path()).await;
    let plugins = host.plugins();
    let version = |id: &str| plugins.require(id).unwrap().contract_version.to_string();
    assert_eq!(version("campaign-monitor"), "0.3.0");
    assert_eq!(version("legacy-campaign-monitor"), "0.1.1");
    assert_eq!(version("contract-0-2-campaign-monitor"), "0.2.0");

    // 0.2's one rate is a one-second window; its leave action takes whole batches; it cannot
    // erase. Campaign Monitor's own (0.3) leave actions declare their own batch size.
    let old = &plugins
        .require("contract-0-2-campaign-monitor")
        .unwrap()
        .info;
    assert_eq!(old.rate_windows.len(), 1);
    let RateWindow {
        requests,
        seconds,
        applies_to,
    } = &old.rate_windows[0];
    assert_eq!((*requests, *seconds, applies_to.is_none()), (10, 1, true));
    assert_eq!(old.rate_windows[0].describe(), "10 requests a second");
    assert_eq!(old.leave_actions[0].batch_size, 0);
    assert!(old.erasure.is_none());
    let cm = &plugins.require("campaign-monitor").unwrap().info;
    assert!(cm.leave_actions.iter().all(|a| a.batch_size == 100));

    // The 0.2 component sends, then applies its leave action, through the host's conversions.
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let list = sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let probe = host
        .probe(&connection("contract-0-2-campaign-monitor", &sim))
        .unwrap();
    let export = ProbeExport {
        settings: vec![("list-id".into(), list.clone())],
        fields: vec!["email".into()],
        leave_action: Some("unsubscribe".into()),
    };
    let contacts = vec![
        connector_host::contract::Contact {
            email: "ada@example.com".into(),
            first_name: None,
            last_name: None,
            attributes: vec![],
        },
        connector_host::contract::Contact {
            email: "grace@example.com".into(),
            first_name: None,
            last_name: None,
            attributes: vec![],
        },
    ];
    let sent = probe
        .export_batch(&export, &contacts)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.created, 2);
    let left = probe
        .apply_leave_action(&export, "unsubscribe", &contacts[..1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((left.updated, left.issues.len()), (1, 0));
    let held = sim.subscribers(&list);
    assert_eq!(held["ada@example.com"].state, SubscriberState::Unsubscribed);
    assert_eq!(held["grace@example.com"].state, SubscriberState::Active);
    // Asking a 0.2 component to erase is refused by the host, not sent.
    let erased = probe.erase_contacts(&export, &contacts[..1]).await;
    assert!(
        format!("{:#}", erased.unwrap_err()).contains("cannot erase"),
        "a 0.2 component was asked to erase"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_goes_in_the_header_a_connector_names_unless_it_would_subvert_the_request() {
    let files = tempfile::tempdir().unwrap();
    let refused = [
        ("host", json!(["Host", ""])),
        ("length", json!(["Content-Length", ""])),
        ("proxy", json!(["Proxy-Authorization", ""])),
        ("forwarded", json!(["X-Forwarded-For", ""])),
        ("name", json!(["api key", ""])),
        ("prefix", json!(["api-key", "a\r\nInjected: yes\r\n"])),
    ];
    for (name, header) in &refused {
        variant(
            files.path(),
            &format!("{name}.wasm"),
            json!({"id": format!("header-{name}"), "auth_header": header}),
        );
    }
    variant(
        files.path(),
        "brevo-like.wasm",
        json!({"id": "brevo-like", "auth_header": ["api-key", ""]}),
    );
    variant(
        files.path(),
        "klaviyo-like.wasm",
        json!({"id": "klaviyo-like", "auth_header": ["Authorization", "Klaviyo-API-Key "]}),
    );
    let host = host(files.path()).await;
    let plugins = host.plugins();
    for (name, _) in &refused {
        let skipped = plugins
            .skipped
            .iter()
            .find(|s| s.path.ends_with(format!("{name}.wasm")))
            .unwrap_or_else(|| panic!("`{name}` loaded"));
        assert!(
            skipped
                .reason
                .contains("declares a credential header that cannot be used"),
            "{name}: {}",
            skipped.reason
        );
    }
    let auth = |id: &str| plugins.require(id).unwrap().info.auth.clone();
    assert!(matches!(auth("brevo-like"), AuthScheme::Header(_)));
    assert_eq!(auth("brevo-like").describe(), "`api-key: <credential>`");
    assert_eq!(
        auth("klaviyo-like").describe(),
        "`Authorization: Klaviyo-API-Key <credential>`"
    );
}

/// Two runs of one account, each a connector flooding the vendor with 30 requests a batch: the
/// vendor's window (40 requests a second to `GET /lists`) holds over both together, because
/// every run on an account shares its windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendors_rate_window_holds_across_every_run_on_one_account() {
    let files = tempfile::tempdir().unwrap();
    variant(
        files.path(),
        "windowed.wasm",
        json!({"max_batch_size": 5, "rate_windows": [[40, 1, "GET", "/lists"]]}),
    );
    let host = host(files.path()).await;
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let list = sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let data = tempfile::tempdir().unwrap();
    let csv = sample::write_csv(data.path(), 11, 40).unwrap();
    let source = FileSource::new(&csv.profiles, &csv.memberships, "id").unwrap();
    let export = Export {
        settings: vec![("list-id".into(), list), ("mode".into(), "flood".into())],
        mapping: FieldMapping::parse(&["email=email"]).unwrap(),
        segments: vec!["newsletter".into()],
        leave_action: None,
    };
    let options = RunOptions {
        account: Some(SharedAccount {
            key: "hostile:acme".into(),
            slots: ProcessSlots::shared(),
        }),
        ..RunOptions::default()
    };
    let conn = connection("hostile", &sim);
    let started = sim.requests().len();
    let (a, b) = tokio::join!(
        host.run_export(&conn, &export, &source, &options, &NoProgress),
        host.run_export(&conn, &export, &source, &options, &NoProgress),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.succeeded() && b.succeeded(),
        "{} / {}",
        a.summary(),
        b.summary()
    );
    let counted: Vec<std::time::Instant> = sim
        .requests()
        .into_iter()
        .skip(started)
        .filter(|r| r.method == "GET" && r.path.contains("/lists/"))
        .map(|r| r.at)
        .collect();
    assert!(counted.len() > 100, "{}", counted.len());
    let most_in_a_second = counted
        .iter()
        .map(|t| {
            counted
                .iter()
                .filter(|u| **u >= *t && u.duration_since(*t) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        most_in_a_second <= 40,
        "{most_in_a_second} requests in one second"
    );
    // Paced, not throttled: no request was refused or retried.
    assert_eq!((a.retries, b.retries), (0, 0));
    let span = counted
        .last()
        .unwrap()
        .duration_since(counted[0])
        .as_secs_f64();
    let ceiling = (counted.len() - 1) as f64 / 40.0;
    println!(
        "{} requests in {span:.2} s; the window's ceiling is {ceiling:.2} s: ratio {:.3}",
        counted.len(),
        span / ceiling
    );
    assert!(span >= ceiling * 0.95, "{span} s for {}", counted.len());
}
