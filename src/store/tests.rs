//! The store on disk: durability under concurrency, versions and generations, owners,
//! and the bookkeeping the controller relies on.

use super::*;
use crate::agent::{Agent, DesiredState};
use std::sync::Arc;

fn agent(name: &str) -> Agent {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "hive/v1", "kind": "Agent",
        "metadata": {"name": name}, "spec": {"image": "img"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_durable_writes_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            store.create(agent(&format!("a{i}"))).unwrap();
            store.flush().await.unwrap();
        });
    }
    let all = async {
        while let Some(t) = tasks.join_next().await {
            t.unwrap()
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), all)
        .await
        .expect("every flush completes");
    assert_eq!(store.list().unwrap().len(), 200);
}

#[test]
fn generation_moves_only_with_the_spec_and_versions_with_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let created = store.create(agent("a")).unwrap();
    assert_eq!(created.agent.metadata.generation, 1);
    let (same, applied) = store.apply(agent("a"), None).unwrap();
    assert_eq!(applied, Applied::Unchanged);
    assert_eq!(
        same.agent.metadata.resource_version,
        created.agent.metadata.resource_version
    );
    let mut changed = agent("a");
    changed.spec.image = "other".into();
    let (updated, applied) = store.apply(changed, None).unwrap();
    assert_eq!(applied, Applied::Updated);
    assert_eq!(updated.agent.metadata.generation, 2);
    assert_ne!(
        updated.agent.metadata.resource_version,
        created.agent.metadata.resource_version
    );
    let (stopped, _) = store.set_state("a", DesiredState::Stopped).unwrap();
    assert_eq!(stopped.agent.metadata.generation, 3);
    // Asked again: the spec does not change (nor the generation), but the action counts
    // as activity (the idle clock starts again), so the record is written.
    let (again, woke) = store.set_state("a", DesiredState::Stopped).unwrap();
    assert!(!woke);
    assert_eq!(again.agent.metadata.generation, 3);
    assert!(again.internal.last_activity.is_some());
    let mut stale = agent("a");
    stale.metadata.resource_version = created.agent.metadata.resource_version.clone();
    assert!(matches!(
        store.apply(stale, None),
        Err(StoreError::Conflict { .. })
    ));
}

#[test]
fn another_owners_object_is_written_only_when_taken_over_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let owned = |owner: &str| {
        let mut a = agent("a");
        a.metadata.owner = Some(owner.into());
        a.spec.image = format!("img-{owner}");
        a
    };
    store.create(owned("bob")).unwrap();
    assert!(matches!(
        store.apply(owned("admin"), None),
        Err(StoreError::OwnedBy { .. })
    ));
    let (r, _) = store.apply(owned("admin"), Some("bob")).unwrap();
    assert_eq!(r.agent.metadata.owner.as_deref(), Some("admin"));

    let secret = |owner: &str, value: &str| Secret {
        name: "keys".into(),
        owner: owner.into(),
        data: [("K".to_string(), value.to_string())].into(),
        resource_version: String::new(),
        creation_timestamp: None,
    };
    store.put_secret(secret("bob", "1"), None).unwrap();
    let refused = store.put_secret(secret("admin", "2"), None).unwrap_err();
    assert!(
        refused.to_string().contains("belongs to owner \"bob\""),
        "{refused}"
    );
    assert_eq!(store.secret("keys").unwrap().unwrap().data["K"], "1");
    assert!(store.delete_secret("keys", "admin").is_err());
    store.put_secret(secret("admin", "2"), Some("bob")).unwrap();
    assert!(
        store.delete_secret("keys", "bob").is_err(),
        "no longer bob's"
    );
    assert!(store.delete_secret("keys", "admin").unwrap());
}

#[test]
fn two_owners_racing_for_a_secret_name_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let racers: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|owner| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store.put_secret(
                    Secret {
                        name: "race".into(),
                        owner: owner.into(),
                        data: [("K".to_string(), owner.to_string())].into(),
                        resource_version: String::new(),
                        creation_timestamp: None,
                    },
                    None,
                )
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    let winner = store.secret("race").unwrap().unwrap();
    assert_eq!(
        winner.data["K"], winner.owner,
        "the winner's value, the winner's owner"
    );
}

#[test]
fn a_restart_asked_for_during_a_pass_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let seen = store.create(agent("a")).unwrap();
    // The API asks for a restart while a pass that read `seen` is under way...
    store.request_restart("a").unwrap();
    // ...and the pass writes its status with what it saw.
    let mut done = seen.internal.clone();
    done.restarts_done = done.restarts_requested;
    let uid = seen.agent.metadata.uid.unwrap();
    store
        .update_status("a", uid, seen.agent.status.clone(), done)
        .unwrap();
    let now = store.get("a").unwrap().unwrap().internal;
    assert_eq!(
        (now.restarts_requested, now.restarts_done),
        (1, 0),
        "still pending"
    );
}

#[test]
fn a_store_keeps_its_identity_and_a_new_store_gets_another() {
    let dir = tempfile::tempdir().unwrap();
    let id = Store::open(dir.path()).unwrap().id().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(Store::open(dir.path()).unwrap().id(), id);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(Store::open(other.path()).unwrap().id(), id);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn the_view_follows_every_write_and_reopens_as_it_was_with_its_label_index() {
    let dir = tempfile::tempdir().unwrap();
    let names = |s: &Snapshot, k: &str, v: &str| -> Vec<String> {
        s.labels
            .get(&(k.to_string(), v.to_string()))
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    };
    let labelled = |name: &str, team: &str| {
        let mut a = agent(name);
        a.metadata.labels.insert("team".into(), team.into());
        a
    };
    {
        let store = Store::open(dir.path()).unwrap();
        store.create(labelled("a", "red")).unwrap();
        store.create(labelled("b", "red")).unwrap();
        let before = store.snapshot();
        store.apply(labelled("a", "blue"), None).unwrap();
        let s = store.snapshot();
        assert_eq!(names(&s, "team", "red"), ["b"]);
        assert_eq!(names(&s, "team", "blue"), ["a"]);
        // An older snapshot is untouched by later writes.
        assert_eq!(names(&before, "team", "red"), ["a", "b"]);
        assert!(s.version > before.version);
        // Each entry's JSON is the agent as stored.
        let json: serde_json::Value =
            serde_json::from_slice(&s.agents.get("a").unwrap().json).unwrap();
        assert_eq!(json["metadata"]["labels"]["team"], "blue");
        assert_eq!(
            json["metadata"]["resourceVersion"].as_str().unwrap(),
            s.version.to_string()
        );
        let b = store.mark_deleted("b").unwrap();
        store.remove("b", b.agent.metadata.uid.unwrap()).unwrap();
        let s = store.snapshot();
        assert!(names(&s, "team", "red").is_empty());
        assert!(!s
            .labels
            .contains_key(&("team".to_string(), "red".to_string())));
        assert_eq!(s.agents.len(), 1);
    }
    let store = Store::open(dir.path()).unwrap();
    let s = store.snapshot();
    assert_eq!(s.agents.keys().cloned().collect::<Vec<_>>(), ["a"]);
    assert_eq!(names(&s, "team", "blue"), ["a"]);
    assert_eq!(
        s.version.to_string(),
        s.agents["a"]
            .record
            .agent
            .metadata
            .resource_version
            .clone()
            .unwrap()
    );
}
