//! MailerLite end to end: the JavaScript connector (guest/mailerlite, a ComponentizeJS
//! component) from a plugin directory exports a sample segment to the kit's MailerLite
//! simulator, through the same host, broker and checks as the Rust connectors.

use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, NoProgress,
    RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{Expected, open_host, plugin_dir};
use connector_tests::sample;
use connector_tests::sim::Listen;
use connector_tests::sim::mailerlite::MailerLiteSim;

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
    let sim = MailerLiteSim::start_on(Listen::plain(0), TOKEN)
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
/// this test take minutes; `contract.rs` proves windows are kept).
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
