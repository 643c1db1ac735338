//! A Campaign Monitor import connector built for `cdp:connector@0.2.0`, the contract as released
//! before header credentials, rate windows and erasure: what a third party's plugin from that
//! time looks like. It imports each batch (Resubscribe false), reports each contact from the
//! vendor's answer, declares one rate (`max-requests-per-second`) and an `unsubscribe` leave
//! action.

use std::io::{Read, Write};

use serde::Deserialize;
use serde_json::json;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

wit_bindgen::generate!({
    path: "../../../wit/v0.2",
    world: "connector",
    with: {
        "wasi:http/outgoing-handler@0.2.12": wasi::http::outgoing_handler,
        "wasi:http/types@0.2.12": wasi::http::types,
        "wasi:io/poll@0.2.12": wasi::io::poll,
        "wasi:io/streams@0.2.12": wasi::io::streams,
        "wasi:io/error@0.2.12": wasi::io::error,
        "wasi:clocks/monotonic-clock@0.2.12": wasi::clocks::monotonic_clock,
    },
});

use exports::cdp::connector::export_destination::*;

struct Legacy;

fn failure(kind: ErrorKind, message: impl Into<String>) -> ConnectorError {
    ConnectorError {
        kind,
        message: message.into(),
        vendor_code: None,
        retryable: false,
    }
}

fn setting<'a>(config: &'a ExportConfig, key: &str) -> Option<&'a str> {
    config
        .settings
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Sends a request with an optional JSON body; the status and the answer's bytes.
fn send(method: Method, url: &str, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), ConnectorError> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let headers = Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())])
        .map_err(|_| failure(ErrorKind::Internal, "bad header"))?;
    let request = OutgoingRequest::new(headers);
    let _ = request.set_method(&method);
    let _ = request.set_scheme(Some(if url.starts_with("https") {
        &Scheme::Https
    } else {
        &Scheme::Http
    }));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let outgoing = request
        .body()
        .map_err(|_| failure(ErrorKind::Internal, "no body"))?;
    let pending = outgoing_handler::handle(request, None)
        .map_err(|e| failure(ErrorKind::Transport, format!("{e:?}")))?;
    {
        let mut stream = outgoing
            .write()
            .map_err(|_| failure(ErrorKind::Internal, "no stream"))?;
        if let Some(body) = body {
            let _ = stream.write_all(body);
            let _ = stream.flush();
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
    let response = loop {
        match pending.get() {
            Some(r) => break r,
            None => pending.subscribe().block(),
        }
    };
    let response = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(failure(
                ErrorKind::Transport,
                format!("request to {url} failed: {e:?}"),
            ));
        }
        Err(()) => return Err(failure(ErrorKind::Internal, "answer taken")),
    };
    let status = response.status();
    let body = response
        .consume()
        .map_err(|_| failure(ErrorKind::Internal, "no answer body"))?;
    let mut bytes = Vec::new();
    body.stream()
        .map_err(|_| failure(ErrorKind::Internal, "no answer stream"))?
        .read_to_end(&mut bytes)
        .map_err(|e| failure(ErrorKind::Transport, e.to_string()))?;
    Ok((status, bytes))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImportResult {
    total_existing_subscribers: u32,
    total_new_subscribers: u32,
    #[serde(default)]
    failure_details: Vec<Failure>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Failure {
    email_address: String,
    code: i64,
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    code: i64,
    result_data: Option<ImportResult>,
}

impl Guest for Legacy {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            id: "contract-0-2-campaign-monitor".into(),
            display_name: "Campaign Monitor (contract 0.2)".into(),
            version: "0.9.0".into(),
            default_base_url: "https://api.createsend.com/api/v3.3".into(),
            hosts: vec!["api.createsend.com".into()],
            auth: AuthScheme::BasicSecretAsUser("x".into()),
            config_fields: vec![ConfigField {
                key: "list-id".into(),
                label: "List ID".into(),
                help: "The API list ID.".into(),
                required: true,
            }],
            contact_fields: vec![ContactField {
                key: "email".into(),
                label: "Email".into(),
                required: true,
                max_length: 254,
            }],
            custom_fields: false,
            custom_field_max_length: 0,
            leave_actions: vec![LeaveAction {
                id: "unsubscribe".into(),
                label: "Unsubscribe".into(),
                help: "Unsubscribes the contact from the list.".into(),
                reversible: false,
            }],
            max_batch_size: 1000,
            max_concurrent_requests: 0,
            max_requests_per_second: 10,
        }
    }

    fn validate(config: ExportConfig) -> Result<(), ConnectorError> {
        let url = match setting(&config, "list-id") {
            Some(list) => format!("{}/lists/{list}.json", config.base_url),
            None => format!("{}/clients.json", config.base_url),
        };
        match send(Method::Get, &url, None)? {
            (200..=299, _) => Ok(()),
            (status, body) => Err(failure(
                ErrorKind::Vendor,
                format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            )),
        }
    }

    fn export_batch(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let list = setting(&config, "list-id")
            .ok_or_else(|| failure(ErrorKind::InvalidConfig, "list-id is required"))?;
        let subscribers: Vec<_> = contacts
            .iter()
            .map(|c| json!({"EmailAddress": c.email, "ConsentToTrack": "Unchanged"}))
            .collect();
        let body = json!({"Subscribers": subscribers, "Resubscribe": false}).to_string();
        let url = format!("{}/subscribers/{list}/import.json", config.base_url);
        let (status, answer) = send(Method::Post, &url, Some(body.as_bytes()))?;
        let result = match status {
            200..=299 => serde_json::from_slice::<ImportResult>(&answer).ok(),
            _ => serde_json::from_slice::<Envelope>(&answer)
                .ok()
                .filter(|e| e.code == 210)
                .and_then(|e| e.result_data),
        }
        .ok_or_else(|| {
            failure(
                ErrorKind::Vendor,
                format!("HTTP {status}: {}", String::from_utf8_lossy(&answer)),
            )
        })?;
        let issues = result
            .failure_details
            .iter()
            .filter_map(|f| {
                let index = contacts
                    .iter()
                    .position(|c| c.email.eq_ignore_ascii_case(&f.email_address))?;
                Some(ContactIssue {
                    index: index as u32,
                    kind: if (204..=208).contains(&f.code) {
                        IssueKind::Suppressed
                    } else {
                        IssueKind::Rejected
                    },
                    code: f.code.to_string(),
                    message: f.message.clone(),
                })
            })
            .collect();
        Ok(BatchReport {
            created: result.total_new_subscribers,
            updated: result.total_existing_subscribers,
            issues,
        })
    }

    fn apply_leave_action(
        config: ExportConfig,
        action: String,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        match action.as_str() {
            "unsubscribe" => Self::unsubscribe(&config, &contacts),
            other => Err(failure(
                ErrorKind::InvalidConfig,
                format!("no leave action `{other}`"),
            )),
        }
    }
}

impl Legacy {
    /// The subscriber's state on the list, or `None` when the list does not have them.
    fn state(
        config: &ExportConfig,
        list: &str,
        email: &str,
    ) -> Result<Option<String>, ConnectorError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Subscriber {
            state: String,
        }
        let url = format!(
            "{}/subscribers/{list}.json?email={}",
            config.base_url,
            email.replace('+', "%2B").replace('@', "%40")
        );
        match send(Method::Get, &url, None)? {
            (200, body) => Ok(serde_json::from_slice::<Subscriber>(&body)
                .ok()
                .map(|s| s.state)),
            (400 | 404, _) => Ok(None),
            (status, body) => Err(failure(
                ErrorKind::Vendor,
                format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            )),
        }
    }
}

impl Legacy {
    fn unsubscribe(
        config: &ExportConfig,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let list = setting(config, "list-id")
            .ok_or_else(|| failure(ErrorKind::InvalidConfig, "list-id is required"))?;
        let mut report = BatchReport {
            created: 0,
            updated: 0,
            issues: vec![],
        };
        for (i, contact) in contacts.iter().enumerate() {
            match Self::state(config, list, &contact.email)?.as_deref() {
                Some("Active") => {
                    let url = format!("{}/subscribers/{list}/unsubscribe.json", config.base_url);
                    let body = json!({"EmailAddress": contact.email}).to_string();
                    match send(Method::Post, &url, Some(body.as_bytes()))? {
                        (200..=299, _) => report.updated += 1,
                        (status, body) => {
                            return Err(failure(
                                ErrorKind::Vendor,
                                format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
                            ));
                        }
                    }
                }
                None => report.updated += 1,
                Some(other) => report.issues.push(ContactIssue {
                    index: i as u32,
                    kind: IssueKind::Suppressed,
                    code: other.to_string(),
                    message: format!("the subscriber is {other}; left untouched"),
                }),
            }
        }
        Ok(report)
    }
}

export!(Legacy);
