//! Profile files as real exports have them: ragged rows, bytes that are not UTF-8, quotes that
//! never close, bad JSON lines, repeated ids, memberships naming no profile, addresses in any
//! case or with internationalised domains, values longer than a vendor takes. Each corpus in
//! `tests/corpus/bad-input/` lists the outcome of every row (`expected.tsv`); it is exported to
//! both vendors' simulators, and every row must end as listed: nothing stops the run, nothing
//! vanishes, nothing the host refuses reaches a vendor, and the report adds up. A mapping to a
//! field the vendor's list lacks is refused when the export is checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use connector_host::{
    Connection, Credential, Export, FieldMapping, FileSource, IssueKind, NoProgress, ProfileSource,
    RunIssue, RunOptions, RunReport, Secret, Stage,
};
use connector_tests::artifacts;
use connector_tests::harness::{open_host, plugin_dir};
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;
use connector_tests::sim::mailchimp::MailchimpSim;

/// One row of an `expected.tsv`.
#[derive(Debug)]
struct Outcome {
    /// The profile id, or `None` where the row's id cannot be read.
    id: Option<String>,
    /// `sent`, `absent`, `rejected`, or the host's code for a contact not sent.
    outcome: String,
    detail: String,
    /// For a sent row: first and last name as the vendor holds them.
    name: String,
}

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus/bad-input")
        .join(name)
}

fn expected(dir: &Path) -> Vec<Outcome> {
    let text = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    let unescape = |s: &str| s.replace("\\n", "\n").replace("\\r", "\r");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert!(cells.len() >= 3, "expected.tsv: {line}");
            Outcome {
                id: (cells[0] != "-").then(|| cells[0].to_string()),
                outcome: cells[1].to_string(),
                detail: unescape(cells[2]),
                name: cells.get(3).map(|n| unescape(n)).unwrap_or_default(),
            }
        })
        .collect()
}

/// The source of a corpus: its profile file (CSV or JSON Lines) and memberships.
fn source(dir: &Path) -> FileSource {
    let file = |stem: &str| {
        ["csv", "jsonl"]
            .iter()
            .map(|ext| dir.join(format!("{stem}.{ext}")))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{}: no {stem} file", dir.display()))
    };
    FileSource::new(file("profiles"), file("memberships"), "id").unwrap()
}

fn export(settings: Vec<(String, String)>) -> Export {
    Export {
        settings,
        mapping: FieldMapping::parse(&[
            "email=email",
            "first-name=first_name",
            "last-name=last_name",
        ])
        .unwrap(),
        segments: vec!["corpus".into()],
        leave_action: None,
    }
}

/// A vendor simulator with one empty list, and what its list holds after a run.
enum Vendor {
    CampaignMonitor {
        sim: CampaignMonitorSim,
        list: String,
    },
    Mailchimp {
        sim: MailchimpSim,
        audience: String,
    },
}

const CM_KEY: &str = "bad-input-cm-key-5e1f";

impl Vendor {
    async fn start(mailchimp: bool) -> (Vendor, Connection, Export) {
        if mailchimp {
            let sim = MailchimpSim::start(0).await.unwrap();
            let key = sim.add_account("Acme", "us21");
            let audience = sim.add_audience(&key, "Corpus");
            let connection = Connection {
                connector: "mailchimp".into(),
                base_url: Some(sim.base_url("{dc}")),
                data_centre: None,
                credential: Credential::ApiKey(Secret::new(key)),
            };
            let export = export(vec![("audience-id".into(), audience.clone())]);
            (Vendor::Mailchimp { sim, audience }, connection, export)
        } else {
            let sim = CampaignMonitorSim::start(0).await.unwrap();
            let list = sim.add_list(&sim.add_client("Acme", CM_KEY), "Corpus");
            let connection = Connection {
                connector: "campaign-monitor".into(),
                base_url: Some(sim.base_url()),
                data_centre: None,
                credential: Credential::ApiKey(Secret::new(CM_KEY.into())),
            };
            let export = export(vec![("list-id".into(), list.clone())]);
            (Vendor::CampaignMonitor { sim, list }, connection, export)
        }
    }

    /// Each contact the list holds: its address as sent, and its first and last name.
    fn contacts(&self) -> Vec<(String, String)> {
        match self {
            Vendor::CampaignMonitor { sim, list } => sim
                .subscribers(list)
                .into_values()
                .map(|s| (s.email, s.name))
                .collect(),
            Vendor::Mailchimp { sim, audience } => sim
                .members(audience)
                .into_values()
                .map(|m| {
                    let name = ["FNAME", "LNAME"]
                        .iter()
                        .filter_map(|k| m.merge_fields.get(*k).filter(|v| !v.is_empty()))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" ");
                    (m.email, name)
                })
                .collect(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Vendor::CampaignMonitor { .. } => "Campaign Monitor",
            Vendor::Mailchimp { .. } => "Mailchimp",
        }
    }
}

/// Exports the segment `corpus` of `source` to a fresh list at each vendor.
async fn export_to_each_vendor(source: &FileSource) -> Vec<(Vendor, RunReport)> {
    let plugins = plugin_dir(&[
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("mailchimp.wasm", artifacts::MAILCHIMP),
    ]);
    let host = open_host(plugins.path()).await;
    let mut done = vec![];
    for mailchimp in [false, true] {
        let (vendor, connection, export) = Vendor::start(mailchimp).await;
        let report = host
            .run_export(
                &connection,
                &export,
                source,
                &RunOptions::default(),
                &NoProgress,
            )
            .await
            .unwrap();
        done.push((vendor, report));
    }
    done
}

/// Exports `corpus` to each vendor and checks every row's outcome.
async fn check_corpus(name: &str) {
    let dir = corpus(name);
    let rows = expected(&dir);
    for (vendor, report) in export_to_each_vendor(&source(&dir)).await {
        let at = format!("{name} to {}", vendor.name());
        check_report(&at, &report, &rows, &vendor.contacts());
    }
}

fn check_report(at: &str, report: &RunReport, rows: &[Outcome], held: &[(String, String)]) {
    assert!(report.succeeded(), "{at}: {}", report.summary());
    report.check(true).unwrap_or_else(|e| panic!("{at}: {e}"));
    assert_eq!(report.issues_not_listed, 0);

    // Exactly the rows listed as sent are at the vendor, as listed.
    let want: BTreeSet<(String, String)> = rows
        .iter()
        .filter(|r| r.outcome == "sent")
        .map(|r| (r.detail.clone(), r.name.clone()))
        .collect();
    let have: BTreeSet<(String, String)> = held.iter().cloned().collect();
    assert_eq!(have, want, "{at}: the vendor holds other contacts");
    for row in rows.iter().filter(|r| r.outcome == "absent") {
        assert!(
            !held.iter().any(|(email, _)| *email == row.detail),
            "{at}: {} reached the vendor",
            row.detail
        );
    }

    // Every contact not delivered is listed once, as expected, and nothing else is.
    let mut unmatched: Vec<&RunIssue> = report.issues.iter().collect();
    for row in rows {
        let matches = |i: &&RunIssue| {
            let who = i.profile_id.as_str();
            let said = format!("{} {}", i.email, i.message);
            who == row.id.as_deref().unwrap_or("")
                && match row.outcome.as_str() {
                    "rejected" => {
                        i.kind == IssueKind::Rejected
                            && i.stage == Stage::Sent
                            && i.email == row.detail
                    }
                    code => i.code == code && said.contains(&row.detail),
                }
        };
        match row.outcome.as_str() {
            "sent" | "absent" => assert!(
                !report
                    .issues
                    .iter()
                    // A later row repeating a sent row's id is that row's issue, not this one's.
                    .any(|i| i.profile_id == row.id.clone().unwrap_or_default()
                        && i.code != "repeated-id"),
                "{at}: {row:?} has an issue: {:#?}",
                report.issues
            ),
            _ => {
                let Some(found) = unmatched.iter().position(matches) else {
                    panic!("{at}: no issue for {row:?} among {:#?}", report.issues);
                };
                unmatched.remove(found);
            }
        }
    }
    assert!(
        unmatched.is_empty(),
        "{at}: issues not expected: {unmatched:#?}"
    );

    // Rows read: the members' rows and those that cannot be ruled out.
    let read = rows.iter().filter(|r| r.outcome != "absent").count() as u64;
    assert_eq!(report.counts.profiles, read, "{at}: {}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_a_bad_csv_file_ends_as_expected() {
    check_corpus("csv").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_of_a_bad_json_lines_file_ends_as_expected() {
    check_corpus("jsonl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spreadsheet_export_with_bom_and_crlf_is_read_as_written() {
    check_corpus("bom-crlf").await;
}

/// Saving an export reads a sample of the rows, and warns of each kind of bad row with where.
#[test]
fn a_sample_of_the_rows_warns_of_bad_ones_before_any_run() {
    let warnings = source(&corpus("csv")).sample_warnings().unwrap();
    let text = warnings.join("\n");
    assert!(text.contains("profiles.csv: 5 of the first"), "{text}");
    for place in [
        "line 7: 3 fields",
        "line 8: column `first_name`",
        "line 9: repeats",
    ] {
        assert!(text.contains(place), "{place}: {text}");
    }
    assert!(text.contains("memberships.csv"), "{text}");
    let warnings = source(&corpus("jsonl"))
        .sample_warnings()
        .unwrap()
        .join("\n");
    assert!(warnings.contains("line 3: not valid JSON"), "{warnings}");
}

/// A 1 MiB first name is refused in the host with the field's name; the vendor gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_value_is_refused_locally_with_the_fields_name() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "N".repeat(1 << 20);
    std::fs::write(
        dir.path().join("profiles.csv"),
        format!("id,email,first_name,last_name\n1,huge@example.com,{huge},Name\n2,fine@example.com,Fine,Name\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("memberships.csv"),
        "profile_id,segment\n1,corpus\n2,corpus\n",
    )
    .unwrap();
    for (vendor, report) in export_to_each_vendor(&source(dir.path())).await {
        report.check(true).unwrap();
        let issue = &report.issues[0];
        assert_eq!(
            (issue.profile_id.as_str(), issue.code.as_str()),
            ("1", "value-too-long")
        );
        assert!(
            issue
                .message
                .starts_with("first-name is 1048576 characters long;"),
            "{}",
            issue.message
        );
        let held = vendor.contacts();
        assert_eq!(held, vec![("fine@example.com".into(), "Fine Name".into())]);
    }
}

/// A mapping to a field the vendor's list does not have is refused when the export is checked,
/// naming the field and those the list has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_the_list_lacks_is_refused_with_the_fields_it_has() {
    let dir = corpus("bom-crlf");
    let plugins = plugin_dir(&[
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("mailchimp.wasm", artifacts::MAILCHIMP),
    ]);
    let host = open_host(plugins.path()).await;
    for mailchimp in [false, true] {
        let (vendor, connection, mut export) = Vendor::start(mailchimp).await;
        let (field, said) = match &vendor {
            Vendor::CampaignMonitor { sim, list } => {
                sim.add_custom_field(list, "plan", "Text");
                (
                    "nickname",
                    "has no custom field `nickname` (its custom fields: [plan])",
                )
            }
            Vendor::Mailchimp { sim, audience } => {
                sim.add_merge_field(audience, "PLAN");
                (
                    "NICKNAME",
                    "has no merge field `NICKNAME` (its merge fields: FNAME, LNAME, PLAN)",
                )
            }
        };
        export.mapping =
            FieldMapping::parse(&["email=email", &format!("{field}=first_name")]).unwrap();
        let err = host
            .check_export(&connection, &export, &source(&dir))
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(said), "{}: {err}", vendor.name());
        // The same export mapping a field the list has is accepted.
        let have = if mailchimp { "PLAN" } else { "plan" };
        export.mapping =
            FieldMapping::parse(&["email=email", &format!("{have}=first_name")]).unwrap();
        host.check_export(&connection, &export, &source(&dir))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", vendor.name()));
    }
}
