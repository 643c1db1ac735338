//! A local Brevo (API v3, contacts) that behaves like the real one as described in
//! docs/vendors/brevo.md: the key in an `api-key` header, contacts upserted by email (`201`
//! created, `204` updated with `updateEnabled`), lists and their members, a contact's email
//! blacklist, removal from a list a batch at a time, and deletion. Errors are
//! `{"code": ..., "message": ...}`. Every contact is kept in a ledger for tests to inspect.
//!
//! Its limits are Brevo's own unless a test asks otherwise ([`RateLimits`]): every call under
//! `/contacts` counts against 10 a second and 36,000 an hour [B2]; every answer carries
//! `x-sib-ratelimit-limit`, `-remaining` and `-reset` (of the tighter window), and past either
//! a `429` with no `Retry-After` [B2][B7].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::quota::{self, Quota};
use crate::{Listen, LoggedRequest, Server, form_decode, is_valid_email, percent_decode};

/// Addresses one removal from a list takes [B5].
pub const MAX_REMOVE: usize = 150;
/// The attributes every account has (English accounts; others name them in their language).
const DEFAULT_ATTRIBUTES: [&str; 2] = ["FIRSTNAME", "LASTNAME"];

/// The limits the simulator keeps on `/contacts` calls.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub per_second: u32,
    pub per_hour: u32,
}

impl RateLimits {
    /// Brevo's general limits for `/contacts`, on every plan [B2].
    pub const REAL: RateLimits = RateLimits {
        per_second: 10,
        per_hour: 36_000,
    };
    /// No limit: for tests that send faster than Brevo allows on purpose.
    pub const NONE: RateLimits = RateLimits {
        per_second: u32::MAX,
        per_hour: u32::MAX,
    };
}

/// One contact in the ledger.
#[derive(Debug, Clone)]
pub struct Contact {
    pub id: u64,
    /// Lower-cased, as Brevo keeps it.
    pub email: String,
    pub attributes: BTreeMap<String, String>,
    pub list_ids: BTreeSet<u64>,
    /// Blacklisted for email: receives no mailing.
    pub email_blacklisted: bool,
    /// How many upserts wrote this contact.
    pub writes: u32,
}

struct State {
    api_key: String,
    next_id: u64,
    contacts: BTreeMap<String, Contact>,
    lists: BTreeMap<u64, String>,
    attributes: Vec<String>,
    log: Vec<LoggedRequest>,
    per_second: Quota,
    per_hour: Quota,
}

/// A running Brevo simulator with one account.
#[derive(Clone)]
pub struct BrevoSim {
    state: Arc<Mutex<State>>,
    server: Arc<Server>,
}

type Answer = (StatusCode, Value);

fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    (status, json!({ "code": code, "message": message }))
}

fn invalid(message: &str) -> Answer {
    error(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

impl BrevoSim {
    /// Starts where `listen` says, for an account whose API key is `api_key`, with Brevo's own
    /// limits.
    pub async fn start_on(listen: Listen, api_key: &str) -> anyhow::Result<BrevoSim> {
        BrevoSim::start_with(listen, api_key, RateLimits::REAL).await
    }

    /// [`BrevoSim::start_on`] with these limits.
    pub async fn start_with(
        listen: Listen,
        api_key: &str,
        limits: RateLimits,
    ) -> anyhow::Result<BrevoSim> {
        let state = Arc::new(Mutex::new(State {
            api_key: api_key.into(),
            next_id: 0,
            contacts: BTreeMap::new(),
            lists: BTreeMap::new(),
            attributes: DEFAULT_ATTRIBUTES.iter().map(|a| a.to_string()).collect(),
            log: vec![],
            per_second: Quota::new(limits.per_second, Duration::from_secs(1)),
            per_hour: Quota::new(limits.per_hour, Duration::from_secs(3600)),
        }));
        let handler_state = state.clone();
        let server = Server::start(listen, move |method, uri, headers, body| {
            let state = handler_state.clone();
            crate::apart_from_the_network(move || handle(&state, method, uri, headers, body))
        })
        .await?;
        Ok(BrevoSim {
            state,
            server: Arc::new(server),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234/v3`.
    pub fn base_url(&self) -> String {
        format!("{}/v3", self.server.origin())
    }

    /// Adds a list; returns its id.
    pub fn add_list(&self, name: &str) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.lists.insert(id, name.into());
        id
    }

    /// Adds one of the account's own attributes (`COMPANY`).
    pub fn add_attribute(&self, name: &str) {
        self.state
            .lock()
            .unwrap()
            .attributes
            .push(name.to_ascii_uppercase());
    }

    /// Puts a contact in the ledger directly, on these lists, blacklisted or not.
    pub fn add_contact(&self, email: &str, blacklisted: bool, lists: &[u64]) {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.contacts.insert(
            email.to_lowercase(),
            Contact {
                id,
                email: email.to_lowercase(),
                attributes: BTreeMap::new(),
                list_ids: lists.iter().copied().collect(),
                email_blacklisted: blacklisted,
                writes: 0,
            },
        );
    }

    /// Every contact, by lower-cased email.
    pub fn contacts(&self) -> BTreeMap<String, Contact> {
        self.state.lock().unwrap().contacts.clone()
    }

    /// The HTTP server underneath.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Every request answered so far; `authorization` holds the `api-key` header.
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
    let key = headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut s = state.lock().unwrap();
    let path = uri.path().strip_prefix("/v3").unwrap_or("").to_string();
    // Every `/contacts` call counts against both windows, a refused one too.
    let mut rate = None;
    let (status, answer) = if key.as_deref() != Some(s.api_key.as_str()) {
        error(StatusCode::UNAUTHORIZED, "unauthorized", "Key not found")
    } else {
        let counted = path.starts_with("/contacts");
        let taken = counted.then(|| (s.per_second.take(), s.per_hour.take()));
        match taken {
            Some((Err(reset), _)) | Some((_, Err(reset))) => {
                let limit = if s.per_second.limits() {
                    s.per_second.limit
                } else {
                    s.per_hour.limit
                };
                rate = Some((limit, 0, reset));
                // The body's words are UNCONFIRMED; the status and headers are Brevo's [B2].
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    "The expected rate limit is exceeded.",
                )
            }
            other => {
                if let Some((Ok((second_left, second_reset)), Ok((hour_left, hour_reset)))) = other
                {
                    // The headers speak of the window closer to its end.
                    rate = Some(if second_left <= hour_left {
                        (s.per_second.limit, second_left, second_reset)
                    } else {
                        (s.per_hour.limit, hour_left, hour_reset)
                    });
                }
                match serde_json::from_slice::<Value>(&body) {
                    Ok(body) => route(&mut s, &method, &path, uri.query(), Some(&body)),
                    Err(_) if body.is_empty() => route(&mut s, &method, &path, uri.query(), None),
                    Err(_) => invalid("Input must be a valid JSON object"),
                }
            }
        }
    };
    s.log.push(LoggedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization: key,
        status: status.as_u16(),
        at: std::time::Instant::now(),
    });
    let limited = s.per_second.limits() || s.per_hour.limits();
    drop(s);
    let mut response = match status {
        StatusCode::NO_CONTENT => status.into_response(),
        _ => (status, axum::Json(answer)).into_response(),
    };
    if let Some((limit, left, reset)) = rate
        && limited
    {
        let headers = response.headers_mut();
        headers.insert("x-sib-ratelimit-limit", limit.into());
        headers.insert("x-sib-ratelimit-remaining", left.into());
        headers.insert("x-sib-ratelimit-reset", quota::seconds(reset).into());
    }
    response
}

/// Answers one call; `path` starts after `/v3`.
fn route(
    s: &mut State,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let list_of =
        |s: &State, id: &str| id.parse::<u64>().ok().filter(|id| s.lists.contains_key(id));
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["contacts", "lists"]) => {
            let q = |k: &str| query_value(query.unwrap_or(""), k).and_then(|v| v.parse().ok());
            let (limit, offset): (usize, usize) =
                (q("limit").unwrap_or(10), q("offset").unwrap_or(0));
            if !(1..=50).contains(&limit) {
                return invalid("limit should be between 1 and 50");
            }
            let lists: Vec<Value> = s
                .lists
                .keys()
                .skip(offset)
                .take(limit)
                .map(|id| list_json(s, *id))
                .collect();
            (
                StatusCode::OK,
                json!({"lists": lists, "count": s.lists.len()}),
            )
        }
        ("GET", ["contacts", "lists", id]) => match list_of(s, id) {
            Some(id) => (StatusCode::OK, list_json(s, id)),
            None => list_not_found(),
        },
        ("POST", ["contacts", "lists", id, "contacts", "remove"]) => match list_of(s, id) {
            Some(id) => remove_from_list(s, id, body),
            None => list_not_found(),
        },
        ("POST", ["contacts"]) => upsert(s, body),
        ("GET", ["contacts", who]) => match s.contacts.get(&who.to_lowercase()) {
            Some(c) => (StatusCode::OK, contact_json(c)),
            None => contact_not_found(),
        },
        ("PUT", ["contacts", who]) => update(s, &who.to_lowercase(), body),
        ("DELETE", ["contacts", who]) => match s.contacts.remove(&who.to_lowercase()) {
            Some(_) => (StatusCode::NO_CONTENT, Value::Null),
            None => contact_not_found(),
        },
        // UNCONFIRMED: Brevo's answer to a route it does not have.
        _ => error(StatusCode::NOT_FOUND, "not_found", "Invalid route"),
    }
}

fn list_not_found() -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "document_not_found",
        "List ID does not exist",
    )
}

fn contact_not_found() -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "document_not_found",
        "Contact does not exist",
    )
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| form_decode(k) == key)
        .map(|(_, v)| form_decode(v))
}

fn list_json(s: &State, id: u64) -> Value {
    let members = s.contacts.values().filter(|c| c.list_ids.contains(&id));
    let (total, blacklisted) = members.fold((0, 0), |(t, b), c| {
        (t + 1, b + usize::from(c.email_blacklisted))
    });
    json!({"id": id, "name": s.lists[&id], "folderId": 1, "totalSubscribers": total - blacklisted,
        "totalBlacklisted": blacklisted, "uniqueSubscribers": total})
}

fn contact_json(c: &Contact) -> Value {
    json!({"id": c.id, "email": c.email, "emailBlacklisted": c.email_blacklisted,
        "smsBlacklisted": false, "listIds": c.list_ids, "listUnsubscribed": [],
        "attributes": c.attributes})
}

/// The attributes of a create or update, checked against the account's.
fn read_attributes(s: &State, body: &Value) -> Result<Vec<(String, Option<String>)>, Answer> {
    let Some(given) = body.get("attributes") else {
        return Ok(vec![]);
    };
    let Some(given) = given.as_object() else {
        return Err(invalid("attributes should be an object"));
    };
    let mut out = vec![];
    for (key, value) in given {
        // UNCONFIRMED: Brevo documents that attributes "must be present in your account"
        // without saying what an unknown one gets; this refuses it, so a connector sending a
        // name the account lacks is caught.
        if !s.attributes.iter().any(|a| a == key) {
            return Err(invalid(&format!("Attribute {key} does not exist")));
        }
        let value = match value {
            Value::String(v) if v.is_empty() => None,
            Value::String(v) => Some(v.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        out.push((key.clone(), value));
    }
    Ok(out)
}

fn list_ids(s: &State, body: &Value, key: &str) -> Result<Vec<u64>, Answer> {
    let mut ids = vec![];
    for id in body
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match id.as_u64() {
            Some(id) if s.lists.contains_key(&id) => ids.push(id),
            // UNCONFIRMED: the code and words for an unknown list in a contact's lists.
            _ => return Err(list_not_found()),
        }
    }
    Ok(ids)
}

/// `POST /contacts`: `201 {"id"}` when created; with `updateEnabled`, `204` when it existed,
/// else `400 duplicate_parameter` [B3]. Never changes a blacklist unless told.
fn upsert(s: &mut State, body: Option<&Value>) -> Answer {
    let Some(body) = body.filter(|b| b.is_object()) else {
        return invalid("Input must be a valid JSON object");
    };
    let Some(email) = body.get("email").and_then(Value::as_str) else {
        return invalid("email is missing");
    };
    if !is_valid_email(email) {
        return invalid("Invalid email address");
    }
    let attributes = match read_attributes(s, body) {
        Ok(a) => a,
        Err(answer) => return answer,
    };
    let lists = match list_ids(s, body, "listIds") {
        Ok(ids) => ids,
        Err(answer) => return answer,
    };
    let update = body.get("updateEnabled").and_then(Value::as_bool) == Some(true);
    let blacklist = body.get("emailBlacklisted").and_then(Value::as_bool);
    let key = email.to_lowercase();
    let created = !s.contacts.contains_key(&key);
    if !created && !update {
        return error(
            StatusCode::BAD_REQUEST,
            "duplicate_parameter",
            "Contact already exist",
        );
    }
    if created {
        s.next_id += 1;
        let id = s.next_id;
        s.contacts.insert(
            key.clone(),
            Contact {
                id,
                email: key.clone(),
                attributes: BTreeMap::new(),
                list_ids: BTreeSet::new(),
                email_blacklisted: false,
                writes: 0,
            },
        );
    }
    let c = s.contacts.get_mut(&key).expect("present");
    for (k, v) in attributes {
        match v {
            Some(v) => c.attributes.insert(k, v),
            None => c.attributes.remove(&k),
        };
    }
    c.list_ids.extend(lists);
    if let Some(blacklist) = blacklist {
        c.email_blacklisted = blacklist;
    }
    c.writes += 1;
    match created {
        true => (StatusCode::CREATED, json!({ "id": c.id })),
        false => (StatusCode::NO_CONTENT, Value::Null),
    }
}

/// `PUT /contacts/{email}`: attributes, lists to add and to leave, the blacklist [B4].
fn update(s: &mut State, key: &str, body: Option<&Value>) -> Answer {
    if !s.contacts.contains_key(key) {
        return contact_not_found();
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return invalid("Input must be a valid JSON object");
    };
    let attributes = match read_attributes(s, body) {
        Ok(a) => a,
        Err(answer) => return answer,
    };
    let (add, unlink) = match (
        list_ids(s, body, "listIds"),
        list_ids(s, body, "unlinkListIds"),
    ) {
        (Ok(a), Ok(u)) => (a, u),
        (Err(answer), _) | (_, Err(answer)) => return answer,
    };
    let c = s.contacts.get_mut(key).expect("present");
    for (k, v) in attributes {
        match v {
            Some(v) => c.attributes.insert(k, v),
            None => c.attributes.remove(&k),
        };
    }
    c.list_ids.extend(add);
    for id in unlink {
        c.list_ids.remove(&id);
    }
    if let Some(blacklist) = body.get("emailBlacklisted").and_then(Value::as_bool) {
        c.email_blacklisted = blacklist;
    }
    (StatusCode::NO_CONTENT, Value::Null)
}

/// `POST /contacts/lists/{id}/contacts/remove` with `emails` (at most 150): `201` naming those
/// removed and those the list did not hold [B5].
fn remove_from_list(s: &mut State, list: u64, body: Option<&Value>) -> Answer {
    let Some(emails) = body.and_then(|b| b.get("emails")).and_then(Value::as_array) else {
        return invalid("emails is missing");
    };
    if emails.len() > MAX_REMOVE {
        return invalid(&format!("emails should have at most {MAX_REMOVE} items"));
    }
    let (mut success, mut failure) = (vec![], vec![]);
    for email in emails {
        let Some(email) = email.as_str() else {
            return invalid("emails should be strings");
        };
        let removed = s
            .contacts
            .get_mut(&email.to_lowercase())
            .is_some_and(|c| c.list_ids.remove(&list));
        match removed {
            true => success.push(email.to_string()),
            false => failure.push(email.to_string()),
        }
    }
    (
        StatusCode::CREATED,
        json!({"contacts": {"success": success, "failure": failure, "total": emails.len()}}),
    )
}

/// A Brevo account with one list, as [`crate::Simulator`] drives it.
pub struct ForCheck {
    sim: BrevoSim,
    list: u64,
}

/// The key of the account a check uses.
const CHECK_KEY: &str = "xkeysib-check-0000000000000000";

impl ForCheck {
    /// Starts the simulator with an account and an empty list. The check sends unpaced to a
    /// simulator on this machine: Brevo's own limits would only make it wait.
    pub async fn start(listen: Listen) -> anyhow::Result<ForCheck> {
        let sim = BrevoSim::start_with(listen, CHECK_KEY, RateLimits::NONE).await?;
        let list = sim.add_list("Check list");
        Ok(ForCheck { sim, list })
    }
}

impl crate::Simulator for ForCheck {
    fn connector(&self) -> &'static str {
        "brevo"
    }
    fn base_url(&self) -> String {
        self.sim.base_url()
    }
    fn credential(&self) -> String {
        CHECK_KEY.into()
    }
    fn export_settings(&self) -> Vec<(String, String)> {
        vec![("list-id".into(), self.list.to_string())]
    }
    fn unknown_list_settings(&self) -> Vec<(String, String)> {
        vec![("list-id".into(), "987654".into())]
    }
    fn keep_out(&self, email: &str) {
        self.sim.add_contact(email, true, &[self.list]);
    }
    fn held(&self, email: &str) -> Option<crate::Held> {
        let c = self.sim.contacts().remove(&email.to_lowercase())?;
        Some(if c.email_blacklisted {
            crate::Held::KeptOut("blacklisted".into())
        } else if c.list_ids.contains(&self.list) {
            crate::Held::Mailable
        } else {
            crate::Held::Removed("not on the list".into())
        })
    }
    fn records(&self, email: &str) -> usize {
        usize::from(self.sim.contacts().contains_key(&email.to_lowercase()))
    }
    fn server(&self) -> &Server {
        self.sim.server()
    }
    fn requests(&self) -> Vec<LoggedRequest> {
        self.sim.requests()
    }
    fn unconfirmed(&self) -> Vec<&'static str> {
        vec![
            "a 429's body (`too_many_requests`) and that each window counts from its first request",
            "an attribute the account lacks is refused with a 400 (Brevo says only that attributes must exist)",
            "an unknown list in `listIds` is a 404 `document_not_found`",
            "the words of `invalid_parameter` and `unauthorized` answers",
        ]
    }
}
