//! The desired state, on disk in sled: one record per agent, keyed by name, beside the
//! watch history, the audit log, the agents' events and the secrets, each in its own
//! file of this module.
//!
//! Every write is a read-modify-write under one lock, so the API's spec writes and the
//! controller's status writes never lose each other. Writes that a client waits for are
//! flushed to disk before [`Store::flush`] returns; the API answers only after that.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

mod agents;
mod audit;
mod events;
mod flush;
mod secrets;
mod view;
mod watch;

pub use crate::wire::Event;
pub use agents::{CpuReading, Internal, Record};
pub use audit::{AuditEntry, AUDIT_KEEP, KEEP_PER_KEY, REFUSALS_PER_KEY};
pub use events::{NewEvent, EVENTS_KEPT};
pub use secrets::{MissingSecret, Secret};
pub use view::{Entry, Snapshot};
pub use watch::WatchEvent;

use watch::{History, WATCH_BUFFER};

/// sled's page cache; the default of 1 GiB is far beyond what a fleet's records need.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The key of the store's identity in the `meta` tree.
const STORE_ID: &str = "store-id";

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
    /// Which audit entries count against which principal's share, and the next id.
    audit_index: Mutex<audit::AuditIndex>,
    /// Secrets by name. Values never leave the store but into containers' environments.
    secrets: sled::Tree,
    /// The reconciler's recent decisions per agent, by name.
    events: sled::Tree,
    /// Changes for watchers.
    changes: tokio::sync::broadcast::Sender<WatchEvent>,
    /// The latest changes, for watches that resume from a resourceVersion.
    history: Mutex<History>,
    /// Every agent in memory, as of the last write: what reads are served from.
    view: view::View,
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
        let audit_index = Mutex::new(audit::AuditIndex::load(&audit)?);
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
            .spawn(move || flush::group_commit(flusher_db, requests))
            .map_err(|e| StoreError::Flush(format!("cannot start the flusher: {e}")))?;
        // Every agent into memory, once; reads never decode a record again.
        let mut snapshot = Snapshot::default();
        for kv in agents.iter() {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let record = decode(&name, &v)?;
            let version = record
                .agent
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            snapshot.version = snapshot.version.max(version);
            snapshot.set(&name, Some(Arc::new(Entry::new(record))));
        }
        // Changes before now are not in memory: a watch must start from here or later.
        let newest = snapshot.version;
        let history = Mutex::new(History {
            events: std::collections::VecDeque::new(),
            horizon: newest,
            last: newest,
        });
        let (changes, _) = tokio::sync::broadcast::channel(WATCH_BUFFER);
        Ok(Store {
            changes,
            history,
            view: view::View::new(snapshot),
            db,
            agents,
            audit,
            audit_index,
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
                // The version first: nothing may fail between the store and its view.
                let seq = self.db.generate_id()? + 1;
                self.agents.remove(name)?;
                if let Some(mut old) = old {
                    // As in Kubernetes, the deleted object carries the deletion's version.
                    self.view.set(name, None, seq);
                    old.agent.metadata.resource_version = Some(seq.to_string());
                    self.publish("DELETED", seq, Arc::new(Entry::new(old)));
                }
                Ok((None, t))
            }
            Change::Put(mut r, t) => {
                let seq = self.db.generate_id()? + 1;
                r.agent.metadata.resource_version = Some(seq.to_string());
                let bytes = serde_json::to_vec(&r).expect("a record always serializes");
                self.agents.insert(name, bytes)?;
                let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
                let entry = Arc::new(Entry::new(*r));
                self.view.set(name, Some(entry.clone()), seq);
                let record = entry.record.clone();
                self.publish(kind, seq, entry);
                Ok((Some(record), t))
            }
        }
    }

    /// Every agent as of the last write, to read without waiting for writers.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.view.current()
    }

    /// Keeps `snapshot` for the next pages of a list (a few minutes).
    pub fn keep_snapshot(&self, snapshot: Arc<Snapshot>) {
        self.view.keep(snapshot)
    }

    /// The snapshot at `version`, if it is the current one or kept for a paged list.
    pub fn kept_snapshot(&self, version: u64) -> Option<Arc<Snapshot>> {
        self.view.kept(version)
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

fn decode(name: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        name: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
