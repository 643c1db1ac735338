//! The `connector-host` command line, driven as an operator would, against the simulator.

use std::path::PathBuf;
use std::process::{Command, Output};

use connector_tests::artifacts;
use connector_tests::harness::plugin_dir;
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;

const API_KEY: &str = "cli-secret-key-5f2c9a81b0de";

/// The `connector-host` binary cargo built next to this test.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("connector-host");
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

async fn run(args: Vec<String>, secret: Option<&str>, state: &std::path::Path) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("CONNECTOR_SECRET")
        .env("CONNECTOR_HOST_STATE", state)
        .env("CONNECTOR_HOST_CACHE", artifacts::COMPILE_CACHE)
        // Every brokered request is traced at debug level; the traces must not leak the key.
        .env("RUST_LOG", "connector_host=debug");
    if let Some(secret) = secret {
        cmd.env("CONNECTOR_SECRET", secret);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_lists_plugins_and_runs_an_export_from_the_command_line() {
    let plugins = plugin_dir(&[("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR)]);
    std::fs::write(plugins.path().join("notes.md"), "hello").unwrap();
    let dir = plugins.path().to_string_lossy().into_owned();
    let state = tempfile::tempdir().unwrap();
    let state = state.path();

    let out = run(
        vec!["--plugins".into(), dir.clone(), "plugins".into()],
        None,
        state,
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("campaign-monitor 0.1.0 (Campaign Monitor), contract 0.3.0"),
        "{stdout}"
    );
    assert!(stdout.contains("setting:   list-id (required)"), "{stdout}");
    assert!(
        stdout.contains("leave:     unsubscribe (Unsubscribe, IRREVERSIBLE)"),
        "{stdout}"
    );
    assert!(stdout.contains("notes.md: not a .wasm file"), "{stdout}");
    assert!(stdout.contains("approval:  NOT APPROVED"), "{stdout}");

    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let client = sim.add_client("Acme", API_KEY);
    let list = sim.add_list(&client, "Main");
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), 11, 1_500).unwrap();
    let rejections = data.path().join("rejections.csv");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--plugins",
            &dir,
            "run",
            "--connector",
            "campaign-monitor",
            "--base-url",
            &sim.base_url(),
            "--setting",
            &format!("list-id={list}"),
            "--map",
            "email=email",
            "--map",
            "first-name=first_name",
            "--segment",
            "newsletter",
            "--profiles",
            &files.profiles.to_string_lossy(),
            "--memberships",
            &files.memberships.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // Nothing is sent through a connector no administrator approved.
    let out = run(args(&[]), Some(API_KEY), state).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("connector `campaign-monitor` has not been approved"),
        "{}",
        text(&out.stderr)
    );
    assert!(sim.requests().is_empty());
    let approve = vec![
        "--plugins".into(),
        dir.clone(),
        "plugins".into(),
        "approve".into(),
        "campaign-monitor".into(),
    ];
    let out = run(approve, None, state).await;
    assert!(
        text(&out.stdout).contains("approved connector `campaign-monitor` 0.1.0 (sha256:"),
        "{}",
        text(&out.stderr)
    );

    let out = run(args(&[]), None, state).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no credential: set the environment variable CONNECTOR_SECRET"),
        "{}",
        text(&out.stderr)
    );
    assert!(sim.requests().is_empty());

    let out = run(
        args(&["--rejections-csv", &rejections.to_string_lossy()]),
        Some(API_KEY),
        state,
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Export to campaign-monitor (newsletter): succeeded"),
        "{stdout}"
    );
    assert!(stdout.contains("Invalid Email Address"), "{stdout}");
    let active = sim.subscribers(&list).len();
    assert!(
        stdout
            .lines()
            .any(|l| l.trim().starts_with("created") && l.trim().ends_with(&active.to_string())),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(&rejections).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&rejections).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the CSV of emails is readable by others"
        );
    }
    assert!(
        csv.starts_with("profile_id,email,kind,stage,code,message,since\n"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.contains(",rejected,sent,1,Invalid Email Address,")),
        "{csv}"
    );
    assert!(
        stderr.contains("request finished"),
        "no request traces: {stderr}"
    );
    for output in [&stdout, &stderr, &csv] {
        assert!(!output.contains(API_KEY), "the credential was printed");
    }

    let out = run(args(&["--json"]), Some("not-the-key"), state).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "Campaign Monitor refused the credential (Campaign Monitor error 100: Invalid API Key)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-key"));
}

/// `plugins check` of a component against the kit's simulators: (exit code, stdout).
fn check(file: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .args(["plugins", "check", file])
        .args(extra)
        .env("CONNECTOR_HOST_CACHE", artifacts::COMPILE_CACHE)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// The line of one point, e.g. `FAIL  a second send ...`.
fn point<'a>(output: &'a str, point: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.contains(point))
        .unwrap_or_else(|| panic!("no point `{point}` in:\n{output}"))
}

#[test]
fn plugins_check_passes_the_four_real_connectors_on_every_point() {
    for (file, extra) in [
        (artifacts::CAMPAIGN_MONITOR, &[][..]),
        (artifacts::MAILCHIMP, &[][..]),
        (artifacts::MAILERLITE, &[][..]),
        (artifacts::BREVO, &[][..]),
    ] {
        let (code, out) = check(file, extra);
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains("FAIL"), "{out}");
        // What the kit's simulator assumed without a source is said, not hidden in a pass.
        assert!(
            out.contains("note  the simulator assumed what no source settles"),
            "{out}"
        );
        // Mailchimp's untag needs the export's membership tag, which the check does not give.
        let skipped: Vec<&str> = out.lines().filter(|l| l.starts_with("skip")).collect();
        assert!(
            skipped.iter().all(|l| l.contains("`untag` needs settings")),
            "{out}"
        );
        for p in [
            "refuses a wrong credential as unauthorized",
            "refuses a list the account lacks as not-found",
            "a second send updates, never duplicates",
            "a contact the vendor refuses is reported rejected",
            "never resubscribed",
            "(429) fails the batch as rate-limited",
            "(5xx) fails the batch as retryable",
            "leave action takes leavers out",
        ] {
            assert!(point(&out, p).starts_with("pass"), "{p}: {out}");
        }
    }
}

#[test]
fn plugins_check_fails_each_hostile_mode_on_the_point_it_breaks() {
    let hostile = |mode: &str| {
        let setting = format!("mode={mode}");
        check(
            artifacts::HOSTILE,
            &["--simulator", "campaign-monitor", "--setting", &setting],
        )
    };
    // Claims every contact created without sending anything.
    let (code, out) = hostile("accept");
    assert_eq!(code, 1, "{out}");
    assert!(
        point(&out, "a second send updates, never duplicates").starts_with("FAIL"),
        "{out}"
    );
    assert!(
        point(&out, "reported suppressed and never resubscribed").starts_with("FAIL"),
        "{out}"
    );
    // Its validate calls every failure a vendor error.
    assert!(
        point(&out, "refuses a wrong credential as unauthorized").starts_with("FAIL"),
        "{out}"
    );
    // Reports every contact rejected, whatever the vendor holds.
    let (code, out) = hostile("forged-report");
    assert_eq!(code, 1);
    assert!(
        point(&out, "reported suppressed and never resubscribed").starts_with("FAIL"),
        "{out}"
    );
    // A panic fails the batch points with the connector's words, and the check goes on.
    let (code, out) = hostile("panic");
    assert_eq!(code, 1);
    assert!(
        point(&out, "report accounts for every contact once").contains("gave up on purpose"),
        "{out}"
    );
    assert!(out.contains("points:"), "{out}");
    // A component that imports the filesystem does not load, and says why.
    let (code, out) = check(artifacts::FILE_READER, &[]);
    assert_eq!(code, 1);
    let line = point(&out, "loads as a connector");
    assert!(
        line.starts_with("FAIL") && line.contains("wasi:filesystem"),
        "{out}"
    );
}

/// `plugins check --base-url`, as README's example runs it against an author's own vendor: the
/// check's contacts carry names and one the vendor refuses; a malformed `--unknown-setting`,
/// which a correct connector refuses before asking the vendor, is named for what it is, and a
/// well-formed list the account lacks passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_check_by_base_url_runs_as_the_readme_shows() {
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let list = sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let check = |unknown: &str| {
        let (base_url, list, unknown) = (sim.base_url(), list.clone(), unknown.to_string());
        tokio::task::spawn_blocking(move || {
            let out = Command::new(binary())
                .args([
                    "plugins",
                    "check",
                    artifacts::CAMPAIGN_MONITOR,
                    "--base-url",
                ])
                .arg(&base_url)
                .arg("--setting")
                .arg(format!("list-id={list}"))
                .arg("--unknown-setting")
                .arg(format!("list-id={unknown}"))
                .env("CONNECTOR_SECRET", API_KEY)
                .env("CONNECTOR_HOST_CACHE", artifacts::COMPILE_CACHE)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.code().unwrap_or(-1), text)
        })
    };
    let (code, out) = check("0123456789abcdef0123456789abcdef").await.unwrap();
    assert_eq!(code, 0, "{out}");
    for p in [
        "refuses a list the account lacks as not-found",
        "a contact the vendor refuses is reported rejected",
        "a second send updates, never duplicates",
    ] {
        assert!(point(&out, p).starts_with("pass"), "{p}: {out}");
    }
    // The names the check's contacts carry reached the vendor.
    let held = sim.subscribers(&list);
    assert!(
        held.values()
            .any(|s| s.email.starts_with("check-send-") && s.name.starts_with("Check Contact")),
        "no contact arrived with its name"
    );

    let (code, out) = check("nope").await.unwrap();
    assert_eq!(code, 1, "{out}");
    let line = point(&out, "refuses a list the account lacks as not-found");
    assert!(
        line.starts_with("FAIL") && line.contains("name a well-formed list the account lacks"),
        "{out}"
    );
}
