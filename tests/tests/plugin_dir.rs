//! The plugin directory is untrusted: a connector cannot choose where a credential goes, its
//! declared hosts must be vendor DNS names, files claiming one id are both set aside, only
//! regular files under the size cap are read, and compiling and `describe()` have deadlines.
//! Variants of the hostile connector (tests/src/hostile.rs) play the attackers.

use std::path::Path;
use std::time::Duration;

use connector_host::{Connection, ConnectorHost, Credential, HostOptions, Limits, Plugins, Secret};
use connector_tests::artifacts;
use connector_tests::harness::test_limits;
use connector_tests::hostile::{Tripwire, variant};
use serde_json::json;

const SECRET: &str = "plugin-dir-secret-3e9a77";

async fn open(dir: &Path, limits: Limits) -> ConnectorHost {
    let options = HostOptions {
        limits,
        cache_dir: Some(artifacts::COMPILE_CACHE.into()),
        ..HostOptions::default()
    };
    ConnectorHost::open(dir, options).await.unwrap()
}

/// The reason a file was skipped.
fn reason<'a>(plugins: &'a Plugins, file: &str) -> &'a str {
    plugins
        .skipped
        .iter()
        .find(|s| s.path.file_name().is_some_and(|n| n == file))
        .map(|s| s.reason.as_str())
        .unwrap_or_else(|| panic!("{file} was not skipped"))
}

fn loaded(plugins: &Plugins) -> Vec<&str> {
    plugins.loaded.iter().map(|p| p.info.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_cannot_choose_where_the_credential_goes() {
    let trip = Tripwire::start().await;
    let dir = tempfile::tempdir().unwrap();
    let at = trip.addr;
    for (file, id, url) in [
        (
            "loopback.wasm",
            "leak-loopback",
            format!("http://{at}/api/v3.3"),
        ),
        (
            "loopback-tls.wasm",
            "leak-loopback-tls",
            format!("https://{at}/api"),
        ),
        (
            "undeclared.wasm",
            "leak-undeclared",
            "https://collector.example.org/api".into(),
        ),
        (
            "userinfo.wasm",
            "leak-userinfo",
            "https://x@api.createsend.com/api".into(),
        ),
    ] {
        variant(dir.path(), file, json!({"id": id, "default_base_url": url}));
    }
    let host = open(dir.path(), test_limits()).await;
    let plugins = &*host.plugins();
    assert!(loaded(plugins).is_empty(), "{:?}", loaded(plugins));
    let tail = "a connector's own base URL must be https on one of its declared hosts (only an administrator may point a connection elsewhere)";
    for (file, words) in [
        (
            "loopback.wasm",
            format!(
                "connector `leak-loopback`'s default base URL `http://{at}/api/v3.3` is not https"
            ),
        ),
        (
            "loopback-tls.wasm",
            format!(
                "connector `leak-loopback-tls`'s default base URL `https://{at}/api` names a port other than 443"
            ),
        ),
        (
            "undeclared.wasm",
            "is on `collector.example.org`, which is not among its declared hosts".into(),
        ),
        (
            "userinfo.wasm",
            "`https://x@api.createsend.com/api` has a user name (userinfo)".into(),
        ),
    ] {
        let why = reason(plugins, file);
        assert!(why.contains(&words) && why.ends_with(tail), "{file}: {why}");
    }

    // A connection that names no base URL of its own cannot reach the connector at all.
    let connection = Connection {
        connector: "leak-loopback".into(),
        base_url: None,
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(SECRET.into())),
    };
    let err = format!(
        "{:#}",
        host.check_connection(&connection).await.unwrap_err()
    );
    assert!(
        err.starts_with("no connector `leak-loopback` in the plugin directory (loaded: none)"),
        "{err}"
    );
    assert!(err.contains("is not https"), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(trip.connections(), 0, "something connected to the listener");
    assert!(!trip.saw(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_hosts_that_are_not_vendor_dns_names_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    // Each class once here; every spelling of each class is in the host's unit tests.
    for (file, host) in [
        ("metadata.wasm", "169.254.169.254"),
        ("decimal-ip.wasm", "2130706433"),
        ("localhost.wasm", "localhost"),
        ("public-suffix.wasm", "*.co.uk"),
        ("with-port.wasm", "api.createsend.com:8443"),
    ] {
        let id = file.trim_end_matches(".wasm");
        variant(
            dir.path(),
            file,
            json!({"id": id, "hosts": [host], "default_base_url": format!("https://{host}/api")}),
        );
    }
    let host = open(dir.path(), test_limits()).await;
    let plugins = &*host.plugins();
    assert!(loaded(plugins).is_empty(), "{:?}", loaded(plugins));
    for (file, words) in [
        (
            "metadata.wasm",
            "declares the host `169.254.169.254`, which is an IP address (in any notation), not a DNS name",
        ),
        (
            "decimal-ip.wasm",
            "declares the host `2130706433`, which is an IP address",
        ),
        (
            "localhost.wasm",
            "declares the host `localhost`, which is not under a public suffix",
        ),
        (
            "public-suffix.wasm",
            "declares the host `*.co.uk`, which would cover every domain under the public suffix `co.uk`",
        ),
        (
            "with-port.wasm",
            "declares the host `api.createsend.com:8443`, which has a port",
        ),
    ] {
        let why = reason(plugins, file);
        assert!(why.contains(words), "{file}: {why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_files_claiming_one_id_are_both_set_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::CAMPAIGN_MONITOR, dir.path().join("cm.wasm")).unwrap();
    // A look-alike of the real connector, and two files fighting over one id.
    variant(
        dir.path(),
        "impostor.wasm",
        json!({"id": "campaign-monitor"}),
    );
    variant(dir.path(), "twin-a.wasm", json!({"id": "twin"}));
    variant(
        dir.path(),
        "twin-b.wasm",
        json!({"id": "twin", "display_name": "Twin B"}),
    );
    let host = open(dir.path(), test_limits()).await;
    let plugins = &*host.plugins();
    assert!(loaded(plugins).is_empty(), "{:?}", loaded(plugins));
    for file in ["cm.wasm", "impostor.wasm"] {
        assert!(
            reason(plugins, file)
                .starts_with("claims connector id `campaign-monitor`, as do 2 files in all"),
            "{}",
            reason(plugins, file)
        );
    }
    let twin = reason(plugins, "twin-b.wasm");
    assert!(
        twin.contains("twin-a.wasm") && twin.contains("twin-b.wasm"),
        "{twin}"
    );
    assert!(
        twin.ends_with("none is used until all but one are removed"),
        "{twin}"
    );
    let err = format!("{:#}", plugins.require("twin").unwrap_err());
    assert!(
        err.contains("skipped") && err.contains("claims connector id `twin`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_copies_of_one_connector_give_messages_one_can_read() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..30 {
        std::fs::copy(
            artifacts::CAMPAIGN_MONITOR,
            dir.path().join(format!("copy-{i:02}.wasm")),
        )
        .unwrap();
    }
    let host = open(dir.path(), test_limits()).await;
    let plugins = &*host.plugins();
    assert!(loaded(plugins).is_empty());
    let why = reason(plugins, "copy-17.wasm");
    assert!(
        why.contains("as do 30 files in all (")
            && why.contains("copy-00.wasm")
            && why.contains("26 more)"),
        "{why}"
    );
    let err = format!("{:#}", plugins.require("campaign-monitor").unwrap_err());
    assert!(
        err.contains("and 26 more files were skipped (`connector-host plugins` lists them all)"),
        "{err}"
    );
    // Four files named, each naming four: the message stays a few lines long, not 30 × 30.
    assert!(err.len() < 4000, "{} characters: {err}", err.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_regular_files_under_the_size_cap_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A 1 GiB file (sparse: nothing is written), inside and, through a symlink, outside.
    let huge = |path: &Path| {
        std::fs::File::create(path)
            .unwrap()
            .set_len(1 << 30)
            .unwrap()
    };
    huge(&d.join("huge.wasm"));
    huge(&outside.path().join("elsewhere.wasm"));
    std::os::unix::fs::symlink(
        outside.path().join("elsewhere.wasm"),
        d.join("outside.wasm"),
    )
    .unwrap();
    std::os::unix::fs::symlink(d.join("gone.wasm"), d.join("dangling.wasm")).unwrap();
    std::fs::create_dir(d.join("folder.wasm")).unwrap();
    let fifo = std::ffi::CString::new(d.join("pipe.wasm").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    std::fs::write(d.join("garbage.wasm"), b"\0asm but not really").unwrap();
    // A symlink to a component inside the directory is fine.
    std::fs::copy(artifacts::CAMPAIGN_MONITOR, d.join("real.bin")).unwrap();
    std::os::unix::fs::symlink(d.join("real.bin"), d.join("campaign-monitor.wasm")).unwrap();

    let host = open(d, test_limits()).await;
    let plugins = &*host.plugins();
    assert_eq!(loaded(plugins), ["campaign-monitor"]);
    for (file, words) in [
        (
            "huge.wasm",
            "is 1024.0 MiB, over the 32 MiB limit on plugin files",
        ),
        (
            "outside.wasm",
            "is a symlink leading outside the plugin directory",
        ),
        ("dangling.wasm", "is a symlink that leads nowhere"),
        ("folder.wasm", "is a directory, not a component file"),
        ("pipe.wasm", "is a FIFO, not a component file"),
        (
            "garbage.wasm",
            "not a WebAssembly component this host can compile",
        ),
        ("real.bin", "not a .wasm file"),
    ] {
        let why = reason(plugins, file);
        assert!(why.contains(words), "{file}: {why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiling_and_describe_have_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    variant(
        dir.path(),
        "sleeper.wasm",
        json!({"id": "sleeper", "sleep_ms": 60_000}),
    );
    variant(
        dir.path(),
        "spinner.wasm",
        json!({"id": "spinner", "spin": true}),
    );
    let limits = Limits {
        describe_timeout: Duration::from_secs(1),
        cpu_time: Some(Duration::from_millis(500)),
        ..test_limits()
    };
    let host = open(dir.path(), limits).await;
    let plugins = &*host.plugins();
    assert!(loaded(plugins).is_empty());
    assert_eq!(
        reason(plugins, "sleeper.wasm"),
        "describe failed: the connector did not finish within the 1 s call deadline"
    );
    assert!(
        reason(plugins, "spinner.wasm")
            .contains("the connector used more than its CPU budget of 500ms for one call"),
        "{}",
        reason(plugins, "spinner.wasm")
    );

    // Compiling is limited by its own CPU time; past its budget the component is skipped.
    let cm = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::CAMPAIGN_MONITOR, cm.path().join("cm.wasm")).unwrap();
    let options = HostOptions {
        limits: Limits {
            compile_cpu_time: Duration::from_millis(1),
            ..Limits::default()
        },
        cache_dir: None,
        ..HostOptions::default()
    };
    let host = ConnectorHost::open(cm.path(), options).await.unwrap();
    let reason = reason(&host.plugins(), "cm.wasm").to_string();
    assert!(
        reason.starts_with(
            "compiling it took more than the 0.001 s of CPU time a connector may take to compile"
        ) && reason.contains("raise --compile-cpu-seconds"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_describe_says_is_cleaned_before_anyone_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    variant(
        dir.path(),
        "shouty.wasm",
        json!({
            "id": "shouty",
            "display_name": "\u{1b}[2J\u{1b}[Hcampaign-monitor 9.9.9 (approved)\r",
            "version": format!("1.0\n{}", "v".repeat(3_000)),
            "label": "List ID\u{202e}reversed",
        }),
    );
    // A file name is connector-supplied text too.
    std::fs::write(dir.path().join("\u{1b}[31mevil.txt"), b"x").unwrap();
    let host = open(dir.path(), test_limits()).await;
    let plugins = &*host.plugins();
    let info = &plugins.require("shouty").unwrap().info;
    assert_eq!(
        info.display_name,
        "\\x1b[2J\\x1b[Hcampaign-monitor 9.9.9 (approved)\\r"
    );
    assert!(info.version.starts_with("1.0\\nvvv"), "{}", info.version);
    assert!(info.version.ends_with("more characters]") && info.version.len() < 200);
    assert_eq!(info.config_fields[0].label, "List ID\\u{202e}reversed");
    let skipped = plugins.skipped[0].describe();
    assert!(
        skipped.contains("\\x1b[31mevil.txt: not a .wasm file"),
        "{skipped}"
    );
    assert!(!skipped.contains('\u{1b}'));
}
