//! The request-body extractor: a JSON or YAML document, at most [`MAX_BODY_BYTES`], with
//! syntax errors answered 400 (with line and column) and shape errors answered 422
//! naming the field, in the API's own error shape.

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

pub use crate::document::Screen;

use super::error::ApiError;

/// How long a client may take to send a body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The largest body the API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A body declared larger than its bound, but by at most this, is read and dropped before
/// the 413; a larger one is refused at once and the connection closed.
const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;

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

impl<S: Send + Sync, T: DeserializeOwned + Screen> FromRequest<S> for Document<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (format, bytes) = read_body(req).await?;
        decode(format, &bytes).map(Document)
    }
}

/// Every document of a body: a YAML stream (`---`) or a JSON array, parsed but not typed.
pub struct Documents(pub Vec<serde_json::Value>);

impl<S: Send + Sync> FromRequest<S> for Documents {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (_, bytes) = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest("the body is empty".into()));
        }
        crate::document::stream(&bytes)
            .map(Documents)
            .map_err(|e| ApiError::BadRequest(format!("the body has a bad {e}")))
    }
}

/// Checks the content type and reads the body, refusing more than [`MAX_BODY_BYTES`].
async fn read_body(req: Request) -> Result<(Format, axum::body::Bytes), ApiError> {
    let format = format_of(req.headers().get(CONTENT_TYPE))?;
    Ok((format, read_limited(req, MAX_BODY_BYTES).await?))
}

/// Reads a body of any type, refusing more than `max` bytes (413) and a client that
/// takes longer than 30 s to send it (408).
pub async fn read_limited(req: Request, max: usize) -> Result<axum::body::Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge(max);
    if let Some(len) = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > max {
            // Read (and drop) a moderately large body before answering, so that a client
            // still sending it gets the 413 rather than a broken connection.
            if len <= max.saturating_add(DRAIN_MAX_BYTES) {
                let mut body = req.into_body().into_data_stream();
                let drain = async {
                    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut body).await {}
                };
                let _ = tokio::time::timeout(BODY_TIMEOUT, drain).await;
            }
            return Err(too_large);
        }
    }
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), max).collect())
            .await
            .map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the body did not arrive within {}s",
                    BODY_TIMEOUT.as_secs()
                ))
            })?;
    Ok(collected
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large
            } else {
                ApiError::BadRequest(format!("could not read the body: {e}"))
            }
        })?
        .to_bytes())
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
fn decode<T: DeserializeOwned + Screen>(format: Format, bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the body is empty".into()));
    }
    let value = match format {
        Format::Json => crate::document::json(bytes),
        Format::Yaml => crate::document::yaml(bytes),
    }
    .map_err(|e| ApiError::BadRequest(format!("the body is {e}")))?;
    typed(value)
}

/// Maps one parsed document onto `T`, in the API's error shape.
pub fn typed<T: DeserializeOwned + Screen>(value: serde_json::Value) -> Result<T, ApiError> {
    crate::document::typed(value).map_err(ApiError::from)
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
            invalid_field(Format::Yaml, "spec: {image: x, bogus: true}"),
            "spec.bogus"
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
    fn rejected_values_are_not_echoed() {
        for text in [
            "spec: {image: x, state: SECRETVALUE}",
            "spec: {image: x, resources: {pids: SECRETVALUE}}",
        ] {
            match decode::<Agent>(Format::Yaml, text.as_bytes()) {
                Err(ApiError::Invalid(i)) => {
                    assert!(!i.message.contains("SECRETVALUE"), "{}", i.message)
                }
                other => panic!("{other:?}"),
            }
        }
        let long = format!(r#"{{"spec": {{"image": "x", "{}": 1}}}}"#, "k".repeat(5000));
        match decode::<Agent>(Format::Json, long.as_bytes()) {
            Err(ApiError::Invalid(i)) => {
                assert!(i.field.len() < 100 && i.message.len() < 400, "{i:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_are_refused_in_both_formats() {
        for (format, text) in [
            (Format::Yaml, "spec: {image: x}\nspec: {image: y}\n"),
            (Format::Json, r#"{"spec": {"image": "x", "image": "y"}}"#),
        ] {
            match decode::<Agent>(format, text.as_bytes()) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains("duplicate"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
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

    mod fuzz {
        //! A brief property test of the parser and validator: whatever the bytes, decoding
        //! and validation answer with a value or an error, never a panic; and what they
        //! accept survives a round trip unchanged.
        use super::*;
        use proptest::prelude::*;

        /// Agent-shaped documents with arbitrary values in the places clients control.
        fn document() -> impl Strategy<Value = String> {
            let word = "[ -~]{0,12}";
            // Mostly well-formed values, so that many documents pass and round-trip.
            let name = "[a-z0-9-]{1,12}";
            let image = "[a-z0-9][a-z0-9:/._-]{0,12}";
            let memory = "[0-9]{1,4}(Mi|Gi|M|k|)";
            let cpus = "(0\\.[0-9]{1,2}|[1-4]|[0-9]{2,3}m|[ -~]{0,3})";
            (
                name,
                image,
                memory,
                cpus,
                proptest::collection::vec(("[A-Za-z_][A-Za-z_0-9]{0,5}", word), 0..4),
                0u8..4,
            )
                .prop_map(|(name, image, memory, cpus, env, state)| {
                    let env: serde_json::Map<_, _> = env
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect();
                    let state = ["Running", "Stopped", "Paused", ""][state as usize];
                    serde_json::json!({
                        "apiVersion": "hive/v1", "kind": "Agent",
                        "metadata": {"name": name},
                        "spec": {"image": image, "env": env, "state": state,
                                 "resources": {"memory": memory, "cpus": cpus}}
                    })
                    .to_string()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                for format in [Format::Json, Format::Yaml] {
                    if let Ok(agent) = decode::<Agent>(format, &bytes) {
                        let _ = agent.validate();
                    }
                }
            }

            #[test]
            fn accepted_documents_round_trip(text in document()) {
                if let Ok(agent) = decode::<Agent>(Format::Json, text.as_bytes()) {
                    if agent.validate().is_ok() {
                        let again = serde_json::to_vec(&agent).unwrap();
                        let back = decode::<Agent>(Format::Json, &again).unwrap();
                        prop_assert_eq!(back, agent);
                    }
                }
            }
        }
    }
}
