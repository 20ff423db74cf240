//! Agent records: the agent as the API shows it plus the controller's bookkeeping, and
//! every write the API and the controller make to them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Applied, Change, Store, StoreError};
use crate::agent::{now_rfc3339, Agent, AgentStatus, DesiredState, Phase};

/// An agent as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The agent, exactly as the API returns it.
    pub agent: Agent,
    /// Controller bookkeeping that is not part of the resource.
    #[serde(default)]
    pub internal: Internal,
}

/// What the controller must remember between passes that the resource does not show.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Internal {
    /// Restarts asked for through the `restart` action (a counter, so none is lost).
    pub restarts_requested: u64,
    /// Of those, how many the controller has carried out.
    pub restarts_done: u64,
    /// Times Hive itself started the current container after it had exited.
    pub repairs: u64,
}

impl Store {
    /// An agent's record, from memory.
    pub fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.snapshot().agents.get(name).map(|e| e.record.clone()))
    }

    /// Every record, sorted by name, from memory.
    pub fn list(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .snapshot()
            .agents
            .values()
            .map(|e| e.record.clone())
            .collect())
    }

    /// Creates a new agent (POST). The caller has validated it.
    pub fn create(&self, agent: Agent) -> Result<Record, StoreError> {
        let name = agent.metadata.name.clone();
        let (r, ()) = self.mutate(&name, |old| match old {
            Some(_) => Err(StoreError::AlreadyExists(name.clone())),
            None => Ok(Change::Put(Box::new(new_record(agent)), ())),
        })?;
        Ok(r.expect("a put leaves a record"))
    }

    /// Creates or replaces an agent's declared state (PUT). A resourceVersion in the body is
    /// a precondition. A spec identical to the stored one writes nothing. The agent's owner
    /// must be the stored one's, unless `take_over` names the stored owner (an admin taking
    /// the agent over, explicitly).
    pub fn apply(
        &self,
        agent: Agent,
        take_over: Option<&str>,
    ) -> Result<(Record, Applied), StoreError> {
        let name = agent.metadata.name.clone();
        let (r, applied) = self.mutate(&name, |old| {
            let Some(old) = old else {
                if let Some(given) = agent.metadata.resource_version.clone() {
                    return Err(StoreError::Conflict {
                        name: name.clone(),
                        given,
                        current: "none (the agent does not exist)".into(),
                    });
                }
                return Ok(Change::Put(Box::new(new_record(agent)), Applied::Created));
            };
            check_version(old, agent.metadata.resource_version.as_deref())?;
            if old.agent.is_terminating() {
                return Err(StoreError::Terminating(name.clone()));
            }
            let owner = old.agent.metadata.owner.as_deref().unwrap_or_default();
            if agent.metadata.owner.as_deref().is_some_and(|o| o != owner)
                && take_over != Some(owner)
            {
                return Err(StoreError::OwnedBy {
                    kind: "agent",
                    name: name.clone(),
                    owner: owner.to_string(),
                });
            }
            // A new owner relabels the container, so it counts as a change of spec.
            let spec_changed = old.agent.spec != agent.spec
                || (agent.metadata.owner.is_some()
                    && old.agent.metadata.owner != agent.metadata.owner);
            let meta = &old.agent.metadata;
            let meta_changed = meta.labels != agent.metadata.labels
                || meta.annotations != agent.metadata.annotations;
            if !spec_changed && !meta_changed {
                return Ok(Change::Keep(Applied::Unchanged));
            }
            let mut r = old.clone();
            r.agent.metadata.labels = agent.metadata.labels;
            r.agent.metadata.annotations = agent.metadata.annotations;
            if spec_changed {
                r.agent.metadata.generation += 1;
                r.agent.spec = agent.spec;
                if agent.metadata.owner.is_some() {
                    r.agent.metadata.owner = agent.metadata.owner;
                }
            }
            Ok(Change::Put(Box::new(r), Applied::Updated))
        })?;
        Ok((r.expect("apply leaves a record"), applied))
    }

    /// Sets spec.state (the start and stop actions); a change bumps the generation.
    pub fn set_state(&self, name: &str, state: DesiredState) -> Result<Record, StoreError> {
        self.change_existing(name, |r| {
            if r.agent.spec.state == state {
                return false;
            }
            r.agent.spec.state = state;
            r.agent.metadata.generation += 1;
            true
        })
    }

    /// Records a request to restart the agent's container once.
    pub fn request_restart(&self, name: &str) -> Result<Record, StoreError> {
        self.change_existing(name, |r| {
            r.internal.restarts_requested += 1;
            true
        })
    }

    /// Marks the agent for deletion (phase Terminating). Idempotent.
    pub fn mark_deleted(&self, name: &str) -> Result<Record, StoreError> {
        let (r, ()) = self.mutate(name, |old| {
            let Some(old) = old else {
                return Err(StoreError::NotFound(name.to_string()));
            };
            if old.agent.is_terminating() {
                return Ok(Change::Keep(()));
            }
            let mut r = old.clone();
            let now = now_rfc3339();
            r.agent.metadata.deletion_timestamp = Some(now.clone());
            r.agent.status.phase = Phase::Terminating;
            r.agent.status.message = Some("deleting its container".into());
            r.agent.status.last_transition_time = Some(now);
            Ok(Change::Put(Box::new(r), ()))
        })?;
        Ok(r.expect("a delete mark leaves a record"))
    }

    /// Writes the controller's view of one agent, if the agent is still the one observed
    /// (same uid). Writes nothing when nothing changed.
    pub fn update_status(
        &self,
        name: &str,
        uid: Uuid,
        status: AgentStatus,
        internal: Internal,
    ) -> Result<(), StoreError> {
        self.mutate(name, |old| {
            let Some(old) = old.filter(|r| r.agent.metadata.uid == Some(uid)) else {
                return Ok(Change::Keep(()));
            };
            let mut status = status;
            status.last_transition_time = if status.phase == old.agent.status.phase {
                old.agent.status.last_transition_time.clone()
            } else {
                Some(now_rfc3339())
            };
            // A restart asked for after the pass read the record stays asked for: the pass
            // may only mark as done what it saw requested.
            let internal = Internal {
                restarts_requested: old.internal.restarts_requested,
                restarts_done: internal.restarts_done.min(old.internal.restarts_requested),
                repairs: internal.repairs,
            };
            if old.agent.status == status && old.internal == internal {
                return Ok(Change::Keep(()));
            }
            let mut r = old.clone();
            r.agent.status = status;
            r.internal = internal;
            Ok(Change::Put(Box::new(r), ()))
        })?;
        Ok(())
    }

    /// Removes the record of a deleted agent once its containers are gone.
    pub fn remove(&self, name: &str, uid: Uuid) -> Result<(), StoreError> {
        self.mutate(name, |old| match old {
            Some(r) if r.agent.metadata.uid == Some(uid) && r.agent.is_terminating() => {
                self.events.remove(name)?;
                Ok(Change::Delete(()))
            }
            _ => Ok(Change::Keep(())),
        })?;
        Ok(())
    }

    /// Applies `f` to an existing, live agent; `f` says whether it changed anything.
    fn change_existing(
        &self,
        name: &str,
        f: impl FnOnce(&mut Record) -> bool,
    ) -> Result<Record, StoreError> {
        let (r, ()) = self.mutate(name, |old| {
            let Some(old) = old else {
                return Err(StoreError::NotFound(name.to_string()));
            };
            if old.agent.is_terminating() {
                return Err(StoreError::Terminating(name.to_string()));
            }
            let mut r = old.clone();
            Ok(if f(&mut r) {
                Change::Put(Box::new(r), ())
            } else {
                Change::Keep(())
            })
        })?;
        Ok(r.expect("an existing record stays"))
    }
}

fn new_record(mut agent: Agent) -> Record {
    let m = &mut agent.metadata;
    m.uid = Some(Uuid::new_v4());
    m.generation = 1;
    m.creation_timestamp = Some(now_rfc3339());
    m.deletion_timestamp = None;
    agent.status = AgentStatus {
        phase: Phase::Pending,
        message: Some("waiting for the controller".into()),
        last_transition_time: m.creation_timestamp.clone(),
        ..Default::default()
    };
    Record {
        agent,
        internal: Internal::default(),
    }
}

fn check_version(r: &Record, given: Option<&str>) -> Result<(), StoreError> {
    match (given, r.agent.metadata.resource_version.as_deref()) {
        (Some(given), Some(current)) if given != current => Err(StoreError::Conflict {
            name: r.agent.metadata.name.clone(),
            given: given.to_string(),
            current: current.to_string(),
        }),
        _ => Ok(()),
    }
}
