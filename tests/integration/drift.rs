//! Drift repair: what someone does to Hive's containers behind its back is undone, and
//! what is not Hive's (no labels, or another instance's) is never touched.

use std::collections::HashMap;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, RemoveContainerOptions,
};

use crate::harness::{
    container_id, containers_with_label, engine, token, wait_for, Hive, RemoveOnDrop, IMAGE,
    PLAIN_LABEL, SLEEP,
};

#[tokio::test]
async fn a_container_killed_out_of_band_is_restarted() {
    let hive = Hive::start().await;
    hive.put_yaml("k", &crate::harness::agent_yaml("k", ""))
        .await;
    let agent = hive.wait_phase("k", "Running").await;
    let id = container_id(&agent);
    engine()
        .await
        .kill_container(
            &id,
            Some(KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        )
        .await
        .unwrap();
    wait_for("the killed container to run again", || async {
        let a = hive.get("k").await?;
        let running = hive.inspect("k").await?.state?.running == Some(true);
        (running
            && a["status"]["phase"] == "Running"
            && a["status"]["restartCount"].as_u64() >= Some(1))
        .then_some(())
    })
    .await;
    assert_eq!(
        hive.inspect("k").await.unwrap().id.unwrap(),
        id,
        "the same container, restarted"
    );
}

#[tokio::test]
async fn a_container_removed_out_of_band_is_recreated() {
    let hive = Hive::start().await;
    hive.put_yaml("r", &crate::harness::agent_yaml("r", ""))
        .await;
    let agent = hive.wait_phase("r", "Running").await;
    let id = container_id(&agent);
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    engine()
        .await
        .remove_container(&id, Some(options))
        .await
        .unwrap();
    let new_id = wait_for("a new container", || async {
        let c = hive.inspect("r").await?;
        let new = c.id.clone()?;
        (new != id && c.state?.running == Some(true)).then_some(new)
    })
    .await;
    wait_for("status to show it", || async {
        let a = hive.get("r").await?;
        (a["status"]["containerId"] == new_id.as_str()).then_some(())
    })
    .await;
    assert_eq!(hive.containers().await.len(), 1);
}

/// Creates and starts a container with the given labels, as someone might by hand.
/// Hive may remove it between the two steps (it may be an orphan of its own): a start
/// that finds it gone is fine.
async fn run_by_hand(name: &str, labels: HashMap<String, String>) -> String {
    let d = engine().await;
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        entrypoint: Some(SLEEP.iter().map(|s| s.to_string()).collect()),
        labels: Some(labels),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(name.into()),
        ..Default::default()
    };
    let id = d.create_container(Some(options), body).await.unwrap().id;
    let _ = d.start_container(&id, None).await;
    id
}

#[tokio::test]
async fn orphans_go_and_foreign_containers_stay() {
    let hive = Hive::start().await;
    let store = hive
        .get_open("/readyz")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["store"]
        .as_str()
        .unwrap()
        .to_string();
    let label = |k: &str, v: &str| (k.to_string(), v.to_string());
    let ours = |agent: &str, store: &str| {
        HashMap::from([
            label("hive.managed", "true"),
            label("hive.instance", &hive.instance),
            label("hive.store", store),
            label("hive.agent", agent),
        ])
    };
    // This store's labels, but no agent of that name: an orphan.
    let orphan = run_by_hand(&format!("orphan-{}", token()), ours("ghost", &store)).await;
    // Another store's container on this instance, another instance's, an unstamped one
    // and an unlabelled one: none are Hive's to touch.
    let other_store = run_by_hand(
        &format!("theirs-{}", token()),
        ours("ghost", "another-store"),
    )
    .await;
    let mut unstamped_labels = ours("ghost", "");
    unstamped_labels.remove("hive.store");
    let unstamped = run_by_hand(&format!("unstamped-{}", token()), unstamped_labels).await;
    let other_instance = format!("t{}", token());
    let leftovers = RemoveOnDrop(other_instance.clone());
    let foreign = run_by_hand(
        &format!("foreign-{}", token()),
        HashMap::from([
            label("hive.managed", "true"),
            label("hive.instance", &other_instance),
            label("hive.agent", "ghost"),
        ]),
    )
    .await;
    let plain_label = format!("{PLAIN_LABEL}={other_instance}");
    let (k, v) = plain_label.split_once('=').unwrap();
    let plain = run_by_hand(&format!("plain-{}", token()), HashMap::from([label(k, v)])).await;

    wait_for("the orphan to be removed", || async {
        engine()
            .await
            .inspect_container(&orphan, None)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // The resync that removed the orphan reports the other store's containers.
    let reported = wait_for("the other stores' containers to be reported", || async {
        let ready: serde_json::Value = hive
            .req(reqwest::Method::GET, "/readyz")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let ids: Vec<String> = ready["foreignContainers"]
            .as_array()?
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect();
        (ids.len() == 2).then_some(ids)
    })
    .await;
    assert!(
        reported.contains(&other_store) && reported.contains(&unstamped),
        "{reported:?}"
    );
    let metrics = hive
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("hive_foreign_containers 2"), "{metrics}");
    let d = engine().await;
    for id in [&other_store, &unstamped, &foreign, &plain] {
        let c = d
            .inspect_container(id, None)
            .await
            .expect("a foreign container is untouched");
        assert_eq!(c.state.unwrap().running, Some(true));
    }
    drop(leftovers);
    assert!(containers_with_label(&plain_label).await.is_empty());
}

#[tokio::test]
async fn a_container_paused_out_of_band_is_resumed() {
    let hive = Hive::start().await;
    hive.put_yaml("p", &crate::harness::agent_yaml("p", ""))
        .await;
    let agent = hive.wait_phase("p", "Running").await;
    let id = container_id(&agent);
    engine().await.pause_container(&id).await.unwrap();
    wait_for("the paused container to run again", || async {
        let s = hive.inspect("p").await?.state?;
        (s.running == Some(true) && s.paused == Some(false)).then_some(())
    })
    .await;
}
