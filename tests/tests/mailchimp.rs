//! Mailchimp end to end: the connector component exports a sample segment to the simulator
//! through the same host path as Campaign Monitor; the ledger proves what happened.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use connector_host::{
    BrokerPolicy, Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource,
    IssueKind, NoProgress, RequestRecord, RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{Expected, http, open_host, plugin_dir};
use connector_tests::sample;
use connector_tests::sim::mailchimp::{Behaviour, MailchimpSim, Status};

const SEED: u64 = 11;
const PROFILES: u64 = 3_000;

struct World {
    sim: MailchimpSim,
    api_key: String,
    audience: String,
    host: ConnectorHost,
    _plugins: tempfile::TempDir,
    _data: tempfile::TempDir,
    files: sample::SampleFiles,
}

async fn world_with(behaviour: Behaviour, profiles: u64) -> World {
    let sim = MailchimpSim::start_with(0, behaviour).await.unwrap();
    let api_key = sim.add_account("Acme", "us21");
    let audience = sim.add_audience(&api_key, "Customers");
    let plugins = plugin_dir(&[("mailchimp.wasm", artifacts::MAILCHIMP)]);
    let host = open_host(plugins.path()).await;
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), SEED, profiles).unwrap();
    World {
        sim,
        api_key,
        audience,
        host,
        _plugins: plugins,
        _data: data,
        files,
    }
}

async fn world() -> World {
    world_with(Behaviour::default(), PROFILES).await
}

fn connection(w: &World, credential: Credential) -> Connection {
    Connection {
        connector: "mailchimp".into(),
        base_url: Some(w.sim.base_url("{dc}")),
        data_centre: None,
        credential,
    }
}

fn api_key(w: &World) -> Credential {
    Credential::ApiKey(Secret::new(w.api_key.clone()))
}

fn export(audience: &str, segment: &str) -> Export {
    Export {
        settings: vec![("audience-id".into(), audience.into())],
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

fn batch_calls(sim: &MailchimpSim, audience: &str) -> usize {
    let path = format!("/lists/{audience}");
    sim.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(&path))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_the_segment_updates_existing_members_and_never_resubscribes() {
    let w = world().await;
    let expected = Expected::for_segment(SEED, PROFILES, "vip");
    let mut members = expected
        .delivered
        .values()
        .filter(|p| p.first_name.is_some());
    let [existing, unsubscribed, cleaned, forgotten] =
        [(); 4].map(|_| members.next().unwrap().email.clone().unwrap());
    w.sim.add_member(
        &w.audience,
        &existing,
        Status::Subscribed,
        &[("FNAME", "Old"), ("LNAME", "Name")],
    );
    w.sim.add_member(
        &w.audience,
        &unsubscribed,
        Status::Unsubscribed,
        &[("FNAME", "Left")],
    );
    w.sim.add_member(
        &w.audience,
        &cleaned,
        Status::Cleaned,
        &[("FNAME", "Bounced")],
    );
    w.sim.forget(&w.audience, &forgotten);
    w.sim.add_member(
        &w.audience,
        "outsider@example.com",
        Status::Subscribed,
        &[("FNAME", "Out")],
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
            &connection(&w, api_key(&w)),
            &export(&w.audience, "vip"),
            &source(&w),
            &options,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());

    // The audience holds the segment's valid unique emails (less the deleted one) and the outsider.
    let ledger = w.sim.members(&w.audience);
    let mut want: Vec<String> = expected
        .delivered
        .keys()
        .filter(|e| **e != forgotten.to_lowercase())
        .cloned()
        .collect();
    want.push("outsider@example.com".into());
    want.sort();
    assert_eq!(ledger.keys().cloned().collect::<Vec<_>>(), want);
    for (email, profile) in &expected.delivered {
        let Some(member) = ledger.get(email) else {
            continue;
        };
        if [&unsubscribed, &cleaned]
            .iter()
            .any(|e| e.to_lowercase() == *email)
        {
            // Their details are kept current; their status never changes (checked below), and
            // they are never mailed an opt-in request.
            assert_eq!(member.writes, 1, "{email} written {} times", member.writes);
            assert_eq!(member.confirmation_emails, 0, "{email} was asked to opt in");
            continue;
        }
        assert_eq!(member.writes, 1, "{email} written {} times", member.writes);
        assert_eq!(member.status, Status::Subscribed);
        // A first name the profile lacks is sent empty: the vendor's old value is cleared.
        assert_eq!(
            member.merge_fields.get("FNAME").map(String::as_str),
            Some(profile.first_name.as_deref().unwrap_or("")),
            "FNAME of {email}"
        );
        assert_eq!(
            member.merge_fields.get("LNAME"),
            Some(&profile.last_name),
            "LNAME of {email}"
        );
    }
    assert_eq!(
        ledger[&unsubscribed.to_lowercase()].status,
        Status::Unsubscribed
    );
    assert_eq!(ledger[&cleaned.to_lowercase()].status, Status::Cleaned);
    assert_eq!(
        ledger["outsider@example.com"].writes, 0,
        "a member outside the segment was touched"
    );

    // Counts and reasons.
    let delivered = expected.delivered.len() as u64;
    assert_eq!(report.counts.profiles, expected.profiles);
    assert_eq!(report.counts.sent(), expected.sent());
    assert_eq!(
        (
            report.counts.created,
            report.counts.updated,
            report.counts.suppressed
        ),
        (delivered - 4, 1, 3)
    );
    assert_eq!(report.counts.rejected, expected.invalid.len() as u64);
    assert_eq!(
        report.counts.invalid,
        expected.missing_email + expected.refused_locally.len() as u64
    );
    assert_eq!(report.counts.duplicates, expected.duplicates);
    let reason = |email: &str| {
        let issue = report
            .issues
            .iter()
            .find(|i| i.email.eq_ignore_ascii_case(email))
            .unwrap();
        assert_eq!(issue.kind, IssueKind::Suppressed);
        issue.message.clone()
    };
    assert_eq!(
        reason(&unsubscribed),
        "The member is unsubscribed: kept out, never resubscribed"
    );
    assert_eq!(
        reason(&cleaned),
        "The member is cleaned: kept out, never resubscribed"
    );
    assert!(reason(&forgotten).contains("was permanently deleted and cannot be re-imported"));
    assert!(
        report
            .issues
            .iter()
            .filter(|i| i.code == "ERROR_GENERIC" && i.kind == IssueKind::Rejected)
            .all(|i| i.message == "Please provide a valid email address.")
    );
    assert_eq!(report.counts.batches, expected.sent().div_ceil(500));
    // One call creates each batch's new members; a second updates, without a status, the
    // batches' existing ones (the three members above, in one to three batches).
    let calls = batch_calls(&w.sim, &w.audience);
    let batches = report.counts.batches as usize;
    assert!(
        (batches + 1..=batches + 3).contains(&calls),
        "{calls} calls for {batches} batches"
    );

    // The vendor saw the API key as the Basic password on every request; the component never set it.
    let requests = w.sim.requests();
    for r in &requests {
        let (_, password) =
            connector_tests::sim::basic_auth(r.authorization.as_deref().unwrap()).unwrap();
        assert_eq!(password, w.api_key);
        assert!(r.path.starts_with("/us21/3.0/"), "{}", r.path);
    }
    assert!(seen.lock().unwrap().iter().all(|r| {
        !r.connector_header_names
            .iter()
            .any(|h| h == "authorization")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_against_another_data_centre_is_refused_before_sending() {
    let w = world().await;
    let mut conn = connection(&w, api_key(&w));
    conn.data_centre = Some("us5".into());
    let err = w
        .host
        .run_export(
            &conn,
            &export(&w.audience, "vip"),
            &source(&w),
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("Mailchimp refused the credential (API Key Invalid: Your API key may be invalid, or you've attempted to access the wrong datacenter.)"), "{text}");
    assert!(!text.contains(&w.api_key));
    assert_eq!(batch_calls(&w.sim, &w.audience), 0);

    let mut no_dc = connection(&w, Credential::access_token(Secret::new("token".into())));
    no_dc.base_url = None;
    let err = w
        .host
        .check_export(&no_dc, &export(&w.audience, "vip"), &source(&w))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("needs the account's data centre"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_audience_or_missing_name_field_is_refused_when_saved() {
    let w = world().await;
    let conn = connection(&w, api_key(&w));
    let err = w
        .host
        .check_export(&conn, &export("0000000000", "vip"), &source(&w))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains(
            "audience `0000000000` was not found in the Mailchimp account (Resource Not Found"
        ),
        "{err:#}"
    );
    let mut bad_name = export(&w.audience, "vip");
    bad_name.mapping = FieldMapping::parse(&["email=email", "first-name=given_name"]).unwrap();
    let err = w
        .host
        .check_export(&conn, &bad_name, &source(&w))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains(
            "maps `first-name` to profile field `given_name`, which the profiles do not have"
        ),
        "{err:#}"
    );
    assert!(w.sim.members(&w.audience).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_token_from_the_authorization_flow_exports_like_an_api_key() {
    let w = world().await;
    let redirect = "https://cdp.example/oauth/callback";
    let (client_id, secret) = w.sim.register_oauth_app(redirect);
    let code = w.sim.authorization_code(&client_id, redirect, &w.api_key);
    let form = |secret: &str| {
        format!(
            "grant_type=authorization_code&client_id={client_id}&client_secret={secret}&redirect_uri=https%3A%2F%2Fcdp.example%2Foauth%2Fcallback&code={code}"
        )
    };
    let (status, _, body) = http(
        "POST",
        &format!("{}/token", w.sim.oauth_url()),
        &[("content-type", "application/x-www-form-urlencoded")],
        &form("wrong"),
    )
    .await;
    assert_eq!(status, 400, "a wrong client secret: {body}");
    let (status, _, body) = http(
        "POST",
        &format!("{}/token", w.sim.oauth_url()),
        &[("content-type", "application/x-www-form-urlencoded")],
        &form(&secret),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, metadata) = http(
        "GET",
        &format!("{}/metadata", w.sim.oauth_url()),
        &[("authorization", &format!("OAuth {token}"))],
        "",
    )
    .await;
    let metadata: serde_json::Value = serde_json::from_str(&metadata).unwrap();
    let dc = metadata["dc"].as_str().unwrap().to_string();
    assert_eq!(dc, "us21");
    // The account's API is named by an absolute URL, as Mailchimp's metadata names it
    // (`https://us21.api.mailchimp.com`); the version's path follows it.
    let endpoint = metadata["api_endpoint"].as_str().unwrap();
    assert_eq!(format!("{endpoint}/3.0"), w.sim.base_url("us21"));

    let mut conn = connection(&w, Credential::access_token(Secret::new(token.clone())));
    conn.data_centre = Some(dc);
    let report = w
        .host
        .run_export(
            &conn,
            &export(&w.audience, "vip"),
            &source(&w),
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());
    assert_eq!(
        report.counts.created as usize,
        w.sim.members(&w.audience).len()
    );
    let api_calls: Vec<_> = w
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/3.0/"))
        .collect();
    assert!(!api_calls.is_empty());
    assert!(
        api_calls
            .iter()
            .all(|r| r.authorization.as_deref() == Some(format!("Bearer {token}").as_str()))
    );
}

/// 12,000 profiles give 16 batches of the newsletter segment, enough to have 14 in flight.
const MANY: u64 = 12_000;

/// Calls slow enough that 14 batches in flight surely overlap, even on a busy machine.
fn slow_vendor() -> Behaviour {
    Behaviour {
        latency: std::time::Duration::from_secs(1),
        ..Behaviour::default()
    }
}

fn assert_newsletter_delivered_once(w: &World) {
    let expected = Expected::for_segment(SEED, MANY, "newsletter");
    let ledger = w.sim.members(&w.audience);
    assert_eq!(ledger.len(), expected.delivered.len());
    assert!(
        ledger.values().all(|m| m.writes == 1),
        "a member was written more than once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_run_uses_the_vendors_ten_connections_and_no_more() {
    let w = world_with(slow_vendor(), MANY).await;
    // Default options: the run prepares twice the connector's declared limit of batches, and
    // the broker lets the declared limit through.
    let options = RunOptions::default();
    let report = w
        .host
        .run_export(
            &connection(&w, api_key(&w)),
            &export(&w.audience, "newsletter"),
            &source(&w),
            &options,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());
    assert_eq!(
        w.sim.peak_connections(),
        10,
        "the declared limit was not used to the full or was exceeded"
    );
    assert!(w.sim.requests().iter().all(|r| r.status != 429));
    assert_newsletter_delivered_once(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_simultaneous_connection_is_throttled_and_the_run_rides_through() {
    let w = world_with(slow_vendor(), MANY).await;
    // Lift the broker's cap to show the simulator's own limit and the retries that follow.
    let broker = BrokerPolicy {
        max_concurrent_requests: Some(100),
        ..BrokerPolicy::default()
    };
    let options = RunOptions {
        concurrency: Some(14),
        broker,
        ..RunOptions::default()
    };
    let report = w
        .host
        .run_export(
            &connection(&w, api_key(&w)),
            &export(&w.audience, "newsletter"),
            &source(&w),
            &options,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());
    let throttled = w.sim.requests().iter().filter(|r| r.status == 429).count();
    assert!(
        throttled > 0,
        "14 batches in flight never hit the 10-connection limit"
    );
    assert_eq!(report.retries as usize, throttled);
    assert!(w.sim.peak_connections() <= 10);
    assert_newsletter_delivered_once(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_enforces_the_batch_limit_with_a_problem_document() {
    let w = world().await;
    let members: Vec<serde_json::Value> = (0..501).map(|i| serde_json::json!({"email_address": format!("m{i}@example.com"), "status": "subscribed"})).collect();
    let body = serde_json::json!({"members": members, "update_existing": true}).to_string();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("any:{}", w.api_key))
    );
    let url = format!("{}/lists/{}", w.sim.base_url("us21"), w.audience);
    let (status, headers, body) = http(
        "POST",
        &url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 400);
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["title"], "Invalid Resource");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        header("content-type"),
        "application/problem+json; charset=utf-8"
    );
    assert_eq!(
        header("x-request-id"),
        problem["instance"].as_str().unwrap()
    );
    assert!(w.sim.members(&w.audience).is_empty());
    let (status, _, body) = http("GET", &format!("{}/ping", w.sim.base_url("us21")), &[], "").await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["title"].as_str()
        ),
        (401, Some("API Key Missing"))
    );
}

/// Pending mode (new members confirm by email first) never sends `pending` to a member who
/// exists: an unsubscribed or cleaned person is never mailed an opt-in request, a subscribed
/// one stays subscribed, and only new members are made pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_mode_asks_only_new_members_to_confirm() {
    let w = world_with(Behaviour::default(), 400).await;
    let expected = Expected::for_segment(SEED, 400, "vip");
    let mut emails = expected.delivered.keys();
    let (unsubscribed, cleaned, subscribed) = (
        emails.next().unwrap().clone(),
        emails.next().unwrap().clone(),
        emails.next().unwrap().clone(),
    );
    w.sim
        .add_member(&w.audience, &unsubscribed, Status::Unsubscribed, &[]);
    w.sim
        .add_member(&w.audience, &cleaned, Status::Cleaned, &[]);
    w.sim.add_member(
        &w.audience,
        &subscribed,
        Status::Subscribed,
        &[("FNAME", "Old")],
    );
    let mut pending = export(&w.audience, "vip");
    pending
        .settings
        .push(("new-status".into(), "pending".into()));
    let report = w
        .host
        .run_export(
            &connection(&w, api_key(&w)),
            &pending,
            &source(&w),
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{}", report.summary());
    let members = w.sim.members(&w.audience);
    for (email, profile) in &expected.delivered {
        let m = &members[email];
        let (status, mails) = if *email == unsubscribed {
            (Status::Unsubscribed, 0)
        } else if *email == cleaned {
            (Status::Cleaned, 0)
        } else if *email == subscribed {
            (Status::Subscribed, 0)
        } else {
            (Status::Pending, 1)
        };
        assert_eq!(
            (m.status, m.confirmation_emails),
            (status, mails),
            "{email}"
        );
        if *email == subscribed {
            assert_eq!(
                m.merge_fields.get("FNAME").map(String::as_str),
                profile.first_name.as_deref().or(Some("")),
                "fields of an existing member are updated"
            );
        }
    }
    let c = &report.counts;
    assert_eq!(c.suppressed, 2, "{}", report.summary());
    assert_eq!(c.updated, 1, "{}", report.summary());
    assert_eq!(c.created, expected.delivered.len() as u64 - 3);
}
