//! Keeping a saved setup going from the command line: rotating a credential, changing an
//! export, removing what is used, exit codes a script can act on, JSON for every listing,
//! the bundled connectors, bad rows in the profile files. Against the vendor simulators.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use connector_tests::artifacts;
use connector_tests::sim::Faults;
use serde_json::Value;
use support::*;

const NEW_KEY: &str = "rotated-secret-key-3b90f1d2";

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotate_and_exports_change_without_starting_over() {
    let op = Operator::new(71, 2_000);
    let (sim, client, list) = vendor(Duration::ZERO).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export("weekly", "acme", &list, &[]);
    op.ok(&["export", "run", "weekly"]);
    let fingerprint = field(&op.ok(&["connection", "show", "acme"]), "credential").to_string();

    // The vendor account's key is regenerated: the saved one no longer works.
    sim.rotate_key(&client, NEW_KEY);
    let (code, _, err) = op.code(&["connection", "test", "acme"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the vendor did not accept the credential"),
        "{err}"
    );

    // A wrong new key is refused and the old one kept; the right one replaces it.
    let rotate = ["connection", "update", "acme", "--rotate-credential"];
    let out = op
        .command(&rotate)
        .env("CONNECTOR_SECRET", "not-the-new-key")
        .output()
        .unwrap();
    op.keep_log(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("connection `acme` keeps its old credential"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        field(&op.ok(&["connection", "show", "acme"]), "credential"),
        fingerprint
    );
    let out = op
        .command(&rotate)
        .env("CONNECTOR_SECRET", NEW_KEY)
        .output()
        .unwrap();
    op.keep_log(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(
        field(&op.ok(&["connection", "show", "acme"]), "credential"),
        fingerprint
    );
    op.ok(&["connection", "test", "acme"]);
    let out = op.ok(&["export", "run", "weekly"]);
    assert!(out.contains("delta run"), "{out}");

    // Contributors may use it once the administrator says so.
    let as_contributor = ["--as", "contributor", "export", "run", "weekly"];
    assert!(op.fails(&as_contributor).contains("administrators only"));
    op.ok(&["connection", "update", "acme", "--contributors"]);
    op.ok(&as_contributor);

    // A changed mapping: checked with the vendor, saved, and the next run is full.
    op.ok(&[
        "export",
        "edit",
        "weekly",
        "--map",
        "email=email",
        "--map",
        "first-name=first_name",
    ]);
    let plan = op.ok(&["export", "run", "weekly", "--dry-run"]);
    assert!(plan.contains("the mapping changed from"), "{plan}");
    let out = op.ok(&["export", "run", "weekly"]);
    let id = run_id(&out);
    assert!(
        field(&op.ok(&["runs", "show", &id]), "mode").starts_with("full: the mapping changed"),
        "{out}"
    );

    // A change the vendor or the rules refuse leaves the export as it was.
    let (code, _, err) = op.code(&["export", "edit", "weekly", "--setting", "list-id=nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("export `weekly` was not changed"), "{err}");
    let (code, _, err) = op.code(&["export", "edit", "weekly", "--schedule", "0 0 30 2 *"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("never fires"), "{err}");
    let show = op.ok(&["export", "show", "weekly"]);
    assert_eq!(field(&show, "setting"), format!("list-id = {list}"));
    assert_eq!(field(&show, "schedule"), "none (on demand)");

    // Scheduled: the listing says when it runs next.
    op.ok(&["export", "edit", "weekly", "--schedule", "0 6 * * *"]);
    let listing = op.ok(&["export", "list"]);
    assert!(listing.contains("NEXT RUN"), "{listing}");
    let next = chrono::Utc::now().date_naive().succ_opt().unwrap();
    assert!(
        listing.contains(&format!("{} 06:00:00 UTC", next.format("%Y-%m-%d")))
            || listing.contains(&format!(
                "{} 06:00:00 UTC",
                chrono::Utc::now().format("%Y-%m-%d")
            )),
        "{listing}"
    );

    // Every listing and show speaks JSON.
    let connections = json(&op.ok(&["connection", "list", "--json"]));
    assert_eq!(connections[0]["name"], "acme");
    assert_eq!(connections[0]["access"], "contributors");
    assert_eq!(
        json(&op.ok(&["connection", "show", "acme", "--json"]))["connector"],
        "campaign-monitor"
    );
    let exports = json(&op.ok(&["export", "list", "--json"]));
    assert_eq!(exports[0]["export"]["name"], "weekly");
    assert!(
        exports[0]["next_run"]
            .as_str()
            .unwrap()
            .ends_with("06:00:00+00:00")
    );
    let shown = json(&op.ok(&["export", "show", "weekly", "--json"]));
    assert!(
        shown["sync_state"]["updated"].as_u64().unwrap() > 0,
        "{shown}"
    );
    let listed = json(&op.ok(&["runs", "--json"]));
    assert_eq!(
        shown["runs"].as_array().unwrap().len(),
        listed.as_array().unwrap().len()
    );
    assert_eq!(listed[0]["id"].to_string(), id);
    assert_eq!(
        json(&op.ok(&["runs", "show", &id, "--json"]))["status"],
        "succeeded"
    );
    let settings = json(&op.ok(&["settings", "show", "--json"]));
    assert!(
        settings["profiles"]
            .as_str()
            .unwrap()
            .ends_with("profiles.csv")
    );
    assert_eq!(settings["max-bad-rows"], Value::Null);
    let plugins = json(&op.ok(&["plugins", "--json"]));
    assert_eq!(plugins["connectors"].as_array().unwrap().len(), 2);
    let cm = json(&op.ok(&["plugins", "show", "campaign-monitor", "--json"]));
    assert_eq!(cm["approval"], "approved");
    let first_name = cm["contact_fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "first-name")
        .unwrap();
    assert_eq!(first_name["max_length"], 250);
    let shown = op.ok(&["plugins", "show", "campaign-monitor"]);
    assert!(
        shown.contains("field:     email (required) (Email): up to 254 characters"),
        "{shown}"
    );
    assert!(
        shown.contains("leave:     unsubscribe (Unsubscribe, IRREVERSIBLE)"),
        "{shown}"
    );

    op.assert_secrets_nowhere(&[API_KEY, NEW_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_outcomes_apart() {
    let op = Operator::new(72, 6_000);
    let (sim, _, list) = vendor(Duration::from_millis(300)).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export("slow", "acme", &list, &[]);

    // Usage and configuration: 2.
    assert_eq!(op.code(&["export", "run", "nope"]).0, 2);
    assert_eq!(op.code(&["export", "frobnicate"]).0, 2);
    assert_eq!(op.code(&["settings", "set", "max-bad-rows", "many"]).0, 2);

    // Interrupted by a signal: 3; the same export while a run is under way: 4.
    let mut first = op
        .command(&["export", "run", "slow", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while imports(&sim) < 1 {
        assert!(Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, err) = op.code(&["export", "run", "slow"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("export `slow` is already running"), "{err}");
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(3));

    // Finished, with contacts the vendor refused: 0, or 5 when asked to tell.
    let (code, out, _) = op.code(&["export", "run", "slow"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Invalid Email Address"), "{out}");
    let (code, _, _) = op.code(&["export", "run", "slow", "--full", "--fail-on-undelivered"]);
    assert_eq!(code, 5);

    // The vendor failing: 1, worded as what it is.
    sim.set_faults(Faults {
        error_every: 1,
        ..Faults::default()
    });
    let (code, _, err) = op.code(&["export", "run", "slow", "--full"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Campaign Monitor answered with an error"),
        "{err}"
    );
    sim.set_faults(Faults {
        reset_every: 1,
        ..Faults::default()
    });
    let (code, _, err) = op.code(&["connection", "test", "acme"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("could not reach Campaign Monitor"), "{err}");
    assert!(
        !err.contains("credential"),
        "a network failure worded as a credential one: {err}"
    );
    sim.set_faults(Faults::default());

    // A reader that goes away early ends the command quietly, never with a panic.
    for args in [&["runs"][..], &["export", "list"], &["plugins"]] {
        let mut child = op
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        use std::os::unix::process::ExitStatusExt as _;
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
    op.assert_credential_nowhere();
}

#[test]
fn the_bundled_connectors_install_into_the_default_plugin_directory() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_connector-host"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", &data)
            .env("CONNECTOR_HOST_CACHE", artifacts::COMPILE_CACHE)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            text(&out.stdout),
            text(&out.stderr),
        )
    };
    let dir = data.join("connector-host/plugins");
    let (code, out, err) = run(&["plugins", "install"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("installed"), "{out}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    for (file, built) in [
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("mailchimp.wasm", artifacts::MAILCHIMP),
    ] {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            std::fs::read(built).unwrap(),
            "{file} is not the connector this tree builds"
        );
    }
    let (code, listing, err) = run(&["plugins"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        listing.contains("campaign-monitor") && listing.contains("mailchimp"),
        "{listing}"
    );
    assert!(listing.contains("NOT APPROVED"), "{listing}");
    let (_, again, _) = run(&["plugins", "install"]);
    assert!(again.contains("is already installed"), "{again}");

    // A different file of the same name is replaced only when asked.
    std::fs::write(dir.join("mailchimp.wasm"), b"not this one").unwrap();
    let (code, _, err) = run(&["plugins", "install"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("differs from the bundled connector; give --force"),
        "{err}"
    );
    assert_eq!(run(&["plugins", "install", "--force"]).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_warned_of_skipped_recorded_and_capped_on_request() {
    let op = Operator::new(73, 200);
    let (sim, _, list) = vendor(Duration::ZERO).await;
    let data = op.path("data");
    // A ragged row, a byte that is not UTF-8 (Latin-1 "é"), and a quote that never closes.
    std::fs::write(
        data.join("messy.csv"),
        b"id,email,first_name,last_name\n\
          1,ada@example.com,Ada,Lovelace\n\
          2,grace@example.com,Grace\n\
          3,alan@example.com,Al\xe9n,Turing\n\
          4,edsger@example.com,Edsger,Dijkstra\n\
          5,barbara@example.com,Barbara,\"Liskov\n\
          6,donald@example.com,Donald,Knuth\n",
    )
    .unwrap();
    std::fs::write(
        data.join("messy-members.csv"),
        "profile_id,segment\n1,newsletter\n2,newsletter\n3,newsletter\n4,newsletter\n5,newsletter\n6,newsletter\n7,newsletter\n",
    )
    .unwrap();
    let profiles = data.join("messy.csv");
    let members = data.join("messy-members.csv");
    op.ok(&["settings", "set", "profiles", &profiles.to_string_lossy()]);
    op.ok(&["settings", "set", "memberships", &members.to_string_lossy()]);
    op.add_connection("acme", &sim, &[]);
    let out = op
        .command(&export_add("messy", "acme", &list))
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("3 of the first 1000 rows cannot be used"),
        "{err}"
    );
    assert!(
        err.contains("messy.csv line 3: 3 fields where the header has 4"),
        "{err}"
    );

    // Past the limit the run stops, failed, and says where.
    let (code, _, err) = op.code(&["export", "run", "messy", "--max-bad-rows", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: the run failed: reading profiles failed: more than 1 rows of the segment cannot be read (the last: messy.csv line 4"),
        "{err}"
    );
    // Without a limit: every row is accounted for, the bad ones with their line.
    let (code, out, err) = op.code(&["export", "run", "messy", "--fresh"]);
    assert_eq!(code, 0, "{err}");
    let id = run_id(&out);
    let show = op.ok(&["runs", "show", &id]);
    assert_eq!(field(&show, "rows read"), "7");
    assert_eq!(field(&show, "unreadable"), "3");
    assert_eq!(field(&show, "unknown profiles"), "1");
    assert_eq!(field(&show, "created"), "3");
    let csv = op.ok(&["runs", "rejections", &id, "--csv"]);
    for (id, code, place) in [
        (
            "2",
            "unreadable-row",
            "messy.csv line 3: 3 fields where the header has 4",
        ),
        (
            "3",
            "unreadable-row",
            "messy.csv line 4: column `first_name` is not UTF-8",
        ),
        (
            "5",
            "unreadable-row",
            "messy.csv line 6: a quote opened on this line never closes",
        ),
        (
            "7",
            "unknown-profile",
            "messy-members.csv line 8: the membership names profile `7`",
        ),
    ] {
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&format!("{id},")) && l.contains(code) && l.contains(place)),
            "{id} {code} {place}: {csv}"
        );
    }
    let held = sim.subscribers(&list);
    assert_eq!(held.len(), 3);
    for email in [
        "ada@example.com",
        "edsger@example.com",
        "donald@example.com",
    ] {
        assert!(held.contains_key(email), "{email}: {held:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_files_and_values_are_refused_with_their_reason() {
    use std::os::unix::fs::PermissionsExt;
    let op = Operator::new(72, 300);
    let (sim, _, list) = vendor(Duration::ZERO).await;
    op.add_connection("acme", &sim, &[]);
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    // Settings are checked when they are set, and a refused one is not changed.
    let err = op.fails(&["settings", "set", "id-column", "nope"]);
    assert!(err.contains("no `nope` id column"), "{err}");
    assert!(err.contains("id-column was not changed"), "{err}");
    let shown = json(&op.ok(&["settings", "show", "--json"]));
    assert_eq!(shown["id-column"], "id", "{shown}");
    let err = op.fails(&["settings", "set", "lease-seconds", "1"]);
    assert!(err.contains("from 2 to 3600"), "{err}");

    // An unknown run's rejections: an error, and nothing on stdout.
    let out = op.run(&["runs", "rejections", "99", "--csv"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("there is no run 99"));

    // A value no vendor should store is refused for that contact, named.
    let data = op.path("data");
    let append = |file: &str, line: &str| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join(file))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    };
    append("profiles.csv", "ctl1,ctl@example.com,Be\u{7}ll,Ringer,Oslo");
    append("memberships.csv", "ctl1,newsletter");
    op.add_export("weekly", "acme", &list, &[]);
    let out = op.ok(&["export", "run", "weekly"]);
    let id = run_id(&out);
    let csv = op.ok(&["runs", "rejections", &id, "--csv"]);
    let row = csv
        .lines()
        .find(|l| l.starts_with("ctl1,"))
        .unwrap_or_else(|| panic!("{csv}"));
    assert!(
        row.contains("control-character")
            && row.contains("first-name holds the control character U+0007"),
        "{row}"
    );
    assert!(!sim.subscribers(&list).contains_key("ctl@example.com"));

    // A UTF-16 file is named for what it is; a blank segment name is refused as such.
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(
            "id,email\r\n1,a@example.com\r\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    std::fs::write(data.join("utf16.csv"), utf16).unwrap();
    let out = op.run(&[
        "settings",
        "set",
        "profiles",
        &data.join("utf16.csv").to_string_lossy(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("looks like UTF-16"),
        "{}",
        text(&out.stderr)
    );
    let err = op.fails(&[
        "export",
        "add",
        "other",
        "--connection",
        "acme",
        "--setting",
        &format!("list-id={list}"),
        "--map",
        "email=email",
        "--segment",
        "newsletter",
    ]);
    assert!(
        err.contains("looks like UTF-16") && err.contains("save it as UTF-8"),
        "{err}"
    );
    op.ok(&[
        "settings",
        "set",
        "profiles",
        &data.join("profiles.csv").to_string_lossy(),
    ]);
    let err = op.fails(&[
        "export",
        "add",
        "blank",
        "--connection",
        "acme",
        "--setting",
        &format!("list-id={list}"),
        "--map",
        "email=email",
        "--segment",
        "   ",
    ]);
    assert!(err.contains("a segment's name cannot be blank"), "{err}");

    // What holds secrets or emails is its owner's alone: a new key's directories, a new
    // cache, the lock files of runs.
    let key = op.path("keys/nested/master.key");
    op.ok(&["key", "generate", "--file", &key.to_string_lossy()]);
    assert_eq!(mode(&op.path("keys")), 0o700);
    assert_eq!(mode(&op.path("keys/nested")), 0o700);
    assert_eq!(mode(&key), 0o600);
    let cache = op.path("cache/compiled");
    op.ok(&["plugins", "--cache-dir", &cache.to_string_lossy()]);
    assert_eq!(mode(&op.path("cache")), 0o700);
    assert_eq!(mode(&cache), 0o700);
    let locks: Vec<std::path::PathBuf> = std::fs::read_dir(op.path("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(!locks.is_empty());
    for lock in locks {
        assert_eq!(mode(&lock), 0o600, "{}", lock.display());
    }
}
