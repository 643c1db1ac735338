//! The web console: plain server-rendered pages (maud escapes every value), forms that work
//! without script and carry the session's CSRF token, and one small script for a run's live
//! progress. Every page is a thin view over the same library calls as the API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use connector_host::failure::Missing;
use connector_host::{Access, OAuthConnection, Operation, Secret};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::api::{ConnectorView, RunView};
use crate::auth::{Caller, ClientIp, ConsoleCaller, SESSION_COOKIE, Via, constant_time_eq, cookie};
use crate::problem::Problem;
use crate::{PendingOAuth, Server};

type Fields = HashMap<String, String>;

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/exports") }))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/connections", get(connections).post(add_connection))
        .route("/connections/authenticate", post(start_oauth))
        .route("/oauth/callback", get(oauth_callback))
        .route("/connectors", get(connectors))
        .route("/connectors/{id}/approve", post(approve))
        .route("/exports", get(exports).post(add_export))
        .route("/exports/{name}", get(export))
        .route("/exports/{name}/run", post(run_now))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/rejections.csv", get(rejections))
}

/// A page: the navigation, the title, the content.
fn page(caller: Option<&Caller>, title: &str, content: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · connector host" }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header {
                        nav aria-label="Main" {
                            strong { "connector host" }
                            @if let Some(caller) = caller {
                                a href="/exports" { "Exports" }
                                a href="/runs" { "Runs" }
                                a href="/connections" { "Connections" }
                                a href="/connectors" { "Connectors" }
                                span.who { (caller.actor.name) " (" (caller.actor.role.name()) ")" }
                                form method="post" action="/sign-out" class="inline" {
                                    (csrf(caller))
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                    main { h1 { (title) } (content) }
                }
            }
        }
        .into_string(),
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b}\
header{background:#14213d;color:#fff;padding:.6rem 1rem}nav{display:flex;gap:1rem;align-items:center}\
nav a{color:#fff}.who{margin-left:auto}main{padding:1rem 2rem;max-width:70rem}\
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}\
form.card{border:1px solid #ccc;padding:1rem;margin:1rem 0;max-width:40rem}label{display:block;margin:.5rem 0 .2rem}\
input[type=text],input[type=password],select,textarea{width:100%;padding:.3rem;box-sizing:border-box}\
.inline{display:inline}.error{background:#fde2e1;border:1px solid #c00;padding:.6rem}\
.ok{background:#e2f5e1;border:1px solid #0a0;padding:.6rem}progress{width:30rem}\
:focus{outline:3px solid #fca311}";

fn csrf(caller: &Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(caller.csrf()); }
}

/// A refusal shown as a page that says what went wrong, with the status it deserves.
fn refused(caller: Option<&Caller>, problem: Problem) -> Response {
    let status = problem.status();
    let retry = problem.retry_after;
    // What the form lacked, in the console's own words.
    let detail = match problem.missing.as_deref() {
        Some(missing @ Missing::PrivacyNotice { .. }) => {
            format!("{missing}: tick the box that accepts it.")
        }
        Some(missing @ Missing::Approval { .. }) => {
            format!("{missing} on the Connectors page.")
        }
        Some(missing) => format!("{missing}; ask the server's operator."),
        None => problem.detail.clone(),
    };
    let body = page(
        caller,
        problem.title.as_str(),
        html! {
            p.error role="alert" { (detail) }
            p { a href="javascript:history.back()" { "Back" } }
        },
    );
    let mut response = (status, body).into_response();
    if let Some(seconds) = retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Runs `work` for a console form: its CSRF token checked first; an error becomes a page.
async fn form_action<F>(caller: &Caller, form: &Fields, work: F) -> Response
where
    F: Future<Output = Result<Response, Problem>>,
{
    if let Err(p) = caller.check_form(form.get("csrf").map(String::as_str).unwrap_or("")) {
        return refused(Some(caller), p);
    }
    match work.await {
        Ok(r) => r,
        Err(p) => refused(Some(caller), p),
    }
}

fn field<'a>(form: &'a Fields, name: &str) -> &'a str {
    form.get(name).map(|s| s.trim()).unwrap_or("")
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

// ---- signing in ----

/// The cookie that ties a sign-in form to the browser that opened it: a form posted from
/// another site cannot carry it, so nobody can sign a visitor in as someone else (login CSRF).
const SIGN_IN_COOKIE: &str = "connector_host_sign_in";

/// `; Secure` when the console is served over https.
fn secure(server: &Server) -> &'static str {
    if server.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

async fn sign_in_page(State(server): State<Arc<Server>>) -> Response {
    let token = connector_host::workspace::random_token();
    let mut response = page(
        None,
        "Sign in",
        html! {
            form.card method="post" action="/sign-in" {
                input type="hidden" name="sign_in" value=(token);
                label for="name" { "User name" }
                input #name type="text" name="name" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                p { button type="submit" { "Sign in" } }
            }
        },
    )
    .into_response();
    let cookie = format!(
        "{SIGN_IN_COOKIE}={token}; Path=/sign-in; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        secure(&server)
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a valid header"),
    );
    response
}

async fn sign_in(
    State(server): State<Arc<Server>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<Fields>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return refused(
            None,
            Problem::new(StatusCode::BAD_REQUEST, "fill in the form"),
        );
    };
    if let Err(p) = server.throttle.before_password(ip, field(&form, "name")) {
        return refused(None, p);
    }
    let opened_here = cookie(&headers, SIGN_IN_COOKIE)
        .is_some_and(|token| constant_time_eq(&token, field(&form, "sign_in")));
    if !opened_here {
        return refused(
            None,
            Problem::new(
                StatusCode::BAD_REQUEST,
                "this sign-in form was not opened in this browser, or it expired: open the sign-in page again",
            ),
        );
    }
    let password = Secret::new(field(&form, "password").to_string());
    match server
        .workspace
        .sign_in(field(&form, "name"), &password)
        .await
    {
        Ok(Some((id, _))) => {
            let secure = secure(&server);
            // Lax, not Strict: the vendor's redirect back to /oauth/callback is a cross-site
            // navigation and must carry the session. Changes are guarded by CSRF tokens.
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
                id.expose(),
                connector_host::workspace::SESSION_HOURS * 3600
            );
            let mut response = Redirect::to("/exports").into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Ok(None) => refused(
            None,
            server.throttle.failed(
                ip,
                Some(field(&form, "name")),
                Problem::new(StatusCode::UNAUTHORIZED, "wrong user name or password"),
            ),
        ),
        Err(e) => refused(None, e.into()),
    }
}

async fn sign_out(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Form(form): Form<Fields>,
) -> Response {
    form_action(&caller, &form, async {
        if let Via::Session { id, .. } = &caller.via {
            server.workspace.sign_out(id).await?;
        }
        let mut response = Redirect::to("/sign-in").into_response();
        response.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&format!(
                "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
            ))
            .expect("a valid header"),
        );
        Ok(response)
    })
    .await
}

// ---- connections ----

async fn connections(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
) -> Response {
    let work = async {
        let visible = server.workspace.connections(&caller.actor).await?;
        let apps = server.workspace.oauth_apps().await?;
        let admin = caller.actor.may(Operation::ManageConnections);
        let connectors = server.workspace.connectors().await?;
        Ok::<_, Problem>(page(
            Some(&caller),
            "Connections",
            html! {
                table {
                    thead { tr { th { "Name" } th { "Vendor" } th { "Credential" } th { "Who may use it" } th { "Privacy notice accepted" } } }
                    tbody {
                        @for c in &visible {
                            tr {
                                td { (c.name) }
                                td { (display_name(&connectors, &c.connector)) }
                                td { (credential_words(c.credential_kind)) " · " code { (c.fingerprint) } }
                                td { (access_words(c.access)) }
                                td { (c.privacy_accepted_by) " at " (c.privacy_accepted_at) }
                            }
                        }
                        @if visible.is_empty() { (none_yet(5, "No connection yet.")) }
                    }
                }
                @if admin {
                    h2 { "Add connection" }
                    @for app in &apps {
                        form.card method="post" action="/connections/authenticate" {
                            (csrf(&caller))
                            input type="hidden" name="connector" value=(app.connector);
                            label for={"name-" (app.connector)} { "Connection name" }
                            input id={"name-" (app.connector)} type="text" name="name" required;
                            (access_choice(&app.connector))
                            (privacy(&app.connector))
                            p { button type="submit" { "Authenticate with " (display_name(&connectors, &app.connector)) } }
                        }
                    }
                    form.card method="post" action="/connections" {
                        (csrf(&caller))
                        p { "Or with an API key:" }
                        label for="key-name" { "Connection name" }
                        input #key-name type="text" name="name" required;
                        label for="key-connector" { "Vendor" }
                        select #key-connector name="connector" {
                            @for (p, _) in &connectors { option value=(p.info.id) { (p.info.display_name) } }
                        }
                        label for="key-secret" { "API key" }
                        input #key-secret type="password" name="api_key" autocomplete="off" required;
                        label for="key-base" { "API base URL (only for a test server)" }
                        input #key-base type="text" name="base_url";
                        (access_choice("key"))
                        (privacy("key"))
                        p { button type="submit" { "Add connection" } }
                    }
                }
            },
        )
        .into_response())
    };
    work.await.unwrap_or_else(|p| refused(Some(&caller), p))
}

fn display_name(
    connectors: &[(Arc<connector_host::Plugin>, connector_host::ApprovalStatus)],
    id: &str,
) -> String {
    connectors
        .iter()
        .find(|(p, _)| p.info.id == id)
        .map_or(id.to_string(), |(p, _)| p.info.display_name.clone())
}

fn credential_words(kind: connector_host::CredentialKind) -> &'static str {
    match kind {
        connector_host::CredentialKind::ApiKey => "API key",
        connector_host::CredentialKind::OAuth => "OAuth",
    }
}

/// The one row of an empty table, saying so.
fn none_yet(columns: u32, words: &str) -> Markup {
    html! { tr { td colspan=(columns) { em { (words) } } } }
}

fn access_words(access: Access) -> &'static str {
    match access {
        Access::Administrators => "administrators",
        Access::Contributors => "administrators and contributors",
    }
}

fn access_choice(id: &str) -> Markup {
    html! {
        fieldset {
            legend { "Who may use it" }
            label { input type="radio" name="access" value="administrators" checked; " Administrators only" }
            label { input type="radio" name="access" value="contributors" id={"contributors-" (id)}; " Contributors too" }
        }
    }
}

fn privacy(id: &str) -> Markup {
    html! {
        label {
            input type="checkbox" name="privacy" value="accepted" required id={"privacy-" (id)};
            " I accept the data-privacy notice: exported profiles leave this platform's compliance boundary for the vendor's."
        }
    }
}

fn access_of(form: &Fields) -> Access {
    match field(form, "access") {
        "contributors" => Access::Contributors,
        _ => Access::Administrators,
    }
}

async fn add_connection(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Form(form): Form<Fields>,
) -> Response {
    form_action(&caller, &form, async {
        let base_url = Some(field(&form, "base_url").to_string()).filter(|s| !s.is_empty());
        server
            .workspace
            .add_connection(
                &caller.actor,
                connector_host::ConnectionRequest {
                    name: field(&form, "name").into(),
                    connector: field(&form, "connector").into(),
                    base_url,
                    data_centre: None,
                    credential: connector_host::Credential::ApiKey(Secret::new(
                        field(&form, "api_key").to_string(),
                    )),
                    token_expires_in: None,
                    access: access_of(&form),
                    accept_privacy_notice: field(&form, "privacy") == "accepted",
                },
            )
            .await?;
        Ok(Redirect::to("/connections").into_response())
    })
    .await
}

async fn start_oauth(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Form(form): Form<Fields>,
) -> Response {
    form_action(&caller, &form, async {
        let connection = OAuthConnection {
            name: field(&form, "name").into(),
            connector: field(&form, "connector").into(),
            access: access_of(&form),
            accept_privacy_notice: field(&form, "privacy") == "accepted",
        };
        let Via::Session { id: session, .. } = &caller.via else {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "authenticating with a vendor is done in the console, signed in",
            ));
        };
        let authorization = server
            .workspace
            .start_oauth(&caller.actor, &connection, &server.redirect_uri())
            .await?;
        server.keep_pending(
            authorization.state,
            PendingOAuth {
                session: crate::session_key(session),
                connection,
                verifier: authorization.verifier,
                started: std::time::Instant::now(),
            },
        );
        Ok(Redirect::to(&authorization.url).into_response())
    })
    .await
}

async fn oauth_callback(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Query(query): Query<Fields>,
) -> Response {
    let work = async {
        let state = field(&query, "state");
        let session = match &caller.via {
            Via::Session { id, .. } => id.as_str(),
            Via::Token => "",
        };
        let pending = server
            .take_pending(state, session)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "this sign-in with the vendor is unknown, expired or someone else's (its state does not match); start again from Connections",
                )
            })?;
        if let Some(error) = query.get("error") {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the vendor did not authorise connection `{}`: {error} {}",
                    pending.connection.name,
                    field(&query, "error_description")
                ),
            ));
        }
        let code = field(&query, "code");
        if code.is_empty() {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "the vendor sent no authorization code",
            ));
        }
        let (record, _) = server
            .workspace
            .finish_oauth(
                &caller.actor,
                pending.connection,
                code,
                &server.redirect_uri(),
                pending.verifier.as_ref(),
            )
            .await?;
        let vendor = display_name(&server.workspace.connectors().await?, &record.connector);
        Ok(page(
            Some(&caller),
            "Connection added",
            html! {
                p.ok role="status" { "Connection " strong { (record.name) } " to " (vendor) " is saved; the vendor accepted it." }
                p { a href="/connections" { "Connections" } " · " a href="/exports" { "Add an export" } }
            },
        )
        .into_response())
    };
    work.await.unwrap_or_else(|p| refused(Some(&caller), p))
}

// ---- connectors ----

async fn connectors(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
) -> Response {
    let work = async {
        let list = server.workspace.connectors().await?;
        let admin = caller.actor.may(Operation::ApproveConnectors);
        Ok::<_, Problem>(page(
            Some(&caller),
            "Connectors",
            html! {
                table {
                    thead { tr { th { "Connector" } th { "Version" } th { "Hosts" } th { "Credential" } th { "Limits" } th { "SHA-256" } th { "Approval" } } }
                    tbody {
                        @for (plugin, status) in &list {
                            @let view = ConnectorView::of(plugin, status);
                            tr {
                                td { (view.display_name) " (" (view.id) ")" }
                                td { (view.version) }
                                td { (view.hosts.join(", ")) }
                                td { "sent as " (view.credential) }
                                td { (view.limits.join("; ")) }
                                td { code.digest { (view.sha256) } }
                                td {
                                    (view.approval)
                                    @if !view.changes.is_empty() { ": " (view.changes.join("; ")) }
                                    @if admin && view.approval != "approved" {
                                        form method="post" action={"/connectors/" (view.id) "/approve"} class="inline" {
                                            (csrf(&caller))
                                            // The file shown on this page, and no other.
                                            input type="hidden" name="digest" value=(view.sha256);
                                            " " button type="submit" { "Approve" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        )
        .into_response())
    };
    work.await.unwrap_or_else(|p| refused(Some(&caller), p))
}

async fn approve(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    form_action(&caller, &form, async {
        let digest = Some(field(&form, "digest")).filter(|d| !d.is_empty());
        server
            .workspace
            .approve_connector(&caller.actor, &id, digest)
            .await?;
        Ok(Redirect::to("/connectors").into_response())
    })
    .await
}

// ---- exports ----

async fn exports(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
) -> Response {
    let work = async {
        let list = server.workspace.exports(&caller.actor).await?;
        let connections = server.workspace.connections(&caller.actor).await?;
        let connectors = server.workspace.connectors().await?;
        Ok::<_, Problem>(page(
            Some(&caller),
            "Exports",
            html! {
                table {
                    thead { tr { th { "Export" } th { "Connection" } th { "Segments" } th { "Schedule" } } }
                    tbody {
                        @for e in &list {
                            tr {
                                td { a href={"/exports/" (e.name)} { (e.name) } }
                                td { (e.connection) " (" (e.connector) ")" }
                                td { (e.segments.join(", ")) }
                                td { (e.schedule.as_deref().unwrap_or("on demand")) }
                            }
                        }
                        @if list.is_empty() { (none_yet(4, "No export yet.")) }
                    }
                }
                h2 { "Add destination" }
                @if connections.is_empty() {
                    p { "No connection is open to you yet." }
                } @else {
                    form.card method="post" action="/exports" {
                        (csrf(&caller))
                        label for="export-name" { "Export name" }
                        input #export-name type="text" name="name" required;
                        label for="export-connection" { "Connection" }
                        select #export-connection name="connection" {
                            @for c in &connections { option value=(c.name) { (c.name) " (" (c.connector) ")" } }
                        }
                        label for="export-settings" { "Settings, one KEY=VALUE a line" }
                        textarea #export-settings name="settings" rows="3" {}
                        p.hint {
                            @for (p, _) in &connectors {
                                (p.info.display_name) ": "
                                (p.info.config_fields.iter().map(|f| format!("{}{}", f.key, if f.required { " (required)" } else { "" })).collect::<Vec<_>>().join(", "))
                                br;
                            }
                        }
                        label for="export-mapping" { "Data matching, one FIELD=COLUMN a line (email is required)" }
                        textarea #export-mapping name="mapping" rows="3" { "email=email\nfirst-name=first_name\nlast-name=last_name" }
                        label for="export-segments" { "Segments, comma-separated" }
                        input #export-segments type="text" name="segments" required;
                        label for="export-schedule" { "Schedule (cron, UTC; empty: on demand)" }
                        input #export-schedule type="text" name="schedule";
                        p { button type="submit" { "Save export" } }
                    }
                }
            },
        )
        .into_response())
    };
    work.await.unwrap_or_else(|p| refused(Some(&caller), p))
}

async fn add_export(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Form(form): Form<Fields>,
) -> Response {
    form_action(&caller, &form, async {
        let settings = lines(field(&form, "settings"))
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the setting `{l}` must look like KEY=VALUE"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let name = field(&form, "name").to_string();
        let schedule = Some(field(&form, "schedule").to_string()).filter(|s| !s.is_empty());
        server
            .workspace
            .add_export(
                &caller.actor,
                connector_host::ExportRequest {
                    name: name.clone(),
                    connection: field(&form, "connection").into(),
                    settings,
                    mapping: connector_host::FieldMapping::parse(&lines(field(&form, "mapping")))?,
                    segments: field(&form, "segments")
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                    schedule,
                    leave_action: None,
                    confirm_irreversible: false,
                },
            )
            .await?;
        Ok(Redirect::to(&format!("/exports/{}", path_segment(&name))).into_response())
    })
    .await
}

/// A name as one URL path segment.
fn path_segment(name: &str) -> String {
    connector_host::oauth::form_encode(name)
}

async fn export(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Path(name): Path<String>,
) -> Response {
    let work = async {
        let export = server.workspace.export(&caller.actor, &name).await?;
        let runs = server
            .workspace
            .runs(&caller.actor, Some(&name), 20)
            .await?;
        Ok(page(
            Some(&caller),
            &format!("Export {name}"),
            html! {
                dl {
                    dt { "Connection" } dd { (export.connection) " (" (export.connector) ")" }
                    dt { "Settings" } dd { @for (k, v) in &export.settings { (k) " = " (v) br; } }
                    dt { "Data matching" } dd { (export.mapping) }
                    dt { "Segments" } dd { (export.segments.join(", ")) }
                    dt { "Schedule" } dd { (export.schedule.as_deref().unwrap_or("on demand")) }
                    dt { "Leavers" } dd { (export.leave_action.as_deref().unwrap_or("counted only")) }
                }
                form method="post" action={"/exports/" (path_segment(&name)) "/run"} {
                    (csrf(&caller))
                    button type="submit" { "Run now" }
                }
                h2 { "Runs" }
                (runs_table(&runs.into_iter().map(RunView::from).collect::<Vec<_>>()))
            },
        )
        .into_response())
    };
    work.await.unwrap_or_else(|p| refused(Some(&caller), p))
}

async fn run_now(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Path(name): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    form_action(&caller, &form, async {
        let run = server
            .queue_run(&caller.actor, &name, crate::api::RunAsk::default())
            .await?;
        Ok(Redirect::to(&format!("/runs/{run}")).into_response())
    })
    .await
}

// ---- runs ----

fn runs_table(runs: &[RunView]) -> Markup {
    html! {
        table {
            thead { tr { th { "Run" } th { "Export" } th { "Status" } th { "Started" } th { "By" } th { "Profiles" } th { "Sent" } } }
            tbody {
                @for r in runs {
                    tr {
                        td { a href={"/runs/" (r.id)} { "#" (r.id) } }
                        td { (r.export) }
                        td { (r.status_text) }
                        td { (r.started_at) }
                        td { (r.started_by) }
                        td { (count(r, "profiles")) }
                        td { (count(r, "created") + count(r, "updated")) }
                    }
                }
                @if runs.is_empty() { (none_yet(7, "No run yet.")) }
            }
        }
    }
}

fn count(r: &RunView, key: &str) -> u64 {
    r.counts.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
}

async fn runs(State(server): State<Arc<Server>>, ConsoleCaller(caller): ConsoleCaller) -> Response {
    let work = async {
        let list: Vec<RunView> = server
            .workspace
            .runs(&caller.actor, None, 100)
            .await?
            .into_iter()
            .map(Into::into)
            .collect();
        Ok::<_, Problem>(page(Some(&caller), "Runs", runs_table(&list)).into_response())
    };
    work.await.unwrap_or_else(|p| refused(Some(&caller), p))
}

async fn run(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Path(id): Path<i64>,
) -> Response {
    let work = async {
        let run = RunView::from(server.workspace.run(&caller.actor, id).await?);
        let going = matches!(run.status.as_str(), "queued" | "running" | "waiting");
        Ok::<_, Problem>(page(
            Some(&caller),
            &format!("Run #{id} of {}", run.export),
            html! {
                p #status role="status" aria-live="polite" { "Status: " strong #state { (run.status_text) } }
                @if going {
                    p { progress #progress max="1" value="0" aria-label="Profiles handled" {} " " span #done { "waiting for a worker" } }
                    p #eta { @if let Some(end) = &run.expected_end { "Expected to end at " (end) } }
                    script { (PreEscaped(format!("{LIVE_SCRIPT}follow({id});"))) }
                }
                @if let Some(error) = &run.error { p.error role="alert" { (error) } }
                @if going {
                    p { "Started " (run.started_at) " by " (run.started_by) " (" (run.trigger) "). Its counts and undelivered contacts appear here when it ends." }
                } @else {
                    h2 { "Counts" }
                    table #counts {
                        tbody {
                            @for (k, v) in &run.counts {
                                @if v.as_u64().unwrap_or(0) > 0 || k == "profiles" {
                                    tr { th { (k.replace('_', " ")) } td { (v) } }
                                }
                            }
                        }
                    }
                    p {
                        a href={"/runs/" (id) "/rejections.csv"} download { "Download undelivered contacts (CSV)" }
                    }
                    p { "Started " (run.started_at) " by " (run.started_by) " (" (run.trigger) "); "
                        (run.requests) " requests, " (run.retries) " retries, " (format!("{:.1}", run.seconds)) " s." }
                }
            },
        )
        .into_response())
    };
    work.await.unwrap_or_else(|p| refused(Some(&caller), p))
}

/// Follows a run's server-sent events and reloads the page when it ends.
const LIVE_SCRIPT: &str = "function left(s){s=Math.round(s);if(s<60)return s+' s';if(s<3600)return Math.floor(s/60)+' min '+(s%60)+' s';\
if(s<86400)return Math.floor(s/3600)+' h '+Math.floor(s%3600/60)+' min';return Math.floor(s/86400)+' d '+Math.floor(s%86400/3600)+' h';}\
function follow(id){const s=new EventSource('/api/v1/runs/'+id+'/events');\
s.addEventListener('progress',e=>{const d=JSON.parse(e.data);document.getElementById('state').textContent=d.status;\
const p=document.getElementById('progress');const t=document.getElementById('done');\
const w=document.getElementById('eta');\
if(d.seconds_left!=null){w.textContent='About '+left(d.seconds_left)+' left';}else if(d.expected_end){w.textContent='Expected to end at '+d.expected_end;}\
if(d.leavers!=null){p.max=d.leavers||1;p.value=d.leavers_done;t.textContent=d.leavers_done+' of '+d.leavers+' leavers settled';return;}\
if(d.total){p.max=d.total;p.value=d.done;}\
t.textContent=d.done+(d.total?' of '+d.total:'')+' profiles';});\
s.addEventListener('end',()=>{s.close();location.reload();});}";

async fn rejections(
    State(server): State<Arc<Server>>,
    ConsoleCaller(caller): ConsoleCaller,
    Path(id): Path<i64>,
) -> Response {
    let work = async { crate::api::rejections_csv(&server, &caller.actor, id).await };
    work.await.unwrap_or_else(|p| refused(Some(&caller), p))
}
