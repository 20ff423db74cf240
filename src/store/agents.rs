//! Agent records: the agent as the API shows it plus the controller's bookkeeping, and
//! every write the API and the controller make to them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Applied, Change, Store, StoreError};
use crate::agent::{Agent, AgentStatus, DesiredState, Phase, Timestamp};

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
    /// RFC 3339 time of the agent's last activity: a write or action on it, a touch, or
    /// work of its own that Hive saw (None: its creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<Timestamp>,
    /// RFC 3339 time Hive stopped it for idleness (None: it is not idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Timestamp>,
    /// The CPU time (ns) its container had used when Hive last looked, and which container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seen: Option<(String, u64)>,
}

impl Record {
    /// The record as the controller converges it: an agent Hive stopped for idleness
    /// runs as Stopped, whatever its spec declares, until something wakes it.
    pub fn effective(&self) -> std::borrow::Cow<'_, Record> {
        if self.internal.idle_since.is_some() && self.agent.spec.state == DesiredState::Running {
            let mut r = self.clone();
            r.agent.spec.state = DesiredState::Stopped;
            std::borrow::Cow::Owned(r)
        } else {
            std::borrow::Cow::Borrowed(self)
        }
    }

    /// When Hive stops it for idleness if nothing happens before: running (phase Running),
    /// declared Running, not idle already, with `spec.lifecycle.idleTimeout`.
    pub fn idle_deadline(&self) -> Option<time::OffsetDateTime> {
        if self.agent.status.phase != Phase::Running {
            return None;
        }
        self.idle_clock()
    }

    /// When its idle timeout runs out, counted from its last activity, were it running.
    pub fn idle_clock(&self) -> Option<time::OffsetDateTime> {
        let timeout = self.agent.spec.lifecycle.idle_timeout()?;
        // Only what runs can idle, and only an agent that runs until stopped: a job
        // (restartPolicy Never or OnFailure) finishes rather than idles, and a container
        // Hive stopped would not be started again under its policy.
        if self.agent.spec.state != DesiredState::Running
            || self.agent.spec.restart_policy != crate::agent::RestartPolicy::Always
            || self.internal.idle_since.is_some()
        {
            return None;
        }
        let since = self
            .internal
            .last_activity
            .or(self.agent.metadata.creation_timestamp)?;
        crate::agent::later(since.get(), timeout)
    }

    /// When it is deleted for having finished (`spec.lifecycle.ttlAfterFinished`): its
    /// phase Succeeded or Failed, for the generation it runs, since the phase was reached.
    pub fn finished_deadline(&self) -> Option<time::OffsetDateTime> {
        let ttl = self.agent.spec.lifecycle.ttl_after_finished()?;
        let status = &self.agent.status;
        // Finished means its process exited (it has a container), not that it could not
        // run as declared (a missing secret or image fails it with no container), which a
        // fix brings back.
        let finished = matches!(status.phase, Phase::Succeeded | Phase::Failed)
            && status.container_id.is_some()
            && status.observed_generation == self.agent.metadata.generation;
        if !finished {
            return None;
        }
        crate::agent::later(status.last_transition_time?.get(), ttl)
    }
}

/// What a CPU reading of an agent's container means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuReading {
    /// It went up by more than idling would explain: the agent is active now.
    Worked,
    /// A new baseline (Hive (re)started the container, or the counter went back), which
    /// is not activity.
    Baseline,
}

/// What a write that counts as activity does to the bookkeeping: the idle clock starts
/// again, and an idle agent wakes. True when it woke one.
fn note_activity(r: &mut Record) -> bool {
    r.internal.last_activity = Some(Timestamp::now());
    r.internal.idle_since.take().is_some()
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
            note_activity(&mut r);
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

    /// Sets spec.state (the start and stop actions); a change bumps the generation. Either
    /// counts as activity: `start` resumes an agent stopped for idleness.
    pub fn set_state(&self, name: &str, state: DesiredState) -> Result<(Record, bool), StoreError> {
        self.change_existing(name, |r| {
            // Stopping an idle agent stops it as declared; only a start wakes it.
            let woke = note_activity(r) && state == DesiredState::Running;
            if r.agent.spec.state != state {
                r.agent.spec.state = state;
                r.agent.metadata.generation += 1;
            }
            (true, woke)
        })
    }

    /// Records a request to restart the agent's container once (activity, too).
    pub fn request_restart(&self, name: &str) -> Result<(Record, bool), StoreError> {
        self.change_existing(name, |r| {
            let woke = note_activity(r);
            r.internal.restarts_requested += 1;
            (true, woke)
        })
    }

    /// A heartbeat: the agent is active now (an idle one wakes). Written only where it
    /// tells something: an agent without an idle timeout, or touched within a tenth of
    /// it, is left as it is (heartbeats must not flood the store, the audit or watchers).
    pub fn touch(&self, name: &str) -> Result<(Record, bool), StoreError> {
        self.change_existing(name, |r| {
            if r.internal.idle_since.is_none() {
                let Some(timeout) = r.agent.spec.lifecycle.idle_timeout() else {
                    return (false, false);
                };
                let recent = r
                    .internal
                    .last_activity
                    .is_some_and(|t| time::OffsetDateTime::now_utc() - t.get() < timeout / 10);
                if recent {
                    return (false, false);
                }
            }
            let woke = note_activity(r);
            (true, woke)
        })
    }

    /// Marks the agent idle, if it is still the one observed and nothing happened since
    /// the pass looked (`last_activity` as it read it). True when it did.
    pub fn mark_idle(
        &self,
        name: &str,
        uid: Uuid,
        last_activity: Option<Timestamp>,
    ) -> Result<bool, StoreError> {
        let (_, marked) = self.mutate(name, |old| {
            let Some(old) = old.filter(|r| r.agent.metadata.uid == Some(uid)) else {
                return Ok(Change::Keep(false));
            };
            if old.internal.last_activity != last_activity
                || old.internal.idle_since.is_some()
                || old.agent.is_terminating()
            {
                return Ok(Change::Keep(false));
            }
            let mut r = old.clone();
            r.internal.idle_since = Some(Timestamp::now());
            Ok(Change::Put(Box::new(r), true))
        })?;
        Ok(marked)
    }

    /// Records the CPU time (ns) a container of the agent has used, what the idle check
    /// compares the next reading against, and whether the reading is activity.
    pub fn record_cpu(
        &self,
        name: &str,
        uid: Uuid,
        container: &str,
        cpu_ns: u64,
        reading: CpuReading,
    ) -> Result<(), StoreError> {
        self.mutate(name, |old| {
            let Some(old) = old.filter(|r| r.agent.metadata.uid == Some(uid)) else {
                return Ok(Change::Keep(()));
            };
            let seen = Some((container.to_string(), cpu_ns));
            if reading == CpuReading::Baseline && old.internal.cpu_seen == seen {
                return Ok(Change::Keep(()));
            }
            let mut r = old.clone();
            if reading == CpuReading::Worked {
                r.internal.last_activity = Some(Timestamp::now());
            }
            r.internal.cpu_seen = seen;
            Ok(Change::Put(Box::new(r), ()))
        })?;
        Ok(())
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
            let now = Timestamp::now();
            r.agent.metadata.deletion_timestamp = Some(now);
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
                old.agent.status.last_transition_time
            } else {
                Some(Timestamp::now())
            };
            // A restart asked for after the pass read the record stays asked for: the pass
            // may only mark as done what it saw requested.
            // The activity bookkeeping is the writers' and the idle checks': a pass never
            // moves it.
            let internal = Internal {
                restarts_requested: old.internal.restarts_requested,
                restarts_done: internal.restarts_done.min(old.internal.restarts_requested),
                repairs: internal.repairs,
                last_activity: old.internal.last_activity,
                idle_since: old.internal.idle_since,
                cpu_seen: old.internal.cpu_seen.clone(),
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

    /// Applies `f` to an existing, live agent; `f` says whether it changed anything, and
    /// what to tell the caller.
    fn change_existing<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Record) -> (bool, T),
    ) -> Result<(Record, T), StoreError> {
        let (r, t) = self.mutate(name, |old| {
            let Some(old) = old else {
                return Err(StoreError::NotFound(name.to_string()));
            };
            if old.agent.is_terminating() {
                return Err(StoreError::Terminating(name.to_string()));
            }
            let mut r = old.clone();
            let (changed, t) = f(&mut r);
            Ok(if changed {
                Change::Put(Box::new(r), t)
            } else {
                Change::Keep(t)
            })
        })?;
        Ok((r.expect("an existing record stays"), t))
    }
}

fn new_record(mut agent: Agent) -> Record {
    let m = &mut agent.metadata;
    m.uid = Some(Uuid::new_v4());
    m.generation = 1;
    m.creation_timestamp = Some(Timestamp::now());
    m.deletion_timestamp = None;
    agent.status = AgentStatus {
        phase: Phase::Pending,
        message: Some("waiting for the controller".into()),
        last_transition_time: m.creation_timestamp,
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
