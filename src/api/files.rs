//! `GET` and `PUT /v1/agents/{name}/files?path=/abs/path`: an agent's files, as
//! `kubectl cp` and `docker cp` move them, without the engine's socket. What may be read
//! or written, and by whom, is the service's (`service::files`).

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::auth::AuditMark;
use super::body::{read_limited, Query};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::Principal;
use crate::service::{Files, MAX_FILE_BYTES};

/// The media type of a tar, asked for with `Accept` and sent with `Content-Type`.
const TAR: &str = "application/x-tar";

/// Query of the files routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// An absolute path in the agent's container.
    path: String,
}

fn wants_tar(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.split(';').next().unwrap_or("").trim() == TAR)
        })
}

#[utoipa::path(get, path = "/v1/agents/{name}/files", operation_id = "readAgentFiles", tag = "agents",
    params(("name" = String, Path), ("path" = String, Query, description = "an absolute path in the agent's container")),
    responses((status = 200, description = "a regular file's bytes (application/octet-stream), or a tar of a directory (application/x-tar; always with Accept: application/x-tar)", content_type = "application/octet-stream", body = Vec<u8>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `GET /v1/agents/{name}/files?path=`: a file of the agent, or a tar of a directory.
pub async fn read(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<FilesQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tar = wants_tar(&headers, header::ACCEPT);
    let _place = state.streams.acquire(&p)?;
    Ok(
        match state
            .service
            .read_files(&p, &name, &query.path, tar, MAX_FILE_BYTES)
            .await?
        {
            Files::File(bytes) => {
                ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
            }
            Files::Tar(bytes) => ([(header::CONTENT_TYPE, TAR)], bytes).into_response(),
        },
    )
}

#[utoipa::path(put, path = "/v1/agents/{name}/files", operation_id = "writeAgentFiles", tag = "agents",
    params(("name" = String, Path), ("path" = String, Query, description = "the file to write, or with Content-Type application/x-tar the directory to unpack into")),
    request_body(content = Vec<u8>, description = "the file's bytes, or a tar of regular files and directories (no links, no .., at most 16 MiB)", content_type = "application/octet-stream"),
    responses((status = 204, description = "written"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `PUT /v1/agents/{name}/files?path=`: writes a file (raw body) or unpacks a tar.
pub async fn write(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(mark): Extension<AuditMark>,
    Path(name): Path<String>,
    Query(query): Query<FilesQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let tar = wants_tar(request.headers(), header::CONTENT_TYPE);
    let _place = state.streams.acquire(&p)?;
    let body = read_limited(request, MAX_FILE_BYTES).await?;
    mark.through(
        state
            .service
            .write_files_to_end(&p, &name, &query.path, body.to_vec(), tar)
            .await,
    )?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}
