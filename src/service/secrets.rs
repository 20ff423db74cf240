//! Secrets through the service: named sets of values that agents take into their
//! environment through `spec.envFrom`. Write-only: what is answered names the keys, never
//! the values. A secret belongs to the owner it was written for and serves only that
//! owner's agents; another owner's is never written unless an admin takes it over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{require_write, Service, ServiceError};
use crate::access::{Principal, Role};
use crate::agent::{shown_key, validate_env_name, validate_name, Invalid, Timestamp};
use crate::store::{Applied, Secret, StoreError};

/// Keys a secret may hold.
const MAX_KEYS: usize = 128;
/// Bytes of keys and values together.
const MAX_BYTES: usize = 256 * 1024;

/// What is shown of a secret: never its values.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretShown {
    pub name: String,
    pub owner: String,
    pub keys: Vec<String>,
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub creation_timestamp: Option<Timestamp>,
}

impl From<&Secret> for SecretShown {
    fn from(s: &Secret) -> Self {
        SecretShown {
            name: s.name.clone(),
            owner: s.owner.clone(),
            keys: s.data.keys().cloned().collect(),
            resource_version: s.resource_version.clone(),
            creation_timestamp: s.creation_timestamp,
        }
    }
}

/// What a secret write did.
#[derive(Clone, Debug)]
pub struct SecretWritten {
    pub shown: SecretShown,
    pub created: bool,
    /// The owner an admin took the secret over from, if it did.
    pub taken_over_from: Option<String>,
}

impl Service {
    /// A secret the caller may see; another owner's is not found.
    pub fn secret(&self, who: &Principal, name: &str) -> Result<Secret, ServiceError> {
        validate_name(name).map_err(|m| {
            ServiceError::NotFound(format!("secret {:?} not found ({m})", shown_key(name)))
        })?;
        self.store
            .secret(name)?
            .filter(|s| who.sees(&s.owner))
            .ok_or_else(|| ServiceError::NotFound(format!("secret {name:?} not found")))
    }

    /// The secrets the caller may see.
    pub fn secrets(&self, who: &Principal) -> Result<Vec<SecretShown>, ServiceError> {
        Ok(self
            .store
            .secrets()?
            .iter()
            .filter(|s| who.sees(&s.owner))
            .map(SecretShown::from)
            .collect())
    }

    /// Writes a secret for `owner` (admins only; default: the caller's owner). Naming an
    /// owner other than the secret's is an admin's explicit take-over.
    pub async fn put_secret(
        &self,
        who: &Principal,
        name: &str,
        data: BTreeMap<String, String>,
        owner: Option<String>,
    ) -> Result<SecretWritten, ServiceError> {
        let result = self.write_secret(who, name, data, owner).await;
        let status = match &result {
            Ok(w) if w.created => 201,
            _ => 200,
        };
        self.audit(who, "write secret", name, &result, status);
        result
    }

    /// Refuses a secret of `bytes` named `name` that would take `owner` past its quota of
    /// secrets (count or bytes; the secret it replaces does not count).
    fn check_secret_quota(
        &self,
        owner: &str,
        name: &str,
        bytes: usize,
    ) -> Result<(), ServiceError> {
        let quota = self.policy.secret_quota(owner);
        let (count, held) = self
            .store
            .secrets()?
            .iter()
            .filter(|s| s.owner == owner && s.name != name)
            .fold((0usize, 0i64), |(n, b), s| {
                let size: usize = s.data.iter().map(|(k, v)| k.len() + v.len()).sum();
                (n + 1, b + size as i64)
            });
        if count + 1 > quota.count {
            return Err(ServiceError::Quota {
                rule: format!("{}.secrets", quota.rule),
                message: format!(
                    "owner {owner:?} holds {count} secrets; the quota is {} (policy rule {}.secrets)",
                    quota.count, quota.rule
                ),
            });
        }
        if held + bytes as i64 > quota.bytes {
            return Err(ServiceError::Quota {
                rule: format!("{}.secretBytes", quota.rule),
                message: format!(
                    "owner {owner:?} would hold {} KiB of secrets; the quota is {} KiB (policy rule {}.secretBytes)",
                    (held + bytes as i64) >> 10,
                    quota.bytes >> 10,
                    quota.rule
                ),
            });
        }
        Ok(())
    }

    async fn write_secret(
        &self,
        who: &Principal,
        name: &str,
        data: BTreeMap<String, String>,
        owner: Option<String>,
    ) -> Result<SecretWritten, ServiceError> {
        self.writable()?;
        require_write(who, "write secrets")?;
        validate_name(name).map_err(|m| Invalid::new("name", m))?;
        let owner = match owner {
            Some(o) if who.role == Role::Admin => {
                validate_name(&o).map_err(|m| Invalid::new("owner", m))?;
                Some(o)
            }
            Some(o) if o != who.owner => {
                return Err(ServiceError::Forbidden(
                    "only an admin key may write a secret for another owner".into(),
                ))
            }
            other => other,
        };
        if data.len() > MAX_KEYS {
            return Err(ServiceError::invalid(
                "data",
                format!("{} keys; at most {MAX_KEYS}", data.len()),
            ));
        }
        let bytes: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_BYTES {
            return Err(ServiceError::invalid(
                "data",
                format!("{bytes} bytes; at most {MAX_BYTES}"),
            ));
        }
        for (k, v) in &data {
            validate_env_name(k).map_err(|m| Invalid::new(shown_key(k), m))?;
            if v.contains('\0') {
                return Err(ServiceError::invalid(
                    shown_key(k),
                    "value must not contain a NUL byte",
                ));
            }
        }
        // The owner's quota of secrets is checked and the secret written under the
        // admission lock, so that concurrent writes cannot pass it together.
        let _admission = self.admission.lock().await;
        let stored_owner = owner.clone().unwrap_or_else(|| who.owner.clone());
        self.check_secret_quota(&stored_owner, name, bytes)?;
        let in_use = || ServiceError::Conflict {
            code: "already_exists",
            message: format!("the secret name {name:?} is in use; choose another"),
        };
        let current = self.store.secret(name)?.map(|s| s.owner);
        if current.as_deref().is_some_and(|c| !who.sees(c)) {
            return Err(in_use());
        }
        // Naming an owner other than the secret's is an admin's explicit take-over.
        let take_over = match (&owner, &current) {
            (Some(o), Some(c)) if o != c => Some(c.clone()),
            _ => None,
        };
        let owner = owner.unwrap_or_else(|| who.owner.clone());
        let secret = Secret {
            name: name.to_string(),
            owner,
            data,
            resource_version: String::new(),
            creation_timestamp: None,
        };
        let (stored, applied) = match self.store.put_secret(secret, take_over.as_deref()) {
            // Taken by another owner since it was read.
            Err(StoreError::OwnedBy { .. }) if who.role != Role::Admin => return Err(in_use()),
            other => other?,
        };
        if applied != Applied::Unchanged {
            self.store.flush().await?;
            // Wake the agents that use it: their containers are recreated with the new
            // values (or, after a take-over, the former owner's agents learn it is no
            // longer theirs).
            for r in self.store.list()? {
                let uses = r
                    .agent
                    .spec
                    .env_from
                    .iter()
                    .flatten()
                    .any(|e| e.secret_ref == name);
                if uses {
                    self.controller.enqueue(&r.agent.metadata.name);
                }
            }
        }
        if let Some(from) = &take_over {
            tracing::warn!(secret = %name, previous_owner = %from, "an admin took over another owner's secret");
        }
        Ok(SecretWritten {
            shown: SecretShown::from(&stored),
            created: applied == Applied::Created,
            taken_over_from: take_over,
        })
    }

    /// Deletes a secret. Agents using it keep running; their status says the secret is
    /// missing until it is written again.
    pub async fn delete_secret(
        &self,
        who: &Principal,
        name: &str,
    ) -> Result<SecretShown, ServiceError> {
        let result = async {
            self.writable()?;
            let secret = self.secret(who, name)?;
            require_write(who, "delete secrets")?;
            self.store.delete_secret(name, &secret.owner)?;
            self.store.flush().await?;
            Ok(SecretShown::from(&secret))
        }
        .await;
        self.audit(who, "delete secret", name, &result, 200);
        result
    }
}
