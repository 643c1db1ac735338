//! Third-party connectors as an operator meets them from the command line: nothing runs until
//! an administrator approved exactly that file and its hosts; a connector cannot send the
//! credential where it likes; what it says cannot forge or hide output; and a connector
//! flooding connections cannot starve `serve` of the files it needs.

mod support;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use connector_tests::hostile::{FloodVendor, Tripwire, variant};
use serde_json::json;
use support::*;

/// Saves a connection and an export through the hostile connector in `mode`.
fn hostile_export(op: &Operator, sim_url: &str, list: &str, mode: &str, extra: &[&str]) {
    op.ok(&connection_add("shady", "hostile", sim_url));
    let (list, mode) = (format!("list-id={list}"), format!("mode={mode}"));
    let mut args = vec![
        "export",
        "add",
        "shady-export",
        "--connection",
        "shady",
        "--setting",
        &list,
        "--setting",
        &mode,
        "--map",
        "email=email",
        "--segment",
        "newsletter",
    ];
    args.extend(extra);
    op.ok(&args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_of_the_file_that_was_reviewed() {
    let op = Operator::new(72, 50);
    let plugins = op.path("plugins");
    variant(&plugins, "hostile.wasm", json!({}));
    let reviewed: serde_json::Value =
        serde_json::from_str(&op.ok(&["plugins", "show", "hostile", "--json"])).unwrap();
    let reviewed = reviewed["sha256"].as_str().unwrap().to_string();
    assert_eq!(reviewed.len(), 64, "the full digest is shown: {reviewed}");

    // Swapped between the review and the approval: same id, other bytes.
    variant(
        &plugins,
        "hostile.wasm",
        json!({"display_name": "Hostile, swapped"}),
    );
    let now =
        connector_host::plugins::digest(&std::fs::read(plugins.join("hostile.wasm")).unwrap());
    let err = op.fails(&["plugins", "approve", "hostile", "--digest", &reviewed]);
    assert!(
        err.contains(&format!(
            "connector `hostile` was not approved: its file is sha256:{now}, not the sha256:{reviewed} that was reviewed"
        )),
        "{err}"
    );
    assert!(
        op.ok(&["plugins"]).contains("approval:  NOT APPROVED"),
        "a refused approval was recorded"
    );

    // The file as it is now, reviewed and approved by its digest.
    let approved = op.ok(&[
        "plugins",
        "approve",
        "hostile",
        "--digest",
        &format!("sha256:{now}"),
    ]);
    assert!(
        approved.starts_with(&format!(
            "approved connector `hostile` 0.1.0 (sha256:{now})"
        )),
        "{approved}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&op.ok(&["plugins", "show", "hostile", "--json"])).unwrap();
    assert_eq!(shown["approval"], "approved");
    assert_eq!(shown["sha256"], now.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_are_used_only_as_an_administrator_approved_them() {
    let op = Operator::new(71, 400);
    let plugins = op.path("plugins");
    variant(&plugins, "hostile.wasm", json!({}));
    let (sim, _, list) = vendor(Duration::ZERO).await;

    let listing = op.ok(&["plugins"]);
    assert!(
        listing.contains(
            "hostile 0.1.0 (Hostile test connector), contract 0.3.0\n  approval:  NOT APPROVED"
        ),
        "{listing}"
    );
    assert!(
        listing.contains(
            "  hosts:     api.createsend.com\n  base URL:  https://api.createsend.com/api/v3.3"
        ),
        "{listing}"
    );
    assert!(listing.contains("  sha256:    "), "{listing}");

    // Nobody can use it, and only an administrator can approve it.
    let err = op.fails(&connection_add("shady", "hostile", &sim.base_url()));
    assert!(err.contains("connector `hostile` has not been approved: an administrator must review what it asks for and approve it (`connector-host plugins` shows what it asks for; `connector-host plugins approve hostile` approves it)"), "{err}");
    assert!(op.ok(&["connection", "list"]).contains("no connections"));
    let err = op.fails(&["--as", "contributor", "plugins", "approve", "hostile"]);
    assert!(
        err.contains("only administrators may approve connectors"),
        "{err}"
    );
    assert!(sim.requests().is_empty(), "the vendor was reached");

    let approved = op.ok(&["plugins", "approve", "hostile"]);
    assert!(
        approved.starts_with("approved connector `hostile` 0.1.0 (sha256:"),
        "{approved}"
    );
    hostile_export(&op, &sim.base_url(), &list, "flood", &[]);
    assert!(op.run(&["export", "run", "shady-export"]).status.success());

    // The file changes: same id, same hosts, other bytes. Runs stop, and say why.
    variant(
        &plugins,
        "hostile.wasm",
        json!({"display_name": "Hostile, new and improved"}),
    );
    let listing = op.ok(&["plugins"]);
    assert!(
        listing.contains("approval:  CHANGED since it was approved: its content changed (sha256:"),
        "{listing}"
    );
    let requests = sim.requests().len();
    let err = op.fails(&["export", "run", "shady-export"]);
    assert!(
        err.contains("connector `hostile` changed since dana approved it at "),
        "{err}"
    );
    assert!(err.contains("its content changed"), "{err}");
    assert_eq!(
        sim.requests().len(),
        requests,
        "an unapproved connector reached the vendor"
    );
    // The run that could not start is in the history, with the reason.
    let history = op.ok(&["runs", "shady-export"]);
    let latest = history.lines().nth(1).unwrap();
    assert!(latest.contains(" failed "), "{history}");
    let shown = op.ok(&["runs", "show", latest.split_whitespace().next().unwrap()]);
    assert!(
        field(&shown, "error").starts_with("connector `hostile` changed since dana approved it"),
        "{shown}"
    );

    // Its hosts change: that needs a new approval too, and says which hosts.
    variant(
        &plugins,
        "hostile.wasm",
        json!({"hosts": ["api.createsend.com", "*.api.mailchimp.com"]}),
    );
    let err = op.fails(&["export", "run", "shady-export"]);
    assert!(err.contains("its hosts changed (approved: api.createsend.com; now: *.api.mailchimp.com, api.createsend.com)"), "{err}");
    op.ok(&["plugins", "approve", "hostile"]);
    assert!(op.run(&["export", "run", "shady-export"]).status.success());

    // A second file claiming the id: neither is used, both are reported.
    std::fs::copy(
        plugins.join("hostile.wasm"),
        plugins.join("hostile-copy.wasm"),
    )
    .unwrap();
    let listing = op.ok(&["plugins"]);
    for file in ["hostile.wasm", "hostile-copy.wasm"] {
        assert!(
            listing.contains(&format!(
                "{file}: claims connector id `hostile`, as do 2 files in all"
            )),
            "{listing}"
        );
    }
    let err = op.fails(&["export", "run", "shady-export"]);
    assert!(
        err.contains("no connector `hostile` in the plugin directory"),
        "{err}"
    );
    std::fs::remove_file(plugins.join("hostile-copy.wasm")).unwrap();

    // Revoked: stopped again.
    op.ok(&["plugins", "revoke", "hostile"]);
    let err = op.fails(&["export", "run", "shady-export"]);
    assert!(
        err.contains("connector `hostile` has not been approved"),
        "{err}"
    );
    op.assert_credential_nowhere();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_cannot_send_the_credential_where_it_likes() {
    let op = Operator::new(72, 200);
    let trip = Tripwire::start().await;
    let plugins = op.path("plugins");
    variant(
        &plugins,
        "leaky.wasm",
        json!({"id": "leaky", "default_base_url": format!("http://{}/api/v3.3", trip.addr)}),
    );
    let listing = op.ok(&["plugins"]);
    assert!(
        listing.contains(&format!(
            "leaky.wasm: connector `leaky`'s default base URL `http://{}/api/v3.3` is not https",
            trip.addr
        )),
        "{listing}"
    );
    let err = op.fails(&["plugins", "approve", "leaky"]);
    assert!(
        err.contains("no connector `leaky` in the plugin directory"),
        "{err}"
    );
    // Neither a saved connection nor a one-off run with no base URL of the operator's own.
    let err = op.fails(&[
        "connection",
        "add",
        "leak",
        "--connector",
        "leaky",
        "--accept-privacy-notice",
    ]);
    assert!(err.contains("is not https"), "{err}");
    let data = op.path("data");
    let err = op.fails(&[
        "run",
        "--connector",
        "leaky",
        "--setting",
        "list-id=x",
        "--setting",
        "mode=flood",
        "--map",
        "email=email",
        "--segment",
        "newsletter",
        "--profiles",
        &data.join("profiles.csv").to_string_lossy(),
        "--memberships",
        &data.join("memberships.csv").to_string_lossy(),
    ]);
    assert!(err.contains("no connector `leaky`"), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        trip.connections(),
        0,
        "something reached the connector's listener"
    );
    assert!(!trip.saw(API_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_text_never_reaches_a_terminal_or_a_spreadsheet_as_code() {
    let op = Operator::new(73, 400);
    variant(&op.path("plugins"), "hostile.wasm", json!({}));
    op.ok(&["plugins", "approve", "hostile"]);
    let (sim, _, list) = vendor(Duration::ZERO).await;
    hostile_export(&op, &sim.base_url(), &list, "forged-report", &[]);

    let out = op.run(&["export", "run", "shady-export"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains('\u{1b}') && !output.contains('\r'),
            "raw control characters: {output:?}"
        );
    }
    let summaries = stdout
        .lines()
        .filter(|l| l.starts_with("Export to"))
        .count();
    assert_eq!(summaries, 1, "a forged summary line: {stdout}");
    assert!(
        stdout.contains("Export to hostile (newsletter): succeeded"),
        "{stdout}"
    );
    let id = run_id(&stdout);

    let csv = op.ok(&["runs", "rejections", &id, "--csv"]);
    let mut rows = csv.lines().skip(1).peekable();
    assert!(rows.peek().is_some(), "{csv}");
    for row in rows {
        for cell in row.split(',') {
            let cell = cell.trim_matches('"');
            assert!(
                !cell.starts_with(['=', '+', '-', '@']),
                "a formula cell in {row}"
            );
        }
    }
    assert!(
        csv.contains(r#"'=HYPERLINK(""http://evil.example/"",""ok"")"#),
        "{csv}"
    );
    assert!(
        csv.contains("'+1+1") && csv.contains("'@SUM(A1:A9)\\u{202e}gnp.exe"),
        "{csv}"
    );
    let table = op.ok(&["runs", "rejections", &id]);
    assert!(
        !table.contains('\u{1b}') && !table.contains('\r'),
        "{table:?}"
    );

    // An error message is cleaned and cut too, on stderr and in the history.
    op.ok(&["export", "remove", "shady-export"]);
    op.ok(&[
        "export",
        "add",
        "loud",
        "--connection",
        "shady",
        "--setting",
        &format!("list-id={list}"),
        "--setting",
        "mode=forged-error",
        "--map",
        "email=email",
        "--segment",
        "newsletter",
    ]);
    let out = op.run(&["export", "run", "loud"]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains('\u{1b}') && stdout.contains("more characters]"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("Export to"))
            .count(),
        1,
        "{stdout}"
    );
    let history = op.ok(&["runs", "show", &run_id(&stdout)]);
    assert!(
        !history.contains('\u{1b}') && !history.contains('\r'),
        "{history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_need_no_connector_do_not_load_the_plugin_directory() {
    let op = Operator::new(74, 100);
    let (sim, _, list) = vendor(Duration::ZERO).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export("weekly", "acme", &list, &[]);
    // The plugin directory disappears (or holds a connector whose describe() never ends).
    std::fs::remove_dir_all(op.path("plugins")).unwrap();
    for args in [
        &["runs"][..],
        &["connection", "list"],
        &["connection", "show", "acme"],
        &["export", "list"],
        &["export", "show", "weekly"],
        &["settings", "show"],
        &["export", "remove", "weekly"],
    ] {
        op.ok(args);
    }
    let err = op.fails(&["plugins"]);
    assert!(err.contains("cannot read the plugin directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_flooding_connections_cannot_starve_serve_of_files() {
    let op = Operator::new(75, 600);
    variant(&op.path("plugins"), "hostile.wasm", json!({}));
    op.ok(&["plugins", "approve", "hostile"]);
    let (sim, _, list) = vendor(Duration::ZERO).await;
    // A slow vendor: each of the flood's requests holds its socket for a second.
    let flood = FloodVendor::start(Duration::from_secs(1)).await;
    let every_two_seconds = ["--schedule", "*/2 * * * * *"];
    hostile_export(
        &op,
        &flood.base_url(),
        &list,
        "connection-flood",
        &every_two_seconds,
    );
    op.add_connection("acme", &sim, &[]);
    op.add_export("healthy", "acme", &list, &every_two_seconds);

    // 128 file descriptors in all: 200 sockets at once would exhaust them.
    let mut serve = op.command(&["serve", "--poll-seconds", "0.5"]);
    unsafe {
        serve.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Its log goes to a file: a pipe nobody reads would fill and stall it.
    let log = op.path("serve.log");
    let child = serve
        .stdout(std::fs::File::create(op.path("serve.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    // The flood's batches in flight take long to finish: stop, then stop at once.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!stderr.contains("Too many open files"), "{stderr}");

    let healthy = op.ok(&["runs", "healthy"]);
    let succeeded = healthy
        .lines()
        .filter(|l| l.contains(" succeeded "))
        .count();
    assert!(succeeded >= 2, "{healthy}");
    let shady = op.ok(&["runs", "shady-export"]);
    assert!(
        shady.lines().count() >= 2,
        "the flood's run was not recorded: {shady}"
    );
    let peak = flood.peak();
    assert!(
        peak <= connector_host::broker::DEFAULT_MAX_IN_FLIGHT,
        "{peak} connections at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_behind_a_private_ca_is_trusted_only_with_ca_bundle() {
    use connector_tests::sim::Listen;
    use connector_tests::sim::campaign_monitor::{Behaviour, CampaignMonitorSim};
    use connector_tests::sim::tls::TestCa;
    let ca = TestCa::generate().unwrap();
    let sim = CampaignMonitorSim::start_on(Listen::tls(&ca), Behaviour::default())
        .await
        .unwrap();
    sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let op = Operator::new(3, 50);
    // Without the CA: refused before anything is sent, with the cause and the remedy.
    let refused = op.fails(&connection_add("acme", "campaign-monitor", &sim.base_url()));
    assert!(
        refused.contains("certificate it does not trust") && refused.contains("--ca-bundle"),
        "{refused}"
    );
    assert_eq!(sim.server().answered().0, 0);
    // With it, the connection is checked over TLS and saved.
    let bundle = op.path("vendor-ca.pem");
    ca.write_ca(&bundle).unwrap();
    let mut args = connection_add("acme", "campaign-monitor", &sim.base_url());
    args.extend(["--ca-bundle".to_string(), bundle.display().to_string()]);
    op.ok(&args);
    assert!(sim.server().answered().0 >= 1);
    assert!(sim.server().http2_connections() >= 1);
}
