//! Seeing what Hive does: events per agent, conditions, JSON logs carrying the agent and
//! its generation, the watch stream, and metrics.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, engine, wait_for, Hive, IMAGE};

async fn events(hive: &Hive, name: &str) -> Vec<Value> {
    let v: Value = hive.get_json(&format!("/v1/agents/{name}/events")).await;
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
    let a = hive.running("ev", "").await;
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
    // A process: what is checked is the binary's log format.
    let hive = Hive::process(
        std::collections::HashMap::new(),
        vec!["--log-format".into(), "json".into()],
    )
    .await;
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
    let (ok, out, err) = hive.cli(&[
        "wait",
        "cond",
        "--for",
        "condition=Ready",
        "--timeout",
        "60s",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "agent/cond condition=Ready\n");
    let (_, text, _) = hive.cli(&["describe", "cond"]);
    assert!(
        text.contains("Ready:") && text.contains("Events:") && text.contains("Created"),
        "{text}"
    );
}

/// Reads a watch stream line by line until `until` holds for the lines so far.
async fn read_watch(r: reqwest::Response, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk.unwrap());
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                lines.push(serde_json::from_slice::<Value>(&line).unwrap());
                if until(&lines) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(crate::harness::DEADLINE, read)
        .await
        .expect("the watch delivered in time");
    lines
}

fn kinds_of<'a>(lines: &'a [Value], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|l| l["object"]["metadata"]["name"] == name)
        .map(|l| l["type"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn watches_stream_every_change_and_resume_from_a_version() {
    let mut hive = Hive::start().await;
    hive.put_yaml("before", &agent_yaml("before", "  state: Stopped\n"))
        .await;
    hive.wait_phase("before", "Stopped").await;
    let list = hive.list().await;
    let version = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // From the list's version: only what changes afterwards.
    let resumed = hive
        .req(
            Method::GET,
            &format!("/v1/agents?watch=true&resourceVersion={version}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.headers()["content-type"], "application/x-ndjson");
    // Without a version: the agents now, then changes.
    let fresh = hive
        .req(Method::GET, "/v1/agents?watch=true")
        .send()
        .await
        .unwrap();

    hive.put_yaml("w1", &agent_yaml("w1", "  state: Stopped\n"))
        .await;
    hive.wait_phase("w1", "Stopped").await;
    hive.req(Method::DELETE, "/v1/agents/w1")
        .send()
        .await
        .unwrap();

    let lines = read_watch(resumed, |l| kinds_of(l, "w1").contains(&"DELETED")).await;
    assert!(
        kinds_of(&lines, "before").is_empty(),
        "nothing from before the version"
    );
    let w1 = kinds_of(&lines, "w1");
    assert_eq!(w1.first(), Some(&"ADDED"));
    assert!(
        w1.contains(&"MODIFIED"),
        "status changes are modifications: {w1:?}"
    );
    let versions: Vec<u64> = lines
        .iter()
        .map(|l| {
            l["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "in order: {versions:?}"
    );

    let lines = read_watch(fresh, |l| kinds_of(l, "w1").contains(&"DELETED")).await;
    assert_eq!(
        kinds_of(&lines, "before"),
        vec!["ADDED"],
        "the current agents come first"
    );

    // hive get -w prints a line per change.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["get", "-w"])
        .env("AGENT_API_URL", &hive.url)
        .env("AGENT_API_KEY", &hive.key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    hive.put_yaml("w2", &agent_yaml("w2", "  state: Stopped\n"))
        .await;
    wait_for("hive get -w to show w2", || async {
        let text = seen.lock().unwrap().clone();
        (text
            .lines()
            .any(|l| l.starts_with("ADDED") && l.contains(" w2 "))
            && text.contains("before"))
        .then_some(())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.lock().unwrap().starts_with("EVENT"));

    // After a restart the old versions are gone: 410, list again.
    hive.restart().await;
    let r = hive
        .req(Method::GET, "/v1/agents?watch=true&resourceVersion=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("list again"));
}

#[tokio::test]
async fn metrics_count_reconciles_agents_engine_errors_and_requests() {
    let hive = Hive::start().await;
    hive.put_yaml("m1", &agent_yaml("m1", "")).await;
    hive.wait_phase("m1", "Running").await;
    hive.put_yaml(
        "m2",
        &agent_yaml("m2", "").replace(IMAGE, "hive-test-missing:2"),
    )
    .await;
    hive.wait_phase("m2", "Failed").await;
    assert_eq!(
        hive.get_open("/metrics").await.status(),
        401,
        "metrics need a key"
    );
    let text = wait_for("the engine error to be counted", || async {
        let text = hive
            .req(Method::GET, "/metrics")
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("hive_engine_errors_total{kind=\"image_not_found\"}")
            .then_some(text)
    })
    .await;
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("hive_reconciles_total{result=\"ok\"}") >= 2.0);
    assert!(value("hive_reconciles_total{result=\"error\"}") >= 1.0);
    assert!(value("hive_reconcile_duration_seconds_count") >= 3.0);
    assert_eq!(value("hive_agents{phase=\"Running\"}"), 1.0);
    assert_eq!(value("hive_agents{phase=\"Failed\"}"), 1.0);
    assert!(text.contains("hive_queue_depth"));
    assert!(
        value(
            "hive_http_requests_total{method=\"PUT\",route=\"/v1/agents/{name}\",status=\"201\"}"
        ) >= 2.0
    );
    assert!(value("hive_http_request_duration_seconds_count{route=\"/v1/agents/{name}\"}") >= 2.0);
    assert!(
        !text.contains("route=\"/v1/agents/m1\""),
        "agent names never become labels"
    );
}

#[tokio::test]
async fn the_served_openapi_document_describes_the_api() {
    let hive = Hive::start().await;
    let r = hive.get_open("/openapi.json").await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["info"]["title"], "Hive");
    for (method, path) in [
        ("post", "/v1/agents"),
        ("get", "/v1/agents"),
        ("put", "/v1/agents/{name}"),
        ("post", "/v1/agents/{name}/action"),
        ("get", "/v1/agents/{name}/events"),
        ("post", "/v1/apply"),
        ("put", "/v1/secrets/{name}"),
        ("get", "/metrics"),
        ("get", "/readyz"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn logs_follow_streams_new_output() {
    use futures_util::StreamExt;
    let hive = Hive::start().await;
    let talker = format!(
        "apiVersion: hive/v1\nkind: Agent\nmetadata: {{name: ticker}}\nspec:\n  image: {IMAGE}\n  command: [/bin/sh, -c, \"while true; do echo tick; sleep 0.2; done\"]\n"
    );
    assert_eq!(hive.put_yaml("ticker", &talker).await.status(), 201);
    hive.wait_phase("ticker", "Running").await;
    let r = hive
        .req(Method::GET, "/v1/agents/ticker/logs?follow=true&tail=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let followed = tokio::time::timeout(crate::harness::DEADLINE, async {
        // Following keeps delivering: more ticks than the one asked for with tail=1.
        while text.matches("tick").count() < 4 {
            let chunk = body.next().await.expect("the stream stays open").unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(followed.is_ok(), "only got {text:?}");
}
