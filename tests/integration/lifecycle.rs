//! An agent's life on the real engine: created with Hive's labels and confinement,
//! recreated when its spec changes, stopped, started, restarted, deleted.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, container_id, engine, wait_for, Hive};

#[tokio::test]
async fn create_gives_a_running_confined_container_with_the_labels() {
    let hive = Hive::start().await;
    let yaml = agent_yaml(
        "researcher-1",
        "  env: {MODEL: gpt-4o}\n  resources: {memory: 64Mi, cpus: \"0.5\"}\n",
    );
    let r = hive.put_yaml("researcher-1", &yaml).await;
    assert_eq!(r.status(), 201);
    let agent = hive.wait_phase("researcher-1", "Running").await;
    let uid = agent["metadata"]["uid"].as_str().unwrap();

    let c = hive
        .inspect("researcher-1")
        .await
        .expect("container hive-<instance>-researcher-1");
    assert_eq!(
        Some(c.id.clone().unwrap()),
        agent["status"]["containerId"].as_str().map(String::from)
    );
    assert_eq!(c.state.as_ref().unwrap().running, Some(true));
    let labels = c.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels["hive.managed"], "true");
    assert_eq!(labels["hive.instance"], hive.instance);
    assert_eq!(labels["hive.agent"], "researcher-1");
    assert_eq!(labels["hive.uid"], uid);
    assert_eq!(labels["hive.spec-hash"].len(), 32);
    let ready: serde_json::Value = hive.get_open("/readyz").await.json().await.unwrap();
    assert_eq!(
        labels["hive.store"],
        ready["store"].as_str().unwrap(),
        "the container names the store that declared it"
    );
    let env = c.config.as_ref().unwrap().env.clone().unwrap();
    assert!(env.contains(&"MODEL=gpt-4o".to_string()));

    let host = c.host_config.unwrap();
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(host
        .security_opt
        .unwrap()
        .contains(&"no-new-privileges".to_string()));
    assert!(host.pids_limit.unwrap() > 0);
    assert!(host.binds.unwrap_or_default().is_empty());
    assert_ne!(host.network_mode.as_deref(), Some("host"));
}

#[tokio::test]
async fn a_spec_change_recreates_the_container() {
    let hive = Hive::start().await;
    hive.put_yaml("chg", &agent_yaml("chg", "  env: {V: \"1\"}\n"))
        .await;
    let first = hive.wait_phase("chg", "Running").await;
    let old_id = container_id(&first);

    let r = hive
        .put_yaml("chg", &agent_yaml("chg", "  env: {V: \"2\"}\n"))
        .await;
    assert_eq!(r.status(), 200);
    let changed: Value = r.json().await.unwrap();
    assert_eq!(changed["metadata"]["generation"], 2);
    let second = hive.wait_phase("chg", "Running").await;
    let new_id = second["status"]["containerId"].as_str().unwrap();
    assert_ne!(new_id, old_id, "a new container for the new spec");
    assert!(
        engine()
            .await
            .inspect_container(&old_id, None)
            .await
            .is_err(),
        "the old container is gone"
    );
    let env = hive.container_env("chg").await;
    assert!(env.contains(&"V=2".to_string()));
    assert_eq!(hive.containers().await.len(), 1);

    // A label-only change bumps no generation and keeps the container.
    let relabelled = agent_yaml("chg", "  env: {V: \"2\"}\n")
        .replace("  name: chg\n", "  name: chg\n  labels: {tier: a}\n");
    let r = hive.put_yaml("chg", &relabelled).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["metadata"]["generation"],
        2
    );
    let third = hive.wait_phase("chg", "Running").await;
    assert_eq!(third["status"]["containerId"], new_id);
}

#[tokio::test]
async fn stop_and_start_are_declarative() {
    let hive = Hive::start().await;
    let running = hive.running("ss", "").await;
    let id = container_id(&running);

    let r = hive
        .post_json("/v1/agents/ss/action", &json!({"action": "stop"}))
        .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["spec"]["state"], "Stopped");
    hive.wait_phase("ss", "Stopped").await;
    let c = hive.inspect("ss").await.unwrap();
    assert_eq!(c.state.unwrap().running, Some(false));
    assert_eq!(c.id.unwrap(), id, "stopping keeps the container");

    // The stop is stored: it is in the spec that a GET returns.
    assert_eq!(hive.get("ss").await.unwrap()["spec"]["state"], "Stopped");

    let r = hive
        .post_json("/v1/agents/ss/action", &json!({"action": "start"}))
        .await;
    assert_eq!(r.status(), 202);
    let started = hive.wait_phase("ss", "Running").await;
    assert_eq!(started["status"]["containerId"], id.as_str());
    assert_eq!(
        hive.inspect("ss").await.unwrap().state.unwrap().running,
        Some(true)
    );
    // A declared start is a start, not the repair of a drift.
    assert_eq!(started["status"]["restartCount"], 0, "{started}");
    let events = hive.get_json("/v1/agents/ss/events").await;
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(!reasons.contains(&"Repaired"), "{reasons:?}");
}

#[tokio::test]
async fn restart_restarts_the_container_once() {
    let hive = Hive::start().await;
    hive.put_yaml("rs", &agent_yaml("rs", "")).await;
    hive.wait_phase("rs", "Running").await;
    let before = hive.inspect("rs").await.unwrap();
    let started_before = before.state.unwrap().started_at.unwrap();

    let r = hive
        .post_json("/v1/agents/rs/action", &json!({"action": "restart"}))
        .await;
    assert_eq!(r.status(), 202);
    let after = wait_for("the container to start again", || async {
        let c = hive.inspect("rs").await?;
        let s = c.state.clone()?;
        (s.running == Some(true) && s.started_at.as_deref() != Some(started_before.as_str()))
            .then_some(c)
    })
    .await;
    assert_eq!(after.id, before.id, "a restart keeps the container");
    let agent = wait_for("restartCount to count it", || async {
        let a = hive.get("rs").await?;
        (a["status"]["restartCount"] == 1 && a["status"]["phase"] == "Running").then_some(a)
    })
    .await;
    assert_eq!(agent["metadata"]["generation"], 1);

    // Once: later passes do not restart it again.
    let started = after.state.unwrap().started_at;
    hive.get_open("/readyz").await;
    let r = hive.put_yaml("rs2", &agent_yaml("rs2", "")).await; // a write wakes the controller
    assert_eq!(r.status(), 201);
    hive.wait_phase("rs2", "Running").await;
    assert_eq!(
        hive.inspect("rs").await.unwrap().state.unwrap().started_at,
        started
    );

    // A stopped agent cannot be restarted.
    hive.post_json("/v1/agents/rs2/action", &json!({"action": "stop"}))
        .await;
    let r = hive
        .post_json("/v1/agents/rs2/action", &json!({"action": "restart"}))
        .await;
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn delete_removes_the_container_then_the_record() {
    let hive = Hive::start().await;
    hive.put_yaml("del", &agent_yaml("del", "")).await;
    hive.wait_phase("del", "Running").await;
    let r = hive
        .req(Method::DELETE, "/v1/agents/del")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"]["phase"], "Terminating");
    wait_for("the record to go", || async {
        hive.get("del").await.is_none().then_some(())
    })
    .await;
    assert!(
        hive.containers().await.is_empty(),
        "the container is gone too"
    );
    let r = hive
        .req(Method::DELETE, "/v1/agents/del")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_missing_image_fails_with_a_message_and_recovers_when_fixed() {
    let hive = Hive::start().await;
    let yaml = agent_yaml("img", "").replace(crate::harness::IMAGE, "hive-test-no-such-image:404");
    assert_eq!(hive.put_yaml("img", &yaml).await.status(), 201);
    let failed = hive.wait_phase("img", "Failed").await;
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(message.contains("hive-test-no-such-image:404"), "{message}");
    assert!(message.contains("spec.image"), "says what to do: {message}");
    assert!(hive.containers().await.is_empty());

    // Fixing the spec converges it.
    assert_eq!(
        hive.put_yaml("img", &agent_yaml("img", "")).await.status(),
        200
    );
    hive.wait_phase("img", "Running").await;
}

#[tokio::test]
async fn restart_policies_follow_the_exit_code() {
    let hive = Hive::start().await;
    let exits = |name: &str, code: u8, policy: &str| {
        format!(
            "apiVersion: hive/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  image: {}\n  command: [/bin/sh, -c, \"exit {code}\"]\n  restartPolicy: {policy}\n",
            crate::harness::IMAGE
        )
    };
    hive.put_yaml("ok", &exits("ok", 0, "OnFailure")).await;
    hive.put_yaml("bad", &exits("bad", 3, "Never")).await;
    hive.wait_phase("ok", "Succeeded").await;
    let bad = hive.wait_phase("bad", "Failed").await;
    assert!(
        bad["status"]["message"]
            .as_str()
            .unwrap()
            .contains("code 3"),
        "{bad}"
    );
}

// --- spec.lifecycle: idle stop, touch, resume, ttlAfterFinished.

/// Seconds since `rfc3339`.
fn age_of(rfc3339: &str) -> f64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    (time::OffsetDateTime::now_utc() - t).as_seconds_f64()
}

async fn touch(hive: &Hive, name: &str) {
    let r = hive
        .post_json(
            &format!("/v1/agents/{name}/action"),
            &json!({"action": "touch"}),
        )
        .await;
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
}

#[tokio::test]
async fn an_idle_agent_is_stopped_touch_keeps_it_and_start_resumes_it_with_its_volume() {
    let hive = Hive::start().await;
    let spec = "  lifecycle: {idleTimeout: 6s}\n  volumes: [{name: work, mountPath: /work}]\n";
    let yaml = agent_yaml("napper", spec).replace(
        "command: [\"/bin/sleep\", \"3600\"]",
        "command: [sh, -c, \"echo kept > /work/note; exec sleep 3600\"]",
    );
    let r = hive.put_yaml("napper", &yaml).await;
    assert!(r.status().is_success());
    let running = hive.wait_phase("napper", "Running").await;
    assert!(running["status"]["stopsAt"].is_string(), "{running}");
    let container = container_id(&running);

    // Touched every 1.5 s, it keeps running for 12 s (twice its idleTimeout).
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        touch(&hive, "napper").await;
        let a = hive.get("napper").await.unwrap();
        assert_eq!(a["status"]["phase"], "Running", "touched, yet: {a}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Left alone, it is stopped within idleTimeout plus one resync (2 s), with its reason.
    let left = std::time::Instant::now();
    let idle = wait_for("napper to be stopped for idleness", || async {
        let a = hive.get("napper").await?;
        a["status"]["idleSince"].is_string().then_some(a)
    })
    .await;
    let stopped = wait_for("napper's status to say Stopped", || async {
        let a = hive.get("napper").await?;
        (a["status"]["phase"] == "Stopped").then_some(a)
    })
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(6 + 2 + 3),
        "{:?}",
        left.elapsed()
    );
    assert_eq!(
        stopped["spec"]["state"], "Running",
        "the declared state is untouched"
    );
    assert!(
        stopped["status"]["message"]
            .as_str()
            .unwrap()
            .contains("idleTimeout"),
        "{stopped}"
    );
    assert!(stopped["status"].get("stopsAt").is_none(), "{stopped}");
    let _ = idle;
    let c = hive.inspect("napper").await.expect("the container is kept");
    assert_eq!(c.id.as_deref(), Some(container.as_str()));
    assert!(!c.state.unwrap().running.unwrap());
    let events = hive.get_json("/v1/agents/napper/events").await;
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Idled"),
        "{events}"
    );

    // start resumes it, with its volume and what it wrote there.
    let r = hive
        .post_json("/v1/agents/napper/action", &json!({"action": "start"}))
        .await;
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let resumed = hive.wait_phase("napper", "Running").await;
    assert!(resumed["status"].get("idleSince").is_none(), "{resumed}");
    let events = hive.get_json("/v1/agents/napper/events").await;
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Resumed"),
        "{events}"
    );
    let out = std::process::Command::new("docker")
        .args(["exec", &hive.container_name("napper"), "cat", "/work/note"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kept");
    let metrics = hive.get_text("/metrics").await;
    assert!(metrics.contains("hive_agents_idled_total 1"), "{metrics}");
    assert!(metrics.contains("hive_agents_resumed_total 1"), "{metrics}");
}

#[tokio::test]
async fn the_idle_deadline_survives_a_restart_of_hive() {
    let mut hive = Hive::start().await;
    hive.running("sleeper", "  lifecycle: {idleTimeout: 8s}\n")
        .await;
    let before = hive.get("sleeper").await.unwrap()["status"]["stopsAt"].clone();
    assert!(before.is_string());
    hive.restart().await;
    let after = hive.get("sleeper").await.unwrap();
    assert_eq!(
        after["status"]["stopsAt"], before,
        "the deadline comes from stored times"
    );
    let stopped = wait_for("sleeper to be stopped for idleness", || async {
        let a = hive.get("sleeper").await?;
        (a["status"]["phase"] == "Stopped").then_some(a)
    })
    .await;
    let since = stopped["status"]["idleSince"].as_str().unwrap();
    // It stopped at the deadline set before the restart (plus a resync), not 8 s after it.
    let deadline = before.as_str().unwrap();
    let events = hive.get_json("/v1/agents/sleeper/events").await;
    assert!(
        age_of(deadline) - age_of(since) < 3.5,
        "{deadline} {since} {events:#}"
    );
}

#[tokio::test]
async fn a_finished_agent_is_deleted_ttl_after_finished_later() {
    let hive = Hive::start().await;
    let yaml = agent_yaml(
        "job",
        "  restartPolicy: Never\n  lifecycle: {ttlAfterFinished: 4s}\n",
    )
    .replace(
        "command: [\"/bin/sleep\", \"3600\"]",
        "command: [sh, -c, \"exit 0\"]",
    );
    let r = hive.put_yaml("job", &yaml).await;
    assert!(r.status().is_success());
    let done = hive.wait_phase("job", "Succeeded").await;
    assert!(done["status"]["expiresAt"].is_string(), "{done}");
    let finished = std::time::Instant::now();
    wait_for("the finished job's record to go", || async {
        hive.get("job").await.is_none().then_some(())
    })
    .await;
    assert!(
        finished.elapsed() > Duration::from_secs(2),
        "not before its ttl"
    );
    wait_for("the finished job's container to go", || async {
        hive.inspect("job").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_lifecycle_durations_are_refused_naming_the_field() {
    let hive = Hive::start().await;
    for (field, spec) in [
        (
            "spec.lifecycle.idleTimeout",
            "  lifecycle: {idleTimeout: soon}\n",
        ),
        (
            "spec.lifecycle.ttlAfterFinished",
            "  lifecycle: {ttlAfterFinished: 0s}\n",
        ),
        (
            "spec.lifecycle.idleTimeout",
            "  lifecycle: {idleTimeout: \"-5m\"}\n",
        ),
    ] {
        let r = hive.put_yaml("bad", &agent_yaml("bad", spec)).await;
        assert_eq!(
            r.status(),
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "{spec}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    assert!(hive.get("bad").await.is_none(), "nothing was written");
}

#[tokio::test]
async fn an_agent_busy_on_its_own_is_not_idle_without_touches() {
    let hive = Hive::start().await;
    // Works a little every second (as an agent waiting on outbound calls does), never touched.
    let yaml = agent_yaml("worker", "  lifecycle: {idleTimeout: 3s}\n").replace(
        "command: [\"/bin/sleep\", \"3600\"]",
        "command: [sh, -c, \"while true; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1; done\"]",
    );
    assert!(hive.put_yaml("worker", &yaml).await.status().is_success());
    hive.wait_phase("worker", "Running").await;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let a = hive.get("worker").await.unwrap();
        assert_eq!(a["status"]["phase"], "Running", "working, yet: {a}");
        assert!(a["status"].get("idleSince").is_none(), "{a}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Its deadline moved with its work.
    let a = hive.get("worker").await.unwrap();
    assert!(
        age_of(a["status"]["stopsAt"].as_str().unwrap()) < 0.0,
        "{a}"
    );
}
