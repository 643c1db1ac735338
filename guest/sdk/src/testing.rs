//! Native test mode: a connector's unit tests run with `cargo test` on the build machine, no
//! host and no simulator. Each HTTP request the connector makes is answered by a [`Vendor`]
//! script, in order, and recorded, so a test checks the requests it built and how it read the
//! answers. Calls go through the same glue as the component's exports ([`export_batch`] and
//! the others), settings reading and batch checks included.
//!
//! ```
//! use cdp_connector_sdk::testing::{self, Vendor};
//! use cdp_connector_sdk::*;
//!
//! struct Acme;
//! impl Connector for Acme {
//!     const NAME: &'static str = "Acme";
//!     const CREDENTIAL_CHECK: &'static str = "/me";
//!     type Settings = NoSettings;
//!     fn describe() -> ConnectorInfo {
//!         Description::new("acme", "Acme", "1.0.0").base_url("https://api.acme.example").build()
//!     }
//!     fn export_batch(_: &Export<NoSettings>, _: &[Contact]) -> Result<BatchReport, ConnectorError> {
//!         unreachable!()
//!     }
//! }
//!
//! let vendor = Vendor::new().answer("GET", "https://api.acme.example/me", 401, r#"{"message":"Bad key"}"#);
//! let refused = vendor.run(|| testing::validate::<Acme>(testing::config("https://api.acme.example")));
//! assert_eq!(refused.unwrap_err().kind, ErrorKind::Unauthorized);
//! assert_eq!(vendor.sent()[0].url, "https://api.acme.example/me");
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::bindings::exports::cdp::connector::export_destination::Guest;
use crate::connector::{Connector, Exported};
use crate::http::{Method, Response};
use crate::{BatchReport, ConnectorError, ConnectorInfo, Contact, ErrorKind, ExportConfig};

/// One request the connector sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `GET`, `POST`...
    pub method: String,
    /// The whole URL.
    pub url: String,
    /// Request headers, as the connector set them.
    pub headers: Vec<(String, String)>,
    /// The body, empty when none.
    pub body: Vec<u8>,
}

impl Sent {
    /// The body parsed as JSON (panics, naming the request, when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body of {} {} is not JSON: {e}: {}",
                self.method,
                self.url,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// How the script answers one request.
enum Reply {
    Status(u16, Vec<u8>),
    /// The request does not complete (a refused host, a timeout...).
    Transport(String),
}

struct Expected {
    method: String,
    url: String,
    reply: Reply,
}

#[derive(Default)]
struct Script {
    expected: VecDeque<Expected>,
    sent: Vec<Sent>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Rc<RefCell<Script>>>> = const { RefCell::new(None) };
}

/// A scripted vendor: the answers to the requests a test expects, in order.
#[derive(Default, Clone)]
pub struct Vendor(Rc<RefCell<Script>>);

impl Vendor {
    /// A vendor expecting no request.
    pub fn new() -> Vendor {
        Vendor::default()
    }

    /// Expects `method url` next (a `url` ending in `*` matches any URL it starts), answered
    /// with `status` and `body`.
    pub fn answer(self, method: &str, url: &str, status: u16, body: impl AsRef<[u8]>) -> Vendor {
        self.expect(method, url, Reply::Status(status, body.as_ref().to_vec()))
    }

    /// Expects `method url` next, and fails it before any answer (as a timeout would).
    pub fn fail(self, method: &str, url: &str, why: &str) -> Vendor {
        self.expect(method, url, Reply::Transport(why.into()))
    }

    fn expect(self, method: &str, url: &str, reply: Reply) -> Vendor {
        self.0.borrow_mut().expected.push_back(Expected {
            method: method.to_ascii_uppercase(),
            url: url.into(),
            reply,
        });
        self
    }

    /// Runs `call` with this vendor answering its requests; panics if an expected request
    /// was not sent.
    pub fn run<R>(&self, call: impl FnOnce() -> R) -> R {
        let previous = ACTIVE.with(|a| a.borrow_mut().replace(self.0.clone()));
        let result = call();
        ACTIVE.with(|a| *a.borrow_mut() = previous);
        let left: Vec<String> = self
            .0
            .borrow()
            .expected
            .iter()
            .map(|e| format!("{} {}", e.method, e.url))
            .collect();
        assert!(
            left.is_empty(),
            "the connector did not send the requests the script still expects: {left:?}"
        );
        result
    }

    /// The requests sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.0.borrow().sent.clone()
    }
}

/// Answers a request of the connector under test (called by [`crate::http`] off wasm32).
pub(crate) fn answer(
    method: &Method,
    url: &str,
    headers: &[(String, Vec<u8>)],
    body: Option<&[u8]>,
) -> Result<Response, ConnectorError> {
    let method = method_name(method);
    let script = ACTIVE.with(|a| a.borrow().clone()).unwrap_or_else(|| {
        panic!("the connector sent {method} {url} outside `Vendor::run` (native tests answer requests from a script)")
    });
    let mut script = script.borrow_mut();
    script.sent.push(Sent {
        method: method.clone(),
        url: url.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect(),
        body: body.unwrap_or_default().to_vec(),
    });
    let Some(next) = script.expected.pop_front() else {
        panic!("the connector sent {method} {url}, which the script did not expect");
    };
    let matches = match next.url.strip_suffix('*') {
        Some(prefix) => url.starts_with(prefix),
        None => url == next.url,
    };
    assert!(
        next.method == method && matches,
        "the connector sent {method} {url} where the script expected {} {}",
        next.method,
        next.url
    );
    match next.reply {
        Reply::Status(status, body) => Ok(Response { status, body }),
        Reply::Transport(why) => Err(ConnectorError::new(
            ErrorKind::Transport,
            format!("request to {url} failed: {why}"),
        )
        .retryable(true)),
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.to_ascii_uppercase(),
    }
}

/// An export's configuration, for tests: this base URL, no settings, only `email` mapped.
pub fn config(base_url: &str) -> ExportConfig {
    ExportConfig {
        base_url: base_url.into(),
        settings: vec![],
        fields: vec!["email".into()],
        leave_action: None,
    }
}

impl ExportConfig {
    /// With this setting (tests and tools).
    pub fn with_setting(mut self, key: &str, value: &str) -> ExportConfig {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Mapping these fields besides `email`.
    pub fn mapping(mut self, fields: &[&str]) -> ExportConfig {
        self.fields.extend(
            fields
                .iter()
                .map(|f| f.to_string())
                .filter(|f| f != "email"),
        );
        self
    }
}

/// `describe`, as the host calls it.
pub fn describe<T: Connector>() -> ConnectorInfo {
    <Exported<T> as Guest>::describe()
}

/// `validate`, as the host calls it (no settings: the credential check).
pub fn validate<T: Connector>(config: ExportConfig) -> Result<(), ConnectorError> {
    <Exported<T> as Guest>::validate(config)
}

/// `export-batch`, as the host calls it.
pub fn export_batch<T: Connector>(
    config: ExportConfig,
    contacts: Vec<Contact>,
) -> Result<BatchReport, ConnectorError> {
    <Exported<T> as Guest>::export_batch(config, contacts)
}

/// `apply-leave-action`, as the host calls it.
pub fn apply_leave_action<T: Connector>(
    config: ExportConfig,
    action: &str,
    contacts: Vec<Contact>,
) -> Result<BatchReport, ConnectorError> {
    <Exported<T> as Guest>::apply_leave_action(config, action.into(), contacts)
}

/// `erase-contacts`, as the host calls it.
pub fn erase_contacts<T: Connector>(
    config: ExportConfig,
    contacts: Vec<Contact>,
) -> Result<BatchReport, ConnectorError> {
    <Exported<T> as Guest>::erase_contacts(config, contacts)
}
