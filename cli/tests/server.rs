//! `connector-host serve --listen`: the HTTP API end to end against the simulators, its role
//! matrix, the console's sign-in and "Authenticate with <vendor>" for both vendors, and the
//! operations endpoints. The server is the built binary, driven over real HTTP.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use connector_tests::sim::mailchimp::MailchimpSim;
use connector_tests::sim::oauth::AUTHORIZE_PARAMS;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use support::*;

const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A server process on a free port; killed when dropped.
struct Running {
    child: Child,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An operator with an administrator `ada` (password and token) and a contributor `cy`
/// (token), and the server started.
struct World {
    op: Operator,
    server: Running,
    admin: String,
    contributor: String,
}

fn start(op: &Operator) -> Running {
    let mut child = op
        .command(&["serve", "--listen", "127.0.0.1:0", "--poll-seconds", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Running { child, url }
}

fn world() -> World {
    let op = Operator::new(41, 400);
    let out = op
        .command(&[
            "users",
            "add",
            "ada",
            "--role",
            "administrator",
            "--password-env",
            "ADA_PASSWORD",
        ])
        .env("ADA_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    op.ok(&["users", "add", "cy", "--role", "contributor"]);
    let admin = op
        .ok(&["tokens", "create", "ada", "--label", "tests"])
        .trim()
        .to_string();
    let contributor = op.ok(&["tokens", "create", "cy"]).trim().to_string();
    assert!(admin.starts_with("cht_") && admin.len() > 40, "{admin}");
    let server = start(&op);
    World {
        op,
        server,
        admin,
        contributor,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

impl World {
    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = client().request(
            method.parse().unwrap(),
            format!("{}{path}", self.server.url),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{method} {path}"
            );
        }
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits for run `id` to end; the run.
    async fn finished(&self, id: i64) -> Value {
        let started = Instant::now();
        loop {
            let (status, run) = self
                .call(
                    Some(&self.admin),
                    "GET",
                    &format!("/api/v1/runs/{id}"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{run}");
            if !["queued", "running"].contains(&run["status"].as_str().unwrap()) {
                return run;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "run {id} never ended: {run}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_saves_runs_and_reports_exports_with_roles_enforced() {
    let (sim, _client, list) = vendor(Duration::ZERO).await;
    let w = world();
    let (admin, contributor) = (Some(w.admin.as_str()), Some(w.contributor.as_str()));

    // Connections: administrators only, the privacy notice required.
    let connection = |name: &str, access: &str, privacy: bool| {
        json!({"name": name, "connector": "campaign-monitor", "api_key": API_KEY,
            "base_url": sim.base_url(), "access": access, "accept_privacy_notice": privacy})
    };
    let (status, problem) = w
        .call(
            admin,
            "POST",
            "/api/v1/connections",
            Some(connection("acme", "contributors", false)),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("privacy notice"),
        "{problem}"
    );
    let (status, _) = w
        .call(
            contributor,
            "POST",
            "/api/v1/connections",
            Some(connection("acme", "contributors", true)),
        )
        .await;
    assert_eq!(status, 403);
    let (status, saved) = w
        .call(
            admin,
            "POST",
            "/api/v1/connections",
            Some(connection("acme", "contributors", true)),
        )
        .await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["credential"], "api-key");
    assert!(!saved.to_string().contains(API_KEY));
    let (status, _) = w
        .call(
            admin,
            "POST",
            "/api/v1/connections",
            Some(connection("acme", "contributors", true)),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = w
        .call(
            admin,
            "POST",
            "/api/v1/connections",
            Some(connection("private", "administrators", true)),
        )
        .await;
    assert_eq!(status, 201);

    // A contributor sees only what is opened to contributors.
    let (_, listed) = w
        .call(contributor, "GET", "/api/v1/connections", None)
        .await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme"]);
    let (status, _) = w
        .call(contributor, "GET", "/api/v1/connections/private", None)
        .await;
    assert_eq!(status, 404);

    // An export by the contributor, run now, followed to the end.
    let export = |name: &str, connection: &str| {
        json!({"name": name, "connection": connection, "settings": {"list-id": list},
            "mapping": {"email": "email", "first-name": "first_name", "last-name": "last_name"},
            "segments": ["newsletter"]})
    };
    let (status, problem) = w
        .call(
            contributor,
            "POST",
            "/api/v1/exports",
            Some(export("weekly", "private")),
        )
        .await;
    assert_eq!(status, 404, "{problem}");
    let (status, saved) = w
        .call(
            contributor,
            "POST",
            "/api/v1/exports",
            Some(export("weekly", "acme")),
        )
        .await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["mapping"]["first-name"], "first_name");
    let (status, plan) = w
        .call(
            contributor,
            "POST",
            "/api/v1/exports/weekly/dry-run",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert!(sim.subscribers(&list).is_empty(), "a dry run sends nothing");
    let (status, queued) = w
        .call(
            contributor,
            "POST",
            "/api/v1/exports/weekly/runs",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["run_id"].as_i64().unwrap();

    // Live progress as server-sent events, ending with the run.
    let events = client()
        .get(format!("{}/api/v1/runs/{id}/events", w.server.url))
        .bearer_auth(&w.contributor)
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let stream = tokio::time::timeout(Duration::from_secs(120), events.text())
        .await
        .expect("the event stream ends with the run")
        .unwrap();
    assert!(stream.contains("event: end"), "{stream}");

    let run = w.finished(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["started_by"], "cy");
    let created = run["counts"]["created"].as_u64().unwrap();
    assert!(created > 0);
    assert_eq!(created as usize, sim.subscribers(&list).len());

    // Its undelivered contacts as CSV: a header, then one line per contact not delivered.
    let csv = client()
        .get(format!("{}/api/v1/runs/{id}/rejections", w.server.url))
        .bearer_auth(&w.contributor)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert!(
        csv.starts_with("profile_id,email,kind,stage,code,message,since"),
        "{csv}"
    );
    assert!(csv.lines().count() > 1, "the sample data has bad rows");
    // The same list the CLI gives.
    assert_eq!(
        csv,
        w.op.ok(&["runs", "rejections", &id.to_string(), "--csv"])
    );

    // The role matrix: every endpoint without a token, with a wrong one, as a contributor
    // and as an administrator.
    let matrix: &[(&str, &str, Option<Value>, u16, u16)] = &[
        // method, path, body, contributor, administrator
        ("GET", "/api/v1/me", None, 200, 200),
        ("GET", "/api/v1/connectors", None, 200, 200),
        (
            "POST",
            "/api/v1/connectors/campaign-monitor/approve",
            None,
            403,
            200,
        ),
        ("GET", "/api/v1/connections", None, 200, 200),
        ("GET", "/api/v1/connections/acme", None, 200, 200),
        ("GET", "/api/v1/connections/private", None, 404, 200),
        ("POST", "/api/v1/connections/acme/test", None, 204, 204),
        (
            "PATCH",
            "/api/v1/connections/acme",
            Some(json!({"access": "contributors"})),
            403,
            200,
        ),
        ("GET", "/api/v1/exports", None, 200, 200),
        ("GET", "/api/v1/exports/weekly", None, 200, 200),
        (
            "PATCH",
            "/api/v1/exports/weekly",
            Some(json!({"schedule": "0 6 * * 1"})),
            200,
            200,
        ),
        ("GET", "/api/v1/runs", None, 200, 200),
        (
            "GET",
            Box::leak(format!("/api/v1/runs/{id}").into_boxed_str()),
            None,
            200,
            200,
        ),
        ("POST", "/api/v1/runs/999999/cancel", None, 404, 404),
        ("DELETE", "/api/v1/connections/private", None, 403, 204),
    ];
    for (i, (method, path, body, as_contributor, as_admin)) in matrix.iter().enumerate() {
        let (status, _) = w.call(None, method, path, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        // A wrong token is a failed sign-in: the matrix tries it on as many endpoints as
        // the limit allows (the limit itself is tested below).
        if i < 9 {
            let (status, _) = w
                .call(Some("cht_not-a-token"), method, path, body.clone())
                .await;
            assert_eq!(status, 401, "{method} {path} with a wrong token");
        }
        let (status, answer) = w.call(contributor, method, path, body.clone()).await;
        assert_eq!(
            status.as_u16(),
            *as_contributor,
            "{method} {path} as a contributor: {answer}"
        );
        let (status, answer) = w.call(admin, method, path, body.clone()).await;
        assert_eq!(
            status.as_u16(),
            *as_admin,
            "{method} {path} as an administrator: {answer}"
        );
    }

    // Operations.
    let get = |path: &str| client().get(format!("{}{path}", w.server.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"connector_host_runs_total{connector="campaign-monitor",outcome="succeeded"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        r#"connector_host_contacts_total{{connector="campaign-monitor",outcome="created"}} {created}"#
    )));
    assert!(metrics.contains("connector_host_vendor_request_seconds_bucket"));
    let doc: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/exports/{name}/runs"]["post"].is_object());

    // Every change is in the audit log with who made it; tokens are stored only as hashes.
    let audit: Value = serde_json::from_str(&w.op.ok(&["audit", "--json"])).unwrap();
    let entries: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["subject"].as_str().unwrap().into(),
            )
        })
        .collect();
    for expected in [
        ("ada", "connection.add", "acme"),
        ("cy", "export.add", "weekly"),
        ("cy", "export.edit", "weekly"),
        ("ada", "connection.remove", "private"),
    ] {
        assert!(
            entries
                .iter()
                .any(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()) == expected),
            "{expected:?} missing from {entries:?}"
        );
    }
    // (The tokens themselves are in the test's log of command output, where `tokens create`
    // showed them once; the state must not hold them.)
    let mut files = vec![];
    walk(&w.op.path("state"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for secret in [&w.admin, &w.contributor, ADMIN_PASSWORD, API_KEY] {
            assert!(
                !bytes.windows(secret.len()).any(|s| s == secret.as_bytes()),
                "{} holds a secret",
                file.display()
            );
        }
    }

    // One wrong token more reaches the limit of failed sign-ins from this address.
    let (status, _) = w.call(Some("cht_guess"), "GET", "/api/v1/me", None).await;
    assert_eq!(status, 401);
    let (status, problem) = w.call(admin, "GET", "/api/v1/me", None).await;
    assert_eq!(status, 429, "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_limited_and_sessions_need_their_csrf_token() {
    let w = world();
    let browser = client();
    let url = &w.server.url;
    // A right password signs in; the session cookie is HttpOnly.
    let answer = browser
        .post(format!("{url}/sign-in"))
        .form(&[("name", "ada"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // With the session: reading works; a change without the CSRF token is refused.
    let me: Value = browser
        .get(format!("{url}/api/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "ada");
    let refused = browser
        .post(format!("{url}/api/v1/connectors/mailchimp/approve"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let page = browser
        .get(format!("{url}/connectors"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&page, "csrf");
    let approved = browser
        .post(format!("{url}/api/v1/connectors/mailchimp/approve"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    // Wrong passwords, then too many: 429 with Retry-After, even for the right one.
    for _ in 0..10 {
        let answer = client()
            .post(format!("{url}/sign-in"))
            .form(&[("name", "ada"), ("password", "wrong password!!")])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401);
    }
    let answer = client()
        .post(format!("{url}/sign-in"))
        .form(&[("name", "ada"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("retry-after"));
}

/// The value of the hidden input `name` in a page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..start + page[start..].find('"').unwrap()]
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
}

/// The console's "Authenticate with <vendor>": sign in, start, allow at the vendor, back.
async fn authenticate(w: &World, connector: &str, name: &str) -> reqwest::Response {
    let browser = client();
    let url = &w.server.url;
    browser
        .post(format!("{url}/sign-in"))
        .form(&[("name", "ada"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    let page = browser
        .get(format!("{url}/connections"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Authenticate with"), "{page}");
    let csrf = hidden(&page, "csrf");
    let to_vendor = browser
        .post(format!("{url}/connections/authenticate"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("connector", connector),
            ("name", name),
            ("access", "contributors"),
            ("privacy", "accepted"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        to_vendor.status(),
        303,
        "{}",
        to_vendor.text().await.unwrap()
    );
    let authorize = to_vendor.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        authorize.contains("state=") && authorize.contains("client_id="),
        "{authorize}"
    );
    let vendor_page = client()
        .get(&authorize)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(vendor_page.contains("Allow access"), "{vendor_page}");
    let mut form: Vec<(String, String)> = AUTHORIZE_PARAMS
        .iter()
        .map(|k| (k.to_string(), hidden(&vendor_page, k)))
        .collect();
    form.push(("account".into(), "0".into()));
    form.push(("decision".into(), "allow".into()));
    let origin: String = authorize.split('/').take(3).collect::<Vec<_>>().join("/");
    let action = vendor_page
        .split(r#"action=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let back = client()
        .post(format!("{origin}{action}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 303);
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    assert!(
        callback.starts_with(&format!("{url}/oauth/callback?code=")),
        "{callback}"
    );
    let done = browser.get(&callback).send().await.unwrap();
    // The state is spent: the same answer again is refused.
    let again = browser.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), 400);
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticate_with_mailchimp_and_campaign_monitor_saves_working_connections() {
    let (cm, _client, list) = vendor(Duration::ZERO).await;
    let mc = MailchimpSim::start(0).await.unwrap();
    let key = mc.add_account("Acme Mail", "us21");
    let audience = mc.add_audience(&key, "Customers");
    let w = world();
    let redirect = format!("{}/oauth/callback", w.server.url);
    let (cm_id, cm_secret) = cm.register_oauth_app(&redirect);
    let (mc_id, mc_secret) = mc.register_oauth_app(&redirect);
    let set = |connector: &str, id: &str, secret: &str, extra: &[String]| {
        let mut args: Vec<String> = ["oauth-app", "set", connector, "--client-id", id]
            .map(String::from)
            .to_vec();
        args.extend_from_slice(extra);
        let out =
            w.op.command(&args)
                .env("CONNECTOR_OAUTH_CLIENT_SECRET", secret)
                .output()
                .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let cm_root = cm.authorize_url();
    set(
        "campaign-monitor",
        &cm_id,
        &cm_secret,
        &[
            "--authorize-url".into(),
            cm_root.clone(),
            "--token-url".into(),
            cm.token_url(),
            "--base-url".into(),
            cm.base_url(),
            // The simulator checks a PKCE challenge when one is sent.
            "--pkce".into(),
        ],
    );
    set(
        "mailchimp",
        &mc_id,
        &mc_secret,
        &[
            "--authorize-url".into(),
            format!("{}/authorize", mc.oauth_url()),
            "--token-url".into(),
            format!("{}/token", mc.oauth_url()),
            "--metadata-url".into(),
            format!("{}/metadata", mc.oauth_url()),
            "--base-url".into(),
            mc.base_url("{dc}"),
        ],
    );

    for (connector, name) in [("mailchimp", "mc"), ("campaign-monitor", "cm")] {
        let done = authenticate(&w, connector, name).await;
        let status = done.status();
        let page = done.text().await.unwrap();
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("Connection added"), "{page}");
    }
    let (_, mc_conn) = w
        .call(Some(&w.admin), "GET", "/api/v1/connections/mc", None)
        .await;
    assert_eq!(mc_conn["credential"], "oauth");
    assert_eq!(mc_conn["data_centre"], "us21", "{mc_conn}");
    assert_eq!(mc_conn["privacy_accepted_by"], "ada");

    // Exports over both OAuth connections deliver.
    let mut runs = vec![];
    for (name, connection, setting) in [
        ("to-mc", "mc", json!({"audience-id": audience})),
        ("to-cm", "cm", json!({"list-id": list})),
    ] {
        let body = json!({"name": name, "connection": connection, "settings": setting,
            "mapping": {"email": "email"}, "segments": ["newsletter"]});
        let (status, saved) = w
            .call(Some(&w.contributor), "POST", "/api/v1/exports", Some(body))
            .await;
        assert_eq!(status, 201, "{saved}");
        let (_, queued) = w
            .call(
                Some(&w.contributor),
                "POST",
                &format!("/api/v1/exports/{name}/runs"),
                Some(json!({})),
            )
            .await;
        runs.push(queued["run_id"].as_i64().unwrap());
    }
    for id in runs {
        let run = w.finished(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    assert!(!mc.members(&audience).is_empty());
    assert!(!cm.subscribers(&list).is_empty());
    w.op.assert_secrets_nowhere(&[&cm_secret, &mc_secret]);
}

/// The schemathesis command: `SCHEMATHESIS`, else the virtual environment `.ci/run` makes, else
/// the one on PATH.
fn schemathesis() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return path.into();
    }
    let venv = std::path::Path::new("/opt/schemathesis/bin/schemathesis");
    if venv.is_file() {
        return venv.into();
    }
    "schemathesis".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let (sim, _client, list) = vendor(Duration::ZERO).await;
    let w = world();
    // Something to find: a connection, an export and a finished run.
    let connection = json!({"name": "acme", "connector": "campaign-monitor", "api_key": API_KEY,
        "base_url": sim.base_url(), "access": "contributors", "accept_privacy_notice": true});
    let (status, _) = w
        .call(
            Some(&w.admin),
            "POST",
            "/api/v1/connections",
            Some(connection),
        )
        .await;
    assert_eq!(status, 201);
    let export = json!({"name": "weekly", "connection": "acme", "settings": {"list-id": list},
        "mapping": {"email": "email"}, "segments": ["newsletter"]});
    let (status, _) = w
        .call(Some(&w.admin), "POST", "/api/v1/exports", Some(export))
        .await;
    assert_eq!(status, 201);
    let (_, queued) = w
        .call(
            Some(&w.admin),
            "POST",
            "/api/v1/exports/weekly/runs",
            Some(json!({})),
        )
        .await;
    w.finished(queued["run_id"].as_i64().unwrap()).await;

    let report = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let junit = format!("{report}/schemathesis.xml");
    let command = std::process::Command::new(schemathesis())
        .args([
            "run",
            &format!("{}/openapi.json", w.server.url),
            "--header",
            &format!("Authorization: Bearer {}", w.admin),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            // These dial the vendor account a generated body names (api.createsend.com...):
            // tests reach loopback only. The end-to-end tests above cover them.
            "--exclude-operation-id",
            "add_connection",
            "--exclude-operation-id",
            "update_connection",
            "--exclude-operation-id",
            "test_connection",
            "--max-examples",
            "25",
            "--phases",
            "examples,coverage,fuzzing",
            "--report",
            "junit",
            "--report-junit-path",
            &junit,
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output();
    let out = tokio::task::spawn_blocking(move || command)
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("schemathesis could not start ({e}): `.ci/run` installs it (pip install schemathesis into /opt/schemathesis), or set SCHEMATHESIS")
        });
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        text(&out.stderr)
    );
}
