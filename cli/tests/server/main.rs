//! `connector-host serve --listen`: the HTTP API end to end against the simulators, its role
//! matrix, the console's sign-in and "Authenticate with <vendor>" for both vendors, and the
//! operations endpoints. The server is the built binary, driven over real HTTP.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod api;
mod browser;
mod oauth;
mod schemathesis;
mod sessions;

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
    start_with(op, &[])
}

/// [`start`] with more options for `serve`.
fn start_with(op: &Operator, extra: &[&str]) -> Running {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--poll-seconds", "0.5"];
    args.extend_from_slice(extra);
    let mut child = op
        .command(&args)
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
    world_of(Operator::new(41, 400))
}

/// [`world`] on the operator's machine `op`.
fn world_of(op: Operator) -> World {
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

/// The text of the page at `url`, as `browser` gets it.
async fn text_of(browser: &reqwest::Client, url: &str) -> String {
    browser.get(url).send().await.unwrap().text().await.unwrap()
}

/// Signs `browser` in as the console's form does: the page first (its token and cookie),
/// then the form.
async fn sign_in(
    browser: &reqwest::Client,
    url: &str,
    name: &str,
    password: &str,
) -> reqwest::Response {
    let page = text_of(browser, &format!("{url}/sign-in")).await;
    let token = hidden(&page, "sign_in");
    browser
        .post(format!("{url}/sign-in"))
        .form(&[
            ("sign_in", token.as_str()),
            ("name", name),
            ("password", password),
        ])
        .send()
        .await
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
