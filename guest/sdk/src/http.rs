//! JSON over `wasi:http`, the only way out of the sandbox.
//!
//! The host's broker stands between these requests and the network: it refuses hosts outside the
//! allow-list, adds the credential, retries throttled calls and enforces timeouts. A connector just
//! sends the request it means and reads the answer.

use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasi::http::outgoing_handler;
pub use wasi::http::types::Method;
use wasi::http::types::{ErrorCode, Fields, OutgoingBody, OutgoingRequest, Scheme};

use crate::{ConnectorError, ErrorKind};

/// A vendor's answer: status and the whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON, or an `internal` error quoting the start of the body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ConnectorError::internal(format!(
                "unexpected response (HTTP {}): {e}: {}",
                self.status,
                self.body_excerpt()
            ))
        })
    }

    /// This (non-2xx) answer as a [`ConnectorError`] of the contract's kind for its status (see
    /// [`vendor_error`]), quoting what the vendor said: a JSON body's `message`, `detail`,
    /// `title` or `error` (any letter case), else the start of the body.
    pub fn error(&self, vendor: &str) -> ConnectorError {
        let said = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| said_in(&v))
            .unwrap_or_else(|| self.body_excerpt());
        vendor_error(vendor, self.status, &said)
    }

    /// The first 200 characters of the body, for error messages.
    pub fn body_excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(200)
            .collect()
    }
}

/// The words of a JSON error body: the first string among the usual keys (also one level down,
/// as in `{"error": {"message": ...}}`).
fn said_in(value: &serde_json::Value) -> Option<String> {
    let object = value.as_object()?;
    for key in ["message", "detail", "title", "error", "error_description"] {
        let found = object.iter().find(|(k, _)| k.eq_ignore_ascii_case(key));
        match found.map(|(_, v)| v) {
            Some(serde_json::Value::String(text)) if !text.trim().is_empty() => {
                return Some(text.chars().take(300).collect());
            }
            Some(nested @ serde_json::Value::Object(_)) => {
                if let Some(text) = said_in(nested) {
                    return Some(text);
                }
            }
            _ => {}
        }
    }
    None
}

/// The contract's error for a vendor's answer with HTTP `status`, `said` being the vendor's own
/// words: 401 and 403 `unauthorized`, 404 `not-found`, 429 `rate-limited`, 408 and 5xx
/// `vendor` (retryable), any other `vendor` (not retryable: the same request would fail
/// again). The vendor code is the status; replace it with the vendor's own when it has one.
pub fn vendor_error(vendor: &str, status: u16, said: &str) -> ConnectorError {
    let said = said.trim();
    let quoted = match said.is_empty() {
        true => format!("HTTP {status}"),
        false => format!("HTTP {status}: {said}"),
    };
    let (kind, message) = match status {
        401 | 403 => (
            ErrorKind::Unauthorized,
            format!("{vendor} refused the credential ({quoted})"),
        ),
        404 => (
            ErrorKind::NotFound,
            format!("{vendor} has no such resource ({quoted})"),
        ),
        429 => (
            ErrorKind::RateLimited,
            format!("{vendor} throttled the request ({quoted})"),
        ),
        _ => (ErrorKind::Vendor, format!("{vendor} answered {quoted}")),
    };
    ConnectorError::new(kind, message)
        .with_code(status)
        .retryable(matches!(status, 408 | 429) || status >= 500)
}

/// `GET url`, expecting JSON back.
pub fn get(url: &str) -> Result<Response, ConnectorError> {
    send(Method::Get, url, None)
}

/// `POST url` with `body` serialised as JSON.
pub fn post_json<T: Serialize>(url: &str, body: &T) -> Result<Response, ConnectorError> {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| ConnectorError::internal(format!("could not encode the request: {e}")))?;
    send(Method::Post, url, Some(&bytes))
}

/// Sends one request and reads the whole response. Transport failures (including a host the
/// broker refused) become `transport` errors that say what happened.
pub fn send(method: Method, url: &str, body: Option<&[u8]>) -> Result<Response, ConnectorError> {
    send_with_headers(method, url, &[], body)
}

/// [`send`] with extra request headers. Credentials set here are dropped by the host, which
/// adds the connection's own.
pub fn send_with_headers(
    method: Method,
    url: &str,
    extra: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, ConnectorError> {
    start(method, url, extra, body)?.wait()
}

/// One request of [`send_all`].
pub struct Request {
    pub method: Method,
    pub url: String,
    /// A JSON body, if any.
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// `GET url`.
    pub fn get(url: String) -> Request {
        Request {
            method: Method::Get,
            url,
            body: None,
        }
    }

    /// `method url` with `body` serialised as JSON.
    pub fn json<T: Serialize>(
        method: Method,
        url: String,
        body: &T,
    ) -> Result<Request, ConnectorError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ConnectorError::internal(format!("could not encode the request: {e}")))?;
        Ok(Request {
            method,
            url,
            body: Some(bytes),
        })
    }
}

/// Requests [`send_all`] keeps started at once: more than any vendor lets run in parallel (the
/// broker keeps to the vendor's own limit), and few enough that the host resources they hold
/// stay far below the host's cap on them per call.
pub const SEND_ALL_WINDOW: usize = 64;

/// Sends the requests, up to [`SEND_ALL_WINDOW`] in flight at once, and returns each answer in
/// the same order.
pub fn send_all(requests: &[Request]) -> Vec<Result<Response, ConnectorError>> {
    let start_one = |r: &Request| start(clone_method(&r.method), &r.url, &[], r.body.as_deref());
    let mut in_flight: std::collections::VecDeque<Result<Pending, ConnectorError>> = requests
        .iter()
        .take(SEND_ALL_WINDOW)
        .map(start_one)
        .collect();
    let mut next = requests.iter().skip(SEND_ALL_WINDOW);
    let mut answers = Vec::with_capacity(requests.len());
    while let Some(pending) = in_flight.pop_front() {
        answers.push(pending.and_then(Pending::wait));
        if let Some(request) = next.next() {
            in_flight.push_back(start_one(request));
        }
    }
    answers
}

fn clone_method(method: &Method) -> Method {
    match method {
        Method::Get => Method::Get,
        Method::Head => Method::Head,
        Method::Post => Method::Post,
        Method::Put => Method::Put,
        Method::Delete => Method::Delete,
        Method::Connect => Method::Connect,
        Method::Options => Method::Options,
        Method::Trace => Method::Trace,
        Method::Patch => Method::Patch,
        Method::Other(m) => Method::Other(m.clone()),
    }
}

/// A request sent, its answer not read yet.
pub struct Pending {
    url: String,
    state: Sent,
}

enum Sent {
    /// Out through `wasi:http`.
    Wasi {
        answer: outgoing_handler::FutureIncomingResponse,
        written: std::io::Result<()>,
        finished: Result<(), ErrorCode>,
    },
    /// Answered by the script of a native test ([`crate::testing`]).
    #[cfg(not(target_arch = "wasm32"))]
    Scripted(Result<Response, ConnectorError>),
}

/// Sends a request with its whole body, without waiting for the answer.
pub fn start(
    method: Method,
    url: &str,
    extra: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Pending, ConnectorError> {
    let target = Url::parse(url)?;
    let mut headers: Vec<(String, Vec<u8>)> = vec![("accept".into(), b"application/json".to_vec())];
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
    );
    if body.is_some() {
        headers.push((
            "content-type".into(),
            b"application/json; charset=utf-8".to_vec(),
        ));
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = target;
        let answer = crate::testing::answer(&method, url, &headers, body);
        Ok(Pending {
            url: url.to_string(),
            state: Sent::Scripted(answer),
        })
    }
    #[cfg(target_arch = "wasm32")]
    send_wasi(method, url, target, headers, body)
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn send_wasi(
    method: Method,
    url: &str,
    target: Url,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<&[u8]>,
) -> Result<Pending, ConnectorError> {
    let fields = Fields::from_list(&headers)
        .map_err(|e| ConnectorError::internal(format!("bad request header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let set = [
        request.set_method(&method),
        request.set_scheme(Some(&target.scheme)),
        request.set_authority(Some(&target.authority)),
        request.set_path_with_query(Some(&target.path)),
    ];
    if set.iter().any(Result::is_err) {
        return Err(ConnectorError::invalid_config(format!(
            "invalid URL `{url}`"
        )));
    }
    let outgoing_body = request
        .body()
        .map_err(|_| ConnectorError::internal("request body unavailable"))?;
    let answer = outgoing_handler::handle(request, None).map_err(|e| transport(url, &e))?;

    // Stream the body; without content-length it goes out chunked, which avoids a race where the
    // host closes the stream as soon as the declared length has arrived.
    let written = (|| -> std::io::Result<()> {
        let mut stream = outgoing_body
            .write()
            .map_err(|_| std::io::Error::other("body stream unavailable"))?;
        if let Some(bytes) = body {
            stream.write_all(bytes)?;
            Write::flush(&mut stream)?;
        }
        Ok(())
    })();
    let finished = OutgoingBody::finish(outgoing_body, None);
    Ok(Pending {
        url: url.to_string(),
        state: Sent::Wasi {
            answer,
            written,
            finished,
        },
    })
}

impl Pending {
    /// Waits for the answer and reads it whole. Transport failures (including a request the
    /// host refused) become `transport` errors that say what happened.
    pub fn wait(self) -> Result<Response, ConnectorError> {
        let url = &self.url;
        let (answer, written, finished) = match self.state {
            Sent::Wasi {
                answer,
                written,
                finished,
            } => (answer, written, finished),
            #[cfg(not(target_arch = "wasm32"))]
            Sent::Scripted(answer) => return answer,
        };
        // The answer carries the real reason when the host refused the request, so look there
        // before reporting a body write failure.
        let response = loop {
            match answer.get() {
                Some(result) => break result,
                None => answer.subscribe().block(),
            }
        };
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(transport(url, &code)),
            Err(()) => return Err(ConnectorError::internal("response already taken")),
        };
        if let Err(e) = written {
            return Err(ConnectorError::new(
                ErrorKind::Transport,
                format!("sending to {url} failed: {e}"),
            ));
        }
        if let Err(code) = finished {
            return Err(transport(url, &code));
        }

        let status = response.status();
        let incoming = response
            .consume()
            .map_err(|_| ConnectorError::internal("response body unavailable"))?;
        let mut bytes = Vec::new();
        {
            let mut stream = incoming
                .stream()
                .map_err(|_| ConnectorError::internal("response body unavailable"))?;
            stream.read_to_end(&mut bytes).map_err(|e| {
                ConnectorError::new(
                    ErrorKind::Transport,
                    format!("reading the answer from {url} failed: {e}"),
                )
                .retryable(true)
            })?;
        }
        Ok(Response {
            status,
            body: bytes,
        })
    }
}

fn transport(url: &str, code: &ErrorCode) -> ConnectorError {
    let (retryable, what) = match code {
        ErrorCode::HttpRequestDenied => (
            false,
            "refused by the host (not on the connection's allowed hosts)".to_string(),
        ),
        ErrorCode::DestinationIpProhibited => (
            false,
            "refused by the host (the name resolves to an address vendors never use)".to_string(),
        ),
        ErrorCode::HttpRequestBodySize(_) => (
            false,
            "refused by the host (the request body is over its limit)".to_string(),
        ),
        ErrorCode::HttpResponseBodySize(_) => (
            false,
            "refused by the host (the answer is over its limit)".to_string(),
        ),
        ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout => {
            (true, "timed out".to_string())
        }
        ErrorCode::ConnectionRefused => (true, "connection refused".to_string()),
        ErrorCode::InternalError(Some(msg)) => (true, msg.clone()),
        other => (true, format!("{other:?}")),
    };
    ConnectorError::new(
        ErrorKind::Transport,
        format!("request to {url} failed: {what}"),
    )
    .retryable(retryable)
}

/// The parts of an absolute URL that `wasi:http` asks for.
struct Url {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, ConnectorError> {
        let invalid = || ConnectorError::invalid_config(format!("invalid URL `{url}`"));
        let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            _ => return Err(invalid()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(invalid());
        }
        Ok(Url {
            scheme,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// Percent-encodes a value for use in a URL path segment or query.
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
