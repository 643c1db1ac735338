//! A local Campaign Monitor (createsend API v3.3) that behaves like the real one as described in
//! docs/vendors/campaign-monitor.md: Basic auth with the API key, list lookup and custom
//! fields, bulk import with its limits, consent rules, custom-field values (bracketed or bare
//! keys, `Clear`), partial failures in the `Code 210` shape and no resubscription; single add,
//! unsubscribe (`POST /subscribers/{list}/unsubscribe.json`) and delete (`DELETE
//! /subscribers/{list}.json?email=`, the deleted state) as createsend-python calls them; subscriber
//! details with their documented fields; 404 for a route it does not have; and OAuth bearer
//! tokens that expire and are renewed at `/oauth/token` with a rotating refresh token. Every
//! subscriber is kept in a ledger for tests to inspect.
//!
//! Points the contract marks UNCONFIRMED are fields of [`Behaviour`], so they are easy to change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::oauth::{OAuthServer, Refusal};
use super::{Faults, Listen, LoggedRequest, Server, basic_auth, form_decode, is_valid_email};

/// Largest import accepted (more: Code 209).
pub const MAX_IMPORT: usize = 1000;
/// Largest custom-field value kept.
const MAX_FIELD_VALUE: usize = 250;

/// Choices where the vendor's behaviour is unconfirmed.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// HTTP status for an unknown list (Code 101): 401 fits CM's rule for foreign IDs.
    pub unknown_list_status: StatusCode,
    /// HTTP status of a successful import.
    pub import_success_status: StatusCode,
    /// Report rows that may not be resubscribed per row with codes 204-208 (true), or count
    /// them silently as existing subscribers (false).
    pub report_suppressed_rows: bool,
    /// Time each API call takes (for benchmarks against the vendor's ceiling).
    pub latency: std::time::Duration,
    /// Adds of one subscriber (`POST /subscribers/{list}.json`) allowed in a window before a
    /// `429` "added too many times too quickly" with no rate headers [S20][S21]; CM publishes
    /// no figure (**UNCONFIRMED**: 5 a minute here).
    pub adds_per_subscriber: (u32, std::time::Duration),
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            unknown_list_status: StatusCode::UNAUTHORIZED,
            import_success_status: StatusCode::CREATED,
            report_suppressed_rows: true,
            latency: std::time::Duration::ZERO,
            adds_per_subscriber: (5, std::time::Duration::from_secs(60)),
        }
    }
}

/// A subscriber's state on a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberState {
    Active,
    Unconfirmed,
    Unsubscribed,
    Bounced,
    Deleted,
}

impl SubscriberState {
    fn as_str(self) -> &'static str {
        match self {
            SubscriberState::Active => "Active",
            SubscriberState::Unconfirmed => "Unconfirmed",
            SubscriberState::Unsubscribed => "Unsubscribed",
            SubscriberState::Bounced => "Bounced",
            SubscriberState::Deleted => "Deleted",
        }
    }
}

/// One subscriber in the ledger.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub email: String,
    pub name: String,
    pub state: SubscriberState,
    /// By the field's key, without brackets (as subscriber details show them).
    pub custom_fields: BTreeMap<String, String>,
    /// How many import calls included this address.
    pub imports: u32,
    /// When the subscriber joined the list.
    pub joined: String,
}

#[derive(Debug)]
struct List {
    client_id: String,
    title: String,
    subscribers: BTreeMap<String, Subscriber>,
    /// Custom fields: (name, key without brackets, data type).
    custom_fields: Vec<(String, String, String)>,
}

#[derive(Debug)]
struct Client {
    name: String,
    api_key: String,
    suppressed: std::collections::HashSet<String>,
    /// ConsentToTrack per email, shared by every list of the client.
    consent: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    clients: BTreeMap<String, Client>,
    lists: BTreeMap<String, List>,
    log: Vec<LoggedRequest>,
    next_id: u64,
    behaviour: Behaviour,
    /// OAuth access tokens: the client they act for, when they expire, and their scopes.
    access_tokens: HashMap<String, (String, std::time::Instant, Scopes)>,
    /// OAuth refresh tokens: the client and scopes they renew for (each usable once: a
    /// refresh rotates).
    refresh_tokens: HashMap<String, (String, Scopes)>,
    /// The OAuth apps registered with this account's vendor, and their codes.
    oauth: OAuthServer,
    /// Recent single adds, by list and lower-cased address.
    adds: HashMap<(String, String), Vec<std::time::Instant>>,
}

impl State {
    fn new_id(&mut self, seed: &str) -> String {
        use std::hash::{Hash, Hasher};
        self.next_id += 1;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (seed, self.next_id).hash(&mut h);
        let a = h.finish();
        self.next_id.hash(&mut h);
        format!("{a:016x}{:016x}", h.finish())
    }
}

/// A running Campaign Monitor simulator.
#[derive(Clone)]
pub struct CampaignMonitorSim {
    state: Arc<Mutex<State>>,
    server: Arc<Server>,
}

type Answer = (StatusCode, Value);

fn error(status: StatusCode, code: i64, message: &str) -> Answer {
    (status, json!({"Code": code, "Message": message}))
}

impl CampaignMonitorSim {
    /// Starts on 127.0.0.1:`port` (0 picks a free port).
    pub async fn start(port: u16) -> anyhow::Result<CampaignMonitorSim> {
        Self::start_with(port, Behaviour::default()).await
    }

    /// Starts with the given choices for unconfirmed behaviour.
    pub async fn start_with(port: u16, behaviour: Behaviour) -> anyhow::Result<CampaignMonitorSim> {
        Self::start_on(Listen::plain(port), behaviour).await
    }

    /// Starts where `listen` says (HTTPS with [`Listen::tls`]) with the given behaviour.
    pub async fn start_on(
        listen: Listen,
        behaviour: Behaviour,
    ) -> anyhow::Result<CampaignMonitorSim> {
        let state = Arc::new(Mutex::new(State {
            behaviour,
            ..State::default()
        }));
        let handler_state = state.clone();
        let server = Server::start(listen, move |method, uri, headers, body| {
            let state = handler_state.clone();
            async move {
                let latency = state.lock().unwrap().behaviour.latency;
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                super::apart_from_the_network(move || handle(&state, method, uri, headers, body))
                    .await
            }
        })
        .await?;
        Ok(CampaignMonitorSim {
            state,
            server: Arc::new(server),
        })
    }

    /// Registers the platform's OAuth app with this vendor: (client id, client secret). The
    /// authorize page is [`CampaignMonitorSim::authorize_url`].
    pub fn register_oauth_app(&self, redirect_uri: &str) -> (String, String) {
        self.state.lock().unwrap().oauth.register(redirect_uri)
    }

    /// The authorize page, e.g. `http://127.0.0.1:41234/oauth`.
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth", self.server.origin())
    }

    /// The OAuth token endpoint, e.g. `http://127.0.0.1:41234/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.server.origin())
    }

    /// Issues OAuth tokens for a client, as the authorization-code exchange would: an access
    /// token valid for `expires_in` with every scope, and a refresh token. Returns (access,
    /// refresh).
    pub fn issue_oauth_tokens(
        &self,
        client_id: &str,
        expires_in: std::time::Duration,
    ) -> (String, String) {
        let mut s = self.state.lock().unwrap();
        issue_tokens(&mut s, client_id, expires_in, &SCOPES.join(","))
    }

    /// [`Self::issue_oauth_tokens`] granting only `scopes` (comma-separated).
    pub fn issue_scoped_tokens(
        &self,
        client_id: &str,
        expires_in: std::time::Duration,
        scopes: &str,
    ) -> (String, String) {
        let mut s = self.state.lock().unwrap();
        issue_tokens(&mut s, client_id, expires_in, scopes)
    }

    /// The API base URL, e.g. `http://127.0.0.1:41234/api/v3.3`.
    pub fn base_url(&self) -> String {
        format!("{}/api/v3.3", self.server.origin())
    }

    /// Adds a client reachable with `api_key`; returns its ClientID.
    pub fn add_client(&self, name: &str, api_key: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let id = s.new_id(name);
        s.clients.insert(
            id.clone(),
            Client {
                name: name.into(),
                api_key: api_key.into(),
                suppressed: Default::default(),
                consent: Default::default(),
            },
        );
        id
    }

    /// Gives a client a new API key; the old one stops working (as regenerating a key in the
    /// account settings does).
    pub fn rotate_key(&self, client_id: &str, api_key: &str) {
        let mut s = self.state.lock().unwrap();
        s.clients.get_mut(client_id).expect("known client").api_key = api_key.into();
    }

    /// Adds a list to a client; returns its ListID.
    pub fn add_list(&self, client_id: &str, title: &str) -> String {
        let mut s = self.state.lock().unwrap();
        assert!(
            s.clients.contains_key(client_id),
            "unknown client {client_id}"
        );
        let id = s.new_id(title);
        s.lists.insert(
            id.clone(),
            List {
                client_id: client_id.into(),
                title: title.into(),
                subscribers: BTreeMap::new(),
                custom_fields: vec![],
            },
        );
        id
    }

    /// Adds a custom field to a list; its key is the name without spaces (as in CM's fixtures).
    pub fn add_custom_field(&self, list_id: &str, name: &str, data_type: &str) {
        let mut s = self.state.lock().unwrap();
        let list = s.lists.get_mut(list_id).expect("known list");
        let key: String = name.chars().filter(|c| !c.is_whitespace()).collect();
        list.custom_fields
            .push((name.into(), key, data_type.into()));
    }

    /// Puts a subscriber on a list directly (as if added long ago), in any state.
    pub fn add_subscriber(&self, list_id: &str, email: &str, name: &str, state: SubscriberState) {
        let mut s = self.state.lock().unwrap();
        let list = s.lists.get_mut(list_id).expect("known list");
        list.subscribers.insert(
            email.to_ascii_lowercase(),
            Subscriber {
                email: email.into(),
                name: name.into(),
                state,
                custom_fields: BTreeMap::new(),
                imports: 0,
                joined: now_text(),
            },
        );
    }

    /// Sets a custom-field value of a subscriber directly.
    pub fn set_custom_field(&self, list_id: &str, email: &str, key: &str, value: &str) {
        let mut s = self.state.lock().unwrap();
        let list = s.lists.get_mut(list_id).expect("known list");
        list.subscribers
            .get_mut(&email.to_ascii_lowercase())
            .expect("known subscriber")
            .custom_fields
            .insert(key.into(), value.into());
    }

    /// Puts an address on a client's suppression list.
    pub fn suppress(&self, client_id: &str, email: &str) {
        let mut s = self.state.lock().unwrap();
        s.clients
            .get_mut(client_id)
            .expect("known client")
            .suppressed
            .insert(email.to_ascii_lowercase());
    }

    /// The ledger of a list: every subscriber, by lowercased email.
    pub fn subscribers(&self, list_id: &str) -> BTreeMap<String, Subscriber> {
        self.state.lock().unwrap().lists[list_id]
            .subscribers
            .clone()
    }

    /// The consent to track recorded for an address at a client.
    pub fn consent(&self, client_id: &str, email: &str) -> Option<String> {
        self.state.lock().unwrap().clients[client_id]
            .consent
            .get(&email.to_ascii_lowercase())
            .cloned()
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
}

fn handle(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A JSON body is read before the state is locked: requests parse in parallel, and only
    // the ledger's work is done one at a time.
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let mut s = state.lock().unwrap();
    // The browser's side of OAuth: the authorize page and its answer.
    match (method.as_str(), uri.path()) {
        ("GET", "/oauth") => {
            let clients: Vec<(usize, String)> = s
                .clients
                .values()
                .enumerate()
                .map(|(i, c)| (i, c.name.clone()))
                .collect();
            let query = uri.query().unwrap_or("");
            return s.oauth.authorize_page(
                "Campaign Monitor",
                "/oauth/approve",
                query,
                &clients,
                Some(&SCOPES),
            );
        }
        ("POST", "/oauth/approve") => return s.oauth.approve(&body),
        _ => {}
    }
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, body) = route(
        &mut s,
        &method,
        &uri,
        authorization.as_deref(),
        &body,
        parsed.as_ref(),
    );
    s.log.push(LoggedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization,
        status: status.as_u16(),
        at: std::time::Instant::now(),
    });
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// Campaign Monitor's OAuth scopes [S9].
pub const SCOPES: [&str; 8] = [
    "ViewReports",
    "CreateCampaigns",
    "SendCampaigns",
    "ManageLists",
    "ImportSubscribers",
    "ManageTemplates",
    "AdministerAccount",
    "ViewSubscribersInReports",
];

/// The scopes a token was granted (comma-separated as asked).
type Scopes = String;

/// The scope a request needs with an OAuth token: imports `ImportSubscribers`, every other
/// list and subscriber call `ManageLists` [S9] (which call needs which beyond the import and
/// list reads is UNCONFIRMED).
fn scope_needed(method: &str, parts: &[&str]) -> Option<&'static str> {
    match (method, parts) {
        ("POST", ["subscribers", _, "import"]) => Some("ImportSubscribers"),
        (_, ["lists", ..] | ["subscribers", ..]) => Some("ManageLists"),
        _ => None,
    }
}

/// Access tokens issued by a refresh live this long (the vendor's documented 14 days).
const TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1_209_600);

fn issue_tokens(
    s: &mut State,
    client_id: &str,
    expires_in: std::time::Duration,
    scopes: &str,
) -> (String, String) {
    let access = format!("tok_{}", s.new_id("access"));
    let refresh = format!("rt_{}", s.new_id("refresh"));
    s.access_tokens.insert(
        access.clone(),
        (
            client_id.to_string(),
            std::time::Instant::now() + expires_in,
            scopes.to_string(),
        ),
    );
    s.refresh_tokens
        .insert(refresh.clone(), (client_id.to_string(), scopes.to_string()));
    (access, refresh)
}

/// `POST /oauth/token` with `grant_type=refresh_token`: new tokens, the old refresh token spent.
fn token_endpoint(s: &mut State, body: &[u8]) -> Answer {
    let form: HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    let refused = |description: &str| {
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": description}),
        )
    };
    if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
        let (account, scopes) = match s.oauth.exchange(&form) {
            Ok(granted) => granted,
            Err(Refusal(error, description)) => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": error, "error_description": description}),
                );
            }
        };
        let Some(client) = s.clients.keys().nth(account).cloned() else {
            return refused("The account granted no longer exists");
        };
        let (access, refresh) = issue_tokens(s, &client, TOKEN_LIFETIME, &scopes);
        return (
            StatusCode::OK,
            json!({"access_token": access, "expires_in": TOKEN_LIFETIME.as_secs(), "refresh_token": refresh}),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return refused("Unsupported grant_type");
    }
    let Some((client, scopes)) = form
        .get("refresh_token")
        .and_then(|t| s.refresh_tokens.remove(t))
    else {
        return refused("Specified refresh_token was invalid or expired");
    };
    let (access, refresh) = issue_tokens(s, &client, TOKEN_LIFETIME, &scopes);
    (
        StatusCode::OK,
        json!({"access_token": access, "expires_in": TOKEN_LIFETIME.as_secs(), "refresh_token": refresh}),
    )
}

fn route(
    s: &mut State,
    method: &Method,
    uri: &Uri,
    authorization: Option<&str>,
    body: &[u8],
    parsed: Option<&Value>,
) -> Answer {
    if method == Method::POST && uri.path() == "/oauth/token" {
        return token_endpoint(s, body);
    }
    let Some(path) = uri.path().strip_prefix("/api/v3.3/") else {
        return error(StatusCode::NOT_FOUND, 404, "Not found");
    };
    let Some(path) = path.strip_suffix(".json") else {
        // The real API answers XML without the suffix; this simulator only speaks JSON.
        return error(
            StatusCode::NOT_ACCEPTABLE,
            406,
            "This simulator only serves JSON: add the .json suffix",
        );
    };
    let parts: Vec<&str> = path.split('/').collect();
    let needs = scope_needed(method.as_str(), &parts);
    let client_ids = match authenticate(s, authorization, needs) {
        Ok(ids) => ids,
        Err(answer) => return answer,
    };
    let list_of = |s: &State, id: &str| {
        s.lists
            .get(id)
            .filter(|l| client_ids.contains(&l.client_id))
            .is_some()
    };
    let unknown_list = |s: &State| error(s.behaviour.unknown_list_status, 101, "Invalid ListID");
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["clients"]) => {
            let clients: Vec<Value> = client_ids
                .iter()
                .map(|id| json!({"ClientID": id, "Name": s.clients[id].name}))
                .collect();
            (StatusCode::OK, Value::Array(clients))
        }
        ("GET", ["clients", client, "lists"]) => {
            if !client_ids.iter().any(|c| c == client) {
                return error(StatusCode::UNAUTHORIZED, 102, "Invalid ClientID");
            }
            let lists: Vec<Value> = s
                .lists
                .iter()
                .filter(|(_, l)| l.client_id == *client)
                .map(|(id, l)| json!({"ListID": id, "Name": l.title}))
                .collect();
            (StatusCode::OK, Value::Array(lists))
        }
        ("GET", ["lists", id]) if list_of(s, id) => {
            let list = &s.lists[*id];
            (
                StatusCode::OK,
                json!({"ListID": id, "Title": list.title, "UnsubscribePage": "", "UnsubscribeSetting": "AllClientLists", "ConfirmedOptIn": false, "ConfirmationSuccessPage": ""}),
            )
        }
        ("GET", ["lists", id, "customfields"]) if list_of(s, id) => {
            let fields: Vec<Value> = s.lists[*id]
                .custom_fields
                .iter()
                .map(|(name, key, data_type)| json!({"FieldName": name, "Key": format!("[{key}]"), "DataType": data_type, "FieldOptions": [], "VisibleInPreferenceCenter": true}))
                .collect();
            (StatusCode::OK, Value::Array(fields))
        }
        ("GET", ["subscribers", id]) if list_of(s, id) => {
            let (list, email) = (&s.lists[*id], email_query(uri));
            match list.subscribers.get(&email) {
                Some(sub) => {
                    let consent = s.clients[&list.client_id]
                        .consent
                        .get(&email)
                        .cloned()
                        .unwrap_or_default();
                    (
                        StatusCode::OK,
                        json!({"EmailAddress": sub.email, "Name": sub.name, "Date": sub.joined,
                        "ListJoinedDate": sub.joined, "State": sub.state.as_str(),
                        "CustomFields": sub.custom_fields.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
                        "ReadsEmailWith": "", "ConsentToTrack": consent}),
                    )
                }
                None => not_in_list(),
            }
        }
        ("POST", ["subscribers", id, "import"]) if list_of(s, id) => import(s, id, parsed),
        ("POST", ["subscribers", id]) if list_of(s, id) => add_one(s, id, parsed),
        ("POST", ["subscribers", id, "unsubscribe"]) if list_of(s, id) => {
            let email = prop(parsed.unwrap_or(&Value::Null), "EmailAddress")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            move_subscriber(s, id, &email, SubscriberState::Unsubscribed)
        }
        ("DELETE", ["subscribers", id]) if list_of(s, id) => {
            move_subscriber(s, id, &email_query(uri), SubscriberState::Deleted)
        }
        // Known routes with a list ID the caller does not own: Code 101.
        ("GET", ["lists", id] | ["lists", id, "customfields"] | ["subscribers", id])
        | ("POST", ["subscribers", id, "import" | "unsubscribe"] | ["subscribers", id])
        | ("DELETE", ["subscribers", id])
            if !list_of(s, id) =>
        {
            unknown_list(s)
        }
        _ => error(StatusCode::NOT_FOUND, 404, "Not found"),
    }
}

/// The clients the request's credential may act for, or the 401 answer. An OAuth token must
/// hold the scope the call `needs` (an API key may do anything its client may).
fn authenticate(
    s: &State,
    authorization: Option<&str>,
    needs: Option<&str>,
) -> Result<Vec<String>, Answer> {
    if let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        return match s.access_tokens.get(token) {
            Some((client, expires, scopes)) if *expires > std::time::Instant::now() => {
                match needs {
                    Some(scope) if !scopes.split(',').any(|s| s.trim() == scope) => {
                        // The status and code are UNCONFIRMED: the token was refused for this.
                        Err(error(
                            StatusCode::UNAUTHORIZED,
                            120,
                            &format!("Invalid OAuth Token: it was not granted {scope}"),
                        ))
                    }
                    _ => Ok(vec![client.clone()]),
                }
            }
            Some(_) => Err(error(StatusCode::UNAUTHORIZED, 121, "Expired OAuth Token")),
            None => Err(error(StatusCode::UNAUTHORIZED, 120, "Invalid OAuth Token")),
        };
    }
    let Some((key, _)) = authorization.and_then(basic_auth) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            50,
            "Must supply a valid HTTP Basic Authorization header",
        ));
    };
    let ids: Vec<String> = s
        .clients
        .iter()
        .filter(|(_, c)| c.api_key == key)
        .map(|(id, _)| id.clone())
        .collect();
    if ids.is_empty() {
        return Err(error(StatusCode::UNAUTHORIZED, 100, "Invalid API Key"));
    }
    Ok(ids)
}

/// A property of a JSON object, matched case-insensitively as Campaign Monitor does.
fn prop<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The `email` query parameter, decoded and lower-cased (lookups ignore case).
fn email_query(uri: &Uri) -> String {
    uri.query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("email="))
        .map(form_decode)
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Unsubscribes or deletes a subscriber of the list; a deleted or unknown one is "not in list".
fn move_subscriber(s: &mut State, list: &str, email: &str, to: SubscriberState) -> Answer {
    match s.lists.get_mut(list).unwrap().subscribers.get_mut(email) {
        Some(sub) if sub.state != SubscriberState::Deleted => {
            sub.state = to;
            (StatusCode::OK, Value::Null)
        }
        _ => not_in_list(),
    }
}

fn not_in_list() -> Answer {
    error(
        StatusCode::BAD_REQUEST,
        203,
        "Subscriber not in list or has already been removed.",
    )
}

/// The time as Campaign Monitor writes it (`2024-05-02 10:28:00`).
fn now_text() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `POST /subscribers/{list}.json`: one subscriber, through the same rules as an import; the
/// answer is the address as a JSON string.
fn add_one(s: &mut State, list_id: &str, parsed: Option<&Value>) -> Answer {
    let Some(row) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            400,
            "Failed to deserialize your request. Please check the documentation and try again.",
        );
    };
    let resubscribe = prop(row, "Resubscribe")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let email = prop(row, "EmailAddress")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (allowed, window) = s.behaviour.adds_per_subscriber;
    let now = std::time::Instant::now();
    let recent = s.adds.entry((list_id.to_string(), email)).or_default();
    recent.retain(|at| now.duration_since(*at) < window);
    if recent.len() as u64 >= u64::from(allowed) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            429,
            "Subscriber was added too many times too quickly, try again later.",
        );
    }
    recent.push(now);
    let request = json!({"Subscribers": [row], "Resubscribe": resubscribe});
    let (status, answer) = import(s, list_id, Some(&request));
    if !status.is_success() {
        let failure = answer["ResultData"]["FailureDetails"][0].clone();
        return match failure.get("Code").and_then(Value::as_i64) {
            Some(code) => error(
                StatusCode::BAD_REQUEST,
                code,
                failure["Message"].as_str().unwrap_or(""),
            ),
            None => (status, answer),
        };
    }
    (
        StatusCode::CREATED,
        row.get("EmailAddress").cloned().unwrap_or(Value::Null),
    )
}

fn import(s: &mut State, list_id: &str, parsed: Option<&Value>) -> Answer {
    let Some(request) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            400,
            "Failed to deserialize your request. Please check the documentation and try again.",
        );
    };
    let rows = match prop(request, "Subscribers").and_then(Value::as_array) {
        Some(rows) if !rows.is_empty() => rows,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                212,
                "No subscribers were provided in this batch",
            );
        }
    };
    if rows.len() > MAX_IMPORT {
        return error(
            StatusCode::BAD_REQUEST,
            209,
            "Too many subscribers in this batch. You can only add 1000 subscribers in one call",
        );
    }
    let resubscribe = prop(request, "Resubscribe")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Consent is checked for every row before anything is stored: a bad value fails the call.
    let mut consents = Vec::with_capacity(rows.len());
    for row in rows {
        match prop(row, "ConsentToTrack").and_then(Value::as_str) {
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    214,
                    "Please provide a consent to track value",
                );
            }
            Some(c) if ["yes", "no", "unchanged"].contains(&c.to_ascii_lowercase().as_str()) => {
                consents.push(c.to_ascii_lowercase())
            }
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    215,
                    "Please provide a valid consent to track value",
                );
            }
        }
    }

    let report_suppressed = s.behaviour.report_suppressed_rows;
    let list_fields = s.lists[list_id].custom_fields.clone();
    let success_status = s.behaviour.import_success_status;
    let client_id = s.lists[list_id].client_id.clone();
    // One time for the call: every subscriber it adds joined then.
    let joined = now_text();
    let mut seen = std::collections::HashSet::new();
    let (mut new, mut existing) = (0u32, 0u32);
    let mut duplicates: Vec<String> = vec![];
    let mut failures: Vec<Value> = vec![];
    for (row, consent) in rows.iter().zip(consents) {
        let email = prop(row, "EmailAddress")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        let key = email.to_ascii_lowercase();
        if !seen.insert(key.clone()) {
            if !duplicates.iter().any(|d| d.eq_ignore_ascii_case(&email)) {
                duplicates.push(email);
            }
            continue;
        }
        if !is_valid_email(&email) {
            failures.push(
                json!({"EmailAddress": email, "Code": 1, "Message": "Invalid Email Address"}),
            );
            continue;
        }
        let client = s.clients.get_mut(&client_id).unwrap();
        let list = s.lists.get_mut(list_id).unwrap();
        let suppressed = client.suppressed.contains(&key);
        let blocked = match (suppressed, list.subscribers.get(&key).map(|s| s.state)) {
            (true, _) => Some((204, "Email address is in the suppression list")),
            (_, Some(SubscriberState::Deleted)) => Some((205, "Subscriber has been deleted")),
            (_, Some(SubscriberState::Unsubscribed)) => Some((206, "Subscriber is unsubscribed")),
            (_, Some(SubscriberState::Bounced)) => Some((207, "Subscriber has bounced")),
            (_, Some(SubscriberState::Unconfirmed)) => Some((208, "Subscriber is unconfirmed")),
            _ => None,
        };
        if let Some((code, message)) = blocked
            && !resubscribe
        {
            if let Some(sub) = list.subscribers.get_mut(&key) {
                sub.imports += 1;
            }
            if report_suppressed {
                failures.push(json!({"EmailAddress": email, "Code": code, "Message": message}));
            } else {
                existing += 1;
            }
            continue;
        }
        if consent != "unchanged" || !client.consent.contains_key(&key) {
            let value = match consent.as_str() {
                "yes" => "Yes",
                "no" => "No",
                _ => "",
            };
            client.consent.insert(key.clone(), value.to_string());
        }
        let name = prop(row, "Name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let sub = match list.subscribers.get_mut(&key) {
            Some(sub) => {
                existing += 1;
                sub
            }
            None => {
                new += 1;
                list.subscribers.entry(key.clone()).or_insert(Subscriber {
                    email: email.clone(),
                    name: String::new(),
                    state: SubscriberState::Active,
                    custom_fields: BTreeMap::new(),
                    imports: 0,
                    joined: joined.clone(),
                })
            }
        };
        sub.imports += 1;
        sub.state = SubscriberState::Active;
        if let Some(name) = name {
            sub.name = name;
        }
        for field in prop(row, "CustomFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(k) = prop(field, "Key").and_then(Value::as_str) else {
                continue;
            };
            // Bracketed or bare keys, matched without regard to case; unknown keys are ignored.
            let bare = k.trim_start_matches('[').trim_end_matches(']');
            let Some((_, key, _)) = list_fields
                .iter()
                .find(|(_, key, _)| key.eq_ignore_ascii_case(bare))
            else {
                continue;
            };
            if prop(field, "Clear").and_then(Value::as_bool) == Some(true) {
                sub.custom_fields.remove(key);
            } else if let Some(v) = prop(field, "Value").and_then(Value::as_str) {
                sub.custom_fields
                    .insert(key.clone(), v.chars().take(MAX_FIELD_VALUE).collect());
            }
        }
    }
    let result = json!({
        "TotalUniqueEmailsSubmitted": seen.len(),
        "TotalExistingSubscribers": existing,
        "TotalNewSubscribers": new,
        "DuplicateEmailsInSubmission": duplicates,
        "FailureDetails": failures,
    });
    if failures.is_empty() {
        (success_status, result)
    } else {
        (
            StatusCode::BAD_REQUEST,
            json!({"Code": 210, "Message": "Subscriber Import had some failures", "ResultData": result}),
        )
    }
}

/// A Campaign Monitor account with one list, as [`crate::Simulator`] drives it.
pub struct ForCheck {
    sim: CampaignMonitorSim,
    api_key: String,
    list_id: String,
}

impl ForCheck {
    /// Starts the simulator with a client and an empty list.
    pub async fn start(listen: Listen) -> anyhow::Result<ForCheck> {
        let sim = CampaignMonitorSim::start_on(listen, Behaviour::default()).await?;
        let api_key = "check-api-key".to_string();
        let client = sim.add_client("Check", &api_key);
        let list_id = sim.add_list(&client, "Check list");
        Ok(ForCheck {
            sim,
            api_key,
            list_id,
        })
    }
}

impl crate::Simulator for ForCheck {
    fn connector(&self) -> &'static str {
        "campaign-monitor"
    }
    fn base_url(&self) -> String {
        self.sim.base_url()
    }
    fn credential(&self) -> String {
        self.api_key.clone()
    }
    fn export_settings(&self) -> Vec<(String, String)> {
        vec![("list-id".into(), self.list_id.clone())]
    }
    fn unknown_list_settings(&self) -> Vec<(String, String)> {
        vec![("list-id".into(), "0".repeat(32))]
    }
    fn keep_out(&self, email: &str) {
        let name = "Kept Out";
        self.sim
            .add_subscriber(&self.list_id, email, name, SubscriberState::Unsubscribed);
    }
    fn held(&self, email: &str) -> Option<crate::Held> {
        let subscribers = self.sim.subscribers(&self.list_id);
        let s = subscribers.get(&email.to_lowercase())?;
        Some(match s.state {
            SubscriberState::Active | SubscriberState::Unconfirmed => crate::Held::Mailable,
            other => crate::Held::KeptOut(other.as_str().into()),
        })
    }
    fn records(&self, email: &str) -> usize {
        let wanted = email.to_lowercase();
        self.sim
            .subscribers(&self.list_id)
            .values()
            .filter(|s| s.email.to_lowercase() == wanted)
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
            "which calls need which OAuth scope beyond the import (ImportSubscribers) and list reads (ManageLists), and that a call outside them is a 401 with Code 120",
            "one subscriber added more than 5 times a minute is throttled (CM publishes no figure)",
            "the HTTP status of the token endpoint's errors (400 here)",
        ]
    }
}
