//! Shared by the CLI's tests: an operator's machine (plugins, state, master key, sample
//! profiles) driving the built `connector-host` binary, and a Campaign Monitor simulator.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use connector_tests::artifacts;
use connector_tests::harness::install_connectors;
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::{Behaviour, CampaignMonitorSim};
use tempfile::TempDir;

pub const API_KEY: &str = "operator-secret-key-7d41c09e";

/// A command-line argument as the helpers take it: `&str` or `String`.
pub trait Arg: AsRef<std::ffi::OsStr> + std::fmt::Debug {}
impl<T: AsRef<std::ffi::OsStr> + std::fmt::Debug> Arg for T {}

/// `connection add NAME` through `connector` at `base_url`, the privacy notice accepted.
pub fn connection_add(name: &str, connector: &str, base_url: &str) -> Vec<String> {
    [
        "connection",
        "add",
        name,
        "--connector",
        connector,
        "--base-url",
        base_url,
        "--accept-privacy-notice",
    ]
    .map(String::from)
    .to_vec()
}

/// `export add NAME` on `connection` to the Campaign Monitor list `list`: email, first and
/// last name mapped, segment `newsletter`.
pub fn export_add(name: &str, connection: &str, list: &str) -> Vec<String> {
    export_add_setting(name, connection, &format!("list-id={list}"))
}

/// `export add NAME` on `connection` with the one setting `setting` (`KEY=VALUE`): email,
/// first and last name mapped, segment `newsletter`.
pub fn export_add_setting(name: &str, connection: &str, setting: &str) -> Vec<String> {
    [
        "export",
        "add",
        name,
        "--connection",
        connection,
        "--setting",
        setting,
        "--map",
        "email=email",
        "--map",
        "first-name=first_name",
        "--map",
        "last-name=last_name",
        "--segment",
        "newsletter",
    ]
    .map(String::from)
    .to_vec()
}

/// An operator's machine: plugins, a state directory, a master key file, sample profiles.
pub struct Operator {
    pub root: TempDir,
    /// Where the state is: a directory under the root, or a PostgreSQL URL.
    pub state: String,
}

impl Operator {
    pub fn new(seed: u64, profiles: u64) -> Operator {
        Operator::on_state(seed, profiles, None)
    }

    /// An operator whose state is at `state` (a `postgres://` URL), else in a directory.
    pub fn on_state(seed: u64, profiles: u64, state: Option<String>) -> Operator {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("plugins")).unwrap();
        install_connectors(&root.path().join("plugins")).unwrap();
        std::fs::create_dir(root.path().join("data")).unwrap();
        sample::write_csv(&root.path().join("data"), seed, profiles).unwrap();
        let state = state.unwrap_or_else(|| root.path().join("state").display().to_string());
        let op = Operator { root, state };
        let out = op.ok(&["key", "generate"]);
        assert!(out.contains("wrote a new master key"), "{out}");
        for (key, file) in [
            ("profiles", "profiles.csv"),
            ("memberships", "memberships.csv"),
        ] {
            let path = op.root.path().join("data").join(file);
            op.ok(&["settings", "set", key, &path.to_string_lossy()]);
        }
        for connector in ["campaign-monitor", "mailchimp"] {
            op.ok(&["plugins", "approve", connector]);
        }
        op
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn command<S: Arg>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_connector-host"));
        cmd.args(args.iter().map(|a| a.as_ref()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CONNECTOR_HOST_PLUGINS", self.path("plugins"))
            .env("CONNECTOR_HOST_CACHE", artifacts::COMPILE_CACHE)
            .env("CONNECTOR_HOST_STATE", &self.state)
            .env("CONNECTOR_HOST_MASTER_KEY_FILE", self.path("master.key"))
            .env("CONNECTOR_HOST_USER", "dana")
            .env("CONNECTOR_SECRET", API_KEY)
            // Every brokered request is traced; the traces must not leak the key either.
            .env("RUST_LOG", "connector_host=debug")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run<S: Arg>(&self, args: &[S]) -> Output {
        let out = self.command(args).output().unwrap();
        self.keep_log(&out);
        out
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok<S: Arg>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command; its exit code, stdout and stderr.
    pub fn code<S: Arg>(&self, args: &[S]) -> (i32, String, String) {
        let out = self.run(args);
        let code = out.status.code().expect("exited, not killed");
        (code, text(&out.stdout), text(&out.stderr))
    }

    /// Runs a command that must fail; its stderr.
    pub fn fails<S: Arg>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded:\n{}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// Everything the CLI printed is kept, to search it for the credential at the end.
    pub fn keep_log(&self, out: &Output) {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("outputs.log"))
            .unwrap();
        log.write_all(&out.stdout).unwrap();
        log.write_all(&out.stderr).unwrap();
    }

    pub fn add_connection(&self, name: &str, sim: &CampaignMonitorSim, extra: &[&str]) -> String {
        let mut args = connection_add(name, "campaign-monitor", &sim.base_url());
        args.extend(extra.iter().map(|a| a.to_string()));
        self.ok(&args)
    }

    pub fn add_export(&self, name: &str, connection: &str, list: &str, extra: &[&str]) -> String {
        let mut args = export_add(name, connection, list);
        args.extend(extra.iter().map(|a| a.to_string()));
        self.ok(&args)
    }

    /// Asserts that no file under the root (state, logs, outputs) holds the API key.
    pub fn assert_credential_nowhere(&self) {
        self.assert_secrets_nowhere(&[API_KEY]);
    }

    /// Asserts that no file under the root holds any of `secrets`.
    pub fn assert_secrets_nowhere(&self, secrets: &[&str]) {
        let mut files = vec![];
        walk(self.root.path(), &mut files);
        if !self.state.starts_with("postgres") {
            assert!(files.iter().any(|f| f.ends_with("state.db")));
        }
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            for secret in secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a credential",
                    file.display()
                );
            }
        }
    }
}

/// A Campaign Monitor simulator answering each call after `latency`, with one client reached by
/// [`API_KEY`] and one list; returns the simulator, the client and the list.
pub async fn vendor(latency: Duration) -> (CampaignMonitorSim, String, String) {
    let behaviour = Behaviour {
        latency,
        ..Behaviour::default()
    };
    let sim = CampaignMonitorSim::start_with(0, behaviour).await.unwrap();
    let client = sim.add_client("Acme", API_KEY);
    let list = sim.add_list(&client, "Main");
    (sim, client, list)
}

pub fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number of the `run N` line an `export run` prints.
pub fn run_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("run ").or(l.strip_prefix("resumed run ")))
        .unwrap_or_else(|| panic!("no run id in {stdout}"))
        .trim()
        .to_string()
}

pub fn imports(sim: &CampaignMonitorSim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/import.json"))
        .count()
}

pub fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .unwrap_or_else(|| panic!("no `{name}` in {stdout}"))
        .trim()
}
