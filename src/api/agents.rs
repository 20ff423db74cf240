//! Handlers for /v1/agents: each validates, writes the store durably, wakes the
//! controller, and answers with the stored object.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::auth::AuditNote;
use super::body::{Document, Query};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::{Principal, Role};
use crate::agent::{
    shown_key, validate_name, Agent, DesiredState, Invalid, API_VERSION, LIST_KIND,
    SOURCE_ANNOTATION,
};
use crate::orchestrator::LogOptions;
use crate::store::{Applied, Record, StoreError};

/// Makes the store durable and wakes the controller for `name`; every acknowledged
/// write passes through here before its answer is sent.
pub(super) async fn commit(state: &AppState, name: &str) -> Result<(), ApiError> {
    state.store.flush().await?;
    state.controller.enqueue(name);
    Ok(())
}

/// [`commit`] for several agents with one flush.
pub(super) async fn commit_many(state: &AppState, names: &[String]) -> Result<(), ApiError> {
    if names.is_empty() {
        return Ok(());
    }
    state.store.flush().await?;
    for name in names {
        state.controller.enqueue(name);
    }
    Ok(())
}

fn path_name(name: &str) -> Result<(), ApiError> {
    validate_name(name)
        .map_err(|m| ApiError::NotFound(format!("agent {:?} not found ({m})", shown_key(name))))
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("agent {name:?} not found"))
}

/// Refuses viewers any change.
pub(super) fn require_write(p: &Principal, verb: &str) -> Result<(), ApiError> {
    if p.may_write() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "key {:?} has role viewer, which may not {verb} agents",
            p.key_id
        )))
    }
}

/// A response with the note the audit log names it by.
fn noted(status: StatusCode, agent: Agent, verb: &'static str) -> Response {
    let name = agent.metadata.name.clone();
    let mut r = (status, Json(agent)).into_response();
    r.extensions_mut().insert(AuditNote { verb, agent: name });
    r
}

/// An agent admitted for a write: as it will be stored, and, when an admin takes
/// another owner's agent over, that owner.
pub(super) struct Admitted {
    pub agent: Agent,
    pub existing: Option<Record>,
    pub take_over: Option<String>,
}

/// Sets the owner (the key's, or the one an admin names), refuses a write to another
/// owner's agent unless an admin takes it over by naming its new owner, validates, and
/// runs the admission policy against the owner's other agents. The caller holds the
/// admission lock until the write is done.
fn admit(
    state: &AppState,
    p: &Principal,
    mut agent: Agent,
    existing: Option<&Agent>,
    pending: &[Agent],
) -> Result<(Agent, Option<String>), ApiError> {
    let (owner, named) = match (&agent.metadata.owner, p.role) {
        (Some(o), Role::Admin) => (o.clone(), true),
        // The manifests directory names only the owners the policy lets it name, and
        // never takes an agent over.
        (Some(o), Role::System) if state.policy.gitops_may_name(o) => (o.clone(), false),
        (Some(_), Role::System) => {
            return Err(ApiError::Refused {
                rule: "gitops.allowOwners".into(),
                invalid: Invalid::new(
                    "metadata.owner",
                    "names an owner the manifests directory may not declare agents for (policy rule gitops.allowOwners)",
                ),
            })
        }
        (Some(o), _) if *o != p.owner => {
            return Err(ApiError::Forbidden(
                "only an admin key may set metadata.owner to another owner".into(),
            ))
        }
        _ => (p.owner.clone(), false),
    };
    if p.role != Role::System {
        // Annotations under hive/ are Hive's: a client setting hive/source would make the
        // manifests sync take its agent for one of the directory's.
        if let Some(k) = agent
            .metadata
            .annotations
            .keys()
            .find(|k| k.starts_with("hive/"))
        {
            return Err(ApiError::invalid(
                format!("metadata.annotations.{}", crate::agent::shown_key(k)),
                "annotations under \"hive/\" are Hive's own and cannot be set",
            ));
        }
        if let Some(file) = existing.and_then(|e| e.metadata.annotations.get(SOURCE_ANNOTATION)) {
            return Err(ApiError::Conflict {
                code: "managed_by_manifests",
                message: format!(
                    "agent {:?} is declared by the manifests directory ({}); change it there",
                    agent.metadata.name,
                    crate::agent::shown_key(file)
                ),
            });
        }
    }
    let mut take_over = None;
    if let Some(current) = existing.and_then(|e| e.metadata.owner.as_deref()) {
        if current != owner {
            if !named {
                return Err(crate::store::StoreError::OwnedBy {
                    kind: "agent",
                    name: agent.metadata.name.clone(),
                    owner: current.to_string(),
                }
                .into());
            }
            take_over = Some(current.to_string());
        }
    }
    agent.metadata.owner = Some(owner.clone());
    agent.validate()?;
    if state.reserved_names.contains(&agent.metadata.name) {
        return Err(ApiError::Refused {
            rule: "reserved".into(),
            invalid: Invalid::new(
                "metadata.name",
                "is reserved for a service of the deployment (--reserved-names): an agent of \
                 that name would answer in its place on the agents' network (policy rule reserved)",
            ),
        });
    }
    // The owner's other agents count only against a quota; without one, skip the scan.
    let records = if state.policy.quota.is_set() {
        state.store.list()?
    } else {
        Vec::new()
    };
    // Agents admitted earlier in the same batch count as if stored already.
    let others: Vec<&Agent> = records
        .iter()
        .map(|r| &r.agent)
        .filter(|a| !pending.iter().any(|p| p.metadata.name == a.metadata.name))
        .chain(pending)
        .filter(|a| a.metadata.owner.as_deref() == Some(owner.as_str()))
        .filter(|a| a.metadata.name != agent.metadata.name)
        .collect();
    // The secrets it takes its environment from count against the env limits too.
    let env_from = state.store.env_from(&agent, false)?;
    state.policy.admit(&mut agent, &others, &env_from)?;
    Ok((agent, take_over))
}

/// Checks one agent for a create-or-replace without writing it: the caller may touch that
/// name, and the policy admits it.
pub(super) fn prepare(
    state: &AppState,
    p: &Principal,
    agent: Agent,
    pending: &[Agent],
) -> Result<Admitted, ApiError> {
    let name = agent.metadata.name.clone();
    let existing = state.store.get(&name)?;
    if let Some(e) = &existing {
        if !p.sees(e.agent.metadata.owner.as_deref().unwrap_or_default()) {
            // Names are global (they name containers), so the name cannot be given twice.
            return Err(ApiError::Conflict {
                code: "already_exists",
                message: format!("the name {name:?} is in use; choose another"),
            });
        }
    }
    let (agent, take_over) = admit(
        state,
        p,
        agent,
        existing.as_ref().map(|r| &r.agent),
        pending,
    )?;
    Ok(Admitted {
        agent,
        existing,
        take_over,
    })
}

/// A warning header (as Kubernetes sends) for an admin's take-over of another owner's object.
pub(super) fn took_over(response: &mut Response, kind: &str, name: &str, from: &str) {
    let text = format!("299 hive \"{kind} {name} was taken over from owner {from}\"");
    if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
        response.headers_mut().append(header::WARNING, v);
    }
    tracing::warn!(%kind, %name, previous_owner = %from, "an admin took over another owner's object");
}

#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body(content((Agent = "application/json"), (Agent = "application/yaml"))),
    responses((status = 201, body = Agent), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
/// `POST /v1/agents`
pub async fn create(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Document(agent): Document<Agent>,
) -> Result<Response, ApiError> {
    require_write(&p, "create")?;
    let name = agent.metadata.name.clone();
    let record = {
        let _admission = state.admission.lock().await;
        if state.store.get(&name)?.is_some() {
            return Err(StoreError::AlreadyExists(name).into());
        }
        let (agent, _) = admit(&state, &p, agent, None, &[])?;
        state.store.create(agent)?
    };
    commit(&state, &name).await?;
    Ok(noted(StatusCode::CREATED, record.agent, "create"))
}

#[utoipa::path(put, path = "/v1/agents/{name}", tag = "agents", params(("name" = String, Path)), request_body(content((Agent = "application/json"), (Agent = "application/yaml"))),
    responses((status = 200, body = Agent), (status = 201, body = Agent), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
/// `PUT /v1/agents/{name}`: create or replace.
pub async fn apply(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Document(mut agent): Document<Agent>,
) -> Result<Response, ApiError> {
    require_write(&p, "change")?;
    if agent.metadata.name.is_empty() {
        agent.metadata.name = name.clone();
    } else if agent.metadata.name != name {
        return Err(ApiError::invalid(
            "metadata.name",
            "differs from the name in the path",
        ));
    }
    let (record, applied, take_over) = {
        let _admission = state.admission.lock().await;
        let admitted = prepare(&state, &p, agent, &[])?;
        let (record, applied) = state
            .store
            .apply(admitted.agent, admitted.take_over.as_deref())?;
        (record, applied, admitted.take_over)
    };
    let status = match applied {
        Applied::Created => StatusCode::CREATED,
        Applied::Updated | Applied::Unchanged => StatusCode::OK,
    };
    if applied != Applied::Unchanged {
        commit(&state, &name).await?;
    }
    let mut response = noted(status, record.agent, "apply");
    if let Some(from) = take_over {
        took_over(&mut response, "agent", &name, &from);
    }
    Ok(response)
}

/// Query of `GET /v1/agents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// A label selector: `k=v`, `k!=v`, `k` or `!k`, comma-separated, all must hold.
    label: Option<String>,
    /// Stream changes (newline-delimited JSON) instead of answering once.
    #[serde(default)]
    watch: bool,
    /// With `watch`: only changes after this version (a list's `metadata.resourceVersion`).
    resource_version: Option<String>,
}

/// The body of `GET /v1/agents`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentList {
    api_version: &'static str,
    kind: &'static str,
    /// `resourceVersion`: the version this list reflects, to watch from.
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    items: Vec<Agent>,
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    params(("label" = Option<String>, Query, description = "label selector: k=v, k!=v, k, !k"), ("watch" = Option<bool>, Query, description = "stream changes as NDJSON"), ("resourceVersion" = Option<String>, Query, description = "with watch: changes after this version")),
    responses((status = 200, description = "an AgentList, or with watch=true a stream of {type, object} lines", body = AgentList), (status = 401, body = ErrorBody), (status = 410, body = ErrorBody)))]
/// `GET /v1/agents`
pub async fn list(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let selector = match &query.label {
        Some(s) => Selector::parse(s)?,
        None => Selector::default(),
    };
    if query.watch {
        return watch(&state, p, selector, query.resource_version.as_deref());
    }
    let version = state.store.current_version();
    let items: Vec<Agent> = state
        .store
        .list()?
        .into_iter()
        .map(|r| r.agent)
        .filter(|a| p.sees(a.metadata.owner.as_deref().unwrap_or_default()))
        .filter(|a| selector.matches(&a.metadata.labels))
        .collect();
    Ok(Json(AgentList {
        api_version: API_VERSION,
        kind: LIST_KIND,
        metadata: serde_json::json!({"resourceVersion": version.to_string()}),
        items,
    })
    .into_response())
}

/// `GET /v1/agents?watch=true[&resourceVersion=N]`: one JSON object a line,
/// `{"type": "ADDED" | "MODIFIED" | "DELETED", "object": <agent>}`, for every change of an
/// agent the caller sees. Without a resourceVersion the current agents come first, as
/// ADDED. A watcher that falls too far behind gets `{"type": "ERROR", "object": {"code":
/// 410, ...}}` and the stream ends: list again and watch from the list's version.
fn watch(
    state: &AppState,
    p: Principal,
    selector: Selector,
    since: Option<&str>,
) -> Result<Response, ApiError> {
    let place = state.streams.acquire(&p.key_id)?;
    let since = since
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "resourceVersion={v:?} is not a version from a list"
                ))
            })
        })
        .transpose()?;
    let (past, rx) = state.store.watch(since).map_err(|horizon| ApiError::Gone(format!(
        "resourceVersion {} is older than the changes kept (from {horizon}); list again and watch from the list's resourceVersion",
        since.unwrap_or_default()
    )))?;
    // Without a version: the agents as they are now, then every change after.
    let initial: Vec<(String, Agent, u64)> = match since {
        Some(_) => past
            .into_iter()
            .map(|e| (e.kind.to_string(), e.agent, e.seq))
            .collect(),
        None => state
            .store
            .list()?
            .into_iter()
            .map(|r| {
                let seq = r
                    .agent
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                ("ADDED".to_string(), r.agent, seq)
            })
            .collect(),
    };
    let visible = std::sync::Arc::new(move |a: &Agent| {
        p.sees(a.metadata.owner.as_deref().unwrap_or_default())
            && selector.matches(&a.metadata.labels)
    });
    let seen = initial.iter().map(|(_, _, seq)| *seq).max().unwrap_or(0);
    let first: Vec<_> = initial
        .into_iter()
        .filter(|(_, a, _)| visible(a))
        .map(|(k, a, _)| watch_line(&k, serde_json::to_value(a).unwrap_or_default()))
        .collect();
    // State: the receiver and the newest version sent; None once the stream must end.
    let live = futures_util::stream::unfold(Some((rx, seen)), move |state| {
        let visible = visible.clone();
        async move {
            let (mut rx, mut seen) = state?;
            loop {
                match rx.recv().await {
                    Ok(e) if e.seq <= seen => continue,
                    Ok(e) => {
                        seen = e.seq;
                        if visible(&e.agent) {
                            let item = watch_line(
                                e.kind,
                                serde_json::to_value(&e.agent).unwrap_or_default(),
                            );
                            return Some((item, Some((rx, seen))));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let gone = serde_json::json!({"code": 410, "message": "this watch fell too far behind; list again and watch from the list's resourceVersion"});
                        return Some((watch_line("ERROR", gone), None));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    // The stream holds its place among the key's open streams until it ends.
    let body = Body::from_stream(
        futures_util::stream::iter(first)
            .chain(live)
            .map(move |line| {
                let _ = &place;
                line
            }),
    );
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// One line of a watch.
fn watch_line(
    kind: &str,
    object: serde_json::Value,
) -> Result<axum::body::Bytes, std::convert::Infallible> {
    let mut text = serde_json::json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Ok(axum::body::Bytes::from(text))
}

/// The record of an agent the caller may see; another owner's agent is not found.
fn found(state: &AppState, p: &Principal, name: &str) -> Result<Record, ApiError> {
    path_name(name)?;
    state
        .store
        .get(name)?
        .filter(|r| p.sees(r.agent.metadata.owner.as_deref().unwrap_or_default()))
        .ok_or_else(|| not_found(name))
}

#[utoipa::path(get, path = "/v1/agents/{name}", tag = "agents", params(("name" = String, Path)),
    responses((status = 200, body = Agent), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/agents/{name}`
pub async fn get(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(found(&state, &p, &name)?.agent))
}

#[utoipa::path(delete, path = "/v1/agents/{name}", tag = "agents", params(("name" = String, Path)),
    responses((status = 202, body = Agent), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `DELETE /v1/agents/{name}`: marks it Terminating; the controller removes the
/// container, then the record.
pub async fn delete(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    found(&state, &p, &name)?;
    require_write(&p, "delete")?;
    let record = state.store.mark_deleted(&name)?;
    commit(&state, &name).await?;
    Ok(noted(StatusCode::ACCEPTED, record.agent, "delete"))
}

/// Body of `POST /v1/agents/{name}/action`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: Action,
}

impl super::body::Screen for ActionRequest {}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Stop,
    Restart,
}

#[utoipa::path(post, path = "/v1/agents/{name}/action", tag = "agents", params(("name" = String, Path)), request_body = ActionRequest,
    responses((status = 202, body = Agent), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
/// `POST /v1/agents/{name}/action`: start and stop set spec.state; restart asks for
/// one restart of the container.
pub async fn action(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Document(request): Document<ActionRequest>,
) -> Result<Response, ApiError> {
    let current = found(&state, &p, &name)?;
    let verb = match request.action {
        Action::Start => "start",
        Action::Stop => "stop",
        Action::Restart => "restart",
    };
    require_write(&p, verb)?;
    let record = match request.action {
        Action::Start => state.store.set_state(&name, DesiredState::Running)?,
        Action::Stop => state.store.set_state(&name, DesiredState::Stopped)?,
        Action::Restart => {
            if current.agent.spec.state == DesiredState::Stopped {
                return Err(ApiError::Conflict {
                    code: "stopped",
                    message: format!("agent {name:?} is stopped; start it instead"),
                });
            }
            state.store.request_restart(&name)?
        }
    };
    commit(&state, &name).await?;
    Ok(noted(StatusCode::ACCEPTED, record.agent, verb))
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

#[utoipa::path(get, path = "/v1/agents/{name}/logs", tag = "agents",
    params(("name" = String, Path), ("tail" = Option<u64>, Query), ("follow" = Option<bool>, Query), ("since" = Option<String>, Query, description = "a duration such as 10m, or an RFC 3339 time")),
    responses((status = 200, description = "the container's output", content_type = "text/plain", body = String), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/agents/{name}/logs`: the container's output as text.
pub async fn logs(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let record = found(&state, &p, &name)?;
    let Some(id) = record.agent.status.container_id else {
        return Err(ApiError::NotFound(format!(
            "agent {name:?} has no container yet"
        )));
    };
    let since = match query.since.as_deref() {
        None => None,
        Some(text) => Some(since_unix(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "since={text:?} is neither a duration such as 10m nor an RFC 3339 time"
            ))
        })?),
    };
    let place = query
        .follow
        .then(|| state.streams.acquire(&p.key_id))
        .transpose()?;
    let options = LogOptions {
        tail: query.tail,
        follow: query.follow,
        since,
    };
    let stream = state.orchestrator.logs(&id, options).map(move |chunk| {
        let _ = &place;
        chunk.map_err(|e| std::io::Error::other(e.to_string()))
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Unix seconds of `since`: a duration back from now, or an RFC 3339 time.
fn since_unix(text: &str) -> Option<i64> {
    let now = time::OffsetDateTime::now_utc();
    if let Ok(d) = humantime::parse_duration(text) {
        return Some((now - d).unix_timestamp());
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[utoipa::path(get, path = "/v1/agents/{name}/events", tag = "agents", params(("name" = String, Path)),
    responses((status = 200, body = EventList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/agents/{name}/events`: what the reconciler did to the agent and why, oldest first.
pub async fn events(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<EventList>, ApiError> {
    found(&state, &p, &name)?;
    Ok(Json(EventList {
        items: state.store.events(&name)?,
    }))
}

/// The body of `GET /v1/agents/{name}/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventList {
    /// Oldest first.
    pub items: Vec<crate::store::Event>,
}

/// The body of `GET /v1/audit`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub items: Vec<crate::store::AuditEntry>,
    /// Pass as `before` for the next page (absent on the last).
    pub next: Option<u64>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries per page (default 50, at most 1000).
    limit: Option<usize>,
    /// Only entries older than this id (the `next` of the previous page).
    before: Option<u64>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(("limit" = Option<usize>, Query), ("before" = Option<u64>, Query)),
    responses((status = 200, body = AuditPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
/// `GET /v1/audit`: newest first, for admins.
pub async fn audit(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    if p.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "only an admin key may read the audit log".into(),
        ));
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let items = state.store.audit_page(limit, query.before)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage { items, next }))
}

/// A parsed label selector.
#[derive(Debug, Default)]
struct Selector {
    terms: Vec<Term>,
}

#[derive(Debug)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, ApiError> {
        let mut terms = Vec::new();
        for raw in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let term = if let Some((k, v)) = raw.split_once("!=") {
                Term::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
                Term::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = raw.strip_prefix('!') {
                Term::Absent(k.trim().into())
            } else {
                Term::Exists(raw.into())
            };
            let key = match &term {
                Term::Equals(k, _) | Term::NotEquals(k, _) | Term::Exists(k) | Term::Absent(k) => k,
            };
            if key.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "label selector term {raw:?} has no key; use key=value, key!=value, key or !key"
                )));
            }
            terms.push(term);
        }
        Ok(Selector { terms })
    }

    fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn selectors_combine_terms() {
        let labels = BTreeMap::from([("team".to_string(), "research".to_string())]);
        let m = |s: &str| Selector::parse(s).unwrap().matches(&labels);
        assert!(m("team=research"));
        assert!(m("team==research"));
        assert!(!m("team=ops"));
        assert!(m("team!=ops"));
        assert!(m("team"));
        assert!(!m("!team"));
        assert!(!m("team=research,tier"));
        assert!(Selector::parse("=x").is_err());
    }
}
