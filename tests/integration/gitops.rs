//! GitOps: a manifests directory followed by Hive, through filesystem events and through
//! the periodic rescan, each on its own.

use std::path::Path;

use serde_json::Value;

use crate::harness::{agent_yaml, wait_for, Hive};

async fn sync_status(hive: &Hive) -> Value {
    hive.get_json("/v1/sync").await
}

/// Hive following `dir`, either by events (rescan an hour apart) or by rescans alone.
async fn follow(dir: &Path, events: bool) -> Hive {
    let mut args = vec!["--manifests-dir".to_string(), dir.display().to_string()];
    if events {
        args.extend(["--manifests-rescan".into(), "1h".into()]);
    } else {
        args.extend([
            "--manifests-watch".into(),
            "false".into(),
            "--manifests-rescan".into(),
            "500ms".into(),
        ]);
    }
    Hive::start_args(&args).await
}

async fn gone(hive: &Hive, name: &str) {
    wait_for(&format!("{name} to be pruned"), || async {
        hive.get(name).await.is_none().then_some(())
    })
    .await;
}

async fn present(hive: &Hive, name: &str) -> Value {
    wait_for(&format!("{name} to appear"), || async {
        hive.get(name).await
    })
    .await
}

/// The lifecycle of manifests: appear, change, move, disappear; with either way of noticing.
async fn files_appear_change_move_and_disappear(events: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.yaml"), agent_yaml("g1", "  state: Stopped\n")).unwrap();
    let hive = follow(d, events).await;
    let g1 = present(&hive, "g1").await;
    assert_eq!(g1["metadata"]["annotations"]["hive/source"], "a.yaml");
    hive.wait_phase("g1", "Stopped").await;

    // A multi-document file appears; editor leftovers are ignored.
    std::fs::write(
        d.join("b.yaml"),
        format!(
            "{}---\n{}",
            agent_yaml("g2", "  state: Stopped\n"),
            agent_yaml("g3", "  state: Stopped\n")
        ),
    )
    .unwrap();
    std::fs::write(d.join(".b.yaml.swp"), "garbage: [").unwrap();
    std::fs::write(d.join("b.yaml~"), "garbage: [").unwrap();
    present(&hive, "g2").await;
    present(&hive, "g3").await;

    // A change bumps the generation; an unchanged file writes nothing.
    // (Read once the controller has settled it: status writes change the version too.)
    let rv = hive.wait_phase("g2", "Stopped").await["metadata"]["resourceVersion"].clone();
    std::fs::write(
        d.join("a.yaml"),
        agent_yaml("g1", "  state: Stopped\n  env: {V: \"2\"}\n"),
    )
    .unwrap();
    wait_for("g1's new spec", || async {
        let a = hive.get("g1").await?;
        (a["metadata"]["generation"] == 2).then_some(())
    })
    .await;
    hive.wait_phase("g1", "Stopped").await;
    let g2 = hive.get("g2").await.unwrap();
    assert_eq!(g2["metadata"]["generation"], 1);

    // A move keeps the agent (same uid), now sourced from the new path.
    let uid = hive.get("g1").await.unwrap()["metadata"]["uid"].clone();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::rename(d.join("a.yaml"), d.join("sub/moved.yaml")).unwrap();
    let moved = wait_for("g1 to follow its file", || async {
        let a = hive.get("g1").await?;
        (a["metadata"]["annotations"]["hive/source"] == "sub/moved.yaml").then_some(a)
    })
    .await;
    assert_eq!(moved["metadata"]["uid"], uid);

    // Removing a document from a file, and removing a file, prune.
    std::fs::write(d.join("b.yaml"), agent_yaml("g2", "  state: Stopped\n")).unwrap();
    gone(&hive, "g3").await;
    assert_eq!(
        hive.get("g2").await.unwrap()["metadata"]["resourceVersion"],
        rv,
        "g2 was not rewritten"
    );
    std::fs::remove_file(d.join("b.yaml")).unwrap();
    gone(&hive, "g2").await;
    assert!(hive.get("g1").await.is_some());

    let s = sync_status(&hive).await;
    assert!(
        s["files"]["sub/moved.yaml"]["lastApplied"].is_string(),
        "{s:#}"
    );
    assert!(
        s["files"]["sub/moved.yaml"]["objects"]["g1"].is_string(),
        "{s:#}"
    );
    assert!(s["lastScan"].is_string());
    assert_eq!(
        s["files"].as_object().unwrap().len(),
        1,
        "editor files are not manifests: {s:#}"
    );

    // Every GitOps write is in the audit log, under its own identity.
    let audit = hive.get_json("/v1/audit?limit=500").await;
    let entries = audit["items"].as_array().unwrap();
    let audited = |verb: &str, agent: &str| {
        entries.iter().any(|e| {
            e["keyId"] == "gitops"
                && e["verb"] == verb
                && e["agent"] == agent
                && e["outcome"] == "accepted"
        })
    };
    for (verb, agent) in [
        ("apply", "g1"),
        ("apply", "g2"),
        ("prune", "g3"),
        ("prune", "g2"),
    ] {
        assert!(
            audited(verb, agent),
            "no audit of {verb} {agent}: {audit:#}"
        );
    }
}

#[tokio::test]
async fn the_event_path_follows_the_directory() {
    files_appear_change_move_and_disappear(true).await;
}

#[tokio::test]
async fn the_rescan_path_follows_the_directory() {
    files_appear_change_move_and_disappear(false).await;
}

#[tokio::test]
async fn broken_files_and_empty_directories_prune_nothing_and_api_agents_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("fleet.yaml"),
        format!(
            "{}---\n{}",
            agent_yaml("k1", "  state: Stopped\n"),
            agent_yaml("k2", "  state: Stopped\n")
        ),
    )
    .unwrap();
    let hive = follow(d, false).await;
    present(&hive, "k1").await;
    present(&hive, "k2").await;

    // An agent made through the API, and a manifest that names it.
    assert_eq!(
        hive.put_yaml("api-made", &agent_yaml("api-made", "  state: Stopped\n"))
            .await
            .status(),
        201
    );
    std::fs::write(
        d.join("grab.yaml"),
        agent_yaml("api-made", "  state: Running\n"),
    )
    .unwrap();
    let s = wait_for("the conflict to be reported", || async {
        let s = sync_status(&hive).await;
        s["files"]["grab.yaml"]["errors"][0]
            .as_str()?
            .contains("conflict")
            .then_some(s)
    })
    .await;
    assert!(
        s["files"]["grab.yaml"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("made through the API"),
        "{s:#}"
    );
    let api = hive.get("api-made").await.unwrap();
    assert_eq!(api["spec"]["state"], "Stopped", "not taken over");
    assert!(api["metadata"].get("annotations").is_none());
    std::fs::remove_file(d.join("grab.yaml")).unwrap();

    // A broken file (say, half written) is reported with its line and prunes nothing.
    std::fs::write(
        d.join("fleet.yaml"),
        "apiVersion: hive/v1\nkind: Agent\nmetadata: {name: k1\nspec: [",
    )
    .unwrap();
    let s = wait_for("the parse error to be reported", || async {
        let s = sync_status(&hive).await;
        let e = s["files"]["fleet.yaml"]["errors"][0].as_str()?.to_string();
        e.contains("line").then_some(s)
    })
    .await;
    assert!(
        s["files"]["fleet.yaml"]["objects"]["k2"].is_string(),
        "what it declared stays declared: {s:#}"
    );
    // An invalid (but parsable) file likewise.
    std::fs::write(
        d.join("fleet.yaml"),
        agent_yaml("k1", "  state: Stopped\n  resources: {memory: lots}\n"),
    )
    .unwrap();
    wait_for("the invalid file to be reported", || async {
        let s = sync_status(&hive).await;
        s["files"]["fleet.yaml"]["errors"][0]
            .as_str()?
            .contains("spec.resources.memory")
            .then_some(())
    })
    .await;
    // An emptied file too.
    std::fs::write(d.join("fleet.yaml"), "").unwrap();
    wait_for("the empty file to be reported", || async {
        let s = sync_status(&hive).await;
        s["files"]["fleet.yaml"]["errors"][0]
            .as_str()?
            .contains("no documents")
            .then_some(())
    })
    .await;
    // An empty directory (an unmounted volume, say) prunes nothing.
    std::fs::remove_file(d.join("fleet.yaml")).unwrap();
    wait_for("the empty directory to be reported", || async {
        let s = sync_status(&hive).await;
        s["problem"]
            .as_str()?
            .contains("nothing is pruned")
            .then_some(())
    })
    .await;
    for name in ["k1", "k2", "api-made"] {
        let a = hive
            .get(name)
            .await
            .unwrap_or_else(|| panic!("{name} was pruned"));
        assert!(
            a["metadata"].get("deletionTimestamp").is_none(),
            "{name} is being deleted"
        );
    }

    // Put back one of the two: the other goes, and the API's agent stays.
    std::fs::write(d.join("fleet.yaml"), agent_yaml("k1", "  state: Stopped\n")).unwrap();
    gone(&hive, "k2").await;
    assert!(hive.get("k1").await.is_some());
    assert!(hive.get("api-made").await.is_some());
}
