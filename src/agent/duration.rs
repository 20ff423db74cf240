//! Durations a spec (or the policy) declares, as a type: read once from their text
//! (humantime: `90s`, `15m`, `2h`), shown back as written, bounded at admission
//! ([`MAX_DURATION`]), and added to times only by checked arithmetic ([`later`],
//! [`earlier`]), so that no value a client can write makes a pass panic.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration a spec may declare (`spec.ttl`, `spec.lifecycle.*`) and the
/// policy may set: past it, a deadline would serve no one.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest.
pub const MIN_DURATION: Duration = Duration::from_secs(1);

/// A declared duration: its text and its value.
#[derive(Clone, PartialEq, Eq)]
pub struct SpecDuration {
    text: String,
    value: Duration,
}

impl SpecDuration {
    /// Reads `text`; the error says what is wrong without echoing it.
    pub fn parse(text: &str) -> Result<SpecDuration, String> {
        let value = humantime::parse_duration(text)
            .map_err(|_| "is not a duration such as 90s, 15m or 2h".to_string())?;
        Ok(SpecDuration {
            text: text.to_string(),
            value,
        })
    }

    /// The value.
    pub fn get(&self) -> Duration {
        self.value
    }

    /// The text, as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it is within [`MIN_DURATION`]..=[`MAX_DURATION`].
    pub fn is_bounded(&self) -> bool {
        (MIN_DURATION..=MAX_DURATION).contains(&self.value)
    }
}

impl fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl Serialize for SpecDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for SpecDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SpecDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `t + d`, or None when that is past the last time there is (never, in effect).
pub fn later(t: time::OffsetDateTime, d: Duration) -> Option<time::OffsetDateTime> {
    t.checked_add(time::Duration::try_from(d).ok()?)
}

/// `t - d`, or None when that is before the first time there is.
pub fn earlier(t: time::OffsetDateTime, d: Duration) -> Option<time::OffsetDateTime> {
    t.checked_sub(time::Duration::try_from(d).ok()?)
}

/// The time left from `now` until `at` (zero when it is past).
pub fn until(now: time::OffsetDateTime, at: time::OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_text_and_times_never_overflow() {
        let d = SpecDuration::parse("90s").unwrap();
        assert_eq!((d.get(), d.as_str()), (Duration::from_secs(90), "90s"));
        assert!(d.is_bounded());
        let huge = SpecDuration::parse("100000y").unwrap();
        assert!(!huge.is_bounded());
        assert!(SpecDuration::parse("soon").unwrap_err().contains("90s"));
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(later(now, huge.get()), None);
        assert_eq!(earlier(now, huge.get()), None);
        assert_eq!(later(now, Duration::MAX), None);
        assert!(later(now, d.get()).unwrap() > now);
        assert_eq!(until(now, now - time::Duration::hours(1)), Duration::ZERO);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, "\"90s\"");
        assert_eq!(serde_json::from_str::<SpecDuration>(&json).unwrap(), d);
    }
}
