//! Runs a vendor simulator on its own, for connector authors and manual runs:
//! `cargo run -p connector-tests --bin vendor-sim -- campaign-monitor --port 8080`.
//! Prints the base URL, the API key and the list ID to use, then serves until Ctrl-C.

use anyhow::Result;
use clap::{Parser, ValueEnum};
use connector_tests::sim::campaign_monitor::CampaignMonitorSim;

#[derive(Clone, Copy, ValueEnum)]
enum Vendor {
    CampaignMonitor,
}

#[derive(Parser)]
#[command(about = "Serve a local simulator of a vendor's API")]
struct Args {
    /// Which vendor to simulate.
    vendor: Vendor,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// API key the simulated account accepts.
    #[arg(long, default_value = "sim-api-key")]
    api_key: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.vendor {
        Vendor::CampaignMonitor => {
            let sim = CampaignMonitorSim::start(args.port).await?;
            let client = sim.add_client("Simulated client", &args.api_key);
            let list = sim.add_list(&client, "Simulated list");
            println!("Campaign Monitor simulator at {}", sim.base_url());
            println!("API key: {} (Basic auth user)", args.api_key);
            println!("client ID: {client}\nlist ID: {list}");
            tokio::signal::ctrl_c().await?;
            let subscribers = sim.subscribers(&list);
            println!("stopping; the list held {} subscribers", subscribers.len());
        }
    }
    Ok(())
}
