//! Amounts in the policy file (memory `512Mi`, CPUs `0.5` or `2`, bytes `16Mi`), parsed
//! once, when the file is read: a limit that does not parse refuses the file (naming the
//! field), and admission compares numbers, never text parsed again.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer};

/// How one kind of amount is written and read.
pub trait Unit {
    /// The amount `text` says, or why it says none.
    fn parse(text: &str) -> Result<i64, String>;
}

/// Memory in bytes, at least the engine's minimum (`512Mi`, `1Gi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory;
/// CPUs in billionths of a CPU (`0.5`, `2`, `500m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus;
/// Bytes (`16Mi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes;

impl Unit for Memory {
    fn parse(text: &str) -> Result<i64, String> {
        crate::agent::parse_memory(text)
    }
}
impl Unit for Cpus {
    fn parse(text: &str) -> Result<i64, String> {
        crate::agent::parse_cpus(text)
    }
}
impl Unit for Bytes {
    fn parse(text: &str) -> Result<i64, String> {
        crate::agent::parse_bytes(text)
    }
}

/// An amount as the file wrote it, and what it is worth.
#[derive(Clone, PartialEq, Eq)]
pub struct Amount<U> {
    text: String,
    value: i64,
    unit: PhantomData<U>,
}

impl<U: Unit> Amount<U> {
    /// The amount `text` says, or why it says none.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(Amount {
            value: U::parse(text)?,
            text: text.to_string(),
            unit: PhantomData,
        })
    }

    /// What it is worth (bytes, or billionths of a CPU).
    pub fn value(&self) -> i64 {
        self.value
    }

    /// As the file wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<U> fmt::Display for Amount<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<U> fmt::Debug for Amount<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl<'de, U: Unit> Deserialize<'de> for Amount<U> {
    /// A string, or a bare number (`cpus: 2`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            S(String),
            U(u64),
            F(f64),
        }
        let text = match Text::deserialize(d)? {
            Text::S(s) => s,
            Text::U(u) => u.to_string(),
            Text::F(f) => f.to_string(),
        };
        Amount::parse(&text).map_err(|e| serde::de::Error::custom(format!("{text:?} {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_amount_is_parsed_once_and_keeps_its_text() {
        let m = Amount::<Memory>::parse("512Mi").unwrap();
        assert_eq!((m.value(), m.text()), (512 << 20, "512Mi"));
        let c: Amount<Cpus> = serde_yaml::from_str("2").unwrap();
        assert_eq!((c.value(), c.to_string()), (2_000_000_000, "2".to_string()));
        let c: Amount<Cpus> = serde_yaml::from_str("\"500m\"").unwrap();
        assert_eq!(c.value(), 500_000_000);
        let err = serde_yaml::from_str::<Amount<Memory>>("lots").unwrap_err();
        assert!(err.to_string().contains("\"lots\""), "{err}");
        assert!(
            Amount::<Memory>::parse("1").is_err(),
            "below the engine's minimum"
        );
        assert_eq!(Amount::<Bytes>::parse("1").unwrap().value(), 1);
    }
}
