//! A local Mailchimp Marketing API 3.0 that behaves like the real one as described in
//! shared/vendors/mailchimp.md: API-key Basic auth and OAuth bearer tokens, the data-centre check,
//! audience lookup, batch subscribe with its 500-member limit and per-member errors, member status
//! rules (no resubscribing unsubscribed, cleaned or deleted contacts), problem+json errors, and at
//! most 10 simultaneous connections per account. Every member is kept in a ledger.
//!
//! On loopback there is no `<dc>.api.mailchimp.com` host name, so the data centre moves into the
//! first path segment: the API of `us21` is served at `http://127.0.0.1:PORT/us21/3.0`. A key
//! ending `-us21` used under another data centre gets 401 API Key Invalid, as in production.
//!
//! Points the contract marks UNCONFIRMED are fields of [`Behaviour`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::{Faults, LoggedRequest, Server, basic_auth, is_valid_email, percent_decode};

/// Largest batch subscribe accepted.
pub const MAX_BATCH: usize = 500;

/// Choices where the vendor's behaviour is unconfirmed, and test knobs.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Simultaneous requests per account before the next gets 429.
    pub max_connections: usize,
    /// Time each API call takes (lets tests and benchmarks reach the connection limit).
    pub latency: Duration,
    /// Domains whose addresses Mailchimp calls fake (real Mailchimp has flagged example.com).
    pub fake_domains: Vec<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            max_connections: 10,
            latency: Duration::ZERO,
            fake_domains: vec!["example.invalid".into(), "mailinator.com".into()],
        }
    }
}

/// A member's status in an audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Subscribed,
    Unsubscribed,
    Cleaned,
    Pending,
    Transactional,
}

impl Status {
    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "subscribed" => Status::Subscribed,
            "unsubscribed" => Status::Unsubscribed,
            "cleaned" => Status::Cleaned,
            "pending" => Status::Pending,
            "transactional" => Status::Transactional,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Status::Subscribed => "subscribed",
            Status::Unsubscribed => "unsubscribed",
            Status::Cleaned => "cleaned",
            Status::Pending => "pending",
            Status::Transactional => "transactional",
        }
    }
}

/// One member in the ledger.
#[derive(Debug, Clone)]
pub struct Member {
    pub email: String,
    pub status: Status,
    pub merge_fields: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    /// How many batch calls created or updated this member.
    pub writes: u32,
}

#[derive(Debug)]
struct Account {
    dc: String,
    name: String,
    api_key: String,
    tokens: Vec<String>,
    in_flight: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Audience {
    account: usize,
    name: String,
    web_id: u64,
    /// Members by subscriber hash.
    members: BTreeMap<String, Member>,
    /// Lowercased emails that were permanently deleted.
    forgotten: HashSet<String>,
    required_merge_fields: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    accounts: Vec<Account>,
    audiences: BTreeMap<String, Audience>,
    oauth_codes: HashMap<String, usize>,
    log: Vec<LoggedRequest>,
    behaviour: Behaviour,
}

impl State {
    /// The account an API key belongs to (simulator set-up: the key must exist).
    fn account_of(&self, api_key: &str) -> usize {
        self.accounts
            .iter()
            .position(|a| a.api_key == api_key)
            .expect("known account")
    }
}

/// A running Mailchimp simulator.
#[derive(Clone)]
pub struct MailchimpSim {
    state: Arc<Mutex<State>>,
    server: Arc<Server>,
    peak_in_flight: Arc<AtomicUsize>,
}

/// The subscriber hash: lowercase hex MD5 of the lowercased email.
pub fn subscriber_hash(email: &str) -> String {
    Md5::digest(email.trim().to_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_id(len: usize) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let hash = subscriber_hash(&format!("id-{n}-{:?}", std::time::SystemTime::now()));
    hash[..len].to_string()
}

/// An error answer in Mailchimp's problem-document shape.
struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
    errors: Option<Value>,
}

fn problem(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Problem {
    Problem {
        status,
        title,
        detail: detail.into(),
        errors: None,
    }
}

impl Problem {
    fn into_response(self) -> Response {
        let instance = format!("{}-{}-{}", new_id(8), new_id(4), new_id(12));
        let mut body = json!({
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": self.title, "status": self.status.as_u16(), "detail": self.detail, "instance": instance,
        });
        if let Some(errors) = self.errors {
            body["errors"] = errors;
        }
        (
            self.status,
            [
                ("content-type", "application/problem+json; charset=utf-8".to_string()),
                ("x-request-id", instance),
                ("link", "<https://us1.api.mailchimp.com/schema/3.0/ProblemDetailDocument.json>; rel=\"describedBy\"".to_string()),
            ],
            body.to_string(),
        )
            .into_response()
    }
}

fn ok(body: impl serde::Serialize) -> Response {
    (
        StatusCode::OK,
        [
            ("content-type", "application/json; charset=utf-8"),
            ("x-request-id", &new_id(32)),
        ],
        serde_json::to_string(&body).expect("serialisable"),
    )
        .into_response()
}

impl MailchimpSim {
    /// Starts on 127.0.0.1:`port` (0 picks a free port).
    pub async fn start(port: u16) -> anyhow::Result<MailchimpSim> {
        Self::start_with(port, Behaviour::default()).await
    }

    /// Starts with the given behaviour.
    pub async fn start_with(port: u16, behaviour: Behaviour) -> anyhow::Result<MailchimpSim> {
        let state = Arc::new(Mutex::new(State {
            behaviour,
            ..State::default()
        }));
        let peak = Arc::new(AtomicUsize::new(0));
        let (handler_state, handler_peak) = (state.clone(), peak.clone());
        let server = Server::start(port, move |method, uri, headers, body| {
            let (state, peak) = (handler_state.clone(), handler_peak.clone());
            async move { handle(state, peak, method, uri, headers, body).await }
        })
        .await?;
        Ok(MailchimpSim {
            state,
            server: Arc::new(server),
            peak_in_flight: peak,
        })
    }

    /// The base URL of a data centre's API, e.g. `http://127.0.0.1:41234/us21/3.0`; with `{dc}`
    /// instead of a data centre, the template a connection uses.
    pub fn base_url(&self, dc: &str) -> String {
        format!("http://{}/{dc}/3.0", self.server.addr())
    }

    /// The OAuth server's address (token and metadata endpoints), e.g. `http://127.0.0.1:41234/oauth2`.
    pub fn oauth_url(&self) -> String {
        format!("http://{}/oauth2", self.server.addr())
    }

    /// Adds an account in data centre `dc`; returns its API key (`<32 hex>-<dc>`).
    pub fn add_account(&self, name: &str, dc: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let api_key = format!(
            "{}-{dc}",
            subscriber_hash(&format!("{name}/{}", s.accounts.len()))
        );
        s.accounts.push(Account {
            dc: dc.into(),
            name: name.into(),
            api_key: api_key.clone(),
            tokens: vec![],
            in_flight: Arc::default(),
        });
        api_key
    }

    /// Issues an OAuth authorization code for the account of `api_key`, to exchange at
    /// `/oauth2/token` as the browser flow would.
    pub fn authorization_code(&self, api_key: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let account = s.account_of(api_key);
        let code = new_id(24);
        s.oauth_codes.insert(code.clone(), account);
        code
    }

    /// Adds an audience to the account of `api_key`; returns its ID.
    pub fn add_audience(&self, api_key: &str, name: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let account = s.account_of(api_key);
        let id = new_id(10);
        let web_id = NEXT_ID.fetch_add(1, Ordering::Relaxed) * 7919;
        s.audiences.insert(
            id.clone(),
            Audience {
                account,
                name: name.into(),
                web_id,
                members: BTreeMap::new(),
                forgotten: HashSet::new(),
                required_merge_fields: vec![],
            },
        );
        id
    }

    /// Makes a merge field required in an audience.
    pub fn require_merge_field(&self, audience: &str, tag: &str) {
        self.state
            .lock()
            .unwrap()
            .audiences
            .get_mut(audience)
            .expect("known audience")
            .required_merge_fields
            .push(tag.into());
    }

    /// Puts a member in an audience directly (as if added long ago).
    pub fn add_member(
        &self,
        audience: &str,
        email: &str,
        status: Status,
        merge_fields: &[(&str, &str)],
    ) {
        let mut s = self.state.lock().unwrap();
        let audience = s.audiences.get_mut(audience).expect("known audience");
        audience.members.insert(
            subscriber_hash(email),
            Member {
                email: email.into(),
                status,
                merge_fields: merge_fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                tags: BTreeSet::new(),
                writes: 0,
            },
        );
    }

    /// Marks an address as permanently deleted from an audience.
    pub fn forget(&self, audience: &str, email: &str) {
        let mut s = self.state.lock().unwrap();
        let audience = s.audiences.get_mut(audience).expect("known audience");
        audience.members.remove(&subscriber_hash(email));
        audience.forgotten.insert(email.to_lowercase());
    }

    /// The ledger of an audience, by lowercased email.
    pub fn members(&self, audience: &str) -> BTreeMap<String, Member> {
        self.state.lock().unwrap().audiences[audience]
            .members
            .values()
            .map(|m| (m.email.to_lowercase(), m.clone()))
            .collect()
    }

    /// Injects vendor faults into the requests from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.server.set_faults(faults);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock().unwrap().log.clone()
    }

    /// The most requests one account had in progress at once.
    pub fn peak_connections(&self) -> usize {
        self.peak_in_flight.load(Ordering::Relaxed)
    }
}

/// Decrements an account's in-flight count when the request is done.
struct InFlight(Arc<AtomicUsize>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    peak: Arc<AtomicUsize>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = serve(
        &state,
        &peak,
        &method,
        &uri,
        authorization.as_deref(),
        &body,
    )
    .await;
    let response = match response {
        Ok(r) => r,
        Err(p) => p.into_response(),
    };
    state.lock().unwrap().log.push(LoggedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization,
        status: response.status().as_u16(),
        at: std::time::Instant::now(),
    });
    response
}

async fn serve(
    state: &Mutex<State>,
    peak: &AtomicUsize,
    method: &Method,
    uri: &Uri,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<Response, Problem> {
    let path = uri.path().trim_start_matches('/');
    if let Some(rest) = path.strip_prefix("oauth2/") {
        return oauth(state, method, rest, authorization, body);
    }
    let Some((dc, rest)) = path.split_once("/3.0") else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        ));
    };
    let parts: Vec<String> = rest
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();

    // Authenticate, then take a connection slot for the account.
    let (account, behaviour) = {
        let s = state.lock().unwrap();
        (authenticate(&s, dc, authorization)?, s.behaviour.clone())
    };
    let counter = state.lock().unwrap().accounts[account].in_flight.clone();
    let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
    let _slot = InFlight(counter);
    if now > behaviour.max_connections {
        return Err(problem(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            format!(
                "You have exceeded the limit of {} simultaneous connections.",
                behaviour.max_connections
            ),
        ));
    }
    peak.fetch_max(now, Ordering::SeqCst);
    if !behaviour.latency.is_zero() {
        tokio::time::sleep(behaviour.latency).await;
    }

    let mut s = state.lock().unwrap();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let not_found = || {
        problem(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        )
    };
    let owned = |s: &State, id: &str| s.audiences.get(id).is_some_and(|a| a.account == account);
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["ping"]) => Ok(ok(json!({"health_status": "Everything's Chimpy!"}))),
        ("GET", ["lists"]) => {
            let lists: Vec<Value> = s
                .audiences
                .iter()
                .filter(|(_, a)| a.account == account)
                .map(|(id, a)| audience_json(id, a))
                .collect();
            Ok(ok(json!({"total_items": lists.len(), "lists": lists})))
        }
        ("GET", ["lists", id]) if owned(&s, id) => Ok(ok(audience_json(id, &s.audiences[*id]))),
        ("GET", ["lists", id, "merge-fields"]) if owned(&s, id) => {
            let required = &s.audiences[*id].required_merge_fields;
            let fields: Vec<Value> = [("FNAME", "First Name", 1), ("LNAME", "Last Name", 2)]
                .iter()
                .map(|(tag, name, merge_id)| json!({"merge_id": merge_id, "tag": tag, "name": name, "type": "text", "required": required.iter().any(|r| r == tag), "default_value": "", "public": true, "display_order": merge_id, "list_id": id}))
                .collect();
            Ok(ok(
                json!({"merge_fields": fields, "list_id": id, "total_items": 2}),
            ))
        }
        ("GET", ["lists", id, "members", who]) if owned(&s, id) => {
            let hash = if who.contains('@') {
                subscriber_hash(&percent_decode(who))
            } else {
                who.to_string()
            };
            let member = s.audiences[*id].members.get(&hash).ok_or_else(not_found)?;
            Ok(ok(member_json(id, member)))
        }
        ("POST", ["lists", id]) if owned(&s, id) => batch(&mut s, id, uri, body).map(ok),
        (_, ["lists", id, ..]) if !owned(&s, id) => Err(not_found()),
        (_, ["ping" | "lists", ..]) => Err(problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "The requested method and resource are not compatible. See the Allow header for this resource's available methods.",
        )),
        _ => Err(not_found()),
    }
}

/// The account the credential belongs to, if it may use data centre `dc`.
fn authenticate(s: &State, dc: &str, authorization: Option<&str>) -> Result<usize, Problem> {
    let invalid = || {
        problem(
            StatusCode::UNAUTHORIZED,
            "API Key Invalid",
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
        )
    };
    let Some(header) = authorization else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "API Key Missing",
            "Your request did not include an API key.",
        ));
    };
    let account = if let Some(token) = header.strip_prefix("Bearer ") {
        s.accounts
            .iter()
            .position(|a| a.tokens.iter().any(|t| t == token.trim()))
    } else if let Some((_, key)) = basic_auth(header) {
        s.accounts.iter().position(|a| a.api_key == key)
    } else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "API Key Missing",
            "Your request did not include an API key.",
        ));
    };
    match account {
        Some(i) if s.accounts[i].dc == dc => Ok(i),
        _ => Err(invalid()),
    }
}

fn oauth(
    state: &Mutex<State>,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<Response, Problem> {
    let mut s = state.lock().unwrap();
    match (method.as_str(), path) {
        ("POST", "token") => {
            let form: HashMap<String, String> = String::from_utf8_lossy(body)
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect();
            let account = (form.get("grant_type").map(String::as_str)
                == Some("authorization_code"))
            .then(|| form.get("code").and_then(|c| s.oauth_codes.remove(c)))
            .flatten();
            let Some(account) = account else {
                return Ok((StatusCode::BAD_REQUEST, [("content-type", "application/json")], json!({"error": "invalid_grant", "error_description": "Invalid authorization code"}).to_string()).into_response());
            };
            let token = new_id(32);
            s.accounts[account].tokens.push(token.clone());
            Ok(ok(
                json!({"access_token": token, "expires_in": 0, "scope": null}),
            ))
        }
        ("GET", "metadata") => {
            let token = authorization
                .and_then(|h| h.strip_prefix("OAuth "))
                .map(str::trim)
                .unwrap_or("");
            let Some(account) = s
                .accounts
                .iter()
                .find(|a| a.tokens.iter().any(|t| t == token))
            else {
                return Ok(ok(
                    json!({"error": "invalid_token", "error_description": "Invalid token"}),
                ));
            };
            Ok(ok(
                json!({"dc": account.dc, "role": "owner", "accountname": account.name, "user_id": 123456,
                "login": {"email": "owner@example.com", "login_id": 123456, "login_name": "owner", "login_email": "owner@example.com", "avatar": null},
                "login_url": "https://login.mailchimp.com", "api_endpoint": format!("/{}", account.dc)}),
            ))
        }
        _ => Err(problem(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        )),
    }
}

fn audience_json(id: &str, a: &Audience) -> Value {
    let count = |st: Status| a.members.values().filter(|m| m.status == st).count();
    json!({"id": id, "web_id": a.web_id, "name": a.name, "double_optin": false, "permission_reminder": "You signed up on our site.",
        "stats": {"member_count": count(Status::Subscribed), "unsubscribe_count": count(Status::Unsubscribed), "cleaned_count": count(Status::Cleaned)}, "_links": []})
}

/// A member as the API shows it (typed: a batch answer holds up to 500 of them).
#[derive(serde::Serialize)]
struct MemberView {
    id: String,
    email_address: String,
    unique_email_id: String,
    status: &'static str,
    merge_fields: BTreeMap<String, String>,
    tags: Vec<TagView>,
    list_id: String,
    _links: [(); 0],
}

#[derive(serde::Serialize)]
struct TagView {
    id: usize,
    name: String,
}

fn member_json(list: &str, m: &Member) -> MemberView {
    let id = subscriber_hash(&m.email);
    MemberView {
        unique_email_id: id[..10].to_string(),
        id,
        email_address: m.email.clone(),
        status: m.status.as_str(),
        merge_fields: m.merge_fields.clone(),
        tags: m
            .tags
            .iter()
            .enumerate()
            .map(|(i, t)| TagView {
                id: i + 1,
                name: t.clone(),
            })
            .collect(),
        list_id: list.to_string(),
        _links: [],
    }
}

/// The answer to a batch subscribe.
#[derive(serde::Serialize)]
struct BatchAnswer {
    new_members: Vec<MemberView>,
    updated_members: Vec<MemberView>,
    errors: Vec<Value>,
    total_created: usize,
    total_updated: usize,
    error_count: usize,
    _links: [(); 0],
}

fn member_error(email: &str, error: String, code: &str) -> Value {
    json!({"email_address": email, "error": error, "error_code": code})
}

/// `POST /lists/{id}`: batch subscribe or update members.
fn batch(s: &mut State, id: &str, uri: &Uri, body: &[u8]) -> Result<BatchAnswer, Problem> {
    let query = uri.query().unwrap_or("");
    let flag = |name: &str| query.split('&').any(|kv| kv == format!("{name}=true"));
    let (skip_merge_validation, skip_duplicate_check) =
        (flag("skip_merge_validation"), flag("skip_duplicate_check"));
    let request: Value = serde_json::from_slice(body).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "JSON Parse Error",
            "We encountered an unspecified JSON parsing error.",
        )
    })?;
    let Some(members) = request.get("members").and_then(Value::as_array) else {
        return Err(invalid_resource(
            json!([{"field": "members", "message": "Required fields were not provided: members"}]),
        ));
    };
    if members.len() > MAX_BATCH {
        return Err(invalid_resource(
            json!([{"field": "members", "message": format!("Schema describes array, maximum {MAX_BATCH} items")}]),
        ));
    }
    let update_existing = request
        .get("update_existing")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let sync_tags = update_existing
        && request
            .get("sync_tags")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let fake_domains = s.behaviour.fake_domains.clone();
    let audience = s.audiences.get_mut(id).unwrap();
    let (mut created, mut updated, mut errors) = (vec![], vec![], vec![]);
    let mut seen = HashSet::new();
    for m in members {
        let email = m
            .get("email_address")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        let lower = email.to_lowercase();
        if !seen.insert(lower.clone()) {
            if !skip_duplicate_check {
                errors.push(member_error(
                    &email,
                    format!("{email} appears more than once in this request"),
                    "ERROR_GENERIC",
                ));
            }
            continue;
        }
        if !is_valid_email(&email) {
            errors.push(member_error(
                &email,
                "Please provide a valid email address.".into(),
                "ERROR_GENERIC",
            ));
            continue;
        }
        if fake_domains
            .iter()
            .any(|d| lower.ends_with(&format!("@{d}")))
        {
            errors.push(member_error(
                &email,
                format!("{email} looks fake or invalid, please enter a real email address."),
                "ERROR_GENERIC",
            ));
            continue;
        }
        let Some(status) = m
            .get("status")
            .and_then(Value::as_str)
            .and_then(Status::parse)
        else {
            errors.push(member_error(
                &email,
                "Please provide a valid status.".into(),
                "ERROR_GENERIC",
            ));
            continue;
        };
        let wants_in = matches!(status, Status::Subscribed | Status::Pending);
        if audience.forgotten.contains(&lower) && wants_in {
            errors.push(member_error(&email, format!("{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list."), "ERROR_GENERIC"));
            continue;
        }
        let merge_fields: BTreeMap<String, String> = m
            .get("merge_fields")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
        let tags: Vec<String> = m
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let hash = subscriber_hash(&email);
        match audience.members.get_mut(&hash) {
            Some(_) if !update_existing => {
                errors.push(member_error(&email, format!("{email} is already a list member, do you want to update? please provide update_existing:true in the request body"), "ERROR_CONTACT_EXISTS"));
            }
            Some(existing)
                if wants_in
                    && matches!(existing.status, Status::Unsubscribed | Status::Cleaned) =>
            {
                errors.push(member_error(&email, format!("{email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed."), "ERROR_GENERIC"));
            }
            Some(existing) => {
                existing.status = status;
                existing.merge_fields.extend(merge_fields);
                if sync_tags {
                    existing.tags.clear();
                }
                existing.tags.extend(tags);
                existing.writes += 1;
                updated.push(member_json(id, existing));
            }
            None => {
                let missing: Vec<&String> = audience
                    .required_merge_fields
                    .iter()
                    .filter(|f| !merge_fields.contains_key(*f))
                    .collect();
                if !missing.is_empty() && !skip_merge_validation {
                    errors.push(json!({"email_address": email, "error": "Your merge fields were invalid.", "error_code": "ERROR_GENERIC", "field": missing[0], "field_message": "Please enter a value"}));
                    continue;
                }
                let member = Member {
                    email: email.clone(),
                    status,
                    merge_fields,
                    tags: tags.into_iter().collect(),
                    writes: 1,
                };
                created.push(member_json(id, &member));
                audience.members.insert(hash, member);
            }
        }
    }
    Ok(BatchAnswer {
        total_created: created.len(),
        total_updated: updated.len(),
        error_count: errors.len(),
        new_members: created,
        updated_members: updated,
        errors,
        _links: [],
    })
}

fn invalid_resource(errors: Value) -> Problem {
    Problem {
        errors: Some(errors),
        ..problem(
            StatusCode::BAD_REQUEST,
            "Invalid Resource",
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
        )
    }
}
