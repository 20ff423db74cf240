//! The pure half of a reconcile: given an agent's record (or its absence) and the
//! containers the engine has for it, decide what to do and what the status will be.
//! No I/O here, so every branch is unit-tested.

use crate::agent::{DesiredState, Phase, RestartPolicy};
use crate::orchestrator::{Container, ContainerState};
use crate::store::Record;

/// What one reconcile pass must do, in order: removals, then at most one action on the
/// agent's container, then either a status write or the record's deletion.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Containers to remove first, each with the reason.
    pub remove: Vec<(String, &'static str)>,
    /// What to do with the container that should remain.
    pub action: Option<ContainerAction>,
    /// The agent is deleted and its containers are gone once `remove` is done.
    pub delete_record: bool,
    /// The status to report once the steps succeeded (None when there is no record).
    pub outcome: Option<Outcome>,
}

/// One operation on the agent's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerAction {
    /// Create it from the current spec, and start it when `start`.
    Create {
        start: bool,
    },
    /// Start it; `repair` when it had run and exited against the spec.
    Start {
        id: String,
        repair: bool,
    },
    Stop {
        id: String,
    },
    /// Carry out a restart asked for through the API.
    Restart {
        id: String,
    },
    /// Resume a container paused outside Hive.
    Unpause {
        id: String,
    },
}

/// The status a successful pass leaves behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub phase: Phase,
    pub message: Option<String>,
    /// The container that carries the agent; None when `Create` makes a new one.
    pub container_id: Option<String>,
    /// The engine's restart count of that container.
    pub engine_restarts: u64,
}

/// Decides what to do for one agent. `spec_hash` is the hash of the record's spec.
pub fn plan(record: Option<&Record>, spec_hash: &str, containers: &[Container]) -> Plan {
    let mut plan = Plan {
        remove: Vec::new(),
        action: None,
        delete_record: false,
        outcome: None,
    };
    let Some(record) = record else {
        plan.remove = containers
            .iter()
            .map(|c| (c.id.clone(), "its agent does not exist"))
            .collect();
        return plan;
    };
    let agent = &record.agent;
    if agent.is_terminating() {
        plan.remove = containers
            .iter()
            .map(|c| (c.id.clone(), "its agent is being deleted"))
            .collect();
        plan.delete_record = true;
        plan.outcome = Some(Outcome {
            phase: Phase::Terminating,
            message: Some("deleting its container".into()),
            container_id: None,
            engine_restarts: 0,
        });
        return plan;
    }

    let uid = agent
        .metadata
        .uid
        .map(|u| u.to_string())
        .unwrap_or_default();
    // The container to keep: current uid and spec, not on its way out; a running one
    // first, then the newest.
    let keeper = containers
        .iter()
        .filter(|c| c.uid == uid && c.spec_hash == spec_hash && c.state != ContainerState::Removing)
        .max_by_key(|c| (c.state == ContainerState::Running, c.created))
        .cloned();
    for c in containers {
        if keeper.as_ref().is_some_and(|k| k.id == c.id) || c.state == ContainerState::Removing {
            continue;
        }
        let reason = if c.uid != uid {
            "it belongs to an earlier agent of that name"
        } else if c.spec_hash != spec_hash {
            "the spec changed"
        } else {
            "it duplicates the agent's container"
        };
        plan.remove.push((c.id.clone(), reason));
    }

    let want_running = agent.spec.state == DesiredState::Running;
    let outcome = |phase, message: Option<String>, c: Option<&Container>| Outcome {
        phase,
        message,
        container_id: c.map(|c| c.id.clone()),
        engine_restarts: c.map_or(0, |c| c.restart_count),
    };
    let Some(c) = keeper else {
        if containers
            .iter()
            .any(|c| c.state == ContainerState::Removing)
        {
            plan.outcome = Some(outcome(
                Phase::Pending,
                Some("waiting for the engine to remove the old container".into()),
                None,
            ));
            return plan;
        }
        plan.action = Some(ContainerAction::Create {
            start: want_running,
        });
        let phase = if want_running {
            Phase::Running
        } else {
            Phase::Stopped
        };
        plan.outcome = Some(outcome(phase, None, None));
        return plan;
    };

    let id = c.id.clone();
    let restart_pending = record.internal.restarts_requested > record.internal.restarts_done;
    let (action, phase, message) = match (want_running, c.state) {
        (true, ContainerState::Running) if restart_pending => {
            (Some(ContainerAction::Restart { id }), Phase::Running, None)
        }
        (true, ContainerState::Running) => (None, Phase::Running, None),
        // Paused outside Hive: resume it (a stopped agent is resumed first, then stopped).
        (_, ContainerState::Paused) => (
            Some(ContainerAction::Unpause { id }),
            if want_running {
                Phase::Running
            } else {
                Phase::Stopped
            },
            None,
        ),
        (true, ContainerState::Created) => (
            Some(ContainerAction::Start { id, repair: false }),
            Phase::Running,
            None,
        ),
        (true, ContainerState::Restarting) => (
            None,
            Phase::Pending,
            Some(format!(
                "its process exited; the engine restarts it (restart {})",
                c.restart_count + 1
            )),
        ),
        (true, ContainerState::Exited(code)) => match (agent.spec.restart_policy, code) {
            (RestartPolicy::OnFailure | RestartPolicy::Never, Some(0)) => (
                None,
                Phase::Succeeded,
                Some("its process exited with code 0".into()),
            ),
            (RestartPolicy::Never, code) => (
                None,
                Phase::Failed,
                Some(format!(
                    "its process exited with code {} and restartPolicy is Never",
                    code.map_or("unknown".into(), |c| c.to_string())
                )),
            ),
            // Always, or OnFailure after a failure: the engine's policy did not bring it
            // back, so it was stopped or killed outside Hive. Repair the drift.
            _ => (
                Some(ContainerAction::Start { id, repair: true }),
                Phase::Running,
                None,
            ),
        },
        // Not chosen as keeper (filtered out above); kept for exhaustiveness.
        (_, ContainerState::Removing) => (None, Phase::Pending, None),
        (false, ContainerState::Running | ContainerState::Restarting) => {
            (Some(ContainerAction::Stop { id }), Phase::Stopped, None)
        }
        (false, _) => (None, Phase::Stopped, None),
    };
    plan.action = action;
    plan.outcome = Some(outcome(phase, message, Some(&c)));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Agent, AgentSpec, Metadata};
    use crate::store::Internal;
    use uuid::Uuid;

    const HASH: &str = "h1";

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

    fn running() -> Record {
        record(DesiredState::Running, RestartPolicy::Always)
    }

    fn container(id: &str, state: ContainerState) -> Container {
        Container {
            id: id.into(),
            agent: "a".into(),
            uid: Uuid::from_u128(7).to_string(),
            spec_hash: HASH.into(),
            state,
            restart_count: 0,
            created: 1,
            store: None,
        }
    }

    #[test]
    fn a_missing_container_is_created_and_started() {
        let p = plan(Some(&running()), HASH, &[]);
        assert_eq!(p.action, Some(ContainerAction::Create { start: true }));
        assert!(p.remove.is_empty());
        assert_eq!(p.outcome.unwrap().phase, Phase::Running);
    }

    #[test]
    fn a_stopped_agent_is_created_without_starting() {
        let r = record(DesiredState::Stopped, RestartPolicy::Always);
        let p = plan(Some(&r), HASH, &[]);
        assert_eq!(p.action, Some(ContainerAction::Create { start: false }));
        assert_eq!(p.outcome.unwrap().phase, Phase::Stopped);
    }

    #[test]
    fn a_healthy_container_is_left_alone() {
        let p = plan(
            Some(&running()),
            HASH,
            &[container("c1", ContainerState::Running)],
        );
        assert_eq!(p.action, None);
        assert!(p.remove.is_empty());
        let o = p.outcome.unwrap();
        assert_eq!(
            (o.phase, o.container_id.as_deref()),
            (Phase::Running, Some("c1"))
        );
    }

    #[test]
    fn a_spec_change_replaces_the_container() {
        let mut old = container("c1", ContainerState::Running);
        old.spec_hash = "h0".into();
        let p = plan(Some(&running()), HASH, &[old]);
        assert_eq!(p.remove, vec![("c1".to_string(), "the spec changed")]);
        assert_eq!(p.action, Some(ContainerAction::Create { start: true }));
    }

    #[test]
    fn a_container_of_an_earlier_agent_with_the_same_name_is_replaced() {
        let mut old = container("c1", ContainerState::Running);
        old.uid = Uuid::from_u128(1).to_string();
        let p = plan(Some(&running()), HASH, &[old]);
        assert_eq!(p.remove.len(), 1);
        assert_eq!(p.action, Some(ContainerAction::Create { start: true }));
    }

    #[test]
    fn duplicates_keep_the_running_one() {
        let mut newer = container("c2", ContainerState::Exited(Some(0)));
        newer.created = 9;
        let p = plan(
            Some(&running()),
            HASH,
            &[container("c1", ContainerState::Running), newer],
        );
        assert_eq!(
            p.remove,
            vec![("c2".to_string(), "it duplicates the agent's container")]
        );
        assert_eq!(p.action, None);
    }

    #[test]
    fn an_exited_container_is_repaired_under_always() {
        let p = plan(
            Some(&running()),
            HASH,
            &[container("c1", ContainerState::Exited(Some(137)))],
        );
        assert_eq!(
            p.action,
            Some(ContainerAction::Start {
                id: "c1".into(),
                repair: true
            })
        );
    }

    #[test]
    fn restart_policies_decide_after_an_exit() {
        let ok = [container("c1", ContainerState::Exited(Some(0)))];
        let failed = [container("c1", ContainerState::Exited(Some(3)))];
        let on_failure = record(DesiredState::Running, RestartPolicy::OnFailure);
        let never = record(DesiredState::Running, RestartPolicy::Never);
        assert_eq!(
            plan(Some(&on_failure), HASH, &ok).outcome.unwrap().phase,
            Phase::Succeeded
        );
        assert!(matches!(
            plan(Some(&on_failure), HASH, &failed).action,
            Some(ContainerAction::Start { repair: true, .. })
        ));
        assert_eq!(
            plan(Some(&never), HASH, &ok).outcome.unwrap().phase,
            Phase::Succeeded
        );
        let p = plan(Some(&never), HASH, &failed);
        assert_eq!(p.action, None);
        let o = p.outcome.unwrap();
        assert_eq!(o.phase, Phase::Failed);
        assert!(o.message.unwrap().contains("code 3"));
    }

    #[test]
    fn the_engine_restarting_a_container_is_waited_for() {
        let p = plan(
            Some(&running()),
            HASH,
            &[container("c1", ContainerState::Restarting)],
        );
        assert_eq!(p.action, None);
        assert_eq!(p.outcome.unwrap().phase, Phase::Pending);
    }

    #[test]
    fn stop_and_start_follow_spec_state() {
        let stopped = record(DesiredState::Stopped, RestartPolicy::Always);
        let p = plan(
            Some(&stopped),
            HASH,
            &[container("c1", ContainerState::Running)],
        );
        assert_eq!(p.action, Some(ContainerAction::Stop { id: "c1".into() }));
        let p = plan(
            Some(&stopped),
            HASH,
            &[container("c1", ContainerState::Exited(Some(0)))],
        );
        assert_eq!((p.action, p.outcome.unwrap().phase), (None, Phase::Stopped));
        let p = plan(
            Some(&running()),
            HASH,
            &[container("c1", ContainerState::Created)],
        );
        assert_eq!(
            p.action,
            Some(ContainerAction::Start {
                id: "c1".into(),
                repair: false
            })
        );
    }

    #[test]
    fn a_paused_container_is_resumed() {
        let p = plan(
            Some(&running()),
            HASH,
            &[container("c1", ContainerState::Paused)],
        );
        assert_eq!(p.action, Some(ContainerAction::Unpause { id: "c1".into() }));
    }

    #[test]
    fn a_pending_restart_restarts_a_running_container_once() {
        let mut r = running();
        r.internal.restarts_requested = 1;
        let p = plan(Some(&r), HASH, &[container("c1", ContainerState::Running)]);
        assert_eq!(p.action, Some(ContainerAction::Restart { id: "c1".into() }));
        r.internal.restarts_done = 1;
        assert_eq!(
            plan(Some(&r), HASH, &[container("c1", ContainerState::Running)]).action,
            None
        );
    }

    #[test]
    fn orphans_are_removed_and_deleted_agents_cleaned_up() {
        let p = plan(None, HASH, &[container("c1", ContainerState::Running)]);
        assert_eq!(
            p.remove,
            vec![("c1".to_string(), "its agent does not exist")]
        );
        assert!(p.outcome.is_none() && !p.delete_record);

        let mut r = running();
        r.agent.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        let p = plan(Some(&r), HASH, &[container("c1", ContainerState::Running)]);
        assert_eq!(p.remove.len(), 1);
        assert!(p.delete_record);
        assert_eq!(p.action, None);
    }

    #[test]
    fn a_container_being_removed_is_waited_for_before_creating() {
        let mut old = container("c1", ContainerState::Removing);
        old.spec_hash = "h0".into();
        let p = plan(Some(&running()), HASH, &[old]);
        assert_eq!(p.action, None);
        assert!(p.remove.is_empty());
        assert_eq!(p.outcome.unwrap().phase, Phase::Pending);
    }
}
