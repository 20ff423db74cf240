//! Handlers for /v1/agents: each validates, writes the store durably, wakes the
//! controller, and answers with the stored object.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::body::{Document, Query};
use super::error::ApiError;
use super::AppState;
use crate::agent::{validate_name, Agent, DesiredState, API_VERSION, LIST_KIND};
use crate::orchestrator::LogOptions;
use crate::store::{Applied, Record};

/// Makes the store durable and wakes the controller for `name`; every acknowledged
/// write passes through here before its answer is sent.
async fn commit(state: &AppState, name: &str) -> Result<(), ApiError> {
    state.store.flush().await?;
    state.controller.enqueue(name);
    Ok(())
}

fn path_name(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|m| ApiError::NotFound(format!("agent {name:?} not found ({m})")))
}

/// `POST /v1/agents`
pub async fn create(
    State(state): State<AppState>,
    Document(agent): Document<Agent>,
) -> Result<Response, ApiError> {
    agent.validate()?;
    let record = state.store.create(agent)?;
    commit(&state, &record.agent.metadata.name).await?;
    Ok((StatusCode::CREATED, Json(record.agent)).into_response())
}

/// `PUT /v1/agents/{name}`: create or replace.
pub async fn apply(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Document(mut agent): Document<Agent>,
) -> Result<Response, ApiError> {
    if agent.metadata.name.is_empty() {
        agent.metadata.name = name.clone();
    } else if agent.metadata.name != name {
        return Err(ApiError::invalid(
            "metadata.name",
            format!(
                "{:?} differs from the name in the path, {name:?}",
                agent.metadata.name
            ),
        ));
    }
    agent.validate()?;
    let (record, applied) = state.store.apply(agent)?;
    let status = match applied {
        Applied::Created => StatusCode::CREATED,
        Applied::Updated | Applied::Unchanged => StatusCode::OK,
    };
    if applied != Applied::Unchanged {
        commit(&state, &name).await?;
    }
    Ok((status, Json(record.agent)).into_response())
}

/// Query of `GET /v1/agents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A label selector: `k=v`, `k!=v`, `k` or `!k`, comma-separated, all must hold.
    label: Option<String>,
}

/// The body of `GET /v1/agents`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentList {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<Agent>,
}

/// `GET /v1/agents`
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<AgentList>, ApiError> {
    let selector = match &query.label {
        Some(s) => Selector::parse(s)?,
        None => Selector::default(),
    };
    let items: Vec<Agent> = state
        .store
        .list()?
        .into_iter()
        .map(|r| r.agent)
        .filter(|a| selector.matches(&a.metadata.labels))
        .collect();
    Ok(Json(AgentList {
        api_version: API_VERSION,
        kind: LIST_KIND,
        items,
    }))
}

fn found(state: &AppState, name: &str) -> Result<Record, ApiError> {
    path_name(name)?;
    state
        .store
        .get(name)?
        .ok_or_else(|| ApiError::NotFound(format!("agent {name:?} not found")))
}

/// `GET /v1/agents/{name}`
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(found(&state, &name)?.agent))
}

/// `DELETE /v1/agents/{name}`: marks it Terminating; the controller removes the
/// container, then the record.
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    path_name(&name)?;
    let record = state.store.mark_deleted(&name)?;
    commit(&state, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(record.agent)).into_response())
}

/// Body of `POST /v1/agents/{name}/action`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    action: Action,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Start,
    Stop,
    Restart,
}

/// `POST /v1/agents/{name}/action`: start and stop set spec.state; restart asks for
/// one restart of the container.
pub async fn action(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Document(request): Document<ActionRequest>,
) -> Result<Response, ApiError> {
    path_name(&name)?;
    let record = match request.action {
        Action::Start => state.store.set_state(&name, DesiredState::Running)?,
        Action::Stop => state.store.set_state(&name, DesiredState::Stopped)?,
        Action::Restart => {
            if found(&state, &name)?.agent.spec.state == DesiredState::Stopped {
                return Err(ApiError::Conflict {
                    code: "stopped",
                    message: format!("agent {name:?} is stopped; start it instead"),
                });
            }
            state.store.request_restart(&name)?
        }
    };
    commit(&state, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(record.agent)).into_response())
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
}

/// `GET /v1/agents/{name}/logs`: the container's output as text.
pub async fn logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let record = found(&state, &name)?;
    let Some(id) = record.agent.status.container_id else {
        return Err(ApiError::NotFound(format!(
            "agent {name:?} has no container yet"
        )));
    };
    let options = LogOptions {
        tail: query.tail,
        follow: query.follow,
    };
    let stream = state
        .orchestrator
        .logs(&id, options)
        .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string())));
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
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
