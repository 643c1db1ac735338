//! The conformance check as a library (`connector-check`), driving a simulator the kit does not
//! know: an author's own, through the kit's `Simulator` trait. Every point runs, the ones that
//! fault the vendor and read what it holds included.

use connector_check::vendor_sim::{self, Held, Listen, LoggedRequest, Server, Simulator};
use connector_check::{Check, Outcome, Target};
use connector_host::HostOptions;
use connector_tests::artifacts;

/// An author's simulator: here it answers through the kit's Campaign Monitor one, but the
/// check knows it only as a `Simulator`.
struct AuthorsOwn(Box<dyn Simulator>);

impl Simulator for AuthorsOwn {
    fn connector(&self) -> &'static str {
        "authors-own"
    }
    fn base_url(&self) -> String {
        self.0.base_url()
    }
    fn credential(&self) -> String {
        self.0.credential()
    }
    fn export_settings(&self) -> Vec<(String, String)> {
        self.0.export_settings()
    }
    fn unknown_list_settings(&self) -> Vec<(String, String)> {
        self.0.unknown_list_settings()
    }
    fn keep_out(&self, email: &str) {
        self.0.keep_out(email)
    }
    fn held(&self, email: &str) -> Option<Held> {
        self.0.held(email)
    }
    fn records(&self, email: &str) -> usize {
        self.0.records(email)
    }
    fn server(&self) -> &Server {
        self.0.server()
    }
    fn requests(&self) -> Vec<LoggedRequest> {
        self.0.requests()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_drives_an_authors_own_simulator_through_every_point() {
    let kit = vendor_sim::simulator::start("campaign-monitor", Listen::plain(0))
        .await
        .expect("the kit has it")
        .unwrap();
    let findings = connector_check::check(
        &HostOptions {
            cache_dir: Some(artifacts::COMPILE_CACHE.into()),
            ..HostOptions::default()
        },
        Check {
            file: artifacts::CAMPAIGN_MONITOR.into(),
            target: Target::Simulator(Box::new(AuthorsOwn(kit))),
            settings: vec![],
        },
    )
    .await
    .unwrap();
    let shown = serde_json::to_string_pretty(&findings.to_json()).unwrap();
    assert_eq!(findings.count(Outcome::Failed), 0, "{shown}");
    assert_eq!(findings.count(Outcome::Skipped), 0, "{shown}");
    for point in [
        "a throttled vendor (429) fails the batch as rate-limited, retryable",
        "a suppressed contact is reported suppressed and never resubscribed",
        "an irreversible leave action takes leavers out and leaves suppressed ones alone",
    ] {
        assert!(
            findings
                .points
                .iter()
                .any(|f| f.point == point && f.outcome == Outcome::Passed),
            "{point}: {shown}"
        );
    }
    // The author's simulator said nothing is unconfirmed: nothing is noted.
    assert!(findings.unconfirmed.is_empty(), "{shown}");
}
