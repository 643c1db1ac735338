//! Campaign Monitor end to end: the connector component from a plugin directory exports a sample
//! segment to the simulator, and every user-visible promise is checked against its ledger.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, IssueKind, NoProgress,
    RequestRecord, RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{Expected, full_name, http, open_host, plugin_dir};
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::{CampaignMonitorSim, SubscriberState};

const API_KEY: &str = "cm-test-key-0123456789abcdef";
const SEED: u64 = 7;
const PROFILES: u64 = 8_000;

struct World {
    sim: CampaignMonitorSim,
    client: String,
    list: String,
    host: ConnectorHost,
    _plugins: tempfile::TempDir,
    data: tempfile::TempDir,
    files: sample::SampleFiles,
}

async fn world() -> World {
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let client = sim.add_client("Acme", API_KEY);
    let list = sim.add_list(&client, "Newsletter");
    let plugins = plugin_dir(&[("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR)]);
    let host = open_host(plugins.path()).await;
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), SEED, PROFILES).unwrap();
    World {
        sim,
        client,
        list,
        host,
        _plugins: plugins,
        data,
        files,
    }
}

fn connection(w: &World, key: &str) -> Connection {
    Connection {
        connector: "campaign-monitor".into(),
        base_url: Some(w.sim.base_url()),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(key.into())),
    }
}

fn export(list: &str, segment: &str) -> Export {
    Export {
        settings: vec![
            ("list-id".into(), list.into()),
            ("consent-to-track".into(), "yes".into()),
        ],
        mapping: FieldMapping::parse(&[
            "email=email",
            "first-name=first_name",
            "last-name=last_name",
        ])
        .unwrap(),
        segments: vec![segment.into()],
        leave_action: None,
    }
}

fn source(w: &World) -> FileSource {
    FileSource::new(&w.files.profiles, &w.files.memberships, "id").unwrap()
}

fn imports(sim: &CampaignMonitorSim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.ends_with("/import.json"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_exactly_the_segments_valid_deduplicated_contacts() {
    let w = world().await;
    let expected = Expected::for_segment(SEED, PROFILES, "vip");
    let bad_rows = (
        expected.invalid.len(),
        expected.refused_locally.len(),
        expected.duplicates,
        expected.missing_email,
    );
    assert!(
        bad_rows.0 > 0 && bad_rows.1 > 0 && bad_rows.2 > 0 && bad_rows.3 > 0,
        "the sample lacks bad rows (vendor-invalid, invalid, duplicate, missing): {bad_rows:?}"
    );

    // Before the run: one segment member is already subscribed under an old name, one has
    // unsubscribed, and one subscriber is not in the segment at all.
    let mut members = expected.delivered.values();
    let existing = members.next().unwrap().clone();
    let unsubscribed = members.next().unwrap().clone();
    let existing_email = existing.email.clone().unwrap();
    let unsubscribed_email = unsubscribed.email.clone().unwrap();
    w.sim.add_subscriber(
        &w.list,
        &existing_email,
        "Old Name",
        SubscriberState::Active,
    );
    w.sim.add_subscriber(
        &w.list,
        &unsubscribed_email,
        "Gone Away",
        SubscriberState::Unsubscribed,
    );
    w.sim.add_subscriber(
        &w.list,
        "outsider@example.com",
        "Out Sider",
        SubscriberState::Active,
    );

    let seen: Arc<Mutex<Vec<RequestRecord>>> = Arc::default();
    let recorder = seen.clone();
    let options = RunOptions {
        observer: Some(Arc::new(move |r: &RequestRecord| {
            recorder.lock().unwrap().push(r.clone())
        })),
        ..RunOptions::default()
    };
    let report = w
        .host
        .run_export(
            &connection(&w, API_KEY),
            &export(&w.list, "vip"),
            &source(&w),
            &options,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());

    // The list holds exactly the segment's valid, de-duplicated emails with the right names.
    let ledger = w.sim.subscribers(&w.list);
    let mut want: Vec<String> = expected.delivered.keys().cloned().collect();
    want.push("outsider@example.com".into());
    want.sort();
    let have: Vec<String> = ledger.keys().cloned().collect();
    assert_eq!(
        have, want,
        "list members differ from the segment's valid, unique emails"
    );
    for (email, profile) in &expected.delivered {
        let sub = &ledger[email];
        assert_eq!(sub.imports, 1, "{email} was sent {} times", sub.imports);
        if *email == unsubscribed_email.to_lowercase() {
            assert_eq!(
                sub.state,
                SubscriberState::Unsubscribed,
                "an unsubscribed contact was resubscribed"
            );
            assert_eq!(sub.name, "Gone Away");
        } else {
            assert_eq!(sub.state, SubscriberState::Active);
            assert_eq!(sub.name, full_name(profile), "name of {email}");
        }
    }
    assert_eq!(
        ledger["outsider@example.com"].imports, 0,
        "a subscriber outside the segment was touched"
    );
    assert_eq!(
        w.sim.consent(&w.client, &existing_email).as_deref(),
        Some("Yes")
    );

    // The report's counts and reasons match.
    let delivered = expected.delivered.len() as u64;
    assert_eq!(report.counts.profiles, expected.profiles);
    assert_eq!(report.counts.sent(), expected.sent());
    assert_eq!(report.counts.created, delivered - 2);
    assert_eq!(report.counts.updated, 1);
    assert_eq!(report.counts.suppressed, 1);
    assert_eq!(report.counts.rejected, expected.invalid.len() as u64);
    assert_eq!(
        report.counts.invalid,
        expected.missing_email + expected.refused_locally.len() as u64
    );
    assert_eq!(
        report
            .issues
            .iter()
            .filter(|i| i.code == "invalid-email")
            .count(),
        expected.refused_locally.len()
    );
    assert_eq!(report.counts.duplicates, expected.duplicates);
    let suppressed: Vec<_> = report
        .issues
        .iter()
        .filter(|i| i.kind == IssueKind::Suppressed)
        .collect();
    assert_eq!(
        suppressed[0].email.to_lowercase(),
        unsubscribed_email.to_lowercase()
    );
    assert_eq!(
        (suppressed[0].code.as_str(), suppressed[0].message.as_str()),
        ("206", "Subscriber is unsubscribed")
    );
    let mut invalid: Vec<&str> = report
        .issues
        .iter()
        .filter(|i| i.code == "1")
        .map(|i| i.email.as_str())
        .collect();
    invalid.sort();
    let mut want_invalid: Vec<&str> = expected.invalid.iter().map(String::as_str).collect();
    want_invalid.sort();
    assert_eq!(invalid, want_invalid);
    assert!(
        report
            .issues
            .iter()
            .filter(|i| i.code == "1")
            .all(|i| i.message == "Invalid Email Address" && i.kind == IssueKind::Rejected)
    );
    assert_eq!(
        report
            .issues
            .iter()
            .filter(|i| i.code == "missing-email")
            .count() as u64,
        expected.missing_email
    );
    assert_eq!(report.counts.batches, expected.sent().div_ceil(1000));
    assert_eq!(imports(&w.sim), report.counts.batches as usize);

    // The vendor saw the credential on every request; the component never set one.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{API_KEY}:x"))
    );
    let requests = w.sim.requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some(basic.as_str()))
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), requests.len());
    for record in seen.iter() {
        assert!(
            !record
                .connector_header_names
                .iter()
                .any(|h| h.eq_ignore_ascii_case("authorization")),
            "{record:?}"
        );
    }
    let _ = w.data.path();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_profiles_export_like_csv() {
    let w = world().await;
    let files = sample::write_jsonl(&w.data.path().join("jsonl"), SEED, PROFILES).unwrap();
    let source = FileSource::new(&files.profiles, &files.memberships, "id").unwrap();
    let report = w
        .host
        .run_export(
            &connection(&w, API_KEY),
            &export(&w.list, "vip"),
            &source,
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    let expected = Expected::for_segment(SEED, PROFILES, "vip");
    assert!(report.succeeded(), "{}", report.summary());
    assert_eq!(report.counts.created, expected.delivered.len() as u64);
    assert_eq!(w.sim.subscribers(&w.list).len(), expected.delivered.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_fails_before_anything_is_sent() {
    let w = world().await;
    let err = w
        .host
        .run_export(
            &connection(&w, "wrong-key"),
            &export(&w.list, "vip"),
            &source(&w),
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("Campaign Monitor refused the credential")
            && text.contains("Invalid API Key"),
        "{text}"
    );
    assert!(text.contains("nothing was sent"), "{text}");
    assert!(
        !text.contains("wrong-key"),
        "the error shows the credential: {text}"
    );
    assert_eq!(imports(&w.sim), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_list_fails_before_anything_is_sent() {
    let w = world().await;
    let unknown = "0123456789abcdef0123456789abcdef";
    let err = w
        .host
        .run_export(
            &connection(&w, API_KEY),
            &export(unknown, "vip"),
            &source(&w),
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("list `{unknown}` was not found"))
            && text.contains("Invalid ListID"),
        "{text}"
    );
    assert_eq!(imports(&w.sim), 0);
    assert!(w.sim.subscribers(&w.list).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_export_settings_are_refused_with_the_problem_named() {
    let w = world().await;
    let conn = connection(&w, API_KEY);
    let check = |export: Export| {
        let (host, conn, source) = (&w.host, &conn, source(&w));
        async move {
            format!(
                "{:#}",
                host.check_export(conn, &export, &source).await.unwrap_err()
            )
        }
    };
    let mut no_email = export(&w.list, "vip");
    no_email.mapping = FieldMapping::parse(&["first-name=first_name"]).unwrap();
    assert!(
        check(no_email)
            .await
            .contains("does not map the required `email` field")
    );
    let mut bad_column = export(&w.list, "vip");
    bad_column.mapping = FieldMapping::parse(&["email=email", "last-name=surname"]).unwrap();
    let text = check(bad_column).await;
    assert!(
        text.contains(
            "maps `last-name` to profile field `surname`, which the profiles do not have"
        ),
        "{text}"
    );
    assert!(
        check(export(&w.list, "gold"))
            .await
            .contains("segment `gold` does not exist")
    );
    let mut no_list = export(&w.list, "vip");
    no_list.settings.clear();
    assert!(
        check(no_list)
            .await
            .contains("lacks the required setting `list-id`")
    );
    let mut bad_list = export(&w.list, "vip");
    bad_list.settings = vec![("list-id".into(), "not-a-list".into())];
    assert!(
        check(bad_list)
            .await
            .contains("is not a Campaign Monitor list ID")
    );
    assert_eq!(imports(&w.sim), 0);
    // A connection pointing outside the connector's hosts (and not at loopback) is refused.
    let mut elsewhere = conn.clone();
    elsewhere.base_url = Some("https://attacker.example.net/api/v3.3".into());
    let err = w
        .host
        .check_export(&elsewhere, &export(&w.list, "vip"), &source(&w))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains(
            "base URL `https://attacker.example.net/api/v3.3` cannot be used: it is outside the hosts the connector may reach (api.createsend.com)"
        ),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_profile_file_is_named_and_nothing_is_sent() {
    let w = world().await;
    let missing = w.data.path().join("nope.csv");
    let source = FileSource::new(&missing, &w.files.memberships, "id").unwrap();
    let err = w
        .host
        .run_export(
            &connection(&w, API_KEY),
            &export(&w.list, "vip"),
            &source,
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!(
            "cannot read the profile file {}",
            missing.display()
        )),
        "{text}"
    );
    assert!(w.sim.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_directory_with_bad_files_still_loads_the_good_connector() {
    let dir = plugin_dir(&[("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR)]);
    std::fs::write(dir.path().join("README.txt"), "not a plugin").unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm garbage").unwrap();
    let host = open_host(dir.path()).await;
    let plugins = host.plugins();
    assert_eq!(plugins.loaded.len(), 1);
    assert_eq!(plugins.loaded[0].info.id, "campaign-monitor");
    assert_eq!(plugins.loaded[0].info.max_batch_size, 1000);
    let reasons: Vec<(String, String)> = plugins
        .skipped
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s.reason.clone(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "README.txt");
    assert_eq!(reasons[0].1, "not a .wasm file");
    assert_eq!(reasons[1].0, "broken.wasm");
    assert!(
        reasons[1]
            .1
            .starts_with("not a WebAssembly component this host can compile"),
        "{}",
        reasons[1].1
    );
}

/// Campaign Monitor's OAuth as the vendor's: an authorization asking for a scope it does not
/// have goes back to the app with `invalid_scope`, and a token can do only what its scopes
/// allow (a `ManageLists` token reads the list but cannot import).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_oauth_keeps_scopes() {
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let client = sim.add_client("Acme", "scoped-key");
    let list = sim.add_list(&client, "Main");
    let redirect = "http://127.0.0.1:9/callback";
    let (client_id, _) = sim.register_oauth_app(redirect);
    let (status, headers, _) = http(
        "GET",
        &format!(
            "{}?client_id={client_id}&redirect_uri={}&scope=ManageLists,EverythingElse&state=s1",
            sim.authorize_url(),
            redirect.replace(':', "%3A").replace('/', "%2F")
        ),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 303);
    let location = &headers.iter().find(|(k, _)| k == "location").unwrap().1;
    assert_eq!(
        location,
        &format!("{redirect}?error=invalid_scope&state=s1")
    );

    let (token, _) =
        sim.issue_scoped_tokens(&client, std::time::Duration::from_secs(600), "ManageLists");
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let base = sim.base_url();
    let (status, _, body) = http("GET", &format!("{base}/lists/{list}.json"), &auth, "").await;
    assert_eq!(status, 200, "{body}");
    let import = r#"{"Subscribers": [{"EmailAddress": "ada@example.com", "Name": "Ada"}], "Resubscribe": false}"#;
    let (status, _, body) = http(
        "POST",
        &format!("{base}/subscribers/{list}/import.json"),
        &auth,
        import,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("ImportSubscribers"), "{body}");
    assert!(sim.subscribers(&list).is_empty());
}

/// Campaign Monitor throttles one subscriber added again and again (5 a minute here; CM
/// publishes no figure), with its own words and no rate headers; another subscriber is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_throttles_a_subscriber_added_too_often() {
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let client = sim.add_client("Acme", "adds-key");
    let list = sim.add_list(&client, "Main");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("adds-key:x")
    );
    let auth = [("authorization", basic.as_str())];
    let url = format!("{}/subscribers/{list}.json", sim.base_url());
    let add = |email: &str| {
        format!(
            r#"{{"EmailAddress": "{email}", "Name": "Ada", "Resubscribe": false, "ConsentToTrack": "Unchanged"}}"#
        )
    };
    for _ in 0..5 {
        let (status, _, body) = http("POST", &url, &auth, &add("ada@example.com")).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, headers, body) = http("POST", &url, &auth, &add("Ada@Example.com")).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("added too many times too quickly"), "{body}");
    assert!(!headers.iter().any(|(k, _)| k.starts_with("x-ratelimit")));
    let (status, _, body) = http("POST", &url, &auth, &add("grace@example.com")).await;
    assert_eq!(status, 201, "{body}");
}
