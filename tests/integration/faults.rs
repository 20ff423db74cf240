//! Fault tests: Hive killed mid-converge, the engine cut off and restored, racing
//! writers, and out-of-band changes to what Hive runs.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::harness::{agent_yaml, container_id, engine, wait_for, Hive};
use crate::proxy::{Mode, SocketProxy};

#[tokio::test]
async fn kill_9_mid_converge_then_restart_converges_with_one_container_each() {
    let mut hive = Hive::process(HashMap::new(), Vec::new()).await;
    let names: Vec<String> = (0..30).map(|i| format!("f{i:02}")).collect();
    let mut puts = JoinSet::new();
    for name in &names {
        let req = hive
            .req(Method::PUT, &format!("/v1/agents/{name}"))
            .header("content-type", "application/yaml")
            .body(agent_yaml(name, ""));
        let name = name.clone();
        puts.spawn(async move { (name, req.send().await.map(|r| r.status().as_u16())) });
    }
    let mut acknowledged = Vec::new();
    while let Some(done) = puts.join_next().await {
        let (name, status) = done.unwrap();
        assert_eq!(status.unwrap(), 201, "{name}");
        acknowledged.push(name);
    }
    // Kill it while it converges: some containers exist, not all.
    wait_for("converging to have begun", || async {
        (!hive.containers().await.is_empty()).then_some(())
    })
    .await;
    hive.kill9();
    let at_kill = hive.containers().await.len();

    hive.restart().await;
    for name in &acknowledged {
        hive.wait_phase(name, "Running").await;
    }
    let containers = hive.containers().await;
    let mut per_agent: HashMap<String, usize> = HashMap::new();
    for c in &containers {
        *per_agent
            .entry(c.labels.as_ref().unwrap()["hive.agent"].clone())
            .or_default() += 1;
    }
    assert_eq!(
        per_agent.len(),
        30,
        "{at_kill} containers at the kill; now {per_agent:?}"
    );
    assert!(per_agent.values().all(|n| *n == 1), "{per_agent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_cut_off_and_restored_is_caught_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = SocketProxy::start(dir.path());
    let hive = Hive::start_with(HashMap::from([(
        "DOCKER_HOST".to_string(),
        Some(proxy.url()),
    )]))
    .await;
    let ready = |hive: &Hive| {
        let r = hive.http.get(format!("{}/readyz", hive.url));
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&hive).await, 200);
    let before = hive.running("before", "").await;
    let before_id = container_id(&before);

    proxy.set(Mode::Cut);
    wait_for("readyz to go 503", || async {
        (ready(&hive).await == 503).then_some(())
    })
    .await;
    // Writes are still taken; the status says why nothing happens.
    assert_eq!(
        hive.put_yaml("during", &agent_yaml("during", ""))
            .await
            .status(),
        201
    );
    wait_for("the status to say the engine is unreachable", || async {
        let a = hive.get("during").await?;
        a["status"]["message"]
            .as_str()?
            .contains("unreachable")
            .then_some(())
    })
    .await;
    // Nothing was deleted meanwhile.
    let c = engine()
        .await
        .inspect_container(&before_id, None)
        .await
        .unwrap();
    assert_eq!(c.state.unwrap().running, Some(true));

    proxy.set(Mode::Pass);
    wait_for("readyz to come back", || async {
        (ready(&hive).await == 200).then_some(())
    })
    .await;
    hive.wait_phase("during", "Running").await;
    // Caught up: the outage's message goes once the engine's events resume (a resync of
    // every agent), without a write or a restart.
    let after = wait_for("the old agent's status to be current again", || async {
        let a = hive.get("before").await?;
        (a["status"]["phase"] == "Running" && a["status"].get("message").is_none()).then_some(a)
    })
    .await;
    assert_eq!(
        after["status"]["containerId"],
        before_id.as_str(),
        "the old agent kept its container"
    );
    assert_eq!(hive.containers().await.len(), 2);
}

#[tokio::test]
async fn racing_puts_with_a_resource_version_have_exactly_one_winner() {
    let hive = Hive::start().await;
    hive.put_yaml("race", &agent_yaml("race", "  env: {WHO: nobody}\n"))
        .await;
    let settled = hive.wait_phase("race", "Running").await;
    let rv = settled["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let body = |who: &str| {
        agent_yaml("race", &format!("  env: {{WHO: {who}}}\n")).replace(
            "  name: race\n",
            &format!("  name: race\n  resourceVersion: \"{rv}\"\n"),
        )
    };
    let (alice, bob) = (body("alice"), body("bob"));
    let (a, b) = tokio::join!(hive.put_yaml("race", &alice), hive.put_yaml("race", &bob));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "exactly one wins");
    let winner = if a.status() == 200 { "alice" } else { "bob" };
    let loser = if a.status() == 200 { b } else { a };
    let e: Value = loser.json().await.unwrap();
    assert_eq!(e["error"]["code"], "conflict");
    let agent = hive.wait_phase("race", "Running").await;
    assert_eq!(agent["metadata"]["generation"], 2);
    assert_eq!(agent["spec"]["env"]["WHO"], winner);
    let env = hive.container_env("race").await;
    assert!(
        env.contains(&format!("WHO={winner}")),
        "the container runs the winner's spec: {env:?}"
    );
}

#[tokio::test]
async fn a_container_stopped_out_of_band_is_started_again() {
    let hive = Hive::start().await;
    let agent = hive.running("st", "").await;
    let id = container_id(&agent);
    let options = bollard::query_parameters::StopContainerOptions {
        t: Some(1),
        ..Default::default()
    };
    engine()
        .await
        .stop_container(&id, Some(options))
        .await
        .unwrap();
    wait_for("the stopped container to run again", || async {
        (hive.inspect("st").await?.state?.running == Some(true)).then_some(())
    })
    .await;
    assert_eq!(hive.inspect("st").await.unwrap().id.unwrap(), id);
    // It was Hive, not the engine's policy (a stop by hand disables that), that started it.
    let a = hive.wait_phase("st", "Running").await;
    assert_eq!(a["status"]["restartCount"], 1);
    // A declared stop is not undone the same way.
    hive.post_json("/v1/agents/st/action", &json!({"action": "stop"}))
        .await;
    hive.wait_phase("st", "Stopped").await;
    assert_eq!(
        hive.inspect("st").await.unwrap().state.unwrap().running,
        Some(false)
    );
}
