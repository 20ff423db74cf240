//! What the controller says about agents: each decision as an event (a [`Reason`] and a
//! sentence) in the agent's history and a log line, recorded in one place.

use tracing::{info, warn};

use super::Context;
use crate::orchestrator::Done;
use crate::store::{NewEvent, Record};

pub use crate::wire::Reason;

/// The events of one pass, recorded together at its end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Events(Vec<(Reason, String)>);

impl Events {
    /// Notes an event (and logs it now).
    pub fn note(&mut self, reason: Reason, message: impl Into<String>) {
        let message = message.into();
        if reason.is_warning() {
            warn!(reason = reason.as_str(), "{message}");
        } else {
            info!(reason = reason.as_str(), "{message}");
        }
        self.0.push((reason, message));
    }

    /// Notes what a backend did, in words.
    pub fn note_done(&mut self, done: &[Done], generation: u64) {
        for d in done {
            let (reason, message) = describe(d, generation);
            self.note(reason, message);
        }
    }

    /// Stores them as the agent's events (not for an agent that is gone).
    pub fn record(self, ctx: &Context, record: Option<&Record>) {
        let Some(r) = record else { return };
        for (reason, message) in self.0 {
            let event = NewEvent {
                reason,
                message,
                generation: r.agent.metadata.generation,
            };
            if let Err(e) = ctx.store.record_event(&r.agent.metadata.name, event) {
                warn!(error = %e, "could not record an event");
            }
        }
    }
}

/// One thing a backend did, as an event.
fn describe(done: &Done, generation: u64) -> (Reason, String) {
    match done {
        Done::Removed { id, reason } => (
            Reason::Removed,
            format!(
                "removed container {} because {}",
                short(id),
                reason.as_str()
            ),
        ),
        Done::SurvivedRemoval { id, ago } => (
            Reason::RemovalFailed,
            format!(
                "container {} survived its removal {} ago; the engine still lists it",
                short(id),
                humantime::format_duration(*ago)
            ),
        ),
        Done::Created { id, replacing } => {
            if *replacing {
                (
                    Reason::Recreated,
                    format!(
                        "created container {} for generation {generation} because the spec changed",
                        short(id)
                    ),
                )
            } else {
                (
                    Reason::Created,
                    format!(
                        "created container {} for generation {generation}",
                        short(id)
                    ),
                )
            }
        }
        Done::Started { id } => (Reason::Started, format!("started container {}", short(id))),
        Done::Repaired { id, exit_code } => (
            Reason::Repaired,
            format!(
                "started container {} again: it had stopped outside Hive (exit {})",
                short(id),
                exit_code.map_or("an unknown code".into(), |c| format!("code {c}"))
            ),
        ),
        Done::Stopped { id } => (
            Reason::Stopped,
            format!("stopped container {} as declared", short(id)),
        ),
        Done::Resumed { id } => (
            Reason::Unpaused,
            format!(
                "resumed container {}: it was paused outside Hive",
                short(id)
            ),
        ),
        Done::Restarted { id } => (
            Reason::Restarted,
            format!("restarted container {} as asked", short(id)),
        ),
    }
}

/// The short form of a container id, as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
