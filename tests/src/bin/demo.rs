//! The main job, end to end, with nothing to set up: starts the bundled Campaign Monitor
//! simulator on loopback, puts the connector in a plugin directory, generates a sample profile
//! set, exports one segment through the sandboxed connector, and prints what happened.
//!
//! `cargo run -p connector-tests --bin demo -- --help`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};
use clap::Parser;
use connector_host::{
    Connection, ConsoleProgress, Export, FieldMapping, FileSource, HostOptions, RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::{CampaignMonitorSim, SubscriberState};

#[derive(Parser)]
#[command(
    about = "Export a sample segment to a local Campaign Monitor simulator through the sandboxed connector"
)]
struct Args {
    /// Profiles to generate.
    #[arg(long, default_value_t = 12_000)]
    profiles: u64,
    /// Seed of the sample generator (same seed, same profiles).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Segment to export.
    #[arg(long, default_value = "newsletter")]
    segment: String,
    /// Working directory for the sample files and the plugin directory.
    #[arg(long, default_value_t = format!("{}/demo", artifacts::TARGET_DIR))]
    dir: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = PathBuf::from(&args.dir);
    let started = Instant::now();

    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(
        artifacts::CAMPAIGN_MONITOR,
        plugins.join("campaign-monitor.wasm"),
    )?;
    let files = sample::write_csv(&dir.join("data"), args.seed, args.profiles)?;
    println!(
        "sample: {} profiles in {}",
        args.profiles,
        files.profiles.display()
    );

    // A vendor account on loopback, with a list that already has a few people on it.
    let api_key = format!("demo-{:x}", std::process::id() as u64 * 0x9E37_79B9);
    let sim = CampaignMonitorSim::start(0).await?;
    let client = sim.add_client("Demo Co", &api_key);
    let list = sim.add_list(&client, "Newsletter");
    let mut members = (0..args.profiles)
        .map(|i| sample::profile(args.seed, i))
        .filter(|p| p.segments.contains(&args.segment.as_str()) && p.email.is_some());
    if let (Some(a), Some(b)) = (members.next(), members.next()) {
        sim.add_subscriber(
            &list,
            a.email.as_deref().unwrap(),
            "Previous Name",
            SubscriberState::Active,
        );
        sim.add_subscriber(
            &list,
            b.email.as_deref().unwrap(),
            "Left Us",
            SubscriberState::Unsubscribed,
        );
    }
    println!(
        "Campaign Monitor simulator: {} (list {list})",
        sim.base_url()
    );

    let host = connector_host::ConnectorHost::open(
        &plugins,
        HostOptions {
            cache_dir: Some(artifacts::COMPILE_CACHE.into()),
            ..HostOptions::default()
        },
    )
    .await?;
    for p in &host.plugins().loaded {
        println!(
            "plugin: {} {} from {}",
            p.info.id,
            p.info.version,
            p.path.display()
        );
    }

    let connection = Connection {
        connector: "campaign-monitor".into(),
        base_url: Some(sim.base_url()),
        secret: Secret::new(api_key),
    };
    let export = Export {
        settings: vec![("list-id".into(), list.clone())],
        mapping: FieldMapping::parse(&[
            "email=email",
            "first-name=first_name",
            "last-name=last_name",
        ])?,
        segments: vec![args.segment.clone()],
    };
    let source = FileSource::new(&files.profiles, &files.memberships, "id")?;
    println!("\nexporting segment `{}`...", args.segment);
    let report = host
        .run_export(
            &connection,
            &export,
            &source,
            &RunOptions::default(),
            &ConsoleProgress::new("campaign-monitor"),
        )
        .await?;
    println!("\n{}", report.summary());

    let active = sim
        .subscribers(&list)
        .values()
        .filter(|s| s.state == SubscriberState::Active)
        .count();
    println!("the simulator's list now holds {active} active subscribers");
    println!("\nthe same export from the command line:");
    println!(
        "  CONNECTOR_SECRET=<api key> connector-host --plugins {} run --connector campaign-monitor --base-url {} \\\n    --setting list-id={list} --map email=email --map first-name=first_name --map last-name=last_name \\\n    --segment {} --profiles {} --memberships {}",
        plugins.display(),
        sim.base_url(),
        args.segment,
        files.profiles.display(),
        files.memberships.display()
    );
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(report.succeeded(), "the export failed");
    Ok(())
}
