//! The connector host over the network: a JSON API (`/api/v1`, described by the OpenAPI 3.1
//! document at `/openapi.json`, errors as RFC 9457 problem details), a server-rendered web
//! console (`/`), sign-in with roles (API tokens for programs, session cookies with CSRF tokens
//! for people), "Authenticate with <vendor>" (OAuth 2 authorization code), and operations
//! endpoints (`/healthz`, `/readyz`, `/metrics`).
//!
//! Everything is a thin layer over the library's [`Workspace`]: the same checks, the same
//! roles, the same records as the CLI. Runs asked for here are queued for the workers; the
//! worker in this process ([`Server::serve_options`]) reports their progress back live.

mod api;
pub mod auth;
mod console;
pub mod live;
pub mod problem;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use connector_host::workspace::{RunRecord, RunState, Trigger};
use connector_host::{Actor, OAuthConnection, RunRequest, Secret, ServeOptions, Workspace};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::live::Live;
use crate::problem::Problem;

/// The server: the workspace, the runs under way here, sign-in limits and OAuth sign-ins
/// waiting for the vendor to send the browser back.
pub struct Server {
    workspace: Arc<Workspace>,
    /// The URL people reach this server at (for OAuth redirect URIs).
    public_url: String,
    live: Arc<Live>,
    throttle: auth::Throttle,
    /// Proxies whose `X-Forwarded-For` names the client (for counting failed sign-ins).
    trusted_proxies: Vec<ipnet::IpNet>,
    pending: Mutex<HashMap<String, PendingOAuth>>,
    wake: Arc<tokio::sync::Notify>,
}

/// An "Authenticate with <vendor>" under way, by its `state`, bound to the console session
/// that started it.
struct PendingOAuth {
    /// SHA-256 of the session id (the session itself is not kept in memory).
    session: String,
    connection: OAuthConnection,
    verifier: Option<Secret>,
    started: Instant,
}

/// How long a person may take at the vendor's authorize page.
const OAUTH_PATIENCE: Duration = Duration::from_secs(15 * 60);

impl Server {
    /// A server over `workspace` (with its connectors, master key and profile source), reached
    /// by people at `public_url` (e.g. `https://cdp.example.com`, or `http://127.0.0.1:8080`)
    /// through the reverse proxies in `trusted_proxies`, if any (only their `X-Forwarded-For`
    /// is believed).
    pub fn new(
        workspace: Workspace,
        public_url: &str,
        trusted_proxies: Vec<ipnet::IpNet>,
    ) -> Arc<Server> {
        let live = Arc::new(Live::default());
        let observer_live = live.clone();
        let workspace =
            workspace.with_request_observer(Arc::new(move |r| observer_live.metrics.request(r)));
        Arc::new(Server {
            workspace: Arc::new(workspace),
            public_url: public_url.trim_end_matches('/').to_string(),
            live,
            throttle: auth::Throttle::default(),
            trusted_proxies,
            pending: Mutex::default(),
            wake: Arc::default(),
        })
    }

    /// The workspace, for the worker that runs what this server queues.
    pub fn workspace(&self) -> Arc<Workspace> {
        self.workspace.clone()
    }

    /// `base` with this server's wake-up and live progress: the worker of this process.
    pub fn serve_options(&self, base: ServeOptions) -> ServeOptions {
        ServeOptions {
            wake: self.wake.clone(),
            watch: Some(self.live.clone()),
            ..base
        }
    }

    /// The redirect URI to register with vendors.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.public_url)
    }

    async fn queue_run(&self, actor: &Actor, export: &str, ask: api::RunAsk) -> Result<i64> {
        let how = RunRequest {
            trigger: Trigger::OnDemand,
            fresh: ask.fresh,
            full: ask.full,
        };
        let run = self.workspace.queue_export(actor, export, how).await?;
        self.wake.notify_one();
        Ok(run)
    }

    async fn cancel_run(&self, actor: &Actor, run: &RunRecord) -> Result<(), Problem> {
        if !matches!(run.status, RunState::Running | RunState::Queued) {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!("run {} is not under way", run.id),
            ));
        }
        if !self.live.cancel(run.id) {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "run {} is not under way on this server (worker {}); stop that worker, or wait for it",
                    run.id,
                    run.worker.as_deref().unwrap_or("none yet")
                ),
            ));
        }
        self.workspace
            .record_change(actor, "run.cancel", &run.id.to_string(), &run.export)
            .await?;
        Ok(())
    }

    fn keep_pending(&self, state: String, pending: PendingOAuth) {
        let mut map = self.pending.lock().unwrap();
        map.retain(|_, p| p.started.elapsed() < OAUTH_PATIENCE);
        map.insert(state, pending);
    }

    /// The sign-in `state` names, when `session` started it; another session's callback
    /// (someone who learnt the `state`) leaves it pending for its own.
    fn take_pending(&self, state: &str, session: &str) -> Option<PendingOAuth> {
        let mut map = self.pending.lock().unwrap();
        map.retain(|_, p| p.started.elapsed() < OAUTH_PATIENCE);
        let ours = map
            .get(state)
            .is_some_and(|p| auth::constant_time_eq(&p.session, &session_key(session)));
        if ours { map.remove(state) } else { None }
    }
}

/// What a pending sign-in keeps of the session that started it.
fn session_key(session: &str) -> String {
    connector_host::plugins::digest(session.as_bytes())
}

/// A run's server-sent events: `progress` every half second while it goes (live counts when
/// it runs in this process, its state otherwise), then `end` with the run.
fn events(
    server: Arc<Server>,
    actor: Actor,
    id: i64,
) -> impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>> {
    futures_util::stream::unfold(Some(server), move |server| {
        let actor = actor.clone();
        async move {
            let server = server?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let run = match server.workspace.run(&actor, id).await {
                Ok(run) => run,
                Err(e) => {
                    let event = Event::default().event("error").data(format!("{e:#}"));
                    return Some((Ok(event), None));
                }
            };
            let ended = !matches!(
                run.status,
                RunState::Running | RunState::Queued | RunState::Waiting
            );
            if ended {
                let data = serde_json::to_string(&api::RunView::from(run)).unwrap_or_default();
                return Some((Ok(Event::default().event("end").data(data)), None));
            }
            let snapshot = server
                .live
                .follow(id)
                .map(|rx| *rx.borrow())
                .unwrap_or_default();
            let data = serde_json::json!({
                "status": api::run_status(run.status),
                "done": snapshot.done,
                "total": snapshot.total.or(run.segment_size),
                "leavers": snapshot.leavers,
                "leavers_done": snapshot.leavers_done,
                // This process's own estimate when it works on the run, else the worker's
                // latest recorded one.
                "seconds_left": snapshot.seconds_left,
                "expected_end": run.expected_end,
            });
            Some((
                Ok(Event::default().event("progress").data(data.to_string())),
                Some(server),
            ))
        }
    })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "connector host",
        description = "Exports segments of customer profiles to email-marketing vendors through sandboxed connector plugins. Sign in with `Authorization: Bearer <API token>`; errors are RFC 9457 problem details.",
        version = "1.0.0"
    ),
    paths(
        api::me,
        api::connectors,
        api::approve_connector,
        api::connections,
        api::add_connection,
        api::connection,
        api::update_connection,
        api::test_connection,
        api::remove_connection,
        api::exports,
        api::add_export,
        api::export,
        api::edit_export,
        api::remove_export,
        api::dry_run,
        api::run_export,
        api::runs,
        api::run,
        api::rejections,
        api::cancel_run,
        api::run_events,
        healthz,
        readyz,
        metrics,
    ),
    modifiers(&BearerToken),
    security(("token" = [])),
    tags(
        (name = "connectors", description = "Connector plugins and their approval"),
        (name = "connections", description = "Vendor accounts"),
        (name = "exports", description = "What goes where"),
        (name = "runs", description = "Runs: queue, follow, read"),
        (name = "people", description = "Who is signed in"),
        (name = "operations", description = "Health and metrics"),
    )
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI 3.1 document of the API: what the handlers declare, plus what every operation
/// can answer whatever it does (problems as `application/problem+json`; 401 and 429 from
/// sign-in; 400 for a malformed path or query; 415 for a body that is not JSON).
pub fn openapi() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    let problem = serde_json::json!({"content": {"application/problem+json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut().filter_map(|o| o.as_object_mut()) {
            let has_body = operation.contains_key("requestBody");
            let has_params = operation.contains_key("parameters");
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(|r| r.as_object_mut())
            else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let Some(content) = response.get_mut("content").and_then(|c| c.as_object_mut())
                else {
                    continue;
                };
                if status.as_str() >= "400"
                    && let Some(json) = content.remove("application/json")
                {
                    content.insert("application/problem+json".into(), json);
                }
                // An event stream is text; its events are described in words.
                if let Some(stream) = content
                    .get_mut("text/event-stream")
                    .and_then(|c| c.as_object_mut())
                {
                    stream.remove("schema");
                }
            }
            let mut add = |status: &str, description: &str| {
                if !responses.contains_key(status) {
                    let mut answer = problem.clone();
                    answer["description"] = description.into();
                    responses.insert(status.into(), answer);
                }
            };
            if path.starts_with("/api/") {
                add("401", "Not signed in, or a token that is not valid");
                add(
                    "429",
                    "Too many failed sign-ins for this account or from this address",
                );
            }
            if has_params {
                add("400", "A malformed path or query parameter");
            }
            if has_body {
                add("400", "A body that is not the JSON described");
                add("415", "A body that is not JSON");
            }
        }
    }
    doc
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi())
}

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, content_type = "text/plain", body = String, description = "The process answers")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, content_type = "text/plain", body = String, description = "The state answers"),
        (status = 503, body = Problem)))]
async fn readyz(AxumState(server): AxumState<Arc<Server>>) -> Result<&'static str, Problem> {
    server.workspace.settings().await.map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the state does not answer: {e:#}"),
        )
    })?;
    Ok("ready\n")
}

#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, content_type = "text/plain", body = String, description = "Prometheus text format")))]
async fn metrics(AxumState(server): AxumState<Arc<Server>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        server.live.metrics.encode(),
    )
        .into_response()
}

/// Every route: API, console, OAuth callback, operations.
pub fn router(server: Arc<Server>) -> Router {
    use axum::routing::{delete, patch};
    let api = Router::new()
        .route("/me", get(api::me))
        .route("/connectors", get(api::connectors))
        .route("/connectors/{id}/approve", post(api::approve_connector))
        .route(
            "/connections",
            get(api::connections).post(api::add_connection),
        )
        .route(
            "/connections/{name}",
            get(api::connection)
                .patch(api::update_connection)
                .delete(api::remove_connection),
        )
        .route("/connections/{name}/test", post(api::test_connection))
        .route("/exports", get(api::exports).post(api::add_export))
        .route(
            "/exports/{name}",
            get(api::export)
                .merge(patch(api::edit_export))
                .merge(delete(api::remove_export)),
        )
        .route("/exports/{name}/dry-run", post(api::dry_run))
        .route("/exports/{name}/runs", post(api::run_export))
        .route("/runs", get(api::runs))
        .route("/runs/{id}", get(api::run))
        .route("/runs/{id}/rejections", get(api::rejections))
        .route("/runs/{id}/cancel", post(api::cancel_run))
        .route("/runs/{id}/events", get(api::run_events))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such API endpoint") });
    Router::new()
        .nest("/api/v1", api)
        .route("/openapi.json", get(openapi_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(console::routes())
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(server)
}

/// Serves `server` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    stop: CancellationToken,
) -> Result<()> {
    let app = router(server).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}
