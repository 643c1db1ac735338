//! The broker on a real network path: HTTPS to the simulators with a CA they made at start,
//! kept-alive connections (HTTP/2 where offered), the CA bundle option, and a delaying proxy
//! in the way.

use std::time::Duration;

use connector_host::{
    Connection, ConnectorHost, Credential, Export, FieldMapping, FileSource, NetworkOptions,
    NoProgress, RunOptions, RunReport, Secret,
};
use connector_tests::artifacts;
use connector_tests::harness::{open_host_with, plugin_dir};
use connector_tests::sample;
use connector_tests::sim::Listen;
use connector_tests::sim::campaign_monitor::{Behaviour, CampaignMonitorSim};
use connector_tests::sim::delay::DelayProxy;
use connector_tests::sim::tls::{ServerCertificate, TestCa};

const API_KEY: &str = "cm-network-key-0123456789";

/// A Campaign Monitor simulator over HTTPS, its CA written to a file, and sample data.
struct World {
    sim: CampaignMonitorSim,
    list: String,
    ca_file: std::path::PathBuf,
    plugins: tempfile::TempDir,
    data: tempfile::TempDir,
    files: sample::SampleFiles,
}

async fn world(profiles: u64) -> World {
    world_with(profiles, TestCa::generate().unwrap()).await
}

/// [`world`] with a simulator holding a certificate from `ca`.
async fn world_with(profiles: u64, ca: std::sync::Arc<TestCa>) -> World {
    let sim = CampaignMonitorSim::start_on(Listen::tls(&ca), Behaviour::default())
        .await
        .unwrap();
    let list = sim.add_list(&sim.add_client("Acme", API_KEY), "Main");
    let data = tempfile::tempdir().unwrap();
    let ca_file = data.path().join("ca.pem");
    ca.write_ca(&ca_file).unwrap();
    let files = sample::write_csv(data.path(), 5, profiles).unwrap();
    World {
        sim,
        list,
        ca_file,
        plugins: plugin_dir(&[("campaign-monitor.wasm", artifacts::CAMPAIGN_MONITOR)]),
        data,
        files,
    }
}

impl World {
    async fn host(&self, network: NetworkOptions) -> ConnectorHost {
        open_host_with(self.plugins.path(), network).await.unwrap()
    }

    fn trusted(&self) -> NetworkOptions {
        NetworkOptions {
            ca_bundle: Some(self.ca_file.clone()),
            ..Default::default()
        }
    }

    /// The words of an export to the simulator that must fail: the report's or the error's.
    async fn refusal(&self, host: &ConnectorHost) -> String {
        match self.export(host, self.sim.base_url()).await {
            Ok(report) => {
                assert!(!report.succeeded(), "the export succeeded");
                report.summary()
            }
            Err(e) => format!("{e:#}"),
        }
    }

    /// Exports `everyone` to the list through `base_url`.
    async fn export(&self, host: &ConnectorHost, base_url: String) -> anyhow::Result<RunReport> {
        let connection = Connection {
            connector: "campaign-monitor".into(),
            base_url: Some(base_url),
            data_centre: None,
            credential: Credential::ApiKey(Secret::new(API_KEY.into())),
        };
        let export = Export {
            settings: vec![("list-id".into(), self.list.clone())],
            mapping: FieldMapping::parse(&["email=email"]).unwrap(),
            segments: vec!["everyone".into()],
            leave_action: None,
        };
        let source = FileSource::new(&self.files.profiles, &self.files.memberships, "id").unwrap();
        host.run_export(
            &connection,
            &export,
            &source,
            &RunOptions::default(),
            &NoProgress,
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_over_https_keeps_its_connections_and_speaks_http2() {
    let w = world(20_000).await;
    let host = w.host(w.trusted()).await;
    let report = w.export(&host, w.sim.base_url()).await.unwrap();
    assert!(report.succeeded(), "{}", report.summary());
    assert!(report.counts.batches >= 19, "{}", report.summary());
    assert_eq!(
        w.sim.subscribers(&w.list).len() as u64,
        report.counts.created,
        "{}",
        report.summary()
    );
    // Twenty-odd requests, over HTTP/2, on a connection or two (the validation call's and the
    // run's), never one a request.
    let connections = w.sim.server().connections();
    assert!(
        (1..=3).contains(&connections),
        "{connections} connections for {} requests",
        report.requests
    );
    assert_eq!(w.sim.server().http2_connections(), connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_connections_open_one_a_request_over_http1() {
    let w = world(5_000).await;
    let host = w
        .host(NetworkOptions {
            fresh_connections: true,
            ..w.trusted()
        })
        .await;
    let report = w.export(&host, w.sim.base_url()).await.unwrap();
    assert!(report.succeeded(), "{}", report.summary());
    let (answered, _) = w.sim.server().answered();
    assert!(answered >= 6, "{answered}");
    assert_eq!(w.sim.server().connections(), answered);
    assert_eq!(w.sim.server().http2_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_certificate_from_an_unknown_ca_is_refused_before_any_request() {
    let w = world(200).await;
    let host = w.host(NetworkOptions::default()).await;
    let words = w.refusal(&host).await;
    // The words name the cause and the remedy, and the run is not retried into the ground.
    assert!(
        words.contains("certificate it does not trust (UnknownIssuer)")
            && words.contains("--ca-bundle"),
        "{words}"
    );
    assert_eq!(w.sim.server().answered().0, 0, "nothing reached the vendor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_or_out_of_date_is_refused_even_from_a_trusted_ca() {
    let for_another_name = ServerCertificate {
        names: vec!["vendor.invalid".into()],
        ..ServerCertificate::default()
    };
    let expired = ServerCertificate {
        expired: true,
        ..ServerCertificate::default()
    };
    for (certificate, cause, remedy) in [
        (
            for_another_name,
            "NotValidForName",
            "check the connection's base URL",
        ),
        (expired, "Expired", "out of date"),
    ] {
        let w = world_with(20, TestCa::generate_with(certificate).unwrap()).await;
        // The CA is in the bundle: only the certificate itself is wrong.
        let host = w.host(w.trusted()).await;
        let words = w.refusal(&host).await;
        assert!(
            words.contains("certificate it does not trust (")
                && words.contains(cause)
                && words.contains(remedy),
            "{words}"
        );
        assert_eq!(w.sim.server().answered().0, 0, "nothing reached the vendor");
    }
}

#[tokio::test]
async fn a_ca_bundle_that_is_not_pem_is_refused_when_the_host_opens() {
    let w = world(10).await;
    for (content, expected) in [
        ("not a certificate\n", "holds no PEM certificate"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "a CA certificate in the CA bundle",
        ),
    ] {
        let bad = w.data.path().join("bad.pem");
        std::fs::write(&bad, content).unwrap();
        let error = open_host_with(
            w.plugins.path(),
            NetworkOptions {
                ca_bundle: Some(bad.clone()),
                ..Default::default()
            },
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{content:?} was accepted"));
        assert!(format!("{error:#}").contains(expected), "{error:#}");
    }
    let missing = open_host_with(
        w.plugins.path(),
        NetworkOptions {
            ca_bundle: Some(w.data.path().join("missing.pem")),
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert!(
        format!("{missing:#}").contains("cannot read the CA bundle"),
        "{missing:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_delaying_proxy_the_export_still_delivers_on_kept_connections() {
    let w = world(3_000).await;
    let proxy = DelayProxy::start(w.sim.server().addr(), Duration::from_millis(40))
        .await
        .unwrap();
    let host = w.host(w.trusted()).await;
    let base_url = w.sim.base_url().replace(
        &w.sim.server().addr().to_string(),
        &proxy.addr().to_string(),
    );
    let report = w.export(&host, base_url).await.unwrap();
    assert!(report.succeeded(), "{}", report.summary());
    assert_eq!(
        w.sim.subscribers(&w.list).len() as u64,
        report.counts.created
    );
    assert!(w.sim.server().connections() <= 3);
}

#[tokio::test]
async fn the_delaying_proxy_adds_its_round_trip_and_one_more_for_a_new_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An echo server on loopback, behind a proxy with a 100 ms round trip.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = echo.accept().await.unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let rtt = Duration::from_millis(100);
    let proxy = DelayProxy::start(target, rtt).await.unwrap();
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut exchange = async |byte: u8| {
        let started = std::time::Instant::now();
        client.write_all(&[byte]).await.unwrap();
        let mut back = [0u8; 1];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back[0], byte, "bytes pass unchanged");
        started.elapsed()
    };
    // Lower bounds only: a loaded machine may take longer, never shorter.
    let first = exchange(b'a').await;
    assert!(
        first >= 2 * rtt,
        "a new connection's first exchange took {first:?}"
    );
    let second = exchange(b'b').await;
    assert!(second >= rtt, "an exchange took {second:?}");
}
