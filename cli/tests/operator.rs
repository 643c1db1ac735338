//! The saved product as an operator uses it from the command line: connections, exports, runs,
//! history, schedules, and a run that survives SIGKILL. Against the vendor simulators.

mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use connector_tests::harness::{Expected, install_connectors};
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_keeps_connections_and_exports_and_reads_the_history() {
    let (seed, count) = (61, 3_000);
    let op = Operator::new(seed, count);
    let (sim, _, list) = vendor(Duration::ZERO).await;

    // A connection is never saved without the privacy notice, nor with a key the vendor refuses.
    let base_url = sim.base_url();
    let add = [
        "connection",
        "add",
        "acme",
        "--connector",
        "campaign-monitor",
        "--base-url",
        &base_url,
    ];
    let err = op.fails(&add);
    assert!(
        err.contains("the data-privacy notice must be accepted"),
        "{err}"
    );
    let mut wrong_key = op.command(&[&add[..], &["--accept-privacy-notice"]].concat());
    let out = wrong_key
        .env("CONNECTOR_SECRET", "not-the-key")
        .output()
        .unwrap();
    op.keep_log(&out);
    let err = text(&out.stderr);
    assert!(
        err.contains("the vendor did not accept the credential") && err.contains("Invalid API Key"),
        "{err}"
    );
    let as_contributor = [
        &["--as", "contributor"][..],
        &add,
        &["--accept-privacy-notice"],
    ]
    .concat();
    let err = op.fails(&as_contributor);
    assert!(
        err.contains("only administrators may add connections"),
        "{err}"
    );
    assert!(op.ok(&["connection", "list"]).contains("no connections"));

    let out = op.add_connection("acme", &sim, &[]);
    assert!(out.contains("the vendor accepted the credential"), "{out}");
    // The fingerprint is keyed with the master key: whoever lacks it cannot test a guessed
    // key against it, as they could against a plain hash.
    let key = connector_host::MasterKey::from_file(&op.path("master.key")).unwrap();
    let fingerprint = key.fingerprint(&connector_host::Secret::new(API_KEY.into()));
    assert!(
        out.contains(&format!("credential fingerprint {fingerprint}")),
        "{out}"
    );
    let plain: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(API_KEY.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert!(!fingerprint.starts_with(&plain), "a plain hash of the key");
    let err = op.fails(&[&add[..], &["--accept-privacy-notice"]].concat());
    assert!(
        err.contains("a connection named `acme` already exists"),
        "{err}"
    );

    let list_out = op.ok(&["connection", "list"]);
    assert!(
        list_out.contains("acme") && list_out.contains("administrators"),
        "{list_out}"
    );
    let show = op.ok(&["connection", "show", "acme"]);
    assert!(
        show.contains(&format!("api-key fingerprint {fingerprint}")),
        "{show}"
    );
    assert!(
        field(&show, "privacy notice").starts_with("accepted by dana at 20"),
        "{show}"
    );
    assert!(
        op.ok(&["connection", "test", "acme"])
            .contains("accepted the credential")
    );

    // Saving an export validates everything and sends nothing.
    let refused_export = |prefix: &[&str], list_id: &str, segment: &str, extra: &[&str]| {
        let setting = format!("list-id={list_id}");
        let add = [
            "export",
            "add",
            "weekly",
            "--connection",
            "acme",
            "--setting",
            &setting,
            "--map",
            "email=email",
            "--segment",
            segment,
        ];
        op.fails(&[prefix, &add, extra].concat())
    };
    let err = refused_export(&[], &list, "newsletter", &["--schedule", "every monday"]);
    assert!(
        err.contains("the schedule `every monday` is not a cron expression"),
        "{err}"
    );
    let err = refused_export(&[], &list, "nope", &[]);
    assert!(err.contains("segment `nope` does not exist"), "{err}");
    let err = refused_export(&[], "0123456789abcdef0123456789abcdef", "newsletter", &[]);
    assert!(
        err.contains("the export did not validate") && err.contains("Invalid ListID"),
        "{err}"
    );
    let err = refused_export(&["--as", "contributor"], &list, "newsletter", &[]);
    assert!(
        err.contains(
            "dana acts as a contributor, and connection `acme` is open to administrators only"
        ),
        "{err}"
    );
    let out = op.add_export("weekly", "acme", &list, &["--schedule", "0 6 * * 1"]);
    assert!(out.contains("it has not run"), "{out}");
    assert_eq!(imports(&sim), 0, "saving an export sent contacts");
    let exports = op.ok(&["export", "list"]);
    assert!(
        exports.contains("weekly")
            && exports.contains("0 6 * * 1")
            && exports.contains("never run"),
        "{exports}"
    );
    let err = op.fails(&["--as", "contributor", "export", "run", "weekly"]);
    assert!(err.contains("open to administrators only"), "{err}");

    // A run, and what the history says of it.
    let out = op.ok(&["export", "run", "weekly"]);
    let id = run_id(&out);
    let expected = Expected::for_segment(seed, count, "newsletter");
    assert_eq!(sim.subscribers(&list).len(), expected.delivered.len());
    let runs = op.ok(&["runs", "weekly"]);
    assert!(
        runs.lines().nth(1).unwrap().starts_with(&format!("{id} ")),
        "{runs}"
    );
    assert!(runs.contains("succeeded"), "{runs}");
    let export = op.ok(&["export", "show", "weekly"]);
    assert_eq!(field(&export, "connection"), "acme (campaign-monitor)");
    assert_eq!(field(&export, "setting"), format!("list-id = {list}"));
    assert_eq!(
        field(&export, "mapping"),
        "email=email, first-name=first_name, last-name=last_name"
    );
    assert!(
        field(&export, "schedule").starts_with("0 6 * * 1 (UTC): "),
        "{export}"
    );
    assert!(
        export.contains(&format!("run #{id:<6} succeeded")),
        "{export}"
    );
    let show = op.ok(&["runs", "show", &id]);
    assert_eq!(field(&show, "status"), "succeeded");
    assert_eq!(field(&show, "rows read"), expected.profiles.to_string());
    assert!(
        field(&show, "sent").starts_with(&format!("{} (", expected.sent())),
        "{show}"
    );
    assert_eq!(
        field(&show, "created"),
        expected.delivered.len().to_string()
    );
    assert_eq!(field(&show, "rejected"), expected.invalid.len().to_string());
    assert_eq!(
        field(&show, "invalid"),
        (expected.missing_email + expected.refused_locally.len() as u64).to_string()
    );
    assert_eq!(field(&show, "duplicates"), expected.duplicates.to_string());
    let csv = op.ok(&["runs", "rejections", &id, "--csv"]);
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("profile_id,email,kind,stage,code,message,since")
    );
    let rows: Vec<&str> = rows.collect();
    assert_eq!(
        rows.len() as u64,
        expected.invalid.len() as u64
            + expected.refused_locally.len() as u64
            + expected.missing_email
            + expected.duplicates
    );
    for refused in &expected.refused_locally {
        assert!(
            rows.iter().any(|r| r.contains(&format!(
                ",{refused},invalid,skipped,invalid-email,Not an email address: "
            )) || r.contains(&format!(
                ",\"{refused}\",invalid,skipped,invalid-email,Not an email address: "
            ))),
            "{refused} missing from {csv}"
        );
    }
    for invalid in &expected.invalid {
        assert!(
            rows.iter()
                .any(|r| r.contains(&format!("{invalid},rejected,sent,1,Invalid Email Address,"))),
            "{invalid} missing from {csv}"
        );
    }
    assert!(
        rows.iter()
            .any(|r| r.contains(",invalid,skipped,missing-email,"))
    );

    // The per-run limit is a setting; a run over it is refused before anything is sent.
    let before = imports(&sim);
    op.ok(&["settings", "set", "max-profiles", "100"]);
    let err = op.fails(&["export", "run", "weekly"]);
    assert!(
        err.contains(&format!(
            "hold {} profiles, over the limit of 100 per run; nothing was sent",
            expected.profiles
        )),
        "{err}"
    );
    assert_eq!(imports(&sim), before);
    let refused = op.ok(&["runs", "weekly"]);
    assert!(
        refused.lines().nth(1).unwrap().contains("failed"),
        "{refused}"
    );
    let err = op.fails(&["settings", "set", "max-profiles", "lots"]);
    assert!(err.contains("must be a positive whole number"), "{err}");

    // Removing keeps the history readable; a contributor may not remove a connection.
    let err = op.fails(&["--as", "contributor", "connection", "remove", "acme"]);
    assert!(
        err.contains("only administrators may remove connections"),
        "{err}"
    );
    op.ok(&["export", "remove", "weekly"]);
    assert!(op.ok(&["export", "list"]).contains("no exports"));
    assert!(
        op.fails(&["export", "run", "weekly"])
            .contains("there is no export named `weekly`")
    );
    assert_eq!(field(&op.ok(&["runs", "show", &id]), "status"), "succeeded");
    op.add_export("daily", "acme", &list, &["--schedule", "0 6 * * *"]);
    // Exports use it: it stays unless their removal is asked for too.
    let err = op.fails(&["connection", "remove", "acme"]);
    assert!(
        err.contains("connection `acme` is used by export daily; remove that export first, or give --with-exports to remove it too"),
        "{err}"
    );
    assert!(op.ok(&["export", "list"]).contains("daily"));
    let out = op.ok(&["connection", "remove", "acme", "--with-exports"]);
    assert!(
        out.contains("removed with it, schedules stopped: daily"),
        "{out}"
    );
    assert!(
        op.fails(&["connection", "show", "acme"])
            .contains("there is no connection named `acme`")
    );
    assert!(op.ok(&["runs"]).contains("weekly"));

    op.assert_credential_nowhere();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_need_the_right_master_key() {
    let op = Operator::new(62, 200);
    let (sim, _, _) = vendor(Duration::ZERO).await;
    op.add_connection("acme", &sim, &["--contributors"]);

    let other = tempfile::tempdir().unwrap();
    let other_key = other.path().join("other.key");
    connector_host::MasterKey::create_file(&other_key).unwrap();
    let err = op.fails(&[
        "--master-key-file",
        &other_key.to_string_lossy(),
        "connection",
        "test",
        "acme",
    ]);
    assert!(
        err.contains("wrong master key: this state's credentials are sealed with key"),
        "{err}"
    );

    let out = op
        .command(&["connection", "test", "acme"])
        .env("CONNECTOR_HOST_MASTER_KEY", "not a key")
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("the master key is not base64"),
        "{}",
        text(&out.stderr)
    );

    let missing = op.path("missing.key");
    let err = op.fails(&[
        "--master-key-file",
        &missing.to_string_lossy(),
        "connection",
        "test",
        "acme",
    ]);
    assert!(err.contains("cannot read the master key file"), "{err}");

    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        op.path("master.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = op.fails(&["connection", "test", "acme"]);
    assert!(err.contains("is open to other users (mode 0644)"), "{err}");
    std::fs::set_permissions(
        op.path("master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // Without any key, credentials stay out of reach, but listing needs none.
    let keyless = |args: &[&str]| {
        op.command(args)
            .env_remove("CONNECTOR_HOST_MASTER_KEY_FILE")
            .env("HOME", other.path())
            .output()
            .unwrap()
    };
    let out = keyless(&["connection", "test", "acme"]);
    assert!(
        text(&out.stderr).contains("no master key: set CONNECTOR_HOST_MASTER_KEY"),
        "{}",
        text(&out.stderr)
    );
    let out = keyless(&["connection", "list"]);
    assert!(
        text(&out.stdout).contains("administrators, contributors"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        op.ok(&["--as", "contributor", "connection", "test", "acme"])
            .contains("accepted")
    );
    op.assert_credential_nowhere();
}

/// Starts `export run` and kills it with SIGKILL once `imports` batches reached the vendor.
fn kill_after(op: &Operator, sim: &CampaignMonitorSim, export: &str, imports_before_kill: usize) {
    let mut child: Child = op
        .command(&["export", "run", export, "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while imports(sim) < imports_before_kill {
        assert!(Instant::now() < deadline, "the run never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
}

/// A `--full` run killed before anything settled is not lost: it waits, the next run
/// continues it, and it stays the full run that was asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_killed_before_it_settled_anything_is_continued_in_full() {
    let (seed, count) = (64, 3_000);
    let op = Operator::new(seed, count);
    let (sim, _, list) = vendor(Duration::from_millis(800)).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export("nightly", "acme", &list, &[]);
    op.ok(&["export", "run", "nightly"]);
    let first_imports = imports(&sim);

    let mut child: Child = op
        .command(&["export", "run", "nightly", "--full"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once its imports are on their way (each takes 0.8 s): nothing settled yet.
    let asked = sim.requests().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sim.requests().len() == asked {
        assert!(Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&op.ok(&["runs", "show", "2", "--json"])).unwrap();
    assert_eq!(shown["status"], "waiting", "{shown:#}");
    assert!(
        shown["counts"].is_null() || shown["profiles"] == 0,
        "{shown:#}"
    );

    let out = op.ok(&["export", "run", "nightly"]);
    assert!(out.starts_with("resumed run 2"), "{out}");
    let shown: serde_json::Value =
        serde_json::from_str(&op.ok(&["runs", "show", "2", "--json"])).unwrap();
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    assert!(
        shown["mode"].as_str().unwrap().starts_with("full"),
        "{shown:#}"
    );
    // Everything was sent again, as the full run asked.
    assert!(imports(&sim) >= 2 * first_imports, "{out}");
    let expected = Expected::for_segment(seed, count, "newsletter");
    assert_eq!(
        shown["updated"].as_u64().unwrap(),
        expected.delivered.len() as u64,
        "{shown:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_sigkill_resumes_from_its_checkpoint() {
    let (seed, count) = (63, 24_000);
    let op = Operator::new(seed, count);
    let (sim, _, list) = vendor(Duration::from_millis(150)).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export("nightly", "acme", &list, &[]);

    kill_after(&op, &sim, "nightly", 4);
    // Its process is gone: the run waits for a worker (or the next run) to continue it.
    let runs = op.ok(&["runs", "nightly"]);
    assert!(
        runs.lines()
            .nth(1)
            .unwrap()
            .contains("waiting for a worker"),
        "{runs}"
    );
    let sent_before = imports(&sim);

    let out = op.ok(&["export", "run", "nightly"]);
    assert!(out.starts_with("resumed run "), "{out}");
    let id = run_id(&out);
    let expected = Expected::for_segment(seed, count, "newsletter");
    let batches = expected.sent().div_ceil(1000) as usize;
    // The summary tells of the whole run: the vendor's refusals of both attempts.
    let refused = out
        .lines()
        .find(|l| l.contains(" rejected [1] Invalid Email Address"))
        .unwrap_or_else(|| panic!("no vendor refusals in {out}"));
    assert_eq!(
        refused.split_whitespace().next(),
        Some(expected.invalid.len().to_string().as_str()),
        "{out}"
    );

    // Every contact delivered, once in the list, and at most the batch in flight at the kill
    // sent twice.
    let held = sim.subscribers(&list);
    assert_eq!(held.len(), expected.delivered.len());
    for email in expected.delivered.keys() {
        assert!(held.contains_key(email), "{email} was lost");
    }
    let total = imports(&sim);
    assert!(
        total <= batches + 1,
        "{total} imports for {batches} batches"
    );
    assert!(total >= batches);
    // The contacts the vendor acknowledged before the kill were not sent again (all but the
    // batch in flight, which the host never recorded).
    let resumed: usize = field(&out, "of which earlier").parse().unwrap();
    assert!(
        resumed >= (sent_before - 1) * 1000 && resumed <= sent_before * 1000,
        "resumed {resumed} contacts after {sent_before} imports"
    );

    let show = op.ok(&["runs", "show", &id]);
    assert_eq!(field(&show, "status"), "succeeded");
    assert!(
        field(&show, "attempts")
            .starts_with(&format!("2 (continued; {resumed} contacts settled earlier")),
        "{show}"
    );
    assert!(
        field(&show, "sent").starts_with(&format!("{} (", expected.sent())),
        "{show}"
    );
    assert_eq!(field(&show, "rows read"), expected.profiles.to_string());
    assert_eq!(field(&show, "rejected"), expected.invalid.len().to_string());
    assert_eq!(
        field(&show, "invalid"),
        (expected.missing_email + expected.refused_locally.len() as u64).to_string()
    );
    let csv = op.ok(&["runs", "rejections", &id, "--csv"]);
    assert_eq!(
        csv.lines().count() as u64 - 1,
        expected.invalid.len() as u64
            + expected.refused_locally.len() as u64
            + expected.missing_email
            + expected.duplicates,
        "each undelivered contact is listed once across both attempts"
    );

    // The run finished, so the next one starts anew.
    let out = op.ok(&["export", "run", "nightly"]);
    assert!(out.starts_with("run "), "{out}");
    op.assert_credential_nowhere();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_due_exports_and_stops_cleanly_on_sigterm() {
    let (seed, count) = (64, 16_000);
    let op = Operator::new(seed, count);
    let (sim, _, list) = vendor(Duration::from_millis(400)).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export(
        "every-second",
        "acme",
        &list,
        &["--schedule", "* * * * * *"],
    );

    let mut serve = op
        .command(&["serve", "--poll-seconds", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while imports(&sim) < 2 {
        assert!(Instant::now() < deadline, "serve never ran the export");
        assert!(serve.try_wait().unwrap().is_none(), "serve ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One run at a time per export, across processes.
    let err = op.fails(&["export", "run", "every-second"]);
    assert!(
        err.contains("export `every-second` is already running"),
        "{err}"
    );

    unsafe { libc_kill(serve.id() as i32, 15) };
    let stopped = Instant::now();
    let out = serve.wait_with_output().unwrap();
    op.keep_log(&out);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stopped.elapsed() < Duration::from_secs(20));
    assert!(
        stderr.contains("stopping: finishing the batches in flight"),
        "{stderr}"
    );
    assert!(stderr.contains("schedule fired: run queued"), "{stderr}");
    assert!(stderr.contains("run claimed"), "{stderr}");

    // The run stopped at a batch boundary and waits for the next worker; running the export
    // again completes it. The schedule's fires while it ran queued one more run (at most one
    // waits), which no worker claimed before the stop.
    let runs = op.ok(&["runs", "every-second"]);
    let first = runs.lines().find(|l| l.starts_with("1 ")).unwrap();
    assert!(
        first.contains("waiting for a worker") || first.contains("succeeded"),
        "{runs}"
    );
    let waiting = runs.lines().filter(|l| l.contains(" queued ")).count();
    assert!(waiting <= 1, "{runs}");
    let out = op.ok(&["export", "run", "every-second"]);
    let expected = Expected::for_segment(seed, count, "newsletter");
    assert_eq!(
        sim.subscribers(&list).len(),
        expected.delivered.len(),
        "{out}"
    );
    op.assert_credential_nowhere();
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_run_over_a_million_profiles_is_refused_before_sending() {
    use std::sync::Arc;

    use connector_host::{
        Access, Actor, ConnectionRequest, Credential, ExportRequest, FieldMapping, MasterKey,
        NoProgress, Role, RunRequest, Secret, Workspace,
    };
    use connector_tests::harness::open_host;
    use connector_tests::sample::GeneratedSource;

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    install_connectors(&dir.path().join("plugins")).unwrap();
    let host = Arc::new(open_host(&dir.path().join("plugins")).await);
    // The embedder places the state where it likes and brings its own profile source.
    let source = GeneratedSource {
        seed: 65,
        count: 1_000_001,
    };
    let workspace = Workspace::open_file(&dir.path().join("platform/exports.db"))
        .unwrap()
        .with_host(host)
        .with_master_key(MasterKey::generate())
        .await
        .unwrap()
        .with_source(Arc::new(source));
    let (sim, _, list) = vendor(Duration::ZERO).await;
    let admin = Actor {
        name: "platform".into(),
        role: Role::Administrator,
    };
    workspace
        .approve_connector(&admin, "campaign-monitor", None)
        .await
        .unwrap();
    workspace
        .add_connection(
            &admin,
            ConnectionRequest {
                name: "acme".into(),
                connector: "campaign-monitor".into(),
                base_url: Some(sim.base_url()),
                data_centre: None,
                credential: Credential::ApiKey(Secret::new(API_KEY.into())),
                token_expires_in: None,
                access: Access::Administrators,
                accept_privacy_notice: true,
            },
        )
        .await
        .unwrap();
    workspace
        .add_export(
            &admin,
            ExportRequest {
                name: "all".into(),
                connection: "acme".into(),
                settings: vec![("list-id".into(), list.clone())],
                mapping: FieldMapping::parse(&["email=email"]).unwrap(),
                segments: vec!["everyone".into()],
                schedule: None,
                leave_action: None,
                confirm_irreversible: false,
            },
        )
        .await
        .unwrap();

    let err = workspace
        .run_export(&admin, "all", RunRequest::default(), &NoProgress, None)
        .await
        .err()
        .expect("a run over the limit was let through");
    let err = format!("{err:#}");
    assert!(
        err.contains("the export's segments hold 1000001 profiles, over the limit of 1000000 per run; nothing was sent"),
        "{err}"
    );
    assert_eq!(imports(&sim), 0);
    assert!(sim.subscribers(&list).is_empty());
    let runs = workspace.runs(&admin, Some("all"), 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, connector_host::workspace::RunState::Failed);
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("1000001 profiles")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_oauth_token_is_renewed_by_the_host() {
    let (seed, count) = (66, 1_500);
    let op = Operator::new(seed, count);
    let (sim, client, list) = vendor(Duration::ZERO).await;
    let (access, refresh) = sim.issue_oauth_tokens(&client, Duration::from_secs(3600));
    let token_url = sim.token_url();
    let base_url = sim.base_url();
    let add = [
        "connection",
        "add",
        "acme-oauth",
        "--connector",
        "campaign-monitor",
        "--base-url",
        &base_url,
        "--oauth",
        "--refresh-token-env",
        "CM_REFRESH",
        "--token-url",
        &token_url,
        "--expires-in",
        "30",
        "--accept-privacy-notice",
    ];
    let out = op
        .command(&add)
        .env("CONNECTOR_SECRET", &access)
        .env("CM_REFRESH", &refresh)
        .output()
        .unwrap();
    op.keep_log(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = op.ok(&["connection", "show", "acme-oauth"]);
    let old_fingerprint = field(&show, "credential").to_string();
    assert!(old_fingerprint.starts_with("oauth fingerprint "), "{show}");

    // The token expires within the minute, so its next use renews it first.
    op.add_export("oauth-export", "acme-oauth", &list, &[]);
    let show = op.ok(&["connection", "show", "acme-oauth"]);
    assert_ne!(field(&show, "credential"), old_fingerprint, "{show}");
    let expires = field(&show, "token expires");
    assert!(expires.len() == 20 && expires > "2026-01-01", "{show}");

    op.ok(&["export", "run", "oauth-export"]);
    let expected = Expected::for_segment(seed, count, "newsletter");
    assert_eq!(sim.subscribers(&list).len(), expected.delivered.len());
    let log = sim.requests();
    let renewed = log
        .iter()
        .rev()
        .find_map(|r| r.authorization.as_deref()?.strip_prefix("Bearer "))
        .unwrap()
        .to_string();
    assert_ne!(renewed, access);
    let bearer = format!("Bearer {renewed}");
    assert!(
        log.iter()
            .filter(|r| r.path.ends_with("/import.json"))
            .all(|r| r.authorization.as_deref() == Some(bearer.as_str()))
    );
    // The renewal spent the old refresh token.
    let (status, _, body) = connector_tests::harness::http(
        "POST",
        &token_url,
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    op.assert_secrets_nowhere(&[API_KEY, &access, &refresh, &renewed]);
}
