//! The API's contract: auth on every /v1 route, the answers to good writes, and a clear
//! error that changes nothing for every bad input.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, Hive, IMAGE};

/// Every /v1 route with a body that would be valid.
fn routes() -> Vec<(Method, &'static str)> {
    vec![
        (Method::GET, "/v1/agents"),
        (Method::POST, "/v1/agents"),
        (Method::GET, "/v1/agents/a"),
        (Method::PUT, "/v1/agents/a"),
        (Method::DELETE, "/v1/agents/a"),
        (Method::POST, "/v1/agents/a/action"),
        (Method::GET, "/v1/agents/a/logs"),
    ]
}

#[tokio::test]
async fn every_v1_route_refuses_a_missing_or_wrong_key() {
    let hive = Hive::start().await;
    for (method, path) in routes() {
        let url = format!("{}{path}", hive.url);
        let body = agent_yaml("a", "");
        let without = hive
            .http
            .request(method.clone(), &url)
            .header("content-type", "application/yaml")
            .body(body.clone());
        let wrong = hive
            .http
            .request(method.clone(), &url)
            .bearer_auth("not-the-key")
            .header("content-type", "application/yaml")
            .body(body.clone());
        let wrong_header = hive
            .http
            .request(method.clone(), &url)
            .header("x-api-key", "not-the-key")
            .header("content-type", "application/yaml")
            .body(body);
        for (what, req) in [
            ("no key", without),
            ("wrong bearer", wrong),
            ("wrong X-API-Key", wrong_header),
        ] {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {what}");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "unauthorized", "{method} {path}");
        }
    }
    // Nothing was created by the refused requests.
    let list: Value = hive.list().await;
    assert_eq!(list["items"], json!([]));
    // X-API-Key with the right key works, as does the bearer form.
    let r = hive
        .http
        .get(format!("{}/v1/agents", hive.url))
        .header("x-api-key", &hive.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The key never appears in the logs (which are there).
    let logs = hive.logs();
    assert!(logs.contains("listening"), "{logs}");
    assert!(!logs.contains(&hive.key));
}

#[tokio::test]
async fn health_and_readiness_need_no_key() {
    let hive = Hive::start().await;
    let r = hive.get_open("/healthz").await;
    assert_eq!(r.status(), 200);
    let r = hive.get_open("/readyz").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn writes_answer_as_documented() {
    let hive = Hive::start().await;
    let doc = json!({
        "apiVersion": "hive/v1", "kind": "Agent",
        "metadata": {"name": "w1", "labels": {"team": "research"}},
        "spec": {"image": IMAGE, "command": ["/bin/sleep", "3600"], "state": "Stopped"}
    });
    let r = hive.post_json("/v1/agents", &doc).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(uuid::Uuid::parse_str(created["metadata"]["uid"].as_str().unwrap()).is_ok());
    assert!(created["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // Once the controller has settled the agent nothing else writes it.
    let settled = hive.wait_phase("w1", "Stopped").await;
    let rv = settled["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // POST of an existing name: 409.
    let r = hive.post_json("/v1/agents", &doc).await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "already_exists"
    );

    // PUT of the identical document: 200, nothing changes.
    let r = hive
        .req(Method::PUT, "/v1/agents/w1")
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let same: Value = r.json().await.unwrap();
    assert_eq!(same["metadata"]["generation"], 1);
    assert_eq!(same["metadata"]["resourceVersion"], rv.as_str());

    // PUT with a stale resourceVersion: 409, nothing changes.
    let mut stale = doc.clone();
    stale["metadata"]["resourceVersion"] = json!("999999999");
    stale["spec"]["env"] = json!({"A": "b"});
    let r = hive
        .req(Method::PUT, "/v1/agents/w1")
        .json(&stale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let now = hive.get("w1").await.unwrap();
    assert_eq!(now["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(now["metadata"]["generation"], 1);
    assert!(now["spec"].get("env").is_none());

    // PUT with the current resourceVersion and a new spec: 200, generation 2.
    let current = now["metadata"]["resourceVersion"].clone();
    let mut fresh = stale.clone();
    fresh["metadata"]["resourceVersion"] = current;
    let r = hive
        .req(Method::PUT, "/v1/agents/w1")
        .json(&fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["metadata"]["generation"],
        2
    );

    // PUT of a new name: 201.
    let r = hive
        .put_yaml("w2", &agent_yaml("w2", "  state: Stopped\n"))
        .await;
    assert_eq!(r.status(), 201);

    // LIST sorted by name, with a label filter.
    let list: Value = hive.list().await;
    assert_eq!(list["kind"], "AgentList");
    assert_eq!(list["apiVersion"], "hive/v1");
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("w1"), json!("w2")]);
    let list: Value = hive.get_json("/v1/agents?label=team=research").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["metadata"]["name"], "w1");
    assert!(list["items"][0]["status"]["phase"].is_string());

    // GET of an absent agent: 404 in the error shape.
    let r = hive
        .req(Method::GET, "/v1/agents/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
}

/// Sends `body` with `content_type` to POST /v1/agents and returns status and error.
async fn post_raw(hive: &Hive, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = hive
        .req(Method::POST, "/v1/agents")
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_inputs_get_clear_errors_and_change_nothing() {
    let hive = Hive::start().await;
    let good = agent_yaml("good", "");
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("application/json", "{\"apiVersion\": ".into(), 400, None),
        (
            "application/yaml",
            "metadata: {name: x\nspec: [".into(),
            400,
            None,
        ),
        (
            "application/yaml",
            good.replace("hive/v1", "hive/v2"),
            422,
            Some("apiVersion"),
        ),
        (
            "application/yaml",
            good.replace("kind: Agent", "kind: Pod"),
            422,
            Some("kind"),
        ),
        (
            "application/yaml",
            good.replace("name: good", "name: Bad_Name"),
            422,
            Some("metadata.name"),
        ),
        (
            "application/yaml",
            good.clone() + "  privileged: true\n",
            422,
            Some("spec.privileged"),
        ),
        (
            "application/yaml",
            good.clone() + "  resources: {memory: lots}\n",
            422,
            Some("spec.resources.memory"),
        ),
        (
            "application/yaml",
            good.clone() + "  resources: {cpus: fast}\n",
            422,
            Some("spec.resources.cpus"),
        ),
        (
            "application/yaml",
            good.replace(&format!("  image: {}\n", crate::harness::IMAGE), ""),
            422,
            Some("spec.image"),
        ),
        (
            "application/yaml",
            good.clone() + "  state: Paused\n",
            422,
            Some("spec.state"),
        ),
        ("text/plain", good.clone(), 415, None),
    ];
    for (ct, body, status, field) in cases {
        let (got, err) = post_raw(&hive, ct, body.clone()).await;
        assert_eq!(got, status, "{ct} {body:?} -> {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "no message for {body:?}");
        if let Some(f) = field {
            assert_eq!(err["error"]["field"], f, "{body:?} -> {err}");
        }
        if ct == "application/yaml" && status == 400 {
            assert!(
                message.contains("line"),
                "YAML errors give a line: {message}"
            );
        }
    }
    // Over 1 MiB: 413.
    let huge = good.clone() + &format!("  env: {{BIG: \"{}\"}}\n", "x".repeat(1024 * 1024 + 10));
    let (got, err) = post_raw(&hive, "application/yaml", huge).await;
    assert_eq!(got, 413, "{err}");
    assert_eq!(err["error"]["code"], "payload_too_large");

    // The name in the path must match the body.
    let r = hive.put_yaml("other", &good).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "metadata.name"
    );

    // A bad action names the field.
    let r = hive
        .put_yaml("good", &agent_yaml("good", "  state: Stopped\n"))
        .await;
    assert_eq!(r.status(), 201);
    // Settled first, so that only the bad requests could change it.
    let before = hive.wait_phase("good", "Stopped").await;
    let r = hive
        .post_json("/v1/agents/good/action", &json!({"action": "explode"}))
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "action");
    // A bad update of an existing agent leaves it as it was.
    let r = hive
        .put_yaml(
            "good",
            &(agent_yaml("good", "  state: Stopped\n") + "  resources: {memory: 1Ki}\n"),
        )
        .await;
    assert_eq!(r.status(), 422);
    let after = hive.get("good").await.unwrap();
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(before["spec"], after["spec"]);

    // Nothing but the one good agent exists, in the store; on the engine, not even its
    // container, as it has never been started.
    let list: Value = hive.list().await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    hive.wait_phase("good", "Stopped").await;
    assert!(hive.containers().await.is_empty());
}

#[tokio::test]
async fn without_an_engine_hive_serves_but_is_not_ready() {
    let hive = Hive::start_with(std::collections::HashMap::from([(
        "DOCKER_HOST".to_string(),
        Some("unix:///nonexistent/docker.sock".to_string()),
    )]))
    .await;
    let r = hive.get_open("/healthz").await;
    assert_eq!(r.status(), 200);
    let r = hive.get_open("/readyz").await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{e}"
    );
    // Writes are still accepted and kept; the status says why nothing runs.
    let r = hive.put_yaml("later", &agent_yaml("later", "")).await;
    assert_eq!(r.status(), 201);
    let agent = crate::harness::wait_for("the status to say why", || async {
        let a = hive.get("later").await?;
        let m = a["status"]["message"].as_str()?.to_string();
        m.contains("unreachable").then_some(a)
    })
    .await;
    assert_eq!(
        agent["status"]["phase"], "Pending",
        "an unreachable engine is not a failure of the agent"
    );
}
