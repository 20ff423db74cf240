//! Secrets: named sets of values for agents' environments (`spec.envFrom`), write-only
//! through the API, each serving only its owner's agents.

use serde::{Deserialize, Serialize};

use super::{Applied, Store, StoreError};
use crate::agent::{Agent, Invalid, Timestamp};

/// What [`Store::env_from`] does with an `envFrom` secret that is not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingSecret {
    /// An error naming it: a workload is not made without its variables.
    Refuse,
    /// Skip it: admission counts what exists; the pass that makes the workload refuses.
    Skip,
}

/// A named set of values for agents' environments (`spec.envFrom`). Write-only through
/// the API: its values are never answered, logged or audited.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub name: String,
    /// Only agents of this owner may use it.
    pub owner: String,
    pub data: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Timestamp>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Store {
    /// Creates or replaces a secret. Returns it and whether it was new; an identical
    /// secret writes nothing. A secret of another owner is refused unless `take_over`
    /// names that owner (an admin taking it over, explicitly); the check and the write are
    /// one step under the write lock, so two owners racing for a name cannot both win.
    pub fn put_secret(
        &self,
        mut secret: Secret,
        take_over: Option<&str>,
    ) -> Result<(Secret, Applied), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.secret(&secret.name)?;
        if let Some(old) = &old {
            if old.owner != secret.owner && take_over != Some(old.owner.as_str()) {
                return Err(StoreError::OwnedBy {
                    kind: "secret",
                    name: secret.name.clone(),
                    owner: old.owner.clone(),
                });
            }
            if old.data == secret.data && old.owner == secret.owner {
                return Ok((old.clone(), Applied::Unchanged));
            }
        }
        secret.resource_version = (self.db.generate_id()? + 1).to_string();
        secret.creation_timestamp = old
            .as_ref()
            .map_or_else(|| Some(Timestamp::now()), |o| o.creation_timestamp);
        let bytes = serde_json::to_vec(&secret).expect("a secret always serializes");
        self.secrets.insert(secret.name.as_bytes(), bytes)?;
        let applied = if old.is_some() {
            Applied::Updated
        } else {
            Applied::Created
        };
        Ok((secret, applied))
    }

    pub fn secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.secrets
            .get(name)?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    name: format!("secret {name}"),
                    source,
                })
            })
            .transpose()
    }

    /// Every secret, sorted by name.
    pub fn secrets(&self) -> Result<Vec<Secret>, StoreError> {
        self.secrets
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    name: format!("secret {}", String::from_utf8_lossy(&k)),
                    source,
                })
            })
            .collect()
    }

    /// Deletes a secret if it is still `owner`'s (under the write lock, so a secret
    /// taken over meanwhile is not deleted by its former owner).
    pub fn delete_secret(&self, name: &str, owner: &str) -> Result<bool, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        match self.secret(name)? {
            Some(s) if s.owner != owner => Err(StoreError::OwnedBy {
                kind: "secret",
                name: name.to_string(),
                owner: s.owner,
            }),
            Some(_) => Ok(self.secrets.remove(name)?.is_some()),
            None => Ok(false),
        }
    }

    /// The variables an agent's `envFrom` secrets give it (before its own `env`). Only
    /// secrets of the agent's owner count; a missing one is refused or skipped as `missing`
    /// says.
    pub fn env_from(
        &self,
        agent: &Agent,
        missing: MissingSecret,
    ) -> Result<std::collections::BTreeMap<String, String>, Invalid> {
        let mut env = std::collections::BTreeMap::new();
        for (i, e) in agent.spec.env_from.iter().flatten().enumerate() {
            let secret = self
                .secret(&e.secret_ref)
                .ok()
                .flatten()
                .filter(|s| Some(s.owner.as_str()) == agent.metadata.owner.as_deref());
            match secret {
                Some(secret) => env.extend(secret.data),
                None if missing == MissingSecret::Refuse => {
                    return Err(Invalid::new(
                        format!("spec.envFrom[{i}].secretRef"),
                        format!(
                            "secret {:?} does not exist; create it with PUT /v1/secrets/{}",
                            e.secret_ref, e.secret_ref
                        ),
                    ))
                }
                None => {}
            }
        }
        Ok(env)
    }
}
