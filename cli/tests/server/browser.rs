//! The console in a real headless Chromium (Debian's `chromium` with its `chromedriver`, which
//! `.ci/run` installs): sign in by keyboard, "Authenticate with Mailchimp" on the simulator, add
//! a connection with an API key, add an export, run it and watch its progress, download its
//! undelivered contacts. A screenshot of every page is kept in
//! `target/tmp/console-screenshots/` (numbered in the order they were taken).

use super::*;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use connector_tests::sim::mailchimp::Behaviour;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use tempfile::TempDir;

/// A program: the environment variable `var` if set, else `default`, which must exist.
fn program(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} is missing: `.ci/run` installs Debian's chromium and chromium-driver (or set {var})",
        path.display()
    );
    path
}

/// A chromedriver on a free loopback port, and the browser it drives; both end when dropped.
struct Browser {
    client: Client,
    driver: Child,
    downloads: TempDir,
    _profile: TempDir,
    shots: PathBuf,
    taken: usize,
}

impl Browser {
    async fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(program("CHROMEDRIVER", "/usr/bin/chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let (profile, downloads) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": program("CHROMIUM", "/usr/bin/chromium"),
                // As root in a container, with nothing reaching past loopback.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display())],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                // chromedriver may still be starting.
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no browser session from chromedriver at {url}: {e}"),
            }
        };
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            downloads,
            _profile: profile,
            shots,
            taken: 0,
        }
    }

    /// Keeps a screenshot of the page as it is now, as `NN-name.png`.
    async fn screenshot(&mut self, name: &str) {
        self.taken += 1;
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        std::fs::write(
            self.shots.join(format!("{:02}-{name}.png", self.taken)),
            png,
        )
        .unwrap();
    }

    async fn go(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text of the first element `css` selects ("" when there is none): read in one
    /// script, so a page being replaced cannot leave a stale element behind.
    async fn text(&self, css: &str) -> String {
        let text = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                vec![json!(css)],
            )
            .await
            .unwrap();
        text.as_str().unwrap_or_default().to_string()
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// The whole page's text.
    async fn page(&self) -> String {
        self.text("body").await
    }

    /// Waits until `check` holds for the page's text; that text.
    async fn until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let page = self.page().await;
            if check(&page) {
                return page;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never {what}; the page:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The one finished file in the download directory, once Chromium has written it.
    async fn downloaded(&self) -> (String, String) {
        let started = Instant::now();
        loop {
            let files: Vec<_> = std::fs::read_dir(self.downloads.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            if let [file] = files.as_slice()
                && file.extension().is_some_and(|e| e == "csv")
            {
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                return (name, std::fs::read_to_string(file).unwrap());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no download finished: {files:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_authenticates_adds_runs_and_downloads() {
    // Each Mailchimp call takes a second, and the segment needs three rounds of 10 batches
    // in flight, so that the run's progress can be watched for seconds, even on a busy machine.
    let behaviour = Behaviour {
        latency: Duration::from_secs(1),
        ..Behaviour::default()
    };
    let mc = MailchimpSim::start_with(0, behaviour).await.unwrap();
    let key = mc.add_account("Acme Mail", "us21");
    let audience = mc.add_audience(&key, "Customers");
    let (cm, _client, _list) = vendor(Duration::ZERO).await;
    let op = Operator::new(43, 20_000);
    // A third connector dropped into the plugin directory waits for an administrator.
    std::fs::copy(
        connector_tests::artifacts::HOSTILE,
        op.path("plugins").join("hostile.wasm"),
    )
    .unwrap();
    let w = world_of(op);
    let (id, secret) = mc.register_oauth_app(&format!("{}/oauth/callback", w.server.url));
    super::oauth::set_mailchimp_app(&w, &mc, &id, &secret);
    let url = w.server.url.clone();
    let mut b = Browser::start().await;

    // Signing in, by keyboard alone: the name field has the focus, Tab, Enter.
    b.go(&format!("{url}/exports")).await;
    assert_eq!(b.text("h1").await, "Sign in");
    b.screenshot("sign-in").await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(&format!(
            "ada{}{ADMIN_PASSWORD}{}",
            char::from(Key::Tab),
            char::from(Key::Enter)
        ))
        .await
        .unwrap();
    b.until("signed in", |p| p.contains("ada (administrator)"))
        .await;
    assert_eq!(b.text("h1").await, "Exports");
    assert!(b.page().await.contains("No connection is open to you yet."));
    b.screenshot("exports-empty").await;

    // "Authenticate with Mailchimp": the simulator's authorize page, Allow, back.
    b.click("a[href='/connections']").await;
    b.screenshot("connections-empty").await;
    b.type_into("#name-mailchimp", "acme-mailchimp").await;
    b.click("#contributors-mailchimp").await;
    b.click("#privacy-mailchimp").await;
    b.find("form[action='/connections/authenticate'] button")
        .await
        .click()
        .await
        .unwrap();
    b.until("at the vendor's page", |p| p.contains("Allow access"))
        .await;
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&mc.oauth_url())
    );
    b.screenshot("mailchimp-authorize").await;
    b.click("#allow").await;
    let added = b.until("back", |p| p.contains("is saved")).await;
    assert!(
        added.contains("Connection acme-mailchimp to Mailchimp is saved"),
        "{added}"
    );
    b.screenshot("connection-added").await;

    // A second connection with an API key (Campaign Monitor, on its simulator).
    b.go(&format!("{url}/connections")).await;
    b.type_into("#key-name", "acme-cm").await;
    b.find("#key-connector")
        .await
        .select_by_value("campaign-monitor")
        .await
        .unwrap();
    b.type_into("#key-secret", API_KEY).await;
    b.type_into("#key-base", &cm.base_url()).await;
    b.click("#privacy-key").await;
    b.click("form[action='/connections'] button").await;
    let connections = b.until("two connections", |p| p.contains("acme-cm")).await;
    assert!(
        connections.contains("acme-cm\tCampaign Monitor\tAPI key"),
        "{connections}"
    );
    assert!(
        connections.contains("acme-mailchimp\tMailchimp\tOAuth"),
        "{connections}"
    );
    b.screenshot("connections").await;

    // Add destination: an export of `newsletter` to the Mailchimp audience.
    b.click("a[href='/exports']").await;
    b.type_into("#export-name", "newsletter-to-mailchimp").await;
    b.find("#export-connection")
        .await
        .select_by_value("acme-mailchimp")
        .await
        .unwrap();
    b.type_into("#export-settings", &format!("audience-id={audience}"))
        .await;
    b.type_into("#export-segments", "newsletter").await;
    b.screenshot("add-destination").await;
    b.click("form[action='/exports'] button").await;
    let export = b
        .until("the export's page", |p| {
            p.contains("Export newsletter-to-mailchimp")
        })
        .await;
    assert!(
        export.contains(&format!("audience-id = {audience}")),
        "{export}"
    );
    b.screenshot("export").await;

    // Run now: the run's page follows its progress, then shows its counts.
    b.click("form[action$='/run'] button").await;
    b.until("the run's page", |p| p.contains("Run #")).await;
    // The bar as the server-sent events move it: some profiles done, not all.
    let started = Instant::now();
    let (done, total) = loop {
        let bar = b
            .client
            .execute(
                "const p = document.getElementById('progress');
                 return p ? [p.value, p.max, document.getElementById('done').textContent] : null;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            !bar.is_null(),
            "the run ended before its progress could be seen"
        );
        let (done, total) = (bar[0].as_f64().unwrap(), bar[1].as_f64().unwrap());
        if done > 0.0 {
            assert_eq!(bar[2], format!("{done} of {total} profiles"));
            break (done, total);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress: {bar}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(done < total, "progress {done} of {total}");
    assert_eq!(b.text("#state").await, "running");
    b.screenshot("run-in-progress").await;
    let finished = b
        .until("the run's end", |p| p.contains("Status: succeeded"))
        .await;
    let run_id: i64 = b
        .client
        .current_url()
        .await
        .unwrap()
        .path()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let run = w.finished(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let profiles = run["counts"]["profiles"].as_u64().unwrap();
    assert_eq!(
        profiles as f64, total,
        "the bar's total is the run's profiles"
    );
    assert!(
        finished.contains(&format!("profiles\t{profiles}")),
        "{finished}"
    );
    assert_eq!(
        mc.members(&audience).len() as u64,
        run["counts"]["created"].as_u64().unwrap()
    );
    b.screenshot("run-finished").await;

    // The undelivered contacts, downloaded as the browser does it: the same as the API's.
    b.click("a[href$='/rejections.csv']").await;
    let (file, csv) = b.downloaded().await;
    assert_eq!(file, format!("run-{run_id}-rejections.csv"));
    let api_csv = client()
        .get(format!("{url}/api/v1/runs/{run_id}/rejections"))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv, api_csv);
    assert!(csv.starts_with("profile_id,email,kind,stage,code,message,since\n"));
    for kind in ["rejected", "invalid"] {
        let counted = run["counts"][kind].as_u64().unwrap();
        let rows = csv
            .lines()
            .filter(|l| l.contains(&format!(",{kind},")))
            .count();
        assert!(counted > 0, "the sample has {kind} contacts: {run}");
        assert_eq!(rows as u64, counted, "{kind} rows in\n{csv}");
    }

    // The lists of runs and of connectors.
    b.click("a[href='/runs']").await;
    assert!(b.page().await.contains("newsletter-to-mailchimp"));
    b.screenshot("runs").await;
    // The connector awaiting approval, approved.
    b.click("a[href='/connectors']").await;
    let connectors = b.page().await;
    assert!(connectors.contains("Mailchimp (mailchimp)"), "{connectors}");
    assert_eq!(
        b.text("form[action='/connectors/hostile/approve'] button")
            .await,
        "Approve"
    );
    b.screenshot("connectors-awaiting-approval").await;
    b.click("form[action='/connectors/hostile/approve'] button")
        .await;
    b.until("approved", |p| !p.contains("Approve")).await;
    let (_, connectors) = w
        .call(Some(&w.admin), "GET", "/api/v1/connectors", None)
        .await;
    let hostile = connectors
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "hostile")
        .unwrap();
    assert_eq!(hostile["approval"], "approved", "{hostile}");
    b.screenshot("connectors-approved").await;

    b.client.clone().close().await.unwrap();
}
