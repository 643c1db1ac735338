//! What the server knows of runs as they go: each run this process works on reports its
//! progress here (for server-sent events) and can be cancelled; and the metrics of runs,
//! contacts and vendor requests, for Prometheus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use connector_host::{Progress, RequestRecord, RunOutcome, RunStatus, RunWatch};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A run's progress as last reported.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Snapshot {
    /// Profiles the run will handle, when known.
    pub total: Option<u64>,
    /// Profiles handled so far.
    pub done: u64,
    /// Once the segment is done: contacts who left it, and how many of them are settled.
    pub leavers: Option<u64>,
    pub leavers_done: u64,
    /// Seconds the phase under way has left, from the pace so far and the vendor's limits.
    pub seconds_left: Option<f64>,
}

struct LiveRun {
    progress: watch::Sender<Snapshot>,
    stop: CancellationToken,
}

/// Runs under way in this process, and the metrics.
#[derive(Default)]
pub struct Live {
    runs: Mutex<HashMap<i64, LiveRun>>,
    pub metrics: Metrics,
}

impl Live {
    /// Follows run `run_id`'s progress, if it is under way in this process.
    pub fn follow(&self, run_id: i64) -> Option<watch::Receiver<Snapshot>> {
        let runs = self.runs.lock().unwrap();
        runs.get(&run_id).map(|r| r.progress.subscribe())
    }

    /// Asks run `run_id` to stop; false when it is not under way in this process.
    pub fn cancel(&self, run_id: i64) -> bool {
        let runs = self.runs.lock().unwrap();
        runs.get(&run_id).map(|r| r.stop.cancel()).is_some()
    }
}

struct RunProgress {
    tx: watch::Sender<Snapshot>,
    done: AtomicU64,
}

impl Progress for RunProgress {
    fn begin(&self, total: Option<u64>) {
        self.tx.send_modify(|s| s.total = total);
    }
    fn advance(&self, profiles: u64) {
        let done = self.done.fetch_add(profiles, Ordering::Relaxed) + profiles;
        self.tx.send_modify(|s| s.done = done);
    }
    fn leaving(&self, leavers: u64) {
        self.tx.send_modify(|s| s.leavers = Some(leavers));
    }
    fn advance_leaving(&self, leavers: u64) {
        self.tx.send_modify(|s| s.leavers_done += leavers);
    }
    fn expect(&self, left: std::time::Duration) {
        self.tx
            .send_modify(|s| s.seconds_left = Some(left.as_secs_f64().round()));
    }
}

impl RunWatch for Live {
    fn started(&self, run_id: i64, stop: &CancellationToken) -> Arc<dyn Progress> {
        let (tx, _) = watch::channel(Snapshot::default());
        self.runs.lock().unwrap().insert(
            run_id,
            LiveRun {
                progress: tx.clone(),
                stop: stop.clone(),
            },
        );
        Arc::new(RunProgress {
            tx,
            done: AtomicU64::new(0),
        })
    }

    fn finished(&self, run_id: i64, connector: &str, outcome: &Result<RunOutcome>) {
        self.runs.lock().unwrap().remove(&run_id);
        self.metrics.run_ended(connector, outcome);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    connector: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendorLabels {
    connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    connector: String,
    status: String,
}

/// The server's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    contacts: Family<RunLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    retries: Family<VendorLabels, Counter>,
    throttled: Family<VendorLabels, Counter>,
    latency: Family<VendorLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("connector_host");
        let runs = Family::<RunLabels, Counter>::default();
        let contacts = Family::<RunLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let retries = Family::<VendorLabels, Counter>::default();
        let throttled = Family::<VendorLabels, Counter>::default();
        let latency = Family::<VendorLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register("runs", "Runs this server made, by outcome", runs.clone());
        registry.register(
            "contacts",
            "Contacts of finished runs, by outcome and vendor (connector)",
            contacts.clone(),
        );
        registry.register(
            "vendor_requests",
            "Requests to vendors, by final status (0: no answer)",
            requests.clone(),
        );
        registry.register(
            "vendor_retries",
            "Requests to vendors sent again",
            retries.clone(),
        );
        registry.register(
            "vendor_throttled",
            "Vendor answers 429 Too Many Requests",
            throttled.clone(),
        );
        registry.register(
            "vendor_request_seconds",
            "Time from a connector's request to the vendor's final answer, retries included",
            latency.clone(),
        );
        Metrics {
            registry,
            runs,
            contacts,
            requests,
            retries,
            throttled,
            latency,
        }
    }
}

impl Metrics {
    /// Counts one brokered request.
    pub fn request(&self, r: &RequestRecord) {
        let vendor = VendorLabels {
            connector: r.connector.clone(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                connector: r.connector.clone(),
                status: r.status.unwrap_or(0).to_string(),
            })
            .inc();
        self.retries
            .get_or_create(&vendor)
            .inc_by(u64::from(r.attempts.saturating_sub(1)));
        self.throttled
            .get_or_create(&vendor)
            .inc_by(u64::from(r.throttled));
        self.latency
            .get_or_create(&vendor)
            .observe(r.latency.as_secs_f64());
    }

    fn run_ended(&self, connector: &str, outcome: &Result<RunOutcome>) {
        let labels = |outcome: &str| RunLabels {
            connector: connector.to_string(),
            outcome: outcome.to_string(),
        };
        let Ok(outcome) = outcome else {
            self.runs.get_or_create(&labels("refused")).inc();
            return;
        };
        let report = &outcome.report;
        let status = match report.status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed(_) => "failed",
            RunStatus::Interrupted => "interrupted",
        };
        self.runs.get_or_create(&labels(status)).inc();
        let c = &report.counts;
        for (what, n) in [
            ("created", c.created),
            ("updated", c.updated),
            ("unchanged", c.unchanged),
            ("suppressed", c.suppressed),
            ("rejected", c.rejected),
            ("left", c.left),
            ("invalid", c.invalid),
            ("duplicate", c.duplicates),
        ] {
            self.contacts.get_or_create(&labels(what)).inc_by(n);
        }
    }

    /// The metrics in Prometheus's text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
