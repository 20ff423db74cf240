//! The HTTP API: `fn router(state) -> Router`, so tests can drive it without a socket. An
//! adapter over the [`Service`](crate::service::Service): handlers read the request, call
//! the service, and answer; the rules live in the service.
//!
//! Routes (all under /v1 demand the API key):
//! - `POST /v1/agents`, `GET /v1/agents[?label=k=v][&watch=true]`
//! - `GET|PUT|DELETE /v1/agents/{name}`, `POST /v1/agents/{name}/action`
//! - `GET /v1/agents/{name}/logs[?tail=N&follow=true]`, `GET /v1/agents/{name}/events`, `GET /v1/audit` (admins)
//! - `POST /v1/agents/{name}/exec`, `GET|PUT /v1/agents/{name}/files?path=`,
//!   `GET /v1/agents/{name}/portforward?port=` (a WebSocket): inside an agent
//! - `POST /v1/apply[?dryRun=true][&prune=true]` (many documents, all checked before any is written)
//! - `GET /v1/sync` (the manifests directory's state; admins)
//! - `GET /v1/secrets`, `GET|PUT|DELETE /v1/secrets/{name}` (write-only values)
//! - `POST /mcp`: the Model Context Protocol, Hive's tools over the same service (see [`mcp`])
//! - `GET /metrics` (Prometheus text; needs a key)
//! - `GET /v1/whoami`: the caller's key id, owner and role
//! - `GET /healthz`, `GET /readyz`, `GET /openapi.json` (no key)
//! - `GET /` and `/ui/...`: the dashboard (no key; it asks for one; see [`ui`])

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{middleware, Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::access::{Keys, Principal};
use crate::controller;
use crate::service::Service;
use crate::store::Store;

mod agents;
mod apply;
mod audit;
pub mod auth;
pub mod body;
pub mod error;
mod files;
mod forward;
pub mod mcp;
pub mod openapi;
mod secrets;
pub mod streams;
mod ui;
mod watch;

pub use error::ApiError;
use error::ErrorBody;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Every write, and the reads a key may make.
    pub service: Arc<Service>,
    /// The store, for reads the service does not shape (watch, metrics, readiness).
    pub store: Arc<Store>,
    /// What the controller found (other stores' workloads).
    pub controller: controller::Handle,
    /// The keys /v1 requests may carry.
    pub keys: Arc<Keys>,
    /// Counters and timings for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The manifests directory's sync state, when one is followed.
    pub sync: Option<Arc<std::sync::Mutex<crate::gitops::SyncStatus>>>,
    /// Whether this Hive holds its instance's lease.
    pub leadership: tokio::sync::watch::Receiver<crate::lease::Leadership>,
    /// This Hive's instance, for answers that name it.
    pub instance: String,
    /// Watches, log follows and MCP waits open per key.
    pub streams: Arc<streams::StreamLimits>,
    /// The Host headers /mcp answers.
    pub mcp_allowed_hosts: Arc<Vec<String>>,
}

/// Adds routes to a router and lists them (method, path), so that what is served and what
/// the OpenAPI document describes can be compared by a test.
macro_rules! routes {
    ($router:expr, $prefix:literal; $($path:literal => $first:ident($fh:expr) $(. $more:ident($mh:expr))*;)*) => {{
        let mut router = $router;
        let mut served: Vec<(&'static str, String)> = Vec::new();
        $(
            router = router.route($path, axum::routing::$first($fh)$(.$more($mh))*);
            served.push((stringify!($first), format!("{}{}", $prefix, $path)));
            $( served.push((stringify!($more), format!("{}{}", $prefix, $path))); )*
        )*
        (router, served)
    }};
}

/// The routes that need a key: /v1, and /metrics.
fn keyed_routes() -> (
    Router<AppState>,
    Router<AppState>,
    Vec<(&'static str, String)>,
) {
    let (v1, mut served) = routes!(Router::new(), "/v1";
        "/agents" => post(agents::create).get(agents::list);
        "/agents/{name}" => get(agents::get).put(agents::put).delete(agents::delete);
        "/agents/{name}/action" => post(agents::action);
        "/agents/{name}/logs" => get(agents::logs);
        "/agents/{name}/exec" => post(agents::exec);
        "/agents/{name}/files" => get(files::read).put(files::write);
        "/agents/{name}/portforward" => get(forward::forward);
        "/agents/{name}/events" => get(agents::events);
        "/audit" => get(audit::audit);
        "/apply" => post(apply::apply);
        "/sync" => get(sync);
        "/whoami" => get(whoami);
        "/secrets" => get(secrets::list);
        "/secrets/{name}" => get(secrets::get).put(secrets::put).delete(secrets::delete);
    );
    // Metrics tell how many agents there are: a key is needed, as for /v1.
    let (metrics, more) = routes!(Router::new(), "";
        "/metrics" => get(metrics);
    );
    served.extend(more);
    (v1, metrics, served)
}

/// The routes anyone may call.
fn open_routes() -> (Router<AppState>, Vec<(&'static str, String)>) {
    routes!(Router::new(), "";
        "/healthz" => get(healthz);
        "/readyz" => get(readyz);
        "/openapi.json" => get(openapi::document);
    )
}

/// Every route served, as (method, path).
pub fn served_routes() -> Vec<(&'static str, String)> {
    let (_, _, mut served) = keyed_routes();
    served.extend(open_routes().1);
    // The MCP endpoint, nested as a service (see [`mcp`]).
    served.push(("post", "/mcp".to_string()));
    served
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let (v1, metrics, _) = keyed_routes();
    let auth = || middleware::from_fn_with_state(state.clone(), auth::authenticate);
    let (open, _) = open_routes();
    let mcp = Router::new()
        .nest_service(
            "/mcp",
            mcp::service(state.clone(), &state.mcp_allowed_hosts),
        )
        .layer(auth());
    Router::new()
        .nest("/v1", v1.route_layer(auth()))
        .merge(metrics.route_layer(auth()))
        .merge(mcp)
        .merge(ui::routes())
        .merge(open)
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        // A handler that panics answers 500 (and is logged), as any other failure.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(state)
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "application/openmetrics-text", body = String), (status = 401, body = ErrorBody)))]
/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = state.store.snapshot();
    state.metrics.set_phases(
        snapshot
            .agents
            .values()
            .map(|e| e.record.agent.status.phase),
    );
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations", security(()), responses((status = 200, description = "serving")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations", security(()), responses((status = 200, description = "the store reads, the engine answers and this Hive holds its instance", body = Readiness), (status = 503, body = ErrorBody)))]
/// 200 only while the store reads, the engine answers and this Hive holds its instance's
/// lease; otherwise 503 saying which. Containers of other stores are counted either way,
/// and named (with their agents) only to a caller presenting an admin key.
async fn readyz(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    // The keys are the API's own: a broken keys file is a reason of the API's.
    if let Some(why) = state.keys.broken() {
        return ApiError::Unavailable(format!(
            "the keys file does not load ({why}): none of its keys is accepted until it does; only the admin key is"
        ))
        .into_response();
    }
    let ready = match state.service.readiness().await {
        Ok(ready) => ready,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let admin = auth::presented(&headers)
        .ok()
        .and_then(|key| state.keys.authenticate(key))
        .is_some_and(|p| p.is_admin());
    (
        StatusCode::OK,
        Json(Readiness {
            status: "ready",
            instance: state.instance.clone(),
            store: state.store.id().to_string(),
            foreign_container_count: ready.foreign.len(),
            foreign_containers: admin.then_some(ready.foreign),
        }),
    )
        .into_response()
}

/// The body of a ready `/readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// "ready".
    pub status: &'static str,
    /// The instance this Hive reconciles.
    pub instance: String,
    /// The id of this Hive's store, stamped on the containers it declares.
    pub store: String,
    /// How many containers of this instance another store declared (left alone).
    pub foreign_container_count: usize,
    /// Those containers, with their agents: only for a caller with an admin key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign_containers: Option<Vec<crate::controller::ForeignContainer>>,
}

#[utoipa::path(get, path = "/v1/sync", operation_id = "getSync", tag = "gitops", responses((status = 200, body = crate::gitops::SyncStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/sync`: the state of the manifests directory sync.
async fn sync(
    State(state): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<crate::gitops::SyncStatus>, ApiError> {
    // It names every file's agents, whatever their owner.
    if !p.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin key may read the manifests directory's state".into(),
        ));
    }
    let Some(status) = &state.sync else {
        return Err(ApiError::NotFound(
            "no manifests directory is followed (start hive serve with --manifests-dir)".into(),
        ));
    };
    Ok(Json(
        status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    ))
}

/// `GET /v1/whoami`: who the key is.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// The key's id, as the audit names it.
    pub key_id: String,
    /// Whose agents it sees and makes.
    pub owner: String,
    /// admin, operator or viewer.
    pub role: String,
}

#[utoipa::path(get, path = "/v1/whoami", operation_id = "whoami", tag = "operations", responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
/// `GET /v1/whoami`: the key's id, owner and role (what a client may offer its user).
async fn whoami(axum::Extension(p): axum::Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI {
        key_id: p.key_id.clone(),
        owner: p.owner.clone(),
        role: p.role.name().to_string(),
    })
}

/// The answer to a request whose handler panicked: a 500 in the API's error shape,
/// without the panic's text.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = crate::controller::reconcile::panic_message(&*panic);
    tracing::error!(error = %message, "a request handler panicked");
    ApiError::Internal("the request failed unexpectedly (a bug in Hive); see its log".into())
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see the README for the API".into())
}
