//! A local Mailchimp Marketing API 3.0 that behaves like the real one as described in
//! docs/vendors/mailchimp.md: API-key Basic auth and OAuth bearer tokens, the data-centre check,
//! audience lookup and merge fields, batch subscribe with its 500-member limit and per-member
//! errors, member status rules (no resubscribing unsubscribed, cleaned or deleted contacts, but
//! `pending` accepted for an unsubscribed member, who is then mailed an opt-in request: section
//! 11b), single-member lookup (by subscriber hash or URL-encoded email), PUT upsert with
//! `status_if_new`, archive (`DELETE` member, reversible by adding the contact again), tags as
//! static segments (bulk add and remove, 500 at a time, section 7), problem+json errors, and at
//! most 10 simultaneous connections per account. Every member is kept in a ledger.
//!
//! On loopback there is no `<dc>.api.mailchimp.com` host name, so the data centre moves into the
//! first path segment: the API of `us21` is served at `http://127.0.0.1:PORT/us21/3.0`. A key
//! ending `-us21` used under another data centre gets 401 API Key Invalid, as in production.
//!
//! Points the contract marks UNCONFIRMED are fields of [`Behaviour`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::oauth::{OAuthServer, Refusal};
use super::{
    Faults, Listen, LoggedRequest, Server, basic_auth, form_decode, is_valid_email, percent_decode,
};

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
    /// Archived (`DELETE` member): out of the audience until added again.
    Archived,
}

impl Status {
    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "subscribed" => Status::Subscribed,
            "unsubscribed" => Status::Unsubscribed,
            "cleaned" => Status::Cleaned,
            "pending" => Status::Pending,
            "transactional" => Status::Transactional,
            "archived" => Status::Archived,
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
            Status::Archived => "archived",
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
    /// How many calls created or updated this member.
    pub writes: u32,
    /// How many opt-in confirmation emails Mailchimp sent them (a member set to `pending`).
    pub confirmation_emails: u32,
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
    /// The audience's merge fields (tag, required), FNAME and LNAME to begin with.
    merge_fields: Vec<(String, bool)>,
    /// Static segment (tag) ids, by name.
    tag_ids: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Where the simulator answers (`http://127.0.0.1:41234`): the metadata's `api_endpoint`
    /// is an absolute URL, as Mailchimp's is.
    origin: String,
    accounts: Vec<Account>,
    audiences: BTreeMap<String, Audience>,
    /// The OAuth apps registered with the vendor, and their codes.
    oauth: OAuthServer,
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
        Self::start_on(Listen::plain(port), behaviour).await
    }

    /// Starts where `listen` says (HTTPS with [`Listen::tls`]) with the given behaviour.
    pub async fn start_on(listen: Listen, behaviour: Behaviour) -> anyhow::Result<MailchimpSim> {
        let state = Arc::new(Mutex::new(State {
            behaviour,
            ..State::default()
        }));
        let peak = Arc::new(AtomicUsize::new(0));
        let (handler_state, handler_peak) = (state.clone(), peak.clone());
        let server = Server::start(listen, move |method, uri, headers, body| {
            let (state, peak) = (handler_state.clone(), handler_peak.clone());
            async move { handle(state, peak, method, uri, headers, body).await }
        })
        .await?;
        state.lock().unwrap().origin = server.origin().to_string();
        Ok(MailchimpSim {
            state,
            server: Arc::new(server),
            peak_in_flight: peak,
        })
    }

    /// The base URL of a data centre's API, e.g. `http://127.0.0.1:41234/us21/3.0`; with `{dc}`
    /// instead of a data centre, the template a connection uses.
    pub fn base_url(&self, dc: &str) -> String {
        format!("{}/{dc}/3.0", self.server.origin())
    }

    /// The OAuth server's address (token and metadata endpoints), e.g. `http://127.0.0.1:41234/oauth2`.
    pub fn oauth_url(&self) -> String {
        format!("{}/oauth2", self.server.origin())
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

    /// Registers the platform's OAuth app with the vendor: (client id, client secret). The
    /// authorize page is `<oauth_url>/authorize`.
    pub fn register_oauth_app(&self, redirect_uri: &str) -> (String, String) {
        self.state.lock().unwrap().oauth.register(redirect_uri)
    }

    /// Issues an OAuth authorization code for the account of `api_key` to the app
    /// `client_id`, as the authorize page does when its owner allows access.
    pub fn authorization_code(&self, client_id: &str, redirect_uri: &str, api_key: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let account = s.account_of(api_key);
        s.oauth.grant(account, client_id, redirect_uri, "")
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
                merge_fields: vec![("FNAME".into(), false), ("LNAME".into(), false)],
                tag_ids: BTreeMap::new(),
            },
        );
        id
    }

    /// Makes a merge field required in an audience (adding it if new).
    pub fn require_merge_field(&self, audience: &str, tag: &str) {
        self.set_merge_field(audience, tag, true);
    }

    /// Adds a merge field to an audience.
    pub fn add_merge_field(&self, audience: &str, tag: &str) {
        self.set_merge_field(audience, tag, false);
    }

    fn set_merge_field(&self, audience: &str, tag: &str, required: bool) {
        let mut s = self.state.lock().unwrap();
        let fields = &mut s
            .audiences
            .get_mut(audience)
            .expect("known audience")
            .merge_fields;
        match fields.iter_mut().find(|(t, _)| t == tag) {
            Some(field) => field.1 = required,
            None => fields.push((tag.into(), required)),
        }
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
                confirmation_emails: 0,
            },
        );
    }

    /// Changes a member's status directly (as the person or Mailchimp would).
    pub fn set_status(&self, audience: &str, email: &str, status: Status) {
        let mut s = self.state.lock().unwrap();
        let audience = s.audiences.get_mut(audience).expect("known audience");
        audience
            .members
            .get_mut(&subscriber_hash(email))
            .expect("known member")
            .status = status;
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

    /// The HTTP server underneath (its connection and answer-time counts).
    pub fn server(&self) -> &Server {
        &self.server
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
    state: &Arc<Mutex<State>>,
    peak: &AtomicUsize,
    method: &Method,
    uri: &Uri,
    authorization: Option<&str>,
    body: &Bytes,
) -> Result<Response, Problem> {
    let path = uri.path().trim_start_matches('/');
    if let Some(rest) = path.strip_prefix("oauth2/") {
        return oauth(state, method, uri, rest, authorization, body);
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
    let (state, method, uri, body) = (state.clone(), method.clone(), uri.clone(), body.clone());
    super::apart_from_the_network(move || {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let body = Body::read(&body);
        route(
            &mut state.lock().unwrap(),
            account,
            &method,
            &uri,
            &parts,
            &body,
        )
    })
    .await
}

/// Answers an authenticated API request for `account`.
fn route(
    s: &mut State,
    account: usize,
    method: &Method,
    uri: &Uri,
    parts: &[&str],
    body: &Body<'_>,
) -> Result<Response, Problem> {
    let not_found = || {
        problem(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        )
    };
    let owned = |s: &State, id: &str| s.audiences.get(id).is_some_and(|a| a.account == account);
    match (method.as_str(), parts) {
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
        ("GET", ["lists", id]) if owned(s, id) => Ok(ok(audience_json(id, &s.audiences[*id]))),
        ("GET", ["lists", id, "merge-fields"]) if owned(s, id) => {
            let fields: Vec<Value> = s.audiences[*id]
                .merge_fields
                .iter()
                .enumerate()
                .map(|(i, (tag, required))| json!({"merge_id": i + 1, "tag": tag, "name": tag, "type": "text", "required": required, "default_value": "", "public": true, "display_order": i + 1, "list_id": id}))
                .collect();
            let total = fields.len();
            Ok(ok(
                json!({"merge_fields": fields, "list_id": id, "total_items": total}),
            ))
        }
        ("GET", ["lists", id, "members", who]) if owned(s, id) => {
            let member = s.audiences[*id]
                .members
                .get(&member_hash(who))
                .ok_or_else(not_found)?;
            Ok(ok(member_json(id, member)))
        }
        ("PUT", ["lists", id, "members", who]) if owned(s, id) => {
            put_member(s, id, &member_hash(who), body).map(ok)
        }
        ("DELETE", ["lists", id, "members", who]) if owned(s, id) => {
            let audience = s.audiences.get_mut(*id).unwrap();
            let member = audience
                .members
                .get_mut(&member_hash(who))
                .ok_or_else(not_found)?;
            member.status = Status::Archived;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("POST", ["lists", id, "members", who, "tags"]) if owned(s, id) => {
            member_tags(s, id, &member_hash(who), body)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("GET", ["lists", id, "segments"]) if owned(s, id) => {
            let audience = &s.audiences[*id];
            let counted = wants_field(uri, "segments.member_count");
            let segments: Vec<Value> = audience
                .tag_ids
                .iter()
                .map(|(name, sid)| {
                    let mut segment =
                        json!({"id": sid, "name": name, "type": "static", "list_id": id});
                    if counted {
                        let count = audience
                            .members
                            .values()
                            .filter(|m| m.tags.contains(name))
                            .count();
                        segment["member_count"] = count.into();
                    }
                    segment
                })
                .collect();
            let total = segments.len();
            Ok(ok(
                json!({"segments": segments, "list_id": id, "total_items": total}),
            ))
        }
        ("POST", ["lists", id, "segments"]) if owned(s, id) => create_segment(s, id, body).map(ok),
        ("POST", ["lists", id, "segments", sid]) if owned(s, id) => {
            change_segment(s, id, sid, body).map(ok)
        }
        ("POST", ["lists", id]) if owned(s, id) => batch(s, id, uri, body).map(ok),
        (_, ["lists", id, ..]) if !owned(s, id) => Err(not_found()),
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
    uri: &Uri,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<Response, Problem> {
    let mut s = state.lock().unwrap();
    match (method.as_str(), path) {
        ("GET", "authorize") => {
            let accounts: Vec<(usize, String)> = s
                .accounts
                .iter()
                .enumerate()
                .map(|(i, a)| (i, a.name.clone()))
                .collect();
            let query = uri.query().unwrap_or("");
            Ok(s.oauth
                .authorize_page("Mailchimp", "/oauth2/approve", query, &accounts, None))
        }
        ("POST", "approve") => Ok(s.oauth.approve(body)),
        ("POST", "token") => {
            let form = super::oauth::form(&String::from_utf8_lossy(body));
            let exchanged = match form.get("grant_type").map(String::as_str) {
                // Mailchimp has no scopes: a token may do what its user may.
                Some("authorization_code") => s.oauth.exchange(&form).map(|(account, _)| account),
                _ => Err(Refusal("unsupported_grant_type", "Unsupported grant_type")),
            };
            let account = match exchanged {
                Ok(account) if account < s.accounts.len() => account,
                Ok(_) => {
                    return Ok(token_refusal(Refusal(
                        "invalid_grant",
                        "The account no longer exists",
                    )));
                }
                Err(r) => return Ok(token_refusal(r)),
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
                "login_url": "https://login.mailchimp.com", "api_endpoint": format!("{}/{}", s.origin, account.dc)}),
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

/// A `true` query flag, whatever its case (`skip_merge_validation=TRUE` counts).
fn flag(uri: &Uri, name: &str) -> bool {
    uri.query().unwrap_or("").split('&').any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, v)| k == name && v.eq_ignore_ascii_case("true"))
    })
}

/// A request's body, read as JSON before the state is locked: requests parse in parallel,
/// and only the ledger's work is done one at a time.
struct Body<'a> {
    raw: &'a [u8],
    json: Option<Value>,
}

impl<'a> Body<'a> {
    fn read(raw: &'a [u8]) -> Body<'a> {
        Body {
            raw,
            json: serde_json::from_slice(raw).ok(),
        }
    }

    /// The body as JSON, or Mailchimp's answer to one that is not.
    fn json(&self) -> Result<&Value, Problem> {
        match &self.json {
            Some(json) => Ok(json),
            None => parse_json(self.raw).map(|_| unreachable!("parsed once already")),
        }
    }
}

/// A request body as JSON, or Mailchimp's answer to one that is not.
fn parse_json(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "JSON Parse Error",
            "We encountered an unspecified JSON parsing error.",
        )
    })
}

/// Whether a partial response (`fields=a.b,c`) includes `field`; without `fields`, all do.
fn wants_field(uri: &Uri, field: &str) -> bool {
    let Some(fields) = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("fields="))
    else {
        return true;
    };
    form_decode(fields)
        .split(',')
        .any(|f| f == field || field.starts_with(&format!("{f}.")))
}

/// The subscriber hash a member path names: the hash itself, or the (URL-encoded) address.
fn member_hash(who: &str) -> String {
    let who = percent_decode(who);
    if who.contains('@') {
        subscriber_hash(&who)
    } else {
        who.to_lowercase()
    }
}

/// The known merge fields of a member object's `merge_fields` (unknown tags are ignored).
fn merge_fields_of(audience: &Audience, m: &Value) -> BTreeMap<String, String> {
    m.get("merge_fields")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let tag = audience
                .merge_fields
                .iter()
                .find(|(t, _)| t.eq_ignore_ascii_case(k))?;
            Some((tag.0.clone(), v.as_str()?.to_string()))
        })
        .collect()
}

/// What a write may not do to a member in this status (compliance rules, section 5 and 11b).
fn refusal(
    email: &str,
    member: Option<&Member>,
    forgotten: bool,
    status: Status,
) -> Option<(String, &'static str)> {
    let wants_in = matches!(status, Status::Subscribed | Status::Pending);
    if forgotten && wants_in && member.is_none() {
        return Some((
            format!(
                "{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list."
            ),
            "Forgotten Email Not Subscribed",
        ));
    }
    let current = member.map(|m| m.status)?;
    let compliance = match (current, status) {
        (Status::Cleaned, s) if wants_in || s == Status::Transactional => true,
        // An unsubscribed member may be asked back (`pending` mails them an opt-in request) but
        // never subscribed directly.
        (Status::Unsubscribed, Status::Subscribed) => true,
        _ => false,
    };
    compliance.then(|| (format!("{email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed."), "Member In Compliance State"))
}

/// Sets a member's status, counting the opt-in email a move to `pending` sends.
fn set_status(member: &mut Member, status: Status) {
    if status == Status::Pending && member.status != Status::Pending {
        member.confirmation_emails += 1;
    }
    member.status = status;
}

/// `POST /lists/{id}`: batch subscribe or update members.
fn batch(s: &mut State, id: &str, uri: &Uri, body: &Body<'_>) -> Result<BatchAnswer, Problem> {
    let (skip_merge_validation, skip_duplicate_check) = (
        flag(uri, "skip_merge_validation"),
        flag(uri, "skip_duplicate_check"),
    );
    let request = body.json()?;
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
        // A status is needed to create a member; an update without one keeps the member's own
        // (docs/vendors/mailchimp.md marks the batch's per-item requirement UNCONFIRMED).
        let status = match m.get("status").and_then(Value::as_str) {
            None => None,
            Some(text) => match Status::parse(text) {
                Some(status) => Some(status),
                None => {
                    errors.push(member_error(
                        &email,
                        "Please provide a valid status.".into(),
                        "ERROR_GENERIC",
                    ));
                    continue;
                }
            },
        };
        let merge_fields = merge_fields_of(audience, m);
        let tags: Vec<String> = m
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        for tag in &tags {
            let next = 1 + audience.tag_ids.values().max().copied().unwrap_or(1000);
            audience.tag_ids.entry(tag.clone()).or_insert(next);
        }
        let hash = subscriber_hash(&email);
        let forgotten = audience.forgotten.contains(&lower);
        let existing = audience
            .members
            .get(&hash)
            .filter(|m| m.status != Status::Archived);
        // A create-only call names an existing member as such before judging its status (the
        // order is UNCONFIRMED in docs/vendors/mailchimp.md; this is the plausible one).
        if existing.is_some() && !update_existing {
            errors.push(member_error(&email, format!("{email} is already a list member, do you want to update? please provide update_existing:true in the request body"), "ERROR_CONTACT_EXISTS"));
            continue;
        }
        if let Some(status) = status
            && let Some((error, _)) = refusal(&email, existing, forgotten, status)
        {
            errors.push(member_error(&email, error, "ERROR_GENERIC"));
            continue;
        }
        match audience.members.get_mut(&hash) {
            Some(member) if member.status != Status::Archived => {
                if let Some(status) = status {
                    set_status(member, status);
                }
                member.merge_fields.extend(merge_fields);
                if sync_tags {
                    member.tags.clear();
                }
                member.tags.extend(tags);
                member.writes += 1;
                updated.push(member_json(id, member));
            }
            archived => {
                // New, or archived and added back (archiving is reversible, section 11b).
                let Some(status) = status else {
                    errors.push(member_error(
                        &email,
                        "Please provide a valid status.".into(),
                        "ERROR_GENERIC",
                    ));
                    continue;
                };
                let missing: Vec<&String> = audience
                    .merge_fields
                    .iter()
                    .filter(|(tag, required)| {
                        *required && merge_fields.get(tag).is_none_or(|v| v.is_empty())
                    })
                    .map(|(tag, _)| tag)
                    .collect();
                if !missing.is_empty() && !skip_merge_validation {
                    errors.push(json!({"email_address": email, "error": "Your merge fields were invalid.", "error_code": "ERROR_GENERIC", "field": missing[0], "field_message": "Please enter a value"}));
                    continue;
                }
                let member = match archived {
                    Some(member) => {
                        member.merge_fields.extend(merge_fields);
                        member.tags.extend(tags);
                        member.writes += 1;
                        set_status(member, status);
                        member.clone()
                    }
                    None => {
                        let mut member = Member {
                            email: email.clone(),
                            status: Status::Subscribed,
                            merge_fields,
                            tags: tags.into_iter().collect(),
                            writes: 1,
                            confirmation_emails: 0,
                        };
                        set_status(&mut member, status);
                        audience.members.insert(hash, member.clone());
                        member
                    }
                };
                created.push(member_json(id, &member));
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

/// `PUT /lists/{id}/members/{hash}`: add or update one member; `status_if_new` applies only to
/// a new member, `status` (if sent) changes an existing one (section 5).
fn put_member(s: &mut State, id: &str, hash: &str, body: &Body<'_>) -> Result<MemberView, Problem> {
    let request = body.json()?;
    let email = request
        .get("email_address")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    if !is_valid_email(&email) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Invalid Resource",
            "Please provide a valid email address.",
        ));
    }
    if subscriber_hash(&email) != hash {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Member Exists",
            format!("{email} is already a list member. Use PUT to insert or update list members."),
        ));
    }
    let status = request
        .get("status")
        .and_then(Value::as_str)
        .and_then(Status::parse);
    let status_if_new = request
        .get("status_if_new")
        .and_then(Value::as_str)
        .and_then(Status::parse);
    let audience = s.audiences.get_mut(id).unwrap();
    let merge_fields = merge_fields_of(audience, request);
    let forgotten = audience.forgotten.contains(&email.to_lowercase());
    let existing = audience
        .members
        .get(hash)
        .filter(|m| m.status != Status::Archived);
    let wanted = if existing.is_some() {
        status
    } else {
        status.or(status_if_new)
    };
    if existing.is_none() && wanted.is_none() {
        return Err(invalid_resource(
            json!([{"field": "status_if_new", "message": "This value should not be blank."}]),
        ));
    }
    if let Some(wanted) = wanted
        && let Some((detail, title)) = refusal(&email, existing, forgotten, wanted)
    {
        return Err(problem(StatusCode::BAD_REQUEST, title, detail));
    }
    let member = audience
        .members
        .entry(hash.to_string())
        .or_insert_with(|| Member {
            email: email.clone(),
            status: Status::Subscribed,
            merge_fields: BTreeMap::new(),
            tags: BTreeSet::new(),
            writes: 0,
            confirmation_emails: 0,
        });
    if let Some(wanted) = wanted {
        set_status(member, wanted);
    }
    member.merge_fields.extend(merge_fields);
    member.writes += 1;
    Ok(member_json(id, member))
}

/// `POST /lists/{id}/members/{hash}/tags`: `active` adds a tag, `inactive` removes it.
fn member_tags(s: &mut State, id: &str, hash: &str, body: &Body<'_>) -> Result<(), Problem> {
    let request = body.json()?;
    let audience = s.audiences.get_mut(id).unwrap();
    let changes: Vec<(String, bool)> = request
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t.get("name")?.as_str()?.to_string(),
                t.get("status")?.as_str()? == "active",
            ))
        })
        .collect();
    for (name, _) in changes.iter().filter(|(_, active)| *active) {
        let next = 1 + audience.tag_ids.values().max().copied().unwrap_or(1000);
        audience.tag_ids.entry(name.clone()).or_insert(next);
    }
    let member = audience.members.get_mut(hash).ok_or_else(|| {
        problem(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        )
    })?;
    for (name, active) in changes {
        if active {
            member.tags.insert(name);
        } else {
            member.tags.remove(&name);
        }
    }
    Ok(())
}

/// `POST /lists/{id}/segments`: a static segment (a tag), with its first members.
fn create_segment(s: &mut State, id: &str, body: &Body<'_>) -> Result<Value, Problem> {
    let request = body.json()?;
    let Some(name) = request.get("name").and_then(Value::as_str) else {
        return Err(invalid_resource(
            json!([{"field": "name", "message": "This value should not be blank."}]),
        ));
    };
    let audience = s.audiences.get_mut(id).unwrap();
    let next = 1 + audience.tag_ids.values().max().copied().unwrap_or(1000);
    let sid = *audience.tag_ids.entry(name.to_string()).or_insert(next);
    for email in request
        .get("static_segment")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some(m) = audience.members.get_mut(&subscriber_hash(email)) {
            m.tags.insert(name.to_string());
        }
    }
    let count = audience
        .members
        .values()
        .filter(|m| m.tags.contains(name))
        .count();
    Ok(json!({"id": sid, "name": name, "member_count": count, "type": "static", "list_id": id}))
}

/// `POST /lists/{id}/segments/{segment}`: add and remove members of a static segment (a tag),
/// at most 500 each; addresses the audience does not have are listed in `errors`.
fn change_segment(s: &mut State, id: &str, sid: &str, body: &Body<'_>) -> Result<Value, Problem> {
    let request = body.json()?;
    let audience = s.audiences.get_mut(id).unwrap();
    let Some(name) = audience
        .tag_ids
        .iter()
        .find(|(_, v)| v.to_string() == sid)
        .map(|(k, _)| k.clone())
    else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        ));
    };
    let list = |key: &str| -> Vec<String> {
        request
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let (add, remove) = (list("members_to_add"), list("members_to_remove"));
    if add.len() > MAX_BATCH || remove.len() > MAX_BATCH {
        return Err(invalid_resource(
            json!([{"field": "members_to_add", "message": format!("Schema describes array, maximum {MAX_BATCH} items")}]),
        ));
    }
    let (mut added, mut removed, mut missing) = (vec![], vec![], vec![]);
    for (emails, adding) in [(&add, true), (&remove, false)] {
        for email in emails {
            match audience.members.get_mut(&subscriber_hash(email)) {
                Some(member) => {
                    if adding {
                        member.tags.insert(name.clone());
                        added.push(member_json(id, member));
                    } else {
                        member.tags.remove(&name);
                        removed.push(member_json(id, member));
                    }
                }
                None => missing.push(email.clone()),
            }
        }
    }
    let errors: Vec<Value> = if missing.is_empty() {
        vec![]
    } else {
        vec![
            json!({"email_addresses": missing, "error": "Email addresses do not belong to the list"}),
        ]
    };
    Ok(
        json!({"members_added": added, "members_removed": removed, "errors": errors,
        "total_added": added.len(), "total_removed": removed.len(), "error_count": errors.len()}),
    )
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

/// A token endpoint's refusal: 400 with `error` and `error_description`.
fn token_refusal(Refusal(error, description): Refusal) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/json")],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

/// A Mailchimp account with one audience, as [`crate::Simulator`] drives it.
pub struct ForCheck {
    sim: MailchimpSim,
    api_key: String,
    audience: String,
}

impl ForCheck {
    /// Starts the simulator with an account (data centre `us1`) and an empty audience.
    pub async fn start(listen: Listen) -> anyhow::Result<ForCheck> {
        let sim = MailchimpSim::start_on(listen, Behaviour::default()).await?;
        let api_key = sim.add_account("Check", "us1");
        let audience = sim.add_audience(&api_key, "Check audience");
        Ok(ForCheck {
            sim,
            api_key,
            audience,
        })
    }
}

impl crate::Simulator for ForCheck {
    fn connector(&self) -> &'static str {
        "mailchimp"
    }
    fn base_url(&self) -> String {
        self.sim.base_url("us1")
    }
    fn credential(&self) -> String {
        self.api_key.clone()
    }
    fn export_settings(&self) -> Vec<(String, String)> {
        vec![("audience-id".into(), self.audience.clone())]
    }
    fn unknown_list_settings(&self) -> Vec<(String, String)> {
        vec![("audience-id".into(), "0000000000".into())]
    }
    fn keep_out(&self, email: &str) {
        self.sim
            .add_member(&self.audience, email, Status::Unsubscribed, &[]);
    }
    fn held(&self, email: &str) -> Option<crate::Held> {
        let members = self.sim.members(&self.audience);
        let wanted = email.to_lowercase();
        let m = members
            .values()
            .find(|m| m.email.to_lowercase() == wanted)?;
        Some(match m.status {
            Status::Subscribed | Status::Pending | Status::Transactional => crate::Held::Mailable,
            Status::Archived => crate::Held::Removed("archived".into()),
            other => crate::Held::KeptOut(other.as_str().into()),
        })
    }
    fn records(&self, email: &str) -> usize {
        let wanted = email.to_lowercase();
        self.sim
            .members(&self.audience)
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
            "in a batch, a compliance refusal (an unsubscribed or cleaned member sent as subscribed) is an `errors[]` entry with the single-member words and `ERROR_GENERIC`",
            "more than 500 members in a batch is a 400 `Invalid Resource`",
            "OAuth token answers carry `expires_in: 0` and `scope: null`",
        ]
    }
}
