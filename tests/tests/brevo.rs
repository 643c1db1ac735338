//! Brevo end to end: a fourth vendor, reached as it is through contract 0.3. The connector
//! (guest/brevo) sends its key in Brevo's `api-key` header and declares Brevo's limits per
//! endpoint class; the kit's simulator keeps those limits and Brevo's answers.

use std::time::{Duration, Instant};

use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, NoProgress,
    ProbeExport, RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{Expected, HeardEstimates, http, open_host, plugin_dir};
use connector_tests::sample;
use connector_tests::sim::Listen;
use connector_tests::sim::brevo::{BrevoSim, RateLimits};

const KEY: &str = "xkeysib-test-0123456789abcdef";
const SEED: u64 = 5;

struct World {
    sim: BrevoSim,
    list: u64,
    host: ConnectorHost,
    _plugins: tempfile::TempDir,
    _data: tempfile::TempDir,
    files: sample::SampleFiles,
}

async fn world(limits: RateLimits, profiles: u64) -> World {
    let sim = BrevoSim::start_with(Listen::plain(0), KEY, limits)
        .await
        .unwrap();
    let list = sim.add_list("Newsletter");
    let plugins = plugin_dir(&[("brevo.wasm", artifacts::BREVO)]);
    let host = open_host(plugins.path()).await;
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), SEED, profiles).unwrap();
    World {
        sim,
        list,
        host,
        _plugins: plugins,
        _data: data,
        files,
    }
}

fn connection(w: &World, key: &str) -> Connection {
    Connection {
        connector: "brevo".into(),
        base_url: Some(w.sim.base_url()),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(key.into())),
    }
}

fn export(list: &str) -> Export {
    Export {
        settings: vec![("list-id".into(), list.into())],
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

/// Runs without Brevo's windows against a simulator without them (the pacing test below keeps
/// them).
fn unpaced() -> RunOptions {
    let mut options = RunOptions::default();
    options.broker.max_requests_per_second = Some(1_000.0);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_exports_the_segment_and_never_unblacklists_anyone() {
    let w = world(RateLimits::NONE, 3_000).await;
    let expected = Expected::for_segment(SEED, 3_000, "vip");
    let mut members = expected.delivered.values();
    let existing = members.next().unwrap().email.clone().unwrap();
    let blacklisted = members.next().unwrap().email.clone().unwrap();
    w.sim.add_contact(&existing, false, &[]);
    w.sim.add_contact(&blacklisted, true, &[]);
    w.sim.add_contact("outsider@example.com", false, &[w.list]);
    let source = FileSource::new(&w.files.profiles, &w.files.memberships, "id").unwrap();

    let report = w
        .host
        .run_export(
            &connection(&w, KEY),
            &export(&w.list.to_string()),
            &source,
            &unpaced(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());

    // The list holds the segment's valid, de-duplicated emails, each written once, with their
    // names; the blacklisted one is still blacklisted; the outsider untouched.
    let held = w.sim.contacts();
    for (email, profile) in &expected.delivered {
        let c = &held[email];
        assert_eq!(c.writes, 1, "{email} written {} times", c.writes);
        assert!(c.list_ids.contains(&w.list), "{email} not on the list");
        assert_eq!(
            c.email_blacklisted,
            *email == blacklisted.to_lowercase(),
            "{email}"
        );
        assert_eq!(
            c.attributes.get("FIRSTNAME"),
            profile.first_name.as_ref(),
            "{email}"
        );
        assert_eq!(c.attributes.get("LASTNAME"), Some(&profile.last_name));
    }
    assert_eq!(held.len(), expected.delivered.len() + 1);
    assert_eq!(held["outsider@example.com"].writes, 0);

    let delivered = expected.delivered.len() as u64;
    assert_eq!(report.counts.sent(), expected.sent());
    assert_eq!(report.counts.created, delivered - 2);
    assert_eq!(report.counts.updated, 1);
    assert_eq!(report.counts.suppressed, 1);
    assert_eq!(report.counts.rejected, expected.invalid.len() as u64);

    // The key went in Brevo's own header, on every request, and nowhere else.
    let requests = w.sim.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some(KEY))
    );
    // One upsert a contact, and a read of each one that existed.
    let upserts = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v3/contacts")
        .count() as u64;
    assert_eq!(upserts, expected.sent());

    // Erasure: Brevo's own deletion, through the contract's erase call.
    let probe = w.host.probe(&connection(&w, KEY)).unwrap();
    let settings = ProbeExport {
        settings: vec![("list-id".into(), w.list.to_string())],
        fields: vec!["email".into()],
        leave_action: None,
    };
    let erased = probe
        .erase_contacts(
            &settings,
            &[
                connector_host::contract::Contact {
                    email: existing.clone(),
                    first_name: None,
                    last_name: None,
                    attributes: vec![],
                },
                connector_host::contract::Contact {
                    email: "never-held@example.com".into(),
                    first_name: None,
                    last_name: None,
                    attributes: vec![],
                },
            ],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(erased.updated, 2);
    assert!(!w.sim.contacts().contains_key(&existing.to_lowercase()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_an_unknown_list_fails_before_anything_is_sent() {
    let w = world(RateLimits::NONE, 200).await;
    let source = FileSource::new(&w.files.profiles, &w.files.memberships, "id").unwrap();
    let list = w.list.to_string();
    for (key, list, refused) in [
        (
            "xkeysib-wrong",
            list.as_str(),
            "Brevo refused the credential",
        ),
        (KEY, "424242", "list `424242` was not found"),
        (KEY, "newsletter", "not a Brevo list ID"),
    ] {
        let err = w
            .host
            .run_export(
                &connection(&w, key),
                &export(list),
                &source,
                &unpaced(),
                &NoProgress,
            )
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains(refused), "{err:#}");
    }
    assert!(w.sim.contacts().is_empty());
}

/// Brevo's own limits, in the simulator and declared by the connector: a run is paced below
/// 10 requests a second (no request refused), takes the time those limits allow, and says
/// all along when it will end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_keeps_brevos_limits_without_being_refused() {
    let w = world(RateLimits::REAL, 160).await;
    let source = FileSource::new(&w.files.profiles, &w.files.memberships, "id").unwrap();
    let heard = HeardEstimates::default();
    let started = Instant::now();
    let report = w
        .host
        .run_export(
            &connection(&w, KEY),
            &Export {
                segments: vec!["newsletter".into()],
                ..export(&w.list.to_string())
            },
            &source,
            &RunOptions::default(),
            &heard,
        )
        .await
        .unwrap();
    let took = started.elapsed();
    let (estimates, worst) = heard.misses(started, took);
    println!(
        "{estimates} estimates of the time left; the worst missed the end by {:.1}% of the run",
        worst * 100.0
    );
    assert!(
        estimates >= 1 && worst <= 0.10,
        "missed by up to {worst:.3}"
    );
    assert!(report.succeeded(), "{}", report.summary());
    let requests = w.sim.requests();
    assert!(
        requests.iter().all(|r| r.status != 429),
        "a request was refused"
    );
    assert_eq!(report.retries, 0);
    let at: Vec<Instant> = requests.iter().map(|r| r.at).collect();
    let most_in_a_second = at
        .iter()
        .map(|t| {
            at.iter()
                .filter(|u| **u >= *t && u.duration_since(*t) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        most_in_a_second <= 10,
        "{most_in_a_second} requests in a second"
    );
    let ceiling = (requests.len() - 1) as f64 / 10.0;
    println!(
        "{} requests in {:.2} s; Brevo's ceiling of 10 a second allows {ceiling:.2} s: ratio {:.3}",
        requests.len(),
        took.as_secs_f64(),
        took.as_secs_f64() / ceiling
    );
    assert!(requests.len() >= 20, "{}", requests.len());
}

/// What the simulator answers as Brevo does, asked directly: the key in `api-key`, its limits
/// (here 3 a second) with the `x-sib-ratelimit-*` headers and a 429 without `Retry-After`,
/// `201` then `204` for an upsert, a duplicate refused without `updateEnabled`, at most 150
/// removals a call, a `+` in an address in a path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_answers_as_brevo_does() {
    let limits = RateLimits {
        per_second: 3,
        per_hour: 100,
    };
    let sim = BrevoSim::start_with(Listen::plain(0), KEY, limits)
        .await
        .unwrap();
    let list = sim.add_list("Main");
    let base = sim.base_url();
    let key = [("api-key", KEY), ("content-type", "application/json")];
    let header = |h: &[(String, String)], name: &str| {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };

    let (status, _, body) = http("GET", &format!("{base}/contacts/lists"), &[], "").await;
    assert_eq!(status, 401);
    assert!(body.contains("Key not found"), "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let upsert = |update: bool| {
        format!(
            r#"{{"email": "ada+news@example.com", "attributes": {{"FIRSTNAME": "Ada"}}, "listIds": [{list}], "updateEnabled": {update}}}"#
        )
    };
    let (status, h, body) = http("POST", &format!("{base}/contacts"), &key, &upsert(true)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(header(&h, "x-sib-ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(
        header(&h, "x-sib-ratelimit-remaining").as_deref(),
        Some("2")
    );
    let (status, _, _) = http("POST", &format!("{base}/contacts"), &key, &upsert(true)).await;
    assert_eq!(status, 204);
    let (status, _, body) = http("POST", &format!("{base}/contacts"), &key, &upsert(false)).await;
    assert_eq!(status, 400);
    assert!(body.contains("duplicate_parameter"), "{body}");
    let (status, h, body) = http("GET", &format!("{base}/contacts/lists"), &key, "").await;
    assert_eq!(status, 429, "{body}");
    assert!(header(&h, "retry-after").is_none());
    assert_eq!(
        header(&h, "x-sib-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert!(header(&h, "x-sib-ratelimit-reset").is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (status, _, body) = http(
        "GET",
        &format!("{base}/contacts/ada+news@example.com"),
        &key,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""emailBlacklisted":false"#), "{body}");
    let many: Vec<String> = (0..151).map(|i| format!("\"p{i}@example.com\"")).collect();
    let (status, _, body) = http(
        "POST",
        &format!("{base}/contacts/lists/{list}/contacts/remove"),
        &key,
        &format!(r#"{{"emails": [{}]}}"#, many.join(",")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = http(
        "POST",
        &format!("{base}/contacts/lists/{list}/contacts/remove"),
        &key,
        r#"{"emails": ["ada+news@example.com", "nobody@example.com"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body.contains(r#""success":["ada+news@example.com"]"#)
            && body.contains(r#""failure":["nobody@example.com"]"#),
        "{body}"
    );
    assert!(sim.contacts()["ada+news@example.com"].list_ids.is_empty());
}
