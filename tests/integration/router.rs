//! The router tier: the whole API driven through `tower::ServiceExt::oneshot`, over a
//! real store in a temporary directory and the in-memory backend; no socket, no Docker.
//! Every route, its auth and roles, its answers to bad input, and that each status it
//! answered is in the OpenAPI document.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use hive::access::{new_key, Role};
use hive::orchestrator::{Holder, LeaseStore};
use hive::testing::FakeOrchestrator;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// One Hive wired around the in-memory backend, with the admin key and keys for an
/// operator and a viewer of owner `sol`, and one operator of owner `bob`.
struct TestApp {
    app: hive::App,
    key: String,
    sol: String,
    viewer: String,
    bob: String,
    /// (method, route, status) of every call, to check against the OpenAPI document.
    seen: Mutex<BTreeSet<(String, String, u16)>>,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers, and the body as JSON (Null when it is not).
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn app(extra: &[&str]) -> TestApp {
    app_with(extra, Arc::new(FakeOrchestrator::default())).await
}

async fn app_with(extra: &[&str], backend: Arc<FakeOrchestrator>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let (sol, sol_entry) = new_key("sol-1", "sol", Role::Operator).unwrap();
    let (viewer, viewer_entry) = new_key("sol-view", "sol", Role::Viewer).unwrap();
    let (bob, bob_entry) = new_key("bob-1", "bob", Role::Operator).unwrap();
    let keys = dir.path().join("keys.yaml");
    let indent = |e: &str| e.lines().map(|l| format!("  {l}\n")).collect::<String>();
    std::fs::write(
        &keys,
        format!(
            "keys:\n{}{}{}",
            indent(&sol_entry),
            indent(&viewer_entry),
            indent(&bob_entry)
        ),
    )
    .unwrap();
    let data = dir.path().join("data").display().to_string();
    let keys = keys.display().to_string();
    let mut flags = vec![
        "--data-dir",
        &data,
        "--keys-file",
        &keys,
        "--instance",
        "router",
    ];
    flags.extend_from_slice(extra);
    let mut config = hive::testing::config(&flags).unwrap();
    let key = hive::access::generate_key();
    config.api_key = Some(hive::config::Secret(key.clone()));
    // Wired, then started (the in-memory backend's lease is taken at once).
    let mut app = hive::App::build(config, backend).await.unwrap();
    app.start().await.unwrap();
    TestApp {
        app,
        key,
        sol,
        viewer,
        bob,
        seen: Mutex::default(),
        _dir: dir,
    }
}

impl TestApp {
    /// One request: `route` is the pattern the OpenAPI document names it by.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        route: &str,
        key: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Answer {
        let mut req = Request::builder().method(method.clone()).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let body = match body {
            Some((content_type, text)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                Body::from(text)
            }
            None => Body::empty(),
        };
        let response = self
            .app
            .router()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        self.seen.lock().unwrap().insert((
            method.as_str().to_lowercase(),
            route.to_string(),
            status.as_u16(),
        ));
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn admin(&self, method: Method, uri: &str, route: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| ("application/json", b.to_string()));
        self.call(method, uri, route, Some(&self.key), body).await
    }

    /// Every status this app answered is documented for its route.
    fn check_documented(&self) {
        let doc = serde_json::to_value(hive::api::openapi::document_value()).unwrap();
        for (method, route, status) in self.seen.lock().unwrap().iter() {
            let responses = &doc["paths"][route][method]["responses"];
            assert!(
                responses[status.to_string()].is_object(),
                "{method} {route} answered {status}, which the OpenAPI document does not list"
            );
        }
    }
}

fn agent(name: &str, extra: Value) -> Value {
    let mut doc = json!({
        "apiVersion": "hive/v1", "kind": "Agent",
        "metadata": {"name": name},
        "spec": {"image": "busybox:1", "command": ["sleep", "3600"]}
    });
    if let (Some(spec), Some(extra)) = (doc["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    doc
}

#[tokio::test]
async fn every_route_needs_its_key_and_open_routes_do_not() {
    let t = app(&[]).await;
    for (method, path) in hive::api::served_routes() {
        let uri = path.replace("{name}", "a");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let open = matches!(path.as_str(), "/healthz" | "/readyz" | "/openapi.json");
        let body = Some(("application/json", "{}".to_string()));
        let r = t
            .call(method.clone(), &uri, &path, None, body.clone())
            .await;
        if open {
            assert_eq!(r.status, StatusCode::OK, "{method} {path}");
        } else {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(r.body["error"]["code"], "unauthorized");
            assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
            let wrong = t
                .call(method.clone(), &uri, &path, Some("nope"), body)
                .await;
            assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
    let r = t
        .call(Method::GET, "/nowhere", "/nowhere", None, None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    t.seen
        .lock()
        .unwrap()
        .retain(|(_, route, _)| route != "/nowhere");
    t.check_documented();
}

#[tokio::test]
async fn agents_are_created_read_listed_changed_acted_on_and_deleted() {
    let t = app(&[]).await;
    let (one, many) = ("/v1/agents/{name}", "/v1/agents");
    let doc = agent("a1", json!({"state": "Stopped"}));
    let r = t
        .admin(Method::POST, "/v1/agents", many, Some(doc.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["metadata"]["generation"], 1);
    let rv = r.body["metadata"]["resourceVersion"].clone();
    let r = t
        .admin(Method::POST, "/v1/agents", many, Some(doc.clone()))
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );

    // PUT: identical is a no-op; a stale resourceVersion is refused; a new name creates.
    let r = t
        .admin(Method::PUT, "/v1/agents/a1", one, Some(doc.clone()))
        .await;
    assert_eq!(
        (r.status, &r.body["metadata"]["resourceVersion"]),
        (StatusCode::OK, &rv)
    );
    let mut stale = agent("a1", json!({"env": {"X": "1"}}));
    stale["metadata"]["resourceVersion"] = json!("999");
    let r = t
        .admin(Method::PUT, "/v1/agents/a1", one, Some(stale))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = t
        .admin(
            Method::PUT,
            "/v1/agents/a2",
            one,
            Some(agent("a2", json!({}))),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = t
        .admin(
            Method::PUT,
            "/v1/agents/a3",
            one,
            Some(agent("other", json!({}))),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata.name"))
    );

    // GET and LIST, with selectors.
    let mut labelled = agent("a4", json!({}));
    labelled["metadata"]["labels"] = json!({"team": "research"});
    t.admin(Method::PUT, "/v1/agents/a4", one, Some(labelled))
        .await;
    let r = t.admin(Method::GET, "/v1/agents/a1", one, None).await;
    assert_eq!(
        (r.status, r.body["spec"]["state"].as_str()),
        (StatusCode::OK, Some("Stopped"))
    );
    assert_eq!(
        t.admin(Method::GET, "/v1/agents/nobody", one, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = t.admin(Method::GET, "/v1/agents", many, None).await;
    assert_eq!(
        (r.body["kind"].as_str(), names(&r.body)),
        (
            Some("AgentList"),
            vec!["a1".into(), "a2".into(), "a4".into()]
        )
    );
    let r = t
        .admin(Method::GET, "/v1/agents?label=team%3Dresearch", many, None)
        .await;
    assert_eq!(names(&r.body), vec!["a4".to_string()]);
    let r = t
        .admin(Method::GET, "/v1/agents?label=!team", many, None)
        .await;
    assert_eq!(names(&r.body), vec!["a1".to_string(), "a2".into()]);
    for bad in [
        "/v1/agents?label=%3Dx",
        "/v1/agents?bogus=1",
        "/v1/agents?watch=yes",
    ] {
        assert_eq!(
            t.admin(Method::GET, bad, many, None).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }

    // Actions.
    let action = "/v1/agents/{name}/action";
    let r = t
        .admin(
            Method::POST,
            "/v1/agents/a1/action",
            action,
            Some(json!({"action": "restart"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("stopped"))
    );
    let r = t
        .admin(
            Method::POST,
            "/v1/agents/a1/action",
            action,
            Some(json!({"action": "start"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["metadata"]["generation"].as_u64()),
        (StatusCode::ACCEPTED, Some(2))
    );
    let r = t
        .admin(
            Method::POST,
            "/v1/agents/a1/action",
            action,
            Some(json!({"action": "fly"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = t
        .admin(
            Method::POST,
            "/v1/agents/nobody/action",
            action,
            Some(json!({"action": "stop"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Events and logs.
    let r = t
        .admin(
            Method::GET,
            "/v1/agents/a1/events",
            "/v1/agents/{name}/events",
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["items"].is_array()),
        (StatusCode::OK, true)
    );
    let logs = "/v1/agents/{name}/logs";
    let r = t.admin(Method::GET, "/v1/agents/a1/logs", logs, None).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "no container yet: {}",
        r.body
    );
    for bad in [
        "/v1/agents/a1/logs?tail=x",
        "/v1/agents/a1/logs?tail=99999999999",
        "/v1/agents/a1/logs?since=yesterday-ish",
        "/v1/agents/a1/logs?bogus=1",
    ] {
        let r = t.admin(Method::GET, bad, logs, None).await;
        assert!(r.status == StatusCode::BAD_REQUEST, "{bad}: {}", r.status);
    }

    // Delete: Terminating, then no more changes.
    let r = t.admin(Method::DELETE, "/v1/agents/a2", one, None).await;
    assert_eq!(
        (r.status, r.body["status"]["phase"].as_str()),
        (StatusCode::ACCEPTED, Some("Terminating"))
    );
    let r = t
        .admin(
            Method::PUT,
            "/v1/agents/a2",
            one,
            Some(agent("a2", json!({"env": {"A": "b"}}))),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("terminating"))
    );
    assert_eq!(
        t.admin(Method::DELETE, "/v1/agents/nobody", one, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    t.check_documented();
}

#[tokio::test]
async fn bad_bodies_get_clear_errors() {
    let t = app(&[]).await;
    let route = "/v1/agents";
    let post = |ct: &'static str, body: String| {
        t.call(
            Method::POST,
            "/v1/agents",
            route,
            Some(&t.key),
            Some((ct, body)),
        )
    };
    let r = post("application/json", "{\"spec\": ".into()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{}",
        r.body
    );
    assert_eq!(
        post("text/plain", "x".into()).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let r = post(
        "application/yaml",
        "apiVersion: hive/v1\nkind: Agent\nmetadata: {name: x}\nspec: {image: i, bogus: 1}\n"
            .into(),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("spec.bogus"))
    );
    let r = post("application/yaml", "apiVersion: hive/v1\nkind: Agent\nmetadata: {name: x}\nspec: {image: i, privileged: true}\n".into()).await;
    assert_eq!(
        (r.status, r.body["error"]["rule"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("never"))
    );
    let big = format!("{{\"spec\": {{\"image\": \"{}\"}}}}", "x".repeat(2 << 20));
    assert_eq!(
        post("application/json", big).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        post("application/json", "".into()).await.status,
        StatusCode::BAD_REQUEST
    );
    let r = t.admin(Method::GET, "/v1/agents", route, None).await;
    assert_eq!(r.body["items"], json!([]), "nothing was stored");
    t.check_documented();
}

#[tokio::test]
async fn owners_and_roles_decide_what_a_key_sees_and_may_do() {
    let t = app(&[]).await;
    let one = "/v1/agents/{name}";
    let put = |key: String, name: &'static str| {
        let body = ("application/json", agent(name, json!({})).to_string());
        let uri = format!("/v1/agents/{name}");
        let t = &t;
        async move { t.call(Method::PUT, &uri, one, Some(&key), Some(body)).await }
    };
    assert_eq!(put(t.sol.clone(), "mine").await.status, StatusCode::CREATED);
    let r = t
        .call(Method::GET, "/v1/agents/mine", one, Some(&t.bob), None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "another owner's agent is not there"
    );
    assert_eq!(
        put(t.bob.clone(), "mine").await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        put(t.viewer.clone(), "yours").await.status,
        StatusCode::FORBIDDEN
    );
    let r = t
        .call(Method::GET, "/v1/agents/mine", one, Some(&t.viewer), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t
        .call(Method::GET, "/v1/agents", "/v1/agents", Some(&t.bob), None)
        .await;
    assert_eq!(r.body["items"], json!([]));
    for (uri, route) in [("/v1/audit", "/v1/audit"), ("/v1/sync", "/v1/sync")] {
        let r = t.call(Method::GET, uri, route, Some(&t.sol), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}");
    }
    let r = t.admin(Method::GET, "/v1/sync", "/v1/sync", None).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "no manifests directory is followed"
    );
    assert_eq!(
        t.admin(Method::GET, "/metrics", "/metrics", None)
            .await
            .status,
        StatusCode::OK
    );
    t.check_documented();
}

#[tokio::test]
async fn apply_checks_everything_first_diffs_on_a_dry_run_and_prunes_what_it_made() {
    let t = app(&[]).await;
    let route = "/v1/apply";
    let yaml = |docs: &[Value]| {
        docs.iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("---\n")
    };
    let marked = |name: &str| {
        let mut d = agent(name, json!({}));
        d["metadata"]["annotations"] = json!({"hive-apply/source": format!("{name}.yaml")});
        d
    };
    let apply = |uri: &'static str, body: String| {
        t.call(
            Method::POST,
            uri,
            route,
            Some(&t.key),
            Some(("application/yaml", body)),
        )
    };
    let r = apply(
        "/v1/apply?prune=true&applyset=demo",
        yaml(&[marked("p1"), marked("p2")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let results: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["created", "created"]);
    let mut changed = marked("p1");
    changed["spec"]["env"] = json!({"A": "1"});
    let r = apply("/v1/apply?dryRun=true", yaml(&[changed.clone()])).await;
    assert_eq!(r.body["items"][0]["result"], "configured");
    assert!(r.body["items"][0]["diff"].as_str().unwrap().contains("+ "));
    // One bad document: nothing is applied, each bad one named.
    let bad = agent("Bad_Name", json!({}));
    let r = apply("/v1/apply", yaml(&[changed.clone(), bad])).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["documents"][0]["index"], 1);
    let p1 = t
        .admin(Method::GET, "/v1/agents/p1", "/v1/agents/{name}", None)
        .await;
    assert!(p1.body["spec"].get("env").is_none(), "nothing applied");
    // With a prune of the same set, p2 (made by an earlier apply of the set) goes; a
    // prune names its set.
    assert_eq!(
        apply("/v1/apply?prune=true", yaml(&[changed.clone()]))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let r = apply("/v1/apply?prune=true&applyset=demo", yaml(&[changed])).await;
    let results: Vec<(String, String)> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().into(),
                i["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("p1".to_string(), "configured".to_string()),
            ("p2".into(), "pruned".into())
        ]
    );
    let r = t
        .admin(Method::GET, "/v1/agents/p2", "/v1/agents/{name}", None)
        .await;
    assert_eq!(r.body["status"]["phase"], "Terminating");
    assert_eq!(
        apply("/v1/apply?dry=1", yaml(&[marked("p3")])).await.status,
        StatusCode::BAD_REQUEST
    );
    // Each agent an apply changed or pruned has its own audit entry.
    let audit = t
        .admin(Method::GET, "/v1/audit", "/v1/audit", None)
        .await
        .body;
    let entries: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["keyId"] == "admin" && e["outcome"] == "accepted")
        .map(|e| {
            (
                e["verb"].as_str().unwrap().into(),
                e["agent"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (verb, agent) in [("apply", "p1"), ("apply", "p2"), ("prune", "p2")] {
        assert!(
            entries.contains(&(verb.to_string(), agent.to_string())),
            "{verb} {agent}: {entries:?}"
        );
    }
    t.check_documented();
}

#[tokio::test]
async fn secrets_are_write_only_and_owned() {
    let t = app(&[]).await;
    let (one, many) = ("/v1/secrets/{name}", "/v1/secrets");
    let put = |key: String, body: Value| {
        let t = &t;
        async move {
            t.call(
                Method::PUT,
                "/v1/secrets/keys",
                one,
                Some(&key),
                Some(("application/json", body.to_string())),
            )
            .await
        }
    };
    let r = put(t.sol.clone(), json!({"API_KEY": "sk-1"})).await;
    assert_eq!(
        (r.status, &r.body["keys"]),
        (StatusCode::CREATED, &json!(["API_KEY"]))
    );
    assert!(!r.body.to_string().contains("sk-1"));
    assert_eq!(
        put(t.sol.clone(), json!({"API_KEY": "sk-2"})).await.status,
        StatusCode::OK
    );
    let r = put(t.key.clone(), json!({"API_KEY": "x"})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("owned_by_another"))
    );
    let r = put(t.sol.clone(), json!({"1BAD": "x"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = t
        .call(Method::GET, "/v1/secrets/keys", one, Some(&t.bob), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t
        .call(Method::GET, "/v1/secrets", many, Some(&t.sol), None)
        .await;
    assert_eq!(r.body["items"][0]["name"], "keys");
    let r = t
        .call(
            Method::PUT,
            "/v1/secrets/keys?owner=bob",
            one,
            Some(&t.sol),
            Some(("application/json", "{}".into())),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(Method::DELETE, "/v1/secrets/keys", one, Some(&t.sol), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        t.call(Method::GET, "/v1/secrets/keys", one, Some(&t.sol), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    t.check_documented();
}

#[tokio::test]
async fn every_mutation_accepted_or_refused_is_audited_and_pages() {
    let t = app(&[]).await;
    t.admin(
        Method::PUT,
        "/v1/agents/x",
        "/v1/agents/{name}",
        Some(agent("x", json!({}))),
    )
    .await;
    t.call(
        Method::PUT,
        "/v1/agents/y",
        "/v1/agents/{name}",
        Some(&t.viewer),
        Some(("application/json", agent("y", json!({})).to_string())),
    )
    .await;
    t.call(
        Method::PUT,
        "/v1/secrets/s",
        "/v1/secrets/{name}",
        Some(&t.sol),
        Some(("application/json", json!({"K": "v"}).to_string())),
    )
    .await;
    t.call(
        Method::POST,
        "/v1/agents",
        "/v1/agents",
        Some(&t.sol),
        Some(("application/json", "{oops".into())),
    )
    .await;
    t.call(
        Method::DELETE,
        "/v1/agents/x",
        "/v1/agents/{name}",
        None,
        None,
    )
    .await;
    let r = t
        .admin(Method::GET, "/v1/audit?limit=50", "/v1/audit", None)
        .await;
    let items = r.body["items"].as_array().unwrap();
    let has = |key: &str, verb: &str, outcome: &str, status: u64| {
        items.iter().any(|e| {
            e["keyId"] == key
                && e["verb"] == verb
                && e["outcome"] == outcome
                && e["status"] == status
        })
    };
    assert!(has("admin", "apply", "accepted", 201), "{}", r.body);
    assert!(has("sol-view", "apply", "refused", 403), "{}", r.body);
    assert!(has("sol-1", "write secret", "accepted", 201), "{}", r.body);
    assert!(
        has("sol-1", "create", "refused", 400),
        "a body refused before the service: {}",
        r.body
    );
    assert!(
        items
            .iter()
            .any(|e| e["keyId"] == "-" && e["status"] == 401),
        "{}",
        r.body
    );
    let page = t
        .admin(Method::GET, "/v1/audit?limit=2", "/v1/audit", None)
        .await;
    let next = page.body["next"].as_u64().unwrap();
    let rest = t
        .admin(
            Method::GET,
            &format!("/v1/audit?limit=2&before={next}"),
            "/v1/audit",
            None,
        )
        .await;
    assert!(rest.body["items"][0]["id"].as_u64().unwrap() < next);
    for bad in [
        "/v1/audit?limit=x",
        "/v1/audit?since=1",
        "/v1/audit?bogus=1",
    ] {
        assert_eq!(
            t.admin(Method::GET, bad, "/v1/audit", None).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    t.check_documented();
}

#[tokio::test]
async fn a_standby_serves_reads_and_refuses_writes_naming_the_holder() {
    let backend = Arc::new(FakeOrchestrator::default());
    let holder = Holder {
        token: "other".into(),
        host: "elsewhere".into(),
        pid: 1,
        data_dir: "/srv/hive".into(),
        store: "another-store".into(),
    };
    backend
        .acquire_lease(&holder, std::time::Duration::from_secs(60), None)
        .await
        .unwrap();
    let t = app_with(&["--standby"], backend).await;
    let r = t.call(Method::GET, "/readyz", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/srv/hive"),
        "{}",
        r.body
    );
    let r = t
        .admin(
            Method::PUT,
            "/v1/agents/x",
            "/v1/agents/{name}",
            Some(agent("x", json!({}))),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        t.admin(Method::GET, "/v1/agents", "/v1/agents", None)
            .await
            .status,
        StatusCode::OK
    );
    t.check_documented();
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_served() {
    let t = app(&[]).await;
    let r = t
        .call(Method::GET, "/openapi.json", "/openapi.json", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut ids = std::collections::BTreeSet::new();
    for (method, path) in hive::api::served_routes() {
        let operation = &r.body["paths"][&path][method];
        assert!(operation.is_object(), "{method} {path}");
        // Client generators name their methods after these: each one there, and unique.
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        assert!(ids.insert(id.clone()), "operationId {id} twice");
    }
    t.check_documented();
}

#[tokio::test]
async fn odd_inputs_the_fuzzer_found_are_refused_and_documented() {
    let t = app(&[]).await;
    let one = "/v1/agents/{name}";
    t.admin(
        Method::PUT,
        "/v1/agents/a1",
        one,
        Some(agent("a1", json!({}))),
    )
    .await;
    let mut empty_rv = agent("a1", json!({"env": {"X": "1"}}));
    empty_rv["metadata"]["resourceVersion"] = json!("");
    let r = t
        .admin(Method::PUT, "/v1/agents/a1", one, Some(empty_rv))
        .await;
    assert!(r.status.is_client_error(), "{}: {}", r.status, r.body);
    assert_eq!(
        r.body["error"]["field"], "metadata.resourceVersion",
        "{}",
        r.body
    );
    let action = "/v1/agents/{name}/action";
    for body in [
        "{}",
        "[]",
        "{\"action\": 1}",
        "x",
        "{\"action\": \"stop\", \"extra\": 1}",
    ] {
        let r = t
            .call(
                Method::POST,
                "/v1/agents/a1/action",
                action,
                Some(&t.key),
                Some(("application/json", body.into())),
            )
            .await;
        assert!(
            matches!(r.status.as_u16(), 400 | 422),
            "{body}: {}",
            r.status
        );
        assert!(r.body["error"]["message"].is_string(), "{body}: {}", r.body);
    }
    let r = t.admin(Method::GET, "/v1/agents/a1", one, None).await;
    assert!(
        r.body["spec"].get("env").is_none() && r.body["metadata"]["generation"] == 1,
        "nothing changed: {}",
        r.body
    );
    t.check_documented();
}

#[tokio::test]
async fn two_owners_racing_for_one_secret_name_have_exactly_one_winner() {
    for round in 0..20 {
        let t = app(&[]).await;
        let uri = format!("/v1/secrets/s{round}");
        let body = || Some(("application/json", json!({"K": "v"}).to_string()));
        let (a, b) = tokio::join!(
            t.call(
                Method::PUT,
                &uri,
                "/v1/secrets/{name}",
                Some(&t.sol),
                body()
            ),
            t.call(
                Method::PUT,
                &uri,
                "/v1/secrets/{name}",
                Some(&t.bob),
                body()
            ),
        );
        let mut statuses = [a.status.as_u16(), b.status.as_u16()];
        statuses.sort();
        assert_eq!(
            statuses,
            [201, 409],
            "round {round}: {} / {}",
            a.body,
            b.body
        );
        let loser = if a.status == StatusCode::CONFLICT {
            &a
        } else {
            &b
        };
        assert_eq!(
            loser.body["error"]["code"], "already_exists",
            "a name in use by an owner the key cannot see"
        );
        t.check_documented();
    }
}

// --- /mcp: the MCP tools over the same service.

/// What an MCP tool call answered: whether it is a refusal, and its text (parsed as JSON
/// where it is JSON).
struct ToolAnswer {
    is_error: bool,
    text: String,
    json: Value,
}

impl TestApp {
    /// One JSON-RPC request to /mcp, as a streamable HTTP client sends it.
    async fn mcp(&self, key: Option<&str>, host: &str, method: &str, params: Value) -> Answer {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/mcp")
            .header(header::HOST, host)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, "application/json")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response = self
            .app
            .router()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Calls one tool with `key`.
    async fn tool(&self, key: &str, name: &str, arguments: Value) -> ToolAnswer {
        let r = self
            .mcp(
                Some(key),
                "localhost:8000",
                "tools/call",
                json!({"name": name, "arguments": arguments}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        let result = &r.body["result"];
        assert!(result.is_object(), "{name}: {}", r.body);
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ToolAnswer {
            is_error: result["isError"] == json!(true),
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }
}

/// Every MCP tool, by the name clients and prompts rely on.
const MCP_TOOLS: [&str; 14] = [
    "agent_events",
    "agent_logs",
    "apply_agents",
    "delete_agent",
    "exec_agent",
    "get_agent",
    "list_agents",
    "read_agent_file",
    "restart_agent",
    "start_agent",
    "stop_agent",
    "touch_agent",
    "wait_agent",
    "write_agent_file",
];

#[tokio::test]
async fn mcp_needs_the_key_and_an_allowed_host_and_lists_its_tools() {
    let t = app(&[]).await;
    let init = json!({"protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}});
    let r = t.mcp(None, "localhost", "initialize", init.clone()).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "before any MCP exchange"
    );
    assert_eq!(r.body["error"]["code"], "unauthorized");
    let r = t
        .mcp(Some("nope"), "localhost", "initialize", init.clone())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The Host check: a name not allowed (DNS rebinding) is refused, the compose name is not.
    let r = t
        .mcp(
            Some(&t.sol),
            "evil.example:8000",
            "initialize",
            init.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .mcp(Some(&t.sol), "agent-api:8000", "initialize", init.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["result"]["serverInfo"]["name"], "hive");
    assert!(r.body["result"]["capabilities"]["tools"].is_object());
    assert!(r.body["result"]["instructions"]
        .as_str()
        .unwrap()
        .contains("apply_agents"));

    let r = t
        .mcp(Some(&t.sol), "localhost", "tools/list", json!({}))
        .await;
    let tools = r.body["result"]["tools"].as_array().expect("tools").clone();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, MCP_TOOLS);
    for tool in &tools {
        let schema = &tool["inputSchema"];
        assert_eq!(schema["type"], "object", "{tool}");
        assert!(tool["description"].as_str().unwrap().len() > 20, "{tool}");
    }
    let schema_of = |n: &str| tools.iter().find(|t| t["name"] == n).unwrap()["inputSchema"].clone();
    assert_eq!(schema_of("apply_agents")["required"], json!(["manifest"]));
    assert!(schema_of("apply_agents")["properties"]["dryRun"].is_object());
    assert_eq!(schema_of("wait_agent")["required"], json!(["name", "for"]));
    assert!(schema_of("agent_logs")["properties"]["tail"].is_object());

    // What the endpoint refused before any tool ran is audited, as for /v1.
    let audit = t.admin(Method::GET, "/v1/audit", "/v1/audit", None).await;
    let refused: Vec<(Value, Value)> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["verb"] == "POST /mcp")
        .map(|e| (e["keyId"].clone(), e["status"].clone()))
        .collect();
    assert!(refused.contains(&(json!("-"), json!(401))), "{refused:?}");
    assert!(
        refused.contains(&(json!("sol-1"), json!(403))),
        "{refused:?}"
    );

    // With --mcp-allowed-hosts, only the hosts listed are answered.
    let t = app(&["--mcp-allowed-hosts", "hive.internal"]).await;
    let r = t
        .mcp(Some(&t.sol), "hive.internal:8000", "tools/list", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t
        .mcp(Some(&t.sol), "localhost", "tools/list", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn mcp_tools_act_through_the_service_with_its_owners_roles_and_audit() {
    let t = app(&[]).await;
    let manifest = "apiVersion: hive/v1\nkind: Agent\nmetadata: {name: m1, labels: {team: research}}\nspec:\n  image: busybox:1\n  command: [sleep, \"3600\"]\n";
    let r = t
        .tool(
            &t.sol,
            "apply_agents",
            json!({"manifest": manifest, "dryRun": true}),
        )
        .await;
    assert!(!r.is_error, "{}", r.text);
    assert_eq!(r.json["dryRun"], true);
    assert_eq!(r.json["items"][0]["result"], "created");
    assert!(
        t.tool(&t.sol, "get_agent", json!({"name": "m1"}))
            .await
            .is_error
    );
    let r = t
        .tool(&t.sol, "apply_agents", json!({"manifest": manifest}))
        .await;
    assert!(!r.is_error, "{}", r.text);
    assert_eq!(r.json["items"][0]["name"], "m1");
    assert_eq!(r.json["items"][0]["generation"], 1);

    let r = t.tool(&t.sol, "get_agent", json!({"name": "m1"})).await;
    assert_eq!(r.json["metadata"]["owner"], "sol");
    assert_eq!(r.json["spec"]["image"], "busybox:1");
    let r = t
        .tool(&t.sol, "list_agents", json!({"selector": "team=research"}))
        .await;
    assert_eq!(r.json["kind"], "AgentList");
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    let r = t
        .tool(&t.sol, "list_agents", json!({"selector": "team!=research"}))
        .await;
    assert_eq!(r.json["items"], json!([]));
    let r = t
        .tool(&t.sol, "list_agents", json!({"selector": "=research"}))
        .await;
    assert!(r.is_error);
    assert_eq!(r.json["error"]["code"], "bad_request");
    let r = t.tool(&t.sol, "agent_events", json!({"name": "m1"})).await;
    assert!(!r.is_error && r.json["items"].is_array(), "{}", r.text);

    let r = t.tool(&t.sol, "stop_agent", json!({"name": "m1"})).await;
    assert_eq!(r.json["spec"]["state"], "Stopped", "{}", r.text);
    let r = t.tool(&t.sol, "start_agent", json!({"name": "m1"})).await;
    assert_eq!(r.json["spec"]["state"], "Running");
    assert!(
        !t.tool(&t.sol, "restart_agent", json!({"name": "m1"}))
            .await
            .is_error
    );
    assert!(
        !t.tool(&t.sol, "touch_agent", json!({"name": "m1"}))
            .await
            .is_error
    );
    let r = t
        .tool(&t.viewer, "touch_agent", json!({"name": "m1"}))
        .await;
    assert_eq!(
        r.json["error"]["code"], "forbidden",
        "a touch is a write: {}",
        r.text
    );
    // No container yet (nothing reconciles here): the API's answer, as a refusal.
    let r = t
        .tool(&t.sol, "agent_logs", json!({"name": "m1", "tail": 5}))
        .await;
    assert!(r.is_error);
    assert_eq!(r.json["error"]["code"], "not_found");
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no container yet"));
    let r = t
        .tool(&t.sol, "agent_logs", json!({"name": "m1", "since": "soon"}))
        .await;
    assert_eq!(r.json["error"]["code"], "bad_request");

    // wait_agent: a bad `for`, a bounded timeout, and a timeout that says how it was last seen.
    let r = t
        .tool(&t.sol, "wait_agent", json!({"name": "m1", "for": "ready"}))
        .await;
    assert!(r.is_error && r.text.contains("use phase=<"), "{}", r.text);
    let r = t
        .tool(
            &t.sol,
            "wait_agent",
            json!({"name": "m1", "for": "phase=Running", "timeout": "1h"}),
        )
        .await;
    assert!(r.is_error && r.text.contains("at most 10m"), "{}", r.text);
    let r = t
        .tool(
            &t.sol,
            "wait_agent",
            json!({"name": "m1", "for": "phase=Running", "timeout": "300ms"}),
        )
        .await;
    assert!(r.is_error);
    assert_eq!(r.json["error"]["code"], "timeout");
    let message = r.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("to reach phase=Running; last seen: phase Pending"),
        "{message}"
    );

    // Refusals carry the API's message and field.
    let bad = manifest.replace("image: busybox:1", "image: \"\"");
    let r = t
        .tool(&t.sol, "apply_agents", json!({"manifest": bad}))
        .await;
    assert!(r.is_error);
    assert_eq!(r.json["error"]["code"], "invalid_documents");
    assert_eq!(r.json["error"]["documents"][0]["field"], "spec.image");
    let r = t
        .tool(&t.sol, "apply_agents", json!({"manifest": "a: [unclosed"}))
        .await;
    assert_eq!(r.json["error"]["code"], "bad_request");
    assert!(
        r.text.contains("the manifest has a bad document 1"),
        "{}",
        r.text
    );
    let r = t
        .tool(&t.sol, "apply_agents", json!({"manifest": "  "}))
        .await;
    assert!(r.text.contains("the manifest is empty"), "{}", r.text);
    // Arguments that do not fit the tool's schema are refused, naming what is wrong.
    let r = t
        .tool(&t.sol, "get_agent", json!({"name": "m1", "extra": 1}))
        .await;
    assert!(
        r.is_error && r.text.contains("unknown field `extra`"),
        "{}",
        r.text
    );
    let r = t.tool(&t.sol, "get_agent", json!({})).await;
    assert!(
        r.is_error && r.text.contains("missing field `name`"),
        "{}",
        r.text
    );

    // Owners and roles: another owner does not see it; a viewer may read, not write.
    let r = t.tool(&t.bob, "get_agent", json!({"name": "m1"})).await;
    assert!(r.is_error);
    assert_eq!(r.json["error"]["code"], "not_found");
    assert!(
        t.tool(&t.bob, "stop_agent", json!({"name": "m1"}))
            .await
            .is_error
    );
    let r = t.tool(&t.bob, "list_agents", json!({})).await;
    assert_eq!(r.json["items"], json!([]));
    assert!(
        !t.tool(&t.viewer, "get_agent", json!({"name": "m1"}))
            .await
            .is_error
    );
    let r = t
        .tool(&t.viewer, "delete_agent", json!({"name": "m1"}))
        .await;
    assert!(r.is_error);
    assert_eq!(r.json["error"]["code"], "forbidden");
    let r = t
        .tool(&t.viewer, "apply_agents", json!({"manifest": manifest}))
        .await;
    assert_eq!(r.json["error"]["code"], "forbidden", "{}", r.text);

    let r = t.tool(&t.sol, "delete_agent", json!({"name": "m1"})).await;
    assert_eq!(r.json["status"]["phase"], "Terminating", "{}", r.text);

    // The audit names the key behind each MCP mutation, refused ones included.
    let audit = t.admin(Method::GET, "/v1/audit", "/v1/audit", None).await;
    let entries = audit.body["items"].as_array().unwrap();
    let find = |key: &str, verb: &str, outcome: &str| {
        entries
            .iter()
            .any(|e| e["keyId"] == key && e["verb"] == verb && e["outcome"] == outcome)
    };
    assert!(find("sol-1", "apply", "accepted"), "{entries:#?}");
    assert!(
        find("sol-1", "stop", "accepted") || find("sol-1", "action", "accepted"),
        "{entries:#?}"
    );
    assert!(find("sol-1", "delete", "accepted"), "{entries:#?}");
    assert!(find("sol-view", "delete", "refused"), "{entries:#?}");
    assert!(
        find("sol-1", "apply", "refused"),
        "the unparsable manifest: {entries:#?}"
    );
    // MCP's reads and its protocol traffic are not audited as mutations.
    assert!(!entries
        .iter()
        .any(|e| e["verb"].as_str().unwrap_or("").contains("/mcp")));
}

#[tokio::test]
async fn lists_page_at_one_resource_version_and_say_when_a_page_is_gone() {
    let t = app(&[]).await;
    let many = "/v1/agents";
    for name in ["a1", "a2", "a3", "a4", "a5"] {
        let mut doc = agent(name, json!({"state": "Stopped"}));
        doc["metadata"]["labels"] = json!({"odd": (name.ends_with('1') || name.ends_with('3') || name.ends_with('5')).to_string()});
        let r = t
            .admin(
                Method::PUT,
                &format!("/v1/agents/{name}"),
                "/v1/agents/{name}",
                Some(doc),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let first = t.admin(Method::GET, "/v1/agents?limit=2", many, None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(names(&first.body), ["a1", "a2"]);
    let version = first.body["metadata"]["resourceVersion"].clone();
    let token = first.body["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();

    // A write between pages changes nothing in them: every page is read at one version.
    let r = t
        .admin(Method::DELETE, "/v1/agents/a4", "/v1/agents/{name}", None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let second = t
        .admin(
            Method::GET,
            &format!("/v1/agents?limit=2&continue={token}"),
            many,
            None,
        )
        .await;
    assert_eq!(names(&second.body), ["a3", "a4"]);
    assert_eq!(
        second.body["items"][1]["status"]["phase"], "Pending",
        "a4 as it was"
    );
    assert_eq!(second.body["metadata"]["resourceVersion"], version);
    let token = second.body["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    let last = t
        .admin(
            Method::GET,
            &format!("/v1/agents?limit=2&continue={token}"),
            many,
            None,
        )
        .await;
    assert_eq!(names(&last.body), ["a5"]);
    assert!(
        last.body["metadata"].get("continue").is_none(),
        "{}",
        last.body
    );
    // A fresh list sees the write.
    let now = t.admin(Method::GET, "/v1/agents", many, None).await;
    assert_eq!(now.body["items"][3]["status"]["phase"], "Terminating");
    assert_ne!(now.body["metadata"]["resourceVersion"], version);

    // Selectors page too, and a page that ends the matches has no continue.
    let odd = t
        .admin(Method::GET, "/v1/agents?label=odd=true&limit=2", many, None)
        .await;
    assert_eq!(names(&odd.body), ["a1", "a3"]);
    let token = odd.body["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    let odd = t
        .admin(
            Method::GET,
            &format!("/v1/agents?label=odd=true&limit=2&continue={token}"),
            many,
            None,
        )
        .await;
    assert_eq!(names(&odd.body), ["a5"]);
    assert!(odd.body["metadata"].get("continue").is_none());
    let exact = t
        .admin(
            Method::GET,
            "/v1/agents?label=odd=false&limit=2",
            many,
            None,
        )
        .await;
    assert_eq!(names(&exact.body), ["a2", "a4"]);
    assert!(
        exact.body["metadata"].get("continue").is_none(),
        "nothing left to show"
    );

    // Bad and expired tokens.
    let r = t
        .admin(
            Method::GET,
            "/v1/agents?limit=2&continue=nonsense",
            many,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["field"], "continue");
    let r = t
        .admin(Method::GET, "/v1/agents?limit=2&continue=1.a1", many, None)
        .await;
    assert_eq!(r.status, StatusCode::GONE);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("list again from the start"),
        "{}",
        r.body
    );
    let r = t
        .admin(Method::GET, "/v1/agents?watch=true&limit=2", many, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Another owner's key pages through its own agents only.
    let r = t
        .call(Method::GET, "/v1/agents?limit=1", many, Some(&t.bob), None)
        .await;
    assert_eq!(r.body["items"], json!([]));
    assert!(r.body["metadata"].get("continue").is_none());
    t.check_documented();
}

#[tokio::test]
async fn building_an_app_takes_no_lease_and_starting_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let mut config = hive::testing::config(&["--data-dir", &data, "--instance", "built"]).unwrap();
    config.api_key = Some(hive::config::Secret("k".into()));
    let backend = Arc::new(FakeOrchestrator::default());
    let mut app = hive::App::build(config, backend.clone()).await.unwrap();
    assert!(backend.read_lease().await.unwrap().is_none(), "wired only");
    app.start().await.unwrap();
    let lease = backend.read_lease().await.unwrap().expect("taken by start");
    assert!(lease.holder.data_dir.ends_with("data"), "{lease:?}");
}
