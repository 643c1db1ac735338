//! Many `serve` workers on one PostgreSQL state, as on several machines: every queued run is
//! done once, by one of them; a worker killed mid-run has its run finished by another from
//! its checkpoints, with nothing lost and nothing re-sent beyond the batches in flight.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use connector_tests::harness::Expected;
use connector_tests::sim::campaign_monitor::{Behaviour, CampaignMonitorSim};
use serde_json::Value;
use support::*;

const OTHER_KEY: &str = "second-account-key-0b9e55d2";

/// Starts `connector-host serve` as worker `name`.
fn worker(op: &Operator, name: &str) -> Child {
    op.command(&[
        "serve",
        "--worker",
        name,
        "--poll-seconds",
        "0.2",
        "--max-runs",
        "4",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Every run, by id, as `runs --json` gives them.
fn runs(op: &Operator) -> BTreeMap<u64, Value> {
    let out = op.ok(&["runs", "--json", "--limit", "1000"]);
    let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
    runs.into_iter()
        .map(|r| (r["id"].as_u64().unwrap(), r))
        .collect()
}

/// Waits until every run is done (succeeded or failed), or panics after `limit`.
fn wait_done(op: &Operator, workers: &mut [Child], limit: Duration) -> BTreeMap<u64, Value> {
    let deadline = Instant::now() + limit;
    loop {
        let runs = runs(op);
        if !runs.is_empty()
            && runs
                .values()
                .all(|r| r["status"] == "succeeded" || r["status"] == "failed")
        {
            return runs;
        }
        for w in workers.iter_mut() {
            assert!(w.try_wait().unwrap().is_none(), "a worker ended");
        }
        assert!(Instant::now() < deadline, "runs not done: {runs:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop(op: &Operator, workers: Vec<Child>) {
    for w in workers {
        unsafe { kill(w.id() as i32, 15) };
        let out = w.wait_with_output().unwrap();
        op.keep_log(&out);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_twenty_exports_over_two_accounts_each_run_once() {
    let (seed, count) = (91, 2_400);
    let url = connector_tests::postgres::database().await;
    let op = Operator::on_state(seed, count, Some(url));
    let sim = CampaignMonitorSim::start_with(
        0,
        Behaviour {
            latency: Duration::from_millis(60),
            ..Behaviour::default()
        },
    )
    .await
    .unwrap();
    let first = sim.add_client("Acme", API_KEY);
    let second = sim.add_client("Globex", OTHER_KEY);
    op.add_connection("acme", &sim, &[]);
    let mut add = op.command(
        &[
            connection_add("globex", "campaign-monitor", &sim.base_url()),
            vec!["--secret-env".into(), "OTHER_SECRET".into()],
        ]
        .concat(),
    );
    let out = add.env("OTHER_SECRET", OTHER_KEY).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut lists = BTreeMap::new();
    for i in 0..20 {
        let (connection, client) = if i % 2 == 0 {
            ("acme", &first)
        } else {
            ("globex", &second)
        };
        let list = sim.add_list(client, &format!("List {i}"));
        let name = format!("export-{i:02}");
        op.add_export(&name, connection, &list, &[]);
        let queued = op.ok(&["export", "run", &name, "--queue"]);
        assert!(queued.contains("queued"), "{queued}");
        lists.insert(name, list);
    }
    // Asking again while it waits gives the same run.
    let again = op.ok(&["export", "run", "export-00", "--queue"]);
    assert!(again.starts_with("run 1 queued"), "{again}");

    let mut workers: Vec<Child> = ["w1", "w2", "w3"].iter().map(|n| worker(&op, n)).collect();
    let done = wait_done(&op, &mut workers, Duration::from_secs(240));
    stop(&op, workers);

    assert_eq!(done.len(), 20, "one run an export: {done:#?}");
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    let exports: BTreeSet<&str> = done
        .values()
        .map(|r| r["export"].as_str().unwrap())
        .collect();
    assert_eq!(exports.len(), 20);
    for run in done.values() {
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(run["attempts"], 1, "{run:#}");
        *by_worker
            .entry(run["worker"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        by_worker.len() >= 2,
        "the runs were shared among the workers: {by_worker:?}"
    );
    let expected = Expected::for_segment(seed, count, "newsletter");
    for (name, list) in &lists {
        let held = sim.subscribers(list);
        let emails: BTreeSet<&String> = held.keys().collect();
        let wanted: BTreeSet<&String> = expected.delivered.keys().collect();
        assert_eq!(emails, wanted, "{name}'s list");
    }
    // Each list got its contacts once: one import a batch.
    let imports = imports(&sim);
    let batches = expected.profiles.div_ceil(1000) as usize;
    assert!(imports <= 20 * batches, "{imports} imports");
    op.assert_secrets_nowhere(&[API_KEY, OTHER_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_run_is_finished_by_another_from_its_checkpoints() {
    // 78 batches of the newsletter segment, 16 requests in flight (the default for a vendor
    // that publishes no limit) and 32 batches prepared.
    let (seed, count) = (92, 120_000);
    let url = connector_tests::postgres::database().await;
    let op = Operator::on_state(seed, count, Some(url));
    op.ok(&["settings", "set", "lease-seconds", "2"]);
    let (sim, _, list) = vendor(Duration::from_millis(300)).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export("big", "acme", &list, &[]);
    let queued = op.ok(&["export", "run", "big", "--queue"]);
    assert!(queued.starts_with("run 1 queued"), "{queued}");

    let mut doomed = worker(&op, "doomed");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Killed once more batches were sent than can be in flight, so that starting over would
    // show in the count below.
    while imports(&sim) < 40 {
        assert!(Instant::now() < deadline, "the first worker never sent");
        assert!(doomed.try_wait().unwrap().is_none(), "the worker ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { kill(doomed.id() as i32, 9) };
    let out = doomed.wait_with_output().unwrap();
    op.keep_log(&out);
    let sent_before = imports(&sim);
    let run = &runs(&op)[&1];
    assert_eq!(
        run["status"], "running",
        "its lease has not expired yet: {run:#}"
    );

    let mut heir = vec![worker(&op, "heir")];
    // The dead worker held every slot of the vendor account (16 requests in flight): they come
    // back within the lease term (2 s), not after the longest request it could have made.
    let done = wait_done(&op, &mut heir, Duration::from_secs(120));
    stop(&op, heir);
    let run = &done[&1];
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["attempts"], 2, "{run:#}");
    assert_eq!(run["worker"], "heir");
    let show = op.ok(&["runs", "show", "1"]);
    assert!(show.contains("attempt 1     by worker doomed"), "{show}");
    assert!(show.contains("attempt 2     by worker heir"), "{show}");

    let expected = Expected::for_segment(seed, count, "newsletter");
    let held = sim.subscribers(&list);
    assert_eq!(held.len(), expected.delivered.len(), "nothing lost");
    // Re-sent at most the batches in flight when the worker died (32 at a time).
    let batches = expected.profiles.div_ceil(1000) as usize;
    let imports = imports(&sim);
    assert!(
        imports <= batches + 32,
        "{imports} imports for {batches} batches ({sent_before} before the kill)"
    );
    let resumed = run["resumed"].as_u64().unwrap();
    assert!(resumed >= 1000, "continued from its checkpoints: {run:#}");
    op.assert_credential_nowhere();
}

/// Mailchimp allows an account 10 simultaneous connections, whoever opens them: with three
/// workers exporting to one account at once, the simulator never sees more than 10 and never
/// has to answer 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_a_mailchimp_accounts_ten_connections() {
    use connector_tests::sim::mailchimp::{self, MailchimpSim};

    let (seed, count) = (94, 6_000);
    let url = connector_tests::postgres::database().await;
    let op = Operator::on_state(seed, count, Some(url));
    let sim = MailchimpSim::start_with(
        0,
        mailchimp::Behaviour {
            latency: Duration::from_millis(150),
            ..mailchimp::Behaviour::default()
        },
    )
    .await
    .unwrap();
    let key = sim.add_account("Acme", "us21");
    let mut add = op.command(
        &[
            connection_add("acme-mc", "mailchimp", &sim.base_url("us21")),
            vec!["--secret-env".into(), "MC_SECRET".into()],
        ]
        .concat(),
    );
    let out = add.env("MC_SECRET", &key).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut audiences = vec![];
    for i in 0..6 {
        let audience = sim.add_audience(&key, &format!("Audience {i}"));
        let name = format!("mc-{i}");
        op.ok(&export_add_setting(
            &name,
            "acme-mc",
            &format!("audience-id={audience}"),
        ));
        op.ok(&["export", "run", &name, "--queue"]);
        audiences.push(audience);
    }

    let mut workers: Vec<Child> = ["w1", "w2", "w3"].iter().map(|n| worker(&op, n)).collect();
    let done = wait_done(&op, &mut workers, Duration::from_secs(300));
    stop(&op, workers);

    let busy: BTreeSet<&str> = done
        .values()
        .map(|r| r["worker"].as_str().unwrap())
        .collect();
    assert!(
        busy.len() >= 2,
        "several workers exported at once: {busy:?}"
    );
    for run in done.values() {
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    let throttled = sim.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 0, "no request over the account's limit");
    let peak = sim.peak_connections();
    assert!(peak <= 10, "{peak} simultaneous connections");
    assert!(
        peak >= 8,
        "the account's connections were used: peak {peak}"
    );
    let expected = Expected::for_segment(seed, count, "newsletter");
    for audience in &audiences {
        let members = sim.members(audience);
        for email in expected.delivered.keys() {
            assert!(
                members.contains_key(email),
                "{email} missing from {audience}"
            );
        }
    }
}
