//! `/v1/secrets`: handlers over the service's secrets (write-only values: answers name the
//! keys, never the values).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::AuditMark;
use super::body::{Document, Query, Screen};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::Principal;
use crate::service::SecretShown;

/// The body of `PUT /v1/secrets/{name}`: keys to values.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct SecretData(BTreeMap<String, String>);

impl Screen for SecretData {}

/// The body of `GET /v1/secrets`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretList {
    pub items: Vec<SecretShown>,
}

/// Query of `PUT /v1/secrets/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// The owner the secret is written for (admins only; default: the key's owner). Naming
    /// an owner other than the secret's takes it over.
    owner: Option<String>,
}

#[utoipa::path(put, path = "/v1/secrets/{name}", operation_id = "putSecret", tag = "secrets", params(("name" = String, Path), ("owner" = Option<String>, Query, description = "admins: the owner to write it for; naming another than the secret's takes it over")), request_body(content((SecretData = "application/json"), (SecretData = "application/yaml"))),
    responses((status = 200, body = SecretShown), (status = 201, body = SecretShown), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `PUT /v1/secrets/{name}[?owner=]`. A secret of another owner is never written (409)
/// unless an admin names the owner: the secret's own (writing on its behalf) or another
/// (taking it over, which the answer's `Warning` header says).
pub async fn put(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Path(name): Path<String>,
    Query(query): Query<PutQuery>,
    Document(SecretData(data)): Document<SecretData>,
) -> Result<Response, ApiError> {
    let written = mark.through(state.service.put_secret(&p, &name, data, query.owner).await)?;
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(written.shown)).into_response();
    if let Some(from) = written.taken_over_from {
        super::agents::took_over(&mut response, "secret", &name, &from);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/v1/secrets", operation_id = "listSecrets", tag = "secrets", responses((status = 200, body = SecretList), (status = 401, body = ErrorBody)))]
/// `GET /v1/secrets`: names and keys.
pub async fn list(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<SecretList>, ApiError> {
    Ok(Json(SecretList {
        items: state.service.secrets(&p)?,
    }))
}

#[utoipa::path(get, path = "/v1/secrets/{name}", operation_id = "getSecret", tag = "secrets", params(("name" = String, Path)), responses((status = 200, body = SecretShown), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/secrets/{name}`: its name and keys.
pub async fn get(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<SecretShown>, ApiError> {
    Ok(Json(SecretShown::from(&state.service.secret(&p, &name)?)))
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", operation_id = "deleteSecret", tag = "secrets", params(("name" = String, Path)), responses((status = 200, body = SecretShown), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `DELETE /v1/secrets/{name}`. Agents using it keep running; their status says the
/// secret is missing until it is written again.
pub async fn delete(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let shown = mark.through(state.service.delete_secret(&p, &name).await)?;
    Ok((StatusCode::OK, Json(shown)).into_response())
}
