//! Exports that keep a vendor list in step with an evolving segment. Over several runs people
//! change names and plans, leave, join and come back, and emails become invalid and get fixed.
//! After every run the simulator's list must equal what an independent oracle computes from the
//! segment's history alone; a run over unchanged data sends nothing; a dry run's plan equals the
//! next real run's; and each leave action does what its vendor documents, never touching a
//! contact the vendor keeps out. Then a vendor outage fails a run, and the next continues it
//! without sending anything already acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use connector_host::{
    Access, Actor, BrokerPolicy, ConnectionRequest, Credential, ExportRequest, FieldMapping,
    MasterKey, NoProgress, Role, RunOptions, RunReport, RunRequest, RunStatus, Secret, Workspace,
};
use connector_tests::harness::{install_connectors, open_host};
use connector_tests::live::{LiveSource, Person};
use connector_tests::sim::campaign_monitor::{CampaignMonitorSim, SubscriberState};
use connector_tests::sim::mailchimp::{MailchimpSim, Status};
use connector_tests::sim::{Faults, is_valid_email};

const MEMBERSHIP_TAG: &str = "cdp:members";

/// The vendor side of a world.
enum Vendor {
    Mailchimp {
        sim: MailchimpSim,
        audience: String,
    },
    CampaignMonitor {
        sim: CampaignMonitorSim,
        list: String,
    },
}

struct World {
    workspace: Workspace,
    source: Arc<LiveSource>,
    admin: Actor,
    vendor: Vendor,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// A saved export `sync` of the segment `members` (email, names and the list's own `plan`
/// field) to `vendor`, with `leave_action`.
async fn world(mailchimp: bool, leave_action: Option<&str>, options: RunOptions) -> World {
    let plugins = tempfile::tempdir().unwrap();
    install_connectors(plugins.path()).unwrap();
    let host = Arc::new(open_host(plugins.path()).await);
    let state_dir = tempfile::tempdir().unwrap();
    let source = Arc::new(LiveSource::default());
    let workspace = Workspace::open_file(&state_dir.path().join("state.db"))
        .unwrap()
        .with_host(host)
        .with_master_key(MasterKey::generate())
        .await
        .unwrap()
        .with_source(source.clone())
        .with_run_options(options);
    let admin = Actor {
        name: "ops".into(),
        role: Role::Administrator,
    };
    let (vendor, connector, base_url, key, settings, plan) = if mailchimp {
        let sim = MailchimpSim::start(0).await.unwrap();
        let key = sim.add_account("Acme", "us21");
        let audience = sim.add_audience(&key, "Members");
        sim.add_merge_field(&audience, "PLAN");
        let mut settings = vec![("audience-id".to_string(), audience.clone())];
        if leave_action == Some("untag") {
            settings.push(("membership-tag".into(), MEMBERSHIP_TAG.into()));
        }
        let base = sim.base_url("{dc}");
        (
            Vendor::Mailchimp { sim, audience },
            "mailchimp",
            base,
            key,
            settings,
            "PLAN=plan",
        )
    } else {
        let sim = CampaignMonitorSim::start(0).await.unwrap();
        let key = "sync-test-key-0b7e".to_string();
        let list = sim.add_list(&sim.add_client("Acme", &key), "Members");
        sim.add_custom_field(&list, "plan", "Text");
        let settings = vec![("list-id".to_string(), list.clone())];
        let base = sim.base_url();
        (
            Vendor::CampaignMonitor { sim, list },
            "campaign-monitor",
            base,
            key,
            settings,
            "plan=plan",
        )
    };
    workspace
        .approve_connector(&admin, connector, None)
        .await
        .unwrap();
    workspace
        .add_connection(
            &admin,
            ConnectionRequest {
                name: "acme".into(),
                connector: connector.into(),
                base_url: Some(base_url),
                data_centre: None,
                credential: Credential::ApiKey(Secret::new(key)),
                token_expires_in: None,
                access: Access::Administrators,
                accept_privacy_notice: true,
            },
        )
        .await
        .unwrap();
    source.set(vec![Person::numbered(1)]);
    workspace
        .add_export(
            &admin,
            ExportRequest {
                name: "sync".into(),
                connection: "acme".into(),
                settings,
                mapping: FieldMapping::parse(&[
                    "email=email",
                    "first-name=first_name",
                    "last-name=last_name",
                    plan,
                ])
                .unwrap(),
                segments: vec!["members".into()],
                schedule: None,
                leave_action: leave_action.map(String::from),
                confirm_irreversible: true,
            },
        )
        .await
        .unwrap();
    World {
        workspace,
        source,
        admin,
        vendor,
        _dirs: (plugins, state_dir),
    }
}

impl World {
    async fn run(&self) -> RunReport {
        let outcome = self
            .workspace
            .run_export(
                &self.admin,
                "sync",
                RunRequest::default(),
                &NoProgress,
                None,
            )
            .await
            .unwrap();
        outcome.report
    }

    /// Requests that carried contacts (imports and batch subscribes).
    fn contact_calls(&self) -> usize {
        match &self.vendor {
            Vendor::Mailchimp { sim, audience } => sim
                .requests()
                .iter()
                .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/lists/{audience}")))
                .count(),
            Vendor::CampaignMonitor { sim, .. } => sim
                .requests()
                .iter()
                .filter(|r| r.method == "POST" && r.path.ends_with("/import.json"))
                .count(),
        }
    }
}

/// Where the oracle expects a contact at the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Subscribed,
    Archived,
    Unsubscribed,
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
struct Expect {
    /// The profile it was sent for.
    person: String,
    at: At,
    first: String,
    last: String,
    plan: String,
    tagged: bool,
}

/// What the list must hold, computed from the segment's history and the vendors' documented
/// rules alone.
struct Oracle {
    mailchimp: bool,
    action: Option<&'static str>,
    contacts: BTreeMap<String, Expect>,
}

impl Oracle {
    /// The segment became `members`; a run follows.
    fn step(&mut self, members: &[Person]) {
        let mut present: BTreeMap<String, &Person> = BTreeMap::new();
        for p in members {
            if let Some(email) = p.email.as_deref().filter(|e| is_valid_email(e)) {
                present.entry(email.to_lowercase()).or_insert(p);
            }
        }
        // Leaving means leaving the segment: a person still in it keeps the contact sent for
        // them, whatever became of their address, except that a reversible action reaches an
        // address the person moved away from.
        // (An address the host can send, though the vendor may refuse it: the host cannot
        // know that before it sends, and a dry run must say what the run will do.)
        let people: BTreeMap<&str, Option<&str>> = members
            .iter()
            .map(|p| {
                let usable = p.email.as_deref().filter(|e| e.contains('@'));
                (p.id.as_str(), usable)
            })
            .collect();
        let reversible = matches!(self.action, Some("archive" | "untag"));
        for (email, e) in self.contacts.iter_mut() {
            if present.contains_key(email) || !matches!(e.at, At::Subscribed) || !e.tagged {
                continue;
            }
            match people.get(e.person.as_str()) {
                Some(None) => continue,
                Some(Some(_)) if !reversible => continue,
                _ => {}
            }
            // Left the segment: the leave action (a contact the vendor keeps out is untouched,
            // which the `at` check above already ensures).
            match self.action {
                Some("archive") => e.at = At::Archived,
                Some("untag") => e.tagged = false,
                Some("unsubscribe") => e.at = At::Unsubscribed,
                Some("delete") => e.at = At::Deleted,
                _ => e.tagged = false, // no action: only the export's own view changes
            }
        }
        for (email, p) in present {
            let fields = (
                p.first_name.clone().unwrap_or_default(),
                p.last_name.clone().unwrap_or_default(),
                p.plan.clone().unwrap_or_default(),
            );
            let e = self.contacts.entry(email).or_insert(Expect {
                person: p.id.clone(),
                at: At::Subscribed,
                first: String::new(),
                last: String::new(),
                plan: String::new(),
                tagged: true,
            });
            let updated = match e.at {
                At::Subscribed => true,
                // Archiving is reversible: a contact who comes back is added back.
                At::Archived => {
                    e.at = At::Subscribed;
                    true
                }
                // Mailchimp updates an unsubscribed member's fields, never their status;
                // Campaign Monitor's import leaves unsubscribed and deleted people alone.
                At::Unsubscribed => self.mailchimp,
                At::Deleted => false,
            };
            if updated {
                (e.first, e.last, e.plan) = fields;
            }
            e.tagged = true;
        }
    }

    /// The vendor unsubscribed this contact on its own (a person clicked "unsubscribe").
    fn unsubscribed_at_vendor(&mut self, email: &str) {
        self.contacts.get_mut(email).unwrap().at = At::Unsubscribed;
    }

    /// Checks the vendor's list equals the oracle's.
    fn check(&self, w: &World, when: &str) {
        match &w.vendor {
            Vendor::Mailchimp { sim, audience } => {
                let ledger = sim.members(audience);
                let held: BTreeSet<&String> = ledger.keys().collect();
                let want: BTreeSet<&String> = self.contacts.keys().collect();
                assert_eq!(held, want, "{when}: the audience's members");
                for (email, e) in &self.contacts {
                    let m = &ledger[email];
                    let status = match e.at {
                        At::Subscribed => Status::Subscribed,
                        At::Archived => Status::Archived,
                        At::Unsubscribed => Status::Unsubscribed,
                        At::Deleted => unreachable!("Mailchimp has no delete action"),
                    };
                    assert_eq!(m.status, status, "{when}: status of {email}");
                    let field = |tag: &str| m.merge_fields.get(tag).cloned().unwrap_or_default();
                    assert_eq!(
                        (field("FNAME"), field("LNAME"), field("PLAN")),
                        (e.first.clone(), e.last.clone(), e.plan.clone()),
                        "{when}: merge fields of {email}"
                    );
                    if self.action == Some("untag") {
                        assert_eq!(
                            m.tags.contains(MEMBERSHIP_TAG),
                            e.tagged,
                            "{when}: membership tag of {email}"
                        );
                    }
                    assert_eq!(
                        m.confirmation_emails, 0,
                        "{when}: {email} was mailed an opt-in"
                    );
                }
            }
            Vendor::CampaignMonitor { sim, list } => {
                let ledger = sim.subscribers(list);
                let held: BTreeSet<&String> = ledger.keys().collect();
                let want: BTreeSet<&String> = self.contacts.keys().collect();
                assert_eq!(held, want, "{when}: the list's subscribers");
                for (email, e) in &self.contacts {
                    let s = &ledger[email];
                    let state = match e.at {
                        At::Subscribed => SubscriberState::Active,
                        At::Unsubscribed => SubscriberState::Unsubscribed,
                        At::Deleted => SubscriberState::Deleted,
                        At::Archived => unreachable!("Campaign Monitor has no archive"),
                    };
                    assert_eq!(s.state, state, "{when}: state of {email}");
                    let name = [e.first.as_str(), e.last.as_str()]
                        .into_iter()
                        .filter(|n| !n.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ");
                    assert_eq!(s.name, name, "{when}: name of {email}");
                    assert_eq!(
                        s.custom_fields.get("plan").cloned().unwrap_or_default(),
                        e.plan,
                        "{when}: plan of {email}"
                    );
                }
            }
        }
    }
}

/// The segment at each step of the scenario.
fn history() -> Vec<Vec<Person>> {
    let base: Vec<Person> = (1..=30).map(Person::numbered).collect();
    let mut step0 = base.clone();
    step0[4].email = Some("person5@example.org1".into()); // the vendor refuses it
    step0[5].email = None; // no address
    let step1 = step0.clone(); // unchanged
    let mut step2: Vec<Person> = step0
        .iter()
        .filter(|p| !["p2", "p3", "p4", "p8"].contains(&p.id.as_str()))
        .cloned()
        .collect();
    step2[0].first_name = Some("Renamed1".into()); // p1
    let p5 = step2.iter_mut().find(|p| p.id == "p5").unwrap();
    p5.email = Some("person5@example.org".into()); // fixed
    step2.iter_mut().find(|p| p.id == "p9").unwrap().plan = Some("enterprise".into());
    step2.push(Person::numbered(31));
    step2.push(Person::numbered(32));
    let mut step3 = step2.clone();
    step3.push(Person::numbered(2)); // back, as before
    step3.iter_mut().find(|p| p.id == "p7").unwrap().email = Some("person7@example.org1".into());
    step3.iter_mut().find(|p| p.id == "p10").unwrap().first_name = None; // cleared
    step3.iter_mut().find(|p| p.id == "p11").unwrap().email = None; // blank for one refresh
    let mut step4 = step3.clone();
    step4.iter_mut().find(|p| p.id == "p7").unwrap().email = Some("person7@example.org".into());
    step4.iter_mut().find(|p| p.id == "p11").unwrap().email = Some("person11@example.org".into());
    let mut p3 = Person::numbered(3);
    p3.last_name = Some("Married".into());
    step4.push(p3); // back, changed
    vec![step0, step1, step2, step3, step4]
}

/// Runs the whole history against one vendor and leave action, checking the list after every
/// run, the dry run before every run, and that the unchanged run sends nothing.
async fn scenario(mailchimp: bool, action: Option<&'static str>) {
    let w = world(mailchimp, action, RunOptions::default()).await;
    let mut oracle = Oracle {
        mailchimp,
        action,
        contacts: BTreeMap::new(),
    };
    for (step, members) in history().into_iter().enumerate() {
        let when = format!(
            "{} {action:?} after run {}",
            if mailchimp {
                "Mailchimp"
            } else {
                "Campaign Monitor"
            },
            step + 1
        );
        w.source.set(members.clone());
        let plan = w
            .workspace
            .plan_export(&w.admin, "sync", false)
            .await
            .unwrap();
        let calls = w.contact_calls();
        let report = w.run().await;
        assert!(report.succeeded(), "{when}: {}", report.summary());
        oracle.step(&members);
        oracle.check(&w, &when);

        let c = &report.counts;
        assert_eq!(
            plan.counts,
            c.plan(),
            "{when}: the dry run planned otherwise"
        );
        assert_eq!(
            c.profiles,
            c.planned(),
            "{when}: counts do not add up: {c:?}"
        );
        assert_eq!(
            c.leaving,
            c.left + c.left_untouched + c.left_refused,
            "{when}: {c:?}"
        );
        match step {
            0 => {
                assert_eq!((c.new, c.invalid), (29, 1), "{when}: {c:?}");
                assert_eq!(c.rejected, 1, "{when}: person5's invalid address");
                // Someone unsubscribes at the vendor on their own.
                let email = "person8@example.org";
                match &w.vendor {
                    Vendor::Mailchimp { sim, audience } => {
                        sim.set_status(audience, email, Status::Unsubscribed)
                    }
                    Vendor::CampaignMonitor { sim, list } => {
                        sim.add_subscriber(
                            list,
                            email,
                            "First8 Last8",
                            SubscriberState::Unsubscribed,
                        );
                        sim.set_custom_field(list, email, "plan", "free");
                    }
                }
                oracle.unsubscribed_at_vendor(email);
            }
            1 => {
                assert_eq!(
                    w.contact_calls(),
                    calls,
                    "{when}: an unchanged segment sent contacts"
                );
                assert_eq!(c.sent(), 0, "{when}: {c:?}");
                assert_eq!(
                    (c.unchanged, c.still_rejected, c.invalid),
                    (28, 1, 1),
                    "{when}: {c:?}"
                );
                let still = report
                    .issues
                    .iter()
                    .find(|i| i.email == "person5@example.org1")
                    .unwrap();
                assert!(still.since.is_some(), "{when}: when was it first rejected?");
            }
            2 => {
                // p5 fixed, p31 and p32 new; p1 renamed and p9's plan changed; p2-p4 and p8 left.
                assert_eq!((c.new, c.changed, c.leaving), (3, 2, 4), "{when}: {c:?}");
                if action.is_some() {
                    // Campaign Monitor's unsubscribe is idempotent, one call a leaver with no
                    // read first: person8, out already, is asked again and stays out (the
                    // oracle checks it), counted left. Other actions read first and leave
                    // them untouched.
                    let idempotent = !mailchimp && action == Some("unsubscribe");
                    assert_eq!(
                        (c.left, c.left_untouched),
                        if idempotent { (4, 0) } else { (3, 1) },
                        "{when}: person8 is kept out"
                    );
                }
            }
            3 => {
                assert_eq!(c.returning, 1, "{when}: person2 came back: {c:?}");
                assert_eq!(c.new, 1, "{when}: person7's broken address is new: {c:?}");
                // Person7 is still a member, under a new address (which the vendor refuses):
                // the address sent for them before is kept, unless the leave action is
                // reversible.
                // Person11's address went blank: kept, whatever the action.
                let moved = if matches!(action, Some("archive" | "untag")) {
                    (1, 1)
                } else {
                    (0, 2)
                };
                assert_eq!(
                    (c.leaving, c.kept),
                    moved,
                    "{when}: person7 did not leave: {c:?}"
                );
            }
            _ => {
                // Person3 came back (and person7, where a reversible action reached their
                // old address).
                let back = if matches!(action, Some("archive" | "untag")) {
                    2
                } else {
                    1
                };
                assert_eq!(c.returning, back, "{when}: {c:?}");
                assert_eq!(c.kept, 0, "{when}: person7's address is fixed: {c:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_archive_keeps_the_audience_in_step_and_is_reversible() {
    scenario(true, Some("archive")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_untag_removes_only_the_membership_tag() {
    scenario(true, Some("untag")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_unsubscribe_is_irreversible_and_never_resubscribes() {
    scenario(true, Some("unsubscribe")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_without_a_leave_action_only_reports_leavers() {
    scenario(true, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_monitor_unsubscribe_keeps_returning_people_out() {
    scenario(false, Some("unsubscribe")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_monitor_delete_moves_leavers_to_the_deleted_state() {
    scenario(false, Some("delete")).await;
}

/// Thousands leave at once: full leave batches (1,000 at Campaign Monitor, 500 at Mailchimp),
/// each contact read and acted on, must all be applied within the sandbox's limits.
async fn mass_leaving(mailchimp: bool, action: &'static str) {
    let w = world(mailchimp, Some(action), RunOptions::default()).await;
    let mut oracle = Oracle {
        mailchimp,
        action: Some(action),
        contacts: BTreeMap::new(),
    };
    let everyone: Vec<Person> = (1..=2_500).map(Person::numbered).collect();
    let stay = everyone[..100].to_vec();
    for (step, members) in [everyone, stay].into_iter().enumerate() {
        w.source.set(members.clone());
        let report = w.run().await;
        assert!(report.succeeded(), "run {}: {}", step + 1, report.summary());
        oracle.step(&members);
        oracle.check(&w, &format!("{action} after run {}", step + 1));
        if step == 1 {
            let c = &report.counts;
            assert_eq!(
                (c.leaving, c.left, c.unchanged),
                (2_400, 2_400, 100),
                "{c:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_monitor_applies_full_leave_batches() {
    mass_leaving(false, "unsubscribe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_applies_full_leave_batches() {
    mass_leaving(true, "archive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_outage_fails_a_run_and_the_next_continues_it_sending_nothing_twice() {
    let options = RunOptions {
        concurrency: Some(1),
        broker: BrokerPolicy {
            max_attempts: 2,
            base_backoff: Duration::from_millis(5),
            ..BrokerPolicy::default()
        },
        batch_retries: 0,
        ..RunOptions::default()
    };
    let w = world(false, Some("unsubscribe"), options).await;
    let Vendor::CampaignMonitor { sim, list } = &w.vendor else {
        unreachable!()
    };
    // 5,000 people: five imports of 1,000. The vendor goes down after the second.
    let members: Vec<Person> = (1..=5_000).map(Person::numbered).collect();
    w.source.set(members.clone());
    let imports = || {
        sim.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/import.json") && r.status < 300)
            .count()
    };
    let outage = {
        let sim = sim.clone();
        tokio::spawn(async move {
            loop {
                let done = sim
                    .requests()
                    .iter()
                    .filter(|r| r.path.ends_with("/import.json"))
                    .count();
                if done >= 2 {
                    sim.set_faults(Faults {
                        error_every: 1,
                        ..Faults::default()
                    });
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let outcome = w
        .workspace
        .run_export(&w.admin, "sync", RunRequest::default(), &NoProgress, None)
        .await
        .unwrap();
    outage.await.unwrap();
    let RunStatus::Failed(error) = &outcome.report.status else {
        panic!(
            "the outage did not fail the run: {}",
            outcome.report.summary()
        );
    };
    assert!(error.contains("Simulated server error"), "{error}");
    let delivered = outcome.report.counts.created;
    assert!((2_000..5_000).contains(&delivered), "{delivered}");

    // The vendor is back: the next run continues the failed one, sending only the rest.
    sim.set_faults(Faults::default());
    let again = w
        .workspace
        .run_export(&w.admin, "sync", RunRequest::default(), &NoProgress, None)
        .await
        .unwrap();
    assert!(again.report.succeeded(), "{}", again.report.summary());
    assert!(again.resumed, "the failed run was not continued");
    assert_eq!(again.run_id, outcome.run_id);
    let c = &again.report.counts;
    assert_eq!(c.resumed, delivered, "{c:?}");
    assert_eq!((c.created, c.profiles), (5_000, 5_000), "{c:?}");
    let ledger = sim.subscribers(list);
    assert_eq!(ledger.len(), 5_000);
    assert!(
        ledger.values().all(|s| s.imports == 1),
        "a contact the vendor acknowledged was sent again"
    );
    assert_eq!(imports(), 5);
    let record = w.workspace.run(&w.admin, outcome.run_id).await.unwrap();
    assert_eq!((record.attempts, record.counts.created), (2, 5_000));
}

#[test]
fn the_oracle_sees_every_class_of_change_in_the_history() {
    // Guards the scenario itself: each step must contain the changes the checks count on.
    let h = history();
    let ids = |s: &[Person]| s.iter().map(|p| p.id.clone()).collect::<BTreeSet<_>>();
    assert!(ids(&h[1]) == ids(&h[0]) && h[1] == h[0]);
    assert!(!ids(&h[2]).contains("p2") && ids(&h[3]).contains("p2"));
    assert!(ids(&h[4]).contains("p3"));
}

/// Stops its run (as a cancel would) once `after` profiles were handled.
struct StopAfter {
    after: u64,
    done: std::sync::atomic::AtomicU64,
    stop: tokio_util::sync::CancellationToken,
}

impl connector_host::Progress for StopAfter {
    fn advance(&self, profiles: u64) {
        let done = self
            .done
            .fetch_add(profiles, std::sync::atomic::Ordering::SeqCst)
            + profiles;
        if done >= self.after {
            self.stop.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_short_is_continued_exactly_after_the_segment_changed() {
    let options = RunOptions {
        concurrency: Some(1),
        ..RunOptions::default()
    };
    let w = world(false, Some("unsubscribe"), options).await;
    let Vendor::CampaignMonitor { sim, list } = &w.vendor else {
        unreachable!()
    };
    // 3,000 people, one in 50 with an address the vendor refuses.
    let person = |i: u32| {
        let mut p = Person::numbered(i);
        if i.is_multiple_of(50) {
            p.email = Some(format!("person{i}@example.org1"));
        }
        p
    };
    let members: Vec<Person> = (1..=3_000).map(person).collect();
    w.source.set(members.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let progress = StopAfter {
        after: 1,
        done: Default::default(),
        stop: stop.clone(),
    };
    let first = w
        .workspace
        .run_export(
            &w.admin,
            "sync",
            RunRequest::default(),
            &progress,
            Some(stop),
        )
        .await
        .unwrap();
    assert_eq!(
        first.report.status,
        RunStatus::Interrupted,
        "{}",
        first.report.summary()
    );
    let settled = first.report.counts.sent();
    assert!((1..3_000).contains(&settled), "{settled}");

    // About one in a hundred members goes (among them people settled, refused, and not yet
    // sent); then the run is continued.
    let remaining: Vec<Person> = members
        .iter()
        .filter(|p| {
            let i = p.id.trim_start_matches('p').parse::<u32>().unwrap();
            i % 100 != 1 && i % 500 != 0
        })
        .cloned()
        .collect();
    w.source.set(remaining.clone());
    let plan = w
        .workspace
        .plan_export(&w.admin, "sync", false)
        .await
        .unwrap();
    assert_eq!(plan.continues_run, Some(first.run_id));
    let progress = LeaveProgress::default();
    let second = w
        .workspace
        .run_export(&w.admin, "sync", RunRequest::default(), &progress, None)
        .await
        .unwrap()
        .report;
    assert!(second.succeeded(), "{}", second.summary());
    second
        .check(true)
        .unwrap_or_else(|e| panic!("{e}: {}", second.summary()));
    // The leave phase showed its progress: leavers settled of leavers.
    let (announced, settled) = progress.seen();
    assert!(announced > 0, "no leave phase shown: {}", second.summary());
    assert_eq!(settled, second.counts.leaving, "{}", second.summary());
    assert_eq!(announced, second.counts.leaving);
    assert_eq!(
        plan.counts,
        second.counts.plan(),
        "the dry run planned otherwise"
    );
    let c = &second.counts;
    assert_eq!(c.profiles, remaining.len() as u64);
    // Who stays is at the vendor; who left after being sent is unsubscribed; nobody else.
    let held = sim.subscribers(list);
    for p in &remaining {
        let email = p.email.as_deref().unwrap();
        if email.ends_with(".org1") {
            assert!(!held.contains_key(email), "{email} was accepted");
        } else {
            assert_eq!(held[email].state, SubscriberState::Active, "{email}");
        }
    }
    let gone: Vec<&Person> = members.iter().filter(|p| !remaining.contains(p)).collect();
    let unsubscribed = gone
        .iter()
        .filter(|p| {
            held.get(p.email.as_deref().unwrap())
                .is_some_and(|s| s.state == SubscriberState::Unsubscribed)
        })
        .count() as u64;
    assert_eq!(c.left, unsubscribed, "{}", second.summary());
    assert_eq!(c.left_untouched + c.left_refused, 0);
    // The undelivered contacts listed are exactly those counted.
    let listed: u64 = second.reasons.iter().map(|r| r.count).sum();
    assert_eq!(
        listed,
        c.rejected + c.suppressed + c.not_sent() - c.unchanged,
        "{}",
        second.summary()
    );
}

/// What a run said of its leave phase.
#[derive(Default)]
struct LeaveProgress {
    announced: std::sync::atomic::AtomicU64,
    settled: std::sync::atomic::AtomicU64,
}

impl LeaveProgress {
    fn seen(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.announced.load(SeqCst), self.settled.load(SeqCst))
    }
}

impl connector_host::Progress for LeaveProgress {
    fn leaving(&self, leavers: u64) {
        self.announced
            .store(leavers, std::sync::atomic::Ordering::SeqCst);
    }
    fn advance_leaving(&self, leavers: u64) {
        self.settled
            .fetch_add(leavers, std::sync::atomic::Ordering::SeqCst);
    }
}
