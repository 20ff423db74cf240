//! `GET /v1/audit`: every accepted or refused mutation, newest first, for admins.

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::body::Query;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::Principal;

/// The body of `GET /v1/audit`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(get, path = "/v1/audit", operation_id = "listAudit", tag = "audit", params(("limit" = Option<usize>, Query), ("before" = Option<u64>, Query)),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
/// `GET /v1/audit`: newest first, for admins.
pub async fn audit(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    if !p.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin key may read the audit log".into(),
        ));
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let items = state
        .store
        .audit_page(limit, query.before)
        .map_err(crate::service::ServiceError::from)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage { items, next }))
}
