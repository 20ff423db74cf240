//! The Kubernetes backend against the mock API server: every request it makes (method,
//! path, body) for create, change, stop/start, delete with and without retained volumes,
//! drift, the watch, the lease and the refusals.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use super::apiserver::{ApiServer, Seen};
use super::{mock, KubernetesOrchestrator};
use crate::agent::{Env, Volume};
use crate::orchestrator::{
    AlwaysCreate, Done, Holder, Intent, LeaseStore, Orchestrator, OrchestratorError, Ownership,
    RemoveReason, RunState, Workload,
};

const NS: &str = "agents";
const PODS: &str = "/api/v1/namespaces/agents/pods";
const SECRETS: &str = "/api/v1/namespaces/agents/secrets";
const SERVICES: &str = "/api/v1/namespaces/agents/services";
const CLAIMS: &str = "/api/v1/namespaces/agents/persistentvolumeclaims";

fn backend() -> (KubernetesOrchestrator, ApiServer) {
    let (backend, handle) = mock(NS, "i");
    (backend, ApiServer::serve(handle))
}

fn ours() -> Ownership {
    Ownership {
        store: "s".into(),
        adopt_foreign: false,
    }
}

fn workload() -> Workload {
    Workload {
        image: "img:1".into(),
        command: Some(vec!["/bin/sleep".into(), "3600".into()]),
        env: Env([("TOKEN".to_string(), "hunter2".to_string())].into()),
        memory_bytes: Some(64 << 20),
        volumes: vec![
            Volume {
                name: "keep".into(),
                mount_path: "/keep".into(),
                retain: true,
                adopt_retained: false,
            },
            Volume {
                name: "scratch".into(),
                mount_path: "/scratch".into(),
                retain: false,
                adopt_retained: false,
            },
        ],
        ..Workload::example()
    }
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn body<'a>(seen: &'a [Seen], line: &str) -> &'a Value {
    seen.iter()
        .find(|s| s.line() == line)
        .and_then(|s| s.body.as_ref())
        .unwrap_or_else(|| panic!("no {line} with a body in {:?}", lines(seen)))
}

fn pod_names(server: &ApiServer) -> Vec<String> {
    server
        .objects("pods")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn create_makes_the_service_claims_pod_and_its_secret_in_that_order() {
    let (k, server) = backend();
    let w = workload();
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let seen = server.take_requests();
    let pod = server.objects("pods").pop().unwrap();
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("a-") && name.len() == 7, "{name}");
    assert_eq!(
        lines(&seen),
        vec![
            format!("GET {PODS}"),
            format!("GET {SERVICES}/a"),
            format!("POST {SERVICES}"),
            format!("GET {CLAIMS}/hive.i.a.keep"),
            format!("POST {CLAIMS}"),
            format!("GET {CLAIMS}/hive.i.a.scratch"),
            format!("POST {CLAIMS}"),
            format!("POST {PODS}"),
            format!("POST {SECRETS}"),
        ]
    );
    assert_eq!(
        seen[0].query,
        "&labelSelector=hive.managed%3Dtrue%2Chive.instance%3Di%2Chive.agent%3Da"
    );
    let sent = body(&seen, &format!("POST {PODS}"));
    assert!(
        !sent.to_string().contains("hunter2"),
        "no secret in the Pod"
    );
    assert_eq!(
        sent["metadata"]["labels"]["hive.spec-hash"],
        json!(w.hash())
    );
    assert_eq!(sent["metadata"]["labels"]["hive.store"], "s");
    assert_eq!(sent["spec"]["automountServiceAccountToken"], false);
    assert_eq!(
        sent["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        json!(name)
    );
    let secret = body(&seen, &format!("POST {SECRETS}"));
    assert_eq!(secret["metadata"]["name"], json!(name));
    assert_eq!(
        secret["data"]["TOKEN"], "aHVudGVyMg==",
        "base64 of the value"
    );
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"], pod["metadata"]["uid"],
        "owned by the Pod"
    );
    let service = body(&seen, &format!("POST {SERVICES}"));
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(
        service["spec"]["selector"],
        json!({"hive.instance": "i", "hive.agent": "a"})
    );
    assert_eq!(
        applied.done,
        vec![
            Done::Created {
                id: name.clone(),
                replacing: false
            },
            Done::Started { id: name.clone() }
        ]
    );
    assert_eq!(
        applied.current.unwrap().state,
        RunState::Starting,
        "as the server answered"
    );
    // The kubelet ran it: the next look sees it running, and changes nothing.
    let again = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert_eq!(
        lines(&server.take_requests()),
        vec![format!("GET {PODS}"), format!("GET {SERVICES}/a")]
    );
    assert!(again.done.is_empty());
    assert_eq!(again.current.unwrap().state, RunState::Running);
}

#[tokio::test]
async fn a_spec_change_replaces_the_pod_and_its_secret_goes_with_the_old_one() {
    let (k, server) = backend();
    let mut w = workload();
    k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let old = pod_names(&server).pop().unwrap();
    server.take_requests();
    w.image = "img:2".into();
    // First the old Pod goes; the new one waits until it is gone (a real Pod terminates
    // for up to its grace period, and the two must not share the agent's volumes).
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let seen = server.take_requests();
    assert_eq!(
        lines(&seen),
        vec![format!("GET {PODS}"), format!("DELETE {PODS}/{old}")]
    );
    assert_eq!(
        body(&seen, &format!("DELETE {PODS}/{old}"))["gracePeriodSeconds"],
        10
    );
    assert_eq!(
        applied.done,
        vec![Done::Removed {
            id: old.clone(),
            reason: RemoveReason::SpecChanged
        }]
    );
    assert_eq!(
        applied.note.as_deref(),
        Some("waiting for the old Pod to terminate")
    );
    // The pass its deletion wakes makes the new one.
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let new = pod_names(&server).pop().unwrap();
    assert_ne!(new, old);
    assert_eq!(
        lines(&server.take_requests()),
        vec![
            format!("GET {PODS}"),
            format!("GET {SERVICES}/a"),
            format!("GET {CLAIMS}/hive.i.a.keep"),
            format!("GET {CLAIMS}/hive.i.a.scratch"),
            format!("POST {PODS}"),
            format!("POST {SECRETS}"),
        ]
    );
    assert!(matches!(&applied.done[0], Done::Created { id, .. } if *id == new));
    let secrets: Vec<Value> = server.objects("secrets");
    assert_eq!(
        secrets.len(),
        1,
        "the old Pod's Secret was collected with it"
    );
    assert_eq!(secrets[0]["metadata"]["name"], json!(new));
    assert_eq!(server.objects("services").len(), 1);
    assert_eq!(server.objects("persistentvolumeclaims").len(), 2);
}

#[tokio::test]
async fn stop_deletes_the_pod_and_start_makes_a_new_one() {
    let (k, server) = backend();
    let mut w = workload();
    k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let first = pod_names(&server).pop().unwrap();
    server.take_requests();
    w.intent = Intent::Stop;
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert_eq!(
        lines(&server.take_requests()),
        vec![format!("GET {PODS}"), format!("DELETE {PODS}/{first}")]
    );
    assert_eq!(applied.done, vec![Done::Stopped { id: first.clone() }]);
    assert!(applied.current.is_none());
    assert!(server.objects("pods").is_empty() && server.objects("secrets").is_empty());
    // Stopped stays stopped: a look changes nothing.
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert!(applied.done.is_empty());
    assert_eq!(lines(&server.take_requests()), vec![format!("GET {PODS}")]);
    w.intent = Intent::Run;
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert!(matches!(applied.done[0], Done::Created { .. }));
    assert_eq!(server.objects("pods").len(), 1);
    // A restart asked for: a new Pod, said once.
    w.intent = Intent::Restart;
    let before = pod_names(&server).pop().unwrap();
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert_eq!(applied.done, vec![Done::Restarted { id: before.clone() }]);
    assert!(server.objects("pods").is_empty());
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let after = pod_names(&server).pop().unwrap();
    assert!(matches!(&applied.done[0], Done::Created { id, .. } if *id == after));
    assert_ne!(before, after);
}

#[tokio::test]
async fn drift_a_pod_deleted_out_of_band_is_made_again_and_an_evicted_one_replaced() {
    let (k, server) = backend();
    let w = workload();
    k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let first = pod_names(&server).pop().unwrap();
    assert!(server.delete("pods", &first));
    assert!(k.observe("a").await.unwrap().is_empty());
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert!(matches!(
        applied.done[0],
        Done::Created {
            replacing: false,
            ..
        }
    ));
    let second = pod_names(&server).pop().unwrap();
    // Its process crashes: the kubelet restarts it (restartPolicy Always), Hive waits.
    server.exit_pod(&second, 1);
    let seen = k.observe("a").await.unwrap();
    assert_eq!((seen[0].state, seen[0].restarts), (RunState::Running, 1));
    // A Pod that ended although its policy says it runs (evicted): replaced, a repair.
    let mut never = server.object("pods", &second).unwrap();
    never["spec"]["restartPolicy"] = json!("Never");
    server.delete("pods", &second);
    server.put("pods", never);
    server.exit_pod(&second, 137);
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert_eq!(
        applied.done,
        vec![Done::Repaired {
            id: second.clone(),
            exit_code: Some(137)
        }]
    );
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let third = pod_names(&server).pop().unwrap();
    assert!(matches!(&applied.done[0], Done::Created { id, .. } if *id == third));
}

#[tokio::test]
async fn delete_removes_the_pod_service_and_claims_except_those_retained() {
    let (k, server) = backend();
    let w = workload();
    k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let pod = pod_names(&server).pop().unwrap();
    server.take_requests();
    let done = k
        .remove(std::slice::from_ref(&pod), RemoveReason::AgentDeleted)
        .await
        .unwrap();
    assert_eq!(
        done,
        vec![Done::Removed {
            id: pod.clone(),
            reason: RemoveReason::AgentDeleted
        }]
    );
    k.remove_volumes("a", w.uid).await.unwrap();
    let seen = server.take_requests();
    assert_eq!(
        lines(&seen),
        vec![
            format!("DELETE {PODS}/{pod}"),
            format!("GET {SERVICES}/a"),
            format!("DELETE {SERVICES}/a"),
            format!("GET {SERVICES}/a"),
            format!("GET {CLAIMS}"),
            format!("DELETE {CLAIMS}/hive.i.a.scratch"),
        ]
    );
    assert!(seen[4]
        .query
        .contains("hive.uid%3D00000000-0000-0000-0000-000000000007"));
    let claims = server.objects("persistentvolumeclaims");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["name"], "hive.i.a.keep", "retained");
    assert!(server.objects("services").is_empty() && server.objects("secrets").is_empty());
    // A new agent of the name does not get the retained claim unless it adopts it.
    let mut next = workload();
    next.uid = Uuid::from_u128(8);
    let err = k.apply(&next, &ours(), &AlwaysCreate).await.unwrap_err();
    assert!(
        matches!(&err, OrchestratorError::VolumeConflict(m) if m.contains("spec.volumes[0]") && m.contains("adoptRetained")),
        "{err}"
    );
    assert!(server.objects("pods").is_empty(), "nothing made");
    next.volumes[0].adopt_retained = true;
    k.apply(&next, &ours(), &AlwaysCreate).await.unwrap();
    assert_eq!(server.objects("pods").len(), 1);
}

#[tokio::test]
async fn names_and_pods_that_are_not_this_stores_are_left_alone() {
    let (k, server) = backend();
    server.put(
        "services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}),
    );
    let err = k
        .apply(&workload(), &ours(), &AlwaysCreate)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OrchestratorError::NameInUse { holder, .. } if holder.contains("not made by this Hive")),
        "{err}"
    );
    assert!(server.objects("pods").is_empty());
    server.delete("services", "a");
    // Another store's Pod of the agent.
    let (other, _) = (workload(), ());
    let theirs = Ownership {
        store: "t".into(),
        adopt_foreign: false,
    };
    k.apply(
        &Workload {
            store: "t".into(),
            ..other
        },
        &theirs,
        &AlwaysCreate,
    )
    .await
    .unwrap();
    let err = k
        .apply(&workload(), &ours(), &AlwaysCreate)
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::HeldByForeign { .. }),
        "{err}"
    );
    // Declared stopped, it says so too: its start would meet the other store's Pod.
    let stopped = Workload {
        intent: Intent::Stop,
        ..workload()
    };
    let err = k.apply(&stopped, &ours(), &AlwaysCreate).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::HeldByForeign { .. }),
        "{err}"
    );
    assert_eq!(server.objects("pods").len(), 1, "theirs is untouched");
}

#[tokio::test]
async fn the_watch_names_agents_whose_pods_change() {
    let (k, server) = backend();
    let mut events = k.events();
    k.apply(&workload(), &ours(), &AlwaysCreate).await.unwrap();
    async fn next(
        events: &mut futures_util::stream::BoxStream<'static, Result<String, OrchestratorError>>,
    ) -> Result<String, OrchestratorError> {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
    }
    // The first listing names it.
    assert_eq!(next(&mut events).await.unwrap(), "a");
    // Then the watch: a Pod deleted out of band, and the one made again.
    let pod = pod_names(&server).pop().unwrap();
    server.delete("pods", &pod);
    assert_eq!(next(&mut events).await.unwrap(), "a");
    let mut b = workload();
    b.agent = "b".into();
    k.apply(&b, &ours(), &AlwaysCreate).await.unwrap();
    assert_eq!(next(&mut events).await.unwrap(), "b", "ADDED");
    assert_eq!(next(&mut events).await.unwrap(), "b", "MODIFIED: running");
    let watches: Vec<Seen> = server
        .take_requests()
        .into_iter()
        .filter(|s| s.query.contains("watch=true"))
        .collect();
    assert!(
        watches[0]
            .query
            .contains("labelSelector=hive.managed%3Dtrue%2Chive.instance%3Di"),
        "{:?}",
        watches[0].query
    );
}

#[tokio::test]
async fn logs_come_from_the_pods_log() {
    let (k, server) = backend();
    k.apply(&workload(), &ours(), &AlwaysCreate).await.unwrap();
    let pod = pod_names(&server).pop().unwrap();
    server.set_logs(&pod, "hello\nworld\n");
    server.take_requests();
    let out: Vec<u8> = k
        .logs(
            &pod,
            crate::orchestrator::LogOptions {
                tail: Some(5),
                ..Default::default()
            },
        )
        .map(|chunk| chunk.unwrap())
        .concat()
        .await;
    assert_eq!(out, b"hello\nworld\n");
    let seen = server.take_requests();
    assert_eq!(lines(&seen), vec![format!("GET {PODS}/{pod}/log")]);
    assert!(seen[0].query.contains("container=agent") && seen[0].query.contains("tailLines=5"));
}

#[tokio::test]
async fn the_lease_is_a_coordination_lease_with_optimistic_writes() {
    let (k, server) = backend();
    let me = Holder {
        token: "t1".into(),
        host: "h".into(),
        pid: 1,
        data_dir: "/data".into(),
        store: "s".into(),
    };
    let other = Holder {
        token: "t2".into(),
        ..me.clone()
    };
    assert!(k.read_lease().await.unwrap().is_none());
    let lease = k
        .acquire_lease(&me, Duration::from_secs(15), None)
        .await
        .unwrap();
    let object = server.object("leases", "hive-i").unwrap();
    assert_eq!(object["spec"]["holderIdentity"], "t1");
    assert_eq!(object["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(
        object["metadata"]["annotations"]["hive.lease/data-dir"],
        "/data"
    );
    assert_eq!(k.read_lease().await.unwrap().unwrap().holder, me);
    // Someone who saw no lease cannot take it now.
    let err = k
        .acquire_lease(&other, Duration::from_secs(15), None)
        .await
        .unwrap_err();
    assert!(matches!(err, OrchestratorError::LeaseConflict(_)));
    let renewed = k.renew_lease(&lease).await.unwrap();
    // A renewal over a stale version fails: the lease changed under it.
    assert!(matches!(
        k.renew_lease(&lease).await.unwrap_err(),
        OrchestratorError::LeaseConflict(_)
    ));
    k.release_lease(&renewed).await.unwrap();
    assert!(k.read_lease().await.unwrap().is_none());
    let taken = k
        .acquire_lease(&other, Duration::from_secs(15), None)
        .await
        .unwrap();
    assert_eq!(
        taken.transitions, 1,
        "a change of holder, released in between or not"
    );
    let seen = server.take_requests();
    assert!(lines(&seen)
        .iter()
        .all(|l| l.contains("/apis/coordination.k8s.io/v1/namespaces/agents/leases")));
}

#[tokio::test]
async fn a_pod_left_without_its_secret_gets_it_again() {
    let (k, server) = backend();
    let w = workload();
    k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let pod = pod_names(&server).pop().unwrap();
    // As if Hive had stopped between making the Pod and its Secret.
    assert!(server.delete("secrets", &pod));
    server.exit_pod(&pod, 1);
    let seen = k.observe("a").await.unwrap();
    assert_eq!(
        seen[0].state,
        RunState::Starting,
        "the kubelet waits for the Secret"
    );
    let applied = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert!(applied.note.unwrap().contains("CreateContainerConfigError"));
    let seen = server.take_requests();
    assert!(lines(&seen).ends_with(&[format!("GET {SECRETS}/{pod}"), format!("POST {SECRETS}"),]));
    assert_eq!(
        body(&seen, &format!("POST {SECRETS}"))["metadata"]["ownerReferences"][0]["name"],
        json!(pod)
    );
    assert_eq!(k.observe("a").await.unwrap()[0].state, RunState::Running);
    server.take_requests();
    // Settled: the next pass asks for nothing more than the Pods and the Service.
    k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    assert_eq!(
        lines(&server.take_requests()),
        vec![format!("GET {PODS}"), format!("GET {SERVICES}/a")]
    );
}

#[tokio::test]
async fn claims_are_mounted_only_for_their_agent_and_volume() {
    let (k, server) = backend();
    let mut w = workload();
    w.volumes.truncate(1);
    // A claim under the name Hive would use, but labelled for another agent.
    let mut theirs = serde_json::to_value(super::render::claim("i", &w, 0)).unwrap();
    theirs["metadata"]["labels"]["hive.agent"] = json!("b");
    server.put("persistentvolumeclaims", theirs);
    let err = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap_err();
    assert!(
        matches!(&err, OrchestratorError::VolumeConflict(m) if m.contains("another agent or volume")),
        "{err}"
    );
    // One still being deleted is waited for, said so.
    let mut going = serde_json::to_value(super::render::claim("i", &w, 0)).unwrap();
    going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    server.delete("persistentvolumeclaims", "hive.i.a.keep");
    server.put("persistentvolumeclaims", going);
    let err = k.apply(&w, &ours(), &AlwaysCreate).await.unwrap_err();
    assert!(err.to_string().contains("still being deleted"), "{err}");
    assert!(server.objects("pods").is_empty(), "nothing made");
}

#[tokio::test]
async fn an_earlier_agents_service_is_made_again_for_the_new_one() {
    let (k, server) = backend();
    let w = workload();
    k.apply(&w, &ours(), &AlwaysCreate).await.unwrap();
    let pod = pod_names(&server).pop().unwrap();
    // The agent is deleted and its Pod goes, but its Service stays (a Hive stopped
    // halfway); a new agent of the name comes.
    server.delete("pods", &pod);
    let next = Workload {
        uid: Uuid::from_u128(8),
        volumes: vec![],
        ..workload()
    };
    k.apply(&next, &ours(), &AlwaysCreate).await.unwrap();
    let service = server.object("services", "a").unwrap();
    assert_eq!(
        service["metadata"]["labels"]["hive.uid"],
        json!(next.uid.to_string())
    );
    // Deleting the earlier agent's volumes leaves the new agent's Service alone.
    k.remove_volumes("a", w.uid).await.unwrap();
    assert!(server.object("services", "a").is_some());
}
