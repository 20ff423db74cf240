//! A point in time as the API and the store write it: RFC 3339 in UTC on the wire, an
//! [`OffsetDateTime`] in memory. Read once where it enters (a request, a stored record),
//! so no code parses a time again and a value that is not a time never gets in.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time (`2026-12-06T21:45:59Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Now, to the second: the precision of every timestamp Hive writes for a record.
    pub fn now() -> Timestamp {
        let now = OffsetDateTime::now_utc();
        Timestamp(now.replace_nanosecond(0).unwrap_or(now))
    }

    /// The time `ms` milliseconds after the Unix epoch, if there is one.
    pub fn from_unix_ms(ms: i64) -> Option<Timestamp> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .map(Timestamp)
    }

    /// Reads RFC 3339 text; the error says what is expected without echoing the text.
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(Timestamp)
            .map_err(|_| "is not an RFC 3339 time such as 2026-01-02T03:04:05Z".to_string())
    }

    /// The time.
    pub fn get(self) -> OffsetDateTime {
        self.0
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Timestamp {
        Timestamp(t)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every OffsetDateTime from year 0 to 9999 formats; past that, say so rather
        // than fail the whole document.
        match self.0.format(&Rfc3339) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_reads_and_writes_rfc3339_and_refuses_anything_else() {
        let t: Timestamp = serde_json::from_str("\"2026-12-06T21:45:59Z\"").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-12-06T21:45:59Z\""
        );
        let offset: Timestamp = serde_json::from_str("\"2026-12-06T22:45:59+01:00\"").unwrap();
        assert_eq!(offset, t, "the same instant, whatever the offset");
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        assert!(!err.to_string().contains("yesterday"), "{err}");
        assert_eq!(Timestamp::now().get().nanosecond(), 0);
        assert_eq!(
            Timestamp::from_unix_ms(1_500).unwrap().to_string(),
            "1970-01-01T00:00:01.5Z"
        );
        assert!(Timestamp::from_unix_ms(i64::MAX).is_none());
    }
}
