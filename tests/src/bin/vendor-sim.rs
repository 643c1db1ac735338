//! Runs a vendor simulator on its own, for connector authors and manual runs:
//! `cargo run -p connector-tests --bin vendor-sim -- campaign-monitor --port 8080` (or
//! `mailchimp`, `mailerlite`, `brevo`).
//! Prints the base URL, credential and list to use, then serves until Ctrl-C. With
//! `--sample-data DIR` it also writes sample profiles to export (README.md's first session).

use anyhow::Result;
use clap::{Parser, ValueEnum};
use connector_tests::sample;
use connector_tests::sim::Listen;
use connector_tests::sim::brevo::{self, BrevoSim};
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;
use connector_tests::sim::mailchimp::MailchimpSim;
use connector_tests::sim::mailerlite::{MailerLiteSim, RateLimits};

#[derive(Clone, Copy, ValueEnum)]
enum Vendor {
    CampaignMonitor,
    Mailchimp,
    Mailerlite,
    Brevo,
}

#[derive(Parser)]
#[command(about = "Serve a local simulator of a vendor's API")]
struct Args {
    /// Which vendor to simulate.
    vendor: Vendor,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Campaign Monitor: the API key the simulated account accepts.
    #[arg(long, default_value = "sim-api-key")]
    api_key: String,
    /// MailerLite and Brevo: the API token (key) the simulated account accepts.
    #[arg(long, default_value = "sim-token")]
    token: String,
    /// MailerLite and Brevo: lift the vendor's limits (MailerLite's 120 requests and 5
    /// imports a minute, Brevo's 10 a second and 36,000 an hour on /contacts).
    #[arg(long)]
    no_limits: bool,
    /// Mailchimp: the data centre of the simulated account.
    #[arg(long, default_value = "us21")]
    data_centre: String,
    /// Also write sample profiles (profiles.csv, memberships.csv) into this directory.
    #[arg(long, value_name = "DIR")]
    sample_data: Option<std::path::PathBuf>,
    /// How many sample profiles to write.
    #[arg(long, default_value_t = sample::README_PROFILES)]
    profiles: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.sample_data {
        let files = sample::write_csv(dir, sample::README_SEED, args.profiles)?;
        println!(
            "{} sample profiles: {} and {}",
            args.profiles,
            files.profiles.display(),
            files.memberships.display()
        );
    }
    match args.vendor {
        Vendor::CampaignMonitor => {
            let sim = CampaignMonitorSim::start(args.port).await?;
            let client = sim.add_client("Simulated client", &args.api_key);
            let list = sim.add_list(&client, "Simulated list");
            println!("Campaign Monitor simulator at {}", sim.base_url());
            println!(
                "API key: {} (Basic auth user)\nclient ID: {client}\nlist ID: {list}",
                args.api_key
            );
            tokio::signal::ctrl_c().await?;
            println!(
                "stopping; the list held {} subscribers",
                sim.subscribers(&list).len()
            );
        }
        Vendor::Mailchimp => {
            let sim = MailchimpSim::start(args.port).await?;
            let key = sim.add_account("Simulated account", &args.data_centre);
            let audience = sim.add_audience(&key, "Simulated audience");
            println!(
                "Mailchimp simulator at {} (connection base URL: {})",
                sim.base_url(&args.data_centre),
                sim.base_url("{dc}")
            );
            println!(
                "API key: {key}\naudience ID: {audience}\nOAuth endpoints: {}/token, {}/metadata",
                sim.oauth_url(),
                sim.oauth_url()
            );
            tokio::signal::ctrl_c().await?;
            println!(
                "stopping; the audience held {} members",
                sim.members(&audience).len()
            );
        }
        Vendor::Mailerlite => {
            let limits = if args.no_limits {
                RateLimits::NONE
            } else {
                RateLimits::REAL
            };
            let sim =
                MailerLiteSim::start_with(Listen::plain(args.port), &args.token, limits).await?;
            let group = sim.add_group("Simulated group");
            println!("MailerLite simulator at {}", sim.base_url());
            println!(
                "API token: {} (Bearer)\ngroup ID: {group}\nlimits: {}",
                args.token,
                if args.no_limits {
                    "none".to_string()
                } else {
                    format!(
                        "{} requests and {} imports a minute",
                        limits.requests, limits.imports
                    )
                }
            );
            tokio::signal::ctrl_c().await?;
            println!(
                "stopping; the account held {} subscribers",
                sim.subscribers().len()
            );
        }
        Vendor::Brevo => {
            let limits = if args.no_limits {
                brevo::RateLimits::NONE
            } else {
                brevo::RateLimits::REAL
            };
            let sim = BrevoSim::start_with(Listen::plain(args.port), &args.token, limits).await?;
            let list = sim.add_list("Simulated list");
            println!("Brevo simulator at {}", sim.base_url());
            println!(
                "API key: {} (the api-key header)\nlist ID: {list}\nlimits: {}",
                args.token,
                if args.no_limits {
                    "none"
                } else {
                    "10 a second and 36,000 an hour on /contacts"
                }
            );
            tokio::signal::ctrl_c().await?;
            println!(
                "stopping; the account held {} contacts",
                sim.contacts().len()
            );
        }
    }
    Ok(())
}
