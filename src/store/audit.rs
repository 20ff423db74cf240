//! The audit log: every accepted or refused mutation, keyed by a big-endian sequence
//! number, the newest [`AUDIT_KEEP`] kept.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Audit entries kept; older ones are dropped as new ones arrive.
pub const AUDIT_KEEP: u64 = 100_000;

/// One accepted or refused mutation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Sequence number, newest highest; `?before=` pages on it.
    pub id: u64,
    /// RFC 3339.
    pub time: String,
    /// The key's id, or "-" when no valid key was presented.
    pub key_id: String,
    /// The caller's owner ("-" when unknown).
    pub owner: String,
    /// create, apply, delete, start, stop, restart.
    pub verb: String,
    /// The agent's name ("-" when the request did not get as far as naming one).
    pub agent: String,
    /// accepted or refused.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many such requests this entry stands for: refusals of requests without a valid
    /// key are counted into one entry a minute, so a flood cannot push real entries out.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// How long unauthenticated refusals of one kind are counted into one audit entry.
const AUDIT_COALESCE: time::Duration = time::Duration::seconds(60);

impl Store {
    /// Appends an audit entry, giving it the next id, and drops the oldest beyond
    /// [`AUDIT_KEEP`]. Durable with the next flush.
    pub fn record_audit(&self, mut entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let next = match self.audit.last()? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default()) + 1,
            None => 1,
        };
        entry.id = next;
        let bytes = serde_json::to_vec(&entry).expect("an audit entry always serializes");
        self.audit.insert(next.to_be_bytes(), bytes)?;
        if next > AUDIT_KEEP {
            self.audit.remove((next - AUDIT_KEEP).to_be_bytes())?;
        }
        Ok(entry)
    }

    /// Records a refusal of a request without a valid key: counted into the newest entry
    /// if that is one of the same kind from the last minute, else appended.
    pub fn record_unauthenticated(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        {
            let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((k, v)) = self.audit.last()? {
                let mut last: AuditEntry =
                    serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                        name: "audit".into(),
                        source,
                    })?;
                let recent = time::OffsetDateTime::parse(
                    &last.time,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_ok_and(|t| time::OffsetDateTime::now_utc() - t < AUDIT_COALESCE);
                let same = last.key_id == entry.key_id
                    && last.verb == entry.verb
                    && last.status == entry.status
                    && last.reason == entry.reason;
                if recent && same {
                    last.count += 1;
                    let bytes =
                        serde_json::to_vec(&last).expect("an audit entry always serializes");
                    self.audit.insert(k, bytes)?;
                    return Ok(last);
                }
            }
        }
        self.record_audit(entry)
    }

    /// Up to `limit` audit entries older than `before` (all when None), newest first.
    pub fn audit_page(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let end = before.unwrap_or(u64::MAX).to_be_bytes();
        self.audit
            .range(..end)
            .rev()
            .take(limit)
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    name: "audit".into(),
                    source,
                })
            })
            .collect()
    }
}
