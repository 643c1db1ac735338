//! The conformance check of a connector component: loads the file as the plugin directory
//! would, then calls it point by point against a vendor (a simulator of the kit, the author's
//! own simulator through the kit's [`Simulator`] trait, or a vendor API by URL) and reports
//! each point as passed, failed or skipped, with what it saw. `connector-host plugins check`
//! is this, worded for the command line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use connector_host::contract::{BatchReport, ConnectorError, Contact, ErrorKind, IssueKind};
use connector_host::{
    Connection, ConnectorHost, Credential, HostOptions, ProbeExport, RunOptions, Secret,
};
use serde_json::json;
use vendor_sim::{Faults, Held, Listen, Simulator};

pub use vendor_sim;

/// What to check, against what.
pub struct Check {
    /// The component (a .wasm file; it need not be in a plugin directory).
    pub file: PathBuf,
    pub target: Target,
    /// Export settings: with a simulator, added to its own; with a vendor API, those of a
    /// valid export.
    pub settings: Vec<(String, String)>,
}

/// The vendor the connector is checked against.
pub enum Target {
    /// A simulator of the kit, by name (`None`: the one for the connector's id).
    Kit(Option<String>),
    /// A simulator of the author's own, running in this process: every point can run.
    Simulator(Box<dyn Simulator>),
    /// A vendor API by its base URL (a test account, or a simulator elsewhere): the points
    /// that fault the vendor or read what it holds are skipped.
    Vendor {
        base_url: String,
        credential: Secret,
        /// Settings naming a list the account lacks, for the not-found points.
        unknown_settings: Vec<(String, String)>,
    },
}

/// How one point came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
}

#[derive(Debug)]
pub struct Finding {
    /// What was checked, in words.
    pub point: &'static str,
    pub outcome: Outcome,
    /// What the check saw.
    pub detail: String,
}

/// The findings so far.
#[derive(Debug, Default)]
pub struct Findings {
    pub points: Vec<Finding>,
    /// What the simulator did that no source settles: passing here proves nothing of it
    /// against the real vendor.
    pub unconfirmed: Vec<String>,
}

impl Outcome {
    /// `pass`, `fail` or `skip`.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Passed => "pass",
            Outcome::Failed => "fail",
            Outcome::Skipped => "skip",
        }
    }
}

impl Findings {
    /// How many points came out as `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.points.iter().filter(|f| f.outcome == outcome).count()
    }

    /// The findings as JSON: `{"findings": [{"point", "outcome", "detail"}], "unconfirmed":
    /// [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let list: Vec<serde_json::Value> = self
            .points
            .iter()
            .map(|f| json!({"point": f.point, "outcome": f.outcome.word(), "detail": f.detail}))
            .collect();
        json!({ "findings": list, "unconfirmed": self.unconfirmed })
    }

    fn add(&mut self, point: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.points.push(Finding {
            point,
            outcome,
            detail: detail.into(),
        });
    }

    fn check(&mut self, point: &'static str, failure: Option<String>, passed: impl Into<String>) {
        match failure {
            Some(why) => self.add(point, Outcome::Failed, why),
            None => self.add(point, Outcome::Passed, passed),
        }
    }
}

/// Requests a second to a simulator: far above any vendor's, below what would swamp the
/// machine.
const UNPACED: f64 = 1_000.0;

/// Where the connector's vendor is, and what the check may do to it.
struct Vendor {
    base_url: String,
    credential: Secret,
    settings: Vec<(String, String)>,
    unknown: Option<Vec<(String, String)>>,
    simulator: Option<Box<dyn Simulator>>,
}

/// Checks the component `check.file` against `check.target`: each point passed, failed or
/// skipped (with why). An error is a check that could not be made at all.
pub async fn check(options: &HostOptions, check: Check) -> Result<Findings> {
    let mut findings = Findings::default();
    let dir = tempfile::tempdir().context("cannot make a temporary plugin directory")?;
    let name = check
        .file
        .file_name()
        .context("give the path of a .wasm file")?;
    std::fs::copy(&check.file, dir.path().join(name))
        .with_context(|| format!("cannot read {}", check.file.display()))?;
    let host = ConnectorHost::open(dir.path(), options.clone()).await?;
    let Some(plugin) = host.plugins().loaded.first().cloned() else {
        let reason = host
            .plugins()
            .skipped
            .first()
            .map_or("not loaded".to_string(), |s| s.reason.clone());
        findings.add("loads as a connector", Outcome::Failed, reason);
        return Ok(findings);
    };
    let info = &plugin.info;
    findings.add(
        "loads as a connector",
        Outcome::Passed,
        format!(
            "`{}` {} for contract {}: exports the contract, imports only what connectors may, declares vendor hosts and an https base URL on them",
            info.id, info.version, plugin.contract_version
        ),
    );
    describe_sanity(&mut findings, info);

    let vendor = match vendor(check, &info.id).await? {
        Some(vendor) => vendor,
        None => {
            findings.add(
                "calls against the vendor",
                Outcome::Skipped,
                format!(
                    "the kit has no simulator for `{}` (it has: {}); name a simulator, or a vendor API by its base URL",
                    info.id,
                    vendor_sim::SIMULATED.join(", ")
                ),
            );
            return Ok(findings);
        }
    };
    let connection = |credential: &Secret| Connection {
        connector: info.id.clone(),
        base_url: Some(vendor.base_url.clone()),
        data_centre: None,
        credential: Credential::ApiKey(credential.clone()),
    };
    // A simulator answers on this machine: pacing to the vendor's own windows would only make
    // the check wait (MailerLite's imports, 5 a minute, would take it minutes). A vendor's API
    // is paced as a run would be.
    let mut options = RunOptions::default();
    if vendor.simulator.is_some() {
        options.broker.max_requests_per_second = Some(UNPACED);
    }
    let good = host.probe_with(&connection(&vendor.credential), &options)?;
    let bad = host.probe_with(
        &connection(&Secret::new("not-the-credential-0000000000-us1".into())),
        &options,
    )?;
    // The check's contacts carry names: mapped wherever the connector takes them.
    let mut fields = vec!["email".to_string()];
    fields.extend(
        ["first-name", "last-name"]
            .into_iter()
            .filter(|f| info.contact_fields.iter().any(|c| c.key == *f))
            .map(String::from),
    );
    let export = ProbeExport {
        settings: vendor.settings.clone(),
        fields,
        leave_action: None,
    };
    let no_settings = ProbeExport::default();

    let answer = good.validate(&no_settings).await;
    findings.check(
        "validate without settings accepts a good credential",
        answered_ok(&answer),
        "accepted",
    );
    let answer = bad.validate(&no_settings).await;
    findings.check(
        "validate without settings refuses a wrong credential as unauthorized",
        expect_error(&answer, &[ErrorKind::Unauthorized]),
        "unauthorized",
    );
    let answer = good.validate(&export).await;
    findings.check(
        "validate accepts the export's settings",
        answered_ok(&answer),
        "accepted",
    );
    if let Some(required) = info.config_fields.iter().find(|f| f.required) {
        let mut blank = export.clone();
        blank.settings.retain(|(k, _)| *k != required.key);
        blank.settings.push((required.key.clone(), String::new()));
        let answer = good.validate(&blank).await;
        findings.check(
            "validate refuses an export without a required setting as invalid-config",
            expect_error(&answer, &[ErrorKind::InvalidConfig]),
            format!("`{}` blank: invalid-config", required.key),
        );
    }
    match &vendor.unknown {
        Some(unknown) => {
            let missing = ProbeExport {
                settings: unknown.clone(),
                ..export.clone()
            };
            let answer = good.validate(&missing).await;
            let failure = match &answer {
                Ok(Err(e)) if e.kind == ErrorKind::InvalidConfig => Some(format!(
                    "refused as malformed (invalid-config: {}) before asking the vendor: name a well-formed list the account lacks",
                    e.message
                )),
                _ => expect_error(&answer, &[ErrorKind::NotFound]),
            };
            findings.check(
                "validate refuses a list the account lacks as not-found",
                failure,
                "not-found",
            );
            let answer = good.export_batch(&missing, &contacts("nf", 1)).await;
            findings.check(
                "a batch to a list the account lacks fails as not-found (404)",
                expect_error(&answer, &[ErrorKind::NotFound]),
                "not-found",
            );
        }
        None => findings.add(
            "validate refuses a list the account lacks as not-found",
            Outcome::Skipped,
            "no settings naming a list the account lacks were given",
        ),
    }
    let answer = bad.export_batch(&export, &contacts("auth", 1)).await;
    findings.check(
        "a batch with a wrong credential fails as unauthorized (401)",
        expect_error(&answer, &[ErrorKind::Unauthorized]),
        "unauthorized",
    );

    // A batch, then the same batch again.
    let batch = contacts("send", 3);
    let first = good.export_batch(&export, &batch).await;
    findings.check(
        "a batch's report accounts for every contact once",
        accounted(&first, batch.len()),
        format!("{} contacts, each reported once", batch.len()),
    );
    let second = good.export_batch(&export, &batch).await;
    let failure = accounted(&second, batch.len()).or_else(|| match &second {
        Ok(Ok(r)) if r.created > 0 => Some(format!(
            "the second send reported {} created: the vendor now holds them twice, or the report is wrong",
            r.created
        )),
        _ => None,
    });
    let failure = failure.or_else(|| {
        let sim = vendor.simulator.as_ref()?;
        batch.iter().find(|c| sim.records(&c.email) != 1).map(|c| {
            format!(
                "the vendor holds {} records of {}",
                sim.records(&c.email),
                c.email
            )
        })
    });
    findings.check(
        "a second send updates, never duplicates",
        failure,
        "all updated, one record each",
    );
    // One contact the vendor refuses among good ones: reported rejected, the rest delivered.
    let mut mixed = contacts("mixed", 2);
    mixed[1].email = format!("check-refused-{}@@example.com", std::process::id());
    let answer = good.export_batch(&export, &mixed).await;
    let failure = accounted(&answer, mixed.len()).or_else(|| match &answer {
        Ok(Ok(report)) => {
            let rejected = report
                .issues
                .iter()
                .any(|i| i.index == 1 && i.kind == IssueKind::Rejected);
            if !rejected {
                return Some(format!("`{}` was not reported rejected", mixed[1].email));
            }
            if report.issues.iter().any(|i| i.index == 0) {
                return Some("the good contact was reported not delivered".into());
            }
            let sim = vendor.simulator.as_ref()?;
            (sim.held(&mixed[0].email) != Some(Held::Mailable))
                .then(|| "the good contact did not arrive".to_string())
        }
        Ok(Err(e)) => Some(format!(
            "the whole batch failed for one refused contact: {}",
            error_words(e)
        )),
        Err(e) => Some(format!("{e:#}")),
    });
    findings.check(
        "a contact the vendor refuses is reported rejected, the rest delivered",
        failure,
        "rejected, with the vendor's words; the rest delivered",
    );

    let over = contacts("over", info.max_batch_size as usize + 1);
    let answer = good.export_batch(&export, &over).await;
    findings.check(
        "a batch over max-batch-size is refused",
        match &answer {
            Ok(Err(_)) | Err(_) => None,
            Ok(Ok(_)) => Some(format!(
                "a batch of {} was taken though the connector declares at most {}",
                over.len(),
                info.max_batch_size
            )),
        },
        "refused",
    );

    match &vendor.simulator {
        Some(sim) => {
            simulator_points(&mut findings, sim.as_ref(), &good, &export, info).await;
            findings.unconfirmed = sim.unconfirmed().into_iter().map(String::from).collect();
        }
        None => findings.add(
            "throttling, vendor failures, suppressed contacts and leave actions",
            Outcome::Skipped,
            "need a simulator of the kit (they fault the vendor and read what it holds)",
        ),
    }
    Ok(findings)
}

/// The points that need to fault the vendor or read what it holds.
async fn simulator_points(
    findings: &mut Findings,
    sim: &dyn Simulator,
    good: &connector_host::Probe<'_>,
    export: &ProbeExport,
    info: &connector_host::contract::ConnectorInfo,
) {
    // Suppressed contacts: someone who unsubscribed is sent again.
    let batch = contacts("kept", 2);
    sim.keep_out(&batch[0].email);
    let answer = good.export_batch(export, &batch).await;
    let failure = accounted(&answer, batch.len()).or_else(|| {
        let Ok(Ok(report)) = &answer else { return None };
        let reported = report
            .issues
            .iter()
            .any(|i| i.index == 0 && i.kind == IssueKind::Suppressed);
        match sim.held(&batch[0].email) {
            Some(Held::Mailable) => Some("the unsubscribed contact was resubscribed".into()),
            _ if !reported => Some("the unsubscribed contact was not reported suppressed".into()),
            _ => None,
        }
    });
    findings.check(
        "a suppressed contact is reported suppressed and never resubscribed",
        failure,
        "reported suppressed, still kept out",
    );

    for (point, faults, kinds) in [
        (
            "a throttled vendor (429) fails the batch as rate-limited, retryable",
            Faults {
                throttle_every: 1,
                retry_after_secs: 0,
                ..Faults::default()
            },
            &[ErrorKind::RateLimited][..],
        ),
        (
            "a failing vendor (5xx) fails the batch as retryable",
            Faults {
                error_every: 1,
                ..Faults::default()
            },
            &[ErrorKind::Vendor, ErrorKind::Transport][..],
        ),
    ] {
        sim.server().set_faults(faults);
        let answer = good.export_batch(export, &contacts("fault", 1)).await;
        sim.server().set_faults(Faults::default());
        let failure = expect_error(&answer, kinds).or_else(|| match &answer {
            Ok(Err(e)) if !e.retryable => Some("the error is not marked retryable".into()),
            _ => None,
        });
        findings.check(point, failure, "as expected");
    }

    if info.leave_actions.is_empty() {
        findings.add(
            "leave actions",
            Outcome::Skipped,
            "the connector declares none",
        );
    }
    for action in &info.leave_actions {
        let point: &'static str = match action.reversible {
            true => "a reversible leave action takes leavers out and leaves suppressed ones alone",
            false => {
                "an irreversible leave action takes leavers out and leaves suppressed ones alone"
            }
        };
        let leavers = contacts(&format!("leave-{}", action.id), 3);
        let with_action = ProbeExport {
            leave_action: Some(action.id.clone()),
            ..export.clone()
        };
        let sent = good.export_batch(&with_action, &leavers[..2]).await;
        sim.keep_out(&leavers[2].email);
        let answer = match sent {
            Ok(Ok(_)) => {
                good.apply_leave_action(&with_action, &action.id, &leavers)
                    .await
            }
            other => other,
        };
        if let Ok(Err(e)) = &answer
            && e.kind == ErrorKind::InvalidConfig
        {
            findings.add(
                point,
                Outcome::Skipped,
                format!(
                    "`{}` needs settings this check does not give: {}",
                    action.id, e.message
                ),
            );
            continue;
        }
        let failure = accounted(&answer, leavers.len()).or_else(|| {
            if let Some(c) = leavers[..2]
                .iter()
                .find(|c| sim.held(&c.email) == Some(Held::Mailable))
            {
                return Some(format!(
                    "`{}` left {} receiving mailings",
                    action.id, c.email
                ));
            }
            match sim.held(&leavers[2].email) {
                Some(Held::KeptOut(_)) => None,
                other => Some(format!(
                    "`{}` changed a suppressed contact (now {other:?})",
                    action.id
                )),
            }
        });
        findings.check(point, failure, format!("`{}`: as declared", action.id));
    }
}

/// Where the vendor is: a simulator started now, the author's own, or an API by URL.
async fn vendor(check: Check, id: &str) -> Result<Option<Vendor>> {
    let mut extra = check.settings;
    let sim = match check.target {
        Target::Vendor {
            base_url,
            credential,
            unknown_settings,
        } => {
            return Ok(Some(Vendor {
                base_url,
                credential,
                settings: extra,
                unknown: (!unknown_settings.is_empty()).then_some(unknown_settings),
                simulator: None,
            }));
        }
        Target::Simulator(sim) => sim,
        Target::Kit(name) => {
            let which = name.as_deref().unwrap_or(id);
            let Some(started) = vendor_sim::simulator::start(which, Listen::plain(0)).await else {
                if name.is_some() {
                    bail!(
                        "the kit has no simulator `{which}` (it has: {})",
                        vendor_sim::SIMULATED.join(", ")
                    );
                }
                return Ok(None);
            };
            started?
        }
    };
    let mut settings = sim.export_settings();
    settings.append(&mut extra);
    Ok(Some(Vendor {
        base_url: sim.base_url(),
        credential: Secret::new(sim.credential()),
        unknown: Some(sim.unknown_list_settings()),
        settings,
        simulator: Some(sim),
    }))
}

/// The description's own consistency, beyond what loading refuses.
fn describe_sanity(findings: &mut Findings, info: &connector_host::contract::ConnectorInfo) {
    let mut problems = vec![];
    match info.contact_fields.iter().find(|f| f.key == "email") {
        Some(email) if email.required => {}
        Some(_) => problems.push("`email` is not required".to_string()),
        None => problems.push("no `email` contact field".to_string()),
    }
    if info.max_batch_size == 0 {
        problems.push("max-batch-size is 0".into());
    }
    let twice = |mut keys: Vec<&str>| {
        keys.sort();
        keys.windows(2)
            .find(|w| w[0] == w[1])
            .map(|w| w[0].to_string())
    };
    let lists = [
        (
            "setting",
            info.config_fields.iter().map(|f| f.key.as_str()).collect(),
        ),
        (
            "contact field",
            info.contact_fields.iter().map(|f| f.key.as_str()).collect(),
        ),
        (
            "leave action",
            info.leave_actions.iter().map(|a| a.id.as_str()).collect(),
        ),
    ];
    for (what, keys) in lists {
        if let Some(key) = twice(keys) {
            problems.push(format!("{what} `{key}` is declared twice"));
        }
    }
    if info.display_name.trim().is_empty() || semver_like(&info.version).is_none() {
        problems.push("display name empty or version not semver".into());
    }
    findings.check(
        "describe is consistent",
        (!problems.is_empty()).then(|| problems.join("; ")),
        format!(
            "{} settings, {} contact fields, {} leave actions, batches of up to {}",
            info.config_fields.len(),
            info.contact_fields.len(),
            info.leave_actions.len(),
            info.max_batch_size
        ),
    );
}

fn semver_like(version: &str) -> Option<()> {
    let core = version.split(['-', '+']).next()?;
    let parts: Vec<&str> = core.split('.').collect();
    (parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok())).then_some(())
}

/// `n` contacts no vendor has seen, unique to this check.
fn contacts(tag: &str, n: usize) -> Vec<Contact> {
    let run = std::process::id();
    (0..n)
        .map(|i| Contact {
            email: format!("check-{tag}-{run}-{i}@example.com"),
            first_name: Some("Check".into()),
            last_name: Some(format!("Contact {i}")),
            attributes: vec![],
        })
        .collect()
}

fn answered_ok<T>(answer: &connector_host::run::Answer<T>) -> Option<String> {
    match answer {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(error_words(e)),
        Err(e) => Some(format!("{e:#}")),
    }
}

fn expect_error<T>(answer: &connector_host::run::Answer<T>, kinds: &[ErrorKind]) -> Option<String> {
    let wanted: Vec<String> = kinds.iter().map(ToString::to_string).collect();
    match answer {
        Ok(Err(e)) if kinds.contains(&e.kind) => None,
        Ok(Err(e)) => Some(format!(
            "expected {}, got {}",
            wanted.join(" or "),
            error_words(e)
        )),
        Ok(Ok(_)) => Some(format!(
            "expected {}, but the call succeeded",
            wanted.join(" or ")
        )),
        Err(e) => Some(format!(
            "expected {}, but the call failed: {e:#}",
            wanted.join(" or ")
        )),
    }
}

fn accounted(answer: &connector_host::run::Answer<BatchReport>, size: usize) -> Option<String> {
    let report = match answer {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return Some(error_words(e)),
        Err(e) => return Some(format!("{e:#}")),
    };
    let total = report.created as usize + report.updated as usize + report.issues.len();
    let mut indices: Vec<u32> = report.issues.iter().map(|i| i.index).collect();
    indices.sort();
    indices.dedup();
    if total != size
        || indices.len() != report.issues.len()
        || indices.iter().any(|&i| i as usize >= size)
    {
        return Some(format!(
            "{} created + {} updated + {} issues for {size} contacts (indices {indices:?})",
            report.created,
            report.updated,
            report.issues.len()
        ));
    }
    None
}

fn error_words(e: &ConnectorError) -> String {
    format!("{} error: {}", e.kind, e.message)
}
