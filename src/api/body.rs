//! The request-body extractor: a JSON or YAML document, at most [`MAX_BODY_BYTES`], with
//! syntax errors answered 400 (with line and column) and shape errors answered 422
//! naming the field, in the API's own error shape.

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest body the API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Query parameters, with bad ones answered in the API's error shape.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// A document sent as JSON or YAML, decoded into `T`.
pub struct Document<T>(pub T);

/// The body formats the API reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Document<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let format = format_of(req.headers().get(CONTENT_TYPE))?;
        let too_large = ApiError::PayloadTooLarge(MAX_BODY_BYTES);
        if let Some(len) = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        {
            if len > MAX_BODY_BYTES {
                return Err(too_large);
            }
        }
        let bytes = Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    too_large
                } else {
                    ApiError::BadRequest(format!("could not read the body: {e}"))
                }
            })?
            .to_bytes();
        decode(format, &bytes).map(Document)
    }
}

fn format_of(value: Option<&axum::http::HeaderValue>) -> Result<Format, ApiError> {
    const ACCEPTED: &str =
        "send Content-Type application/json, application/yaml, application/x-yaml or text/yaml";
    let Some(value) = value else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the request has no Content-Type; {ACCEPTED}"
        )));
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Ok(Format::Yaml),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other:?} is not accepted; {ACCEPTED}"
        ))),
    }
}

/// Parses the text, then maps it onto `T`, naming the field at fault.
fn decode<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the body is empty".into()));
    }
    let value: serde_json::Value = match format {
        Format::Json => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?,
        Format::Yaml => serde_yaml::from_slice(bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid YAML: {e}")))?,
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a single object (a mapping)".into(),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        // The path names the field at fault, an unknown one included.
        let field = e.path().to_string();
        ApiError::invalid(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Agent;

    fn invalid_field(format: Format, text: &str) -> String {
        match decode::<Agent>(format, text.as_bytes()) {
            Err(ApiError::Invalid(i)) => i.field,
            Err(other) => panic!("expected 422, got {other:?}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        assert_eq!(
            invalid_field(Format::Yaml, "spec: {image: x, privileged: true}"),
            "spec.privileged"
        );
        assert_eq!(
            invalid_field(Format::Json, r#"{"spec": {"image": "x"}, "extra": 1}"#),
            "extra"
        );
    }

    #[test]
    fn wrong_types_are_named_with_their_path() {
        assert_eq!(
            invalid_field(Format::Yaml, "spec: {image: x, state: Paused}"),
            "spec.state"
        );
        assert_eq!(
            invalid_field(Format::Yaml, "spec: {image: x, env: [a]}"),
            "spec.env"
        );
    }

    #[test]
    fn syntax_errors_are_400_with_a_position() {
        match decode::<Agent>(Format::Yaml, b"spec: {image: x\nmetadata: [") {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("line"), "{m}"),
            other => panic!("{other:?}"),
        }
        match decode::<Agent>(Format::Json, b"{\"spec\": ") {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("line 1 column"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
