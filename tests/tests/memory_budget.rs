//! What a connector can make the host allocate is one sum, bounded per call and per host:
//!
//! - a component with many core instances, each with its own memory just under the per-call
//!   cap (or its own large table, or simply very many instances), is refused when it loads, and
//!   the host never holds more than one call's cap for it;
//! - calls that each stay under their cap share the host's budget: a run of them waits for room
//!   and completes, and the host's memory stays within the budget;
//! - a report whose strings all name one large buffer is refused before it is copied.
//!
//! One test in its own binary (its own process), so the memory measured is this scenario's.

use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, HostOptions, Limits,
    NoProgress, RunOptions, RunStatus, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{plugin_dir, test_limits};
use connector_tests::hostile::{ExtraInstances, RssSampler, resident_bytes, with_extra_instances};
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;

const API_KEY: &str = "memory-test-key-55e0";
const MIB: u64 = 1 << 20;
/// The host-wide budget this test sets: room for three calls of the `grow` mode at once.
const HOST_BUDGET: usize = 384 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_cannot_take_the_host_past_its_memory_budgets() {
    let limits = Limits {
        host_memory_bytes: HOST_BUDGET,
        ..test_limits()
    };
    let per_call = limits.memory_bytes as u64;
    let options = || HostOptions {
        cache_dir: Some(artifacts::COMPILE_CACHE.into()),
        limits: limits.clone(),
        ..HostOptions::default()
    };
    // Warm up the engine and the allocator, then measure from here.
    let warm = plugin_dir(&[("hostile.wasm", artifacts::HOSTILE)]);
    let _ = ConnectorHost::open(warm.path(), options()).await.unwrap();
    let baseline = resident_bytes();

    // Loading: each attack is refused by `describe()`'s own call, holding at most one cap.
    let attacks = [
        (
            "six-memories.wasm",
            ExtraInstances {
                count: 6,
                memory_mib: 119,
                table_elements: 0,
            },
            "the connector exceeded its memory limit of 128 MiB (a linear memory would have taken",
        ),
        (
            "twelve-memories.wasm",
            ExtraInstances {
                count: 12,
                memory_mib: 119,
                table_elements: 0,
            },
            "the connector exceeded its memory limit of 128 MiB (a linear memory would have taken",
        ),
        (
            "small-memories.wasm",
            ExtraInstances {
                count: 10,
                memory_mib: 14,
                table_elements: 0,
            },
            "the connector exceeded its memory limit of 128 MiB (a linear memory would have taken",
        ),
        (
            "tables.wasm",
            ExtraInstances {
                count: 4,
                memory_mib: 0,
                table_elements: 5_000_000,
            },
            "the connector exceeded its memory limit of 128 MiB (a table would have taken",
        ),
        (
            "instances.wasm",
            ExtraInstances {
                count: 200,
                memory_mib: 0,
                table_elements: 0,
            },
            "the connector's component creates more than 64 core instances",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (file, extra, _) in &attacks {
        with_extra_instances(dir.path(), file, *extra);
    }
    let sampler = RssSampler::start();
    let host = ConnectorHost::open(dir.path(), options()).await.unwrap();
    let load_peak = sampler.peak();
    drop(sampler);
    let plugins = host.plugins();
    assert!(plugins.loaded.is_empty(), "{:?}", plugins.loaded);
    for (file, _, expected) in &attacks {
        let skipped = plugins
            .skipped
            .iter()
            .find(|s| s.path.ends_with(file))
            .unwrap_or_else(|| panic!("{file} was neither loaded nor skipped"));
        assert!(
            skipped.reason.starts_with("describe failed: ") && skipped.reason.contains(expected),
            "{file}: {}",
            skipped.reason
        );
    }
    drop((plugins, host));
    // Five attacks loaded at once, each held to one call's cap.
    let load_extra = load_peak.saturating_sub(baseline);

    // Running: calls that each stay under the cap (100 MiB each) share the host's budget.
    let sim = CampaignMonitorSim::start(0).await.unwrap();
    let list = sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let plugins = plugin_dir(&[
        ("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR),
        ("hostile.wasm", artifacts::HOSTILE),
    ]);
    let host = ConnectorHost::open(plugins.path(), options())
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let files = sample::write_csv(data.path(), 11, 1_000).unwrap();
    let source = FileSource::new(&files.profiles, &files.memberships, "id").unwrap();
    let connection = |connector: &str| Connection {
        connector: connector.into(),
        base_url: Some(sim.base_url()),
        data_centre: None,
        credential: Credential::ApiKey(Secret::new(API_KEY.into())),
    };
    let export = |mode: Option<&str>| {
        let mut settings = vec![("list-id".to_string(), list.clone())];
        settings.extend(mode.map(|m| ("mode".to_string(), m.to_string())));
        Export {
            settings,
            mapping: FieldMapping::parse(&["email=email"]).unwrap(),
            segments: vec!["newsletter".into()],
            leave_action: None,
        }
    };
    let many_at_once = RunOptions {
        concurrency: Some(12),
        ..RunOptions::default()
    };
    let (hostile, healthy) = (connection("hostile"), connection("campaign-monitor"));
    let (grow_export, healthy_export) = (export(Some("grow")), export(None));
    let defaults = RunOptions::default();
    let baseline = resident_bytes();
    let sampler = RssSampler::start();
    let (grown, healthy) = tokio::join!(
        host.run_export(&hostile, &grow_export, &source, &many_at_once, &NoProgress),
        host.run_export(&healthy, &healthy_export, &source, &defaults, &NoProgress),
    );
    let grow_peak = sampler.peak();
    drop(sampler);
    let (grown, healthy) = (grown.unwrap(), healthy.unwrap());
    assert!(healthy.succeeded(), "{}", healthy.summary());
    assert!(
        grown.succeeded(),
        "calls waiting for room must complete: {}",
        grown.summary()
    );
    assert!(grown.counts.created > 0);
    let grow_extra = grow_peak.saturating_sub(baseline);

    // A report whose every message names the same 1 MiB buffer.
    let sampler = RssSampler::start();
    let aliased_export = export(Some("aliased-report"));
    let aliased = host
        .run_export(&hostile, &aliased_export, &source, &defaults, &NoProgress)
        .await
        .unwrap();
    let aliased_peak = sampler.peak();
    drop(sampler);
    let RunStatus::Failed(error) = &aliased.status else {
        panic!("the aliased report was accepted: {}", aliased.summary());
    };
    assert!(
        error.contains("over the 4194304-byte limit on what a call may return"),
        "{error}"
    );
    let aliased_extra = aliased_peak.saturating_sub(baseline);

    eprintln!(
        "host memory over its baseline: loading five instance/memory/table attacks +{} MiB \
         (per-call cap {} MiB); 1,000 contacts in batches of 100 MiB calls, 12 at once, \
         +{} MiB (host budget {} MiB); a report naming one 1 MiB buffer 100 times +{} MiB",
        load_extra / MIB,
        per_call / MIB,
        grow_extra / MIB,
        HOST_BUDGET as u64 / MIB,
        aliased_extra / MIB,
    );
    // Without the sum, six memories took `plugins` to ~800 MiB; each attack now stops at one
    // call's cap, and the five loading at once share the host's budget.
    assert!(
        load_extra < HOST_BUDGET as u64 + 64 * MIB,
        "+{} MiB loading the attacks",
        load_extra / MIB
    );
    // Unbounded, twelve 100 MiB calls at once would hold 1.2 GiB.
    assert!(
        grow_extra < HOST_BUDGET as u64 + 96 * MIB,
        "+{} MiB for calls within their cap",
        grow_extra / MIB
    );
    // Copied, the report would be 100 MiB a batch.
    assert!(
        aliased_extra < 48 * MIB,
        "+{} MiB for the aliased report",
        aliased_extra / MIB
    );
}
