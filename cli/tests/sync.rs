//! Exports that sync, as an operator drives them from the command line: leave actions chosen
//! (irreversible ones confirmed, unknown or unsupported ones refused), dry runs that send and
//! record nothing, full runs asked for or caused by a new connector version, a connector built
//! for contract 0.1 still working, and a delta run killed with SIGKILL while applying its leave
//! action, finished exactly by the next run.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use connector_tests::artifacts;
use connector_tests::harness::Expected;
use connector_tests::hostile::variant;
use connector_tests::sim::campaign_monitor::{CampaignMonitorSim, SubscriberState};
use serde_json::json;
use support::*;

/// Rewrites the operator's sample: profiles `leave` picks lose their membership of
/// `newsletter`, and those `rename` picks get the first name `Renamed`.
fn evolve(op: &Operator, leave: impl Fn(&str) -> bool, rename: impl Fn(&str) -> bool) {
    let data = op.path("data");
    let rewrite = |file: &str, edit: &dyn Fn(&mut csv::StringRecord) -> bool| {
        let path = data.join(file);
        let mut reader = csv::Reader::from_path(&path).unwrap();
        let header = reader.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = reader
            .records()
            .map(Result::unwrap)
            .filter_map(|mut r| edit(&mut r).then_some(r))
            .collect();
        let mut writer = csv::Writer::from_path(&path).unwrap();
        writer.write_record(&header).unwrap();
        for row in rows {
            writer.write_record(&row).unwrap();
        }
        writer.flush().unwrap();
    };
    rewrite("memberships.csv", &|r| {
        !(r[1] == *"newsletter" && leave(&r[0]))
    });
    rewrite("profiles.csv", &|r| {
        if rename(&r[0]) {
            let mut fields: Vec<String> = r.iter().map(String::from).collect();
            fields[2] = "Renamed".into();
            *r = csv::StringRecord::from(fields);
        }
        true
    });
}

fn posts(sim: &CampaignMonitorSim, suffix: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(suffix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_run_killed_while_applying_its_leave_action_is_finished_exactly_by_the_next() {
    let (seed, count) = (81, 3_000);
    let op = Operator::new(seed, count);
    let (sim, _, list) = vendor(Duration::from_millis(40)).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export(
        "weekly",
        "acme",
        &list,
        &["--leave-action", "unsubscribe", "--confirm-irreversible"],
    );
    op.ok(&["export", "run", "weekly"]);
    let expected = Expected::for_segment(seed, count, "newsletter");

    // One in seven newsletter members leaves, one in five is renamed.
    let index = |id: &str| id.trim_start_matches('p').parse::<u64>().unwrap();
    let leaves = |id: &str| index(id).is_multiple_of(7);
    let renamed = |id: &str| index(id).is_multiple_of(5);
    evolve(&op, leaves, renamed);
    // Who is in the segment now: the first profile with an address wins, so an address whose
    // profile left stays if another profile still has it.
    let mut remaining: std::collections::BTreeMap<String, (Option<String>, String)> =
        std::collections::BTreeMap::new();
    for i in 0..count {
        let p = connector_tests::sample::profile(seed, i);
        let Some(email) = p
            .email
            .clone()
            .filter(|_| p.segments.contains(&"newsletter"))
        else {
            continue;
        };
        if leaves(&p.id) {
            continue;
        }
        let first = if renamed(&p.id) {
            Some("Renamed".to_string())
        } else {
            p.first_name.clone()
        };
        remaining
            .entry(email.to_lowercase())
            .or_insert((first, p.last_name.clone()));
    }
    let leavers: BTreeSet<String> = expected
        .delivered
        .keys()
        .filter(|email| !remaining.contains_key(*email))
        .cloned()
        .collect();
    assert!(leavers.len() > 100, "{}", leavers.len());

    // Killed once a hundred leavers were unsubscribed: the changed contacts were all sent and
    // recorded by then, the leave batch was not.
    let imports_before = posts(&sim, "/import.json");
    let requests_before = sim.requests().len();
    let mut child = op
        .command(&["export", "run", "weekly", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while posts(&sim, "/unsubscribe.json") < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "the leave action never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let imports_killed = posts(&sim, "/import.json");
    let unsubscribes_killed = posts(&sim, "/unsubscribe.json");
    let runs = op.ok(&["runs", "weekly"]);
    assert!(
        runs.lines()
            .nth(1)
            .unwrap()
            .contains("waiting for a worker"),
        "{runs}"
    );

    // A dry run sees the run that will be continued: the leavers it settled, those to do.
    let killed_run = runs
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let requests_killed = sim.requests().len();
    let plan = op.ok(&["export", "run", "weekly", "--dry-run"]);
    assert!(
        plan.contains(&format!("the next run continues run {killed_run}")),
        "{plan}"
    );
    let plan_json: serde_json::Value =
        serde_json::from_str(&op.ok(&["export", "run", "weekly", "--dry-run", "--json"])).unwrap();
    assert_eq!(
        plan_json["continues_run"],
        killed_run.parse::<u64>().unwrap()
    );
    let done_before = plan_json["leaving_done_earlier"].as_u64().unwrap();
    assert_eq!(
        done_before + plan_json["leaving_to_do"].as_u64().unwrap(),
        leavers.len() as u64,
        "{plan_json:#}"
    );

    assert_eq!(
        sim.requests().len(),
        requests_killed,
        "a dry run reached the vendor"
    );

    let out = op.ok(&["export", "run", "weekly"]);
    assert!(out.starts_with("resumed run "), "{out}");
    assert_eq!(
        posts(&sim, "/import.json"),
        imports_killed,
        "the next run sent contacts the vendor had acknowledged"
    );
    assert!(
        imports_killed > imports_before,
        "the changed contacts were sent"
    );
    // Unsubscribing is idempotent, one request a leaver with no read first: the next run asks
    // again only for leavers whose calls the kill cut short, never more than the killed
    // attempt sent; the list below ends exact.
    let unsubscribes = posts(&sim, "/unsubscribe.json");
    assert!(
        unsubscribes >= leavers.len() && unsubscribes <= leavers.len() + unsubscribes_killed,
        "{unsubscribes} unsubscribes for {} leavers ({unsubscribes_killed} before the kill)",
        leavers.len()
    );

    // The list is exact: leavers unsubscribed, renamed people renamed, nobody else touched.
    let held = sim.subscribers(&list);
    let keys: BTreeSet<String> = held.keys().cloned().collect();
    let want: BTreeSet<String> = expected.delivered.keys().cloned().collect();
    assert_eq!(keys, want);
    for email in expected.delivered.keys() {
        let s = &held[email];
        let Some((first, last)) = remaining.get(email) else {
            assert_eq!(s.state, SubscriberState::Unsubscribed, "{email}");
            continue;
        };
        assert_eq!(s.state, SubscriberState::Active, "{email}");
        let name = match first {
            Some(first) => format!("{first} {last}"),
            None => last.clone(),
        };
        assert_eq!(s.name, name, "{email}");
    }
    let show = op.ok(&["runs", "show", &run_id(&out)]);
    assert_eq!(field(&show, "status"), "succeeded");
    assert!(field(&show, "attempts").starts_with("2 "), "{show}");
    // The run's requests are both attempts' own: each counted before it left, so the killed
    // attempt's count misses none the vendor received, and holds at most the few in flight
    // at the kill that never arrived.
    let vendor_saw = (sim.requests().len() - requests_before) as u64;
    let counted: u64 = field(&show, "requests")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    println!("requests over both attempts: counted {counted}, the vendor received {vendor_saw}");
    assert!(
        counted >= vendor_saw && counted <= vendor_saw + 20,
        "the run counts {counted} requests, the vendor saw {vendor_saw}: {show}"
    );
    // Every leaver counted as the run's own work, none blamed on the vendor: those the killed
    // attempt unsubscribed before it could record them included.
    assert_eq!(
        field(&show, "left"),
        format!(
            "{} (leave action unsubscribe: {} acted on, 0 untouched, 0 refused)",
            leavers.len(),
            leavers.len()
        ),
        "{show}"
    );
    let csv = op.ok(&["runs", "rejections", &run_id(&out), "--csv"]);
    assert!(
        !csv.contains(",leaving,"),
        "leavers listed as not delivered: {csv}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&op.ok(&["export", "show", "weekly", "--json"])).unwrap();
    assert_eq!(
        shown["sync_state"]["left"],
        leavers.len() as u64,
        "{shown:#}"
    );
    op.assert_credential_nowhere();
}

/// The same at Mailchimp, whose unsubscribe is one batch call for many leavers: killed right
/// after the vendor applied a batch, the next run counts those leavers as its own work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailchimp_run_killed_while_unsubscribing_counts_its_own_removals() {
    use connector_tests::sim::mailchimp::{self, MailchimpSim, Status};
    let (seed, count) = (83, 2_400);
    let op = Operator::new(seed, count);
    let sim = MailchimpSim::start_with(
        0,
        mailchimp::Behaviour {
            latency: Duration::from_millis(20),
            ..mailchimp::Behaviour::default()
        },
    )
    .await
    .unwrap();
    let key = sim.add_account("Acme", "us21");
    let audience = sim.add_audience(&key, "Newsletter");
    let mut add = op.command(
        &[
            connection_add("acme-mc", "mailchimp", &sim.base_url("{dc}")),
            vec!["--secret-env".into(), "MC_SECRET".into()],
        ]
        .concat(),
    );
    let out = add.env("MC_SECRET", &key).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut args = export_add_setting("weekly", "acme-mc", &format!("audience-id={audience}"));
    args.extend(["--leave-action", "unsubscribe", "--confirm-irreversible"].map(String::from));
    op.ok(&args);
    op.ok(&["export", "run", "weekly"]);

    let index = |id: &str| id.trim_start_matches('p').parse::<u64>().unwrap();
    evolve(&op, |id| index(id).is_multiple_of(6), |_| false);
    let plan: serde_json::Value =
        serde_json::from_str(&op.ok(&["export", "run", "weekly", "--dry-run", "--json"])).unwrap();
    let leavers = plan["leaving"].as_u64().unwrap();
    assert!(leavers > 150, "{plan:#}");

    let mut child = op
        .command(&["export", "run", "weekly", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let unsubscribed = || {
        sim.members(&audience)
            .values()
            .filter(|m| m.status == Status::Unsubscribed)
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while unsubscribed() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nobody was unsubscribed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_at_kill = unsubscribed();

    let out = op.ok(&["export", "run", "weekly"]);
    assert!(out.starts_with("resumed run "), "{out}");
    assert_eq!(
        unsubscribed() as u64,
        leavers,
        "every leaver unsubscribed once"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&op.ok(&["runs", "show", &run_id(&out), "--json"])).unwrap();
    assert_eq!(
        (
            shown["leaving"].as_u64(),
            shown["left"].as_u64(),
            shown["left_untouched"].as_u64()
        ),
        (Some(leavers), Some(leavers), Some(0)),
        "{done_at_kill} were unsubscribed when the first attempt was killed: {shown:#}"
    );
    let csv = op.ok(&["runs", "rejections", &run_id(&out), "--csv"]);
    assert!(
        !csv.contains(",leaving,"),
        "leavers listed as not delivered: {csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_preview_runs_and_choose_what_happens_to_leavers() {
    let (seed, count) = (82, 1_500);
    let op = Operator::new(seed, count);
    let (sim, _, list) = vendor(Duration::ZERO).await;
    op.add_connection("acme", &sim, &[]);

    // Irreversible actions need confirming, unknown ones are refused; nothing is saved.
    let setting = format!("list-id={list}");
    let add = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "add",
            "weekly",
            "--connection",
            "acme",
            "--setting",
            &setting,
            "--map",
            "email=email",
            "--map",
            "first-name=first_name",
            "--segment",
            "newsletter",
        ];
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| op.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = text(&run(add(&["--leave-action", "unsubscribe"])).stderr);
    assert!(
        err.contains(
            "export `weekly` was not saved: its leave action `unsubscribe` is irreversible"
        ),
        "{err}"
    );
    assert!(
        err.contains("confirm it with --confirm-irreversible"),
        "{err}"
    );
    let err = text(&run(add(&["--leave-action", "archive"])).stderr);
    assert!(err.contains("connector `campaign-monitor` has no leave action `archive` (it has: unsubscribe, delete)"), "{err}");
    assert!(op.ok(&["export", "list"]).contains("no exports"));
    assert!(
        run(add(&["--leave-action", "delete", "--confirm-irreversible"]))
            .status
            .success()
    );
    assert_eq!(
        field(&op.ok(&["export", "show", "weekly"]), "leave action"),
        "delete"
    );

    // A dry run sends nothing and records nothing, and says what the run will do.
    let expected = Expected::for_segment(seed, count, "newsletter");
    let dry = op.ok(&["export", "run", "weekly", "--dry-run"]);
    assert!(
        dry.starts_with("Dry run: nothing was sent or recorded; the next run would be a delta run"),
        "{dry}"
    );
    assert!(
        field(&dry, "would send").starts_with(&expected.sent().to_string()),
        "{dry}"
    );
    assert!(posts(&sim, "/import.json") == 0 && op.ok(&["runs", "weekly"]).contains("no runs yet"));
    op.ok(&["export", "run", "weekly"]);
    let synced = field(&op.ok(&["export", "show", "weekly"]), "sync state").to_string();
    assert!(
        synced.contains(&format!("{} created", expected.delivered.len())),
        "{synced}"
    );

    // After changes, the dry run's JSON plan is the next run's plan.
    let index = |id: &str| id.trim_start_matches('p').parse::<u64>().unwrap();
    evolve(
        &op,
        |id| index(id).is_multiple_of(11),
        |id| index(id).is_multiple_of(13),
    );
    let plan: serde_json::Value =
        serde_json::from_str(&op.ok(&["export", "run", "weekly", "--dry-run", "--json"])).unwrap();
    assert_eq!(plan["mode"], "delta");
    assert_eq!(plan["leave_action"], "delete");
    let real = op.ok(&["export", "run", "weekly", "--json"]);
    let real: serde_json::Value = serde_json::from_str(&real).unwrap();
    for key in [
        "profiles",
        "new",
        "changed",
        "returning",
        "unchanged",
        "still_rejected",
        "duplicates",
        "invalid",
        "leaving",
    ] {
        assert_eq!(
            plan[key], real[key],
            "{key}: plan {plan} against run {real}"
        );
    }
    assert!(plan["leaving"].as_u64().unwrap() > 0 && plan["changed"].as_u64().unwrap() > 0);
    assert_eq!(plan["examples"]["leaving"].as_array().unwrap().len(), 5);
    assert_eq!(real["left"], real["leaving"]);

    // A full run sends everyone again, and says why.
    let full = op.ok(&["export", "run", "weekly", "--full"]);
    assert!(
        full.contains("full run: a full run was asked for"),
        "{full}"
    );
    let again = op.ok(&["export", "run", "weekly"]);
    assert!(again.contains("delta run"), "{again}");
    assert_eq!(field(&again, "sent"), "0", "{again}");

    // Leavers while no action is set are left alone, and get the action set later.
    op.ok(&["export", "edit", "weekly", "--no-leave-action"]);
    evolve(&op, |id| index(id).is_multiple_of(7), |_| false);
    let quiet: serde_json::Value =
        serde_json::from_str(&op.ok(&["export", "run", "weekly", "--json"])).unwrap();
    let departed = quiet["left"].as_u64().unwrap();
    assert!(departed > 0, "{quiet}");
    let unsubscribed = || {
        sim.subscribers(&list)
            .values()
            .filter(|s| s.state == SubscriberState::Unsubscribed)
            .count() as u64
    };
    assert_eq!(unsubscribed(), 0);
    let edited = op.ok(&[
        "export",
        "edit",
        "weekly",
        "--leave-action",
        "unsubscribe",
        "--confirm-irreversible",
    ]);
    assert!(
        edited.contains(&format!(
            "{departed} contacts left the segment while no leave action was set: the next run applies unsubscribe to those still out of it"
        )),
        "{edited}"
    );
    let late: serde_json::Value =
        serde_json::from_str(&op.ok(&["export", "run", "weekly", "--json"])).unwrap();
    assert_eq!(late["left"], departed, "{late}");
    assert_eq!(unsubscribed(), departed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connector_version_makes_the_next_run_full_and_contract_0_1_plugins_still_work() {
    let op = Operator::new(83, 400);
    let (sim, _, list) = vendor(Duration::ZERO).await;
    let plugins = op.path("plugins");
    std::fs::copy(artifacts::CONTRACT_V0_1, plugins.join("legacy.wasm")).unwrap();
    variant(&plugins, "hostile.wasm", json!({"version": "1.0.0"}));
    for connector in ["legacy-campaign-monitor", "hostile"] {
        op.ok(&["plugins", "approve", connector]);
    }
    let listing = op.ok(&["plugins"]);
    assert!(
        listing.contains(
            "legacy-campaign-monitor 0.9.0 (Campaign Monitor (contract 0.1)), contract 0.1.1"
        ),
        "{listing}"
    );

    // A connector built for contract 0.1 has no leave actions: refused at save, with the reason.
    op.ok(&connection_add(
        "old",
        "legacy-campaign-monitor",
        &sim.base_url(),
    ));
    let setting = format!("list-id={list}");
    let legacy = [
        "export",
        "add",
        "legacy",
        "--connection",
        "old",
        "--setting",
        &setting,
        "--map",
        "email=email",
        "--segment",
        "newsletter",
    ];
    let err = op.fails(
        &[
            &legacy[..],
            &["--leave-action", "unsubscribe", "--confirm-irreversible"],
        ]
        .concat(),
    );
    assert!(err.contains("connector `legacy-campaign-monitor` is built for contract 0.1.1, which has no leave actions (they came with 0.2.0)"), "{err}");
    op.ok(&legacy);
    let first = op.ok(&["export", "run", "legacy"]);
    assert!(
        first.contains("succeeded") && !field(&first, "created").starts_with('0'),
        "{first}"
    );
    let second = op.ok(&["export", "run", "legacy"]);
    assert_eq!(
        field(&second, "sent"),
        "0",
        "the 0.1 connector's export is in sync too: {second}"
    );

    // The hostile connector, version 1.0.0 then 2.0.0: the new version's first run is full.
    op.ok(&connection_add("shady", "hostile", &sim.base_url()));
    op.ok(&[
        "export",
        "add",
        "accepting",
        "--connection",
        "shady",
        "--setting",
        &setting,
        "--setting",
        "mode=accept",
        "--map",
        "email=email",
        "--segment",
        "newsletter",
    ]);
    op.ok(&["export", "run", "accepting"]);
    assert_eq!(field(&op.ok(&["export", "run", "accepting"]), "sent"), "0");
    variant(&plugins, "hostile.wasm", json!({"version": "2.0.0"}));
    op.ok(&["plugins", "approve", "hostile"]);
    let upgraded = op.ok(&["export", "run", "accepting"]);
    assert!(
        upgraded.contains("full run: connector hostile changed from version 1.0.0 to 2.0.0"),
        "{upgraded}"
    );
    assert!(!field(&upgraded, "sent").starts_with('0'), "{upgraded}");
    let settled = op.ok(&["export", "run", "accepting"]);
    assert!(
        settled.contains("delta run") && field(&settled, "sent") == "0",
        "{settled}"
    );
}
