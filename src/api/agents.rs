//! Handlers for /v1/agents: read the request, call the service, answer.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde::Deserialize;

use super::auth::AuditMark;
use super::body::{Document, Query};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::Principal;
use crate::agent::{Agent, API_VERSION, LIST_KIND};
use crate::selector::Selector;
use crate::serve::ConnectionCloser;
use crate::service::{Action as ServiceAction, LogRequest, Page};
use crate::wire::{AgentList, EventList, ExecRequest, ExecResult};

/// A Kubernetes-style `Warning` header for an admin's take-over of another owner's object.
pub(super) fn took_over(response: &mut Response, kind: &str, name: &str, from: &str) {
    let text = format!("299 hive \"{kind} {name} was taken over from owner {from}\"");
    if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
        response.headers_mut().append(header::WARNING, v);
    }
}

#[utoipa::path(post, path = "/v1/agents", operation_id = "createAgent", tag = "agents", request_body(content((Agent = "application/json"), (Agent = "application/yaml"))),
    responses((status = 201, body = Agent), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `POST /v1/agents`
pub async fn create(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Document(agent): Document<Agent>,
) -> Result<Response, ApiError> {
    let agent = mark.through(state.service.create(&p, agent).await)?;
    Ok((StatusCode::CREATED, Json(agent)).into_response())
}

#[utoipa::path(put, path = "/v1/agents/{name}", operation_id = "putAgent", tag = "agents", params(("name" = String, Path)), request_body(content((Agent = "application/json"), (Agent = "application/yaml"))),
    responses((status = 200, body = Agent), (status = 201, body = Agent), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `PUT /v1/agents/{name}`: create or replace.
pub async fn put(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Path(name): Path<String>,
    Document(agent): Document<Agent>,
) -> Result<Response, ApiError> {
    let put = mark.through(state.service.put(&p, &name, agent).await)?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(put.agent)).into_response();
    if let Some(from) = put.taken_over_from {
        took_over(&mut response, "agent", &name, &from);
    }
    Ok(response)
}

/// Query of `GET /v1/agents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListQuery {
    /// A label selector: `k=v`, `k!=v`, `k` or `!k`, comma-separated, all must hold.
    label: Option<String>,
    /// Stream changes (newline-delimited JSON) instead of answering once.
    #[serde(default)]
    watch: bool,
    /// With `watch`: only changes after this version (a list's `metadata.resourceVersion`).
    resource_version: Option<String>,
    /// At most this many agents (0: all); `metadata.continue` then fetches the next page.
    limit: Option<usize>,
    /// The next page of a list: the previous page's `metadata.continue`.
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/agents", operation_id = "listAgents", tag = "agents",
    params(("label" = Option<String>, Query, description = "label selector: k=v, k!=v, k, !k"), ("watch" = Option<bool>, Query, description = "stream changes as NDJSON"), ("resourceVersion" = Option<String>, Query, description = "with watch: changes after this version"), ("limit" = Option<usize>, Query, description = "at most this many agents (0: all); metadata.continue then names the next page"), ("continue" = Option<String>, Query, description = "the next page: the previous page's metadata.continue (every page reads one resourceVersion)")),
    responses((status = 200, description = "an AgentList, or with watch=true a stream of {type, object} lines", body = AgentList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 410, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
/// `GET /v1/agents`
pub async fn list(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    closer: Option<Extension<ConnectionCloser>>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let selector = match &query.label {
        Some(s) => Selector::parse(s).map_err(ApiError::BadRequest)?,
        None => Selector::default(),
    };
    if query.watch {
        if query.limit.is_some() || query.continue_token.is_some() {
            return Err(ApiError::BadRequest(
                "limit and continue page a list; a watch takes resourceVersion".into(),
            ));
        }
        let closer = closer.map(|Extension(c)| c);
        return super::watch::watch(
            &state,
            p,
            selector,
            query.resource_version.as_deref(),
            closer,
        );
    }
    let page = state.service.list(
        &p,
        &selector,
        query.limit.filter(|n| *n > 0),
        query.continue_token.as_deref(),
    )?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        list_body(&page),
    )
        .into_response())
}

/// An AgentList's JSON, put together from each agent's stored JSON: nothing is
/// serialized again.
pub(super) fn list_body(page: &Page) -> Bytes {
    let mut metadata = serde_json::json!({"resourceVersion": page.version.to_string()});
    if let Some(next) = &page.next {
        metadata["continue"] = next.clone().into();
    }
    let size: usize = page.items.iter().map(|e| e.json.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 128);
    body.extend_from_slice(
        format!(
            r#"{{"apiVersion":"{API_VERSION}","kind":"{LIST_KIND}","metadata":{metadata},"items":["#
        )
        .as_bytes(),
    );
    for (i, e) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.json);
    }
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

#[utoipa::path(get, path = "/v1/agents/{name}", operation_id = "getAgent", tag = "agents", params(("name" = String, Path)),
    responses((status = 200, body = Agent), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/agents/{name}`
pub async fn get(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let entry = state.service.visible_entry(&p, &name)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        entry.json.clone(),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/v1/agents/{name}", operation_id = "deleteAgent", tag = "agents", params(("name" = String, Path)),
    responses((status = 202, body = Agent), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `DELETE /v1/agents/{name}`: marks it Terminating; the controller removes the
/// container, then the record.
pub async fn delete(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let agent = mark.through(state.service.delete(&p, &name).await)?;
    Ok((StatusCode::ACCEPTED, Json(agent)).into_response())
}

/// Body of `POST /v1/agents/{name}/action`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: Action,
}

impl super::body::Screen for ActionRequest {}
impl super::body::Screen for ExecRequest {}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Stop,
    Restart,
    /// A heartbeat: the agent is active (one stopped for idleness resumes).
    Touch,
}

impl From<Action> for ServiceAction {
    fn from(a: Action) -> Self {
        match a {
            Action::Start => ServiceAction::Start,
            Action::Stop => ServiceAction::Stop,
            Action::Restart => ServiceAction::Restart,
            Action::Touch => ServiceAction::Touch,
        }
    }
}

#[utoipa::path(post, path = "/v1/agents/{name}/action", operation_id = "actOnAgent", tag = "agents", params(("name" = String, Path)), request_body = ActionRequest,
    responses((status = 202, body = Agent), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `POST /v1/agents/{name}/action`: start and stop set spec.state; restart asks for
/// one restart of the container; touch says the agent is active. Each is activity: an
/// agent stopped for idleness resumes.
pub async fn action(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Path(name): Path<String>,
    Document(request): Document<ActionRequest>,
) -> Result<Response, ApiError> {
    let agent = mark.through(state.service.act(&p, &name, request.action.into()).await)?;
    Ok((StatusCode::ACCEPTED, Json(agent)).into_response())
}

#[utoipa::path(post, path = "/v1/agents/{name}/exec", operation_id = "execInAgent", tag = "agents", params(("name" = String, Path)), request_body = ExecRequest,
    responses((status = 200, body = ExecResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the agent is not running"), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 501, body = ErrorBody, description = "the backend cannot exec (Kubernetes, for now)"), (status = 503, body = ErrorBody)))]
/// `POST /v1/agents/{name}/exec`: runs a command once in the agent's running container
/// (as `docker exec` / `kubectl exec` without a terminal) and answers its output and exit
/// code. It holds one of the key's open streams while it runs.
pub async fn exec(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Path(name): Path<String>,
    Document(request): Document<ExecRequest>,
) -> Result<Json<ExecResult>, ApiError> {
    let place = state.streams.acquire(&p)?;
    // The service runs the command in a task of its own and audits it when it ends, even
    // if this request is dropped or the key revoked meanwhile.
    let result = tokio::select! {
        r = state.service.exec_to_end(&p, &name, request) => r,
        () = place.revoked() => {
            mark.through::<()>(Ok(()))?;
            return Err(ApiError::Unauthorized(super::streams::REVOKED));
        }
    };
    Ok(Json(mark.through(result)?))
}

/// Query of `GET /v1/agents/{name}/logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only the last N lines.
    tail: Option<u64>,
    /// Keep the response open and stream new output.
    #[serde(default)]
    follow: bool,
    /// Only output newer than this: a duration such as `10m`, or an RFC 3339 time.
    since: Option<String>,
}

#[utoipa::path(get, path = "/v1/agents/{name}/logs", operation_id = "readAgentLogs", tag = "agents",
    params(("name" = String, Path), ("tail" = Option<u64>, Query, description = "only the last N lines (at most 1000000)"), ("follow" = Option<bool>, Query), ("since" = Option<String>, Query, description = "a duration such as 10m, or an RFC 3339 time")),
    responses((status = 200, description = "the container's output", content_type = "text/plain", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
/// `GET /v1/agents/{name}/logs`: the container's output as text.
pub async fn logs(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    closer: Option<Extension<ConnectionCloser>>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let request = LogRequest {
        tail: query.tail,
        follow: query.follow,
        since: query.since.as_deref(),
    };
    let stream = state
        .service
        .logs(&p, &name, request)?
        .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string())));
    // Any read of the output is a stream (a slow reader holds one open as long as a
    // follow does): it holds its place among the key's open streams until it ends, and
    // breaks off (the body ends in an error, as plain text has no error line) when the
    // key is revoked.
    let place = state.streams.acquire(&p)?;
    let body = Body::from_stream(place.bind(
        stream,
        Some(Err(std::io::Error::other(super::streams::REVOKED))),
        closer.map(|Extension(c)| c),
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

#[utoipa::path(get, path = "/v1/agents/{name}/events", operation_id = "listAgentEvents", tag = "agents", params(("name" = String, Path)),
    responses((status = 200, body = EventList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/agents/{name}/events`: what the reconciler did to the agent and why, oldest first.
pub async fn events(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<EventList>, ApiError> {
    Ok(Json(EventList {
        items: state.service.events(&p, &name)?,
    }))
}
