//! What to do with an agent's Pods, once the shared [`select`] chose among them and
//! [`decide`] said what to do: Kubernetes' verbs for the step (Docker's are in
//! `docker::plan`), nothing decided here. Pure, so every case is a table row.

use crate::orchestrator::{
    decide, select, Observed, Ownership, RemoveReason, Selection, Step, Workload,
};

/// What to do with an agent's Pods.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Pods to delete, and why (a stopped agent's Pods are stopped, not removed).
    pub remove: Vec<(String, RemoveReason)>,
    /// Pods to delete because the agent is stopped.
    pub stop: Vec<String>,
    /// The Pod that stays.
    pub keeper: Option<Observed>,
    /// A new Pod is due, and why (made now unless `waiting`).
    pub create: Option<Create>,
    /// A new Pod is due but an old one is still terminating: it waits (as Docker's plan
    /// waits for a removal), so that two processes never share the agent's volumes.
    pub waiting: bool,
}

/// Why a new Pod is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Create {
    /// None carries the agent (first start, a start, a spec change, a lost Pod).
    Missing,
    /// A restart was asked for: the keeper goes, a new Pod comes.
    Restart,
    /// The Pod ended although its restart policy says it runs (evicted, say).
    Repair { exit_code: Option<i64> },
}

/// Kubernetes' verbs for the step the shared [`decide`] chose, as if deleted Pods were
/// gone at once. A Pod's containers are never started again from outside, so a start, a
/// repair and a restart replace the Pod (delete it, make a new one), and a stop deletes it.
fn verbs(want: &Workload, selection: &Selection) -> Plan {
    let keeper = selection.keeper.clone();
    let mut plan = Plan {
        remove: selection.strays.clone(),
        stop: Vec::new(),
        keeper: None,
        create: None,
        waiting: false,
    };
    let replace = |plan: &mut Plan, why: Create| {
        plan.stop.extend(keeper.as_ref().map(|k| k.id.clone()));
        plan.create = Some(why);
    };
    match decide(want, selection) {
        // Kubernetes freezes nothing, so nothing is thawed.
        Step::Keep | Step::Thaw => plan.keeper = keeper.clone(),
        Step::Create | Step::WaitForRemoval => plan.create = Some(Create::Missing),
        Step::Stop => plan.stop.extend(keeper.as_ref().map(|k| k.id.clone())),
        Step::Start => replace(&mut plan, Create::Missing),
        Step::Repair { exit_code } => replace(&mut plan, Create::Repair { exit_code }),
        Step::Restart => replace(&mut plan, Create::Restart),
    }
    plan
}

/// Decides as `verbs`, then holds a new Pod back while any of the agent's Pods (one
/// being deleted now included) is still terminating: the Pod that replaces another is
/// made by the pass its deletion wakes.
pub fn plan(want: &Workload, pods: &[Observed]) -> Plan {
    let all = Ownership {
        store: String::new(),
        adopt_foreign: true,
    };
    plan_selected(want, &select(want, pods, &all))
}

/// [`plan`], once the shared [`select`] chose among the agent's Pods.
pub fn plan_selected(want: &Workload, selection: &Selection) -> Plan {
    let mut plan = verbs(want, selection);
    let replacing = !plan.remove.is_empty() || !plan.stop.is_empty();
    plan.waiting = plan.create.is_some() && (selection.terminating || replacing);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RestartPolicy;
    use crate::orchestrator::kubernetes::render::tests::{seen, workload};
    use crate::orchestrator::{Intent, RunState};

    #[test]
    fn stopping_deletes_the_pod_and_a_change_replaces_it() {
        let mut w = workload();
        let p = plan(&w, &[]);
        assert_eq!(p.create, Some(Create::Missing));
        let p = plan(&w, &[seen("a-1", RunState::Running)]);
        assert_eq!(
            (p.create.clone(), p.keeper.unwrap().id),
            (None, "a-1".into())
        );
        let mut old = seen("a-1", RunState::Running);
        old.spec_hash = "h0".into();
        let p = plan(&w, &[old]);
        assert_eq!(p.remove, vec![("a-1".into(), RemoveReason::SpecChanged)]);
        assert_eq!(p.create, Some(Create::Missing));
        assert!(p.waiting, "the new Pod waits until the old one is gone");
        w.intent = Intent::Stop;
        let p = plan(&w, &[seen("a-1", RunState::Running)]);
        assert_eq!((p.stop, p.create), (vec!["a-1".to_string()], None));
        assert_eq!(
            plan(&w, &[]),
            Plan {
                remove: vec![],
                stop: vec![],
                keeper: None,
                create: None,
                waiting: false
            }
        );
    }

    #[test]
    fn restarts_repairs_and_finished_pods() {
        let mut w = workload();
        w.intent = Intent::Restart;
        let p = plan(&w, &[seen("a-1", RunState::Running)]);
        assert_eq!(
            (p.stop, p.create),
            (vec!["a-1".to_string()], Some(Create::Restart))
        );
        w.intent = Intent::Run;
        let evicted = seen("a-1", RunState::Exited { code: None });
        let p = plan(&w, std::slice::from_ref(&evicted));
        assert_eq!(p.create, Some(Create::Repair { exit_code: None }));
        w.restart_policy = RestartPolicy::OnFailure;
        let ok = seen("a-1", RunState::Exited { code: Some(0) });
        // The hash follows the policy: the Pods were made from this workload.
        let ok = Observed {
            spec_hash: w.hash(),
            ..ok
        };
        let p = plan(&w, &[ok]);
        assert_eq!(
            (p.create, p.keeper.map(|k| k.id)),
            (None, Some("a-1".into()))
        );
        let gone = Observed {
            state: RunState::Terminating,
            ..seen("a-0", RunState::Running)
        };
        let p = plan(&workload(), &[gone]);
        assert!(p.remove.is_empty(), "already going");
        assert_eq!((p.create, p.waiting), (Some(Create::Missing), true));
    }
}
