//! The one convergence decision, made here for every backend (Docker, Kubernetes and the
//! in-memory one) from the workloads as the backend observed them: which workload carries
//! an agent and which go ([`select`]), and what to do with the one that carries it
//! ([`decide`], a [`Step`] in no engine's verbs). A backend only carries the step out with
//! its own verbs (Docker starts an exited container again; Kubernetes replaces a Pod), so
//! the controller's tests, run against the in-memory backend, check production's rules.
//! The controller's resync judges "settled" by the same [`step`].

use super::{Observed, OrchestratorError, RemoveReason, RunState, Workload};
use crate::agent::RestartPolicy;

/// What is asked of an agent's workload now: its declared state, with what Hive knows of
/// its history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Intent {
    /// Declared Stopped (or stopped for idleness): nothing runs. A restart asked for
    /// meanwhile is moot.
    Stop,
    /// Declared Running: keep it running, and start again what ended against its restart
    /// policy.
    #[default]
    Run,
    /// Declared Running after Hive saw it stopped as declared: starting its exited
    /// workload is a start, not the repair of a drift, whatever the restart policy.
    Start,
    /// Running, with a restart asked for and not yet carried out.
    Restart,
}

impl Intent {
    /// Whether the agent should run.
    pub fn runs(self) -> bool {
        self != Intent::Stop
    }
}

/// What to do with an agent's workload, in no engine's verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: it is as wanted, or the engine brings it back by itself.
    Keep,
    /// None carries the agent and it should run: make one (and start it).
    Create,
    /// It is (or the old one is) still going away; nothing new is made meanwhile, so that
    /// two processes never share the agent's volumes.
    WaitForRemoval,
    /// Start it: made and never started, or stopped as declared and now declared running.
    Start,
    /// Start it again: it ended against its restart policy (stopped or killed outside
    /// Hive, or evicted).
    Repair { exit_code: Option<i64> },
    /// Stop it: the agent is declared stopped.
    Stop,
    /// Restart it, as asked.
    Restart,
    /// Thaw it: it was frozen outside Hive (thawed first, whatever else is asked).
    Thaw,
}

/// What to do for `want`, once [`select`] chose among its workloads.
pub fn decide(want: &Workload, selection: &Selection) -> Step {
    match &selection.keeper {
        Some(k) => step(want.intent, want.restart_policy, k.state),
        None if !want.intent.runs() => Step::Keep,
        None if selection.terminating => Step::WaitForRemoval,
        None => Step::Create,
    }
}

/// What to do with an agent's workload that is in `state`, for `intent`, under `policy`.
pub fn step(intent: Intent, policy: RestartPolicy, state: RunState) -> Step {
    use Intent as I;
    use RunState as S;
    match (intent, state) {
        (_, S::Terminating) => Step::WaitForRemoval,
        (_, S::Suspended) => Step::Thaw,
        (I::Stop, S::Running | S::Starting) => Step::Stop,
        (I::Stop, S::Created | S::Exited { .. }) => Step::Keep,
        (I::Restart, S::Running | S::Starting | S::Exited { .. }) => Step::Restart,
        (I::Run | I::Start | I::Restart, S::Created) => Step::Start,
        (I::Run | I::Start, S::Running | S::Starting) => Step::Keep,
        (I::Start, S::Exited { .. }) => Step::Start,
        (I::Run, S::Exited { code }) if policy.finished(code) => Step::Keep,
        (I::Run, S::Exited { code }) => Step::Repair { exit_code: code },
    }
}

/// Which workloads of the instance are one store's to manage.
#[derive(Clone, Debug)]
pub struct Ownership {
    /// The store's id.
    pub store: String,
    /// Take every workload of the instance for this store's (`--adopt-foreign`).
    pub adopt_foreign: bool,
}

impl Ownership {
    /// Whether `w` is this store's: stamped with its id, or made before workloads were
    /// stamped and carrying the uid of the agent this store declares by that name.
    pub fn owns(&self, w: &Observed, agent_uid: Option<&str>) -> bool {
        self.adopt_foreign
            || match &w.store {
                Some(s) => *s == self.store,
                None => agent_uid.is_some_and(|u| u == w.uid),
            }
    }
}

/// Which of an agent's workloads carries it, and what else is there: decided once, here,
/// for every backend (and the in-memory one), from the workloads as the backend observed
/// them.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// The workload to keep: this store's, of the agent's uid and current spec, not on its
    /// way out; a running one first, then the newest.
    pub keeper: Option<Observed>,
    /// This store's other live workloads of the agent, each with why it goes.
    pub strays: Vec<(String, RemoveReason)>,
    /// One of this store's workloads of the agent is still going away: nothing new is
    /// made meanwhile (two processes never share an agent's volumes).
    pub terminating: bool,
    /// Another store's live workload of the agent, by its store ("unknown" when it has no
    /// stamp): a new workload would meet it, so none is made.
    pub foreign: Option<String>,
}

/// Selects among `observed` (every workload of `want`'s agent on the instance) what
/// carries the agent, what goes, and what is in the way.
pub fn select(want: &Workload, observed: &[Observed], ownership: &Ownership) -> Selection {
    let uid = want.uid.to_string();
    let hash = want.hash();
    let (mine, others): (Vec<&Observed>, Vec<&Observed>) =
        observed.iter().partition(|w| ownership.owns(w, Some(&uid)));
    let live = |w: &&&Observed| w.state != RunState::Terminating;
    let keeper = mine
        .iter()
        .filter(live)
        .filter(|w| w.uid == uid && w.spec_hash == hash)
        .max_by_key(|w| (w.state == RunState::Running, w.created))
        .map(|w| (*w).clone());
    let strays = mine
        .iter()
        .filter(live)
        .filter(|w| keeper.as_ref().is_none_or(|k| k.id != w.id))
        .map(|w| {
            (
                w.id.clone(),
                RemoveReason::of_extra(&uid, &hash, &w.uid, &w.spec_hash),
            )
        })
        .collect();
    Selection {
        keeper,
        strays,
        terminating: mine.iter().any(|w| w.state == RunState::Terminating),
        foreign: others
            .iter()
            .find(|w| w.state != RunState::Terminating)
            .map(|w| w.store.clone().unwrap_or_else(|| "unknown".into())),
    }
}

impl Selection {
    /// Refuses a new workload (or a stopped agent's, whose start would meet it) while
    /// another store's workload carries the agent: it is left alone, and said so.
    pub fn refuse_foreign(&self, want: &Workload, making: bool) -> Result<(), OrchestratorError> {
        match &self.foreign {
            Some(store) if making || (!want.intent.runs() && self.keeper.is_none()) => {
                Err(OrchestratorError::HeldByForeign {
                    agent: want.agent.clone(),
                    store: store.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One workload of agent `a` as observed: this store's (`s`) unless `store` says.
    fn seen(id: &str, state: RunState, created: i64) -> Observed {
        let w = Workload::example();
        Observed {
            id: id.into(),
            agent: "a".into(),
            uid: w.uid.to_string(),
            spec_hash: w.hash(),
            store: Some("s".into()),
            state,
            restarts: 0,
            created,
        }
    }

    fn ours() -> Ownership {
        Ownership {
            store: "s".into(),
            adopt_foreign: false,
        }
    }

    #[test]
    fn the_keeper_is_the_running_then_newest_of_the_current_spec_and_the_rest_go_with_a_reason() {
        let w = Workload::example();
        let old_spec = Observed {
            spec_hash: "h0".into(),
            ..seen("old", RunState::Running, 9)
        };
        let earlier = Observed {
            uid: "another".into(),
            ..seen("earlier", RunState::Running, 9)
        };
        let observed = [
            seen("exited-new", RunState::Exited { code: Some(1) }, 5),
            seen("running-old", RunState::Running, 1),
            seen("going", RunState::Terminating, 8),
            old_spec,
            earlier,
        ];
        let s = select(&w, &observed, &ours());
        assert_eq!(s.keeper.map(|k| k.id).as_deref(), Some("running-old"));
        assert_eq!(
            s.strays,
            vec![
                ("exited-new".to_string(), RemoveReason::Duplicate),
                ("old".to_string(), RemoveReason::SpecChanged),
                ("earlier".to_string(), RemoveReason::EarlierAgent),
            ]
        );
        assert!(s.terminating && s.foreign.is_none());
        // Among the same state, the newest.
        let s = select(
            &w,
            &[
                seen("a1", RunState::Exited { code: None }, 1),
                seen("a2", RunState::Exited { code: None }, 2),
            ],
            &ours(),
        );
        assert_eq!(s.keeper.map(|k| k.id).as_deref(), Some("a2"));
        // Nothing on its way out is ever kept.
        let s = select(&w, &[seen("going", RunState::Terminating, 1)], &ours());
        assert!(s.keeper.is_none() && s.strays.is_empty() && s.terminating);
    }

    #[test]
    fn another_stores_live_workload_is_in_the_way_of_a_new_one_only() {
        let w = Workload::example();
        let theirs = Observed {
            store: Some("other".into()),
            ..seen("theirs", RunState::Running, 1)
        };
        let s = select(&w, std::slice::from_ref(&theirs), &ours());
        assert_eq!(s.foreign.as_deref(), Some("other"));
        assert!(s.keeper.is_none() && s.strays.is_empty(), "never touched");
        assert!(s.refuse_foreign(&w, true).is_err(), "no new one beside it");
        let stopped = Workload {
            intent: Intent::Stop,
            ..Workload::example()
        };
        assert!(
            s.refuse_foreign(&stopped, false).is_err(),
            "a start would meet it"
        );
        // With the agent carried by our own, it is merely reported.
        let s = select(
            &w,
            &[theirs.clone(), seen("ours", RunState::Running, 2)],
            &ours(),
        );
        assert!(s.refuse_foreign(&w, false).is_ok());
        // One going away is in nobody's way; adopted, it is ours.
        let going = Observed {
            state: RunState::Terminating,
            ..theirs.clone()
        };
        assert!(select(&w, &[going], &ours()).foreign.is_none());
        let adopt = Ownership {
            adopt_foreign: true,
            ..ours()
        };
        assert_eq!(
            select(&w, &[theirs], &adopt)
                .keeper
                .map(|k| k.id)
                .as_deref(),
            Some("theirs")
        );
    }

    #[test]
    fn an_exit_is_the_end_only_as_the_restart_policy_says() {
        use crate::agent::RestartPolicy::*;
        for (policy, code, finished) in [
            (Always, Some(0), false),
            (Always, Some(1), false),
            (Always, None, false),
            (OnFailure, Some(0), true),
            (OnFailure, Some(137), false),
            (OnFailure, None, false),
            (Never, Some(0), true),
            (Never, Some(1), true),
            (Never, None, true),
        ] {
            assert_eq!(policy.finished(code), finished, "{policy:?} {code:?}");
        }
    }

    #[test]
    fn one_step_for_every_intent_and_state() {
        use Intent::*;
        use RestartPolicy::{Always, Never, OnFailure};
        use RunState as S;
        let exited = |code| S::Exited { code: Some(code) };
        let repair = |code| Step::Repair {
            exit_code: Some(code),
        };
        for (intent, policy, state, want) in [
            // Running as declared: kept; made and not started: started.
            (Run, Always, S::Running, Step::Keep),
            (Run, Always, S::Starting, Step::Keep),
            (Run, Always, S::Created, Step::Start),
            // Ended: kept when its policy says it is done, started again when not.
            (Run, Always, exited(0), repair(0)),
            (Run, OnFailure, exited(0), Step::Keep),
            (Run, OnFailure, exited(137), repair(137)),
            (Run, Never, exited(1), Step::Keep),
            (
                Run,
                OnFailure,
                S::Exited { code: None },
                Step::Repair { exit_code: None },
            ),
            // Stopped as declared, then declared running: a start, whatever the policy.
            (Start, Never, exited(0), Step::Start),
            (Start, Always, S::Running, Step::Keep),
            // Declared stopped: a live one stops, an ended one stays.
            (Stop, Always, S::Running, Step::Stop),
            (Stop, Always, S::Starting, Step::Stop),
            (Stop, Always, exited(1), Step::Keep),
            (Stop, Always, S::Created, Step::Keep),
            // A restart asked for restarts it, even one that had finished.
            (Restart, Always, S::Running, Step::Restart),
            (Restart, Never, exited(0), Step::Restart),
            (Restart, Always, S::Created, Step::Start),
            // Frozen outside Hive: thawed first; going away: waited for.
            (Stop, Always, S::Suspended, Step::Thaw),
            (Run, Always, S::Suspended, Step::Thaw),
            (Run, Always, S::Terminating, Step::WaitForRemoval),
        ] {
            assert_eq!(
                step(intent, policy, state),
                want,
                "{intent:?} {policy:?} {state:?}"
            );
        }
    }

    #[test]
    fn without_a_keeper_one_is_made_unless_stopped_or_an_old_one_is_still_going() {
        let selection = |terminating| Selection {
            keeper: None,
            strays: vec![],
            terminating,
            foreign: None,
        };
        let w = |intent| Workload {
            intent,
            ..Workload::example()
        };
        assert_eq!(decide(&w(Intent::Run), &selection(false)), Step::Create);
        assert_eq!(decide(&w(Intent::Restart), &selection(false)), Step::Create);
        assert_eq!(
            decide(&w(Intent::Run), &selection(true)),
            Step::WaitForRemoval
        );
        assert_eq!(decide(&w(Intent::Stop), &selection(false)), Step::Keep);
        assert_eq!(decide(&w(Intent::Stop), &selection(true)), Step::Keep);
        let kept = Selection {
            keeper: Some(seen("k", RunState::Exited { code: Some(2) }, 1)),
            ..selection(true)
        };
        assert_eq!(
            decide(&w(Intent::Run), &kept),
            Step::Repair { exit_code: Some(2) }
        );
    }
}
