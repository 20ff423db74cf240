//! The work queue of agent names: deduplicated, one reconcile per name at a time, with
//! delayed retries and a per-agent backoff that resets on success.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::time::{delay_queue, DelayQueue};

use super::Backoff;

/// First retry delay after a transient failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Retries of transient failures never wait longer than this.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// First retry delay after a persistent failure (one only a change of the spec fixes;
/// that change wakes the agent at once anyway).
const PERSISTENT_BASE: Duration = Duration::from_secs(5);
/// Retries of persistent failures never wait longer than this.
const PERSISTENT_CAP: Duration = Duration::from_secs(300);

/// Names waiting to be reconciled, names being reconciled, and names waiting to retry.
#[derive(Default)]
pub struct Queue {
    /// Due now, in arrival order.
    ready: VecDeque<String>,
    /// The members of `ready`, for deduplication.
    queued: HashSet<String>,
    /// Being reconciled now.
    running: HashSet<String>,
    /// Asked for again while running: run once more when the current pass ends.
    dirty: HashSet<String>,
    /// Retries that are not due yet.
    delayed: DelayQueue<String>,
    /// Keys into `delayed`, so a name has at most one pending retry.
    delayed_keys: HashMap<String, delay_queue::Key>,
    /// Consecutive failures per name; cleared by a success.
    failures: HashMap<String, u32>,
}

impl Queue {
    /// Asks for a reconcile of `name` now.
    pub fn push(&mut self, name: String) {
        if let Some(key) = self.delayed_keys.remove(&name) {
            self.delayed.remove(&key);
        }
        if self.running.contains(&name) {
            self.dirty.insert(name);
        } else if self.queued.insert(name.clone()) {
            self.ready.push_back(name);
        }
    }

    /// Takes the next name that is due and not already being reconciled.
    pub fn pop(&mut self) -> Option<String> {
        let name = self.ready.pop_front()?;
        self.queued.remove(&name);
        self.running.insert(name.clone());
        Some(name)
    }

    /// Ends a pass of `name`. A failure schedules a retry after the name's backoff for
    /// its kind; a success resets the backoff. Returns the delay of the retry, when one
    /// waits for it (not when the name was asked for again meanwhile: it runs at once).
    pub fn finish(&mut self, name: &str, failed: Option<Backoff>) -> Option<Duration> {
        self.running.remove(name);
        if self.dirty.remove(name) {
            // Asked for again meanwhile: it runs at once, and this failure does not count
            // towards a backoff it never waited for (a success still resets it).
            if failed.is_none() {
                self.failures.remove(name);
            }
            self.push(name.to_string());
            return None;
        }
        let retry = match failed {
            None => {
                self.failures.remove(name);
                None
            }
            Some(kind) => {
                let n = self.failures.entry(name.to_string()).or_default();
                let delay = match kind {
                    Backoff::Transient => backoff(*n),
                    Backoff::Persistent => PERSISTENT_BASE
                        .saturating_mul(1u32.checked_shl((*n).min(16)).unwrap_or(u32::MAX))
                        .min(PERSISTENT_CAP),
                };
                *n = n.saturating_add(1);
                Some(delay)
            }
        };
        if let Some(delay) = retry {
            let key = self.delayed.insert(name.to_string(), delay);
            self.delayed_keys.insert(name.to_string(), key);
        }
        retry
    }

    /// Asks for a reconcile of `name` after `delay` (sooner if it is pushed meanwhile).
    pub fn push_after(&mut self, name: String, delay: Duration) {
        if self.running.contains(&name) || self.queued.contains(&name) {
            return;
        }
        match self.delayed_keys.get(&name) {
            Some(key) => self.delayed.reset(key, delay),
            None => {
                let key = self.delayed.insert(name.clone(), delay);
                self.delayed_keys.insert(name, key);
            }
        }
    }

    /// Waits for the next retry to fall due and queues it. Pending forever when none is scheduled.
    pub async fn next_retry(&mut self) {
        match self.delayed.next().await {
            Some(expired) => {
                let name = expired.into_inner();
                self.delayed_keys.remove(&name);
                self.push(name);
            }
            None => std::future::pending().await,
        }
    }

    /// Number of names due now.
    pub fn len(&self) -> usize {
        self.ready.len()
    }

    /// Whether nothing is due now.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }
}

/// The delay after `failures` consecutive transient failures: 0.5s, 1s, 2s, ... capped
/// at 30s.
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deduplicated_and_never_run_twice_at_once() {
        let mut q = Queue::default();
        q.push("a".into());
        q.push("a".into());
        q.push("b".into());
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.push("a".into()); // arrives while "a" runs
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None, "a is running, so it is not handed out again");
        q.finish("a", None);
        assert_eq!(
            q.pop().as_deref(),
            Some("a"),
            "the push during the run is honoured once"
        );
        q.finish("a", None);
        assert_eq!(q.pop(), None);
    }

    #[tokio::test]
    async fn a_failure_asked_for_again_meanwhile_runs_at_once_and_announces_no_wait() {
        let mut q = Queue::default();
        q.push("a".into());
        q.pop();
        q.push("a".into()); // a change arrives during the failing pass
        assert_eq!(q.finish("a", Some(Backoff::Persistent)), None);
        assert_eq!(q.pop().as_deref(), Some("a"), "due now, not in 5s");
    }

    #[tokio::test]
    async fn backoff_doubles_to_a_cap_and_resets_on_success() {
        let mut q = Queue::default();
        let mut delays = Vec::new();
        for _ in 0..10 {
            q.push("a".into());
            q.pop();
            delays.push(q.finish("a", Some(Backoff::Transient)).unwrap());
        }
        assert_eq!(delays[0], Duration::from_millis(500));
        assert_eq!(delays[1], Duration::from_secs(1));
        assert_eq!(delays[2], Duration::from_secs(2));
        assert_eq!(*delays.last().unwrap(), BACKOFF_CAP);
        q.push("a".into());
        q.pop();
        assert_eq!(q.finish("a", None), None);
        q.push("a".into());
        q.pop();
        assert_eq!(
            q.finish("a", Some(Backoff::Transient)),
            Some(Duration::from_millis(500))
        );
        // A failure only a change can fix waits longer, to a longer cap.
        let mut q = Queue::default();
        let mut delays = Vec::new();
        for _ in 0..10 {
            q.push("b".into());
            q.pop();
            delays.push(q.finish("b", Some(Backoff::Persistent)).unwrap());
        }
        assert_eq!(delays[0], PERSISTENT_BASE);
        assert_eq!(*delays.last().unwrap(), PERSISTENT_CAP);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_falls_due_after_its_delay_and_a_push_preempts_it() {
        let mut q = Queue::default();
        q.push("a".into());
        q.pop();
        q.finish("a", Some(Backoff::Transient));
        assert!(q.is_empty());
        let start = tokio::time::Instant::now();
        q.next_retry().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.finish("a", Some(Backoff::Transient));
        q.push("a".into()); // a write arrives: due now, and the retry is dropped
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.finish("a", None);
        assert!(q.delayed_keys.is_empty());
    }
}
