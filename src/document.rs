//! Reading JSON and YAML documents strictly, for the API and the command line alike:
//! one document or a stream of them (YAML `---` separators, or a JSON array), where a key
//! given twice in one mapping is an error rather than "last one wins"; and mapping a parsed
//! document onto its type ([`typed`]), naming the field at fault, never the value.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Parses one JSON document.
pub fn json(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| format!("not valid JSON: {e}"))
}

/// Parses one YAML document.
pub fn yaml(bytes: &[u8]) -> Result<Value, String> {
    serde_yaml::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| format!("not valid YAML: {e}"))
}

/// Parses a stream: YAML documents separated by `---` (JSON is YAML too), or a JSON
/// array of documents. Empty documents are skipped. The error names the document (from 1).
pub fn stream(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let trimmed = bytes
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .copied()
        .next();
    if trimmed == Some(b'[') {
        return match json(bytes)? {
            Value::Array(items) => Ok(items),
            other => Ok(vec![other]),
        };
    }
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_slice(bytes).enumerate() {
        let Strict(v) = Strict::deserialize(doc)
            .map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// A check on the raw document before it is mapped onto its type, for refusals that
/// deserve a better answer than "unknown field".
pub trait Screen {
    /// A refusal, naming the field (policy rule `never`).
    fn screen(_document: &serde_json::Value) -> Result<(), crate::agent::Invalid> {
        Ok(())
    }
}

impl Screen for crate::agent::Agent {
    fn screen(document: &serde_json::Value) -> Result<(), crate::agent::Invalid> {
        crate::agent::screen(document)
    }
}

/// Why a parsed document is not a `T`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypedError {
    /// It is not a mapping at all.
    #[error("a document must be an object (a mapping)")]
    NotAnObject,
    /// It asks for something never allowed (policy rule `never`).
    #[error("{0}")]
    Never(crate::agent::Invalid),
    /// A field is unknown or of the wrong shape.
    #[error("{0}")]
    Invalid(crate::agent::Invalid),
}

/// Maps one parsed document onto `T`, screening it first and naming the field at fault.
pub fn typed<T: DeserializeOwned + Screen>(value: Value) -> Result<T, TypedError> {
    if !value.is_object() {
        return Err(TypedError::NotAnObject);
    }
    T::screen(&value).map_err(TypedError::Never)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        // The path names the field at fault, an unknown one included.
        let field = crate::agent::shown_key(&e.path().to_string());
        TypedError::Invalid(crate::agent::Invalid::new(
            field,
            without_values(&e.into_inner().to_string()),
        ))
    })
}

/// A decoding error with the values a client sent taken out: the answer names the field
/// and what is wrong with it, never what was sent.
fn without_values(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    // serde quotes values as `value` or "value"; keep what it expected, drop what it got.
    for (intro, what) in [
        ("unknown variant `", "an unknown variant"),
        ("invalid type: string \"", "invalid type: a string"),
        ("invalid value: string \"", "invalid value: a string"),
        ("invalid value: integer `", "invalid value: an integer"),
        ("invalid type: integer `", "invalid type: an integer"),
        ("invalid type: floating point `", "invalid type: a number"),
        ("invalid value: floating point `", "invalid value: a number"),
    ] {
        if let Some(at) = rest.find(intro) {
            let after = &rest[at + intro.len()..];
            let close = if intro.ends_with('"') { '"' } else { '`' };
            if let Some(end) = after.find(close) {
                out.push_str(&rest[..at]);
                out.push_str(what);
                rest = &after[end + 1..];
                break;
            }
        }
    }
    out.push_str(rest);
    let mut shown: String = out.chars().take(300).collect();
    if out.chars().count() > 300 {
        shown.push_str("...");
    }
    shown
}

/// A JSON value read strictly: a key given twice in one mapping is an error, not a
/// silent "last one wins" (which would let two readers see two different documents).
pub struct Strict(pub serde_json::Value);

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

    #[test]
    fn streams_of_yaml_and_json_arrays() {
        let docs = stream(b"a: 1\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 2);
        let docs = stream(br#"[{"a": 1}, {"b": 2}]"#).unwrap();
        assert_eq!(docs.len(), 2);
        let err = stream(b"a: 1\n---\nb: [\n").unwrap_err();
        assert!(err.starts_with("document 2"), "{err}");
        assert!(stream(b"a: 1\na: 2\n").unwrap_err().contains("duplicate"));
    }
}
