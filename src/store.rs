//! The desired state, on disk in sled: one record per agent, keyed by name.
//!
//! A record is the agent as the API shows it plus a little bookkeeping the controller
//! needs. Every write is a read-modify-write under one lock, so the API's spec writes and
//! the controller's status writes never lose each other. Writes that a client waits for
//! are flushed to disk before [`Store::flush`] returns; the API answers only after that.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::agent::{now_rfc3339, Agent, AgentStatus, DesiredState, Invalid, Phase};
use crate::orchestrator::ContainerSpec;

/// sled's page cache; the default of 1 GiB is far beyond what a fleet's records need.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

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

/// The key of the store's identity in the `meta` tree.
const STORE_ID: &str = "store-id";

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
    #[serde(default)]
    pub creation_timestamp: String,
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

/// Changes kept in memory for watches resuming from a resourceVersion.
const WATCH_HISTORY: usize = 1000;
/// Changes a watcher may fall behind by before it is told to list again.
const WATCH_BUFFER: usize = 1024;

/// One change of an agent, for watchers.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// The resourceVersion of the change.
    pub seq: u64,
    /// The agent after the change (before it, for DELETED).
    pub agent: Agent,
}

/// The latest changes.
struct History {
    events: std::collections::VecDeque<WatchEvent>,
    /// Changes at or before this version are no longer kept.
    horizon: u64,
    /// The newest change's version.
    last: u64,
}

/// Events kept per agent.
pub const EVENTS_KEPT: usize = 50;

/// A decision of the reconciler about one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub kind: String,
    /// One word: Created, Recreated, Started, Stopped, Repaired, Failed, BackOff, ...
    pub reason: String,
    pub message: String,
    /// The agent's generation when it happened.
    pub generation: u64,
    /// How often it happened in a row.
    pub count: u32,
    pub first_time: String,
    pub last_time: String,
}

/// An event to record.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub generation: u64,
}

/// What a PUT did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (most likely another Hive) holds the store.
    #[error("the store at {0} is locked by another process (is another hive running with this --data-dir?)")]
    Locked(PathBuf),
    /// sled failed.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be decoded.
    #[error("store: record {name:?} is unreadable: {source}")]
    Corrupt {
        name: String,
        source: serde_json::Error,
    },
    /// Writes could not be made durable.
    #[error("store: flushing to disk failed: {0}")]
    Flush(String),
    /// No agent by that name.
    #[error("agent {0:?} not found")]
    NotFound(String),
    /// An agent by that name exists already.
    #[error("agent {0:?} already exists")]
    AlreadyExists(String),
    /// The agent is being deleted and cannot be changed.
    #[error("agent {0:?} is being deleted; wait until it is gone")]
    Terminating(String),
    /// The object belongs to another owner, and the write did not take it over.
    #[error("{kind} {name:?} belongs to owner {owner:?}; a write of another owner is never applied to it (an admin may write it on that owner's behalf by naming the owner, or take it over by naming another)")]
    OwnedBy {
        kind: &'static str,
        name: String,
        owner: String,
    },
    /// The resourceVersion precondition failed.
    #[error("agent {name:?} has resourceVersion {current}, not {given}: it changed since it was read; get it again and reapply")]
    Conflict {
        name: String,
        given: String,
        current: String,
    },
}

/// The agents' desired state and last observed status.
pub struct Store {
    db: sled::Db,
    agents: sled::Tree,
    /// Audit entries keyed by a big-endian sequence number.
    audit: sled::Tree,
    /// Secrets by name. Values never leave the store but into containers' environments.
    secrets: sled::Tree,
    /// The reconciler's recent decisions per agent, by name.
    events: sled::Tree,
    /// Changes for watchers.
    changes: tokio::sync::broadcast::Sender<WatchEvent>,
    /// The latest changes, for watches that resume from a resourceVersion.
    history: Mutex<History>,
    /// Serializes read-modify-write cycles. Never held across an await.
    write: Mutex<()>,
    /// Requests for a flush, served by one flusher thread (None once dropping).
    flushes: Option<mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>>,
    /// The flusher thread, joined on drop so that the store's lock is released.
    flusher: Option<std::thread::JoinHandle<()>>,
    /// This store's identity, made with it and stamped on every container it declares.
    id: String,
}

/// What a read-modify-write decided, with what it tells its caller.
enum Change<T> {
    /// Store this record.
    Put(Box<Record>, T),
    /// Delete the record.
    Delete(T),
    /// Write nothing.
    Keep(T),
}

impl Store {
    /// Opens (creating if needed) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked(path.clone())
                }
                _ => StoreError::Sled(e),
            })?;
        let agents = db.open_tree("agents")?;
        let audit = db.open_tree("audit")?;
        let secrets = db.open_tree("secrets")?;
        let events = db.open_tree("events")?;
        let meta = db.open_tree("meta")?;
        let id = match meta.get(STORE_ID)? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = Uuid::new_v4().simple().to_string();
                meta.insert(STORE_ID, id.as_bytes())?;
                db.flush()?;
                id
            }
        };
        let (flushes, requests) = mpsc::unbounded_channel();
        let flusher_db = db.clone();
        let flusher = std::thread::Builder::new()
            .name("hive-store-flush".into())
            .spawn(move || group_commit(flusher_db, requests))
            .map_err(|e| StoreError::Flush(format!("cannot start the flusher: {e}")))?;
        // Changes before now are not in memory: a watch must start from here or later.
        let newest = agents
            .iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| serde_json::from_slice::<Record>(&v).ok())
            .filter_map(|r| r.agent.metadata.resource_version?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let history = Mutex::new(History {
            events: std::collections::VecDeque::new(),
            horizon: newest,
            last: newest,
        });
        let (changes, _) = tokio::sync::broadcast::channel(WATCH_BUFFER);
        Ok(Store {
            changes,
            history,
            db,
            agents,
            audit,
            secrets,
            events,
            write: Mutex::new(()),
            flushes: Some(flushes),
            flusher: Some(flusher),
            id,
        })
    }

    /// This store's identity: containers it declared carry it, so that a Hive never
    /// takes another store's containers for its own.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Makes every write so far durable. Concurrent callers share one fsync (group
    /// commit): a caller waits for the first flush that starts after it asked.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.flushes
            .as_ref()
            .and_then(|f| f.send(tx).ok())
            .ok_or_else(|| StoreError::Flush("the store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Flush("the flusher stopped".into()))?
            .map_err(StoreError::Flush)
    }

    /// True while the store can be read.
    pub fn is_healthy(&self) -> bool {
        self.agents.first().is_ok()
    }

    pub fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
        self.agents.get(name)?.map(|v| decode(name, &v)).transpose()
    }

    /// Every record, sorted by name.
    pub fn list(&self) -> Result<Vec<Record>, StoreError> {
        self.agents
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
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

    /// Records what the reconciler did to an agent, and why. A repeat of the last event
    /// (same reason and message) counts up instead of adding; at most [`EVENTS_KEPT`] stay.
    pub fn record_event(&self, agent: &str, event: NewEvent) -> Result<(), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut events = self.events(agent)?;
        let now = now_rfc3339();
        match events.last_mut() {
            Some(last) if last.reason == event.reason && last.message == event.message => {
                last.count += 1;
                last.last_time = now;
            }
            _ => events.push(Event {
                kind: event.kind.into(),
                reason: event.reason.into(),
                message: event.message,
                generation: event.generation,
                count: 1,
                first_time: now.clone(),
                last_time: now,
            }),
        }
        let excess = events.len().saturating_sub(EVENTS_KEPT);
        events.drain(..excess);
        let bytes = serde_json::to_vec(&events).expect("events always serialize");
        self.events.insert(agent.as_bytes(), bytes)?;
        Ok(())
    }

    /// An agent's recent events, oldest first.
    pub fn events(&self, agent: &str) -> Result<Vec<Event>, StoreError> {
        self.events
            .get(agent)?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    name: format!("events of {agent}"),
                    source,
                })
            })
            .transpose()
            .map(Option::unwrap_or_default)
    }

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
            .map_or_else(now_rfc3339, |o| o.creation_timestamp.clone());
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

    /// The container an agent asks for, its `envFrom` secrets resolved (its own `env`
    /// wins on a clash). A missing secret, or another owner's, is an error naming it.
    pub fn container_spec(&self, agent: &Agent) -> Result<ContainerSpec, Invalid> {
        let mut spec = agent.container_spec()?;
        let mut env = self.env_from(agent, true)?;
        env.extend(std::mem::take(&mut spec.env.0));
        spec.env.0 = env;
        Ok(spec)
    }

    /// The variables an agent's `envFrom` secrets give it (before its own `env`). Only
    /// secrets of the agent's owner count; with `strict`, a missing one is an error naming
    /// it, else it is skipped.
    pub fn env_from(
        &self,
        agent: &Agent,
        strict: bool,
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
                None if strict => {
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

    /// Tells watchers of a change and keeps it in the history (called under the write lock,
    /// so changes are published in the order they were stored).
    fn publish(&self, kind: &'static str, seq: u64, agent: Agent) {
        let event = WatchEvent { kind, seq, agent };
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.events.push_back(event.clone());
        if h.events.len() > WATCH_HISTORY {
            if let Some(dropped) = h.events.pop_front() {
                h.horizon = dropped.seq;
            }
        }
        h.last = seq;
        // No receivers is fine.
        let _ = self.changes.send(event);
    }

    /// Starts a watch: the changes after `since` (None: from now), and a receiver of those
    /// to come, with nothing missed or repeated between them. `Err(horizon)` when `since`
    /// is older than the history kept: list again.
    pub fn watch(
        &self,
        since: Option<u64>,
    ) -> Result<
        (
            Vec<WatchEvent>,
            tokio::sync::broadcast::Receiver<WatchEvent>,
        ),
        u64,
    > {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.changes.subscribe();
        let past = match since {
            None => Vec::new(),
            Some(v) if v < h.horizon => return Err(h.horizon),
            Some(v) => h.events.iter().filter(|e| e.seq > v).cloned().collect(),
        };
        Ok((past, rx))
    }

    /// The resourceVersion of the newest change (what a list reflects).
    pub fn current_version(&self) -> u64 {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).last
    }

    /// Runs one read-modify-write of `name` under the write lock, stamping a fresh
    /// resourceVersion on what it puts. Returns the record as it now stands.
    fn mutate<T>(
        &self,
        name: &str,
        f: impl FnOnce(Option<&Record>) -> Result<Change<T>, StoreError>,
    ) -> Result<(Option<Record>, T), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.get(name)?;
        match f(old.as_ref())? {
            Change::Keep(t) => Ok((old, t)),
            Change::Delete(t) => {
                self.agents.remove(name)?;
                if let Some(mut old) = old {
                    // As in Kubernetes, the deleted object carries the deletion's version.
                    let seq = self.db.generate_id()? + 1;
                    old.agent.metadata.resource_version = Some(seq.to_string());
                    self.publish("DELETED", seq, old.agent);
                }
                Ok((None, t))
            }
            Change::Put(mut r, t) => {
                let seq = self.db.generate_id()? + 1;
                r.agent.metadata.resource_version = Some(seq.to_string());
                let bytes = serde_json::to_vec(&r).expect("a record always serializes");
                self.agents.insert(name, bytes)?;
                let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
                self.publish(kind, seq, r.agent.clone());
                Ok((Some(*r), t))
            }
        }
    }
}

impl Drop for Store {
    /// Ends the flusher and waits for it, so that the store can be opened again at once.
    fn drop(&mut self) {
        self.flushes.take();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

/// The flusher: takes every waiting request, fsyncs once, answers them all, repeats.
/// (sled's own `flush_async` was seen to hang under concurrent callers.) Ends when the
/// store is dropped.
fn group_commit(
    db: sled::Db,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = requests.blocking_recv() {
        let mut waiters = vec![first];
        while let Ok(more) = requests.try_recv() {
            waiters.push(more);
        }
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for w in waiters {
            let _ = w.send(result.clone());
        }
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

fn decode(name: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        name: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn agent(name: &str) -> Agent {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hive/v1", "kind": "Agent",
            "metadata": {"name": name}, "spec": {"image": "img"}
        }))
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_durable_writes_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.spawn(async move {
                store.create(agent(&format!("a{i}"))).unwrap();
                store.flush().await.unwrap();
            });
        }
        let all = async {
            while let Some(t) = tasks.join_next().await {
                t.unwrap()
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), all)
            .await
            .expect("every flush completes");
        assert_eq!(store.list().unwrap().len(), 200);
    }

    #[test]
    fn generation_moves_only_with_the_spec_and_versions_with_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let created = store.create(agent("a")).unwrap();
        assert_eq!(created.agent.metadata.generation, 1);
        let (same, applied) = store.apply(agent("a"), None).unwrap();
        assert_eq!(applied, Applied::Unchanged);
        assert_eq!(
            same.agent.metadata.resource_version,
            created.agent.metadata.resource_version
        );
        let mut changed = agent("a");
        changed.spec.image = "other".into();
        let (updated, applied) = store.apply(changed, None).unwrap();
        assert_eq!(applied, Applied::Updated);
        assert_eq!(updated.agent.metadata.generation, 2);
        assert_ne!(
            updated.agent.metadata.resource_version,
            created.agent.metadata.resource_version
        );
        let stopped = store.set_state("a", DesiredState::Stopped).unwrap();
        assert_eq!(stopped.agent.metadata.generation, 3);
        let again = store.set_state("a", DesiredState::Stopped).unwrap();
        assert_eq!(
            again.agent.metadata.resource_version,
            stopped.agent.metadata.resource_version
        );
        let mut stale = agent("a");
        stale.metadata.resource_version = created.agent.metadata.resource_version.clone();
        assert!(matches!(
            store.apply(stale, None),
            Err(StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn another_owners_object_is_written_only_when_taken_over_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owned = |owner: &str| {
            let mut a = agent("a");
            a.metadata.owner = Some(owner.into());
            a.spec.image = format!("img-{owner}");
            a
        };
        store.create(owned("bob")).unwrap();
        assert!(matches!(
            store.apply(owned("admin"), None),
            Err(StoreError::OwnedBy { .. })
        ));
        let (r, _) = store.apply(owned("admin"), Some("bob")).unwrap();
        assert_eq!(r.agent.metadata.owner.as_deref(), Some("admin"));

        let secret = |owner: &str, value: &str| Secret {
            name: "keys".into(),
            owner: owner.into(),
            data: [("K".to_string(), value.to_string())].into(),
            resource_version: String::new(),
            creation_timestamp: String::new(),
        };
        store.put_secret(secret("bob", "1"), None).unwrap();
        let refused = store.put_secret(secret("admin", "2"), None).unwrap_err();
        assert!(
            refused.to_string().contains("belongs to owner \"bob\""),
            "{refused}"
        );
        assert_eq!(store.secret("keys").unwrap().unwrap().data["K"], "1");
        assert!(store.delete_secret("keys", "admin").is_err());
        store.put_secret(secret("admin", "2"), Some("bob")).unwrap();
        assert!(
            store.delete_secret("keys", "bob").is_err(),
            "no longer bob's"
        );
        assert!(store.delete_secret("keys", "admin").unwrap());
    }

    #[test]
    fn two_owners_racing_for_a_secret_name_have_exactly_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = ["alice", "bob"]
            .into_iter()
            .map(|owner| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.put_secret(
                        Secret {
                            name: "race".into(),
                            owner: owner.into(),
                            data: [("K".to_string(), owner.to_string())].into(),
                            resource_version: String::new(),
                            creation_timestamp: String::new(),
                        },
                        None,
                    )
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        let winner = store.secret("race").unwrap().unwrap();
        assert_eq!(
            winner.data["K"], winner.owner,
            "the winner's value, the winner's owner"
        );
    }

    #[test]
    fn a_restart_asked_for_during_a_pass_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let seen = store.create(agent("a")).unwrap();
        // The API asks for a restart while a pass that read `seen` is under way...
        store.request_restart("a").unwrap();
        // ...and the pass writes its status with what it saw.
        let mut done = seen.internal.clone();
        done.restarts_done = done.restarts_requested;
        let uid = seen.agent.metadata.uid.unwrap();
        store
            .update_status("a", uid, seen.agent.status.clone(), done)
            .unwrap();
        let now = store.get("a").unwrap().unwrap().internal;
        assert_eq!(
            (now.restarts_requested, now.restarts_done),
            (1, 0),
            "still pending"
        );
    }

    #[test]
    fn a_store_keeps_its_identity_and_a_new_store_gets_another() {
        let dir = tempfile::tempdir().unwrap();
        let id = Store::open(dir.path()).unwrap().id().to_string();
        assert_eq!(id.len(), 32);
        assert_eq!(Store::open(dir.path()).unwrap().id(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(Store::open(other.path()).unwrap().id(), id);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked(_))
        ));
    }
}
