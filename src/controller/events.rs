//! What the controller says about agents: each decision as an event (a [`Reason`] and a
//! sentence) in the agent's history and a log line, recorded in one place.

use tracing::{info, warn};

use super::Context;
use crate::orchestrator::Done;
use crate::store::{NewEvent, Record};

/// Why an event was recorded: one word, as Kubernetes' event reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Created,
    Recreated,
    Started,
    Stopped,
    Repaired,
    Restarted,
    Resumed,
    Removed,
    RemovalFailed,
    Failed,
    NotReady,
    BackOff,
    Expired,
    Idled,
    ContainerChurn,
    CreateRateLimited,
    PullingImage,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Created => "Created",
            Reason::Recreated => "Recreated",
            Reason::Started => "Started",
            Reason::Stopped => "Stopped",
            Reason::Repaired => "Repaired",
            Reason::Restarted => "Restarted",
            Reason::Resumed => "Resumed",
            Reason::Removed => "Removed",
            Reason::RemovalFailed => "RemovalFailed",
            Reason::Failed => "Failed",
            Reason::NotReady => "NotReady",
            Reason::BackOff => "BackOff",
            Reason::Expired => "Expired",
            Reason::Idled => "Idled",
            Reason::ContainerChurn => "ContainerChurn",
            Reason::CreateRateLimited => "CreateRateLimited",
            Reason::PullingImage => "PullingImage",
        }
    }

    /// Whether it warns of something outside the declared course.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Reason::Repaired
                | Reason::Resumed
                | Reason::RemovalFailed
                | Reason::Failed
                | Reason::NotReady
                | Reason::BackOff
                | Reason::ContainerChurn
                | Reason::CreateRateLimited
        )
    }
}

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
                kind: if reason.is_warning() {
                    "Warning"
                } else {
                    "Normal"
                },
                reason: reason.as_str(),
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
            Reason::Resumed,
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
