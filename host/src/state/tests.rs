//! The store suite: the same checks of the saved state on both engines, SQLite (a file) and
//! PostgreSQL (a real server started for the test process). Each engine must give the same
//! answers; what is engine-specific (the lease's expiry) is checked where it applies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::run::{RunJournal, SettledContact, Settlement, SyncState};
use crate::state::{ExportRecord, NewConnection, NewExport, RunState, State, Trigger};
use crate::{
    Access, Actor, Approval, Credential, IssueKind, MasterKey, Role, RunCounts, RunIssue, Secret,
    Stage,
};

fn admin() -> Actor {
    Actor {
        name: "ada".into(),
        role: Role::Administrator,
    }
}

/// One test of `$suite` on each engine.
macro_rules! on_both_engines {
    ($suite:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $suite(Engine::sqlite().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            $suite(Engine::postgres().await).await;
        }
    };
}

/// One state of each engine, opened twice (as two processes would).
enum Engine {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Engine {
    async fn sqlite() -> Engine {
        Engine::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Engine {
        Engine::Postgres(test_postgres::database().await)
    }

    /// A handle on the state, as a process named `worker` opens it.
    async fn open(&self, worker: &str) -> Arc<State> {
        let location = match self {
            Engine::Sqlite(dir) => dir.path().display().to_string(),
            Engine::Postgres(url) => url.clone(),
        };
        Arc::new(State::connect(&location).await.unwrap().with_worker(worker))
    }
}

async fn connection(state: &State, key: &MasterKey, name: &str, secret: &str) -> i64 {
    state
        .add_connection(
            key,
            &NewConnection {
                name,
                connector: "mailchimp",
                base_url: Some("http://127.0.0.1:1"),
                data_centre: Some("us7"),
                credential: &Credential::ApiKey(Secret::new(secret.into())),
                token_expires_at: None,
                access: Access::Administrators,
                checked_at: None,
            },
            &admin(),
        )
        .await
        .unwrap()
        .id
}

async fn export(state: &State, name: &str, connection_id: i64) -> ExportRecord {
    state
        .add_export(
            &NewExport {
                name,
                connection_id,
                settings: &[("list".into(), "L1".into())],
                mapping: &crate::FieldMapping::parse(&["email=email", "first_name=first"]).unwrap(),
                segments: &["newsletter".into()],
                schedule: Some("0 * * * * *"),
                leave_action: None,
            },
            &admin(),
        )
        .await
        .unwrap()
}

/// Connections, settings, approvals and exports: the records an operator keeps.
async fn records(engine: Engine) {
    let state = engine.open("w1").await;
    let key = MasterKey::generate();
    state.check_master_key(&key).await.unwrap();
    state.check_master_key(&key).await.unwrap();
    let other = engine.open("w2").await;
    let err = other
        .check_master_key(&MasterKey::generate())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("wrong master key"), "{err:#}");

    // Settings.
    assert_eq!(state.setting("profiles").await.unwrap(), None);
    state.set_setting("profiles", "/a.csv").await.unwrap();
    state.set_setting("profiles", "/b.csv").await.unwrap();
    state.set_setting("id-column", "id").await.unwrap();
    assert_eq!(
        other.settings().await.unwrap(),
        vec![
            ("id-column".to_string(), "id".to_string()),
            ("profiles".to_string(), "/b.csv".to_string())
        ]
    );
    assert_eq!(state.lease_term().await.unwrap(), Duration::from_secs(30));
    state.set_setting("lease-seconds", "0.2").await.unwrap();
    assert!(state.lease_term().await.is_err());

    // Approvals: replaced, listed, revoked.
    let approval = |digest: &str| Approval {
        connector: "mailchimp".into(),
        digest: digest.into(),
        hosts: vec!["*.api.mailchimp.com".into()],
        default_base_url: "https://us1.api.mailchimp.com/3.0".into(),
        version: "1.0.0".into(),
        approved_by: "ada".into(),
        approved_at: "2026-11-23T00:00:00Z".into(),
    };
    state.approve_connector(&approval("d1")).await.unwrap();
    state.approve_connector(&approval("d2")).await.unwrap();
    assert_eq!(other.approvals().await.unwrap().len(), 1);
    assert_eq!(
        other.approval("mailchimp").await.unwrap().unwrap().digest,
        "d2"
    );
    assert!(state.revoke_connector("mailchimp").await.unwrap());
    assert!(!state.revoke_connector("mailchimp").await.unwrap());
    assert!(other.approval("mailchimp").await.unwrap().is_none());

    // Connections: the credential sealed, unsealed only with the key, names unique.
    let acme = connection(&state, &key, "acme", "secret-one-us7").await;
    let err = state
        .add_connection(
            &key,
            &NewConnection {
                name: "acme",
                connector: "mailchimp",
                base_url: None,
                data_centre: None,
                credential: &Credential::ApiKey(Secret::new("x".into())),
                token_expires_at: None,
                access: Access::Contributors,
                checked_at: None,
            },
            &admin(),
        )
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    let record = other.connection("acme").await.unwrap();
    assert_eq!(record.id, acme);
    assert_eq!(record.data_centre.as_deref(), Some("us7"));
    assert_eq!(record.access, Access::Administrators);
    let credential = other.credential(&key, &record).await.unwrap();
    assert_eq!(credential.secret().expose(), "secret-one-us7");
    assert!(
        other
            .credential(&MasterKey::generate(), &record)
            .await
            .is_err()
    );
    state
        .replace_credential(
            &key,
            &record,
            &Credential::ApiKey(Secret::new("secret-two-us7".into())),
            None,
        )
        .await
        .unwrap();
    state.set_access(acme, Access::Contributors).await.unwrap();
    let record = other.connection("acme").await.unwrap();
    assert_eq!(record.access, Access::Contributors);
    assert!(record.checked_at.is_some());
    assert_eq!(
        other
            .credential(&key, &record)
            .await
            .unwrap()
            .secret()
            .expose(),
        "secret-two-us7"
    );

    // Exports: saved, changed, listed, removed with their connection.
    let daily = export(&state, "daily", acme).await;
    assert_eq!(daily.connection, "acme");
    assert_eq!(daily.settings, vec![("list".to_string(), "L1".to_string())]);
    assert!(
        state
            .add_export(
                &NewExport {
                    name: "daily",
                    connection_id: acme,
                    settings: &[],
                    mapping: &crate::FieldMapping::default(),
                    segments: &[],
                    schedule: None,
                    leave_action: None,
                },
                &admin(),
            )
            .await
            .is_err()
    );
    export(&state, "weekly", acme).await;
    state
        .update_export(
            daily.id,
            &NewExport {
                name: "daily",
                connection_id: acme,
                settings: &[("list".into(), "L2".into())],
                mapping: &crate::FieldMapping::parse(&["email=email"]).unwrap(),
                segments: &["all".into()],
                schedule: None,
                leave_action: Some("unsubscribe"),
            },
        )
        .await
        .unwrap();
    let changed = other.export("daily").await.unwrap();
    assert_eq!(changed.schedule, None);
    assert_eq!(changed.leave_action.as_deref(), Some("unsubscribe"));
    assert_eq!(changed.segments, vec!["all".to_string()]);
    let names: Vec<String> = other
        .exports()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["daily", "weekly"]);
    state.remove_export("weekly", &admin()).await.unwrap();
    export(&state, "weekly", acme).await; // a removed export's name is free again
    let removed = state.remove_connection("acme", &admin()).await.unwrap();
    assert_eq!(removed, ["daily", "weekly"]);
    assert!(other.exports().await.unwrap().is_empty());
    assert!(other.connection("acme").await.is_err());
    let Err(err) = other.credential(&key, &record).await else {
        panic!("a removed connection's credential is erased");
    };
    assert!(format!("{err:#}").contains("erased"), "{err:#}");
}

on_both_engines!(records, records_on_sqlite, records_on_postgres);

fn settled(i: u64, state: SyncState) -> SettledContact {
    SettledContact {
        email: format!("c{i}@example.com"),
        person: i + 1,
        digest: i * 7,
        state,
        reason: (state == SyncState::Rejected).then(|| ("1".into(), "Invalid".into())),
    }
}

fn issue(i: u64) -> RunIssue {
    RunIssue {
        profile_id: i.to_string(),
        email: format!("c{i}@example.com"),
        kind: IssueKind::Rejected,
        stage: Stage::Sent,
        code: "1".into(),
        message: format!("refused {i}"),
        since: None,
    }
}

/// Runs, their undelivered contacts, the sync state a run's journal keeps, resumption.
async fn runs(engine: Engine) {
    let state = engine.open("w1").await;
    let key = MasterKey::generate();
    let acme = connection(&state, &key, "acme", "k-us7").await;
    let daily = export(&state, "daily", acme).await;

    let lock = state.lock_export(&daily).await.unwrap().unwrap();
    let run = state
        .start_run(
            &daily,
            Trigger::OnDemand,
            &admin(),
            false,
            Some(lock.fence()),
        )
        .await
        .unwrap();
    let ledger = Arc::new(state.journal(&daily, run, lock.fence()));
    let n = 25_000u64;
    let counts = RunCounts {
        profiles: n,
        ..RunCounts::default()
    };
    // The journal is called from blocking threads, as a run calls it.
    let writer = ledger.clone();
    tokio::task::spawn_blocking(move || {
        let contacts: Vec<SettledContact> = (0..n)
            .map(|i| {
                let state = if i % 100 == 0 {
                    SyncState::Rejected
                } else {
                    SyncState::Created
                };
                settled(i, state)
            })
            .collect();
        for (k, piece) in contacts.chunks(1000).enumerate() {
            let issues: Vec<RunIssue> = piece
                .iter()
                .filter(|c| c.state == SyncState::Rejected)
                .map(|c| issue(c.digest / 7))
                .collect();
            let _ = k;
            writer
                .settle(&Settlement {
                    contacts: piece,
                    issues: &issues,
                    counts: &counts,
                    figures: Default::default(),
                })
                .unwrap();
        }
        // A contact settled twice in one piece ends in its last state.
        writer
            .settle(&Settlement {
                contacts: &[settled(1, SyncState::Created), settled(1, SyncState::Left)],
                issues: &[],
                counts: &counts,
                figures: crate::run::Figures {
                    left: Some(std::time::Duration::from_secs(90)),
                    ..Default::default()
                },
            })
            .unwrap();
    })
    .await
    .unwrap();
    // While it runs, the run says when it should end: its last piece's estimate.
    let end = state
        .run(run)
        .await
        .unwrap()
        .expected_end
        .expect("an expected end");
    let end = chrono::DateTime::parse_from_rfc3339(&end).unwrap();
    let in_seconds = (end.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    assert!(
        (80..=91).contains(&in_seconds),
        "expected end in {in_seconds} s"
    );

    let reader = Arc::new(state.sync_reader(&daily, None));
    let read = reader.clone();
    let (held, this_run, reasons, hint) = tokio::task::spawn_blocking(move || {
        let (mut held, mut this_run, mut reasons) = (std::collections::HashMap::new(), 0, 0);
        read.synced(&mut |s| {
            held.insert(s.email.to_string(), (s.digest, s.state));
            this_run += u64::from(s.this_run);
            reasons += u64::from(s.reason.is_some());
            Ok(())
        })
        .unwrap();
        (held, this_run, reasons, read.size_hint())
    })
    .await
    .unwrap();
    assert_eq!(held.len() as u64, n);
    assert_eq!(held["c1@example.com"], (7, SyncState::Left));
    assert_eq!(held["c200@example.com"], (1400, SyncState::Rejected));
    assert_eq!(this_run, 0, "a reader belongs to no run");
    assert_eq!(reasons, n / 100);
    assert!(hint >= n, "size hint {hint}");
    let refused = tokio::task::spawn_blocking(move || {
        reader.settle(&Settlement {
            contacts: &[],
            issues: &[],
            counts: &RunCounts::default(),
            figures: Default::default(),
        })
    })
    .await
    .unwrap();
    assert!(refused.is_err(), "a dry run records nothing");
    let by_state = state.sync_counts(&daily).await.unwrap();
    assert_eq!(
        by_state,
        vec![
            (SyncState::Created, n - n / 100 - 1),
            (SyncState::Rejected, n / 100),
            (SyncState::Left, 1)
        ]
    );

    // The run record: counts as settled, issues in order, the attempt's worker.
    let record = state.run(run).await.unwrap();
    assert_eq!(record.status, RunState::Running);
    assert_eq!(record.counts.profiles, n);
    assert_eq!(record.worker.as_deref(), Some("w1"));
    assert_eq!(record.attempt_log.len(), 1);
    let mut listed = vec![];
    state
        .for_each_issue(run, &mut |i| {
            listed.push(i.profile_id);
            Ok(())
        })
        .await
        .unwrap();
    let expected: Vec<String> = (0..n).step_by(100).map(|i| i.to_string()).collect();
    assert_eq!(listed, expected);

    // Its process gone (its lock with it), the run waits for a worker, and another worker
    // continues it; from then on the first worker's writes are refused.
    let first = lock.fence().clone();
    lock.release().await;
    let other = engine.open("w2").await;
    assert_eq!(other.run(run).await.unwrap().status, RunState::Waiting);
    assert_eq!(other.unfinished_run(&daily).await.unwrap(), Some(run));
    let second = other.lock_export(&daily).await.unwrap().unwrap();
    other.resume_run(run, second.fence(), false).await.unwrap();
    assert!(
        !state
            .finish_run(run, Some(&first), RunState::Interrupted, None, None, None)
            .await
            .unwrap(),
        "the first worker's write was refused"
    );
    let refused = tokio::task::spawn_blocking({
        let ledger = ledger.clone();
        move || {
            ledger.settle(&Settlement {
                contacts: &[],
                issues: &[],
                counts: &RunCounts::default(),
                figures: Default::default(),
            })
        }
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        refused
            .downcast_ref::<super::runs::NotTheHolder>()
            .is_some(),
        "{refused:#}"
    );
    let record = other.run(run).await.unwrap();
    assert_eq!(record.attempts, 2);
    assert_eq!(record.worker.as_deref(), Some("w2"));
    let workers: Vec<&str> = record
        .attempt_log
        .iter()
        .map(|a| a.worker.as_str())
        .collect();
    assert_eq!(workers, ["w1", "w2"]);
    assert!(
        other
            .finish_run(
                run,
                Some(second.fence()),
                RunState::Succeeded,
                None,
                None,
                None
            )
            .await
            .unwrap()
    );
    second.release().await;
    assert_eq!(other.unfinished_run(&daily).await.unwrap(), None);
    let listed = state
        .runs(
            Some("daily"),
            &[Access::Administrators, Access::Contributors],
            10,
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, RunState::Succeeded);
    assert!(
        state
            .runs(Some("nope"), &[Access::Administrators], 10)
            .await
            .is_err()
    );
}

on_both_engines!(runs, runs_on_sqlite, runs_on_postgres);

/// The queue: one queued run an export, claimed by one worker of many, a schedule's fire
/// queued once, the export's lock held by the claim.
async fn queue(engine: Engine) {
    let workers = [
        engine.open("w1").await,
        engine.open("w2").await,
        engine.open("w3").await,
    ];
    let state = &workers[0];
    let key = MasterKey::generate();
    let acme = connection(state, &key, "acme", "k-us7").await;
    let mut exports = vec![];
    for i in 0..6 {
        exports.push(export(state, &format!("e{i}"), acme).await);
    }
    // Asking twice queues one run.
    let first = state
        .enqueue_run(&exports[0], Trigger::OnDemand, &admin(), false, false)
        .await
        .unwrap();
    let again = workers[1]
        .enqueue_run(&exports[0], Trigger::OnDemand, &admin(), false, true)
        .await
        .unwrap();
    assert_eq!(first, again);
    // A schedule's fire, fired by every worker at once, queues once.
    let fired = futures_util::future::join_all(
        workers
            .iter()
            .map(|w| w.fire_schedule(&exports[1], "2026-11-23T10:00:00Z")),
    )
    .await;
    let fired: Vec<i64> = fired.into_iter().filter_map(|f| f.unwrap()).collect();
    assert_eq!(fired.len(), 1, "{fired:?}");
    for export in &exports[2..] {
        state
            .enqueue_run(export, Trigger::OnDemand, &admin(), false, false)
            .await
            .unwrap();
    }
    assert_eq!(state.queued_runs().await.unwrap(), 6);

    // Three workers claim at once, again and again, until nothing waits: each run once.
    let mut claims = vec![];
    loop {
        let round = futures_util::future::join_all(workers.iter().map(|w| w.claim_run())).await;
        let round: Vec<_> = round.into_iter().filter_map(|c| c.unwrap()).collect();
        if round.is_empty() {
            break;
        }
        claims.extend(round);
    }
    let mut claimed: Vec<i64> = claims.iter().map(|c| c.run_id).collect();
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), 6, "every queued run claimed once");
    assert_eq!(claims.len(), 6);
    // A claimed export is locked: no process may start another run of it.
    assert!(workers[2].lock_export(&exports[0]).await.unwrap().is_none());
    // Claimed runs start; their export stays locked until they are released.
    let claim = claims.remove(0);
    let (resumed, _) = state
        .start_claimed(claim.run_id, claim.lock.fence())
        .await
        .unwrap();
    assert!(!resumed);
    assert_eq!(
        state.run(claim.run_id).await.unwrap().status,
        RunState::Running
    );
    let export_id = claim.export_id;
    claim.lock.release().await;
    let export = exports.iter().find(|e| e.id == export_id).unwrap();
    let lock = workers[1].lock_export(export).await.unwrap();
    assert!(lock.is_some(), "released");
    drop(lock);
    for claim in claims {
        claim.lock.release().await;
    }

    // A removed export's waiting run will never run: it is failed, saying why.
    let late = state
        .enqueue_run(&exports[5], Trigger::OnDemand, &admin(), false, false)
        .await
        .unwrap();
    assert_eq!(state.run(late).await.unwrap().status, RunState::Queued);
    state.remove_export("e5", &admin()).await.unwrap();
    let run = state.run(late).await.unwrap();
    assert_eq!(run.status, RunState::Failed);
    assert!(run.error.unwrap().contains("removed"));
    // The runs claimed above and released without finishing wait again; none of the removed
    // export's is among them.
    let mut held = vec![];
    while let Some(claim) = workers[2].claim_run().await.unwrap() {
        assert_ne!(claim.run_id, late);
        assert_ne!(claim.export_id, exports[5].id);
        held.push(claim);
    }
    assert!(held.len() >= 4, "{} waiting again", held.len());
}

on_both_engines!(queue, queue_on_sqlite, queue_on_postgres);

/// A run its workers fail on (a panic each time) is not claimed in a loop: each failure is
/// recorded on the run with its reason, and after the third the run ends failed.
async fn failing_runs(engine: Engine) {
    let state = engine.open("w1").await;
    let key = MasterKey::generate();
    let acme = connection(&state, &key, "acme", "k-us7").await;
    let daily = export(&state, "daily", acme).await;
    let run = state
        .enqueue_run(&daily, Trigger::OnDemand, &admin(), false, false)
        .await
        .unwrap();
    for failure in 1..=3 {
        let claim = state
            .claim_run()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("not claimable after {} failures", failure - 1));
        assert_eq!(claim.run_id, run);
        state.start_claimed(run, claim.lock.fence()).await.unwrap();
        let why = format!("worker w1 failed on the run (it panicked: boom {failure})");
        assert!(
            state
                .note_failure(run, claim.lock.fence(), &why)
                .await
                .unwrap()
        );
        claim.lock.release().await;
        let record = state.run(run).await.unwrap();
        assert_eq!(record.error.as_deref(), Some(why.as_str()));
        let expected = if failure < 3 {
            RunState::Waiting
        } else {
            RunState::Failed
        };
        assert_eq!(record.status, expected, "after failure {failure}");
    }
    assert!(
        state.claim_run().await.unwrap().is_none(),
        "claimed in a loop"
    );
    // Nor is it what the next run continues: that one starts afresh.
    assert_eq!(state.unfinished_run(&daily).await.unwrap(), None);
}

on_both_engines!(
    failing_runs,
    failing_runs_on_sqlite,
    failing_runs_on_postgres
);

/// PostgreSQL: a worker that stops renewing its lease (it died) loses the run once the lease
/// expires, and another worker claims it to continue it; while the lease lives, nobody can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_lets_another_worker_take_the_run_over() {
    let engine = Engine::postgres().await;
    let (one, two) = (engine.open("w1").await, engine.open("w2").await);
    one.set_setting("lease-seconds", "2").await.unwrap();
    let key = MasterKey::generate();
    let acme = connection(&one, &key, "acme", "k-us7").await;
    let daily = export(&one, "daily", acme).await;
    one.enqueue_run(&daily, Trigger::OnDemand, &admin(), false, false)
        .await
        .unwrap();
    let claim = one.claim_run().await.unwrap().unwrap();
    one.start_claimed(claim.run_id, claim.lock.fence())
        .await
        .unwrap();
    // Renewed by its keeper: held well past one term.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(claim.lock.fence().holds());
    assert!(two.claim_run().await.unwrap().is_none());
    assert_eq!(
        two.run(claim.run_id).await.unwrap().status,
        RunState::Running
    );
    // The worker dies: its heartbeat stops, its lease is not given back.
    let run_id = claim.run_id;
    drop(claim);
    let died = Instant::now();
    let taken = loop {
        if let Some(taken) = two.claim_run().await.unwrap() {
            break taken;
        }
        assert!(died.elapsed() < Duration::from_secs(10), "never taken over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(died.elapsed() >= Duration::from_millis(300));
    assert_eq!(taken.run_id, run_id);
    let (resumed, _) = two.start_claimed(run_id, taken.lock.fence()).await.unwrap();
    assert!(resumed, "a run with an earlier attempt is continued");
    let record = two.run(run_id).await.unwrap();
    let workers: Vec<&str> = record
        .attempt_log
        .iter()
        .map(|a| a.worker.as_str())
        .collect();
    assert_eq!(workers, ["w1", "w2"]);
    taken.lock.release().await;
}

/// PostgreSQL: two workers sending to one vendor account share its rate window, each request
/// waiting for the send time it reserved in the database; together they keep the window's
/// pace, as one process would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_a_vendor_accounts_rate_window() {
    use crate::broker::{Limits, SharedAccount, Window};
    let engine = Engine::postgres().await;
    let window = Window {
        requests: 20,
        period: Duration::from_secs(1),
        class: None,
    };
    let limits = |state: Arc<State>| {
        let mut limits = Limits::new(64, vec![window.clone()], "");
        limits.share(&SharedAccount {
            key: "mailerlite:acme".into(),
            slots: state.account_slots(),
        });
        Arc::new(limits)
    };
    let workers = [
        limits(engine.open("w1").await),
        limits(engine.open("w2").await),
    ];
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..40 {
        let limits = workers[i % 2].clone();
        sends.spawn(async move {
            let _slot = limits.admit(&http::Method::POST, "/batch").await;
            Instant::now()
        });
    }
    let mut at: Vec<Duration> = sends
        .join_all()
        .await
        .into_iter()
        .map(|t| t.duration_since(started))
        .collect();
    at.sort();
    // 40 requests at 20 a second (and the 2% margin): the last goes out after 39 intervals.
    let interval = Duration::from_secs(1).mul_f64(1.02 / 20.0);
    assert!(
        at[39] >= interval * 39 - Duration::from_millis(40),
        "40 requests in {:?}",
        at[39]
    );
    // No more than the window's 20 in any second.
    let most = at
        .iter()
        .map(|t| {
            at.iter()
                .filter(|u| **u >= *t && **u - *t < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(most <= 20, "{most} requests in one second");
}

/// Workers starting together on a new database: the schema is made once, by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_starting_at_once_migrate_a_new_database_once() {
    let url = test_postgres::database().await;
    let opened = futures_util::future::join_all((0..6).map(|_| State::connect(&url))).await;
    let states: Vec<State> = opened.into_iter().map(|s| s.unwrap()).collect();
    let key = MasterKey::generate();
    for state in &states {
        state.check_master_key(&key).await.unwrap();
    }
    connection(&states[3], &key, "acme", "k-us7").await;
    assert_eq!(states[5].connections().await.unwrap().len(), 1);
}

/// PostgreSQL: a worker whose lease was taken over (it stalled past the term and another
/// worker claimed the run) learns it at its next renewal, and its run is told to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_over_is_told_to_stop() {
    let url = test_postgres::database().await;
    let state = Arc::new(State::connect(&url).await.unwrap().with_worker("w1"));
    state.set_setting("lease-seconds", "2").await.unwrap();
    let key = MasterKey::generate();
    let acme = connection(&state, &key, "acme", "k-us7").await;
    let daily = export(&state, "daily", acme).await;
    let lock = state.lock_export(&daily).await.unwrap().unwrap();
    assert!(lock.fence().holds());
    // Another worker's takeover, as the database sees it.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE export_leases SET worker = 'w2', token = 'theirs' WHERE export_id = $1",
            &[&daily.id],
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), lock.fence().lost().cancelled())
        .await
        .expect("the keeper noticed the lease is no longer its own");
    assert!(!lock.fence().holds());
    assert_eq!(
        lock.fence().why().as_deref(),
        Some("another worker took its lease over")
    );
}

/// `sslmode=require` refuses a server that offers no TLS (the test server offers none), by
/// name; the default (`prefer`) uses TLS where the server has it and plain TCP otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_requiring_tls_refuses_a_server_without_it() {
    let url = test_postgres::database().await;
    let Err(err) = State::connect(&format!("{url}?sslmode=require")).await else {
        panic!("connected without TLS although the URL requires it");
    };
    let err = format!("{err:#}");
    assert!(err.contains("cannot connect to PostgreSQL at"), "{err}");
    assert!(!err.contains("password"), "{err}");
}

/// The tables and columns of a SQLite database, by table.
fn sqlite_columns(path: &std::path::Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let db = rusqlite::Connection::open(path).unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables
        .into_iter()
        .map(|table| {
            let mut columns: Vec<String> = db
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                // A table's own row id is there whether named or not.
                .filter(|c: &String| c != "rowid")
                .collect();
            columns.sort();
            (table, columns)
        })
        .collect()
}

/// The tables and columns of a PostgreSQL database, by table.
async fn postgres_columns(url: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut tables = std::collections::BTreeMap::<String, Vec<String>>::new();
    for row in client
        .query(
            "SELECT table_name, column_name FROM information_schema.columns
             WHERE table_schema = 'public' ORDER BY table_name, column_name",
            &[],
        )
        .await
        .unwrap()
    {
        tables.entry(row.get(0)).or_default().push(row.get(1));
    }
    tables
}

/// Every table and column of a new state's schema is in `upgraded` (which may keep columns
/// its engine no longer uses).
fn holds_the_schema(
    new: &std::collections::BTreeMap<String, Vec<String>>,
    upgraded: &std::collections::BTreeMap<String, Vec<String>>,
) {
    for (table, columns) in new {
        let have = upgraded
            .get(table)
            .unwrap_or_else(|| panic!("an upgraded state lacks the table {table}"));
        for column in columns {
            assert!(
                have.contains(column),
                "an upgraded state lacks {table}.{column}"
            );
        }
    }
}

/// A SQLite state made at every version of its engine's history before the schema was one
/// opens, and holds every table and column a new state has.
#[test]
fn a_sqlite_state_of_every_earlier_version_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.db");
    State::open(&new).unwrap();
    let new = sqlite_columns(&new);
    for version in 1..=super::legacy::SQLITE.len() {
        let path = dir.path().join(format!("v{version}.db"));
        {
            let db = rusqlite::Connection::open(&path).unwrap();
            for sql in &super::legacy::SQLITE[..version] {
                db.execute_batch(sql).unwrap();
            }
            db.pragma_update(None, "user_version", version).unwrap();
        }
        State::open(&path).unwrap();
        holds_the_schema(&new, &sqlite_columns(&path));
    }
}

/// The same on PostgreSQL, whose history had its own numbering (1 to 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_state_of_every_earlier_version_is_brought_up_to_date() {
    let fresh = test_postgres::database().await;
    State::connect(&fresh).await.unwrap();
    let new = postgres_columns(&fresh).await;
    for version in 1..=super::legacy::POSTGRES.len() {
        let url = test_postgres::database().await;
        {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for sql in &super::legacy::POSTGRES[..version] {
                client.batch_execute(sql).await.unwrap();
            }
            client
                .batch_execute(&format!(
                    "CREATE TABLE schema_version (version BIGINT NOT NULL);
                     INSERT INTO schema_version VALUES ({version})"
                ))
                .await
                .unwrap();
        }
        let state = State::connect(&url).await.unwrap();
        let key = MasterKey::generate();
        state.check_master_key(&key).await.unwrap();
        connection(&state, &key, "acme", "k-us7").await;
        holds_the_schema(&new, &postgres_columns(&url).await);
    }
}
