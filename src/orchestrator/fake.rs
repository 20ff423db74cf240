//! An in-memory [`Orchestrator`] for the controller's timing and ordering tests and the
//! router tests (the `testing` feature makes it available to `tests/`). It is never a
//! stand-in for the real-engine tests. It carries out the same decision as the real
//! backends ([`super::select`] and [`super::decide`]) with verbs on a map.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};
use uuid::Uuid;

use super::{
    Applied, CreateGate, Done, Holder, Lease, LeaseStore, LogOptions, Observed, Orchestrator,
    OrchestratorError, Ownership, RemoveReason, RunState, Step, Workload,
};

/// Workloads in memory, with a configurable delay per call and injectable failures.
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
    /// The CPU time every running workload reports.
    pub cpu_ns: std::sync::atomic::AtomicU64,
    /// Lease renewals never answer (an engine that hangs).
    pub hang_renewals: std::sync::atomic::AtomicBool,
    /// How long a lease renewal takes (ms).
    pub renew_delay_ms: std::sync::atomic::AtomicU64,
    /// Listings of every workload made so far (each resync makes one).
    pub lists: AtomicUsize,
}

#[derive(Default)]
struct FakeState {
    workloads: BTreeMap<String, Observed>,
    next_id: u64,
    /// Calls in order, as "op agent".
    calls: Vec<String>,
    /// Agents with a call in flight now, to catch overlapping reconciles of one agent.
    busy: HashMap<String, usize>,
    /// Set when two calls for one agent overlapped.
    overlapped: bool,
    /// Creates that fail before one succeeds, and whether as the engine being away
    /// (transient) or as an image that cannot be had (persistent).
    failing_creates: u32,
    failing_transient: bool,
    /// Workloads whose removal the engine confirms but which stay.
    survivors: Vec<String>,
    /// Survivors removed once, and those whose survival was reported.
    removed: Vec<String>,
    reported: Vec<String>,
    /// Images not on the engine until pulled.
    missing_images: Vec<String>,
    /// Agents whose applies panic (a bug in a pass, for the runtime's tests).
    panicking: Vec<String>,
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

    /// Makes the next `n` creates fail: `transient`, as if the engine were away; else as
    /// if the image could not be pulled.
    pub fn fail_creates(&self, n: u32, transient: bool) {
        let mut s = self.state.lock().unwrap();
        s.failing_creates = n;
        s.failing_transient = transient;
    }

    /// Makes every apply of `agent` panic (`true`), or stop panicking.
    pub fn panic_on(&self, agent: &str, panics: bool) {
        let mut s = self.state.lock().unwrap();
        s.panicking.retain(|a| a != agent);
        if panics {
            s.panicking.push(agent.to_string());
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn workloads(&self) -> Vec<Observed> {
        self.state
            .lock()
            .unwrap()
            .workloads
            .values()
            .cloned()
            .collect()
    }

    /// Whether two calls for the same agent were ever in flight together.
    pub fn overlapped(&self) -> bool {
        self.state.lock().unwrap().overlapped
    }

    /// Adds a running workload as if someone had made it by hand with Hive's labels and
    /// `store`'s stamp.
    pub fn add_out_of_band(&self, agent: &str, store: &str) -> String {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = format!("c{}", s.next_id);
        let created = s.next_id as i64;
        s.workloads.insert(
            id.clone(),
            Observed {
                id: id.clone(),
                agent: agent.into(),
                uid: "out-of-band".into(),
                spec_hash: "none".into(),
                store: Some(store.into()),
                state: RunState::Running,
                restarts: 0,
                created,
            },
        );
        id
    }

    /// Removes a workload behind Hive's back.
    pub fn remove_out_of_band(&self, id: &str) {
        self.state.lock().unwrap().workloads.remove(id);
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

    fn set_state(&self, id: &str, state: RunState) -> Option<Observed> {
        let mut s = self.state.lock().unwrap();
        let w = s.workloads.get_mut(id)?;
        w.state = state;
        Some(w.clone())
    }

    async fn remove_one(&self, id: &str, agent: &str, reason: RemoveReason) -> Vec<Done> {
        self.op("remove", agent).await;
        let mut s = self.state.lock().unwrap();
        if s.survivors.iter().any(|x| x == id) {
            // As the Docker backend: "removed" once, then "survived" once, then nothing.
            if s.reported.iter().any(|x| x == id) {
                return Vec::new();
            }
            if s.removed.iter().any(|x| x == id) {
                s.reported.push(id.to_string());
                return vec![Done::SurvivedRemoval {
                    id: id.into(),
                    ago: Duration::ZERO,
                }];
            }
            s.removed.push(id.to_string());
            return vec![Done::Removed {
                id: id.into(),
                reason,
            }];
        }
        match s.workloads.remove(id) {
            Some(_) => vec![Done::Removed {
                id: id.into(),
                reason,
            }],
            None => Vec::new(),
        }
    }

    /// Makes a workload (not started) for `want`, or fails as injected.
    async fn create(
        &self,
        want: &Workload,
        uid: &str,
        hash: &str,
    ) -> Result<String, OrchestratorError> {
        self.op("create", &want.agent).await;
        let mut s = self.state.lock().unwrap();
        if s.failing_creates > 0 {
            s.failing_creates -= 1;
            if s.failing_transient {
                return Err(OrchestratorError::Unavailable("injected".into()));
            }
            return Err(OrchestratorError::ImageNotFound {
                image: want.image.clone(),
                detail: "injected".into(),
            });
        }
        if s.missing_images.contains(&want.image) {
            return Err(OrchestratorError::ImageMissing {
                image: want.image.clone(),
            });
        }
        s.next_id += 1;
        let id = format!("c{}", s.next_id);
        let created = s.next_id as i64;
        s.workloads.insert(
            id.clone(),
            Observed {
                id: id.clone(),
                agent: want.agent.clone(),
                uid: uid.to_string(),
                spec_hash: hash.to_string(),
                store: Some(want.store.clone()),
                state: RunState::Created,
                restarts: 0,
                created,
            },
        );
        Ok(id)
    }
}

#[async_trait]
impl Orchestrator for FakeOrchestrator {
    async fn ping(&self) -> Result<(), OrchestratorError> {
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Observed>, OrchestratorError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        Ok(self.workloads())
    }

    async fn observe(&self, agent: &str) -> Result<Vec<Observed>, OrchestratorError> {
        Ok(self
            .workloads()
            .into_iter()
            .filter(|w| w.agent == agent)
            .collect())
    }

    async fn apply(
        &self,
        want: &Workload,
        ownership: &Ownership,
        gate: &dyn CreateGate,
    ) -> Result<Applied, OrchestratorError> {
        if self.state.lock().unwrap().panicking.contains(&want.agent) {
            panic!("injected panic applying {}", want.agent);
        }
        let uid = want.uid.to_string();
        let hash = want.hash();
        // The same selection as every backend: which workload carries the agent, what
        // goes, and whether another store's workload is in the way.
        let observed = self.observe(&want.agent).await?;
        let selection = super::select(want, &observed, ownership);
        let step = super::decide(want, &selection);
        selection.refuse_foreign(want, step == Step::Create)?;
        let mut applied = Applied::default();
        for (id, reason) in &selection.strays {
            applied
                .done
                .extend(self.remove_one(id, &want.agent, *reason).await);
        }
        applied.current = selection.keeper.clone();
        let id = selection
            .keeper
            .as_ref()
            .map(|k| k.id.clone())
            .unwrap_or_default();
        // This backend's verbs for the step.
        match step {
            Step::Keep => {}
            Step::WaitForRemoval => {
                applied.note = Some("waiting for the old workload to go".into());
            }
            Step::Create => {
                if !gate.may_create() {
                    return Err(OrchestratorError::CreateDeferred);
                }
                let id = self.create(want, &uid, &hash).await?;
                gate.created();
                applied.done.push(Done::Created {
                    id: id.clone(),
                    replacing: !applied.done.is_empty(),
                });
                self.op("start", &want.agent).await;
                applied.done.push(Done::Started { id: id.clone() });
                applied.current = self.set_state(&id, RunState::Running);
            }
            Step::Start | Step::Repair { .. } => {
                self.op("start", &want.agent).await;
                applied.done.push(match step {
                    Step::Repair { exit_code } => Done::Repaired {
                        id: id.clone(),
                        exit_code,
                    },
                    _ => Done::Started { id: id.clone() },
                });
                applied.current = self.set_state(&id, RunState::Running);
            }
            Step::Restart => {
                self.op("restart", &want.agent).await;
                applied.done.push(Done::Restarted { id: id.clone() });
                applied.current = self.set_state(&id, RunState::Running);
            }
            Step::Stop => {
                self.op("stop", &want.agent).await;
                applied.done.push(Done::Stopped { id: id.clone() });
                applied.current = self.set_state(&id, RunState::Exited { code: Some(0) });
            }
            Step::Thaw => {
                self.op("unpause", &want.agent).await;
                applied.done.push(Done::Resumed { id: id.clone() });
                applied.current = self.set_state(&id, RunState::Running);
            }
        }
        Ok(applied)
    }

    async fn remove(
        &self,
        ids: &[String],
        reason: RemoveReason,
    ) -> Result<Vec<Done>, OrchestratorError> {
        let mut done = Vec::new();
        for id in ids {
            let agent = self
                .state
                .lock()
                .unwrap()
                .workloads
                .get(id)
                .map(|w| w.agent.clone());
            if let Some(agent) = agent {
                done.extend(self.remove_one(id, &agent, reason).await);
            }
        }
        Ok(done)
    }

    async fn remove_volumes(&self, _agent: &str, _uid: Uuid) -> Result<(), OrchestratorError> {
        Ok(())
    }

    async fn cpu_time(&self, id: &str) -> Result<Option<u64>, OrchestratorError> {
        let running = self
            .state
            .lock()
            .unwrap()
            .workloads
            .values()
            .any(|w| w.id == id && w.state == RunState::Running);
        Ok(running.then(|| self.cpu_ns.load(Ordering::SeqCst)))
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

    fn logs(
        &self,
        _id: &str,
        _o: LogOptions,
    ) -> BoxStream<'static, Result<Vec<u8>, OrchestratorError>> {
        stream::empty().boxed()
    }

    /// Runs nothing: a running workload answers the command's words on stdout, then its
    /// input, and exit code 0 (what the API's own tests need of it).
    async fn exec(
        &self,
        id: &str,
        _uid: Uuid,
        spec: &super::ExecSpec,
    ) -> Result<super::ExecOutput, OrchestratorError> {
        let state = self.state.lock().unwrap();
        match state.workloads.get(id) {
            Some(w) if w.state == RunState::Running => {}
            Some(_) => return Err(OrchestratorError::NotRunning),
            None => return Err(OrchestratorError::NotFound(id.to_string())),
        }
        let mut out = super::ExecOutput {
            exit_code: Some(0),
            ..Default::default()
        };
        out.keep(false, spec.command.join(" ").as_bytes(), spec.max_output);
        out.keep(
            false,
            spec.stdin.as_deref().unwrap_or_default(),
            spec.max_output,
        );
        Ok(out)
    }

    async fn address(&self, _id: &str, _uid: Uuid) -> Result<std::net::IpAddr, OrchestratorError> {
        Err(OrchestratorError::Unsupported(
            "the in-memory backend has no network".into(),
        ))
    }

    async fn read_archive(
        &self,
        _id: &str,
        _uid: Uuid,
        _path: &str,
        _max: usize,
    ) -> Result<Vec<u8>, OrchestratorError> {
        Err(OrchestratorError::Unsupported(
            "the in-memory backend keeps no files".into(),
        ))
    }

    async fn write_archive(
        &self,
        _id: &str,
        _uid: Uuid,
        _dir: &str,
        _tar: Vec<u8>,
    ) -> Result<(), OrchestratorError> {
        Err(OrchestratorError::Unsupported(
            "the in-memory backend keeps no files".into(),
        ))
    }

    fn events(&self) -> BoxStream<'static, Result<String, OrchestratorError>> {
        stream::pending().boxed()
    }
}

#[async_trait]
impl LeaseStore for FakeOrchestrator {
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
        if self.hang_renewals.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let delay = self.renew_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
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
