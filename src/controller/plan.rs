//! The pure half of the controller: what an agent's status is, given what its backend
//! reports, and whether a resync should queue it. No I/O, and nothing of any one engine:
//! the backend decides how to make a workload so; this decides what it means for the
//! agent (its phase, under its restart policy).

use crate::agent::{Agent, AgentStatus, Condition, ConditionType, DesiredState, Phase};
use crate::controller::workload::intent;
use crate::orchestrator::{step, Applied, Observed, RunState, Step};
use crate::store::Record;

/// The status a pass leaves behind, before conditions and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub phase: Phase,
    pub message: Option<String>,
    /// The workload that carries the agent.
    pub container_id: Option<String>,
    /// How often the engine started it again after an exit.
    pub engine_restarts: u64,
}

/// What the agent's status is once the backend has applied its workload.
pub fn outcome(agent: &Agent, applied: &Applied) -> Outcome {
    let Some(w) = &applied.current else {
        // Stopped agents have no workload until they are started.
        if agent.spec.state == DesiredState::Stopped {
            return Outcome {
                phase: Phase::Stopped,
                message: applied.note.clone(),
                container_id: None,
                engine_restarts: 0,
            };
        }
        return Outcome {
            phase: Phase::Pending,
            message: Some(
                applied
                    .note
                    .clone()
                    .unwrap_or_else(|| "waiting for the engine".into()),
            ),
            container_id: None,
            engine_restarts: 0,
        };
    };
    let (phase, message) = phase_of(agent, w.state);
    Outcome {
        phase,
        message: applied.note.clone().or(message),
        container_id: Some(w.id.clone()),
        engine_restarts: w.restarts,
    }
}

/// The phase of an agent whose workload is in `state`, and why, when that needs saying.
fn phase_of(agent: &Agent, state: RunState) -> (Phase, Option<String>) {
    if agent.spec.state == DesiredState::Stopped {
        return (Phase::Stopped, None);
    }
    match state {
        RunState::Running => (Phase::Running, None),
        RunState::Created | RunState::Starting | RunState::Suspended | RunState::Terminating => {
            (Phase::Pending, None)
        }
        RunState::Exited { code: Some(0) } if agent.spec.restart_policy.finished(Some(0)) => (
            Phase::Succeeded,
            Some("its process exited with code 0".into()),
        ),
        RunState::Exited { code } if agent.spec.restart_policy.finished(code) => (
            Phase::Failed,
            Some(format!(
                "its process exited with code {} and restartPolicy is Never",
                code.map_or("unknown".into(), |c| c.to_string())
            )),
        ),
        RunState::Exited { code } => (
            Phase::Pending,
            Some(format!(
                "its process exited with code {}; starting it again",
                code.map_or("unknown".into(), |c| c.to_string())
            )),
        ),
    }
}

/// Whether a resync should queue the agent of `record`, judged from this store's
/// workloads of it in a listing (`hash` makes its workload's hash, only when needed:
/// None when it has none to run, such as a missing secret, which a pass already reported).
pub fn needs_pass(
    record: &Record,
    hash: impl FnOnce() -> Option<String>,
    mine: &[Observed],
) -> bool {
    let now = time::OffsetDateTime::now_utc();
    let due = |t: Option<time::OffsetDateTime>| t.is_some_and(|t| t <= now);
    if record.agent.is_terminating()
        || due(record.agent.expires_at())
        || due(record.idle_deadline())
        || due(record.finished_deadline())
    {
        return true;
    }
    // An agent stopped for idleness is settled when its workload is stopped.
    let record = record.effective();
    let agent = &record.agent;
    let status = &agent.status;
    let running = agent.spec.state == DesiredState::Running;
    // A stopped agent without a workload is settled once its status says so; nothing of
    // it is hashed, so a resync of a stopped fleet costs next to nothing per agent.
    // (Failed: a pass said why it cannot be run, such as a missing secret.)
    if mine.is_empty() && !running {
        let said = status.observed_generation == agent.metadata.generation
            && status.container_id.is_none()
            && matches!(status.phase, Phase::Stopped | Phase::Failed);
        return !said;
    }
    let Some(hash) = hash() else { return false };
    if status.observed_generation != agent.metadata.generation {
        return true;
    }
    let [w] = mine else {
        // None to run it, or duplicates.
        return true;
    };
    let uid = agent
        .metadata
        .uid
        .map(|u| u.to_string())
        .unwrap_or_default();
    if w.uid != uid || w.spec_hash != hash {
        return true;
    }
    // Settled: the one decision every backend carries out has nothing to do.
    let settled = step(intent(&record), agent.spec.restart_policy, w.state) == Step::Keep;
    if !settled {
        return true;
    }
    let (phase, _) = phase_of(agent, w.state);
    phase != status.phase || status.container_id.as_deref() != Some(w.id.as_str())
}

/// Sets Ready (running the current generation) and Progressing (still on its way: the
/// engine has yet to run it) from the rest of the status. Both follow from the phase, so a
/// settled agent's status does not change again. `reason` names why it is not ready
/// when the phase alone does not say.
pub fn with_conditions(
    previous: &[Condition],
    mut status: AgentStatus,
    reason: Option<&str>,
) -> AgentStatus {
    let ready = status.phase == Phase::Running && status.message.is_none();
    let progressing = status.phase == Phase::Pending;
    status.conditions = vec![
        Condition::set(
            previous,
            ConditionType::Ready,
            ready,
            if ready {
                "Running"
            } else {
                reason.unwrap_or(status.phase.as_str())
            },
            status.message.clone(),
        ),
        Condition::set(
            previous,
            ConditionType::Progressing,
            progressing,
            if progressing {
                "Reconciling"
            } else {
                "Converged"
            },
            None,
        ),
    ];
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RestartPolicy;
    use crate::agent::{AgentSpec, Metadata};
    use crate::store::Internal;
    use uuid::Uuid;

    fn record(state: DesiredState, policy: RestartPolicy) -> Record {
        Record {
            agent: Agent {
                api_version: "hive/v1".into(),
                kind: "Agent".into(),
                metadata: Metadata {
                    name: "a".into(),
                    uid: Some(Uuid::from_u128(7)),
                    generation: 1,
                    ..Default::default()
                },
                spec: AgentSpec {
                    image: "img".into(),
                    state,
                    restart_policy: policy,
                    ..Default::default()
                },
                status: Default::default(),
            },
            internal: Internal::default(),
        }
    }

    fn observed(state: RunState) -> Observed {
        Observed {
            id: "c1".into(),
            agent: "a".into(),
            uid: Uuid::from_u128(7).to_string(),
            spec_hash: "h".into(),
            store: Some("s".into()),
            state,
            restarts: 2,
            created: 1,
        }
    }

    fn applied(state: RunState) -> Applied {
        Applied {
            current: Some(observed(state)),
            ..Default::default()
        }
    }

    #[test]
    fn a_running_workload_is_a_running_agent() {
        let r = record(DesiredState::Running, RestartPolicy::Always);
        let o = outcome(&r.agent, &applied(RunState::Running));
        assert_eq!(
            (
                o.phase,
                o.message,
                o.container_id.as_deref(),
                o.engine_restarts
            ),
            (Phase::Running, None, Some("c1"), 2)
        );
    }

    #[test]
    fn restart_policies_decide_what_an_exit_means() {
        let exited = |policy, code| {
            let r = record(DesiredState::Running, policy);
            outcome(&r.agent, &applied(RunState::Exited { code: Some(code) })).phase
        };
        assert_eq!(exited(RestartPolicy::OnFailure, 0), Phase::Succeeded);
        assert_eq!(exited(RestartPolicy::Never, 0), Phase::Succeeded);
        assert_eq!(exited(RestartPolicy::Never, 3), Phase::Failed);
        assert_eq!(exited(RestartPolicy::Always, 3), Phase::Pending);
        let r = record(DesiredState::Running, RestartPolicy::Never);
        let o = outcome(&r.agent, &applied(RunState::Exited { code: Some(3) }));
        assert!(o.message.unwrap().contains("code 3"));
    }

    #[test]
    fn a_stopped_agent_is_stopped_whatever_its_workload_says() {
        let r = record(DesiredState::Stopped, RestartPolicy::Always);
        for state in [
            RunState::Created,
            RunState::Starting,
            RunState::Exited { code: None },
        ] {
            assert_eq!(outcome(&r.agent, &applied(state)).phase, Phase::Stopped);
        }
    }

    #[test]
    fn no_workload_yet_is_pending_with_the_backends_note() {
        let r = record(DesiredState::Running, RestartPolicy::Always);
        let waiting = Applied {
            current: None,
            note: Some("waiting for the engine to remove the old container".into()),
            done: vec![],
        };
        let o = outcome(&r.agent, &waiting);
        assert_eq!(o.phase, Phase::Pending);
        assert!(o.message.unwrap().contains("remove the old container"));
    }

    #[test]
    fn a_resync_queues_only_agents_that_are_not_settled() {
        let mut r = record(DesiredState::Running, RestartPolicy::Always);
        r.agent.status.observed_generation = 1;
        r.agent.status.phase = Phase::Running;
        r.agent.status.container_id = Some("c1".into());
        let running = [observed(RunState::Running)];
        assert!(!needs_pass(&r, || Some("h".into()), &running), "settled");
        assert!(
            needs_pass(&r, || Some("h2".into()), &running),
            "the spec changed"
        );
        assert!(needs_pass(&r, || Some("h".into()), &[]), "no workload");
        assert!(
            needs_pass(
                &r,
                || Some("h".into()),
                &[observed(RunState::Running), observed(RunState::Running)]
            ),
            "duplicates"
        );
        assert!(needs_pass(
            &r,
            || Some("h".into()),
            &[observed(RunState::Exited { code: Some(1) })]
        ));
        assert!(
            !needs_pass(&r, || None, &[]),
            "nothing to run: a pass said why already"
        );
        r.internal.restarts_requested = 1;
        assert!(
            needs_pass(&r, || Some("h".into()), &running),
            "a restart is pending"
        );
        let mut done = record(DesiredState::Running, RestartPolicy::Never);
        done.agent.status.observed_generation = 1;
        done.agent.status.phase = Phase::Succeeded;
        done.agent.status.container_id = Some("c1".into());
        assert!(!needs_pass(
            &done,
            || Some("h".into()),
            &[observed(RunState::Exited { code: Some(0) })]
        ));
    }

    #[test]
    fn a_stopped_agent_without_a_workload_is_stopped_and_settled() {
        let mut r = record(DesiredState::Stopped, RestartPolicy::Always);
        let o = outcome(&r.agent, &Applied::default());
        assert_eq!((o.phase, o.container_id), (Phase::Stopped, None));
        r.agent.status.observed_generation = 1;
        r.agent.status.phase = Phase::Stopped;
        assert!(
            !needs_pass(&r, || panic!("no workload is built for it"), &[]),
            "a resync leaves a stopped fleet alone"
        );
        // Failed (a missing secret, say): a pass said why; settled too.
        r.agent.status.phase = Phase::Failed;
        assert!(!needs_pass(
            &r,
            || panic!("no workload is built for it"),
            &[]
        ));
        r.agent.status.phase = Phase::Stopped;
        r.agent.status.container_id = Some("c1".into());
        assert!(
            needs_pass(&r, || Some("h".into()), &[]),
            "its container went away: the status must say so"
        );
        r.agent.status.container_id = None;
        r.agent.status.phase = Phase::Pending;
        assert!(
            needs_pass(&r, || Some("h".into()), &[]),
            "not yet said stopped"
        );
    }
}
