//! Hive's own restarts: a restarted Hive adopts what runs without duplicating or
//! restarting it, a kill -9 loses no acknowledged write, SIGTERM leaves agents running,
//! and a first start without a key generates one.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::Value;

use crate::harness::{agent_yaml, engine, mode_of, wait_for, Hive};

#[tokio::test]
async fn a_restarted_hive_adopts_without_duplicates_or_restarts() {
    let mut hive = Hive::start().await;
    for name in ["keep-a", "keep-b", "lost"] {
        assert_eq!(
            hive.put_yaml(name, &agent_yaml(name, "")).await.status(),
            201
        );
    }
    let mut before = HashMap::new();
    for name in ["keep-a", "keep-b", "lost"] {
        hive.wait_phase(name, "Running").await;
        let c = hive.inspect(name).await.unwrap();
        before.insert(name, (c.id.unwrap(), c.state.unwrap().started_at.unwrap()));
    }
    let status = hive.stop();
    assert!(status.success(), "SIGTERM ends hive cleanly: {status}");
    // Agents keep running while Hive is down.
    for name in ["keep-a", "keep-b"] {
        assert_eq!(
            hive.inspect(name).await.unwrap().state.unwrap().running,
            Some(true)
        );
    }
    // Something happens while Hive is down: a container is removed.
    let options = bollard::query_parameters::RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    engine()
        .await
        .remove_container(&before["lost"].0, Some(options))
        .await
        .unwrap();

    hive.restart().await;
    // The missed change is repaired...
    wait_for("the lost agent to be recreated", || async {
        let c = hive.inspect("lost").await?;
        (c.id? != before["lost"].0 && c.state?.running == Some(true)).then_some(())
    })
    .await;
    // ...and the healthy ones were neither duplicated nor restarted.
    for name in ["keep-a", "keep-b"] {
        let c = hive.inspect(name).await.unwrap();
        assert_eq!(c.id.unwrap(), before[name].0, "{name} kept its container");
        assert_eq!(
            c.state.unwrap().started_at.unwrap(),
            before[name].1,
            "{name} was not restarted"
        );
        let a = hive.wait_phase(name, "Running").await;
        assert_eq!(a["status"]["containerId"], before[name].0.as_str());
    }
    assert_eq!(
        hive.containers().await.len(),
        3,
        "exactly one container per agent"
    );
}

#[tokio::test]
async fn kill_9_right_after_201_loses_nothing() {
    let mut hive = Hive::process(HashMap::new(), Vec::new()).await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let name = format!("d{i}");
        let r = hive
            .put_yaml(&name, &agent_yaml(&name, "  state: Stopped\n"))
            .await;
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        acknowledged.push((name, body["metadata"]["uid"].clone()));
    }
    hive.kill9();
    hive.restart().await;
    for (name, uid) in &acknowledged {
        let a = hive
            .get(name)
            .await
            .unwrap_or_else(|| panic!("{name} was acknowledged and lost"));
        assert_eq!(&a["metadata"]["uid"], uid);
    }
}

#[tokio::test]
async fn the_first_start_without_a_key_generates_one() {
    let hive = Hive::start_with(HashMap::from([("AGENT_API_KEY".to_string(), None)])).await;
    let path = hive.data_dir().join("api-key");
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(
        mode_of(&hive.data_dir()),
        0o700,
        "the store (secrets included) is private"
    );
    let key = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert!(key.len() >= 32);
    assert!(hive.logs().contains("api-key"), "the path is logged");
    assert!(!hive.logs().contains(&key), "the key is not");
    let r = hive
        .http
        .request(Method::GET, format!("{}/v1/agents", hive.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = hive.req(Method::GET, "/v1/agents").send().await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "the harness's own key is not the generated one"
    );
}

#[tokio::test]
async fn a_second_hive_on_the_same_store_refuses_to_start() {
    let hive = Hive::start().await;
    let output = tokio::time::timeout(
        crate::harness::DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_hive"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(hive.data_dir())
            .env("AGENT_API_KEY", "k")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second hive exits instead of serving")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("locked by another process"), "{stderr}");
    // The first one is unharmed.
    let r = hive.req(Method::GET, "/v1/agents").send().await.unwrap();
    assert_eq!(r.status(), 200);
}
