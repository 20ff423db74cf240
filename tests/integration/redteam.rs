//! What a key holder can do to other owners, to the host and to Hive: each finding of
//! the red team, probed against the real server and engine (see SECURITY.md).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, EndpointSettings, NetworkingConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::harness::{
    agent_yaml, engine, new_key, put_as, token, wait_for, with_key, write_keys, Hive, IMAGE, SLEEP,
};

/// A Hive with an admin key (the harness's) and keys for bob and alice (operators) and a
/// viewer of bob's, plus extra flags.
async fn with_owners(extra: &[&str]) -> (Hive, HashMap<&'static str, String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let (bob, bob_entry) = new_key("bob", "operator", "bob-1");
    let (alice, alice_entry) = new_key("alice", "operator", "alice-1");
    let (viewer, viewer_entry) = new_key("bob", "viewer", "bob-view");
    write_keys(&keys, &[&bob_entry, &alice_entry, &viewer_entry]);
    let mut args = vec!["--keys-file".to_string(), keys.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let hive = Hive::start_args(&args).await;
    let keys = HashMap::from([("bob", bob), ("alice", alice), ("viewer", viewer)]);
    (hive, keys, dir)
}

async fn put_secret(hive: &Hive, key: &str, path: &str, value: &str) -> reqwest::Response {
    with_key(hive, key, Method::PUT, path)
        .json(&json!({"K": value}))
        .send()
        .await
        .unwrap()
}

/// The status of an agent once its message says something, as seen by the admin.
async fn status_saying(hive: &Hive, name: &str, words: &str) -> Value {
    wait_for(&format!("{name}'s status to say {words:?}"), || async {
        let a = hive.get(name).await?;
        a["status"]["message"]
            .as_str()?
            .contains(words)
            .then_some(a["status"].clone())
    })
    .await
}

#[tokio::test]
async fn another_owners_secret_or_agent_is_never_written_without_an_explicit_take_over() {
    let (hive, keys, _dir) = with_owners(&[]).await;
    // bob's secret, and bob's agent reading it.
    assert_eq!(
        put_secret(&hive, &keys["bob"], "/v1/secrets/llm-keys", "bobs")
            .await
            .status(),
        201
    );
    let reader = agent_yaml("reader", "  envFrom: [{secretRef: llm-keys}]\n");
    assert_eq!(
        put_as(&hive, &keys["bob"], "reader", &reader)
            .await
            .status(),
        201
    );
    hive.wait_phase("reader", "Running").await;

    // The admin writing the name without saying whose: refused, and nothing changes.
    let r = put_secret(&hive, &hive.key, "/v1/secrets/llm-keys", "admins").await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "owned_by_another");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("owner \"bob\""),
        "{e}"
    );
    assert!(hive
        .container_env("reader")
        .await
        .contains(&"K=bobs".to_string()));
    // Another operator may not even learn the owner.
    let r = put_secret(&hive, &keys["alice"], "/v1/secrets/llm-keys", "alices").await;
    assert_eq!(r.status(), 409);
    assert!(!r.text().await.unwrap().contains("bob"));

    // Taken over explicitly: the answer says so, and bob's agent no longer reads it.
    let r = put_secret(
        &hive,
        &hive.key,
        "/v1/secrets/llm-keys?owner=admin",
        "admins",
    )
    .await;
    assert_eq!(r.status(), 200);
    let warning = r.headers()["warning"].to_str().unwrap().to_string();
    assert!(warning.contains("taken over from owner bob"), "{warning}");
    assert_eq!(r.json::<Value>().await.unwrap()["owner"], "admin");
    status_saying(&hive, "reader", "does not exist").await;
    assert!(!hive
        .container_env("reader")
        .await
        .contains(&"K=admins".to_string()));

    // Agents alike: the admin's apply of bob's agent is refused, naming why...
    let mine = agent_yaml("shared", "  env: {WHO: bob}\n");
    assert_eq!(
        put_as(&hive, &keys["bob"], "shared", &mine).await.status(),
        201
    );
    let admins = agent_yaml("shared", "  env: {WHO: admin}\n");
    let r = hive
        .req(Method::POST, "/v1/apply")
        .header("content-type", "application/yaml")
        .body(admins.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["error"]["documents"][0]["code"], "owned_by_another",
        "{e}"
    );
    assert_eq!(hive.put_yaml("shared", &admins).await.status(), 409);
    let a = hive.get("shared").await.unwrap();
    assert_eq!(
        (
            a["metadata"]["owner"].as_str(),
            a["spec"]["env"]["WHO"].as_str()
        ),
        (Some("bob"), Some("bob"))
    );
    // ...unless the admin writes it for bob, or takes it over by naming itself.
    let for_bob = admins.replace("  name: shared\n", "  name: shared\n  owner: bob\n");
    assert_eq!(hive.put_yaml("shared", &for_bob).await.status(), 200);
    let taken = admins.replace("  name: shared\n", "  name: shared\n  owner: admin\n");
    let r = hive.put_yaml("shared", &taken).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("warning"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["metadata"]["owner"],
        "admin"
    );
    let r = with_key(&hive, &keys["bob"], Method::GET, "/v1/agents/shared")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no longer bob's to read");

    // Two owners racing for one new secret name: exactly one wins, every time.
    for round in 0..10 {
        let path = format!("/v1/secrets/race-{round}");
        let (a, b) = tokio::join!(
            put_secret(&hive, &keys["alice"], &path, "alice"),
            put_secret(&hive, &keys["bob"], &path, "bob")
        );
        let mut codes = [a.status().as_u16(), b.status().as_u16()];
        codes.sort();
        assert_eq!(codes, [201, 409], "round {round}");
    }
}

#[tokio::test]
async fn names_are_unambiguous_and_a_volume_is_mounted_only_for_its_owners_agent() {
    let (hive, keys, _dir) = with_owners(&[]).await;
    // Joined with '-', these two shared one volume: hive-vc-x-data.
    let vc = agent_yaml("vc", "  volumes: [{name: x-data, mountPath: /d}]\n");
    let vcx = agent_yaml("vc-x", "  volumes: [{name: data, mountPath: /d}]\n");
    assert_eq!(put_as(&hive, &keys["bob"], "vc", &vc).await.status(), 201);
    assert_eq!(
        put_as(&hive, &keys["alice"], "vc-x", &vcx).await.status(),
        201
    );
    hive.wait_phase("vc", "Running").await;
    hive.wait_phase("vc-x", "Running").await;
    let hive = &hive;
    let mounted = |agent: &'static str| async move {
        let c = hive.inspect(agent).await.unwrap();
        c.mounts.unwrap()[0].name.clone().unwrap()
    };
    assert_ne!(mounted("vc").await, mounted("vc-x").await);

    // bob retains a volume with data, and deletes the agent.
    let writer = |extra: &str| {
        format!(
            "apiVersion: hive/v1\nkind: Agent\nmetadata: {{name: keep}}\nspec:\n  image: {IMAGE}\n  command: [/bin/sh, -c, \"cat /k/f 2>/dev/null; echo bobs-data > /k/f; exec sleep 3600\"]\n  volumes: [{{name: k, mountPath: /k, retain: true{extra}}}]\n"
        )
    };
    assert_eq!(
        put_as(hive, &keys["bob"], "keep", &writer(""))
            .await
            .status(),
        201
    );
    hive.wait_phase("keep", "Running").await;
    with_key(hive, &keys["bob"], Method::DELETE, "/v1/agents/keep")
        .send()
        .await
        .unwrap();
    wait_for("keep to be gone", || async {
        hive.get("keep").await.is_none().then_some(())
    })
    .await;

    // alice takes the name: the volume is never mounted for her.
    assert_eq!(
        put_as(hive, &keys["alice"], "keep", &writer(""))
            .await
            .status(),
        201
    );
    let status = status_saying(hive, "keep", "belongs to another owner").await;
    assert_eq!(status["phase"], "Failed");
    with_key(hive, &keys["alice"], Method::DELETE, "/v1/agents/keep")
        .send()
        .await
        .unwrap();
    wait_for("alice's keep to be gone", || async {
        hive.get("keep").await.is_none().then_some(())
    })
    .await;

    // bob's new agent of that name gets it only by asking.
    assert_eq!(
        put_as(hive, &keys["bob"], "keep", &writer(""))
            .await
            .status(),
        201
    );
    status_saying(hive, "keep", "adoptRetained").await;
    let adopt = writer(", adoptRetained: true");
    assert_eq!(
        put_as(hive, &keys["bob"], "keep", &adopt).await.status(),
        200
    );
    hive.wait_phase("keep", "Running").await;
    wait_for("the retained data", || async {
        let r = hive
            .req(Method::GET, "/v1/agents/keep/logs")
            .send()
            .await
            .ok()?;
        r.text().await.ok()?.contains("bobs-data").then_some(())
    })
    .await;

    // Container names across instances: instance a's agent b-c and instance a-b's agent c.
    let base = format!("i{}", token());
    let first = Hive::start_on(&base, &[]).await;
    let second = Hive::start_on(&format!("{base}-b"), &[]).await;
    first.running("b-c", "").await;
    second.running("c", "").await;
    assert_ne!(
        first.inspect("b-c").await.unwrap().id,
        second.inspect("c").await.unwrap().id
    );
}

#[tokio::test]
async fn no_agent_answers_in_place_of_a_service_on_the_agents_network() {
    let hive = Hive::start().await;
    for reserved in ["agent-api", "sol"] {
        let r = hive.put_yaml(reserved, &agent_yaml(reserved, "")).await;
        assert_eq!(r.status(), 422, "{reserved}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(
            (e["error"]["rule"].as_str(), e["error"]["field"].as_str()),
            (Some("reserved"), Some("metadata.name"))
        );
    }
    // A service that is not Hive's, known on the network by an alias.
    let d = engine().await;
    let service = format!("svc-{}", token());
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        entrypoint: Some(SLEEP.iter().map(|s| s.to_string()).collect()),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                hive.network(),
                EndpointSettings {
                    aliases: Some(vec!["billing".into()]),
                    ..Default::default()
                },
            )])),
        }),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(hive.network()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The agents' network exists once Hive has made its first agent.
    hive.running("first", "").await;
    let options = CreateContainerOptions {
        name: Some(service.clone()),
        ..Default::default()
    };
    let id = d.create_container(Some(options), body).await.unwrap().id;
    d.start_container(&id, None).await.unwrap();
    for (name, holder) in [
        ("billing", "an alias of container"),
        (service.as_str(), "container"),
    ] {
        assert_eq!(
            hive.put_yaml(name, &agent_yaml(name, "")).await.status(),
            201
        );
        let status = status_saying(&hive, name, "already in use on network").await;
        assert_eq!(status["phase"], "Failed");
        assert!(
            status["message"].as_str().unwrap().contains(holder),
            "{status}"
        );
        assert!(hive.inspect(name).await.is_none(), "no container was made");
    }
    // Another instance's agent on the same network: the same.
    let other = Hive::start_args(&["--agent-network".into(), hive.network()]).await;
    other.running("twin", "").await;
    hive.put_yaml("twin", &agent_yaml("twin", "")).await;
    status_saying(&hive, "twin", "an agent of another Hive instance").await;
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    d.remove_container(&id, Some(options)).await.unwrap();
}

#[tokio::test]
async fn images_cannot_reach_the_host_and_one_owners_pulls_do_not_hold_up_another() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let repo = IMAGE.split(':').next().unwrap();
    std::fs::write(
        &policy,
        format!("images: {{allow: [\"{repo}:*\", \"registry.invalid/**\"]}}\n"),
    )
    .unwrap();
    // registry.invalid stands for a public registry that cannot be reached: Hive's own
    // lookup is pinned to a public address (the engine's fails, as it would offline).
    let (hive, keys, _keys_dir) = with_owners(&[
        "--policy",
        &policy.display().to_string(),
        "--resolve",
        "registry.invalid=192.0.2.1",
    ])
    .await;
    for (image, rule) in [
        ("127.0.0.1:5999/x:1", "images.privateRegistries"),
        ("localhost/x", "images.privateRegistries"),
        ("169.254.169.254/latest:1", "images.privateRegistries"),
        ("[::1]:5000/x", "images.privateRegistries"),
        (&format!("{repo}:5000/evil:1") as &str, "images.allow"),
    ] {
        let doc = agent_yaml("img", "").replace(IMAGE, &format!("\"{image}\""));
        let r = put_as(&hive, &keys["bob"], "img", &doc).await;
        assert_eq!(r.status(), 422, "{image}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["rule"], rule, "{image}: {e}");
        assert!(
            !e["error"]["message"].as_str().unwrap().contains("5999"),
            "{e}"
        );
    }
    // alice's images cannot be pulled (no such registry); bob's agent does not wait.
    for i in 0..4 {
        let name = format!("pull{i}");
        let doc = agent_yaml(&name, "").replace(IMAGE, &format!("registry.invalid/x/y:{i}"));
        assert_eq!(
            put_as(&hive, &keys["alice"], &name, &doc).await.status(),
            201
        );
    }
    let asked = Instant::now();
    assert_eq!(
        put_as(&hive, &keys["bob"], "quick", &agent_yaml("quick", ""))
            .await
            .status(),
        201
    );
    hive.wait_phase("quick", "Running").await;
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "bob waited {:?}",
        asked.elapsed()
    );
    // Each of alice's agents says why, briefly: no engine or registry body.
    let status = status_saying(&hive, "pull0", "could not be pulled").await;
    assert!(status["message"].as_str().unwrap().len() < 400, "{status}");
}

#[tokio::test]
async fn a_partial_policy_keeps_the_builtin_limits_and_ceilings() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "defaults: {pids: 64}\n").unwrap();
    let hive = Hive::start_args(&["--policy".into(), policy.display().to_string()]).await;
    hive.running("limited", "").await;
    let host = hive.inspect("limited").await.unwrap().host_config.unwrap();
    assert_eq!(host.memory, Some(512 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.pids_limit, Some(64));
    let r = hive
        .put_yaml(
            "forky",
            &agent_yaml("forky", "  resources: {pids: 4000000}\n"),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["rule"],
        "max.pids"
    );
}

#[tokio::test]
async fn the_manifests_directory_trusts_only_its_own_annotations_and_stays_inside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("x.yaml"),
        agent_yaml("smuggled", "  state: Stopped\n"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("a.yaml"),
        agent_yaml("declared", "  state: Stopped\n"),
    )
    .unwrap();
    let for_bob = agent_yaml("bobs", "  state: Stopped\n")
        .replace("  name: bobs\n", "  name: bobs\n  owner: bob\n");
    std::fs::write(d.join("b.yaml"), for_bob).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("out")).unwrap();
    std::os::unix::fs::symlink(d, d.join("loop")).unwrap();
    let hive = Hive::start_args(&[
        "--manifests-dir".into(),
        d.display().to_string(),
        "--manifests-rescan".into(),
        "1h".into(),
    ])
    .await;
    wait_for("declared to appear", || async {
        hive.get("declared").await
    })
    .await;
    let sync = wait_for("the scan to report", || async {
        let s = hive.get_json("/v1/sync").await;
        (s["skipped"].as_array()?.len() == 2).then_some(s)
    })
    .await;
    assert!(
        hive.get("smuggled").await.is_none(),
        "nothing from outside the directory"
    );
    let errors = sync["files"]["b.yaml"]["errors"].to_string();
    assert!(errors.contains("gitops.allowOwners"), "{sync:#}");
    assert!(hive.get("bobs").await.is_none());

    // A client may not set hive/ annotations, nor change what the directory declares.
    let sneaky = agent_yaml("sneaky", "").replace(
        "  name: sneaky\n",
        "  name: sneaky\n  annotations: {hive/source: a.yaml}\n",
    );
    let r = hive.put_yaml("sneaky", &sneaky).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "metadata.annotations.hive/source"
    );
    let r = hive.put_yaml("declared", &agent_yaml("declared", "")).await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "managed_by_manifests"
    );
}

#[tokio::test]
async fn slow_and_flooding_clients_cannot_starve_hive_before_authentication() {
    // 64 file descriptors, as the red team had: Hive keeps some back for itself.
    let hive = Hive::process(
        HashMap::from([("HIVE_TEST_NOFILE".to_string(), Some("64".to_string()))]),
        Vec::new(),
    )
    .await;
    hive.running("steady", "").await;
    let addr = hive.url.trim_start_matches("http://").to_string();
    // 70 requests that send half their headers and stop.
    let mut slow = Vec::new();
    for _ in 0..70 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            slow.push(s);
        }
    }
    let started = Instant::now();
    wait_for("healthz to answer again", || async {
        let r = hive
            .http
            .get(format!("{}/healthz", hive.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // The engine connection survived: the lease is held and agents converge.
    wait_for("readyz", || async {
        (hive.get_open("/readyz").await.status() == 200).then_some(())
    })
    .await;
    hive.running("after", "").await;
    drop(slow);

    // Unauthenticated writes with huge names: counted, not stored one by one.
    let before = hive.get_json("/v1/audit?limit=1000").await["items"]
        .as_array()
        .unwrap()
        .len();
    let long = "n".repeat(60_000);
    for _ in 0..200 {
        let r = hive
            .http
            .put(format!("{}/v1/agents/{long}", hive.url))
            .header("content-type", "application/yaml")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let audit = hive.get_json("/v1/audit?limit=1000").await;
    let items = audit["items"].as_array().unwrap();
    assert!(
        items.len() <= before + 2,
        "{} entries for 200 refusals",
        items.len() - before
    );
    let counted: u64 = items
        .iter()
        .filter(|e| e["keyId"] == "-")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(counted >= 200, "{audit}");
    assert!(
        audit.to_string().len() < 100_000,
        "the audit log holds the names"
    );
    // Any method string a client sends is not a metrics label.
    let odd = Method::from_bytes(b"BREWCOFFEE").unwrap();
    hive.http
        .request(odd, format!("{}/healthz", hive.url))
        .send()
        .await
        .unwrap();
    let metrics = hive
        .req(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("BREWCOFFEE") && metrics.contains("method=\"other\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn lesser_findings_sync_env_from_echoes_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "env: {maxCount: 3}\n").unwrap();
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("m.yaml"),
        agent_yaml("m", "  state: Stopped\n"),
    )
    .unwrap();
    let (hive, keys, _keys_dir) = with_owners(&[
        "--policy",
        &policy.display().to_string(),
        "--manifests-dir",
        &manifests.path().display().to_string(),
        "--max-streams-per-key",
        "2",
    ])
    .await;
    // /v1/sync names every file's agents: admins only.
    for who in ["bob", "viewer"] {
        let r = with_key(&hive, &keys[who], Method::GET, "/v1/sync")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{who}");
    }
    assert_eq!(
        hive.req(Method::GET, "/v1/sync")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // envFrom counts against the env limits, at admission and when the secret grows.
    let secret = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("S{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let put = |n: usize| {
        with_key(&hive, &keys["bob"], Method::PUT, "/v1/secrets/many")
            .json(&secret(n))
            .send()
    };
    assert!(put(5).await.unwrap().status().is_success());
    let doc = agent_yaml("wide", "  envFrom: [{secretRef: many}]\n");
    let r = put_as(&hive, &keys["bob"], "wide", &doc).await;
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["error"]["rule"].as_str(), e["error"]["field"].as_str()),
        (Some("env.maxCount"), Some("spec.envFrom"))
    );
    assert!(put(1).await.unwrap().status().is_success());
    assert_eq!(
        put_as(&hive, &keys["bob"], "wide", &doc).await.status(),
        201
    );
    hive.wait_phase("wide", "Running").await;
    assert!(put(6).await.unwrap().status().is_success());
    let status = status_saying(&hive, "wide", "env.maxCount").await;
    assert_eq!(status["phase"], "Failed");

    // A rejected value is not echoed: the answer names the field.
    let marker = "ZZ-ECHO-ZZ";
    for doc in [
        agent_yaml("echo", &format!("  state: {marker}\n")),
        agent_yaml("echo", &format!("  resources: {{memory: {marker}}}\n")),
        agent_yaml("echo", "").replace(
            "  name: echo\n",
            &format!("  name: echo\n  labels: {{team: \"{marker}!\"}}\n"),
        ),
    ] {
        let r = hive.put_yaml("echo", &doc).await;
        assert_eq!(r.status(), 422, "{doc}");
        let body = r.text().await.unwrap();
        let message = serde_json::from_str::<Value>(&body).unwrap()["error"]["message"].to_string();
        assert!(!message.contains(marker), "{body}");
    }
    let r = hive.put_yaml(&"x".repeat(5000), "").await;
    assert!(r.text().await.unwrap().len() < 600);
    assert!(!hive
        .get_json("/v1/audit?limit=50")
        .await
        .to_string()
        .contains(marker));

    // At most two watches open for one key; closing one frees its place.
    let watch = || with_key(&hive, &keys["viewer"], Method::GET, "/v1/agents?watch=true").send();
    let first = watch().await.unwrap();
    let second = watch().await.unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK)
    );
    let third = watch().await.unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(
        with_key(&hive, &keys["bob"], Method::GET, "/v1/agents?watch=true")
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "another key has its own share"
    );
    drop(first);
    wait_for("the closed watch's place to be free", || async {
        let r = watch().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    drop(second);
}
