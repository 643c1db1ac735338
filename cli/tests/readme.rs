//! README.md's operator section, run as written: the commands of its first-session block, in
//! order, in a fresh home directory, against a Campaign Monitor simulator. So the README cannot
//! drift from the program again.
//!
//! The block's `cargo` lines are what a reader runs to get the binary and a simulator; here the
//! binary is the one under test and the simulator starts in-process with the same account and
//! sample data `vendor-sim` gives (`--sample-data` writes them with the same generator).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use connector_tests::harness::Expected;
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;

/// The API key `vendor-sim campaign-monitor` gives its account by default.
const SIM_API_KEY: &str = "sim-api-key";

/// The commands of the shell block after `marker` in `readme`, continuation lines joined,
/// comments and blank lines left out.
fn commands(readme: &str, marker: &str) -> Vec<String> {
    let at = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no `{marker}`"));
    let block = readme[at..]
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```sh block after the marker");
    let mut commands = vec![];
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// The value following `flag` in a command line.
fn flag<'a>(command: &'a str, flag: &str) -> &'a str {
    let mut words = command.split_whitespace();
    words.find(|w| *w == flag);
    words
        .next()
        .unwrap_or_else(|| panic!("`{command}` has no {flag}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_section_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let commands = commands(&readme, "<!-- readme-test: operator -->");
    assert!(commands.len() > 10, "{commands:#?}");

    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_connector-host"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut sim: Option<(CampaignMonitorSim, String)> = None;
    let mut last_out = String::new();
    let mut everything = String::new();
    let mut segment = None;
    for command in &commands {
        if let Some(rest) = command.strip_prefix("cargo ") {
            if rest.starts_with("build -p connector-host-cli") {
                // The binary under test, first on PATH.
                continue;
            }
            assert!(
                rest.starts_with("run -p connector-tests --bin vendor-sim -- campaign-monitor"),
                "a cargo line this test does not know: {command}"
            );
            let data = work.path().join(flag(command, "--sample-data"));
            sample::write_csv(&data, sample::README_SEED, sample::README_PROFILES).unwrap();
            let started = CampaignMonitorSim::start(0).await.unwrap();
            let client = started.add_client("Simulated client", SIM_API_KEY);
            let list = started.add_list(&client, "Simulated list");
            sim = Some((started, list));
            continue;
        }
        let (running, list) = sim
            .as_ref()
            .expect("the simulator starts before it is used");
        let line = command
            .replace("<api key>", SIM_API_KEY)
            .replace("<simulator URL>", &running.base_url())
            .replace("<list ID>", list);
        assert!(
            !line.contains('<'),
            "a placeholder this test does not fill: {line}"
        );
        if line.contains("--segment") {
            segment = Some(flag(&line, "--segment").to_string());
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .current_dir(work.path())
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &home)
            .env("USER", "dana")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "`{line}` failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        everything.push_str(&stdout);
        everything.push_str(&stderr);
        last_out = stdout;
    }

    // The list holds exactly the segment's deliverable contacts.
    let (running, list) = sim.unwrap();
    let expected = Expected::for_segment(
        sample::README_SEED,
        sample::README_PROFILES,
        &segment.expect("an export with a segment"),
    );
    let held: BTreeSet<String> = running.subscribers(&list).into_keys().collect();
    let want: BTreeSet<String> = expected.delivered.keys().cloned().collect();
    assert_eq!(held, want);

    // Every contact not delivered is in the CSV, which only its owner may read.
    let csv = work.path().join("rejections.csv");
    let mode = std::fs::metadata(&csv).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let rows = std::fs::read_to_string(&csv).unwrap().lines().count() as u64 - 1;
    let undelivered = expected.profiles - expected.delivered.len() as u64;
    assert_eq!(
        rows,
        undelivered,
        "{}",
        std::fs::read_to_string(&csv).unwrap()
    );

    // The last run found nothing to send; no command showed the key; defaults were used.
    assert!(last_out.contains("delta run"), "{last_out}");
    let sent = last_out
        .lines()
        .find_map(|l| l.trim().strip_prefix("sent"))
        .map(str::trim);
    assert_eq!(sent, Some("0"), "{last_out}");
    assert!(!everything.contains(SIM_API_KEY));
    for made in [
        ".config/connector-host/master.key",
        ".local/share/connector-host/plugins/campaign-monitor.wasm",
        ".local/state/connector-host/state.db",
    ] {
        assert!(home.join(made).exists(), "{made}");
    }
}

/// The help of `connector-host` with `path` (subcommands), or `None` if there is no such command.
fn help(path: &[&str]) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_connector-host"))
        .args(path)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `a | b [c | d]` as `a` and `b [c | d]`: the bars outside brackets.
fn alternatives(command: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth) = (vec![], String::new(), 0);
    for c in command.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '|' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

/// Every command the reference block names exists, with every option it shows, and each of
/// their arguments and options has help.
#[test]
fn every_command_and_option_the_readme_names_exists() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let commands = commands(&readme, "### Every command");
    assert!(commands.len() > 10, "{commands:#?}");
    let mut checked = 0;
    for command in &commands {
        let command = command.split(" #").next().unwrap();
        let mut parent: Vec<String> = vec![];
        for (i, alternative) in alternatives(command).into_iter().enumerate() {
            let words: Vec<&str> = alternative
                .split_whitespace()
                .skip_while(|w| *w == "connector-host")
                .collect();
            let names: Vec<&str> = words
                .iter()
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .copied()
                .collect();
            // `connection list | show NAME`: later alternatives are under the first's command.
            let path: Vec<String> = if i > 0 && help(&names[..1]).is_none() {
                parent
                    .iter()
                    .cloned()
                    .chain(names.iter().map(|n| n.to_string()))
                    .collect()
            } else {
                names.iter().map(|n| n.to_string()).collect()
            };
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            if i == 0 {
                parent = vec![names[0].to_string()];
            }
            let text = help(&path).unwrap_or_else(|| panic!("no command `{}`", path.join(" ")));
            // Every argument and option says what it is.
            for line in text
                .lines()
                .filter(|l| l.trim_start().starts_with(['<', '-']))
            {
                let described = line.trim().contains("  ")
                    || text
                        .lines()
                        .skip_while(|l| *l != line)
                        .nth(1)
                        .is_some_and(|next| next.starts_with("          "));
                assert!(
                    described,
                    "`connector-host {}`: `{}` has no help",
                    path.join(" "),
                    line.trim()
                );
            }
            for option in words
                .iter()
                .filter(|w| w.trim_start_matches('[').starts_with("--"))
            {
                let option = option
                    .trim_start_matches('[')
                    .split([']', '='])
                    .next()
                    .unwrap();
                assert!(
                    text.contains(&format!("{option} ")) || text.contains(&format!("{option}\n")),
                    "`connector-host {}` has no {option}",
                    path.join(" ")
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "only {checked} options checked");
}
