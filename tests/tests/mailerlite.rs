//! MailerLite end to end: the JavaScript connector (guest/mailerlite, a ComponentizeJS
//! component) from a plugin directory exports a sample segment to the kit's MailerLite
//! simulator, through the same host, broker and checks as the Rust connectors.

use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, NoProgress,
    RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{Expected, http, open_host, plugin_dir};
use connector_tests::sample;
use connector_tests::sim::Listen;
use connector_tests::sim::mailerlite::{MailerLiteSim, RateLimits};

const TOKEN: &str = "ml-test-token-0123456789";
const SEED: u64 = 11;
const PROFILES: u64 = 6_000;

struct World {
    sim: MailerLiteSim,
    group: String,
    host: ConnectorHost,
    _plugins: tempfile::TempDir,
    _data: tempfile::TempDir,
    files: sample::SampleFiles,
}

async fn world() -> World {
    let sim = MailerLiteSim::start_with(Listen::plain(0), TOKEN, RateLimits::NONE)
        .await
        .unwrap();
    let group = sim.add_group("VIP");
    let plugins = plugin_dir(&[("mailerlite.wasm", artifacts::MAILERLITE)]);
    let host = open_host(plugins.path()).await;
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), SEED, PROFILES).unwrap();
    World {
        sim,
        group,
        host,
        _plugins: plugins,
        _data: data,
        files,
    }
}

fn connection(w: &World, token: &str) -> Connection {
    Connection {
        connector: "mailerlite".into(),
        base_url: Some(w.sim.base_url()),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(token.into())),
    }
}

/// Runs against the simulator without MailerLite's real windows (5 imports a minute would make
/// this test take minutes; `contract.rs` proves windows are kept), the simulator without its
/// limits.
fn unpaced() -> RunOptions {
    let mut options = RunOptions::default();
    options.broker.max_requests_per_second = Some(1_000.0);
    options
}

fn export(group: &str) -> Export {
    Export {
        settings: vec![("group-id".into(), group.into())],
        mapping: FieldMapping::parse(&[
            "email=email",
            "first-name=first_name",
            "last-name=last_name",
        ])
        .unwrap(),
        segments: vec!["vip".into()],
        leave_action: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_connector_exports_the_segment_and_never_resubscribes() {
    let w = world().await;
    let expected = Expected::for_segment(SEED, PROFILES, "vip");
    assert!(!expected.invalid.is_empty() && expected.duplicates > 0);
    let mut members = expected.delivered.values();
    let existing = members.next().unwrap().email.clone().unwrap();
    let unsubscribed = members.next().unwrap().email.clone().unwrap();
    w.sim.add_subscriber(&existing, "active", &[]);
    w.sim.add_subscriber(&unsubscribed, "unsubscribed", &[]);
    w.sim.add_subscriber("outsider@example.com", "active", &[]);
    let source = FileSource::new(&w.files.profiles, &w.files.memberships, "id").unwrap();

    let report = w
        .host
        .run_export(
            &connection(&w, TOKEN),
            &export(&w.group),
            &source,
            &unpaced(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());

    // The account holds the segment's valid, de-duplicated emails, each once, in the group,
    // with its names; the unsubscribed one is still unsubscribed; the outsider untouched.
    let ledger = w.sim.subscribers();
    for (email, profile) in &expected.delivered {
        let s = &ledger[email];
        assert_eq!(s.writes, 1, "{email} written {} times", s.writes);
        assert!(s.groups.contains(&w.group), "{email} not in the group");
        if *email == unsubscribed.to_lowercase() {
            assert_eq!(
                s.status, "unsubscribed",
                "an unsubscribed contact was resubscribed"
            );
        } else {
            assert_eq!(s.status, "active");
            assert_eq!(s.fields.get("name"), profile.first_name.as_ref(), "{email}");
            assert_eq!(
                s.fields.get("last_name"),
                Some(&profile.last_name),
                "{email}"
            );
        }
    }
    assert_eq!(ledger.len(), expected.delivered.len() + 1);
    assert_eq!(ledger["outsider@example.com"].writes, 0);
    for invalid in &expected.invalid {
        assert!(!ledger.contains_key(&invalid.to_lowercase()), "{invalid}");
    }

    // The report counts what the vendor said.
    let delivered = expected.delivered.len() as u64;
    assert_eq!(report.counts.sent(), expected.sent());
    assert_eq!(report.counts.created, delivered - 2);
    assert_eq!(report.counts.updated, 1);
    assert_eq!(report.counts.suppressed, 1);
    assert_eq!(report.counts.rejected, expected.invalid.len() as u64);

    // Every request went through the broker with the token as Bearer, in batches of 50.
    let requests = w.sim.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")))
    );
    let batches = requests.iter().filter(|r| r.path == "/api/batch").count() as u64;
    assert_eq!(batches, expected.sent().div_ceil(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_an_unknown_group_fails_before_anything_is_sent() {
    let w = world().await;
    let source = FileSource::new(&w.files.profiles, &w.files.memberships, "id").unwrap();
    let refused = w
        .host
        .run_export(
            &connection(&w, "wrong-token"),
            &export(&w.group),
            &source,
            &unpaced(),
            &NoProgress,
        )
        .await;
    let words = match refused {
        Ok(report) => format!("{:?}", report.status),
        Err(e) => format!("{e:#}"),
    };
    assert!(words.contains("refused the credential"), "{words}");
    let missing = w
        .host
        .run_export(
            &connection(&w, TOKEN),
            &export("999"),
            &source,
            &unpaced(),
            &NoProgress,
        )
        .await;
    let words = match missing {
        Ok(report) => format!("{:?}", report.status),
        Err(e) => format!("{e:#}"),
    };
    assert!(words.contains("group `999` was not found"), "{words}");
    assert!(w.sim.subscribers().is_empty());
    assert!(!w.sim.requests().iter().any(|r| r.path == "/api/batch"));
}

/// What the simulator answers as MailerLite does, asked directly: its limits (here 6 requests
/// and 2 imports a 2-second window) with their 429s and headers, the status filter and cursor
/// paging of a group's members, a `+` in an address in a path, addresses lower-cased, and an
/// unknown route told from a missing record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_answers_as_mailerlite_does() {
    let limits = RateLimits {
        requests: 6,
        imports: 2,
        window: std::time::Duration::from_secs(2),
    };
    let sim = MailerLiteSim::start_with(Listen::plain(0), TOKEN, limits)
        .await
        .unwrap();
    let base = sim.base_url();
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let header = |h: &[(String, String)], name: &str| {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };

    // 120 a minute, scaled: each answer says what is left; past it, a 429 with Retry-After.
    for left in (0..6).rev() {
        let (status, h, _) = http("GET", &format!("{base}/groups"), &headers, "").await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-ratelimit-limit").as_deref(), Some("6"));
        assert_eq!(header(&h, "x-ratelimit-remaining"), Some(left.to_string()));
    }
    let (status, h, body) = http("GET", &format!("{base}/groups"), &headers, "").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("Too Many Attempts."), "{body}");
    assert_eq!(header(&h, "x-ratelimit-remaining").as_deref(), Some("0"));
    let wait: u64 = header(&h, "retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "retry after {wait}");
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;

    // Imports: a batch of only upserts is one; past the limit, its own 429. A batch with
    // anything else in it is not an import.
    let group = sim.add_group("Paged");
    let upserts = |emails: &[&str]| {
        let requests: Vec<_> = emails
            .iter()
            .map(|e| serde_json::json!({"method": "POST", "path": "api/subscribers", "body": {"email": e, "groups": [group]}}))
            .collect();
        serde_json::json!({ "requests": requests }).to_string()
    };
    let batch = format!("{base}/batch");
    for emails in [
        &["A1@Example.com", "a2@example.com"][..],
        &["a3@example.com"],
    ] {
        let (status, _, body) = http("POST", &batch, &headers, &upserts(emails)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, h, body) = http("POST", &batch, &headers, &upserts(&["a4@example.com"])).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate limited on import creation"), "{body}");
    assert!(header(&h, "retry-after").is_some());
    let mixed = serde_json::json!({"requests": [
        {"method": "POST", "path": "api/subscribers", "body": {"email": "ada+news@example.com", "groups": [group]}},
        {"method": "GET", "path": "api/groups"},
    ]})
    .to_string();
    let (status, _, body) = http("POST", &batch, &headers, &mixed).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // Addresses are kept lower-cased; a `+` in a path is a plus, not a space.
    let held = sim.subscribers();
    assert_eq!(held["a1@example.com"].email, "a1@example.com");
    let (status, _, body) = http(
        "GET",
        &format!("{base}/subscribers/ada+news@example.com"),
        &headers,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ada+news@example.com\""), "{body}");

    // A group's members by status, a page at a time.
    sim.add_subscriber("gone@example.com", "unsubscribed", &[&group]);
    let mut seen = vec![];
    let mut url = format!("{base}/groups/{group}/subscribers?filter%5Bstatus%5D=active&limit=2");
    loop {
        let (status, _, body) = http("GET", &url, &headers, "").await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        for m in page["data"].as_array().unwrap() {
            assert_eq!(m["status"], "active");
            seen.push(m["email"].as_str().unwrap().to_string());
        }
        assert_eq!(page["meta"]["per_page"], 2);
        match page["meta"]["next_cursor"].as_str() {
            Some(cursor) => {
                url = format!(
                    "{base}/groups/{group}/subscribers?filter%5Bstatus%5D=active&limit=2&cursor={cursor}"
                )
            }
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "a1@example.com",
            "a2@example.com",
            "a3@example.com",
            "ada+news@example.com"
        ]
    );

    // An unknown route is not a missing record.
    let (status, _, body) = http("GET", &format!("{base}/no-such-thing"), &headers, "").await;
    assert_eq!(status, 404);
    assert!(body.contains("could not be found"), "{body}");
    let (status, _, body) = http(
        "GET",
        &format!("{base}/subscribers/nobody@example.com"),
        &headers,
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.contains("Resource not found."), "{body}");
}
