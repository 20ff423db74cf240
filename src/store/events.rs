//! The agents' events: the reconciler's decisions per agent, the newest [`EVENTS_KEPT`].

use crate::wire::{Event, Reason};

use super::{Store, StoreError};
use crate::agent::Timestamp;

/// Events kept per agent.
pub const EVENTS_KEPT: usize = 50;

/// An event to record.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Why; its type (Normal or Warning) follows from it.
    pub reason: Reason,
    pub message: String,
    pub generation: u64,
}

impl Store {
    /// Records what the reconciler did to an agent, and why. A repeat of the last event
    /// (same reason and message) counts up instead of adding; at most [`EVENTS_KEPT`] stay.
    pub fn record_event(&self, agent: &str, event: NewEvent) -> Result<(), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut events = self.events(agent)?;
        let now = Timestamp::now();
        match events.last_mut() {
            Some(last) if last.reason == event.reason.as_str() && last.message == event.message => {
                last.count += 1;
                last.last_time = now;
            }
            _ => events.push(Event {
                kind: event.reason.event_type(),
                reason: event.reason.as_str().into(),
                message: event.message,
                generation: event.generation,
                count: 1,
                first_time: now,
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
}
