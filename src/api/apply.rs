//! `POST /v1/apply`: many agents at once, like `kubectl apply`. Every document is checked
//! first (parse, validation, ownership, policy); if any fails nothing is written and the
//! answer names each bad document. Otherwise each is created or replaced and the answer
//! says, per agent, `created`, `configured` or `unchanged`. `?dryRun=true` answers the same
//! with a readable diff and writes nothing.

use std::collections::HashSet;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::agents::{commit_many, prepare, require_write, Admitted};
use super::auth::AuditNote;
use super::body::{typed, Documents, Query};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::Principal;
use crate::agent::Agent;
use crate::store::Applied;

/// Query of `POST /v1/apply`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
}

/// What applying one document did (or would do).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub name: String,
    /// created, configured or unchanged.
    pub result: &'static str,
    /// The agent's generation after the apply (the current one on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The stored resourceVersion after the apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// On a dry run: what would change, as `-`/`+` lines of YAML.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The body of a successful `POST /v1/apply`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyAnswer {
    pub dry_run: bool,
    pub items: Vec<ApplyResult>,
}

#[utoipa::path(post, path = "/v1/apply", tag = "agents", params(("dryRun" = Option<bool>, Query)),
    request_body(content((Vec<Agent> = "application/json"), (Vec<Agent> = "application/yaml")), description = "a JSON array, or YAML documents separated by ---"),
    responses((status = 200, body = ApplyAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
/// `POST /v1/apply[?dryRun=true]`
pub async fn apply_many(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(query): Query<ApplyQuery>,
    Documents(values): Documents,
) -> Result<Response, ApiError> {
    require_write(&p, "apply")?;
    let results = apply_documents(&state, &p, values, query.dry_run).await?;
    let changed: Vec<&str> = results
        .iter()
        .filter(|r| r.result != "unchanged")
        .map(|r| r.name.as_str())
        .collect();
    let agent = if changed.is_empty() {
        "-".into()
    } else {
        changed.join(",")
    };
    let mut response = Json(ApplyAnswer {
        dry_run: query.dry_run,
        items: results,
    })
    .into_response();
    response.extensions_mut().insert(AuditNote {
        verb: if query.dry_run {
            "apply (dry run)"
        } else {
            "apply"
        },
        agent,
    });
    Ok(response)
}

/// Checks every document, then (unless `dry_run`) creates or replaces each one, as
/// `p`. Nothing is written if any document fails. Used by the API and the manifests sync.
pub async fn apply_documents(
    state: &AppState,
    p: &Principal,
    values: Vec<Value>,
    dry_run: bool,
) -> Result<Vec<ApplyResult>, ApiError> {
    let total = values.len();
    let _admission = state.admission.lock().await;

    let mut ready: Vec<Admitted> = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (index, value) in values.into_iter().enumerate() {
        let hint = value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let checked = typed::<Agent>(value).and_then(|agent| {
            if !seen.insert(agent.metadata.name.clone()) {
                return Err(ApiError::invalid(
                    "metadata.name",
                    format!("{:?} appears twice in this apply", agent.metadata.name),
                ));
            }
            let pending: Vec<Agent> = ready.iter().map(|a| a.agent.clone()).collect();
            prepare(state, p, agent, &pending)
        });
        match checked {
            Ok(r) => ready.push(r),
            Err(e) => errors.push(e.for_document(index, hint)),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::InvalidDocuments {
            total,
            documents: errors,
        });
    }

    let mut results = Vec::new();
    let mut changed = Vec::new();
    for Admitted {
        agent,
        existing,
        take_over,
    } in ready
    {
        let name = agent.metadata.name.clone();
        if dry_run {
            let (result, diff) = would(&agent, existing.as_ref().map(|r| &r.agent));
            results.push(ApplyResult {
                name,
                result,
                generation: existing.map(|r| r.agent.metadata.generation),
                resource_version: None,
                diff,
            });
            continue;
        }
        let (record, applied) = state.store.apply(agent, take_over.as_deref())?;
        if let Some(from) = &take_over {
            tracing::warn!(agent = %name, previous_owner = %from, "an admin took over another owner's agent");
        }
        let result = match applied {
            Applied::Created => "created",
            Applied::Updated => "configured",
            Applied::Unchanged => "unchanged",
        };
        if applied != Applied::Unchanged {
            changed.push(name.clone());
        }
        results.push(ApplyResult {
            name,
            result,
            generation: Some(record.agent.metadata.generation),
            resource_version: record.agent.metadata.resource_version,
            diff: None,
        });
    }
    commit_many(state, &changed).await?;
    Ok(results)
}

/// What an apply of `agent` over `old` would do, with the diff.
fn would(agent: &Agent, old: Option<&Agent>) -> (&'static str, Option<String>) {
    let new_text = declared(agent);
    match old {
        None => ("created", Some(diff("", &new_text))),
        Some(old) => {
            let old_text = declared(old);
            if old_text == new_text {
                ("unchanged", None)
            } else {
                ("configured", Some(diff(&old_text, &new_text)))
            }
        }
    }
}

/// The declared part of an agent (what an apply can change), as YAML.
fn declared(a: &Agent) -> String {
    let m = &a.metadata;
    let mut meta = json!({"name": m.name});
    if let Some(owner) = &m.owner {
        meta["owner"] = json!(owner);
    }
    if !m.labels.is_empty() {
        meta["labels"] = json!(m.labels);
    }
    if !m.annotations.is_empty() {
        meta["annotations"] = json!(m.annotations);
    }
    let doc = json!({"metadata": meta, "spec": a.spec});
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// A line diff: unchanged lines indented, removed ones `- `, added ones `+ `.
pub fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence, table from the ends.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_mark_removed_and_added_lines() {
        let d = diff("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "  a\n- b\n+ B\n  c\n+ d\n");
        assert_eq!(diff("", "x\n"), "+ x\n");
    }
}
