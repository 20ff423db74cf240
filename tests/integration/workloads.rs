//! What real sub-agents need: secrets through envFrom, named volumes, the agents'
//! network, and a ttl.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, container_id, engine, token, wait_for, Hive, IMAGE};

async fn put_secret(hive: &Hive, name: &str, data: Value) -> reqwest::Response {
    hive.req(Method::PUT, &format!("/v1/secrets/{name}"))
        .json(&data)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn secrets_are_write_only_and_reach_the_environment_through_env_from() {
    let hive = Hive::start().await;
    let value = format!("sk-{}", token());
    let r = put_secret(
        &hive,
        "llm-keys",
        json!({"PROVIDER_API_KEY": value, "OTHER": "x"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let shown: Value = r.json().await.unwrap();
    assert_eq!(shown["keys"], json!(["OTHER", "PROVIDER_API_KEY"]));
    assert!(!shown.to_string().contains(&value));
    let listed: Value = hive.get_json("/v1/secrets").await;
    assert_eq!(listed["items"][0]["name"], "llm-keys");
    assert!(!listed.to_string().contains(&value));

    let yaml = agent_yaml(
        "uses",
        "  envFrom: [{secretRef: llm-keys}]\n  env: {OTHER: mine}\n",
    );
    assert_eq!(hive.put_yaml("uses", &yaml).await.status(), 201);
    let agent = hive.wait_phase("uses", "Running").await;
    assert!(
        !agent.to_string().contains(&value),
        "the agent shows no values"
    );
    let env = hive.container_env("uses").await;
    assert!(env.contains(&format!("PROVIDER_API_KEY={value}")));
    assert!(
        env.contains(&"OTHER=mine".to_string()),
        "spec.env wins over the secret: {env:?}"
    );

    // A change of the secret recreates the agents that use it.
    let old_id = container_id(&agent);
    let rotated = format!("sk-{}", token());
    assert_eq!(
        put_secret(&hive, "llm-keys", json!({"PROVIDER_API_KEY": rotated}))
            .await
            .status(),
        200
    );
    wait_for("the agent to be recreated with the new value", || async {
        let c = hive.inspect("uses").await?;
        let env = c.config?.env?;
        (c.id? != old_id && env.contains(&format!("PROVIDER_API_KEY={rotated}"))).then_some(())
    })
    .await;

    // A missing secret fails the agent, saying which; writing it fixes that.
    let yaml = agent_yaml("lacks", "  envFrom: [{secretRef: not-yet}]\n");
    assert_eq!(hive.put_yaml("lacks", &yaml).await.status(), 201);
    let failed = hive.wait_phase("lacks", "Failed").await;
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"not-yet\"") && message.contains("PUT /v1/secrets/not-yet"),
        "{message}"
    );
    assert_eq!(
        put_secret(&hive, "not-yet", json!({"A": "b"}))
            .await
            .status(),
        201
    );
    hive.wait_phase("lacks", "Running").await;

    // Values never reach the logs or the audit log.
    let audit: Value = hive.get_json("/v1/audit?limit=100").await;
    assert!(!audit.to_string().contains(&value) && !audit.to_string().contains(&rotated));
    let logs = hive.logs();
    assert!(
        logs.contains("write secret"),
        "the writes are logged: {logs}"
    );
    assert!(!logs.contains(&value) && !logs.contains(&rotated));

    // Bad secrets are refused.
    let r = put_secret(&hive, "bad", json!({"1X": "y"})).await;
    assert_eq!(r.status(), 422);
    let r = put_secret(&hive, "Bad_Name", json!({"X": "y"})).await;
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn volumes_outlive_recreation_and_go_with_the_agent_unless_retained() {
    let hive = Hive::start().await;
    let counter = |extra: &str| {
        format!(
            "apiVersion: hive/v1\nkind: Agent\nmetadata: {{name: keeper}}\nspec:\n  image: {IMAGE}\n  command: [/bin/sh, -c, \"echo start >> /work/log; cat /work/log; exec sleep 3600\"]\n  volumes: [{{name: work, mountPath: /work}}, {{name: keep, mountPath: /keep, retain: true}}]\n{extra}"
        )
    };
    let r = hive.put_yaml("keeper", &counter("")).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    hive.wait_phase("keeper", "Running").await;
    let work = format!("{}_work", hive.container_name("keeper"));
    let keep = format!("{}_keep", hive.container_name("keeper"));
    let d = engine().await;
    let v = d.inspect_volume(&work).await.expect("the volume exists");
    let labels = v.labels;
    assert_eq!(labels["hive.agent"], "keeper");
    assert_eq!(labels["hive.instance"], hive.instance);

    // A new spec recreates the container; the volume, and what it holds, stay.
    assert_eq!(
        hive.put_yaml("keeper", &counter("  env: {V: \"2\"}\n"))
            .await
            .status(),
        200
    );
    wait_for(
        "the second container to see the first one's file",
        || async {
            let r = hive
                .req(Method::GET, "/v1/agents/keeper/logs")
                .send()
                .await
                .ok()?;
            let text = r.text().await.ok()?;
            (text == "start\nstart\n").then_some(())
        },
    )
    .await;

    // Deleting the agent removes its volume, unless retained.
    hive.req(Method::DELETE, "/v1/agents/keeper")
        .send()
        .await
        .unwrap();
    wait_for("the agent to go", || async {
        hive.get("keeper").await.is_none().then_some(())
    })
    .await;
    assert!(
        d.inspect_volume(&work).await.is_err(),
        "the volume went with the agent"
    );
    assert!(
        d.inspect_volume(&keep).await.is_ok(),
        "retain: true keeps it"
    );
    d.remove_volume(
        &keep,
        None::<bollard::query_parameters::RemoveVolumeOptions>,
    )
    .await
    .unwrap();

    // Never a host path.
    let r = hive
        .put_yaml(
            "hostile",
            &counter("")
                .replace("keeper", "hostile")
                .replace("mountPath: /work}", "mountPath: /work, hostPath: /}"),
        )
        .await;
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn agents_join_the_agent_network_under_their_names() {
    let hive = Hive::start().await;
    hive.put_yaml("net1", &agent_yaml("net1", "")).await;
    hive.wait_phase("net1", "Running").await;
    let c = hive.inspect("net1").await.unwrap();
    let networks = c.network_settings.unwrap().networks.unwrap();
    let endpoint = networks
        .get(&hive.network())
        .expect("joined the agents' network");
    assert!(
        endpoint
            .aliases
            .clone()
            .unwrap_or_default()
            .contains(&"net1".to_string()),
        "{endpoint:?}"
    );
    // The network did not exist: Hive created it, labelled.
    let d = engine().await;
    let n = d
        .inspect_network(&hive.network(), None)
        .await
        .expect("created");
    assert_eq!(n.labels.unwrap()["hive.managed"], "true");
}

#[tokio::test]
async fn a_ttl_deletes_the_agent_when_it_runs_out() {
    let hive = Hive::start().await;
    assert_eq!(
        hive.put_yaml("brief", &agent_yaml("brief", "  ttl: 4s\n"))
            .await
            .status(),
        201
    );
    // The status says when (without waiting for Running, which a loaded engine may reach
    // only after the ttl).
    let expires = wait_for("status.expiresAt", || async {
        hive.get("brief").await?["status"]["expiresAt"]
            .as_str()
            .map(str::to_string)
    })
    .await;
    assert!(expires.ends_with('Z'), "{expires}");
    wait_for("the ttl to delete it", || async {
        hive.get("brief").await.is_none().then_some(())
    })
    .await;
    assert!(hive.containers().await.is_empty());
    let r = hive
        .put_yaml("bad-ttl", &agent_yaml("bad-ttl", "  ttl: soon\n"))
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "spec.ttl"
    );
}
