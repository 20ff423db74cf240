//! The Docker implementation of [`Orchestrator`] and [`LeaseStore`], the only module
//! that knows bollard, one file per concern:
//! - `client`: the connection, each call's deadline, the engine's errors in Hive's words
//!   ([`DockerOrchestrator::request`], and `request_or_absent` where "not there" is an
//!   answer);
//! - `network`: the agents' network and the names other containers answer to on it;
//! - `volumes`: named volumes, made and mounted for their agent only;
//! - `containers`: names, labels, what is made for a workload, the lifecycle calls;
//! - `exec`: a command run once in an agent's container, and its files;
//! - `lease`: the instance's lease as containers (below);
//! - `plan`: the pure decision of what to do with an agent's containers;
//! - here: the [`Orchestrator`] verbs, put together from those.
//!
//! Containers are named `hive_<instance>_<agent>` and volumes
//! `hive_<instance>_<agent>_<volume>`: instance, agent and volume names cannot hold `_`,
//! so no two of them can ever share a name. Containers carry `hive.managed`,
//! `hive.instance`, `hive.store`, `hive.agent`, `hive.uid`, `hive.owner` and
//! `hive.spec-hash` labels; every listing filters on this instance's label, so this type
//! never sees, let alone touches, a container that is not its instance's.
//!
//! Nothing is mounted or adopted by name alone: a volume that exists already is mounted
//! only if its labels name this instance, the agent's owner and the agent's uid (or, with
//! `adoptRetained`, a volume the owner's earlier agent of that name retained). And an
//! agent is not created under a name that something else on the agents' network answers
//! to, so it cannot impersonate a service there.
//!
//! Every call to the engine has a deadline (the `--engine-timeout`, plus the stop grace
//! where the engine waits for a process to stop), so a hung engine turns into errors the
//! controller backs off from, never into a Hive that cannot stop.
//!
//! The client connects lazily and negotiates the API version on first contact, so Hive
//! starts while the engine is down and talks to engines older than bollard's default.
//!
//! # The lease
//! The instance's lease (the election is the `lease` module's) is kept on the engine as two containers
//! that are created and never started, from a one-file image Hive imports itself
//! (`hive-lease:1`; nothing is pulled):
//! - `hive-lease_<instance>`: the lease. Container names are unique on an engine and a
//!   create of a taken name fails, so creating it is an atomic compare-and-set; a
//!   takeover removes the old one *by id* first, so two Hives replacing the same expired
//!   lease cannot both win. Its labels name the holder (host, pid, data dir, store), the
//!   acquire time, the duration and the number of transitions.
//! - `hive-lease_<instance>_<token>_<unix-ms>`: the renewal stamp. Labels cannot change,
//!   but names can: each renewal renames the stamp to the current time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum,
    EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    ListVolumesOptions, LogsOptions, RemoveContainerOptions, RemoveVolumeOptions,
    RenameContainerOptions, RestartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};

use super::{
    Applied, CreateGate, Done, Holder, Lease, LeaseStore, LogOptions, Observed, Orchestrator,
    OrchestratorError, Ownership, RemoveReason, RunState, Workload,
};
use plan::{Container, ContainerAction, ContainerState};

mod client;
mod containers;
mod exec;
mod lease;
mod network;
pub mod plan;
mod volumes;

use crate::agent::RestartPolicy;
pub use client::sanitize;
use client::*;
use containers::*;
pub use lease::LABEL_LEASE;
use lease::*;
use network::*;

pub use super::{
    LABEL_AGENT, LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER, LABEL_RETAIN, LABEL_SPEC_HASH,
    LABEL_STORE, LABEL_UID, LABEL_VOLUME,
};

/// Seconds an agent gets between the stop signal and the kill.
const STOP_GRACE_SECS: i32 = 10;
/// Processes an agent may have when neither spec nor policy says: enough for an agent,
/// too few for a fork bomb.
const DEFAULT_PIDS_LIMIT: i64 = 512;
/// The longest a ping may take before the engine counts as not answering.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A pull may take this much longer than other calls: images are large.
const PULL_EXTRA: Duration = Duration::from_secs(600);
/// How often the API version negotiation is tried again while the engine does not answer.
const NEGOTIATE_EVERY: Duration = Duration::from_secs(5);

/// How to reach the engine and what to stamp on containers.
#[derive(Clone, Debug)]
pub struct DockerSettings {
    /// `unix:///path`, a bare socket path, `tcp://` or `http://`; None means DOCKER_HOST
    /// or the local socket.
    pub host: Option<String>,
    /// This Hive's instance name, stamped on and filtered by.
    pub instance: String,
    /// The network every agent joins, with its name as an alias.
    pub network: String,
    /// The deadline of every engine call (a stop's grace is added where it applies).
    pub timeout: Duration,
}

/// The Docker engine behind one Hive instance.
pub struct DockerOrchestrator {
    /// The client; replaced once by the version-negotiated one.
    client: Arc<std::sync::Mutex<Client>>,
    settings: DockerSettings,
    /// Set once the network is known to exist.
    network_ready: tokio::sync::OnceCell<()>,
    /// Set once the lease image is known to exist.
    lease_image_ready: tokio::sync::OnceCell<()>,
    /// Containers this backend had the engine remove lately.
    removed: std::sync::Mutex<plan::Ledger>,
    /// The last scan of the names on the network, and when it started.
    network_scan: tokio::sync::Mutex<Option<(Instant, NetworkScan)>>,
}

impl DockerOrchestrator {
    /// Prepares a client. Does no I/O: the connection is made, and the API version
    /// negotiated, when the engine first answers.
    pub fn new(settings: DockerSettings) -> Self {
        DockerOrchestrator {
            client: Arc::new(std::sync::Mutex::new(Client {
                host: settings.host.clone(),
                timeout: settings.timeout + Duration::from_secs(STOP_GRACE_SECS as u64),
                docker: None,
                negotiated: false,
                last_attempt: None,
            })),
            settings,
            network_ready: tokio::sync::OnceCell::new(),
            lease_image_ready: tokio::sync::OnceCell::new(),
            removed: Default::default(),
            network_scan: Default::default(),
        }
    }
}

#[async_trait]
impl Orchestrator for DockerOrchestrator {
    async fn ping(&self) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(r) => r.map(|_| ()).map_err(map_err),
            Err(_) => Err(OrchestratorError::Unavailable(format!(
                "the engine did not answer a ping within {}s",
                PING_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn list(&self) -> Result<Vec<Observed>, OrchestratorError> {
        Ok(self
            .list_containers(None)
            .await?
            .iter()
            .map(Container::observed)
            .collect())
    }

    async fn observe(&self, agent: &str) -> Result<Vec<Observed>, OrchestratorError> {
        Ok(self
            .inspect_agent(agent)
            .await?
            .iter()
            .map(Container::observed)
            .collect())
    }

    async fn apply(
        &self,
        want: &Workload,
        ownership: &Ownership,
        gate: &dyn CreateGate,
    ) -> Result<Applied, OrchestratorError> {
        let uid = want.uid.to_string();
        let containers = self.inspect_agent(&want.agent).await?;
        let observed: Vec<Observed> = containers.iter().map(Container::observed).collect();
        let selection = super::select(want, &observed, ownership);
        let plan = plan::plan_selected(want, &selection, &containers);
        let creating = plan.action == Some(ContainerAction::Create);
        selection.refuse_foreign(want, creating)?;
        if creating && !gate.may_create() {
            return Err(OrchestratorError::CreateDeferred);
        }
        let mut done = Vec::new();
        for (id, reason) in &plan.remove {
            done.extend(self.remove_one(id, *reason).await?);
        }
        let mut applied = Applied {
            current: plan.keeper.as_ref().map(Container::observed),
            note: None,
            done,
        };
        if plan.waiting_for_removal {
            applied.note = Some("waiting for the engine to remove the old container".into());
        }
        let Some(action) = plan.action else {
            if let Some(k) = plan
                .keeper
                .as_ref()
                .filter(|k| want.intent.runs() && k.state == ContainerState::Restarting)
            {
                applied.note = Some(format!(
                    "its process exited; the engine restarts it (restart {})",
                    k.restart_count + 1
                ));
            }
            return Ok(applied);
        };
        let keeper = plan.keeper.clone();
        let now = |state: RunState| {
            keeper.as_ref().map(|k| Observed {
                state,
                ..k.observed()
            })
        };
        match action {
            ContainerAction::Create => {
                let id = self.create_container(want).await?;
                gate.created();
                applied.done.push(Done::Created {
                    id: id.clone(),
                    replacing: plan
                        .remove
                        .iter()
                        .any(|(_, r)| *r == RemoveReason::SpecChanged),
                });
                self.start_container(&id).await?;
                applied.done.push(Done::Started { id: id.clone() });
                applied.current = Some(Observed {
                    id,
                    agent: want.agent.clone(),
                    uid: uid.clone(),
                    spec_hash: want.hash(),
                    store: Some(want.store.clone()),
                    state: RunState::Running,
                    restarts: 0,
                    created: unix_ms() / 1000,
                });
            }
            ContainerAction::Start { id, repair } => {
                self.start_container(&id).await?;
                let exit_code = match plan.keeper.as_ref().map(|k| k.state) {
                    Some(ContainerState::Exited(code)) => code,
                    _ => None,
                };
                applied.done.push(if repair {
                    Done::Repaired { id, exit_code }
                } else {
                    Done::Started { id }
                });
                applied.current = now(RunState::Running);
            }
            ContainerAction::Stop { id } => {
                self.stop_container(&id).await?;
                applied.done.push(Done::Stopped { id });
                applied.current = now(RunState::Exited { code: None });
            }
            ContainerAction::Restart { id } => {
                self.restart_container(&id).await?;
                applied.done.push(Done::Restarted { id });
                applied.current = now(RunState::Running);
            }
            ContainerAction::Unpause { id } => {
                self.unpause_container(&id).await?;
                applied.done.push(Done::Resumed { id });
                applied.current = now(RunState::Running);
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
            done.extend(self.remove_one(id, reason).await?);
        }
        Ok(done)
    }

    async fn pull(&self, image: &str) -> Result<(), OrchestratorError> {
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let docker = self.docker().await?;
        let pulled = docker
            .create_image(Some(options), None, None)
            .try_collect::<Vec<_>>();
        self.call("pull image", PULL_EXTRA, pulled)
            .await?
            .map(|_| ())
            .map_err(|e| OrchestratorError::ImageNotFound {
                image: image.to_string(),
                detail: message_of(&e),
            })
    }

    async fn cpu_time(&self, id: &str) -> Result<Option<u64>, OrchestratorError> {
        let docker = self.docker().await?;
        let options = bollard::query_parameters::StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let stats = docker.stats(id, Some(options)).try_collect::<Vec<_>>();
        let stats = self
            .request_or_absent("read a container's stats", Duration::ZERO, stats)
            .await?;
        Ok(stats.and_then(|stats| {
            stats
                .last()
                .and_then(|s| s.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage)
                .filter(|ns| *ns > 0)
        }))
    }

    async fn remove_volumes(&self, agent: &str, uid: uuid::Uuid) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        let mut filters = self.label_filters(Some(agent));
        let labels = filters.get_mut("label").expect("label filters");
        labels.push(format!("{LABEL_RETAIN}=false"));
        labels.push(format!("{LABEL_UID}={uid}"));
        let options = ListVolumesOptions {
            filters: Some(filters),
        };
        let listed = self
            .request(
                "list volumes",
                Duration::ZERO,
                docker.list_volumes(Some(options)),
            )
            .await?;
        for v in listed.volumes.unwrap_or_default() {
            match self
                .call(
                    "remove volume",
                    Duration::ZERO,
                    docker.remove_volume(&v.name, None::<RemoveVolumeOptions>),
                )
                .await?
            {
                Err(e) if status_of(&e) != Some(404) => return Err(map_err(e)),
                Err(_) => tracing::info!(volume = %v.name, "volume was already gone"),
                Ok(()) => tracing::info!(volume = %v.name, "removed volume"),
            }
        }
        Ok(())
    }

    fn logs(
        &self,
        id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<Vec<u8>, OrchestratorError>> {
        let options = LogsOptions {
            follow: options.follow,
            stdout: true,
            stderr: true,
            tail: options
                .tail
                .map_or_else(|| "all".to_string(), |n| n.to_string()),
            since: options.since.unwrap_or(0).clamp(0, i32::MAX.into()) as i32,
            ..Default::default()
        };
        let id = id.to_string();
        stream::once(self.docker())
            .map_ok(move |d| {
                d.logs(&id, Some(options.clone()))
                    .map_ok(|out| out.into_bytes().to_vec())
                    .map_err(map_err)
            })
            .try_flatten()
            .boxed()
    }

    async fn exec(
        &self,
        id: &str,
        uid: uuid::Uuid,
        spec: &super::ExecSpec,
    ) -> Result<super::ExecOutput, OrchestratorError> {
        self.exec_in(id, uid, spec).await
    }

    async fn address(
        &self,
        id: &str,
        uid: uuid::Uuid,
    ) -> Result<std::net::IpAddr, OrchestratorError> {
        self.address_of(id, uid).await
    }

    async fn read_archive(
        &self,
        id: &str,
        uid: uuid::Uuid,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, OrchestratorError> {
        self.read_archive_of(id, uid, path, max).await
    }

    async fn write_archive(
        &self,
        id: &str,
        uid: uuid::Uuid,
        dir: &str,
        tar: Vec<u8>,
    ) -> Result<(), OrchestratorError> {
        self.write_archive_to(id, uid, dir, tar).await
    }

    fn events(&self) -> BoxStream<'static, Result<String, OrchestratorError>> {
        let mut filters = self.label_filters(None);
        filters.insert("type".to_string(), vec!["container".to_string()]);
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        stream::once(self.docker())
            .map_ok(move |d| d.events(Some(options.clone())).map_err(map_err))
            .try_flatten()
            .try_filter_map(|event| async move {
                Ok(event
                    .actor
                    .and_then(|a| a.attributes)
                    .and_then(|mut attrs| attrs.remove(LABEL_AGENT)))
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker(instance: &str) -> DockerOrchestrator {
        DockerOrchestrator::new(DockerSettings {
            host: Some("unix:///nonexistent.sock".into()),
            instance: instance.into(),
            network: "hive-net".into(),
            timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn exit_codes_are_read_from_the_status_text() {
        assert_eq!(exit_code_of_status("Exited (137) 5 seconds ago"), Some(137));
        assert_eq!(
            exit_code_of_status("Exited (0) About a minute ago"),
            Some(0)
        );
        assert_eq!(exit_code_of_status("Up 3 seconds"), None);
    }

    #[test]
    fn names_cannot_collide_across_agents_volumes_or_instances() {
        assert_eq!(docker("default").container_name("a"), "hive_default_a");
        assert_eq!(docker("staging").container_name("a"), "hive_staging_a");
        // The ambiguities of joining with '-': agent vc's volume x-data vs agent vc-x's
        // volume data; instance a's agent b-c vs instance a-b's agent c.
        let d = docker("default");
        assert_ne!(d.volume_name("vc", "x-data"), d.volume_name("vc-x", "data"));
        assert_ne!(
            docker("a").container_name("b-c"),
            docker("a-b").container_name("c")
        );
    }

    #[test]
    fn engine_messages_are_cut_to_one_printable_line() {
        let body = format!("denied: {}\n<html>secret page</html>", "x".repeat(500));
        let shown = sanitize(&body);
        assert!(shown.len() < 200 && !shown.contains("secret"), "{shown}");
        assert_eq!(sanitize("bad \u{1b}[31mred"), "bad ?[31mred");
    }

    #[test]
    fn the_lease_image_layer_is_a_valid_tar() {
        let tar = one_empty_file_tar();
        assert_eq!(tar.len(), 512 * 3);
        let sum: u32 = tar[..512]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(*b)
                }
            })
            .sum();
        let stored = std::str::from_utf8(&tar[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
    }

    #[test]
    fn a_lease_reads_its_latest_stamp_of_its_own_token() {
        let labels = HashMap::from([
            (format!("{LEASE}token"), "t1".to_string()),
            (format!("{LEASE}host"), "h".to_string()),
            (format!("{LEASE}pid"), "42".to_string()),
            (format!("{LEASE}acquired"), "1000".to_string()),
            (format!("{LEASE}duration"), "15000".to_string()),
            (format!("{LEASE}transitions"), "2".to_string()),
        ]);
        let objects = LeaseObjects {
            lease: Some(("id".into(), labels)),
            stamps: vec![
                ("a".into(), "t1".into(), 5000),
                ("b".into(), "t0".into(), 9000),
            ],
        };
        let l = objects.lease().unwrap();
        assert_eq!(l.renewed_ms, 5000, "another token's stamp does not count");
        assert_eq!((l.holder.pid, l.transitions), (42, 2));
        assert_eq!(l.duration, Duration::from_secs(15));
    }
}
