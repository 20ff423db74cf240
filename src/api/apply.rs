//! `POST /v1/apply`: many agents at once, like `kubectl apply` (see the service for the
//! rules); `?dryRun=true` answers with a diff and writes nothing, `?prune=true` also
//! deletes the caller's agents an earlier `hive apply --prune` made from the same files
//! that these documents no longer declare.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::auth::AuditMark;
use super::body::{Documents, Query};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::Principal;
use crate::agent::Agent;
use crate::service::Prune;
use crate::wire::{ApplyAnswer, APPLY_SET};

/// Query of `POST /v1/apply`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
    /// Also delete the members of the apply set (of the owners in scope) that these
    /// documents do not declare.
    #[serde(default)]
    prune: bool,
    /// The apply set's name; required with `prune`, and stamped on every document.
    applyset: Option<String>,
    /// Owners an admin prunes across, comma-separated (required when a prune spans
    /// more than one owner).
    prune_owners: Option<String>,
}

#[utoipa::path(post, path = "/v1/apply", operation_id = "apply", tag = "agents", params(("dryRun" = Option<bool>, Query), ("prune" = Option<bool>, Query, description = "also delete the members of the apply set, of the owners in scope, that these documents do not declare"), ("applyset" = Option<String>, Query, description = "the apply set's name (required with prune), stamped on every document as hive-apply/set"), ("pruneOwners" = Option<String>, Query, description = "owners an admin prunes across, comma-separated")),
    request_body(content((Vec<Agent> = "application/json"), (Vec<Agent> = "application/yaml")), description = "a JSON array, or YAML documents separated by ---"),
    responses((status = 200, body = ApplyAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 408, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `POST /v1/apply[?dryRun=true][&prune=true]`
pub async fn apply(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Query(query): Query<ApplyQuery>,
    Documents(values): Documents,
) -> Result<Response, ApiError> {
    let prune =
        match (query.prune, query.applyset) {
            (false, _) => None,
            (true, None) => return Err(ApiError::BadRequest(
                "prune needs applyset=NAME: the name of the set of manifests these documents are; \
                 only its members are pruned (hive apply --prune sends the directory's name)"
                    .into(),
            )),
            (true, Some(set)) => {
                if set.is_empty() {
                    return Err(ApiError::BadRequest("applyset: is empty".into()));
                }
                crate::agent::validate_label_value(&set)
                    .map_err(|m| ApiError::BadRequest(format!("applyset: {m}")))?;
                let owners = query
                    .prune_owners
                    .iter()
                    .flat_map(|o| o.split(','))
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(|o| {
                        crate::agent::validate_name(o)
                            .map(|()| o.to_string())
                            .map_err(|m| ApiError::BadRequest(format!("pruneOwners: {m}")))
                    })
                    .collect::<Result<_, _>>()?;
                Some(Prune {
                    annotation: APPLY_SET,
                    set: Some(set),
                    owners,
                })
            }
        };
    let items = mark.through(state.service.apply(&p, values, query.dry_run, prune).await)?;
    Ok(Json(ApplyAnswer {
        dry_run: query.dry_run,
        items,
    })
    .into_response())
}
