//! The service: the one write path. Every mutation, whoever asks (the HTTP API, the
//! manifests directory, an MCP client), passes here: the caller's role, the owners, the
//! admission policy and quotas, the resourceVersion precondition, the store write, the
//! flush to disk, waking the controller, and the audit entry, accepted or refused. The
//! store publishes the watch event. The adapters (`api`, `gitops`) translate their
//! protocol to these calls and back; they hold no rules of their own.
//!
//! Errors are a domain type, [`ServiceError`]: each has a stable code and a kind
//! ([`ErrorKind`], whose one table gives the status the API answers with and the audit
//! log records); the service itself knows no statuses.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tracing::info;

use crate::access::Principal;
use crate::agent::{clip, Agent, Invalid, Timestamp};
use crate::controller;
use crate::lease::Leadership;
use crate::policy::{Policy, Refusal};
use crate::store::{AuditEntry, Store, StoreError};
use crate::wire::ErrorKind;

mod agents;
mod apply;
mod engine;
mod exec;
mod files;
mod forward;
mod inside;
mod secrets;

pub use crate::wire::{ApplyResult, Outcome};
pub use agents::{Action, Page, Put};
pub use apply::{diff, Prune};
pub use engine::{LogRequest, LogStream, Readiness, MAX_TAIL};
pub use exec::{MAX_EXEC_OUTPUT, MAX_EXEC_STDIN};
pub use files::{Files, MAX_FILE_BYTES};
pub use forward::Forwarded;
pub use secrets::{SecretShown, SecretWritten};

/// Why the service refused or failed a request: the same words whatever adapter asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// A parameter of the request (not of a document) is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A field is wrong.
    #[error("{0}")]
    Invalid(Invalid),
    /// The admission policy refused the agent as written.
    #[error("{invalid}")]
    Refused { rule: String, invalid: Invalid },
    /// The owner's quota would be exceeded.
    #[error("{message}")]
    Quota { rule: String, message: String },
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is stored (in use, stale, being deleted, owned by
    /// another, declared by the manifests directory).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Some documents of a bulk apply are bad; nothing was applied.
    #[error("{} of {total} documents cannot be applied; nothing was applied", .documents.len())]
    InvalidDocuments {
        total: usize,
        documents: Vec<DocumentError>,
    },
    /// What a read asked to continue from is no longer kept (a paged list's snapshot).
    #[error("{0}")]
    Gone(String),
    /// This Hive takes no writes now (it is a standby).
    #[error("{0}")]
    Unavailable(String),
    /// The backend cannot do this (yet); the message says where it can.
    #[error("{0}")]
    NotImplemented(String),
    /// More than Hive moves at once (413).
    #[error("{0}")]
    TooLarge(String),
    /// The store failed.
    #[error("{0}")]
    Internal(String),
}

/// Why one document of a bulk apply cannot be applied.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentError {
    /// Position in the body, from 0.
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub message: String,
}

impl ServiceError {
    /// A stable word for clients.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::BadRequest(_) => "bad_request",
            ServiceError::Invalid(_) => "invalid",
            ServiceError::Refused { .. } => "refused_by_policy",
            ServiceError::Quota { .. } => "quota_exceeded",
            ServiceError::Forbidden(_) => "forbidden",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict { code, .. } => code,
            ServiceError::InvalidDocuments { .. } => "invalid_documents",
            ServiceError::Gone(_) => "gone",
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::NotImplemented(_) => "not_implemented",
            ServiceError::TooLarge(_) => "too_large",
            ServiceError::Internal(_) => "internal",
        }
    }

    /// What kind of failure it is (its status comes from [`ErrorKind::status`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::BadRequest(_) => ErrorKind::BadRequest,
            ServiceError::Invalid(_) => ErrorKind::Invalid,
            ServiceError::Refused { .. } => ErrorKind::Refused,
            ServiceError::Quota { .. } => ErrorKind::Quota,
            ServiceError::Forbidden(_) => ErrorKind::Forbidden,
            ServiceError::NotFound(_) => ErrorKind::NotFound,
            ServiceError::Conflict { .. } => ErrorKind::Conflict,
            ServiceError::InvalidDocuments { .. } => ErrorKind::InvalidDocuments,
            ServiceError::Gone(_) => ErrorKind::Gone,
            ServiceError::Unavailable(_) => ErrorKind::Unavailable,
            ServiceError::NotImplemented(_) => ErrorKind::NotImplemented,
            ServiceError::TooLarge(_) => ErrorKind::PayloadTooLarge,
            ServiceError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The message as answered: prefixed with the field at fault where there is one.
    pub fn message(&self) -> String {
        match self {
            ServiceError::Invalid(i) | ServiceError::Refused { invalid: i, .. } => {
                format!("{}: {}", i.field, i.message)
            }
            other => other.to_string(),
        }
    }

    /// This error as one entry of a bulk apply's answer.
    pub fn for_document(&self, index: usize, name: Option<String>) -> DocumentError {
        let code = self.code();
        let (field, rule) = match self {
            ServiceError::Invalid(i) => (Some(i.field.clone()), None),
            ServiceError::Refused { rule, invalid } => {
                (Some(invalid.field.clone()), Some(rule.clone()))
            }
            ServiceError::Quota { rule, .. } => (None, Some(rule.clone())),
            _ => (None, None),
        };
        DocumentError {
            index,
            name,
            code,
            field,
            rule,
            message: self.message(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ServiceError::Invalid(Invalid::new(field, message))
    }
}

impl From<Invalid> for ServiceError {
    fn from(i: Invalid) -> Self {
        ServiceError::Invalid(i)
    }
}

impl From<Refusal> for ServiceError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid { rule, invalid } => ServiceError::Refused { rule, invalid },
            Refusal::Quota { rule, message } => ServiceError::Quota { rule, message },
        }
    }
}

impl From<crate::document::TypedError> for ServiceError {
    fn from(e: crate::document::TypedError) -> Self {
        match e {
            crate::document::TypedError::NotAnObject => ServiceError::invalid("", e.to_string()),
            crate::document::TypedError::Never(invalid) => ServiceError::Refused {
                rule: "never".into(),
                invalid,
            },
            crate::document::TypedError::Invalid(i) => ServiceError::Invalid(i),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound(_) => ServiceError::NotFound(message),
            StoreError::AlreadyExists(_) => ServiceError::Conflict {
                code: "already_exists",
                message,
            },
            StoreError::Conflict { .. } => ServiceError::Conflict {
                code: "conflict",
                message,
            },
            StoreError::Terminating(_) => ServiceError::Conflict {
                code: "terminating",
                message,
            },
            StoreError::OwnedBy { .. } => ServiceError::Conflict {
                code: "owned_by_another",
                message,
            },
            StoreError::Locked(_)
            | StoreError::Sled(_)
            | StoreError::Corrupt { .. }
            | StoreError::Flush(_) => {
                tracing::error!(error = %message, "store failure");
                ServiceError::Internal(message)
            }
        }
    }
}

/// What the service needs.
pub struct Service {
    store: Arc<Store>,
    policy: Arc<Policy>,
    controller: controller::Handle,
    /// Names no agent may have.
    reserved_names: Arc<Vec<String>>,
    /// Whether this Hive holds its instance (a standby stores nothing).
    leadership: watch::Receiver<Leadership>,
    instance: String,
    /// Held from an admission check to its write, so quotas cannot be raced past.
    admission: tokio::sync::Mutex<()>,
    /// Looks registries up before an image naming one is admitted.
    resolver: Arc<crate::resolve::Resolver>,
    /// The engine, for what clients read of it (logs, readiness).
    orchestrator: Arc<dyn crate::orchestrator::Orchestrator>,
}

/// What a service is made of (see [`Service::new`]).
pub struct Parts {
    pub store: Arc<Store>,
    pub policy: Arc<Policy>,
    pub controller: controller::Handle,
    /// Names no agent may have (`--reserved-names`).
    pub reserved_names: Vec<String>,
    pub leadership: watch::Receiver<Leadership>,
    pub instance: String,
    pub resolver: Arc<crate::resolve::Resolver>,
    pub orchestrator: Arc<dyn crate::orchestrator::Orchestrator>,
}

impl Service {
    pub fn new(parts: Parts) -> Service {
        let Parts {
            store,
            policy,
            controller,
            reserved_names,
            leadership,
            instance,
            resolver,
            orchestrator,
        } = parts;
        Service {
            orchestrator,
            store,
            policy,
            controller,
            reserved_names: Arc::new(reserved_names),
            leadership,
            instance,
            admission: tokio::sync::Mutex::new(()),
            resolver,
        }
    }

    /// Looks the registry of an agent's image up (see [`Policy::screen_registry`]),
    /// before the admission lock is taken: a slow lookup holds up its own request only.
    async fn screen_registry(&self, who: &Principal, agent: &Agent) -> Result<(), ServiceError> {
        self.screen_image(who, agent.metadata.owner.as_deref(), &agent.spec.image)
            .await
    }

    /// [`Service::screen_registry`] of an image for the owner a document names (or the
    /// caller's).
    async fn screen_image(
        &self,
        who: &Principal,
        owner: Option<&str>,
        image: &str,
    ) -> Result<(), ServiceError> {
        let owner = owner.unwrap_or(&who.owner);
        Ok(self
            .policy
            .screen_registry(owner, image, &self.resolver)
            .await?)
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The admission policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Why this Hive takes no writes now: another Hive holds its instance.
    pub fn standby_reason(&self) -> Option<String> {
        match &*self.leadership.borrow() {
            Leadership::Standby { holder } => Some(format!(
                "this Hive is a standby: instance {:?} is held by another Hive ({}) since {}; \
                 send writes to that one",
                self.instance,
                holder.holder,
                crate::lease::rfc3339_ms(holder.acquired_ms)
            )),
            _ => None,
        }
    }

    /// Refuses writes on a standby.
    fn writable(&self) -> Result<(), ServiceError> {
        match self.standby_reason() {
            Some(reason) => Err(ServiceError::Unavailable(reason)),
            None => Ok(()),
        }
    }

    /// Makes what was written durable and wakes the controller for `names`: every
    /// acknowledged write passes here before its answer is sent.
    async fn commit(&self, names: &[&str]) -> Result<(), ServiceError> {
        if names.is_empty() {
            return Ok(());
        }
        self.store.flush().await?;
        for name in names {
            self.controller.enqueue(name);
        }
        Ok(())
    }

    /// Records one mutation in the audit log (and the log), accepted or refused.
    fn audit<T>(
        &self,
        who: &Principal,
        verb: &str,
        agent: &str,
        result: &Result<T, ServiceError>,
        accepted_status: u16,
    ) {
        self.audit_detailed(who, verb, agent, result, accepted_status, None);
    }

    /// [`Service::audit`], saying what was done where the verb alone does not.
    fn audit_detailed<T>(
        &self,
        who: &Principal,
        verb: &str,
        agent: &str,
        result: &Result<T, ServiceError>,
        accepted_status: u16,
        detail: Option<String>,
    ) {
        let (status, reason) = match result {
            Ok(_) => (accepted_status, None),
            Err(e) => (e.kind().status(), Some(e.message())),
        };
        self.record(AuditEntry {
            id: 0,
            time: Timestamp::now(),
            key_id: who.key_id.clone(),
            owner: who.owner.clone(),
            role: who.role.name().into(),
            verb: verb.to_string(),
            agent: agent.to_string(),
            outcome: if result.is_ok() {
                "accepted"
            } else {
                "refused"
            }
            .into(),
            status,
            reason,
            detail,
            count: 1,
        });
    }

    /// Records a mutation refused before it reached the service: no valid key (`who` is
    /// None), or a body that could not be read. Refusals are counted into one entry a
    /// minute of each kind, per key (see [`crate::store`]'s audit budgets).
    pub fn audit_refusal(
        &self,
        who: Option<&Principal>,
        verb: &str,
        agent: &str,
        status: u16,
        reason: &str,
    ) {
        self.record(AuditEntry {
            id: 0,
            time: Timestamp::now(),
            key_id: who.map_or("-".into(), |p| p.key_id.clone()),
            owner: who.map_or("-".into(), |p| p.owner.clone()),
            role: who.map_or("-", |p| p.role.name()).into(),
            verb: verb.to_string(),
            agent: agent.to_string(),
            outcome: "refused".into(),
            status,
            reason: Some(reason.to_string()),
            detail: None,
            count: 1,
        });
    }

    /// Stores an entry, its fields cut short, and logs it (a flood of refusals once a
    /// minute of each kind, as it is stored).
    fn record(&self, mut entry: AuditEntry) {
        entry.verb = clip(&entry.verb, 128);
        entry.agent = clip(&entry.agent, 63);
        entry.reason = entry.reason.map(|r| clip(&r, 256));
        entry.detail = entry.detail.map(|d| clip(&d, 512));
        let stored = self.store.record_audit(entry.clone());
        match stored {
            Ok(e) if e.count > 1 => {}
            stored => {
                info!(
                    target: "hive::audit",
                    key_id = %entry.key_id, owner = %entry.owner, verb = %entry.verb, agent = %entry.agent,
                    outcome = %entry.outcome, status = entry.status,
                    reason = entry.reason.as_deref().unwrap_or(""),
                    "audit"
                );
                if let Err(e) = stored {
                    tracing::error!(error = %e, "could not store an audit entry");
                }
            }
        }
    }
}

/// Refuses viewers any change.
fn require_write(p: &Principal, verb: &str) -> Result<(), ServiceError> {
    if p.may_write() {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(format!(
            "key {:?} has role viewer, which may not {verb}",
            p.key_id
        )))
    }
}
