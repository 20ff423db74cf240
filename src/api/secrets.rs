//! `/v1/secrets`: named sets of values that agents take into their environment through
//! `spec.envFrom`. Write-only: answers name the keys, never the values, and neither logs
//! nor the audit log carry them. A secret belongs to the owner of the key that wrote it and
//! serves only that owner's agents. A change wakes the agents that use it, which are then
//! recreated with the new values.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::agents::require_write;
use super::body::{Document, Query, Screen};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::{Principal, Role};
use crate::agent::{validate_name, Invalid};
use crate::store::{Applied, Secret};

/// Keys a secret may hold.
const MAX_KEYS: usize = 128;
/// Bytes of keys and values together.
const MAX_BYTES: usize = 256 * 1024;

/// The body of `PUT /v1/secrets/{name}`: keys to values.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct SecretData(BTreeMap<String, String>);

impl Screen for SecretData {}

/// What the API shows of a secret: never its values.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretShown {
    pub name: String,
    pub owner: String,
    pub keys: Vec<String>,
    pub resource_version: String,
    pub creation_timestamp: String,
}

/// The body of `GET /v1/secrets`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretList {
    pub items: Vec<SecretShown>,
}

fn shown(s: &Secret) -> SecretShown {
    SecretShown {
        name: s.name.clone(),
        owner: s.owner.clone(),
        keys: s.data.keys().cloned().collect(),
        resource_version: s.resource_version.clone(),
        creation_timestamp: s.creation_timestamp.clone(),
    }
}

fn visible(state: &AppState, p: &Principal, name: &str) -> Result<Secret, ApiError> {
    validate_name(name).map_err(|m| {
        ApiError::NotFound(format!(
            "secret {:?} not found ({m})",
            crate::agent::shown_key(name)
        ))
    })?;
    state
        .store
        .secret(name)?
        .filter(|s| p.sees(&s.owner))
        .ok_or_else(|| ApiError::NotFound(format!("secret {name:?} not found")))
}

/// Query of `PUT /v1/secrets/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// The owner the secret is written for (admins only; default: the key's owner). Naming
    /// an owner other than the secret's takes it over.
    owner: Option<String>,
}

#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path), ("owner" = Option<String>, Query, description = "admins: the owner to write it for; naming another than the secret's takes it over")), request_body(content((SecretData = "application/json"), (SecretData = "application/yaml"))),
    responses((status = 200, body = SecretShown), (status = 201, body = SecretShown), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
/// `PUT /v1/secrets/{name}[?owner=]`. A secret of another owner is never written (409)
/// unless an admin names the owner: the secret's own (writing on its behalf) or another
/// (taking it over, which the answer's `Warning` header says).
pub async fn put(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<PutQuery>,
    Document(SecretData(data)): Document<SecretData>,
) -> Result<Response, ApiError> {
    require_write(&p, "write secrets for")?;
    validate_name(&name).map_err(|m| ApiError::Invalid(Invalid::new("name", m)))?;
    let owner = match query.owner {
        Some(o) if p.role == Role::Admin => {
            validate_name(&o).map_err(|m| ApiError::Invalid(Invalid::new("owner", m)))?;
            Some(o)
        }
        Some(o) if o != p.owner => {
            return Err(ApiError::Forbidden(
                "only an admin key may write a secret for another owner".into(),
            ))
        }
        other => other,
    };
    if data.len() > MAX_KEYS {
        return Err(ApiError::invalid(
            "data",
            format!("{} keys; at most {MAX_KEYS}", data.len()),
        ));
    }
    let bytes: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_BYTES {
        return Err(ApiError::invalid(
            "data",
            format!("{bytes} bytes; at most {MAX_BYTES}"),
        ));
    }
    for (k, v) in &data {
        crate::agent::validate_env_name(k).map_err(|m| ApiError::invalid(k.clone(), m))?;
        if v.contains('\0') {
            return Err(ApiError::invalid(
                k.clone(),
                "value must not contain a NUL byte",
            ));
        }
    }
    let in_use = || ApiError::Conflict {
        code: "already_exists",
        message: format!("the secret name {name:?} is in use; choose another"),
    };
    let current = state.store.secret(&name)?.map(|s| s.owner);
    if current.as_deref().is_some_and(|c| !p.sees(c)) {
        return Err(in_use());
    }
    // Naming an owner other than the secret's is an admin's explicit take-over.
    let take_over = match (&owner, &current) {
        (Some(o), Some(c)) if o != c => Some(c.clone()),
        _ => None,
    };
    let owner = owner.unwrap_or_else(|| p.owner.clone());
    let secret = Secret {
        name: name.clone(),
        owner: owner.clone(),
        data,
        resource_version: String::new(),
        creation_timestamp: String::new(),
    };
    let (stored, applied) = match state.store.put_secret(secret, take_over.as_deref()) {
        // Taken by another owner since it was read.
        Err(crate::store::StoreError::OwnedBy { .. }) if p.role != Role::Admin => {
            return Err(in_use())
        }
        other => other?,
    };
    if applied != Applied::Unchanged {
        state.store.flush().await?;
        // Wake the agents that use it: their containers are recreated with the new values
        // (or, after a take-over, the former owner's agents learn it is no longer theirs).
        for r in state.store.list()? {
            let a = &r.agent;
            let uses = a
                .spec
                .env_from
                .iter()
                .flatten()
                .any(|e| e.secret_ref == name);
            if uses {
                state.controller.enqueue(&a.metadata.name);
            }
        }
    }
    let status = if applied == Applied::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(shown(&stored))).into_response();
    if let Some(from) = take_over {
        super::agents::took_over(&mut response, "secret", &name, &from);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", responses((status = 200, body = SecretList), (status = 401, body = ErrorBody)))]
/// `GET /v1/secrets`: names and keys.
pub async fn list(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<SecretList>, ApiError> {
    let items: Vec<SecretShown> = state
        .store
        .secrets()?
        .iter()
        .filter(|s| p.sees(&s.owner))
        .map(shown)
        .collect();
    Ok(Json(SecretList { items }))
}

#[utoipa::path(get, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)), responses((status = 200, body = SecretShown), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/secrets/{name}`: its name and keys.
pub async fn get(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<SecretShown>, ApiError> {
    Ok(Json(shown(&visible(&state, &p, &name)?)))
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)), responses((status = 200, body = SecretShown), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `DELETE /v1/secrets/{name}`. Agents using it keep running; their status says the
/// secret is missing until it is written again.
pub async fn delete(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let secret = visible(&state, &p, &name)?;
    require_write(&p, "delete secrets for")?;
    state.store.delete_secret(&name, &secret.owner)?;
    state.store.flush().await?;
    Ok((StatusCode::OK, Json(shown(&secret))).into_response())
}
