//! The main job, end to end, with nothing to set up: starts the bundled Campaign Monitor and
//! Mailchimp simulators on loopback, puts both connectors in a plugin directory, generates a
//! sample profile set, and runs two exports (two connections) through the sandboxed connectors,
//! printing progress and what each run did.
//!
//! `cargo run -p connector-tests --bin demo -- --help`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};
use clap::Parser;
use connector_host::{
    Connection, ConnectorHost, ConsoleProgress, Credential, Export, FieldMapping, FileSource,
    HostOptions, RunOptions, Secret,
};
use connector_tests::artifacts;
use connector_tests::sample;
use connector_tests::sim::campaign_monitor::{CampaignMonitorSim, SubscriberState};
use connector_tests::sim::mailchimp::{MailchimpSim, Status};

#[derive(Parser)]
#[command(
    about = "Export sample segments to local Campaign Monitor and Mailchimp simulators through the sandboxed connectors"
)]
struct Args {
    /// Profiles to generate.
    #[arg(long, default_value_t = 12_000)]
    profiles: u64,
    /// Seed of the sample generator (same seed, same profiles).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Segment exported to Campaign Monitor.
    #[arg(long, default_value = "newsletter")]
    campaign_monitor_segment: String,
    /// Segment exported to Mailchimp.
    #[arg(long, default_value = "vip")]
    mailchimp_segment: String,
    /// Working directory for the sample files and the plugin directory.
    #[arg(long, default_value_t = format!("{}/demo", artifacts::TARGET_DIR))]
    dir: String,
}

/// Two members of `segment` with an email, to seed the vendors with people already there.
fn two_members(args: &Args, segment: &str) -> (String, String) {
    let mut members = (0..args.profiles)
        .map(|i| sample::profile(args.seed, i))
        .filter(|p| p.segments.contains(&segment) && p.email.is_some())
        .map(|p| p.email.unwrap());
    (
        members.next().expect("segment has members"),
        members.next().expect("segment has members"),
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let dir = PathBuf::from(&args.dir);
    let plugins = dir.join("plugins");
    connector_tests::harness::install_connectors(&plugins)?;
    let files = sample::write_csv(&dir.join("data"), args.seed, args.profiles)?;
    println!(
        "sample: {} profiles in {}",
        args.profiles,
        files.profiles.display()
    );

    // Two vendor accounts on loopback, each already holding a subscriber and someone who left.
    let cm = CampaignMonitorSim::start(0).await?;
    let cm_key = format!("demo-{:x}", std::process::id() as u64 * 0x9E37_79B9);
    let cm_list = cm.add_list(&cm.add_client("Demo Co", &cm_key), "Newsletter");
    let (a, b) = two_members(&args, &args.campaign_monitor_segment);
    cm.add_subscriber(&cm_list, &a, "Previous Name", SubscriberState::Active);
    cm.add_subscriber(&cm_list, &b, "Left Us", SubscriberState::Unsubscribed);
    println!(
        "Campaign Monitor simulator: {} (list {cm_list})",
        cm.base_url()
    );

    let mc = MailchimpSim::start(0).await?;
    let mc_key = mc.add_account("Demo Co", "us21");
    let mc_audience = mc.add_audience(&mc_key, "VIP customers");
    let (a, b) = two_members(&args, &args.mailchimp_segment);
    mc.add_member(
        &mc_audience,
        &a,
        Status::Subscribed,
        &[("FNAME", "Previous")],
    );
    mc.add_member(&mc_audience, &b, Status::Unsubscribed, &[]);
    println!(
        "Mailchimp simulator: {} (audience {mc_audience})",
        mc.base_url("us21")
    );

    let options = HostOptions {
        cache_dir: Some(artifacts::COMPILE_CACHE.into()),
        ..HostOptions::default()
    };
    let host = ConnectorHost::open(&plugins, options).await?;
    for p in &host.plugins().loaded {
        println!(
            "plugin: {} {} from {}",
            p.info.id,
            p.info.version,
            p.path.display()
        );
    }

    let mapping = FieldMapping::parse(&[
        "email=email",
        "first-name=first_name",
        "last-name=last_name",
    ])?;
    let runs = [
        (
            Connection {
                connector: "campaign-monitor".into(),
                base_url: Some(cm.base_url()),
                data_centre: None,
                credential: Credential::ApiKey(Secret::new(cm_key)),
            },
            Export {
                settings: vec![("list-id".into(), cm_list.clone())],
                mapping: mapping.clone(),
                segments: vec![args.campaign_monitor_segment.clone()],
                leave_action: None,
            },
        ),
        (
            Connection {
                connector: "mailchimp".into(),
                base_url: Some(mc.base_url("{dc}")),
                data_centre: None,
                credential: Credential::ApiKey(Secret::new(mc_key)),
            },
            Export {
                settings: vec![("audience-id".into(), mc_audience.clone())],
                mapping,
                segments: vec![args.mailchimp_segment.clone()],
                leave_action: None,
            },
        ),
    ];
    let source = FileSource::new(&files.profiles, &files.memberships, "id")?;
    let mut all_ok = true;
    for (connection, export) in &runs {
        println!(
            "\nexporting segment `{}` to {}...",
            export.segments[0], connection.connector
        );
        let progress = ConsoleProgress::new(&connection.connector);
        let report = host
            .run_export(
                connection,
                export,
                &source,
                &RunOptions::default(),
                &progress,
            )
            .await?;
        println!("{}", report.summary());
        all_ok &= report.succeeded();
    }

    let cm_active = cm
        .subscribers(&cm_list)
        .values()
        .filter(|s| s.state == SubscriberState::Active)
        .count();
    let mc_subscribed = mc
        .members(&mc_audience)
        .values()
        .filter(|m| m.status == Status::Subscribed)
        .count();
    println!(
        "Campaign Monitor list now holds {cm_active} active subscribers; Mailchimp audience {mc_subscribed} subscribed members."
    );
    println!(
        "\nthe same Campaign Monitor export from the command line (an administrator approves the connector once):"
    );
    println!(
        "  connector-host --plugins {} plugins approve campaign-monitor",
        plugins.display()
    );
    println!(
        "  CONNECTOR_SECRET=<api key> connector-host --plugins {} run --connector campaign-monitor --base-url {} \\\n    --setting list-id={cm_list} --map email=email --map first-name=first_name --map last-name=last_name \\\n    --segment {} --profiles {} --memberships {}",
        plugins.display(),
        cm.base_url(),
        args.campaign_monitor_segment,
        files.profiles.display(),
        files.memberships.display()
    );
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(all_ok, "an export failed");
    Ok(())
}
