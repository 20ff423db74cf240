//! Reading JSON and YAML documents strictly, for the API and the command line alike:
//! one document or a stream of them (YAML `---` separators, or a JSON array), where a key
//! given twice in one mapping is an error rather than "last one wins".

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
