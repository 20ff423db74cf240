//! The agents in memory, versioned, fed by the store's own writes: a persistent map from
//! name to the record and its JSON, replaced as a whole (sharing all it did not change)
//! under the write lock each time a write is stored. Readers take the current
//! [`Snapshot`], an `Arc`, and never wait for a writer or decode a record; each agent is
//! serialized once per change, and every GET, LIST and watcher shares those bytes (the
//! idea of kube-apiserver's watch cache). A LIST that is paged keeps its snapshot for a
//! while, so that every page is read at one resourceVersion.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Record;

/// How long a paged list's snapshot is kept for its next page.
const PAGE_TTL: Duration = Duration::from_secs(300);
/// The most snapshots kept for paged lists at once (the oldest goes first).
const PAGES_KEPT: usize = 32;

/// One agent as stored, and its JSON as the API shows it.
#[derive(Debug)]
pub struct Entry {
    pub record: Record,
    /// `record.agent` serialized: the body of a GET, an item of a LIST.
    pub json: Bytes,
}

impl Entry {
    pub(super) fn new(record: Record) -> Entry {
        let json = serde_json::to_vec(&record.agent).expect("an agent always serializes");
        Entry {
            record,
            json: Bytes::from(json),
        }
    }
}

/// The agents at one resourceVersion.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The resourceVersion of the newest write this snapshot holds.
    pub version: u64,
    /// By name, sorted.
    pub agents: imbl::OrdMap<String, Arc<Entry>>,
    /// The names of the agents carrying each label (key, value): a selector's `k=v`
    /// terms find their agents here instead of scanning the fleet.
    pub labels: imbl::OrdMap<(String, String), imbl::OrdSet<String>>,
}

impl Snapshot {
    /// Puts `entry` in (None: takes `name` out), keeping the label index.
    pub(super) fn set(&mut self, name: &str, entry: Option<Arc<Entry>>) {
        if let Some(old) = self.agents.get(name).cloned() {
            for (k, v) in &old.record.agent.metadata.labels {
                let key = (k.clone(), v.clone());
                if let Some(names) = self.labels.get_mut(&key) {
                    names.remove(name);
                    if names.is_empty() {
                        self.labels.remove(&key);
                    }
                }
            }
        }
        match entry {
            Some(e) => {
                for (k, v) in &e.record.agent.metadata.labels {
                    self.labels
                        .entry((k.clone(), v.clone()))
                        .or_default()
                        .insert(name.to_string());
                }
                self.agents.insert(name.to_string(), e);
            }
            None => {
                self.agents.remove(name);
            }
        }
    }

    /// The names a selector's `k=v` terms narrow a list to, sorted (the smallest set of
    /// those terms); None when it has no such term and every agent is a candidate.
    pub fn candidates<'a>(
        &'a self,
        equalities: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Option<imbl::OrdSet<String>> {
        let mut best: Option<imbl::OrdSet<String>> = None;
        for (k, v) in equalities {
            let names = self
                .labels
                .get(&(k.to_string(), v.to_string()))
                .cloned()
                .unwrap_or_default();
            if best.as_ref().is_none_or(|b| names.len() < b.len()) {
                best = Some(names);
            }
        }
        best
    }
}

/// The current snapshot, and those kept for paged lists.
#[derive(Default)]
pub(super) struct View {
    current: RwLock<Arc<Snapshot>>,
    pages: Mutex<VecDeque<(Instant, Arc<Snapshot>)>>,
}

impl View {
    pub(super) fn new(snapshot: Snapshot) -> View {
        View {
            current: RwLock::new(Arc::new(snapshot)),
            pages: Mutex::default(),
        }
    }

    pub(super) fn current(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stores `entry` (None: removes `name`) at `version`. Called under the store's write
    /// lock, so versions only grow.
    pub(super) fn set(&self, name: &str, entry: Option<Arc<Entry>>, version: u64) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Snapshot::clone(&current);
        next.set(name, entry);
        next.version = version;
        *current = Arc::new(next);
    }

    /// Keeps `snapshot` for the next pages of a list.
    pub(super) fn keep(&self, snapshot: Arc<Snapshot>) {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        pages.retain(|(at, s)| now.duration_since(*at) < PAGE_TTL && s.version != snapshot.version);
        if pages.len() >= PAGES_KEPT {
            pages.pop_front();
        }
        pages.push_back((now, snapshot));
    }

    /// The snapshot a paged list is reading, if it is still kept.
    pub(super) fn kept(&self, version: u64) -> Option<Arc<Snapshot>> {
        let now = Instant::now();
        let current = self.current();
        if current.version == version {
            return Some(current);
        }
        let pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages
            .iter()
            .find(|(at, s)| s.version == version && now.duration_since(*at) < PAGE_TTL)
            .map(|(_, s)| s.clone())
    }
}
