//! Timing and ordering of the controller runtime, against the in-memory orchestrator.
//! What reconciles do to a real engine is tested in tests/ against Docker itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::agent::{Agent, Phase};
use crate::lease::Leadership;
use crate::orchestrator::fake::FakeOrchestrator;

fn agent(name: &str) -> Agent {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "hive/v1", "kind": "Agent",
        "metadata": {"name": name},
        "spec": {"image": "img"}
    }))
    .unwrap()
}

struct Harness {
    /// Says whether the controller holds the lease.
    leadership: watch::Sender<Leadership>,
    store: Arc<Store>,
    fake: Arc<FakeOrchestrator>,
    handle: Handle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<crate::metrics::Metrics>,
    _dir: tempfile::TempDir,
}

/// A lease held by this test's Hive.
fn lease() -> crate::orchestrator::Lease {
    crate::orchestrator::Lease {
        holder: crate::lease::this_process(std::path::Path::new("/tmp"), "test"),
        acquired_ms: 0,
        renewed_ms: 0,
        duration: Duration::from_secs(15),
        transitions: 0,
        handle: "l".into(),
    }
}

fn start(fake: FakeOrchestrator, max_concurrent: usize) -> Harness {
    start_with(fake, max_concurrent, true)
}

/// Starts a controller; `leading` says whether it holds the lease at first.
fn start_with(fake: FakeOrchestrator, max_concurrent: usize, leading: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let fake = Arc::new(fake);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let controller = Controller::new(
        store.clone(),
        fake.clone(),
        metrics.clone(),
        Arc::new(crate::policy::Policy::default()),
        Arc::new(crate::resolve::Resolver::new(&[]).unwrap()),
        Settings {
            resync_interval: Duration::from_secs(3600),
            max_concurrent,
            adopt_foreign: false,
            shutdown_grace: Duration::from_secs(2),
        },
    );
    let handle = controller.handle();
    let stop = CancellationToken::new();
    let initial = if leading {
        Leadership::Leading { lease: lease() }
    } else {
        Leadership::Unknown {
            reason: "test".into(),
        }
    };
    let (tx, rx) = watch::channel(initial);
    let task = tokio::spawn(controller.run(stop.clone(), rx));
    Harness {
        leadership: tx,
        store,
        fake,
        handle,
        stop,
        task,
        metrics,
        _dir: dir,
    }
}

impl Harness {
    fn add(&self, name: &str) {
        self.store.create(agent(name)).unwrap();
        self.handle.enqueue(name);
    }

    fn phase(&self, name: &str) -> Option<Phase> {
        self.store.get(name).unwrap().map(|r| r.agent.status.phase)
    }

    /// Polls until `cond` holds, failing after a deadline.
    async fn until(&self, what: &str, cond: impl Fn(&Harness) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn parallelism_is_bounded_and_every_agent_converges() {
    let h = start(FakeOrchestrator::with_latency(Duration::from_millis(20)), 4);
    for i in 0..24 {
        h.add(&format!("a{i}"));
    }
    h.until("all running", |h| {
        (0..24).all(|i| h.phase(&format!("a{i}")) == Some(Phase::Running))
    })
    .await;
    let max = h.fake.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 4, "{max} engine calls ran at once with a bound of 4");
    assert!(
        max >= 2,
        "reconciles ran one at a time ({max}); they should overlap"
    );
    assert_eq!(h.fake.workloads().len(), 24);
    assert!(!h.fake.overlapped());
    h.stop().await;
}

#[tokio::test]
async fn one_agent_is_never_reconciled_twice_at_once() {
    let h = start(FakeOrchestrator::with_latency(Duration::from_millis(30)), 8);
    h.add("solo");
    for _ in 0..50 {
        h.handle.enqueue("solo");
    }
    h.until("running", |h| h.phase("solo") == Some(Phase::Running))
        .await;
    assert!(!h.fake.overlapped(), "two passes of one agent overlapped");
    assert_eq!(h.fake.workloads().len(), 1, "exactly one container");
    let creates = h
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    assert_eq!(creates, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_panicking_pass_fails_its_agent_only_and_its_delete_completes() {
    let fake = FakeOrchestrator::default();
    fake.panic_on("boom", true);
    let h = start(fake, 2);
    h.add("boom");
    for i in 0..8 {
        h.add(&format!("ok{i}"));
    }
    // The others converge meanwhile; the panicking one is Failed, saying why.
    h.until("the others running", |h| {
        (0..8).all(|i| h.phase(&format!("ok{i}")) == Some(Phase::Running))
    })
    .await;
    h.until("boom failed", |h| h.phase("boom") == Some(Phase::Failed))
        .await;
    let message = h.store.get("boom").unwrap().unwrap().agent.status.message;
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("a bug in Hive") && m.contains("injected panic")),
        "{message:?}"
    );
    // Its place in the queue was given back: once deleted, its next pass (which does
    // not go through the panicking apply) removes it.
    h.store.mark_deleted("boom").unwrap();
    h.handle.enqueue("boom");
    h.until("boom deleted", |h| h.store.get("boom").unwrap().is_none())
        .await;
    h.stop().await;
}

#[tokio::test]
async fn a_failure_is_retried_with_backoff_until_it_succeeds() {
    let fake = FakeOrchestrator::default();
    fake.fail_creates(2, true);
    let h = start(fake, 2);
    // After the start-up resync, so that no pass of it is asked for again while it runs.
    h.until("the first resync", |h| {
        h.fake.lists.load(Ordering::SeqCst) > 0
    })
    .await;
    h.add("flaky");
    let says_why = |h: &Harness| {
        h.store
            .get("flaky")
            .unwrap()
            .unwrap()
            .agent
            .status
            .message
            .is_some_and(|m| m.contains("unreachable"))
    };
    h.until("the status to say why", says_why).await;
    let started = tokio::time::Instant::now();
    h.until("running", |h| h.phase("flaky") == Some(Phase::Running))
        .await;
    // Two failures: retries after 0.5s and then 1s.
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    let creates = h
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    assert_eq!(creates, 3);
    h.stop().await;
}

#[test]
fn the_error_policy_backs_off_by_the_kind_of_error() {
    use crate::orchestrator::OrchestratorError as E;
    let policy = |e: E| error_policy(&ReconcileError::Orchestrator(e));
    assert_eq!(policy(E::Unavailable("away".into())), Backoff::Transient);
    assert_eq!(
        policy(E::Timeout { call: "x", secs: 1 }),
        Backoff::Transient
    );
    for persistent in [
        E::ImageNotFound {
            image: "i".into(),
            detail: "d".into(),
        },
        E::NameTaken { name: "n".into() },
        E::VolumeConflict("v".into()),
    ] {
        assert_eq!(policy(persistent), Backoff::Persistent);
    }
}

#[tokio::test]
async fn a_persistent_failure_fails_the_agent_and_says_why() {
    let fake = FakeOrchestrator::default();
    // Two: the first start-up resync may try it once more at once.
    fake.fail_creates(2, false);
    let h = start(fake, 2);
    h.until("the first resync", |h| {
        h.fake.lists.load(Ordering::SeqCst) > 0
    })
    .await;
    h.add("broken");
    h.until("failed", |h| h.phase("broken") == Some(Phase::Failed))
        .await;
    let r = h.store.get("broken").unwrap().unwrap();
    assert!(r
        .agent
        .status
        .message
        .unwrap()
        .contains("could not be pulled"));
    h.until("a backoff", |h| {
        h.store
            .events("broken")
            .unwrap()
            .iter()
            .any(|e| e.reason == "BackOff")
    })
    .await;
    let events = h.store.events("broken").unwrap();
    let backoff = events.iter().find(|e| e.reason == "BackOff").unwrap();
    assert_eq!(backoff.message, "retrying in 5s", "{events:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_deleted_agent_loses_its_container_before_its_record() {
    let h = start(FakeOrchestrator::with_latency(Duration::from_millis(50)), 2);
    h.add("gone");
    h.until("running", |h| h.phase("gone") == Some(Phase::Running))
        .await;
    h.store.mark_deleted("gone").unwrap();
    h.handle.enqueue("gone");
    // While the removal is in flight the record must still be there.
    h.until("removal started", |h| {
        h.fake.calls().iter().any(|c| c == "remove gone")
    })
    .await;
    assert_eq!(h.phase("gone"), Some(Phase::Terminating));
    h.until("record removed", |h| h.phase("gone").is_none())
        .await;
    assert!(h.fake.workloads().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_resync_removes_orphans_and_replaces_foreign_containers() {
    let h = start(FakeOrchestrator::default(), 2);
    h.add("mine");
    h.until("running", |h| h.phase("mine") == Some(Phase::Running))
        .await;
    let orphan = h.fake.add_out_of_band("nobody", h.store.id());
    let impostor = h.fake.add_out_of_band("mine", h.store.id());
    h.handle.resync();
    h.until("cleaned", |h| {
        let ids: Vec<_> = h.fake.workloads().into_iter().map(|c| c.id).collect();
        !ids.contains(&orphan) && !ids.contains(&impostor)
    })
    .await;
    assert_eq!(h.fake.workloads().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn nothing_is_reconciled_without_the_lease_and_everything_once_it_is_held() {
    let h = start_with(FakeOrchestrator::default(), 2, false);
    let leadership = &h.leadership;
    h.add("a");
    h.add("b");
    let explained = |h: &Harness, name: &str, reason: &str| {
        h.store
            .get(name)
            .unwrap()
            .and_then(|r| r.agent.status.message)
            == Some(format!("not reconciled: {reason}"))
    };
    h.until("both explained", |h| {
        explained(h, "a", "test") && explained(h, "b", "test")
    })
    .await;
    assert!(h.fake.calls().is_empty(), "{:?}", h.fake.calls());
    leadership
        .send(Leadership::Leading { lease: lease() })
        .unwrap();
    h.until("both running", |h| {
        h.phase("a") == Some(Phase::Running) && h.phase("b") == Some(Phase::Running)
    })
    .await;
    // Losing the lease pauses reconciling again.
    leadership
        .send(Leadership::Unknown {
            reason: "lost".into(),
        })
        .unwrap();
    h.until("the loop to see the lease lost", |h| {
        h.metrics.leader.get() == 0
    })
    .await;
    let before = h.fake.calls().len();
    h.store
        .set_state("a", crate::agent::DesiredState::Stopped)
        .unwrap();
    h.handle.enqueue("a");
    h.until("a explained", |h| explained(h, "a", "lost")).await;
    assert_eq!(h.fake.calls().len(), before, "a pass ran without the lease");
    h.stop().await;
}

#[tokio::test]
async fn another_stores_containers_are_left_alone_and_reported() {
    let h = start(FakeOrchestrator::default(), 2);
    h.add("mine");
    h.until("running", |h| h.phase("mine") == Some(Phase::Running))
        .await;
    let theirs = h.fake.add_out_of_band("theirs", "another-store");
    let shadow = h.fake.add_out_of_band("mine", "another-store");
    let orphan = h.fake.add_out_of_band("nobody", h.store.id());
    h.handle.resync();
    h.until("the own orphan removed", |h| {
        !h.fake.workloads().iter().any(|c| c.id == orphan)
    })
    .await;
    h.until("the others reported", |h| h.handle.foreign().len() == 2)
        .await;
    let ids: Vec<_> = h.fake.workloads().into_iter().map(|c| c.id).collect();
    assert!(ids.contains(&theirs) && ids.contains(&shadow), "{ids:?}");
    assert!(!h.fake.calls().iter().any(|c| c == "remove theirs"));
    h.stop().await;
}

#[tokio::test]
async fn containers_removed_out_of_band_in_a_loop_are_recreated_at_a_bounded_rate() {
    let h = start(FakeOrchestrator::default(), 2);
    h.add("storm");
    h.until("running", |h| h.phase("storm") == Some(Phase::Running))
        .await;
    // Something removes the container whenever it appears, for two seconds.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        for c in h.fake.workloads() {
            h.fake.remove_out_of_band(&c.id);
            h.handle.enqueue("storm");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let creates = h
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    assert!(
        creates <= 1 + churn::MAX_VANISHED,
        "{creates} creates in two seconds"
    );
    let r = h.store.get("storm").unwrap().unwrap();
    let ready = r
        .agent
        .status
        .conditions
        .iter()
        .find(|c| c.kind == crate::agent::ConditionType::Ready)
        .unwrap();
    assert_eq!(ready.reason, "ContainerChurn");
    assert!(r
        .agent
        .status
        .message
        .unwrap()
        .contains("keeps disappearing"));
    let events = h.store.events("storm").unwrap();
    assert!(
        events.iter().any(|e| e.reason == "ContainerChurn"),
        "{events:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_container_that_survives_its_removal_is_reported_once_and_not_announced_again() {
    let h = start(FakeOrchestrator::default(), 2);
    h.add("a");
    h.until("running", |h| h.phase("a") == Some(Phase::Running))
        .await;
    let stray = h.fake.add_out_of_band("a", h.store.id());
    h.fake.survive_removal(&stray);
    // Every pass tries again (the stray is still listed) but says nothing new.
    h.until("several removals tried", |h| {
        h.handle.enqueue("a");
        h.fake.calls().iter().filter(|c| *c == "remove a").count() >= 3
    })
    .await;
    let events = h.store.events("a").unwrap();
    let count = |reason: &str| {
        events
            .iter()
            .filter(|e| e.reason == reason)
            .map(|e| e.count)
            .sum::<u32>()
    };
    assert_eq!(count("Removed"), 1, "{events:?}");
    assert_eq!(count("RemovalFailed"), 1, "{events:?}");
    h.stop().await;
}

#[tokio::test]
async fn pulls_run_apart_from_reconciles_and_are_bounded_per_owner() {
    let fake = FakeOrchestrator::with_pull_latency(Duration::from_millis(1500));
    for i in 0..4 {
        fake.without_image(&format!("slow{i}"));
    }
    // One reconcile slot: were pulls run inside passes, bob would wait for all of them.
    let h = start(fake, 1);
    for i in 0..4 {
        let mut a = agent(&format!("alice{i}"));
        a.metadata.owner = Some("alice".into());
        a.spec.image = format!("slow{i}");
        h.store.create(a).unwrap();
        h.handle.enqueue(&format!("alice{i}"));
    }
    h.until("alice's pulls started", |h| {
        h.fake.max_pulls.load(Ordering::SeqCst) >= 1
    })
    .await;
    let mut bob = agent("bob");
    bob.metadata.owner = Some("bob".into());
    h.store.create(bob).unwrap();
    let asked = tokio::time::Instant::now();
    h.handle.enqueue("bob");
    h.until("bob running", |h| h.phase("bob") == Some(Phase::Running))
        .await;
    assert!(
        asked.elapsed() < Duration::from_millis(1000),
        "bob waited {:?} for alice's pulls",
        asked.elapsed()
    );
    let status = h.store.get("alice3").unwrap().unwrap().agent.status;
    assert_eq!(status.phase, Phase::Pending);
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("pull"),
        "{status:?}"
    );
    h.until("alice's agents running", |h| {
        (0..4).all(|i| h.phase(&format!("alice{i}")) == Some(Phase::Running))
    })
    .await;
    assert_eq!(
        h.fake.max_pulls.load(Ordering::SeqCst),
        pulls::PER_OWNER,
        "one owner's pulls are bounded"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_abandons_reconciles_that_outlast_the_grace() {
    let h = start(FakeOrchestrator::with_latency(Duration::from_secs(60)), 2);
    h.add("hung");
    h.until("create started", |h| {
        h.fake.calls().iter().any(|c| c == "create hung")
    })
    .await;
    let started = std::time::Instant::now();
    h.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping took {:?} with an engine call hanging",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_waits_for_reconciles_in_flight() {
    let h = start(
        FakeOrchestrator::with_latency(Duration::from_millis(200)),
        2,
    );
    h.add("slow");
    h.until("create started", |h| {
        h.fake.calls().iter().any(|c| c == "create slow")
    })
    .await;
    let fake = h.fake.clone();
    let store = h.store.clone();
    h.stop().await;
    // The pass that was creating finished its work (create and start) before run returned.
    assert_eq!(fake.calls(), vec!["create slow", "start slow"]);
    assert_eq!(
        store.get("slow").unwrap().unwrap().agent.status.phase,
        Phase::Running
    );
}
