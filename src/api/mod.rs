//! The HTTP API: `fn router(state) -> Router`, so tests can drive it without a socket.
//!
//! Routes (all under /v1 demand the API key):
//! - `POST /v1/agents`, `GET /v1/agents[?label=k=v]`
//! - `GET|PUT|DELETE /v1/agents/{name}`, `POST /v1/agents/{name}/action`
//! - `GET /v1/agents/{name}/logs[?tail=N&follow=true]`, `GET /v1/agents/{name}/events`, `GET /v1/audit` (admins)
//! - `POST /v1/apply[?dryRun=true]` (many documents, all checked before any is written)
//! - `GET /v1/sync` (the manifests directory's state)
//! - `GET /v1/secrets`, `GET|PUT|DELETE /v1/secrets/{name}` (write-only values)
//! - `GET /metrics` (Prometheus text; needs a key)
//! - `GET /healthz`, `GET /readyz` (no key)

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::controller;
use crate::orchestrator::Orchestrator;
use crate::store::Store;

mod agents;
pub mod apply;
pub mod auth;
pub mod body;
pub mod error;
mod secrets;

pub use error::ApiError;

use crate::access::Keys;
use crate::policy::Policy;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Desired state and status.
    pub store: Arc<Store>,
    /// The engine, for readiness and logs.
    pub orchestrator: Arc<dyn Orchestrator>,
    /// Wakes the controller after a write.
    pub controller: controller::Handle,
    /// The keys /v1 requests may carry.
    pub keys: Arc<Keys>,
    /// What agents may be.
    pub policy: Arc<Policy>,
    /// Held from an admission check to its write, so quotas cannot be raced past.
    pub admission: Arc<tokio::sync::Mutex<()>>,
    /// Counters and timings for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The manifests directory's sync state, when one is followed.
    pub sync: Option<Arc<std::sync::Mutex<crate::manifests::SyncStatus>>>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/agents", post(agents::create).get(agents::list))
        .route(
            "/agents/{name}",
            get(agents::get).put(agents::apply).delete(agents::delete),
        )
        .route("/agents/{name}/action", post(agents::action))
        .route("/agents/{name}/logs", get(agents::logs))
        .route("/agents/{name}/events", get(agents::events))
        .route("/audit", get(agents::audit))
        .route("/apply", post(apply::apply_many))
        .route("/sync", get(sync))
        .route("/secrets", get(secrets::list))
        .route(
            "/secrets/{name}",
            get(secrets::get).put(secrets::put).delete(secrets::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    // Metrics tell how many agents there are: a key is needed, as for /v1.
    let metrics =
        Router::new()
            .route("/metrics", get(metrics))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::authenticate,
            ));
    Router::new()
        .nest("/v1", v1)
        .merge(metrics)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let phases: Vec<_> = state
        .store
        .list()?
        .into_iter()
        .map(|r| r.agent.status.phase)
        .collect();
    state.metrics.set_phases(phases.into_iter());
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 only while the store reads and the engine answers; otherwise 503 saying which.
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.store.is_healthy() {
        return ApiError::Unavailable("the store cannot be read".into()).into_response();
    }
    match state.orchestrator.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(e) => ApiError::Unavailable(e.to_string()).into_response(),
    }
}

/// `GET /v1/sync`: the state of the manifests directory sync.
async fn sync(
    State(state): State<AppState>,
) -> Result<Json<crate::manifests::SyncStatus>, ApiError> {
    let Some(status) = &state.sync else {
        return Err(ApiError::NotFound(
            "no manifests directory is followed (start hive serve with --manifests-dir)".into(),
        ));
    };
    Ok(Json(
        status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    ))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see the README for the API".into())
}
