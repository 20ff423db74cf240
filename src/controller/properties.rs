//! A property test of the rule "nothing a client writes makes a pass panic": arbitrary
//! Agent documents (durations up to absurd, any restart policy and state, times from the
//! first year to the last) go through decoding, validation and admission, and then,
//! admitted or not (the store may hold a record an older Hive admitted), through the
//! deadlines, the resync's judgement, the workload and the status a pass computes.

use proptest::prelude::*;

use super::plan::{needs_pass, outcome, with_conditions};
use crate::agent::{Agent, AgentStatus, Timestamp};
use crate::orchestrator::{Applied, Observed, RunState};
use crate::policy::Policy;
use crate::store::{Record, Store};

/// Durations as clients could write them: sensible, absurd, and not durations at all.
fn duration() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (
            0u64..u64::MAX,
            prop::sample::select(vec!["ns", "s", "m", "h", "d", "w", "y"])
        )
            .prop_map(|(n, unit)| Some(format!("{n}{unit}"))),
        (
            0u64..100_000,
            prop::sample::select(vec!["s", "m", "h", "d", "y"])
        )
            .prop_map(|(n, unit)| Some(format!("{n}{unit}"))),
        "[ -~]{0,8}".prop_map(Some),
    ]
}

/// RFC 3339 times from year 1 to 9999.
fn time() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (1i32..=9999, 1u8..=12, 1u8..=28, 0u8..24)
            .prop_map(|(y, mo, d, h)| Some(format!("{y:04}-{mo:02}-{d:02}T{h:02}:00:00Z"))),
    ]
}

fn document() -> impl Strategy<Value = serde_json::Value> {
    (
        (duration(), duration(), duration()),
        (time(), time(), time()),
        prop::sample::select(vec!["Always", "OnFailure", "Never"]),
        prop::sample::select(vec!["Running", "Stopped"]),
        prop::sample::select(vec!["Pending", "Running", "Stopped", "Succeeded", "Failed"]),
        (0u64..4, 0u64..4),
    )
        .prop_map(
            |(
                (ttl, idle, after),
                (created, transition, idle_since),
                restart,
                state,
                phase,
                (generation, observed),
            )| {
                let mut spec = serde_json::json!({
                    "image": "busybox:1", "restartPolicy": restart, "state": state,
                    "lifecycle": {}
                });
                if let Some(t) = ttl {
                    spec["ttl"] = t.into();
                }
                if let Some(t) = idle {
                    spec["lifecycle"]["idleTimeout"] = t.into();
                }
                if let Some(t) = after {
                    spec["lifecycle"]["ttlAfterFinished"] = t.into();
                }
                serde_json::json!({
                    "apiVersion": "hive/v1", "kind": "Agent",
                    "metadata": {"name": "p", "owner": "o", "generation": generation,
                                 "uid": "5d3638ee-d482-4c42-8b5a-0d405af35dd2",
                                 "creationTimestamp": created},
                    "spec": spec,
                    "status": {"phase": phase, "observedGeneration": observed,
                               "containerId": "c1", "lastTransitionTime": transition},
                    "_idleSince": idle_since,
                })
            },
        )
}

/// One store for every case (a workload reads the secrets of its `envFrom`).
fn store() -> &'static (tempfile::TempDir, Store) {
    static STORE: std::sync::OnceLock<(tempfile::TempDir, Store)> = std::sync::OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    })
}

fn observed(state: RunState) -> Observed {
    Observed {
        id: "c1".into(),
        agent: "p".into(),
        uid: "5d3638ee-d482-4c42-8b5a-0d405af35dd2".into(),
        spec_hash: "h".into(),
        store: Some("s".into()),
        state,
        restarts: 1,
        created: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_agent_document_makes_admission_or_a_pass_panic(mut doc in document()) {
        let idle_since = doc.as_object_mut().unwrap().remove("_idleSince").unwrap();
        let Ok(agent) = crate::document::typed::<Agent>(doc) else { return Ok(()) };
        // Admission: under the built-in policy, and under one with lifecycle maxima.
        let strict = Policy::from_yaml(
            "lifecycle: {defaults: {ttl: 1h, idleTimeout: 5m}, max: {ttl: 2d, ttlAfterFinished: 1h}}",
        )
        .unwrap();
        if agent.validate().is_ok() {
            for policy in [Policy::default(), strict] {
                let mut admitted = agent.clone();
                let _ = policy.admit(&mut admitted, &[], &Default::default());
            }
        }
        // A pass over the record, admitted or not.
        let mut record = Record { agent, internal: Default::default() };
        record.internal.idle_since = idle_since.as_str().map(|t| Timestamp::parse(t).unwrap());
        record.internal.last_activity = record.agent.status.last_transition_time;
        let _ = (
            record.agent.expires_at(),
            record.idle_deadline(),
            record.idle_clock(),
            record.finished_deadline(),
        );
        let _ = super::workload::workload(&record, &store().1, &Policy::default());
        for state in [
            RunState::Running,
            RunState::Created,
            RunState::Starting,
            RunState::Suspended,
            RunState::Terminating,
            RunState::Exited { code: Some(0) },
            RunState::Exited { code: Some(137) },
            RunState::Exited { code: None },
        ] {
            let mine = [observed(state)];
            let _ = needs_pass(&record, || Some("h".into()), &mine);
            let _ = needs_pass(&record, || None, &[]);
            let applied = Applied { current: Some(observed(state)), note: None, done: Vec::new() };
            let o = outcome(&record.agent, &applied);
            let status = AgentStatus { phase: o.phase, message: o.message, ..Default::default() };
            let _ = with_conditions(&record.agent.status.conditions, status, None);
        }
        let _ = outcome(&record.agent, &Applied { current: None, note: None, done: Vec::new() });
    }
}
