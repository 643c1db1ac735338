//! Three `serve` workers on one PostgreSQL, exporting to both vendors while faults strike them
//! one after the other, each while runs are under way: a worker killed (SIGKILL), a worker
//! paused past its lease term and resumed (SIGSTOP, SIGCONT), a worker cut off from PostgreSQL
//! (each worker reaches the database through a relay the test can cut), and PostgreSQL (the
//! state and the profiles' database) restarted under all of them; every core is kept busy by
//! other processes throughout.
//!
//! Afterwards: every run succeeded, every list is exact, the surviving workers are still
//! serving, and no request reached a vendor from a worker after another worker had taken its
//! run over (the simulators note which process sent each request; the runs' histories say
//! which worker held each run from when).
//!
//! One test in its own binary (its own process): restarting PostgreSQL takes down every
//! database of the process.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use connector_tests::cut::CutRelay;
use connector_tests::harness::Expected;
use connector_tests::sim::campaign_monitor::{self, CampaignMonitorSim};
use connector_tests::sim::mailchimp::{self, MailchimpSim};
use connector_tests::sim::{Listen, Sent};
use serde_json::Value;
use support::*;

/// The lease term: a worker gone is replaced within it.
const LEASE_SECONDS: u64 = 5;
const MC_KEY_DC: &str = "us21";

/// A worker process and the relay it reaches PostgreSQL through.
struct Worker {
    name: String,
    child: Child,
    relay: CutRelay,
}

/// Processes that spin until dropped: the machine is busy with other work.
struct Spinners(Vec<Child>);

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

fn signal(child: &Child, signal: i32) {
    // SAFETY: a process this test started and has not reaped.
    unsafe { kill(child.id() as i32, signal) };
}

/// Starts worker `name`, reaching the database at `url` through a relay of its own.
async fn worker(op: &Operator, url: &str, name: &str) -> Worker {
    let pg = connector_tests::postgres::server();
    let relay = CutRelay::start(([127, 0, 0, 1], pg.port()).into())
        .await
        .unwrap();
    let through = url.replace(
        &format!(":{}/", pg.port()),
        &format!(":{}/", relay.addr().port()),
    );
    let log = std::fs::File::create(op.path(&format!("{name}.log"))).unwrap();
    let child = op
        .command(&[
            "serve",
            "--worker",
            name,
            "--poll-seconds",
            "0.2",
            "--max-runs",
            "2",
        ])
        .env("CONNECTOR_HOST_STATE", through)
        .env("RUST_LOG", "connector_host=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Worker {
        name: name.into(),
        child,
        relay,
    }
}

/// Every run, by id, with its attempts.
fn runs(op: &Operator) -> BTreeMap<u64, Value> {
    let out = op.ok(&["runs", "--json", "--limit", "1000"]);
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    listed
        .iter()
        .map(|r| {
            let id = r["id"].as_u64().unwrap();
            let shown = op.ok(&["runs", "show", &id.to_string(), "--json"]);
            (id, serde_json::from_str(&shown).unwrap())
        })
        .collect()
}

/// Queues a full run of every export.
fn queue_all(op: &Operator, exports: &[String]) {
    for name in exports {
        let queued = op.ok(&["export", "run", name, "--queue", "--full"]);
        assert!(queued.contains("queued"), "{queued}");
    }
}

/// Waits until a worker holds a run and has sent for it; that worker's name.
fn busy_worker(
    op: &Operator,
    workers: &[Worker],
    sent: &dyn Fn() -> usize,
    at_least: usize,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running: Vec<String> =
            serde_json::from_str::<Vec<Value>>(&op.ok(&["runs", "--json", "--limit", "50"]))
                .unwrap()
                .iter()
                .filter(|r| r["status"] == "running")
                .filter_map(|r| r["worker"].as_str().map(String::from))
                .filter(|w| workers.iter().any(|x| x.name == *w))
                .collect();
        if sent() >= at_least
            && let Some(busy) = running.first()
        {
            return busy.clone();
        }
        assert!(Instant::now() < deadline, "no run got under way");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every run succeeded (none left queued, running or waiting).
fn wait_all_done(op: &Operator, workers: &mut [Worker], limit: Duration) -> BTreeMap<u64, Value> {
    let deadline = Instant::now() + limit;
    loop {
        let listed: Vec<Value> =
            serde_json::from_str(&op.ok(&["runs", "--json", "--limit", "1000"])).unwrap();
        let open: Vec<&Value> = listed
            .iter()
            .filter(|r| !["succeeded", "failed"].contains(&r["status"].as_str().unwrap()))
            .collect();
        if open.is_empty() {
            return runs(op);
        }
        for w in workers.iter_mut() {
            if let Some(status) = w.child.try_wait().unwrap() {
                panic!(
                    "worker {} ended ({status}); its log: {}",
                    w.name,
                    worker_log(op, &w.name)
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "runs still open after {limit:?}: {open:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn worker_log(op: &Operator, name: &str) -> String {
    let log = std::fs::read_to_string(op.path(&format!("{name}.log"))).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn parse_time(text: &str) -> SystemTime {
    let at = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_nanos(at.timestamp_nanos_opt().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stay_correct_through_kills_pauses_cuts_and_a_database_restart() {
    let (seed, count) = (95, 6_000);
    let url = connector_tests::postgres::database().await;
    let op = Operator::on_state(seed, count, Some(url.clone()));
    op.ok(&[
        "settings",
        "set",
        "lease-seconds",
        &LEASE_SECONDS.to_string(),
    ]);
    // The profiles come from PostgreSQL too, so that the restart reaches the source as well.
    let profiles = connector_tests::postgres::database().await;
    connector_tests::sample::write_postgres(&profiles, seed, count)
        .await
        .unwrap();
    op.ok(&["settings", "set", "profiles", &profiles]);

    // Both vendors, slow enough that faults land while runs are under way.
    let cm = CampaignMonitorSim::start_on(
        Listen::plain(0).identifying_senders(),
        campaign_monitor::Behaviour {
            latency: Duration::from_millis(700),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mc = MailchimpSim::start_on(
        Listen::plain(0).identifying_senders(),
        mailchimp::Behaviour {
            latency: Duration::from_millis(250),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = cm.add_client("Acme", API_KEY);
    op.add_connection("acme", &cm, &[]);
    let mc_key = mc.add_account("Acme Mail", MC_KEY_DC);
    let mut add = op.command(
        &[
            connection_add("acme-mc", "mailchimp", &mc.base_url(MC_KEY_DC)),
            vec!["--secret-env".into(), "MC_SECRET".into()],
        ]
        .concat(),
    );
    let out = add.env("MC_SECRET", &mc_key).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Where each export's contacts go: a list or an audience id, as request paths name it.
    let mut destinations: Vec<(String, String)> = vec![];
    for i in 0..3 {
        let list = cm.add_list(&client, &format!("List {i}"));
        let name = format!("cm-{i}");
        op.add_export(&name, "acme", &list, &[]);
        destinations.push((name, list));
        let audience = mc.add_audience(&mc_key, &format!("Audience {i}"));
        let name = format!("mc-{i}");
        op.ok(&export_add_setting(
            &name,
            "acme-mc",
            &format!("audience-id={audience}"),
        ));
        destinations.push((name, audience));
    }
    let exports: Vec<String> = destinations.iter().map(|(n, _)| n.clone()).collect();
    let sent = || cm.server().senders().len() + mc.server().senders().len();

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _busy = Spinners(
        (0..cores)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    // Before this, the operator's own commands reached the vendors (checking the credential
    // and the lists); from here on, only workers do.
    let serving_from = SystemTime::now();
    let mut workers = vec![
        worker(&op, &url, "w1").await,
        worker(&op, &url, "w2").await,
        worker(&op, &url, "w3").await,
    ];
    let mut pids: HashMap<u32, String> = workers
        .iter()
        .map(|w| (w.child.id(), w.name.clone()))
        .collect();
    let mut faults: Vec<(String, SystemTime, String)> = vec![];

    // 1. A worker killed mid-run; another worker starts in its place.
    queue_all(&op, &exports);
    let victim = busy_worker(&op, &workers, &sent, sent() + 20);
    let at = workers.iter().position(|w| w.name == victim).unwrap();
    signal(&workers[at].child, SIGKILL);
    faults.push(("SIGKILL".into(), SystemTime::now(), victim.clone()));
    let killed = workers.remove(at);
    let mut killed_child = killed.child;
    killed_child.wait().unwrap();
    let fresh = worker(&op, &url, "w4").await;
    pids.insert(fresh.child.id(), fresh.name.clone());
    workers.push(fresh);
    wait_all_done(&op, &mut workers, Duration::from_secs(180));

    // 2. A worker paused past its lease term, then resumed.
    queue_all(&op, &exports);
    let paused = busy_worker(&op, &workers, &sent, sent() + 20);
    let paused_at = workers.iter().position(|w| w.name == paused).unwrap();
    signal(&workers[paused_at].child, SIGSTOP);
    faults.push(("SIGSTOP".into(), SystemTime::now(), paused.clone()));
    std::thread::sleep(Duration::from_secs(2 * LEASE_SECONDS));
    signal(&workers[paused_at].child, SIGCONT);
    wait_all_done(&op, &mut workers, Duration::from_secs(180));

    // 3. A worker cut off from PostgreSQL for longer than its lease term.
    queue_all(&op, &exports);
    let cut = busy_worker(&op, &workers, &sent, sent() + 20);
    let relay = &workers.iter().find(|w| w.name == cut).unwrap().relay;
    relay.cut();
    faults.push(("cut from PostgreSQL".into(), SystemTime::now(), cut.clone()));
    std::thread::sleep(Duration::from_secs(2 * LEASE_SECONDS));
    relay.restore();
    wait_all_done(&op, &mut workers, Duration::from_secs(180));

    // 4. PostgreSQL restarted under every worker, down for two seconds.
    queue_all(&op, &exports);
    busy_worker(&op, &workers, &sent, sent() + 20);
    faults.push(("PostgreSQL restart".into(), SystemTime::now(), "all".into()));
    connector_tests::postgres::server()
        .restart(Duration::from_secs(2))
        .unwrap();
    let done = wait_all_done(&op, &mut workers, Duration::from_secs(240));

    // The survivors are still serving, and stop cleanly.
    for w in workers.iter_mut() {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "worker {} ended: {}",
            w.name,
            worker_log(&op, &w.name)
        );
    }
    for w in &workers {
        signal(&w.child, SIGTERM);
    }
    for w in workers.iter_mut() {
        let status = w.child.wait().unwrap();
        assert!(status.success(), "worker {} stopped with {status}", w.name);
    }

    // Every run succeeded, and its history names each attempt's worker.
    assert_eq!(done.len(), 4 * exports.len(), "{done:#?}");
    for run in done.values() {
        assert_eq!(run["status"], "succeeded", "{run:#}");
        let log = run["attempt_log"].as_array().unwrap();
        assert_eq!(
            log.len() as u64,
            run["attempts"].as_u64().unwrap(),
            "{run:#}"
        );
    }

    // Every list is exact.
    let expected = Expected::for_segment(seed, count, "newsletter");
    let wanted: BTreeSet<&String> = expected.delivered.keys().collect();
    for (name, destination) in &destinations {
        let held: BTreeSet<String> = if name.starts_with("cm-") {
            cm.subscribers(destination).into_keys().collect()
        } else {
            mc.members(destination).into_keys().collect()
        };
        let held: BTreeSet<&String> = held.iter().collect();
        assert_eq!(held, wanted, "{name}'s list");
    }

    // Who held each export from when: every attempt, in order.
    let mut holders: HashMap<&str, Vec<(SystemTime, String)>> = HashMap::new();
    for run in done.values() {
        let export = run["export"].as_str().unwrap();
        for attempt in run["attempt_log"].as_array().unwrap() {
            holders.entry(export).or_default().push((
                parse_time(attempt["started_at"].as_str().unwrap()),
                attempt["worker"].as_str().unwrap().to_string(),
            ));
        }
    }
    for attempts in holders.values_mut() {
        attempts.sort();
    }
    // Each request to a destination: from the worker holding its export at that moment.
    let requests: Vec<Sent> = cm
        .server()
        .senders()
        .into_iter()
        .chain(mc.server().senders())
        .collect();
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    let mut strays = vec![];
    // A connection whose process was killed before the simulator looked cannot be traced to
    // it; its requests were sent before the kill and reach the simulator just after.
    let killed_at = faults[0].1;
    let mut untraced = 0;
    for request in requests.iter().filter(|r| r.at >= serving_from) {
        let Some(worker) = request.pid.and_then(|pid| pids.get(&pid)) else {
            let after_kill = request
                .at
                .duration_since(killed_at)
                .is_ok_and(|d| d < Duration::from_secs(5));
            assert!(after_kill, "a request from an unknown process: {request:?}");
            untraced += 1;
            continue;
        };
        *by_worker.entry(worker.clone()).or_default() += 1;
        let Some((export, _)) = destinations
            .iter()
            .find(|(_, d)| request.path.contains(d.as_str()))
        else {
            continue; // a credential check, for no export
        };
        let holder = holders[export.as_str()]
            .iter()
            .rev()
            .find(|(started, _)| *started <= request.at)
            .map(|(_, w)| w.as_str());
        if holder != Some(worker.as_str()) {
            strays.push(format!(
                "{} {} from {worker} while {} held {export}",
                request.method,
                request.path,
                holder.unwrap_or("nobody")
            ));
        }
    }
    // Time to takeover: from each fault to the next attempt by another worker.
    for (fault, at, whom) in &faults {
        let takeover = holders
            .values()
            .flatten()
            .filter(|(started, w)| started > at && (w != whom || whom == "all"))
            .map(|(started, _)| started.duration_since(*at).unwrap_or_default())
            .min();
        eprintln!(
            "{fault} of {whom}: first attempt after it {}",
            takeover.map_or("none".into(), |t| format!("{:.1} s later", t.as_secs_f64()))
        );
    }
    eprintln!(
        "{} requests to the vendors by worker: {by_worker:?} ({untraced} from the killed worker's last moments); requests from a worker that did not hold the run: {}",
        requests.len(),
        strays.len()
    );
    assert!(strays.is_empty(), "requests by non-holders: {strays:#?}");
    assert!(
        by_worker.len() >= 3,
        "the work was shared, faults and all: {by_worker:?}"
    );
}
