//! The API's one error type: every failure a client can see, mapped to its HTTP status
//! in a single `match`, and rendered as `{"error": {"code", "message", "field"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::agent::{clip, Invalid};
use crate::service::{DocumentError, ServiceError};
use crate::wire::ErrorKind;

/// A failure answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body could not be parsed at all.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not JSON or YAML.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is larger than the API accepts.
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The document parsed but a field is wrong.
    #[error("{0}")]
    Invalid(Invalid),
    /// The admission policy refused the agent as written (422).
    #[error("{}", .invalid)]
    Refused { rule: String, invalid: Invalid },
    /// No credentials, or wrong ones.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// The owner's quota would be exceeded (403).
    #[error("{message}")]
    QuotaExceeded { rule: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is stored (exists, stale resourceVersion, being deleted).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Some documents of a bulk apply are bad; nothing was applied.
    #[error("{} of {total} documents cannot be applied; nothing was applied", .documents.len())]
    InvalidDocuments {
        total: usize,
        documents: Vec<DocumentError>,
    },
    /// A watch asked for changes older than those kept (410): list again.
    #[error("{0}")]
    Gone(String),
    /// The caller holds as many streams open as it may (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// The client did not send its body in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// A dependency (store or engine) cannot serve the request now.
    #[error("{0}")]
    Unavailable(String),
    /// More than Hive moves at once (413).
    #[error("{0}")]
    TooLarge(String),
    /// The backend cannot do this (yet) (501).
    #[error("{0}")]
    NotImplemented(String),
    /// A bug or a broken store.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// What kind of failure it is, and its stable word.
    fn kind_and_code(&self) -> (ErrorKind, &'static str) {
        match self {
            ApiError::BadRequest(_) => (ErrorKind::BadRequest, "bad_request"),
            ApiError::UnsupportedMediaType(_) => {
                (ErrorKind::UnsupportedMediaType, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge(_) => (ErrorKind::PayloadTooLarge, "payload_too_large"),
            ApiError::Invalid(_) => (ErrorKind::Invalid, "invalid"),
            ApiError::Refused { .. } => (ErrorKind::Refused, "refused_by_policy"),
            ApiError::Unauthorized(_) => (ErrorKind::Unauthorized, "unauthorized"),
            ApiError::Forbidden(_) => (ErrorKind::Forbidden, "forbidden"),
            ApiError::QuotaExceeded { .. } => (ErrorKind::Quota, "quota_exceeded"),
            ApiError::NotFound(_) => (ErrorKind::NotFound, "not_found"),
            ApiError::Conflict { code, .. } => (ErrorKind::Conflict, code),
            ApiError::InvalidDocuments { .. } => (ErrorKind::InvalidDocuments, "invalid_documents"),
            ApiError::Gone(_) => (ErrorKind::Gone, "gone"),
            ApiError::TooManyRequests(_) => (ErrorKind::TooManyRequests, "too_many_streams"),
            ApiError::RequestTimeout(_) => (ErrorKind::RequestTimeout, "request_timeout"),
            ApiError::Unavailable(_) => (ErrorKind::Unavailable, "unavailable"),
            ApiError::NotImplemented(_) => (ErrorKind::NotImplemented, "not_implemented"),
            ApiError::TooLarge(_) => (ErrorKind::PayloadTooLarge, "too_large"),
            ApiError::Internal(_) => (ErrorKind::Internal, "internal"),
        }
    }

    /// The status, from the one table ([`ErrorKind::status`]), and the stable word.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        let (kind, code) = self.kind_and_code();
        let status =
            StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, code)
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(Invalid::new(field, message))
    }
}

/// Every error answer: `{"error": {...}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable word: bad_request, invalid, refused_by_policy, unauthorized, forbidden,
    /// not_found, already_exists, conflict, terminating, quota_exceeded, gone, ...
    pub code: &'static str,
    /// What is wrong and what to do, in words.
    pub message: String,
    /// The field at fault, such as `spec.image`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The admission policy's rule that refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// For a bulk apply: each document that cannot be applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub documents: Option<Vec<DocumentError>>,
}

/// The message of an error response, for the audit log.
#[derive(Clone, Debug)]
pub struct AuditReason(pub String);

impl From<crate::document::TypedError> for ApiError {
    fn from(e: crate::document::TypedError) -> Self {
        match e {
            crate::document::TypedError::NotAnObject => ApiError::BadRequest(e.to_string()),
            crate::document::TypedError::Never(invalid) => ApiError::Refused {
                rule: "never".into(),
                invalid,
            },
            crate::document::TypedError::Invalid(i) => ApiError::Invalid(i),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> Self {
        ApiError::Invalid(i)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::BadRequest(m) => ApiError::BadRequest(m),
            ServiceError::Invalid(i) => ApiError::Invalid(i),
            ServiceError::Refused { rule, invalid } => ApiError::Refused { rule, invalid },
            ServiceError::Quota { rule, message } => ApiError::QuotaExceeded { rule, message },
            ServiceError::Forbidden(m) => ApiError::Forbidden(m),
            ServiceError::NotFound(m) => ApiError::NotFound(m),
            ServiceError::Conflict { code, message } => ApiError::Conflict { code, message },
            ServiceError::InvalidDocuments { total, documents } => {
                ApiError::InvalidDocuments { total, documents }
            }
            ServiceError::Gone(m) => ApiError::Gone(m),
            ServiceError::Unavailable(m) => ApiError::Unavailable(m),
            ServiceError::NotImplemented(m) => ApiError::NotImplemented(m),
            ServiceError::TooLarge(m) => ApiError::TooLarge(m),
            ServiceError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl ApiError {
    /// The status and the body every answer of this error carries (the HTTP API's, and
    /// MCP's refusals).
    pub fn body(&self) -> (StatusCode, ErrorBody) {
        let (status, code) = self.status_and_code();
        let mut detail = ErrorDetail {
            code,
            message: self.to_string(),
            field: None,
            rule: None,
            documents: None,
        };
        match self {
            ApiError::Invalid(i) => {
                detail.field = Some(i.field.clone());
                detail.message = format!("{}: {}", i.field, i.message);
            }
            ApiError::Refused { rule, invalid } => {
                detail.field = Some(invalid.field.clone());
                detail.rule = Some(rule.clone());
                detail.message = format!("{}: {}", invalid.field, invalid.message);
            }
            ApiError::QuotaExceeded { rule, .. } => detail.rule = Some(rule.clone()),
            ApiError::InvalidDocuments { documents, .. } => {
                detail.documents = Some(documents.clone())
            }
            _ => {}
        }
        // Whatever a message quotes, an answer stays short and printable.
        detail.message = clip(&detail.message, 1000);
        detail.field = detail.field.map(|f| clip(&f, 128));
        (status, ErrorBody { error: detail })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.body();
        let reason = body.error.message.clone();
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(AuditReason(reason));
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read, so this connection cannot carry another request.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
