//! The audit log: every accepted or refused mutation, keyed by a big-endian sequence
//! number, newest highest.
//!
//! What is kept is budgeted per principal, so that no key can push out another's entries:
//! each entry falls in one [`Budget`], and a budget past its size drops its own oldest
//! entries, never another budget's.
//! - Admins and Hive itself: the newest [`AUDIT_KEEP`] entries (refusals of other keys
//!   never evict them).
//! - Each other key's accepted mutations: the newest [`KEEP_PER_KEY`].
//! - Each key's refusals (and those of requests without a valid key, as one budget):
//!   the newest [`REFUSALS_PER_KEY`], and refusals of one key, verb and status within a
//!   minute are counted into one entry ([`AuditEntry::count`]), so a flood costs one
//!   entry a minute.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::agent::Timestamp;

/// Entries of admins and of Hive itself kept; older ones are dropped as new ones arrive.
pub const AUDIT_KEEP: usize = 100_000;
/// Accepted entries kept per other key.
pub const KEEP_PER_KEY: usize = 20_000;
/// Refusal entries kept per key (and for requests without a valid key).
pub const REFUSALS_PER_KEY: usize = 1_000;
/// How long refusals of one kind are counted into one entry.
const COALESCE: Duration = Duration::from_secs(60);

/// One accepted or refused mutation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Sequence number, newest highest; `?before=` pages on it.
    pub id: u64,
    /// When it happened.
    #[schema(value_type = String, format = DateTime)]
    pub time: Timestamp,
    /// The key's id, or "-" when no valid key was presented.
    pub key_id: String,
    /// The caller's owner ("-" when unknown).
    pub owner: String,
    /// The caller's role: admin, operator, viewer or system ("-" when unknown).
    #[serde(default = "unknown")]
    pub role: String,
    /// create, apply, delete, start, stop, restart, exec, ...
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
    /// What was done, where the verb alone does not say (an exec's command, exit code,
    /// bytes in and out and duration; never its input or output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How many refusals this entry stands for: refusals of one key, verb and status
    /// within a minute are counted into the first one (whose agent and reason it shows).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

fn unknown() -> String {
    "-".into()
}

/// Which share of the log an entry is kept in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Budget {
    /// Admins and Hive itself.
    Privileged,
    /// One key's accepted mutations.
    Accepted(String),
    /// One key's refusals ("-": requests without a valid key).
    Refused(String),
}

impl Budget {
    fn of(e: &AuditEntry) -> Budget {
        // Entries written before roles were recorded: the admin key and the manifests
        // directory by their ids.
        let privileged = match e.role.as_str() {
            "admin" | "system" => true,
            "-" => matches!(
                e.key_id.as_str(),
                crate::access::ADMIN_KEY_ID | crate::access::GITOPS_KEY_ID
            ),
            _ => false,
        };
        if privileged {
            Budget::Privileged
        } else if e.outcome == "refused" {
            Budget::Refused(e.key_id.clone())
        } else {
            Budget::Accepted(e.key_id.clone())
        }
    }

    fn keep(&self) -> usize {
        match self {
            Budget::Privileged => AUDIT_KEEP,
            Budget::Accepted(_) => KEEP_PER_KEY,
            Budget::Refused(_) => REFUSALS_PER_KEY,
        }
    }
}

/// The audit log's bookkeeping in memory: the ids in each budget, oldest first, and the
/// refusal entries still counting.
#[derive(Default)]
pub(super) struct AuditIndex {
    /// The id the next entry gets.
    next: u64,
    budgets: HashMap<Budget, VecDeque<u64>>,
    /// (key, verb, status) of a refusal entry still counting, with its id and start.
    counting: HashMap<(String, String, u16), (u64, Instant)>,
}

impl AuditIndex {
    /// The index of the entries in `tree`, read once when the store opens.
    pub(super) fn load(tree: &sled::Tree) -> Result<AuditIndex, StoreError> {
        let mut index = AuditIndex {
            next: 1,
            ..Default::default()
        };
        for kv in tree.iter() {
            let (k, v) = kv?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default());
            let entry: AuditEntry = decode(&v)?;
            index.next = index.next.max(id + 1);
            index
                .budgets
                .entry(Budget::of(&entry))
                .or_default()
                .push_back(id);
        }
        Ok(index)
    }
}

fn decode(bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        name: "audit".into(),
        source,
    })
}

impl Store {
    /// Appends an audit entry (a refusal may be counted into a recent one of its kind
    /// instead), giving it the next id, and drops the oldest entry of its budget beyond
    /// that budget's size. Durable with the next flush. Returns the entry as stored.
    pub fn record_audit(&self, mut entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.audit_index.lock().unwrap_or_else(|p| p.into_inner());
        let index = &mut *index;
        let budget = Budget::of(&entry);
        if let Budget::Refused(key) = &budget {
            let kind = (key.clone(), entry.verb.clone(), entry.status);
            if let Some((id, since)) = index.counting.get(&kind) {
                if since.elapsed() < COALESCE {
                    if let Some(bytes) = self.audit.get(id.to_be_bytes())? {
                        let mut counted = decode(&bytes)?;
                        counted.count += 1;
                        let bytes =
                            serde_json::to_vec(&counted).expect("an audit entry always serializes");
                        self.audit.insert(id.to_be_bytes(), bytes)?;
                        return Ok(counted);
                    }
                }
            }
            // Forget kinds that stopped counting, so the map stays small.
            if index.counting.len() > 4096 {
                index
                    .counting
                    .retain(|_, (_, since)| since.elapsed() < COALESCE);
            }
            let next = index.next;
            index.counting.insert(kind, (next, Instant::now()));
        }
        entry.id = index.next;
        let bytes = serde_json::to_vec(&entry).expect("an audit entry always serializes");
        self.audit.insert(entry.id.to_be_bytes(), bytes)?;
        index.next += 1;
        let keep = budget.keep();
        let ids = index.budgets.entry(budget).or_default();
        ids.push_back(entry.id);
        while ids.len() > keep {
            if let Some(old) = ids.pop_front() {
                self.audit.remove(old.to_be_bytes())?;
            }
        }
        Ok(entry)
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
            .map(|kv| decode(&kv?.1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, role: &str, outcome: &str, verb: &str) -> AuditEntry {
        AuditEntry {
            id: 0,
            time: Timestamp::now(),
            key_id: key.into(),
            owner: "o".into(),
            role: role.into(),
            verb: verb.into(),
            agent: "a".into(),
            outcome: outcome.into(),
            status: if outcome == "refused" { 403 } else { 200 },
            reason: None,
            detail: None,
            count: 1,
        }
    }

    #[test]
    fn a_keys_refusals_never_push_out_another_principals_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let admin = store
            .record_audit(entry("admin", "admin", "accepted", "apply"))
            .unwrap();
        let bobs = store
            .record_audit(entry("bob-1", "operator", "accepted", "apply"))
            .unwrap();
        // A viewer's flood of refusals, of many kinds: each kind counts into one entry a
        // minute, and the viewer's share never grows past its size.
        for i in 0..(3 * REFUSALS_PER_KEY) {
            store
                .record_audit(entry("view", "viewer", "refused", &format!("verb{i}")))
                .unwrap();
        }
        for _ in 0..500 {
            store
                .record_audit(entry("view", "viewer", "refused", "verb0"))
                .unwrap();
        }
        let all = store.audit_page(usize::MAX, None).unwrap();
        let viewers = all.iter().filter(|e| e.key_id == "view").count();
        assert_eq!(viewers, REFUSALS_PER_KEY);
        assert!(all.contains(&admin) && all.contains(&bobs), "kept");
        // The budgets are rebuilt from disk: a restart keeps counting the same shares.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            store
                .record_audit(entry("view", "viewer", "refused", &format!("again{i}")))
                .unwrap();
        }
        let all = store.audit_page(usize::MAX, None).unwrap();
        assert_eq!(
            all.iter().filter(|e| e.key_id == "view").count(),
            REFUSALS_PER_KEY
        );
        assert!(all.iter().any(|e| e.id == admin.id));
        let newest = all.iter().map(|e| e.id).max().unwrap();
        assert!(newest > bobs.id, "ids keep growing after a restart");
    }

    #[test]
    fn refusals_of_one_kind_count_into_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..5 {
            store
                .record_audit(entry("-", "-", "refused", "PUT /v1/agents/{name}"))
                .unwrap();
        }
        let all = store.audit_page(10, None).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].count, 5);
    }
}
