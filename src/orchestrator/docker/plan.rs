//! The Docker backend's pure half: the engine's containers in the orchestrator's neutral
//! terms, and Docker's verbs for the [`Step`] the shared decision chose (create, then
//! start; start again; unpause; the engine's own restart states are waited for). No I/O,
//! so every mapping is unit-tested.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::orchestrator::{
    decide, select, Observed, Ownership, RemoveReason, RunState, Selection, Step, Workload,
};

/// The engine's view of a container's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    Running,
    Paused,
    /// Exited and waiting for the engine's restart policy to start it again.
    Restarting,
    /// Exited with this code (None when the engine did not say).
    Exited(Option<i64>),
    /// Being removed, or dead: about to disappear.
    Removing,
}

/// One container of the instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    pub id: String,
    /// Value of the agent label.
    pub agent: String,
    /// Value of the uid label.
    pub uid: String,
    /// Value of the spec-hash label.
    pub spec_hash: String,
    /// Value of the store label.
    pub store: Option<String>,
    pub state: ContainerState,
    /// How often the engine's restart policy restarted it (known when inspected).
    pub restart_count: u64,
    /// Unix seconds of creation.
    pub created: i64,
}

impl Container {
    /// The container in the orchestrator's neutral terms.
    pub fn observed(&self) -> Observed {
        Observed {
            id: self.id.clone(),
            agent: self.agent.clone(),
            uid: self.uid.clone(),
            spec_hash: self.spec_hash.clone(),
            store: self.store.clone(),
            state: match self.state {
                ContainerState::Created => RunState::Created,
                ContainerState::Restarting => RunState::Starting,
                ContainerState::Running => RunState::Running,
                ContainerState::Paused => RunState::Suspended,
                ContainerState::Exited(code) => RunState::Exited { code },
                ContainerState::Removing => RunState::Terminating,
            },
            restarts: self.restart_count,
            created: self.created,
        }
    }
}

/// One operation on the agent's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerAction {
    /// Create it from the current spec and start it. (A stopped agent without a
    /// container gets none: like a Deployment scaled to zero, it costs the engine nothing
    /// until it is started, which makes a large declared-but-stopped fleet cheap.)
    Create,
    /// Start it; `repair` when it had run and exited against the spec.
    Start {
        id: String,
        repair: bool,
    },
    Stop {
        id: String,
    },
    /// Carry out a restart asked for.
    Restart {
        id: String,
    },
    /// Resume a container paused outside Hive.
    Unpause {
        id: String,
    },
}

/// What to do for one agent: removals first, then at most one action.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub remove: Vec<(String, RemoveReason)>,
    pub action: Option<ContainerAction>,
    /// The container that stays (None when a new one is made, or while an old one is
    /// still being removed).
    pub keeper: Option<Container>,
    /// An old container is still going away; nothing is created meanwhile.
    pub waiting_for_removal: bool,
}

/// Decides what to do for `want`, given this store's containers of the agent.
pub fn plan(want: &Workload, containers: &[Container]) -> Plan {
    let all = Ownership {
        store: String::new(),
        adopt_foreign: true,
    };
    let observed: Vec<Observed> = containers.iter().map(Container::observed).collect();
    plan_selected(want, &select(want, &observed, &all), containers)
}

/// What to do for `want` once the shared [`select`] chose among its containers
/// (`containers`, the same as observed) and [`decide`] said what to do: Docker's verbs for
/// the step, and nothing decided here.
pub fn plan_selected(want: &Workload, selection: &Selection, containers: &[Container]) -> Plan {
    let keeper = selection
        .keeper
        .as_ref()
        .and_then(|k| containers.iter().find(|c| c.id == k.id))
        .cloned();
    let step = decide(want, selection);
    let id = || keeper.as_ref().map(|k| k.id.clone()).unwrap_or_default();
    let action = match step {
        Step::Keep | Step::WaitForRemoval => None,
        Step::Create => Some(ContainerAction::Create),
        Step::Start => Some(ContainerAction::Start {
            id: id(),
            repair: false,
        }),
        // Exited against its policy (which the engine's own policy did not undo): stopped
        // or killed outside Hive, so started again.
        Step::Repair { .. } => Some(ContainerAction::Start {
            id: id(),
            repair: true,
        }),
        Step::Stop => Some(ContainerAction::Stop { id: id() }),
        Step::Restart => Some(ContainerAction::Restart { id: id() }),
        Step::Thaw => Some(ContainerAction::Unpause { id: id() }),
    };
    Plan {
        remove: selection.strays.clone(),
        action,
        keeper,
        waiting_for_removal: step == Step::WaitForRemoval,
    }
}

/// How long a removal is remembered.
const REMEMBER_REMOVALS: Duration = Duration::from_secs(600);

/// The containers removed lately, so that "removed" is said once per container: one that
/// the engine listed again after confirming its removal is reported once as having
/// survived, and never announced as removed again.
#[derive(Default)]
pub struct Ledger {
    /// When each was removed, and whether its survival was reported.
    removed: HashMap<String, (Instant, bool)>,
}

impl Ledger {
    /// Before removing `id`: how long ago it was removed already, if that is news to
    /// report (it survived its removal). Remembers that it was reported.
    pub fn survived(&mut self, id: &str, now: Instant) -> Option<Duration> {
        let (at, reported) = self.removed.get_mut(id)?;
        if *reported {
            return None;
        }
        *reported = true;
        Some(now.saturating_duration_since(*at))
    }

    /// The engine confirmed a removal of `id`: whether to announce it (only the first time).
    pub fn confirmed(&mut self, id: &str, now: Instant) -> bool {
        self.removed
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < REMEMBER_REMOVALS);
        if self.removed.contains_key(id) {
            return false;
        }
        self.removed.insert(id.to_string(), (now, false));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RestartPolicy;
    use uuid::Uuid;

    fn want(running: bool, policy: RestartPolicy) -> Workload {
        Workload {
            intent: if running {
                crate::orchestrator::Intent::Run
            } else {
                crate::orchestrator::Intent::Stop
            },
            restart_policy: policy,
            ..Workload::example()
        }
    }

    fn running() -> Workload {
        want(true, RestartPolicy::Always)
    }

    fn container(id: &str, state: ContainerState) -> Container {
        Container {
            id: id.into(),
            agent: "a".into(),
            uid: Uuid::from_u128(7).to_string(),
            spec_hash: running().hash(),
            store: Some("s".into()),
            state,
            restart_count: 0,
            created: 1,
        }
    }

    #[test]
    fn a_missing_container_is_created_and_started_unless_stopped() {
        let p = plan(&running(), &[]);
        assert_eq!(p.action, Some(ContainerAction::Create));
        assert!(p.remove.is_empty());
        let p = plan(&want(false, RestartPolicy::Always), &[]);
        assert_eq!(p.action, None, "a stopped agent gets no container");
        assert!(p.keeper.is_none() && !p.waiting_for_removal);
    }

    #[test]
    fn a_stopped_agent_whose_spec_changed_loses_its_old_container_and_gets_none() {
        let mut old = container("c1", ContainerState::Exited(Some(0)));
        old.spec_hash = "h0".into();
        let p = plan(&want(false, RestartPolicy::Always), &[old]);
        assert_eq!(
            p.remove,
            vec![("c1".to_string(), RemoveReason::SpecChanged)]
        );
        assert_eq!(p.action, None);
    }

    #[test]
    fn a_healthy_container_is_left_alone() {
        let p = plan(&running(), &[container("c1", ContainerState::Running)]);
        assert_eq!(p.action, None);
        assert!(p.remove.is_empty());
        assert_eq!(p.keeper.unwrap().id, "c1");
    }

    #[test]
    fn a_spec_change_replaces_the_container() {
        let mut old = container("c1", ContainerState::Running);
        old.spec_hash = "h0".into();
        let p = plan(&running(), &[old]);
        assert_eq!(
            p.remove,
            vec![("c1".to_string(), RemoveReason::SpecChanged)]
        );
        assert_eq!(p.action, Some(ContainerAction::Create));
    }

    #[test]
    fn a_container_of_an_earlier_agent_with_the_same_name_is_replaced() {
        let mut old = container("c1", ContainerState::Running);
        old.uid = Uuid::from_u128(1).to_string();
        let p = plan(&running(), &[old]);
        assert_eq!(
            p.remove,
            vec![("c1".to_string(), RemoveReason::EarlierAgent)]
        );
        assert_eq!(p.action, Some(ContainerAction::Create));
    }

    #[test]
    fn duplicates_keep_the_running_one() {
        let mut newer = container("c2", ContainerState::Exited(Some(0)));
        newer.created = 9;
        let p = plan(
            &running(),
            &[container("c1", ContainerState::Running), newer],
        );
        assert_eq!(p.remove, vec![("c2".to_string(), RemoveReason::Duplicate)]);
        assert_eq!(p.action, None);
    }

    #[test]
    fn a_container_stopped_as_declared_is_started_not_repaired_whatever_its_policy() {
        for policy in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            let mut w = want(true, policy);
            w.intent = crate::orchestrator::Intent::Start;
            let mut c = container("c1", ContainerState::Exited(Some(143)));
            c.spec_hash = w.hash();
            let p = plan(&w, &[c]);
            assert!(
                matches!(p.action, Some(ContainerAction::Start { repair: false, .. })),
                "{policy:?}: {:?}",
                p.action
            );
        }
    }

    #[test]
    fn an_exited_container_is_repaired_under_always() {
        let p = plan(
            &running(),
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
        let with = |policy, code| {
            let w = want(true, policy);
            let mut c = container("c1", ContainerState::Exited(Some(code)));
            c.spec_hash = w.hash();
            plan(&w, &[c]).action
        };
        assert_eq!(with(RestartPolicy::OnFailure, 0), None, "finished");
        assert!(matches!(
            with(RestartPolicy::OnFailure, 3),
            Some(ContainerAction::Start { repair: true, .. })
        ));
        assert_eq!(with(RestartPolicy::Never, 0), None);
        assert_eq!(with(RestartPolicy::Never, 3), None);
    }

    #[test]
    fn the_engine_restarting_a_container_is_waited_for() {
        let p = plan(&running(), &[container("c1", ContainerState::Restarting)]);
        assert_eq!(p.action, None);
    }

    #[test]
    fn stop_and_start_follow_the_desired_state() {
        let stopped = want(false, RestartPolicy::Always);
        let mut c = container("c1", ContainerState::Running);
        c.spec_hash = stopped.hash();
        assert_eq!(
            plan(&stopped, &[c.clone()]).action,
            Some(ContainerAction::Stop { id: "c1".into() })
        );
        c.state = ContainerState::Exited(Some(0));
        assert_eq!(plan(&stopped, &[c]).action, None);
        assert_eq!(
            plan(&running(), &[container("c1", ContainerState::Created)]).action,
            Some(ContainerAction::Start {
                id: "c1".into(),
                repair: false
            })
        );
    }

    #[test]
    fn a_paused_container_is_resumed() {
        let p = plan(&running(), &[container("c1", ContainerState::Paused)]);
        assert_eq!(p.action, Some(ContainerAction::Unpause { id: "c1".into() }));
    }

    #[test]
    fn a_restart_asked_for_restarts_a_running_container_once() {
        let mut w = running();
        w.intent = crate::orchestrator::Intent::Restart;
        let p = plan(&w, &[container("c1", ContainerState::Running)]);
        assert_eq!(p.action, Some(ContainerAction::Restart { id: "c1".into() }));
    }

    #[test]
    fn a_container_being_removed_is_waited_for_before_creating() {
        let mut old = container("c1", ContainerState::Removing);
        old.spec_hash = "h0".into();
        let p = plan(&running(), &[old]);
        assert_eq!(p.action, None);
        assert!(p.remove.is_empty());
        assert!(p.waiting_for_removal);
    }

    #[test]
    fn a_removal_is_announced_once_and_a_survivor_reported_once() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        assert_eq!(l.survived("c1", t0), None, "never removed");
        assert!(l.confirmed("c1", t0));
        // Listed again, removed again, again: reported once, announced never again.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(l.survived("c1", later), Some(Duration::from_secs(3)));
        assert!(!l.confirmed("c1", later));
        assert_eq!(l.survived("c1", later), None);
        assert!(!l.confirmed("c1", later));
        // Forgotten after a while.
        let much_later = t0 + Duration::from_secs(3600);
        assert!(l.confirmed("c2", much_later));
        assert!(l.confirmed("c1", much_later));
    }
}
