//! The pure parts of a pass around the backend's work: when the agent is due for what
//! ([`deadlines`]), and what its status becomes once the backend applied its workload
//! ([`status_after`]). One `now` per pass, handed in; no I/O, so every branch is tested.

use std::time::Duration;

use time::OffsetDateTime;

use super::events::{Events, Reason};
use super::plan::{outcome, with_conditions};
use super::reconcile::Action;
use crate::agent::{until, AgentStatus, Phase, Timestamp};
use crate::orchestrator::{Applied, Done};
use crate::store::{Internal, Record};

/// What a record's deadlines ask of a pass, at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// Delete it now (`spec.ttl`, or `spec.lifecycle.ttlAfterFinished` after it
    /// finished), saying why.
    Expired(String),
    /// Its idle timeout ran out: look at its work.
    IdleCheck,
    /// Nothing is due.
    None,
}

/// What is due at `now`, and when to look again for what is not (the sooner of the
/// deadlines still ahead).
pub fn deadlines(record: &Record, now: OffsetDateTime) -> (Deadline, Action) {
    let spec = &record.agent.spec;
    let shown = |d: &Option<crate::agent::SpecDuration>| {
        d.as_ref().map(ToString::to_string).unwrap_or_default()
    };
    let mut next = Action::AwaitChange;
    if let Some(at) = record.agent.expires_at() {
        if at <= now {
            return (
                Deadline::Expired(format!(
                    "spec.ttl ({}) ran out; deleting the agent",
                    shown(&spec.ttl)
                )),
                next,
            );
        }
        next = sooner(next, until(now, at));
    }
    if let Some(at) = record.finished_deadline() {
        if at <= now {
            return (
                Deadline::Expired(format!(
                    "finished (phase {:?}) and spec.lifecycle.ttlAfterFinished ({}) ran out; deleting the agent",
                    record.agent.status.phase,
                    shown(&spec.lifecycle.ttl_after_finished)
                )),
                next,
            );
        }
        next = sooner(next, until(now, at));
    }
    if let Some(at) = record.idle_deadline() {
        if at <= now {
            return (Deadline::IdleCheck, next);
        }
        next = sooner(next, until(now, at));
    }
    (Deadline::None, next)
}

/// The sooner of two wake-ups.
pub fn sooner(a: Action, left: Duration) -> Action {
    match a {
        Action::Requeue(d) if d <= left => a,
        _ => Action::Requeue(left),
    }
}

/// What a pass writes once the backend applied the workload.
#[derive(Clone, Debug, PartialEq)]
pub struct After {
    pub status: AgentStatus,
    pub internal: Internal,
    pub events: Events,
    /// When to look again, for what comes of this status (an idle clock, a finished
    /// agent's deletion).
    pub requeue: Action,
    /// The container whose CPU time to read as the idle check's baseline: one that
    /// (re)started under an idle timeout.
    pub baseline: Option<String>,
}

/// The status of `record`'s agent after the backend did `applied` for `effective` (the
/// record as converged: an idle agent runs as Stopped), at `now`; `requeue` is when the
/// pass meant to look again so far.
pub fn status_after(
    record: &Record,
    effective: &Record,
    applied: &Applied,
    now: OffsetDateTime,
    requeue: Action,
) -> After {
    let agent = &record.agent;
    let mut events = Events::default();
    events.note_done(&applied.done, agent.metadata.generation);
    let created = applied
        .done
        .iter()
        .any(|d| matches!(d, Done::Created { .. }));
    let repairs = applied
        .done
        .iter()
        .filter(|d| matches!(d, Done::Repaired { .. } | Done::Restarted { .. }))
        .count() as u64;
    let started = applied.done.iter().any(|d| {
        matches!(
            d,
            Done::Created { .. }
                | Done::Started { .. }
                | Done::Repaired { .. }
                | Done::Restarted { .. }
                | Done::Resumed { .. }
        )
    });
    let mut internal = record.internal.clone();
    internal.repairs = if created { 0 } else { internal.repairs } + repairs;
    // A restart asked for while the agent is stopped, or carried out now, is done.
    internal.restarts_done = internal.restarts_requested;
    let o = outcome(&effective.agent, applied);
    // Under an idle timeout, a container's CPU time is read when it (re)starts, so that
    // what the idle check compares against excludes its start-up.
    let baseline = (agent.spec.lifecycle.idle_timeout.is_some() && o.phase == Phase::Running)
        .then(|| o.container_id.clone())
        .flatten()
        .filter(|id| {
            started
                || record
                    .internal
                    .cpu_seen
                    .as_ref()
                    .is_none_or(|(seen, _)| seen != id)
        });
    // Finished (now or before): deleted spec.lifecycle.ttlAfterFinished after the phase
    // was reached.
    let finished = agent
        .spec
        .lifecycle
        .ttl_after_finished()
        .filter(|_| matches!(o.phase, Phase::Succeeded | Phase::Failed) && o.container_id.is_some())
        .and_then(|ttl| {
            let since = if agent.status.phase == o.phase {
                agent.status.last_transition_time?.get()
            } else {
                now
            };
            crate::agent::later(since, ttl)
        });
    // Running now: the idle clock runs (and wakes this agent when it runs out). A
    // deadline already past was looked at by this pass: it must not make the next pass
    // come at once, again and again.
    let stops_at = (o.phase == Phase::Running)
        .then(|| record.idle_clock())
        .flatten();
    let mut requeue = requeue;
    for at in [stops_at, finished].into_iter().flatten() {
        if at > now {
            requeue = sooner(requeue, until(now, at));
        }
    }
    let idle_message = record.internal.idle_since.as_ref().map(|_| {
        format!(
            "stopped after {} without activity (spec.lifecycle.idleTimeout); start or touch it to resume",
            agent
                .spec
                .lifecycle
                .idle_timeout
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        )
    });
    let status = AgentStatus {
        phase: o.phase,
        observed_generation: agent.metadata.generation,
        container_id: o.container_id,
        restart_count: o.engine_restarts + internal.repairs,
        message: idle_message.or(o.message),
        last_transition_time: None,
        // The sooner of the two deletions.
        expires_at: match (agent.expires_at(), finished) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(Timestamp::from),
        stops_at: stops_at.map(Timestamp::from),
        idle_since: record.internal.idle_since,
        conditions: Vec::new(),
    };
    let status = with_conditions(&agent.status.conditions, status, None);
    if status.message.is_some() && status.message != agent.status.message {
        events.note(Reason::NotReady, status.message.clone().unwrap_or_default());
    }
    After {
        status,
        internal,
        events,
        requeue,
        baseline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::{Observed, RunState};

    fn record(spec: serde_json::Value, status: serde_json::Value) -> Record {
        let agent = serde_json::from_value(serde_json::json!({
            "apiVersion": "hive/v1", "kind": "Agent",
            "metadata": {"name": "a", "owner": "o", "generation": 1,
                         "uid": "5d3638ee-d482-4c42-8b5a-0d405af35dd2",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec, "status": status,
        }))
        .unwrap();
        Record {
            agent,
            internal: Default::default(),
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn running(id: &str) -> Applied {
        Applied {
            current: Some(Observed {
                id: id.into(),
                agent: "a".into(),
                uid: "5d3638ee-d482-4c42-8b5a-0d405af35dd2".into(),
                spec_hash: "h".into(),
                store: Some("s".into()),
                state: RunState::Running,
                restarts: 0,
                created: 0,
            }),
            note: None,
            done: vec![Done::Created {
                id: id.into(),
                replacing: false,
            }],
        }
    }

    #[test]
    fn a_ttl_that_ran_out_expires_the_agent_and_one_ahead_sets_the_next_look() {
        let r = record(
            serde_json::json!({"image": "x", "ttl": "1h"}),
            serde_json::json!({"phase": "Running"}),
        );
        let (due, next) = deadlines(&r, at("2026-01-01T00:30:00Z"));
        assert_eq!(due, Deadline::None);
        assert_eq!(next, Action::Requeue(Duration::from_secs(1800)));
        let (due, _) = deadlines(&r, at("2026-01-01T01:00:01Z"));
        assert!(matches!(due, Deadline::Expired(m) if m.contains("spec.ttl (1h)")));
    }

    #[test]
    fn a_deadline_past_every_time_there_is_is_no_deadline() {
        let mut r = record(
            serde_json::json!({"image": "x"}),
            serde_json::json!({"phase": "Pending"}),
        );
        r.agent.spec.ttl = Some(crate::agent::SpecDuration::parse("100000y").unwrap());
        assert_eq!(
            deadlines(&r, at("2026-06-01T00:00:00Z")),
            (Deadline::None, Action::AwaitChange)
        );
    }

    #[test]
    fn a_created_container_resets_repairs_and_is_the_idle_baseline() {
        let mut r = record(
            serde_json::json!({"image": "x", "lifecycle": {"idleTimeout": "10m"}}),
            serde_json::json!({"phase": "Pending"}),
        );
        r.internal.repairs = 3;
        r.internal.restarts_requested = 2;
        let now = at("2026-01-01T00:00:10Z");
        let after = status_after(&r, &r, &running("c1"), now, Action::AwaitChange);
        assert_eq!(after.status.phase, Phase::Running);
        assert_eq!(after.status.container_id.as_deref(), Some("c1"));
        assert_eq!(
            (after.internal.repairs, after.internal.restarts_done),
            (0, 2)
        );
        assert_eq!(after.baseline.as_deref(), Some("c1"));
        // The idle clock runs from creation: 10 minutes after it.
        assert_eq!(
            after.status.stops_at,
            Some(at("2026-01-01T00:10:00Z").into())
        );
        assert_eq!(after.requeue, Action::Requeue(Duration::from_secs(590)));
    }

    #[test]
    fn a_finished_agent_is_deleted_its_ttl_after_the_phase_was_reached() {
        let r = record(
            serde_json::json!({"image": "x", "restartPolicy": "Never",
                               "lifecycle": {"ttlAfterFinished": "1h"}}),
            serde_json::json!({"phase": "Succeeded", "observedGeneration": 1, "containerId": "c1",
                               "lastTransitionTime": "2026-01-01T00:00:00Z"}),
        );
        let mut applied = running("c1");
        applied.done.clear();
        applied.current.as_mut().unwrap().state = RunState::Exited { code: Some(0) };
        let now = at("2026-01-01T00:20:00Z");
        let after = status_after(&r, &r, &applied, now, Action::AwaitChange);
        assert_eq!(after.status.phase, Phase::Succeeded);
        assert_eq!(
            after.status.expires_at,
            Some(at("2026-01-01T01:00:00Z").into())
        );
        assert_eq!(after.requeue, Action::Requeue(Duration::from_secs(2400)));
        assert_eq!(after.baseline, None);
    }
}
