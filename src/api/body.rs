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

/// A check on the raw document before it is mapped onto its type, for refusals that
/// deserve a better answer than "unknown field".
pub trait Screen {
    fn screen(_document: &serde_json::Value) -> Result<(), ApiError> {
        Ok(())
    }
}

impl Screen for crate::agent::Agent {
    fn screen(document: &serde_json::Value) -> Result<(), ApiError> {
        crate::policy::screen(document).map_err(|invalid| ApiError::Refused {
            rule: "never".into(),
            invalid,
        })
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Screen> FromRequest<S> for Document<T> {
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
fn decode<T: DeserializeOwned + Screen>(format: Format, bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the body is empty".into()));
    }
    let value: serde_json::Value = match format {
        Format::Json => {
            serde_json::from_slice::<Strict>(bytes)
                .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?
                .0
        }
        Format::Yaml => {
            serde_yaml::from_slice::<Strict>(bytes)
                .map_err(|e| ApiError::BadRequest(format!("the body is not valid YAML: {e}")))?
                .0
        }
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a single object (a mapping)".into(),
        ));
    }
    T::screen(&value)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        // The path names the field at fault, an unknown one included.
        let field = e.path().to_string();
        ApiError::invalid(field, e.into_inner().to_string())
    })
}

/// A JSON value read strictly: a key given twice in one mapping is an error, not a
/// silent "last one wins" (which would let two readers see two different documents).
struct Strict(serde_json::Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON or YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| E::custom("numbers must be finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        <Strict as serde::Deserialize>::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(items.into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(out.into())
    }
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
