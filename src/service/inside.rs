//! What every way into an agent (exec, files, port-forward) checks first, decided once:
//! whether the caller may reach inside the agent, which container that means, and what
//! an engine failure on the way in says to the client.

use uuid::Uuid;

use super::{Service, ServiceError};
use crate::access::{Principal, Role};
use crate::agent::Phase;
use crate::orchestrator::OrchestratorError;
use crate::store::Record;

impl Service {
    /// The agent `name` if the caller may reach inside it (`verb`: what for, in the
    /// refusal): admins any agent; operators their owner's, unless the policy's `exec`
    /// rule says no; viewers none.
    pub(super) fn reachable(
        &self,
        who: &Principal,
        name: &str,
        verb: &str,
    ) -> Result<Record, ServiceError> {
        let record = self.visible(who, name)?;
        let owner = record.agent.metadata.owner.clone().unwrap_or_default();
        match who.role {
            Role::Admin => {}
            Role::Operator => self.policy.may_exec(&owner).map_err(|rule| {
                ServiceError::Forbidden(format!(
                    "the policy does not let operators {verb} {owner:?}'s agents (policy rule {rule})"
                ))
            })?,
            Role::Viewer | Role::System => {
                return Err(ServiceError::Forbidden(format!(
                    "key {:?} has role {}, which may not {verb} agents",
                    who.key_id,
                    who.role.name()
                )))
            }
        }
        Ok(record)
    }
}

/// The agent's container and uid, whatever its state (its files can be read while it is
/// stopped), or 409 `no_container`.
pub(super) fn container(record: &Record, name: &str) -> Result<(String, Uuid), ServiceError> {
    match (&record.agent.status.container_id, record.agent.metadata.uid) {
        (Some(id), Some(uid)) => Ok((id.clone(), uid)),
        _ => Err(ServiceError::Conflict {
            code: "no_container",
            message: format!(
                "agent {name:?} has no container (phase {}): start it first",
                record.agent.status.phase
            ),
        }),
    }
}

/// The container of an agent that runs, or 409 `not_running`.
pub(super) fn running_container(
    record: &Record,
    name: &str,
) -> Result<(String, Uuid), ServiceError> {
    if record.agent.status.phase != Phase::Running {
        return Err(not_running(name));
    }
    container(record, name).map_err(|_| not_running(name))
}

fn not_running(name: &str) -> ServiceError {
    ServiceError::Conflict {
        code: "not_running",
        message: format!(
            "agent {name:?} is not running (stopped, paused or being replaced): start it first"
        ),
    }
}

/// An engine failure on the way into the agent `name`, in the client's terms.
pub(super) fn inside_error(name: &str, e: OrchestratorError) -> ServiceError {
    match e {
        OrchestratorError::NotFound(_) | OrchestratorError::NotRunning => not_running(name),
        OrchestratorError::NoSuchPath(_) => ServiceError::NotFound(e.to_string()),
        OrchestratorError::TooLarge { .. } => ServiceError::TooLarge(e.to_string()),
        OrchestratorError::Refused(m) => ServiceError::Conflict {
            code: "engine_refused",
            message: format!("the engine refused: {m}"),
        },
        OrchestratorError::Unsupported(m) => ServiceError::NotImplemented(m),
        other => ServiceError::Unavailable(other.to_string()),
    }
}
