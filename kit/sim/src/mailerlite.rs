//! A local MailerLite (connect API) that behaves like the real one as described in
//! docs/vendors/mailerlite.md: Bearer tokens, subscribers upserted by email (`201` when new,
//! `200` when updated, non-destructive: a status is changed only when one is sent, fields and
//! groups only those given), groups and their members, the account's fields, and batches of up
//! to 50 requests answered in order. Errors are `{"message": ...}` with `errors` by field on a
//! 422. Every subscriber is kept in a ledger for tests to inspect.
//!
//! Its limits are MailerLite's own unless a test asks otherwise ([`RateLimits`]): 120 requests
//! a minute per account, and besides 5 imports a minute (a batch made only of subscriber
//! upserts is one) [L1][L3]; past either a `429` with `Retry-After`, and every answer carries
//! `X-RateLimit-Limit` and `X-RateLimit-Remaining` as the real API's do [L7].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::quota::{self, Quota};
use crate::{Listen, LoggedRequest, Server, form_decode, is_valid_email, percent_decode};

/// Most requests one batch carries [L3].
pub const MAX_BATCH_REQUESTS: usize = 50;
/// The fields every account has [L2].
const DEFAULT_FIELDS: [&str; 8] = [
    "name",
    "last_name",
    "company",
    "country",
    "city",
    "phone",
    "state",
    "z_i_p",
];
/// The longest field value kept. UNCONFIRMED: MailerLite publishes no limit; text fields in its
/// app take 255 characters.
pub const MAX_FIELD_VALUE: usize = 255;

/// The limits the simulator keeps, each a fixed window from its first request (as Laravel's
/// throttle, which answers MailerLite's `Too Many Attempts.`, counts).
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Requests a window per account (a batch is one).
    pub requests: u32,
    /// Imports a window besides (a batch of only `POST api/subscribers` is one).
    pub imports: u32,
    pub window: Duration,
}

impl RateLimits {
    /// MailerLite's own: 120 requests and 5 imports a minute [L1][L3][L7].
    pub const REAL: RateLimits = RateLimits {
        requests: 120,
        imports: 5,
        window: Duration::from_secs(60),
    };
    /// No limit: for tests that send faster than MailerLite allows on purpose.
    pub const NONE: RateLimits = RateLimits {
        requests: u32::MAX,
        imports: u32::MAX,
        window: Duration::from_secs(60),
    };
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::REAL
    }
}

/// One subscriber in the ledger.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: String,
    pub email: String,
    /// `active`, `unsubscribed`, `unconfirmed`, `bounced` or `junk` [L2].
    pub status: String,
    /// By field key; a field cleared with `null` is absent.
    pub fields: BTreeMap<String, String>,
    /// Group ids.
    pub groups: BTreeSet<String>,
    /// How many upserts wrote this subscriber.
    pub writes: u32,
}

#[derive(Default)]
struct State {
    token: String,
    next_id: u64,
    /// By lowercased email.
    subscribers: BTreeMap<String, Subscriber>,
    /// Group id -> name.
    groups: BTreeMap<String, String>,
    /// The account's own fields (keys), beside the default ones.
    fields: Vec<String>,
    log: Vec<LoggedRequest>,
    limits: RateLimits,
    requests: Option<Quota>,
    imports: Option<Quota>,
}

impl State {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}", 31_897_397_363_737_000 + self.next_id)
    }
}

/// A running MailerLite simulator with one account.
#[derive(Clone)]
pub struct MailerLiteSim {
    state: Arc<Mutex<State>>,
    server: Arc<Server>,
}

type Answer = (StatusCode, Value);

fn message(status: StatusCode, text: &str) -> Answer {
    (status, json!({ "message": text }))
}

fn invalid(field: &str, text: &str) -> Answer {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({ "message": text, "errors": { field: [text] } }),
    )
}

impl MailerLiteSim {
    /// Starts where `listen` says, for an account whose API token is `token`, with
    /// MailerLite's own limits.
    pub async fn start_on(listen: Listen, token: &str) -> anyhow::Result<MailerLiteSim> {
        MailerLiteSim::start_with(listen, token, RateLimits::REAL).await
    }

    /// [`MailerLiteSim::start_on`] with these limits.
    pub async fn start_with(
        listen: Listen,
        token: &str,
        limits: RateLimits,
    ) -> anyhow::Result<MailerLiteSim> {
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            limits,
            ..State::default()
        }));
        let handler_state = state.clone();
        let server = Server::start(listen, move |method, uri, headers, body| {
            let state = handler_state.clone();
            crate::apart_from_the_network(move || handle(&state, method, uri, headers, body))
        })
        .await?;
        Ok(MailerLiteSim {
            state,
            server: Arc::new(server),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234/api`.
    pub fn base_url(&self) -> String {
        format!("{}/api", self.server.origin())
    }

    /// Adds a group; returns its id.
    pub fn add_group(&self, name: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let id = s.new_id();
        s.groups.insert(id.clone(), name.into());
        id
    }

    /// Adds one of the account's own fields.
    pub fn add_field(&self, key: &str) {
        self.state.lock().unwrap().fields.push(key.into());
    }

    /// Puts a subscriber in the ledger directly, with this status and these groups.
    pub fn add_subscriber(&self, email: &str, status: &str, groups: &[&str]) {
        let mut s = self.state.lock().unwrap();
        let id = s.new_id();
        s.subscribers.insert(
            email.to_lowercase(),
            Subscriber {
                id,
                email: email.to_lowercase(),
                status: status.into(),
                fields: BTreeMap::new(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                writes: 0,
            },
        );
    }

    /// Every subscriber, by lowercased email.
    pub fn subscribers(&self) -> BTreeMap<String, Subscriber> {
        self.state.lock().unwrap().subscribers.clone()
    }

    /// The HTTP server underneath.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Every request answered so far (a batch's inner requests are not HTTP requests).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock().unwrap().log.clone()
    }
}

fn handle(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut s = state.lock().unwrap();
    let bearer = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "));
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(body) => Ok(Some(body)),
        Err(_) if body.is_empty() => Ok(None),
        Err(_) => Err(()),
    };
    let limits = s.limits;
    let mut remaining = None;
    let mut wait = None;
    let (status, answer) = if bearer != Some(s.token.as_str()) {
        message(StatusCode::UNAUTHORIZED, "Unauthenticated.")
    } else {
        let requests = s
            .requests
            .get_or_insert_with(|| Quota::new(limits.requests, limits.window))
            .take();
        match requests {
            Err(left) => {
                remaining = Some(0);
                wait = Some(left);
                message(StatusCode::TOO_MANY_REQUESTS, "Too Many Attempts.")
            }
            Ok((left, _)) => {
                remaining = Some(left);
                let import = matches!(&body, Ok(Some(b)) if is_import(&method, &uri, b));
                let imports = s
                    .imports
                    .get_or_insert_with(|| Quota::new(limits.imports, limits.window));
                match import.then(|| imports.take()) {
                    Some(Err(left)) => {
                        wait = Some(left);
                        message(
                            StatusCode::TOO_MANY_REQUESTS,
                            "You're being rate limited on import creation.",
                        )
                    }
                    _ => match &body {
                        Ok(body) => route(&mut s, &method, &uri, body.as_ref()),
                        Err(()) => message(
                            StatusCode::BAD_REQUEST,
                            "The request body is not valid JSON.",
                        ),
                    },
                }
            }
        }
    };
    s.log.push(LoggedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization,
        status: status.as_u16(),
        at: std::time::Instant::now(),
    });
    let mut response = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (status, axum::Json(answer)).into_response()
    };
    let headers = response.headers_mut();
    if let Some(remaining) = remaining
        && limits.requests != u32::MAX
    {
        headers.insert("x-ratelimit-limit", limits.requests.into());
        headers.insert("x-ratelimit-remaining", remaining.into());
    }
    if let Some(wait) = wait {
        headers.insert("retry-after", quota::seconds(wait).into());
    }
    response
}

/// Whether a request is an import: a batch made only of subscriber upserts [L3].
fn is_import(method: &Method, uri: &Uri, body: &Value) -> bool {
    let requests = body.get("requests").and_then(Value::as_array);
    method == Method::POST
        && uri.path().trim_end_matches('/') == "/api/batch"
        && requests.is_some_and(|r| {
            !r.is_empty()
                && r.iter().all(|r| {
                    r.get("method").and_then(Value::as_str) == Some("POST")
                        && r.get("path")
                            .and_then(Value::as_str)
                            .is_some_and(|p| p.trim_matches('/') == "api/subscribers")
                })
        })
}

/// Answers one API call (a batch's inner ones too): `path` starts after the host.
fn route(s: &mut State, method: &Method, uri: &Uri, body: Option<&Value>) -> Answer {
    let path = uri.path().trim_matches('/');
    let query = uri.query().unwrap_or("");
    let parts: Vec<String> = path.split('/').map(percent_decode).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["api", "batch"]) => batch(s, body),
        ("GET", ["api", "groups"]) => {
            let data: Vec<Value> = s
                .groups
                .iter()
                .map(|(id, name)| json!({"id": id, "name": name}))
                .collect();
            (StatusCode::OK, json!({ "data": data }))
        }
        ("GET", ["api", "groups", group, "subscribers"]) => {
            if !s.groups.contains_key(*group) {
                return message(StatusCode::NOT_FOUND, "Resource not found.");
            }
            group_members(s, group, query, uri.path())
        }
        ("GET", ["api", "fields"]) => {
            let data: Vec<Value> = DEFAULT_FIELDS
                .iter()
                .map(|k| k.to_string())
                .chain(s.fields.iter().cloned())
                .enumerate()
                .map(|(i, key)| json!({"id": (i + 1).to_string(), "name": key, "key": key, "type": "text"}))
                .collect();
            (StatusCode::OK, json!({ "data": data }))
        }
        ("POST", ["api", "subscribers"]) => upsert(s, body),
        ("GET", ["api", "subscribers", id_or_email]) => match find(s, id_or_email) {
            Some(m) => (StatusCode::OK, json!({ "data": subscriber_json(s, m) })),
            None => message(StatusCode::NOT_FOUND, "Resource not found."),
        },
        ("DELETE", ["api", "subscribers", id, "groups", group]) => {
            if !s.groups.contains_key(*group) {
                return message(StatusCode::NOT_FOUND, "Resource not found.");
            }
            let key = s
                .subscribers
                .iter()
                .find(|(_, m)| m.id == *id)
                .map(|(k, _)| k.clone());
            match key {
                Some(key) => {
                    let m = s.subscribers.get_mut(&key).expect("found");
                    m.groups.remove(*group);
                    (StatusCode::NO_CONTENT, Value::Null)
                }
                None => message(StatusCode::NOT_FOUND, "Resource not found."),
            }
        }
        // A route the API does not have, not a record it lacks (Laravel's words, which the
        // connect API is built on; UNCONFIRMED for MailerLite itself).
        _ => message(
            StatusCode::NOT_FOUND,
            &format!("The route {path} could not be found."),
        ),
    }
}

/// A query parameter, form-decoded (`filter%5Bstatus%5D=active` names `filter[status]`).
fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| form_decode(k) == key)
        .map(|(_, v)| form_decode(v))
}

/// `GET /api/groups/{id}/subscribers`: the group's members in id order, only those of
/// `filter[status]` when given, `limit` a page (25 by default, at most 1000; UNCONFIRMED
/// bounds) and cursor paging, answered with `links` and `meta` as the real API's are [L8].
fn group_members(s: &State, group: &str, query: &str, path: &str) -> Answer {
    let limit = match query_value(query, "limit").map(|l| l.parse::<usize>()) {
        None => 25,
        Some(Ok(l)) if (1..=1000).contains(&l) => l,
        Some(_) => return invalid("limit", "The limit must be between 1 and 1000."),
    };
    let status = query_value(query, "filter[status]");
    if let Some(st) = status.as_deref()
        && !matches!(
            st,
            "active" | "unsubscribed" | "unconfirmed" | "bounced" | "junk"
        )
    {
        return invalid("filter.status", "The selected filter.status is invalid.");
    }
    // The cursor is the id after which the page starts (opaque to clients).
    let after: Option<u64> = match query_value(query, "cursor") {
        None => None,
        Some(c) => match u64::from_str_radix(&c, 16) {
            Ok(id) => Some(id),
            Err(_) => return invalid("cursor", "The cursor is invalid."),
        },
    };
    let mut members: Vec<&Subscriber> = s
        .subscribers
        .values()
        .filter(|m| m.groups.contains(group))
        .filter(|m| status.as_deref().is_none_or(|st| m.status == st))
        .collect();
    members.sort_by_key(|m| m.id.parse::<u64>().unwrap_or(0));
    let page: Vec<&Subscriber> = members
        .into_iter()
        .filter(|m| after.is_none_or(|a| m.id.parse::<u64>().unwrap_or(0) > a))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    let page = &page[..page.len().min(limit)];
    let next = more
        .then(|| page.last())
        .flatten()
        .map(|m| format!("{:x}", m.id.parse::<u64>().unwrap_or(0)));
    let data: Vec<Value> = page.iter().map(|m| subscriber_json(s, m)).collect();
    (
        StatusCode::OK,
        json!({
            "data": data,
            "links": {"first": null, "last": null, "prev": null, "next": next.as_ref().map(|c| format!("{path}?cursor={c}"))},
            "meta": {"path": path, "per_page": limit, "next_cursor": next, "prev_cursor": null},
        }),
    )
}

fn find<'a>(s: &'a State, id_or_email: &str) -> Option<&'a Subscriber> {
    s.subscribers
        .get(&id_or_email.to_lowercase())
        .or_else(|| s.subscribers.values().find(|m| m.id == id_or_email))
}

fn subscriber_json(s: &State, m: &Subscriber) -> Value {
    let mut fields = serde_json::Map::new();
    for key in DEFAULT_FIELDS
        .iter()
        .map(|k| k.to_string())
        .chain(s.fields.iter().cloned())
    {
        let value = m.fields.get(&key).map_or(Value::Null, |v| json!(v));
        fields.insert(key, value);
    }
    let groups: Vec<Value> = m
        .groups
        .iter()
        .map(|g| json!({"id": g, "name": s.groups.get(g)}))
        .collect();
    json!({
        "id": m.id,
        "email": m.email,
        "status": m.status,
        "source": "api",
        "fields": fields,
        "groups": groups,
    })
}

/// `POST /api/subscribers`: creates (201) or updates (200) by email, non-destructively.
fn upsert(s: &mut State, body: Option<&Value>) -> Answer {
    let Some(body) = body.and_then(Value::as_object) else {
        return invalid("email", "The email field is required.");
    };
    let Some(email) = body.get("email").and_then(Value::as_str) else {
        return invalid("email", "The email field is required.");
    };
    if !is_valid_email(email) {
        return invalid("email", "The email must be a valid email address.");
    }
    let status = match body.get("status").and_then(Value::as_str) {
        None => None,
        Some(st @ ("active" | "unsubscribed" | "unconfirmed" | "bounced" | "junk")) => Some(st),
        Some(_) => return invalid("status", "The selected status is invalid."),
    };
    let mut fields = BTreeMap::new();
    if let Some(given) = body.get("fields") {
        let Some(given) = given.as_object() else {
            return invalid("fields", "The fields must be an object.");
        };
        for (key, value) in given {
            let known = DEFAULT_FIELDS.contains(&key.as_str()) || s.fields.contains(key);
            if !known {
                // UNCONFIRMED: MailerLite is not documented to refuse unknown keys; this one
                // does, so a connector that sends a field the account lacks is caught.
                return invalid(
                    &format!("fields.{key}"),
                    &format!("The field {key} does not exist."),
                );
            }
            let value = match value {
                Value::Null => None,
                Value::String(v) if v.chars().count() <= MAX_FIELD_VALUE => Some(v.clone()),
                Value::String(_) => {
                    return invalid(
                        &format!("fields.{key}"),
                        &format!(
                            "The fields.{key} may not be greater than {MAX_FIELD_VALUE} characters."
                        ),
                    );
                }
                other => Some(other.to_string()),
            };
            fields.insert(key.clone(), value);
        }
    }
    let mut groups = vec![];
    if let Some(given) = body.get("groups") {
        for (i, g) in given.as_array().into_iter().flatten().enumerate() {
            match g.as_str() {
                Some(g) if s.groups.contains_key(g) => groups.push(g.to_string()),
                _ => {
                    return invalid(
                        &format!("groups.{i}"),
                        &format!("The selected groups.{i} is invalid."),
                    );
                }
            }
        }
    }
    let key = email.to_lowercase();
    let created = !s.subscribers.contains_key(&key);
    if created {
        let id = s.new_id();
        s.subscribers.insert(
            key.clone(),
            Subscriber {
                id,
                // The API keeps an address lower-cased [L8].
                email: key.clone(),
                status: status.unwrap_or("active").into(),
                fields: BTreeMap::new(),
                groups: BTreeSet::new(),
                writes: 0,
            },
        );
    }
    let m = s.subscribers.get_mut(&key).expect("present");
    if let Some(status) = status {
        m.status = status.into();
    }
    for (k, v) in fields {
        match v {
            Some(v) => m.fields.insert(k, v),
            None => m.fields.remove(&k),
        };
    }
    m.groups.extend(groups);
    m.writes += 1;
    let m = m.clone();
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (code, json!({ "data": subscriber_json(s, &m) }))
}

/// `POST /api/batch`: up to 50 calls, answered in order [L3].
fn batch(s: &mut State, body: Option<&Value>) -> Answer {
    let Some(requests) = body
        .and_then(|b| b.get("requests"))
        .and_then(Value::as_array)
    else {
        return invalid("requests", "The requests field is required.");
    };
    if requests.len() > MAX_BATCH_REQUESTS {
        return invalid(
            "requests",
            &format!("The requests may not have more than {MAX_BATCH_REQUESTS} items."),
        );
    }
    let mut responses = vec![];
    let mut successful = 0;
    for (i, request) in requests.iter().enumerate() {
        let method = request.get("method").and_then(Value::as_str);
        let path = request.get("path").and_then(Value::as_str);
        let (Some(method), Some(path)) = (method, path) else {
            return invalid(
                &format!("requests.{i}.path"),
                &format!("The requests.{i}.path field is required."),
            );
        };
        let (Ok(method), Ok(uri)) = (
            Method::from_bytes(method.as_bytes()),
            format!("/{}", path.trim_start_matches('/')).parse::<Uri>(),
        ) else {
            return invalid(
                &format!("requests.{i}.path"),
                &format!("The requests.{i}.path is invalid."),
            );
        };
        if !uri.path().starts_with("/api/") || uri.path() == "/api/batch" {
            return invalid(
                &format!("requests.{i}.path"),
                &format!("The requests.{i}.path must start with api/."),
            );
        }
        let (status, body) = route(s, &method, &uri, request.get("body"));
        if status.is_success() {
            successful += 1;
        }
        responses.push(json!({"code": status.as_u16(), "body": body}));
    }
    (
        StatusCode::OK,
        json!({
            "total": requests.len(),
            "successful": successful,
            "failed": requests.len() - successful,
            "responses": responses,
        }),
    )
}

/// A MailerLite account with one group, as [`crate::Simulator`] drives it.
pub struct ForCheck {
    sim: MailerLiteSim,
    group: String,
}

/// The token of the account a check uses.
const CHECK_TOKEN: &str = "check-mailerlite-token";

impl ForCheck {
    /// Starts the simulator with an account and an empty group.
    pub async fn start(listen: Listen) -> anyhow::Result<ForCheck> {
        // The check sends unpaced to a simulator on this machine: MailerLite's own limits
        // would only make it wait.
        let sim = MailerLiteSim::start_with(listen, CHECK_TOKEN, RateLimits::NONE).await?;
        let group = sim.add_group("Check group");
        Ok(ForCheck { sim, group })
    }
}

impl crate::Simulator for ForCheck {
    fn connector(&self) -> &'static str {
        "mailerlite"
    }
    fn base_url(&self) -> String {
        self.sim.base_url()
    }
    fn credential(&self) -> String {
        CHECK_TOKEN.into()
    }
    fn export_settings(&self) -> Vec<(String, String)> {
        vec![("group-id".into(), self.group.clone())]
    }
    fn unknown_list_settings(&self) -> Vec<(String, String)> {
        vec![("group-id".into(), "1".into())]
    }
    fn keep_out(&self, email: &str) {
        self.sim.add_subscriber(email, "unsubscribed", &[]);
    }
    fn held(&self, email: &str) -> Option<crate::Held> {
        let m = self.sim.subscribers().remove(&email.to_lowercase())?;
        Some(match m.status.as_str() {
            "active" | "unconfirmed" if m.groups.contains(&self.group) => crate::Held::Mailable,
            "active" | "unconfirmed" => crate::Held::Removed("not in the group".into()),
            other => crate::Held::KeptOut(other.into()),
        })
    }
    fn records(&self, email: &str) -> usize {
        let wanted = email.to_lowercase();
        self.sim
            .subscribers()
            .values()
            .filter(|m| m.email.to_lowercase() == wanted)
            .count()
    }
    fn server(&self) -> &Server {
        self.sim.server()
    }
    fn requests(&self) -> Vec<LoggedRequest> {
        self.sim.requests()
    }
    fn unconfirmed(&self) -> Vec<&'static str> {
        vec![
            "an upsert answers 201 when it created the subscriber and 200 when it updated one (the connector tells them apart by it)",
            "an unknown group in `groups` is a 422 on `groups.N`",
            "a subscriber's status changes only when an upsert sends one",
            "addresses are kept lower-cased",
            "each rate window counts from its first request (Laravel's throttle)",
        ]
    }
}
