//! The watch history: changes of agents in the order they were stored, for watchers
//! and for watches resuming from a resourceVersion.

use std::sync::Arc;

use super::{Entry, Store};
use crate::agent::Agent;

/// Changes kept in memory for watches resuming from a resourceVersion.
const WATCH_HISTORY: usize = 1000;
/// Changes a watcher may fall behind by before it is told to list again.
pub(super) const WATCH_BUFFER: usize = 1024;

/// One change of an agent, for watchers.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// The resourceVersion of the change.
    pub seq: u64,
    /// The agent after the change (before it, for DELETED), with its JSON.
    pub entry: Arc<Entry>,
}

impl WatchEvent {
    /// The agent after the change (before it, for DELETED).
    pub fn agent(&self) -> &Agent {
        &self.entry.record.agent
    }
}

/// The latest changes.
pub(super) struct History {
    pub(super) events: std::collections::VecDeque<WatchEvent>,
    /// Changes at or before this version are no longer kept.
    pub(super) horizon: u64,
    /// The newest change's version.
    pub(super) last: u64,
}

impl Store {
    /// Tells watchers of a change and keeps it in the history (called under the write lock,
    /// so changes are published in the order they were stored).
    pub(super) fn publish(&self, kind: &'static str, seq: u64, entry: Arc<Entry>) {
        let event = WatchEvent { kind, seq, entry };
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
}
