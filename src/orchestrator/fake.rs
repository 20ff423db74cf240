//! An in-memory [`Orchestrator`] for unit tests of the controller's timing and ordering.
//! It is never a stand-in for the real-engine tests in tests/.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{
    Container, ContainerSpec, ContainerState, Holder, Lease, LogOptions, Orchestrator,
    OrchestratorError, Removal,
};

/// The store id the fake stamps on what it creates.
pub const FAKE_STORE: &str = "fake-store";

/// Containers in memory, with a configurable delay per call and injectable failures.
#[derive(Default)]
pub struct FakeOrchestrator {
    state: Mutex<FakeState>,
    /// How long every mutating call takes.
    pub latency: Duration,
    /// Calls in flight now, and the most ever seen at once.
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// How long a pull takes.
    pub pull_latency: Duration,
    /// Pulls in flight now, and the most ever seen at once.
    pulls: AtomicUsize,
    pub max_pulls: AtomicUsize,
}

#[derive(Default)]
struct FakeState {
    containers: BTreeMap<String, Container>,
    next_id: u64,
    /// Calls in order, as "op agent".
    pub calls: Vec<String>,
    /// Agents with a call in flight now, to catch overlapping reconciles of one agent.
    busy: HashMap<String, usize>,
    /// Set when two calls for one agent overlapped.
    overlapped: bool,
    /// Creates that fail before one succeeds.
    failing_creates: u32,
    /// Containers whose removal the engine confirms but which stay listed.
    survivors: Vec<String>,
    /// Images not on the engine until pulled.
    missing_images: Vec<String>,
    /// The store id stamped on what it creates (FAKE_STORE unless set).
    store: Option<String>,
    /// The instance's lease.
    lease: Option<Lease>,
    /// Lease handles handed out so far.
    lease_serial: u64,
}

impl FakeOrchestrator {
    pub fn with_latency(latency: Duration) -> Self {
        FakeOrchestrator {
            latency,
            ..Default::default()
        }
    }

    /// Stamps what it creates with `store` from now on, as a backend bound to that store.
    pub fn stamp_as(&self, store: &str) {
        self.state.lock().unwrap().store = Some(store.to_string());
    }

    fn store(&self) -> String {
        self.state
            .lock()
            .unwrap()
            .store
            .clone()
            .unwrap_or_else(|| FAKE_STORE.into())
    }

    /// Makes the next `n` creates fail as if the image were missing.
    pub fn fail_creates(&self, n: u32) {
        self.state.lock().unwrap().failing_creates = n;
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn containers(&self) -> Vec<Container> {
        self.state
            .lock()
            .unwrap()
            .containers
            .values()
            .cloned()
            .collect()
    }

    /// Whether two calls for the same agent were ever in flight together.
    pub fn overlapped(&self) -> bool {
        self.state.lock().unwrap().overlapped
    }

    /// Adds a container as if someone had run it by hand with Hive's labels and store.
    pub fn add_out_of_band(&self, agent: &str, state: ContainerState) -> String {
        let store = self.store();
        self.add_stamped(agent, state, Some(&store))
    }

    /// Adds a container as if another Hive store had declared it.
    pub fn add_foreign(&self, agent: &str, state: ContainerState) -> String {
        self.add_stamped(agent, state, Some("another-store"))
    }

    /// A fake whose pulls take `latency`.
    pub fn with_pull_latency(latency: Duration) -> Self {
        FakeOrchestrator {
            pull_latency: latency,
            ..Default::default()
        }
    }

    /// Makes `image` absent until it is pulled.
    pub fn without_image(&self, image: &str) {
        self.state
            .lock()
            .unwrap()
            .missing_images
            .push(image.to_string());
    }

    /// Makes the engine confirm removals of `id` that do not happen.
    pub fn survive_removal(&self, id: &str) {
        self.state.lock().unwrap().survivors.push(id.to_string());
    }

    /// Removes a container behind Hive's back.
    pub fn remove_out_of_band(&self, id: &str) {
        self.state.lock().unwrap().containers.remove(id);
    }

    fn add_stamped(&self, agent: &str, state: ContainerState, store: Option<&str>) -> String {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = format!("c{}", s.next_id);
        let created = s.next_id as i64;
        s.containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                agent: agent.into(),
                uid: "out-of-band".into(),
                spec_hash: "none".into(),
                state,
                restart_count: 0,
                created,
                store: store.map(str::to_string),
            },
        );
        id
    }

    async fn op(&self, op: &str, agent: &str) {
        {
            let mut s = self.state.lock().unwrap();
            s.calls.push(format!("{op} {agent}"));
            let n = s.busy.entry(agent.to_string()).or_default();
            *n += 1;
            if *n > 1 {
                s.overlapped = true;
            }
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        *self.state.lock().unwrap().busy.get_mut(agent).unwrap() -= 1;
    }

    fn agent_of(&self, id: &str) -> Result<String, OrchestratorError> {
        let s = self.state.lock().unwrap();
        s.containers
            .get(id)
            .map(|c| c.agent.clone())
            .ok_or_else(|| OrchestratorError::NotFound(id.into()))
    }

    fn set_state(&self, id: &str, state: ContainerState) {
        if let Some(c) = self.state.lock().unwrap().containers.get_mut(id) {
            c.state = state;
        }
    }
}

#[async_trait]
impl Orchestrator for FakeOrchestrator {
    async fn ping(&self) -> Result<(), OrchestratorError> {
        Ok(())
    }

    async fn list_all(&self) -> Result<Vec<Container>, OrchestratorError> {
        Ok(self.containers())
    }

    async fn list_agent(&self, agent: &str) -> Result<Vec<Container>, OrchestratorError> {
        Ok(self
            .containers()
            .into_iter()
            .filter(|c| c.agent == agent)
            .collect())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, OrchestratorError> {
        self.op("create", &spec.agent).await;
        let store = self.store();
        let mut s = self.state.lock().unwrap();
        if s.missing_images.contains(&spec.image) {
            return Err(OrchestratorError::ImageMissing {
                image: spec.image.clone(),
            });
        }
        if s.failing_creates > 0 {
            s.failing_creates -= 1;
            return Err(OrchestratorError::ImageNotFound {
                image: spec.image.clone(),
                detail: "injected".into(),
            });
        }
        s.next_id += 1;
        let id = format!("c{}", s.next_id);
        let created = s.next_id as i64;
        s.containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                agent: spec.agent.clone(),
                uid: spec.uid.to_string(),
                spec_hash: spec.hash(),
                state: ContainerState::Created,
                restart_count: 0,
                created,
                store: Some(store),
            },
        );
        Ok(id)
    }

    async fn pull(&self, image: &str) -> Result<(), OrchestratorError> {
        let now = self.pulls.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_pulls.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.pull_latency).await;
        self.pulls.fetch_sub(1, Ordering::SeqCst);
        self.state
            .lock()
            .unwrap()
            .missing_images
            .retain(|i| i != image);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<(), OrchestratorError> {
        let agent = self.agent_of(id)?;
        self.op("start", &agent).await;
        self.set_state(id, ContainerState::Running);
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<(), OrchestratorError> {
        let agent = self.agent_of(id)?;
        self.op("stop", &agent).await;
        self.set_state(id, ContainerState::Exited(Some(0)));
        Ok(())
    }

    async fn restart(&self, id: &str) -> Result<(), OrchestratorError> {
        let agent = self.agent_of(id)?;
        self.op("restart", &agent).await;
        self.set_state(id, ContainerState::Running);
        Ok(())
    }

    async fn unpause(&self, id: &str) -> Result<(), OrchestratorError> {
        let agent = self.agent_of(id)?;
        self.op("unpause", &agent).await;
        self.set_state(id, ContainerState::Running);
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<Removal, OrchestratorError> {
        let Ok(agent) = self.agent_of(id) else {
            return Ok(Removal::AlreadyGone);
        };
        self.op("remove", &agent).await;
        let mut s = self.state.lock().unwrap();
        if !s.survivors.iter().any(|x| x == id) {
            s.containers.remove(id);
        }
        Ok(Removal::Removed)
    }

    async fn remove_volumes(
        &self,
        _agent: &str,
        _uid: uuid::Uuid,
    ) -> Result<(), OrchestratorError> {
        Ok(())
    }

    fn logs(
        &self,
        _id: &str,
        _o: LogOptions,
    ) -> BoxStream<'static, Result<Vec<u8>, OrchestratorError>> {
        stream::empty().boxed()
    }

    fn events(&self) -> BoxStream<'static, Result<String, OrchestratorError>> {
        stream::pending().boxed()
    }

    async fn read_lease(&self) -> Result<Option<Lease>, OrchestratorError> {
        Ok(self.state.lock().unwrap().lease.clone())
    }

    async fn acquire_lease(
        &self,
        me: &Holder,
        duration: Duration,
        current: Option<&Lease>,
    ) -> Result<Lease, OrchestratorError> {
        let mut s = self.state.lock().unwrap();
        if s.lease.as_ref().map(|l| &l.handle) != current.map(|l| &l.handle) {
            return Err(OrchestratorError::LeaseConflict("taken meanwhile".into()));
        }
        s.lease_serial += 1;
        let now = now_ms();
        let lease = Lease {
            holder: me.clone(),
            acquired_ms: now,
            renewed_ms: now,
            duration,
            transitions: current.map_or(0, |l| l.transitions + 1),
            handle: format!("lease{}", s.lease_serial),
        };
        s.lease = Some(lease.clone());
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, OrchestratorError> {
        let mut s = self.state.lock().unwrap();
        match &mut s.lease {
            Some(l) if l.handle == lease.handle => {
                l.renewed_ms = now_ms();
                Ok(l.clone())
            }
            _ => Err(OrchestratorError::LeaseConflict("lost".into())),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), OrchestratorError> {
        let mut s = self.state.lock().unwrap();
        if s.lease.as_ref().is_some_and(|l| l.handle == lease.handle) {
            s.lease = None;
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
