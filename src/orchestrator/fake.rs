//! An in-memory [`Orchestrator`] for unit tests of the controller's timing and ordering.
//! It is never a stand-in for the real-engine tests in tests/.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{
    Container, ContainerSpec, ContainerState, LogOptions, Orchestrator, OrchestratorError,
};

/// Containers in memory, with a configurable delay per call and injectable failures.
#[derive(Default)]
pub struct FakeOrchestrator {
    state: Mutex<FakeState>,
    /// How long every mutating call takes.
    pub latency: Duration,
    /// Calls in flight now, and the most ever seen at once.
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
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
}

impl FakeOrchestrator {
    pub fn with_latency(latency: Duration) -> Self {
        FakeOrchestrator {
            latency,
            ..Default::default()
        }
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

    /// Adds a container as if someone had run it by hand with Hive's labels.
    pub fn add_out_of_band(&self, agent: &str, state: ContainerState) -> String {
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
        let mut s = self.state.lock().unwrap();
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
            },
        );
        Ok(id)
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

    async fn remove(&self, id: &str) -> Result<(), OrchestratorError> {
        let Ok(agent) = self.agent_of(id) else {
            return Ok(());
        };
        self.op("remove", &agent).await;
        self.state.lock().unwrap().containers.remove(id);
        Ok(())
    }

    async fn remove_volumes(&self, _agent: &str) -> Result<(), OrchestratorError> {
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
}
