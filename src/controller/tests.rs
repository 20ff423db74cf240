//! Timing and ordering of the controller runtime, against the in-memory orchestrator.
//! What reconciles do to a real engine is tested in tests/ against Docker itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::agent::{Agent, Phase};
use crate::orchestrator::fake::FakeOrchestrator;
use crate::orchestrator::ContainerState;

fn agent(name: &str) -> Agent {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "hive/v1", "kind": "Agent",
        "metadata": {"name": name},
        "spec": {"image": "img"}
    }))
    .unwrap()
}

struct Harness {
    store: Arc<Store>,
    fake: Arc<FakeOrchestrator>,
    handle: Handle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start(fake: FakeOrchestrator, max_concurrent: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let fake = Arc::new(fake);
    let controller = Controller::new(
        store.clone(),
        fake.clone(),
        Arc::new(crate::metrics::Metrics::default()),
        Settings {
            resync_interval: Duration::from_secs(3600),
            max_concurrent,
        },
    );
    let handle = controller.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(controller.run(stop.clone()));
    Harness {
        store,
        fake,
        handle,
        stop,
        task,
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
    assert_eq!(h.fake.containers().len(), 24);
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
    assert_eq!(h.fake.containers().len(), 1, "exactly one container");
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
async fn a_failure_is_retried_with_backoff_until_it_succeeds() {
    let fake = FakeOrchestrator::default();
    fake.fail_creates(2);
    let h = start(fake, 2);
    h.add("flaky");
    h.until("failed", |h| h.phase("flaky") == Some(Phase::Failed))
        .await;
    let message = h
        .store
        .get("flaky")
        .unwrap()
        .unwrap()
        .agent
        .status
        .message
        .unwrap();
    assert!(message.contains("could not be pulled"), "{message}");
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
    assert!(h.fake.containers().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_resync_removes_orphans_and_replaces_foreign_containers() {
    let h = start(FakeOrchestrator::default(), 2);
    h.add("mine");
    h.until("running", |h| h.phase("mine") == Some(Phase::Running))
        .await;
    let orphan = h.fake.add_out_of_band("nobody", ContainerState::Running);
    let impostor = h.fake.add_out_of_band("mine", ContainerState::Running);
    h.handle.resync();
    h.until("cleaned", |h| {
        let ids: Vec<_> = h.fake.containers().into_iter().map(|c| c.id).collect();
        !ids.contains(&orphan) && !ids.contains(&impostor)
    })
    .await;
    assert_eq!(h.fake.containers().len(), 1);
    h.stop().await;
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
