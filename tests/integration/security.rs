//! Security: keys with owners and roles, the admission policy, the audit log, and hostile
//! input, each refused with a clear error and nothing stored or started.

use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, new_key, put_as, wait_for, with_key, write_keys, Hive, IMAGE};

#[tokio::test]
async fn owners_see_only_their_agents_and_roles_limit_verbs() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let (sol, sol_entry) = new_key("sol", "operator", "sol-1");
    let (bob, bob_entry) = new_key("bob", "operator", "bob-1");
    let (view, view_entry) = new_key("sol", "viewer", "sol-view");
    write_keys(&keys, &[&sol_entry, &bob_entry, &view_entry]);
    let hive = Hive::start_args(&["--keys-file".into(), keys.display().to_string()]).await;

    let r = put_as(&hive, &sol, "mine", &agent_yaml("mine", "")).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["metadata"]["owner"], "sol");
    hive.wait_phase("mine", "Running").await;
    let labels = hive
        .inspect("mine")
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(labels["hive.owner"], "sol");

    // Another owner: as if it did not exist.
    for (m, p) in [
        (Method::GET, "/v1/agents/mine"),
        (Method::DELETE, "/v1/agents/mine"),
        (Method::GET, "/v1/agents/mine/logs"),
    ] {
        let r = with_key(&hive, &bob, m.clone(), p).send().await.unwrap();
        assert_eq!(r.status(), 404, "{m} {p} as bob");
    }
    let r = with_key(&hive, &bob, Method::POST, "/v1/agents/mine/action")
        .json(&json!({"action": "stop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list: Value = with_key(&hive, &bob, Method::GET, "/v1/agents")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    let r = put_as(&hive, &bob, "mine", &agent_yaml("mine", "  env: {X: y}\n")).await;
    assert_eq!(r.status(), 409, "the name is taken, whoever holds it");

    // A viewer of the same owner reads but does not write.
    let r = with_key(&hive, &view, Method::GET, "/v1/agents/mine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = put_as(&hive, &view, "mine", &agent_yaml("mine", "  env: {X: y}\n")).await;
    assert_eq!(r.status(), 403);
    let r = with_key(&hive, &view, Method::DELETE, "/v1/agents/mine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = with_key(&hive, &view, Method::POST, "/v1/agents/mine/action")
        .json(&json!({"action": "stop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Owners come from the key; only an admin may name another.
    let stolen =
        agent_yaml("stolen", "").replace("  name: stolen\n", "  name: stolen\n  owner: bob\n");
    let r = put_as(&hive, &sol, "stolen", &stolen).await;
    assert_eq!(r.status(), 403);
    let r = hive.put_yaml("stolen", &stolen).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["metadata"]["owner"], "bob");
    let r = with_key(&hive, &bob, Method::GET, "/v1/agents/stolen")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Labels under hive. are Hive's.
    let labelled = agent_yaml("lab", "").replace(
        "  name: lab\n",
        "  name: lab\n  labels: {hive.owner: bob}\n",
    );
    let r = put_as(&hive, &sol, "lab", &labelled).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "metadata.labels.hive.owner"
    );

    // The admin sees everything.
    let list: Value = hive.list().await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // The audit log has it all, newest first, for admins only.
    let r = with_key(&hive, &sol, Method::GET, "/v1/audit")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let audit: Value = hive.get_json("/v1/audit?limit=100").await;
    let items = audit["items"].as_array().unwrap();
    let ids: Vec<u64> = items.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let has = |key: &str, verb: &str, agent: &str, outcome: &str, status: u64| {
        items.iter().any(|e| {
            e["keyId"] == key
                && e["verb"] == verb
                && e["agent"] == agent
                && e["outcome"] == outcome
                && e["status"] == status
        })
    };
    assert!(has("sol-1", "apply", "mine", "accepted", 201), "{audit:#}");
    assert!(has("bob-1", "delete", "mine", "refused", 404), "{audit:#}");
    assert!(has("sol-view", "apply", "mine", "refused", 403));
    assert!(has("sol-1", "apply", "stolen", "refused", 403));
    assert!(
        items.iter().all(|e| !e.to_string().contains(&sol)),
        "no key in the audit log"
    );
    let page: Value = hive.get_json("/v1/audit?limit=2").await;
    let next = page["next"].as_u64().unwrap();
    let rest: Value = hive
        .get_json(&format!("/v1/audit?limit=2&before={next}"))
        .await;
    assert!(rest["items"][0]["id"].as_u64().unwrap() < next);
    // And no key reached the logs.
    let logs = hive.logs();
    for k in [&sol, &bob, &view] {
        assert!(!logs.contains(k.as_str()));
    }
    assert!(logs.contains("audit"));
}

#[tokio::test]
async fn the_keys_file_reloads_on_change_and_a_broken_or_deleted_one_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let (first, first_entry) = new_key("sol", "viewer", "first");
    write_keys(&keys, &[&first_entry]);
    // A process: SIGHUP is sent to it.
    let hive = Hive::process(
        std::collections::HashMap::new(),
        vec!["--keys-file".into(), keys.display().to_string()],
    )
    .await;
    let status = |key: String| {
        let r = with_key(&hive, &key, Method::GET, "/v1/agents");
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(first.clone()).await, 200);
    let (second, second_entry) = new_key("sol", "viewer", "second");
    assert_eq!(status(second.clone()).await, 401);
    write_keys(&keys, &[&first_entry, &second_entry]);
    wait_for("the new key to work", || async {
        (status(second.clone()).await == 200).then_some(())
    })
    .await;

    // A broken file fails closed: its keys stop working, the admin key does not, and
    // the log and /readyz say so.
    std::fs::write(&keys, "keys: [this is not: valid").unwrap();
    wait_for("the broken file to fail closed", || async {
        (status(first.clone()).await == 401).then_some(())
    })
    .await;
    assert_eq!(status(second.clone()).await, 401);
    assert_eq!(status(hive.key.clone()).await, 200, "the break-glass key");
    assert!(hive.logs().contains("none of its keys is accepted"));
    let r = hive.get_open("/readyz").await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("keys file does not load"));
    // So does a deleted one.
    write_keys(&keys, &[&first_entry, &second_entry]);
    wait_for("the repaired file to be loaded", || async {
        (status(first.clone()).await == 200).then_some(())
    })
    .await;
    assert_eq!(hive.get_open("/readyz").await.status(), 200);
    std::fs::remove_file(&keys).unwrap();
    wait_for("the deleted file to fail closed", || async {
        (status(first.clone()).await == 401).then_some(())
    })
    .await;

    // SIGHUP reloads too. The new file has the old one's size and modification time, so
    // only the signal can make Hive notice it: `third` replaces `second`.
    let reloads = || hive.logs().matches("reloaded the keys file").count();
    let before = reloads();
    write_keys(&keys, &[&first_entry, &second_entry]);
    wait_for("the repaired file to be reloaded", || async {
        (reloads() > before).then_some(())
    })
    .await;
    let (third, third_entry) = new_key("sol", "viewer", "thirdd");
    assert_eq!(third_entry.len(), second_entry.len());
    let reference = dir.path().join("reference");
    std::fs::copy(&keys, &reference).unwrap();
    assert!(Command::new("touch")
        .arg("-r")
        .arg(&keys)
        .arg(&reference)
        .status()
        .unwrap()
        .success());
    write_keys(&keys, &[&first_entry, &third_entry]);
    assert!(Command::new("touch")
        .arg("-r")
        .arg(&reference)
        .arg(&keys)
        .status()
        .unwrap()
        .success());
    hive.sighup();
    wait_for("SIGHUP to load the new key", || async {
        (status(third.clone()).await == 200).then_some(())
    })
    .await;
    assert_eq!(
        status(second.clone()).await,
        401,
        "the key left out is revoked"
    );
}

#[tokio::test]
async fn the_admission_policy_is_enforced_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let repo = IMAGE.split(':').next().unwrap();
    std::fs::write(
        &policy,
        format!(
            "images: {{allow: [\"{repo}:*\"]}}\ndefaults: {{memory: 96Mi, cpus: \"0.25\", pids: 64}}\nmax: {{memory: 256Mi, cpus: \"1\"}}\nquota: {{agents: 3}}\ncapabilities: {{allow: [NET_BIND_SERVICE]}}\n"
        ),
    )
    .unwrap();
    let hive = Hive::start_args(&["--policy".into(), policy.display().to_string()]).await;
    let refused = |r: reqwest::Response, status: u16, rule: &'static str| async move {
        assert_eq!(r.status(), status);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["rule"], rule, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(rule),
            "{e}"
        );
    };

    let other_image = agent_yaml("img", "").replace(IMAGE, "alpine:3");
    refused(
        hive.put_yaml("img", &other_image).await,
        422,
        "images.allow",
    )
    .await;
    refused(
        hive.put_yaml("fat", &agent_yaml("fat", "  resources: {memory: 1Gi}\n"))
            .await,
        422,
        "max.memory",
    )
    .await;
    refused(
        hive.put_yaml("cap", &agent_yaml("cap", "  capabilities: [SYS_ADMIN]\n"))
            .await,
        422,
        "capabilities.allow",
    )
    .await;

    // Defaults fill in what the spec leaves out, and reach the container.
    assert_eq!(
        hive.put_yaml(
            "dflt",
            &agent_yaml("dflt", "  capabilities: [NET_BIND_SERVICE]\n")
        )
        .await
        .status(),
        201
    );
    let a = hive.wait_phase("dflt", "Running").await;
    assert_eq!(a["spec"]["resources"]["memory"], "96Mi");
    let host = hive.inspect("dflt").await.unwrap().host_config.unwrap();
    assert_eq!(host.memory, Some(96 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(250_000_000));
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.cap_add, Some(vec!["NET_BIND_SERVICE".to_string()]));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    // Re-sending the same document changes nothing, defaults and all.
    let again = hive
        .put_yaml(
            "dflt",
            &agent_yaml("dflt", "  capabilities: [NET_BIND_SERVICE]\n"),
        )
        .await;
    assert_eq!(
        again.json::<Value>().await.unwrap()["metadata"]["generation"],
        1
    );

    // Quota: three agents per owner.
    for name in ["q1", "q2"] {
        assert_eq!(
            hive.put_yaml(name, &agent_yaml(name, "  state: Stopped\n"))
                .await
                .status(),
            201
        );
    }
    refused(
        hive.put_yaml("q3", &agent_yaml("q3", "  state: Stopped\n"))
            .await,
        403,
        "quota.agents",
    )
    .await;

    let list: Value = hive.list().await;
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        vec!["dflt", "q1", "q2"],
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn without_a_policy_hive_warns_that_every_image_is_allowed() {
    let hive = Hive::start().await;
    assert!(hive.logs().contains("every image is allowed"));
}

#[tokio::test]
async fn hostile_input_is_refused_and_nothing_is_stored_or_started() {
    let hive = Hive::start().await;
    let post = |ct: &'static str, body: String| {
        hive.req(Method::POST, "/v1/agents")
            .header("content-type", ct)
            .body(body)
            .send()
    };
    // A YAML alias bomb.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb += &format!(
            "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
            (b'a' + i) as char,
            (b'a' + i) as char,
            p = (b'a' + i - 1) as char
        );
    }
    let r = post("application/yaml", bomb).await.unwrap();
    assert_eq!(r.status(), 400, "{}", r.text().await.unwrap());
    // Deeply nested documents.
    let deep_json = format!("{{\"spec\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        post("application/json", deep_json).await.unwrap().status(),
        400
    );
    let deep_yaml = format!("spec: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        post("application/yaml", deep_yaml).await.unwrap().status(),
        400
    );
    // A 10 MiB body.
    let huge = format!(
        "{}  env: {{BIG: \"{}\"}}\n",
        agent_yaml("huge", ""),
        "x".repeat(10 << 20)
    );
    // Hive reads and drops a body this size, so the client gets its answer.
    let r = post("application/yaml", huge).await.unwrap();
    assert_eq!(r.status(), 413);
    // Duplicate keys.
    let dup = agent_yaml("dup", "") + "  image: other\n";
    assert_eq!(post("application/yaml", dup).await.unwrap().status(), 400);
    // Names that are paths, upper case, or not ASCII.
    for name in ["a/b", "..", "Agent", "agént", "a.b", "-a"] {
        let doc = agent_yaml("x", "").replace("name: x", &format!("name: \"{name}\""));
        let r = post("application/yaml", doc).await.unwrap();
        assert_eq!(r.status(), 422, "{name}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["field"],
            "metadata.name"
        );
    }
    for path in ["/v1/agents/..%2Fx", "/v1/agents/a%2Fb", "/v1/agents/%C3%A9"] {
        let r = hive.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // Each forbidden thing, by name.
    for (extra, field) in [
        ("  privileged: true\n", "spec.privileged"),
        ("  hostNetwork: true\n", "spec.hostNetwork"),
        ("  hostPID: true\n", "spec.hostPID"),
        ("  hostIPC: true\n", "spec.hostIPC"),
        ("  devices: [/dev/sda]\n", "spec.devices"),
        (
            "  volumes: [{name: root, hostPath: /}]\n",
            "spec.volumes[0].hostPath",
        ),
        (
            "  volumes: [{name: root, mountPath: /x, source: /var/run/docker.sock}]\n",
            "spec.volumes[0].source",
        ),
        ("  capabilities: [SYS_ADMIN]\n", "spec.capabilities[0]"),
        ("  env: {DOCKER: /var/run/docker.sock}\n", "spec.env.DOCKER"),
    ] {
        let r = post("application/yaml", agent_yaml("bad", extra))
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{extra}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["field"], field, "{e}");
        assert!(e["error"]["rule"].is_string(), "{e}");
    }
    // Key tricks: a near miss, two headers, a key in the query string.
    let mut near = hive.key.clone();
    near.pop();
    near.push('x');
    let r = hive
        .http
        .get(format!("{}/v1/agents", hive.url))
        .bearer_auth(&near)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = hive
        .http
        .get(format!("{}/v1/agents", hive.url))
        .header("authorization", format!("Bearer {}", hive.key))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "two Authorization headers are refused, not guessed between"
    );
    let r = hive
        .http
        .get(format!(
            "{}/v1/agents?api_key={}&key={}",
            hive.url, hive.key, hive.key
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let list: Value = hive.list().await;
    assert_eq!(list["items"], json!([]), "nothing was stored");
    assert!(hive.containers().await.is_empty(), "nothing was started");
}
