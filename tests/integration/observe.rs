//! Seeing what Hive does: events per agent, conditions, JSON logs carrying the agent and
//! its generation, the watch stream, and metrics.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, engine, wait_for, Hive, IMAGE};

async fn events(hive: &Hive, name: &str) -> Vec<Value> {
    let v: Value = hive
        .req(Method::GET, &format!("/v1/agents/{name}/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn reasons(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn the_reconcilers_decisions_are_events_and_conditions_follow_the_agent() {
    let hive = Hive::start().await;
    hive.put_yaml("ev", &agent_yaml("ev", "")).await;
    let a = hive.wait_phase("ev", "Running").await;
    let conditions = a["status"]["conditions"].as_array().unwrap();
    let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "True");
    assert!(conditions.iter().any(|c| c["type"] == "Progressing"));
    assert_eq!(
        reasons(&events(&hive, "ev").await)[..2],
        ["Created", "Started"]
    );

    // A spec change is a recreation, with its reason.
    hive.put_yaml("ev", &agent_yaml("ev", "  env: {V: \"2\"}\n"))
        .await;
    hive.wait_phase("ev", "Running").await;
    let e = events(&hive, "ev").await;
    let recreated = e
        .iter()
        .find(|e| e["reason"] == "Recreated")
        .expect("a Recreated event");
    assert!(
        recreated["message"]
            .as_str()
            .unwrap()
            .contains("generation 2"),
        "{recreated}"
    );
    assert_eq!(recreated["generation"], 2);
    assert!(reasons(&e).contains(&"Removed".to_string()));

    // A kill out of band is repaired, saying the exit code.
    let id = hive.inspect("ev").await.unwrap().id.unwrap();
    let options = bollard::query_parameters::KillContainerOptions {
        signal: "SIGKILL".into(),
    };
    engine()
        .await
        .kill_container(&id, Some(options))
        .await
        .unwrap();
    let repaired = wait_for("a Repaired event", || async {
        events(&hive, "ev")
            .await
            .into_iter()
            .find(|e| e["reason"] == "Repaired")
    })
    .await;
    assert!(
        repaired["message"]
            .as_str()
            .unwrap()
            .contains("exit code 137"),
        "{repaired}"
    );
    assert_eq!(repaired["type"], "Warning");

    // Stopping makes it not Ready.
    hive.post_json("/v1/agents/ev/action", &json!({"action": "stop"}))
        .await;
    let stopped = hive.wait_phase("ev", "Stopped").await;
    let ready = stopped["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("Stopped"))
    );

    // Failures and back-off are events too.
    hive.put_yaml(
        "noimg",
        &agent_yaml("noimg", "").replace(IMAGE, "hive-test-missing:1"),
    )
    .await;
    let e = wait_for("Failed and BackOff events", || async {
        let e = events(&hive, "noimg").await;
        let r = reasons(&e);
        (r.contains(&"Failed".to_string()) && r.contains(&"BackOff".to_string())).then_some(e)
    })
    .await;
    let failed = e.iter().find(|e| e["reason"] == "Failed").unwrap();
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .contains("hive-test-missing:1"));

    // Events go with the agent.
    hive.req(Method::DELETE, "/v1/agents/noimg")
        .send()
        .await
        .unwrap();
    wait_for("noimg to go", || async {
        hive.get("noimg").await.is_none().then_some(())
    })
    .await;
    let r = hive
        .req(Method::GET, "/v1/agents/noimg/events")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn json_logs_carry_the_agent_and_its_generation_on_every_reconcile_line() {
    let hive = Hive::start_args(&["--log-format".into(), "json".into()]).await;
    hive.put_yaml("logged", &agent_yaml("logged", "")).await;
    hive.wait_phase("logged", "Running").await;
    let logs = hive.logs();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let reconcile: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "reconcile")
        .collect();
    assert!(!reconcile.is_empty(), "{logs}");
    for l in &reconcile {
        assert_eq!(l["span"]["agent"], "logged", "{l}");
        assert_eq!(l["span"]["generation"], 1, "{l}");
    }
    assert!(reconcile.iter().any(|l| l["fields"]["reason"] == "Created"));
}

#[tokio::test]
async fn hive_wait_and_describe_use_conditions_and_events() {
    let hive = Hive::start().await;
    hive.put_yaml("cond", &agent_yaml("cond", "")).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args([
            "wait",
            "cond",
            "--for",
            "condition=Ready",
            "--timeout",
            "60s",
        ])
        .env("AGENT_API_URL", &hive.url)
        .env("AGENT_API_KEY", &hive.key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "agent/cond condition=Ready\n"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["describe", "cond"])
        .env("AGENT_API_URL", &hive.url)
        .env("AGENT_API_KEY", &hive.key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Ready:") && text.contains("Events:") && text.contains("Created"),
        "{text}"
    );
}
