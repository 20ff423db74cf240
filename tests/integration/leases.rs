//! Reliability: never two reconcilers for one fleet, a store that never destroys another
//! store's fleet, a bounded create rate when something keeps removing containers, and a
//! Hive that stays sane (and stoppable) when the engine hangs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::{EventsOptions, RemoveContainerOptions};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::harness::{
    agent_yaml, container_id, engine, serve_until_exit, wait_for, Hive, DEADLINE,
};
use crate::proxy::{Mode, SocketProxy};

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The engine's container events of `instance` between two Unix times (the call returns
/// when `until` is reached), as (action, container id).
async fn engine_events(instance: &str, since: i64, until: i64) -> Vec<(String, String)> {
    let options = EventsOptions {
        since: Some(since.to_string()),
        until: Some(until.to_string()),
        filters: Some(HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("hive.instance={instance}")],
            ),
        ])),
    };
    engine()
        .await
        .events(Some(options))
        .filter_map(|e| async move {
            let e = e.ok()?;
            Some((e.action?, e.actor?.id?))
        })
        .collect()
        .await
}

/// `/readyz` as an admin sees it (the other stores' containers named).
async fn readyz(hive: &Hive) -> (u16, Value) {
    let r = hive
        .req(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hive_on_a_held_instance_exits_or_stands_by_and_destroys_nothing() {
    let first = Hive::start().await;
    let since = unix_now();
    let ids = [
        container_id(&first.running("keep-1", "").await),
        container_id(&first.running("keep-2", "").await),
    ];
    let data_dir = std::fs::canonicalize(first.data_dir()).unwrap();

    // Without --standby: one line naming the instance and its holder, and a failure exit.
    let network = first.network();
    let (status, stderr) =
        serve_until_exit(&["--instance", &first.instance, "--agent-network", &network]).await;
    assert!(!status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("hive: ")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for part in [
        format!("instance {:?}", first.instance),
        format!("pid {}", first.pid()),
        format!("data dir {}", data_dir.display()),
        "since 20".to_string(),
        "--standby".to_string(),
    ] {
        assert!(
            lines[0].contains(&part),
            "{part:?} missing from: {}",
            lines[0]
        );
    }

    // With --standby: it serves, says who holds the instance, and takes no writes.
    let mut standby = Hive::start_on(&first.instance, &["--standby"]).await;
    standby.leave_containers();
    let (code, body) = readyz(&standby).await;
    assert_eq!(code, 503);
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("standby") && message.contains(&data_dir.display().to_string()),
        "{message}"
    );
    let r = standby.put_yaml("late", &agent_yaml("late", "")).await;
    assert_eq!(r.status(), 503);
    assert!(
        standby.get("late").await.is_none(),
        "a refused write stored nothing"
    );
    assert_eq!(standby.list().await["items"], serde_json::json!([]));

    // Over 20 s with both running, the engine removes and creates nothing of the instance.
    let events = engine_events(&first.instance, since + 1, unix_now() + 20).await;
    let churn: Vec<_> = events
        .iter()
        .filter(|(action, _)| matches!(action.as_str(), "destroy" | "create" | "kill" | "die"))
        .filter(|(action, id)| action != "create" || !ids.contains(id))
        .collect();
    assert!(churn.is_empty(), "the engine saw {churn:?}");
    for (name, id) in ["keep-1", "keep-2"].iter().zip(&ids) {
        let a = first.wait_phase(name, "Running").await;
        assert_eq!(&container_id(&a), id);
    }
    assert_eq!(readyz(&first).await.0, 200);
    assert_eq!(readyz(&standby).await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_hands_over_to_a_standby_and_takes_its_fleet_back_untouched() {
    let lease = ["--lease-duration", "4s"];
    let mut holder = Hive::process(HashMap::new(), lease.map(String::from).to_vec()).await;
    let agent = holder.running("kept", "").await;
    let id = container_id(&agent);
    let started = holder
        .inspect("kept")
        .await
        .unwrap()
        .state
        .unwrap()
        .started_at
        .unwrap();
    let mut standby = Hive::start_on(&holder.instance, &["--standby", lease[0], lease[1]]).await;
    standby.leave_containers();
    assert_eq!(readyz(&standby).await.0, 503);

    holder.kill9();
    let killed = Instant::now();
    let ready = wait_for("the standby to take over", || async {
        let (code, body) = readyz(&standby).await;
        (code == 200).then_some(body)
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "took over after {:?}",
        killed.elapsed()
    );
    eprintln!(
        "measured: a standby took over {:?} after kill -9 (lease 4s)",
        killed.elapsed()
    );
    // A fresh store keeps the dead holder's containers and says so.
    let reported = wait_for("the holder's container to be reported", || async {
        let (_, body) = readyz(&standby).await;
        let listed = body["foreignContainers"].as_array()?.clone();
        listed
            .iter()
            .any(|c| c["id"] == id.as_str())
            .then_some(listed)
    })
    .await;
    assert_eq!(reported[0]["agent"], "kept", "{ready}");
    let c = holder.inspect("kept").await.unwrap();
    assert_eq!(c.id.as_deref(), Some(id.as_str()));
    assert_eq!(c.state.unwrap().started_at.unwrap(), started);

    // The standby stops cleanly and gives the lease up; the holder, restarted on its
    // store, takes it back and adopts its container without restarting it.
    assert!(standby.stop().success(), "{}", standby.logs());
    holder.restart().await;
    let a = holder.wait_phase("kept", "Running").await;
    assert_eq!(container_id(&a), id);
    let c = holder.inspect("kept").await.unwrap();
    assert_eq!(
        c.state.unwrap().started_at.unwrap(),
        started,
        "not restarted"
    );
    assert_eq!(readyz(&holder).await.0, 200);
}

#[tokio::test]
async fn a_fresh_store_keeps_another_stores_fleet_unless_told_to_adopt_it() {
    let mut first = Hive::start().await;
    let id = container_id(&first.running("theirs", "").await);
    assert!(first.stop().success());

    // Another directory, a fresh store: the container is left alone and reported.
    let mut second = Hive::start_on(&first.instance, &[]).await;
    second.leave_containers();
    wait_for(
        "the container to be reported as another store's",
        || async {
            let (code, body) = readyz(&second).await;
            (code == 200
                && body["foreignContainers"]
                    .as_array()?
                    .iter()
                    .any(|c| c["id"] == id.as_str()))
            .then_some(())
        },
    )
    .await;
    assert!(second.logs().contains("belong to another store"));
    let c = engine().await.inspect_container(&id, None).await.unwrap();
    assert_eq!(c.state.unwrap().running, Some(true));
    // Declared here too, stopped: it has no container of its own, and its status says
    // whose container holds the name (the one its start would meet).
    let stopped = agent_yaml("theirs", "  state: Stopped\n");
    assert_eq!(second.put_yaml("theirs", &stopped).await.status(), 201);
    let a = second.wait_phase("theirs", "Failed").await;
    assert!(
        a["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("another Hive store"),
        "{a:#}"
    );
    let c = engine().await.inspect_container(&id, None).await.unwrap();
    assert_eq!(
        c.state.unwrap().running,
        Some(true),
        "still running, untouched"
    );
    assert!(second.stop().success());

    // Told to adopt it, a store that does not declare the agent removes it as an orphan.
    let mut third = Hive::start_on(&first.instance, &["--adopt-foreign"]).await;
    third.leave_containers();
    wait_for("the adopted orphan to be removed", || async {
        engine()
            .await
            .inspect_container(&id, None)
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn containers_removed_out_of_band_in_a_loop_are_recreated_at_a_bounded_rate() {
    let hive = Hive::start().await;
    let since = unix_now();
    hive.running("storm", "").await;
    let d = engine().await;
    let remove = || async {
        for c in hive.containers().await {
            let options = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            let _ = d.remove_container(&c.id.unwrap(), Some(options)).await;
        }
    };
    // Remove whatever appears until Hive says something else removes its containers.
    let agent = wait_for("the churn condition", || async {
        remove().await;
        let a = hive.get("storm").await?;
        let ready = a["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (ready["reason"] == "ContainerChurn").then_some(a)
    })
    .await;
    let message = agent["status"]["message"].as_str().unwrap();
    assert!(message.contains("keeps disappearing"), "{message}");
    assert_eq!(agent["status"]["phase"], "Pending");
    let events = hive.get_json("/v1/agents/storm/events").await;
    let churn: Vec<_> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "ContainerChurn")
        .collect();
    assert_eq!(churn.len(), 1, "{events}");
    assert!(churn[0]["message"]
        .as_str()
        .unwrap()
        .contains("creating it again in 10s"));
    // The backoff is visible: nothing is created while it lasts.
    let held_back = Instant::now();
    wait_for("the create after the backoff", || async {
        (!hive.containers().await.is_empty()).then_some(())
    })
    .await;
    assert!(
        held_back.elapsed() >= Duration::from_secs(7),
        "created again after {:?}",
        held_back.elapsed()
    );
    // The first container, three replacements, and the one after the backoff.
    let creates = engine_events(&hive.instance, since, unix_now() + 1)
        .await
        .into_iter()
        .filter(|(action, _)| action == "create")
        .count();
    eprintln!(
        "measured: {creates} creates in {}s of removals; the backoff held creates back {:?}",
        unix_now() - since,
        held_back.elapsed()
    );
    assert!(creates <= 5, "{creates} containers created");
    let removals = hive.logs().matches("removed container").count();
    assert_eq!(
        removals, 0,
        "Hive removed nothing itself, so it announced nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_engine_keeps_reads_fast_and_shutdown_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = SocketProxy::start(dir.path());
    let mut hive = Hive::start_full(
        HashMap::from([("DOCKER_HOST".to_string(), Some(proxy.url()))]),
        ["--engine-timeout", "2s", "--lease-duration", "6s"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    hive.running("before", "").await;

    proxy.set(Mode::Stall);
    let stalled = Instant::now();
    wait_for("readyz to go 503", || async {
        (readyz(&hive).await.0 == 503).then_some(())
    })
    .await;
    eprintln!(
        "measured: /readyz 503 {:?} after the engine stalled",
        stalled.elapsed()
    );
    assert!(
        stalled.elapsed() < Duration::from_secs(10),
        "readyz still said ready {:?} after the engine stalled",
        stalled.elapsed()
    );
    // Reads come from the store: fast, engine or not.
    for path in ["/v1/agents", "/v1/agents/before"] {
        let asked = Instant::now();
        let r = hive.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "GET {path} took {:?}",
            asked.elapsed()
        );
    }
    assert_eq!(
        hive.put_yaml("during", &agent_yaml("during", ""))
            .await
            .status(),
        201
    );
    wait_for("the status to say the engine does not answer", || async {
        let a = hive.get("during").await?;
        a["status"]["message"]
            .as_str()?
            .contains("did not answer")
            .then_some(())
    })
    .await;

    let asked = Instant::now();
    let status = hive.stop();
    assert!(status.success(), "{status}\n{}", hive.logs());
    eprintln!(
        "measured: SIGTERM to exit {:?} with the engine stalled",
        asked.elapsed()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "SIGTERM took {:?} with the engine stalled",
        asked.elapsed()
    );
    assert!(DEADLINE > Duration::from_secs(15));
    proxy.set(Mode::Pass);
}
