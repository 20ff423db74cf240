//! The Docker implementation of [`Orchestrator`], and the only file that knows bollard.
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

pub mod plan;
use crate::agent::RestartPolicy;

pub use super::{
    LABEL_AGENT, LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER, LABEL_RETAIN, LABEL_SPEC_HASH,
    LABEL_STORE, LABEL_UID, LABEL_VOLUME,
};
/// Label naming the instance a lease (or its renewal stamp) belongs to.
pub const LABEL_LEASE: &str = "hive.lease";
/// Prefix of the lease's other labels.
const LEASE: &str = "hive.lease.";
/// Label of a renewal stamp: the token of the lease it renews.
const LABEL_STAMP: &str = "hive.lease.stamp";
/// The image lease containers are made from (imported by Hive, never pulled).
const LEASE_IMAGE: &str = "hive-lease:1";

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

/// Names other containers answer to on the agents' network, each with who holds it.
type NetworkNames = Vec<(String, String)>;

/// What one scan of the network found, or why it could not.
type NetworkScan = Result<Arc<NetworkNames>, OrchestratorError>;

struct Client {
    /// Where the engine is (None: DOCKER_HOST or the local socket).
    host: Option<String>,
    /// bollard's own per-request timeout, a backstop behind [`DockerOrchestrator::call`].
    timeout: Duration,
    /// Made on first use; bollard refuses to make one while the socket is missing.
    docker: Option<Docker>,
    /// Whether `docker` speaks the engine's API version.
    negotiated: bool,
    /// When a negotiation was last tried, so a silent engine is not asked on every call.
    last_attempt: Option<Instant>,
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

    /// The client, negotiating the API version with the engine the first time it answers.
    fn docker(
        &self,
    ) -> impl std::future::Future<Output = Result<Docker, OrchestratorError>> + Send + 'static {
        negotiated(self.client.clone())
    }

    /// Runs one engine call under the deadline (plus `extra` where the engine itself
    /// waits, as for a stop), and hands back the engine's answer.
    async fn call<T>(
        &self,
        call: &'static str,
        extra: Duration,
        f: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<Result<T, BollardError>, OrchestratorError> {
        let limit = self.settings.timeout + extra;
        tokio::time::timeout(limit, f)
            .await
            .map_err(|_| OrchestratorError::Timeout {
                call,
                secs: limit.as_secs(),
            })
    }

    /// The engine's name of an agent's volume in this instance.
    pub fn volume_name(&self, agent: &str, volume: &str) -> String {
        format!("{}_{volume}", self.container_name(agent))
    }

    /// Creates the agents' network, labelled, unless it exists.
    async fn ensure_network(&self) -> Result<(), OrchestratorError> {
        self.network_ready
            .get_or_try_init(|| async {
                let docker = self.docker().await?;
                let network = &self.settings.network;
                match self
                    .call(
                        "inspect network",
                        Duration::ZERO,
                        docker.inspect_network(network, None),
                    )
                    .await?
                {
                    Ok(_) => return Ok(()),
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => return Err(map_err(e)),
                }
                let request = NetworkCreateRequest {
                    name: network.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(
                        LABEL_MANAGED.to_string(),
                        "true".to_string(),
                    )])),
                    ..Default::default()
                };
                match self
                    .call(
                        "create network",
                        Duration::ZERO,
                        docker.create_network(request),
                    )
                    .await?
                {
                    Ok(_) => {
                        tracing::info!(network = %network, "created the agents' network");
                        Ok(())
                    }
                    // Someone made it meanwhile.
                    Err(e) if status_of(&e) == Some(409) => Ok(()),
                    Err(e) => Err(map_err(e)),
                }
            })
            .await
            .map(|_| ())
    }

    /// Creates the agent's named volumes, labelled with its instance, owner and uid, or
    /// checks that those that exist are this agent's to mount.
    async fn ensure_volumes(&self, spec: &Workload) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        for (i, v) in spec.volumes.iter().enumerate() {
            let name = self.volume_name(&spec.agent, &v.name);
            match self
                .call(
                    "inspect volume",
                    Duration::ZERO,
                    docker.inspect_volume(&name),
                )
                .await?
            {
                Ok(existing) => {
                    self.may_mount(spec, i, &name, &existing.labels)?;
                    continue;
                }
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(map_err(e)),
            }
            let request = VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(HashMap::from([
                    (LABEL_MANAGED.to_string(), "true".to_string()),
                    (LABEL_INSTANCE.to_string(), self.settings.instance.clone()),
                    (LABEL_STORE.to_string(), spec.store.clone()),
                    (LABEL_AGENT.to_string(), spec.agent.clone()),
                    (LABEL_UID.to_string(), spec.uid.to_string()),
                    (LABEL_OWNER.to_string(), spec.owner.clone()),
                    (LABEL_VOLUME.to_string(), v.name.clone()),
                    (LABEL_RETAIN.to_string(), v.retain.to_string()),
                ])),
                ..Default::default()
            };
            // A create of an existing name hands back the existing volume: check what came
            // back, in case someone made it between the inspect and the create.
            let made = self
                .call(
                    "create volume",
                    Duration::ZERO,
                    docker.create_volume(request),
                )
                .await?
                .map_err(map_err)?;
            self.may_mount(spec, i, &name, &made.labels)?;
        }
        Ok(())
    }

    /// Whether the volume `name` (spec.volumes[i]), with these labels, may be mounted for
    /// the agent of `spec`.
    fn may_mount(
        &self,
        spec: &Workload,
        i: usize,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), OrchestratorError> {
        super::may_mount(&self.settings.instance, spec, i, name, |k| {
            labels.get(k).map(String::as_str)
        })
    }

    /// Refuses a workload whose name another container on the network answers to (its
    /// name, a network alias, a compose service, another instance's agent): Docker's DNS
    /// would resolve the name to either. This Hive's own containers are skipped.
    async fn check_network_name(&self, spec: &Workload) -> Result<(), OrchestratorError> {
        let names = self.network_names(Instant::now()).await?;
        // The engine's DNS answers names in any case.
        match names
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&spec.agent))
        {
            Some((_, holder)) => Err(OrchestratorError::NameInUse {
                name: spec.agent.clone(),
                network: self.settings.network.clone(),
                holder: holder.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The names other containers answer to on the network, from a scan that started no
    /// earlier than `asked`: concurrent creates share one scan (a fleet's converge lists
    /// the network a few times, not once per agent), and none reads a scan older than
    /// its own question. A scan that failed fails those who waited for it too, so a
    /// stalled engine costs each create one deadline, not one per create queued before it.
    async fn network_names(&self, asked: Instant) -> Result<Arc<NetworkNames>, OrchestratorError> {
        let mut last = self.network_scan.lock().await;
        if let Some((started, scanned)) = last.as_ref() {
            if *started >= asked {
                return scanned.clone();
            }
        }
        let started = Instant::now();
        let scanned = self.scan_network().await.map(Arc::new);
        *last = Some((started, scanned.clone()));
        scanned
    }

    async fn scan_network(&self) -> Result<NetworkNames, OrchestratorError> {
        let network = &self.settings.network;
        let filters = HashMap::from([("network".to_string(), vec![network.clone()])]);
        let docker = self.docker().await?;
        let mut names = NetworkNames::new();
        for c in self.list_summaries(filters).await? {
            let labels = c.labels.clone().unwrap_or_default();
            let label = |k: &str| labels.get(k).map(String::as_str);
            let name = c
                .names
                .iter()
                .flatten()
                .next()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            // The engine's DNS answers to every container's id and short id too, this
            // Hive's own containers' included.
            if let Some(id) = c.id.as_deref() {
                names.push((id.to_string(), format!("the id of container {name}")));
                names.push((short(id).to_string(), format!("the id of container {name}")));
            }
            if label(LABEL_INSTANCE) == Some(self.settings.instance.as_str())
                && label(LABEL_MANAGED).is_some()
            {
                continue;
            }
            names.push((name.clone(), format!("container {name}")));
            if let Some(agent) = label(LABEL_AGENT) {
                names.push((
                    agent.to_string(),
                    format!("an agent of another Hive instance in container {name}"),
                ));
            }
            if let Some(service) = label("com.docker.compose.service") {
                names.push((
                    service.to_string(),
                    format!("the compose service in container {name}"),
                ));
            }
            if label(LABEL_MANAGED).is_some() {
                continue;
            }
            let Some(id) = c.id.as_deref() else { continue };
            let detail = match self
                .call(
                    "inspect container",
                    Duration::ZERO,
                    docker.inspect_container(id, None),
                )
                .await?
            {
                Ok(d) => d,
                Err(e) if status_of(&e) == Some(404) => continue,
                Err(e) => return Err(map_err(e)),
            };
            let aliases = detail
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(network))
                .and_then(|e| e.aliases)
                .unwrap_or_default();
            for alias in aliases {
                names.push((alias, format!("an alias of container {name}")));
            }
        }
        Ok(names)
    }

    /// The container name of an agent in this instance.
    pub fn container_name(&self, agent: &str) -> String {
        format!("hive_{}_{agent}", self.settings.instance)
    }

    fn label_filters(&self, agent: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_INSTANCE}={}", self.settings.instance),
        ];
        if let Some(a) = agent {
            labels.push(format!("{LABEL_AGENT}={a}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    /// Every container (any state) carrying these label filters.
    async fn list_summaries(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, OrchestratorError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let docker = self.docker().await?;
        self.call(
            "list containers",
            Duration::ZERO,
            docker.list_containers(Some(options)),
        )
        .await?
        .map_err(map_err)
    }

    async fn list_containers(
        &self,
        agent: Option<&str>,
    ) -> Result<Vec<Container>, OrchestratorError> {
        let summaries = self.list_summaries(self.label_filters(agent)).await?;
        Ok(summaries
            .into_iter()
            .filter_map(|s| {
                let labels = s.labels.unwrap_or_default();
                let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
                let state = match s.state? {
                    ContainerSummaryStateEnum::CREATED => ContainerState::Created,
                    ContainerSummaryStateEnum::RUNNING => ContainerState::Running,
                    ContainerSummaryStateEnum::PAUSED => ContainerState::Paused,
                    ContainerSummaryStateEnum::RESTARTING => ContainerState::Restarting,
                    ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::STOPPING => {
                        ContainerState::Exited(s.status.as_deref().and_then(exit_code_of_status))
                    }
                    ContainerSummaryStateEnum::REMOVING
                    | ContainerSummaryStateEnum::DEAD
                    | ContainerSummaryStateEnum::EMPTY => ContainerState::Removing,
                };
                Some(Container {
                    id: s.id?,
                    agent: label(LABEL_AGENT),
                    uid: label(LABEL_UID),
                    spec_hash: label(LABEL_SPEC_HASH),
                    state,
                    restart_count: 0,
                    created: s.created.unwrap_or_default(),
                    store: labels.get(LABEL_STORE).cloned(),
                })
            })
            .collect())
    }

    /// The container for `spec`; `inherited` are labels of its image it must not carry
    /// (set empty: the engine copies an image's labels, and cannot drop one).
    fn create_body(&self, spec: &Workload, inherited: &[String]) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = inherited
            .iter()
            .map(|k| (k.clone(), String::new()))
            .collect();
        labels.extend([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), self.settings.instance.clone()),
            (LABEL_STORE.to_string(), spec.store.clone()),
            (LABEL_AGENT.to_string(), spec.agent.clone()),
            (LABEL_UID.to_string(), spec.uid.to_string()),
            (LABEL_OWNER.to_string(), spec.owner.clone()),
            (LABEL_SPEC_HASH.to_string(), spec.hash()),
        ]);
        let restart = match spec.restart_policy {
            // unless-stopped, not always: a container Hive stopped stays stopped across an engine restart.
            RestartPolicy::Always => RestartPolicyNameEnum::UNLESS_STOPPED,
            RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
            RestartPolicy::Never => RestartPolicyNameEnum::NO,
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            // As in Kubernetes: `command` replaces the entrypoint (and with it the image's
            // default arguments), `args` replaces the default arguments.
            entrypoint: spec.command.clone(),
            cmd: spec.args.clone(),
            env: Some(spec.env.0.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            stop_timeout: Some(STOP_GRACE_SECS.into()),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.settings.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![spec.agent.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            host_config: Some(HostConfig {
                memory: spec.memory_bytes,
                nano_cpus: spec.cpu_nanos,
                pids_limit: Some(spec.pids.unwrap_or(DEFAULT_PIDS_LIMIT)),
                network_mode: Some(self.settings.network.clone()),
                mounts: Some(
                    spec.volumes
                        .iter()
                        .map(|v| Mount {
                            target: Some(v.mount_path.clone()),
                            source: Some(self.volume_name(&spec.agent, &v.name)),
                            typ: Some(MountType::VOLUME),
                            ..Default::default()
                        })
                        .collect(),
                ),
                // An init as PID 1 forwards signals and reaps zombies, so agents stop promptly.
                init: Some(true),
                restart_policy: Some(DockerRestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                // Deny by default what a container could use to escape or escalate.
                privileged: Some(false),
                cap_drop: Some(vec!["ALL".to_string()]),
                cap_add: (!spec.capabilities.is_empty()).then(|| spec.capabilities.clone()),
                // The bare form: the engine deprecates `no-new-privileges:true`.
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".to_string()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), "10m".to_string()),
                        ("max-file".to_string(), "3".to_string()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The name of this instance's lease container.
    fn lease_name(&self) -> String {
        format!("hive-lease_{}", self.settings.instance)
    }

    /// The name of a renewal stamp of the lease `token`, renewed at `ms`.
    fn stamp_name(&self, token: &str, ms: i64) -> String {
        format!("hive-lease_{}_{token}_{ms}", self.settings.instance)
    }

    /// Imports the image lease containers are made from, unless the engine has it: a
    /// one-file layer, so nothing needs to be pulled.
    async fn ensure_lease_image(&self) -> Result<(), OrchestratorError> {
        self.lease_image_ready
            .get_or_try_init(|| async {
                let docker = self.docker().await?;
                match self
                    .call(
                        "inspect image",
                        Duration::ZERO,
                        docker.inspect_image(LEASE_IMAGE),
                    )
                    .await?
                {
                    Ok(_) => return Ok(()),
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => return Err(map_err(e)),
                }
                let (repo, tag) = LEASE_IMAGE.split_once(':').expect("a tagged name");
                let options = CreateImageOptions {
                    from_src: Some("-".into()),
                    repo: Some(repo.into()),
                    tag: Some(tag.into()),
                    changes: vec![
                        format!("LABEL {LABEL_MANAGED}=true"),
                        "CMD [\"/hive-lease\"]".into(),
                    ],
                    ..Default::default()
                };
                let imported = docker
                    .create_image(
                        Some(options),
                        Some(bollard::body_full(one_empty_file_tar().into())),
                        None,
                    )
                    .try_collect::<Vec<_>>();
                self.call("import the lease image", Duration::ZERO, imported)
                    .await?
                    .map_err(map_err)?;
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The lease container and the renewal stamps of this instance.
    async fn lease_objects(&self) -> Result<LeaseObjects, OrchestratorError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_LEASE}={}", self.settings.instance)],
        )]);
        let wanted = format!("/{}", self.lease_name());
        let mut objects = LeaseObjects::default();
        for s in self.list_summaries(filters).await? {
            let (Some(id), Some(names)) = (s.id.clone(), s.names.clone()) else {
                continue;
            };
            let labels = s.labels.clone().unwrap_or_default();
            // Labels alone make nothing a lease object (an image's labels pass into its
            // containers): its name, and not being an agent's, say so too.
            if labels.contains_key(LABEL_AGENT) {
                continue;
            }
            if names.contains(&wanted) {
                objects.lease = Some((id, labels));
            } else if let Some(token) = labels.get(LABEL_STAMP) {
                let prefix = format!("/{}_{token}_", self.lease_name());
                let Some(ms) = names
                    .iter()
                    .find_map(|n| n.strip_prefix(&prefix))
                    .and_then(|ms| ms.parse().ok())
                else {
                    continue;
                };
                objects.stamps.push((id, token.clone(), ms));
            }
        }
        Ok(objects)
    }

    /// Removes a lease object by id; one that is already gone is fine.
    async fn remove_lease_object(&self, id: &str) -> Result<(), OrchestratorError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let docker = self.docker().await?;
        match self
            .call(
                "remove the lease",
                Duration::ZERO,
                docker.remove_container(id, Some(options)),
            )
            .await?
        {
            Err(e) if !matches!(status_of(&e), Some(404 | 409)) => Err(map_err(e)),
            _ => Ok(()),
        }
    }

    /// Creates a never-started lease container.
    async fn create_lease_object(
        &self,
        name: String,
        labels: HashMap<String, String>,
    ) -> Result<Result<String, BollardError>, OrchestratorError> {
        let docker = self.docker().await?;
        let body = ContainerCreateBody {
            image: Some(LEASE_IMAGE.into()),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        Ok(self
            .call(
                "create the lease",
                Duration::ZERO,
                docker.create_container(Some(options), body),
            )
            .await?
            .map(|r| r.id))
    }
}

/// What the engine holds of one instance's lease.
#[derive(Default)]
struct LeaseObjects {
    /// The lease container: id and labels.
    lease: Option<(String, HashMap<String, String>)>,
    /// Renewal stamps: id, the token they renew, and the renewal time (Unix ms).
    stamps: Vec<(String, String, i64)>,
}

impl LeaseObjects {
    /// The lease as a value, if there is one.
    fn lease(&self) -> Option<Lease> {
        let (id, labels) = self.lease.as_ref()?;
        let label = |k: &str| labels.get(&format!("{LEASE}{k}")).cloned();
        let number = |k: &str| label(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let holder = Holder {
            token: label("token").unwrap_or_default(),
            host: label("host").unwrap_or_else(|| "?".into()),
            pid: number("pid") as u32,
            data_dir: label("data-dir").unwrap_or_else(|| "?".into()),
            store: label("store").unwrap_or_default(),
        };
        let acquired_ms = number("acquired");
        let renewed_ms = self
            .stamps
            .iter()
            .filter(|(_, token, _)| *token == holder.token)
            .map(|(_, _, ms)| *ms)
            .max()
            .unwrap_or(acquired_ms)
            .max(acquired_ms);
        Some(Lease {
            holder,
            acquired_ms,
            renewed_ms,
            duration: Duration::from_millis(number("duration").max(0) as u64),
            transitions: number("transitions").max(0) as u64,
            handle: id.clone(),
        })
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
        let (containers, foreign): (Vec<Container>, Vec<Container>) = self
            .inspect_agent(&want.agent)
            .await?
            .into_iter()
            .partition(|c| ownership.owns(&c.observed(), Some(&uid)));
        let plan = plan::plan(want, &containers);
        let creating = plan.action == Some(ContainerAction::Create);
        // Another store's container holds the name (for an agent to make, or a stopped
        // one that has none, whose start would meet it): leave it alone and say so.
        if creating || (!want.running && plan.keeper.is_none()) {
            if let Some(f) = foreign.iter().find(|c| c.state != ContainerState::Removing) {
                return Err(OrchestratorError::HeldByForeign {
                    agent: want.agent.clone(),
                    store: f.store.clone().unwrap_or_else(|| "unknown".into()),
                });
            }
        }
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
                .filter(|k| want.running && k.state == ContainerState::Restarting)
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
        match self
            .call("read a container's stats", Duration::ZERO, stats)
            .await?
        {
            Ok(stats) => Ok(stats
                .last()
                .and_then(|s| s.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage)
                .filter(|ns| *ns > 0)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
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
            .call(
                "list volumes",
                Duration::ZERO,
                docker.list_volumes(Some(options)),
            )
            .await?
            .map_err(map_err)?;
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

#[async_trait]
impl LeaseStore for DockerOrchestrator {
    async fn read_lease(&self) -> Result<Option<Lease>, OrchestratorError> {
        Ok(self.lease_objects().await?.lease())
    }

    async fn acquire_lease(
        &self,
        me: &Holder,
        duration: Duration,
        current: Option<&Lease>,
    ) -> Result<Lease, OrchestratorError> {
        self.ensure_lease_image().await?;
        if let Some(old) = current {
            // By id: if someone replaced it meanwhile, theirs stays and our create fails.
            self.remove_lease_object(&old.handle).await?;
        }
        let objects = self.lease_objects().await?;
        for (id, token, _) in &objects.stamps {
            if *token != me.token && objects.lease().map(|l| l.holder.token) != Some(token.clone())
            {
                // A stamp of a holder gone before us.
                let _ = self.remove_lease_object(id).await;
            }
        }
        let now = unix_ms();
        let transitions = current.map_or(0, |l| l.transitions + 1);
        let labels = HashMap::from([
            (LABEL_LEASE.to_string(), self.settings.instance.clone()),
            (format!("{LEASE}token"), me.token.clone()),
            (format!("{LEASE}host"), me.host.clone()),
            (format!("{LEASE}pid"), me.pid.to_string()),
            (format!("{LEASE}data-dir"), me.data_dir.clone()),
            (format!("{LEASE}store"), me.store.clone()),
            (format!("{LEASE}acquired"), now.to_string()),
            (format!("{LEASE}duration"), duration.as_millis().to_string()),
            (format!("{LEASE}transitions"), transitions.to_string()),
        ]);
        let id = match self.create_lease_object(self.lease_name(), labels).await? {
            Ok(id) => id,
            Err(e) if status_of(&e) == Some(409) => {
                return Err(OrchestratorError::LeaseConflict(format!(
                    "another Hive took the lease of instance {:?} first",
                    self.settings.instance
                )))
            }
            Err(e) => return Err(map_err(e)),
        };
        let stamp = HashMap::from([
            (LABEL_LEASE.to_string(), self.settings.instance.clone()),
            (LABEL_STAMP.to_string(), me.token.clone()),
        ]);
        // Without a stamp the lease reads as renewed at its acquisition; the next renewal
        // makes one.
        if let Ok(Err(e)) = self
            .create_lease_object(self.stamp_name(&me.token, now), stamp)
            .await
        {
            tracing::debug!(error = %e, "could not stamp the lease; the next renewal will");
        }
        Ok(Lease {
            holder: me.clone(),
            acquired_ms: now,
            renewed_ms: now,
            duration,
            transitions,
            handle: id,
        })
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, OrchestratorError> {
        let objects = self.lease_objects().await?;
        match objects.lease() {
            Some(l) if l.holder.token == lease.holder.token && l.handle == lease.handle => {}
            Some(l) => {
                return Err(OrchestratorError::LeaseConflict(format!(
                    "the lease of instance {:?} is now held by {}",
                    self.settings.instance, l.holder
                )))
            }
            None => {
                return Err(OrchestratorError::LeaseConflict(format!(
                    "the lease of instance {:?} was removed",
                    self.settings.instance
                )))
            }
        }
        let now = unix_ms();
        let name = self.stamp_name(&lease.holder.token, now);
        let mine = objects
            .stamps
            .iter()
            .find(|(_, token, _)| *token == lease.holder.token);
        let docker = self.docker().await?;
        match mine {
            Some((id, _, _)) => {
                let options = RenameContainerOptions { name };
                self.call(
                    "renew the lease",
                    Duration::ZERO,
                    docker.rename_container(id, options),
                )
                .await?
                .map_err(map_err)?;
            }
            None => {
                let stamp = HashMap::from([
                    (LABEL_LEASE.to_string(), self.settings.instance.clone()),
                    (LABEL_STAMP.to_string(), lease.holder.token.clone()),
                ]);
                self.create_lease_object(name, stamp)
                    .await?
                    .map_err(map_err)?;
            }
        }
        Ok(Lease {
            renewed_ms: now,
            ..lease.clone()
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), OrchestratorError> {
        let objects = self.lease_objects().await?;
        for (id, token, _) in &objects.stamps {
            if *token == lease.holder.token {
                self.remove_lease_object(id).await?;
            }
        }
        if objects
            .lease()
            .is_some_and(|l| l.holder.token == lease.holder.token)
        {
            self.remove_lease_object(&lease.handle).await?;
        }
        Ok(())
    }
}

impl DockerOrchestrator {
    /// The containers of this instance for one agent, with restart counts and exit codes
    /// from an inspect of each.
    async fn inspect_agent(&self, agent: &str) -> Result<Vec<Container>, OrchestratorError> {
        let mut containers = self.list_containers(Some(agent)).await?;
        let docker = self.docker().await?;
        for c in &mut containers {
            match self
                .call(
                    "inspect container",
                    Duration::ZERO,
                    docker.inspect_container(&c.id, None),
                )
                .await?
            {
                Ok(detail) => {
                    c.restart_count = detail.restart_count.unwrap_or_default().max(0) as u64;
                    if let Some(state) = detail.state {
                        if let (Some(ContainerStateStatusEnum::EXITED), Some(code)) =
                            (state.status, state.exit_code)
                        {
                            c.state = ContainerState::Exited(Some(code));
                        }
                    }
                }
                // Removed between the listing and the inspect: it is on its way out.
                Err(e) if status_of(&e) == Some(404) => c.state = ContainerState::Removing,
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(containers)
    }

    /// Creates (not starts) the agent's container, after its network identity and volumes
    /// are checked; [`OrchestratorError::ImageMissing`] when its image must be pulled.
    async fn create_container(&self, spec: &Workload) -> Result<String, OrchestratorError> {
        let name = self.container_name(&spec.agent);
        self.ensure_network().await?;
        self.check_network_name(spec).await?;
        let inherited = self.image_labels(spec).await?;
        self.ensure_volumes(spec).await?;
        let docker = self.docker().await?;
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        match self
            .call(
                "create container",
                Duration::ZERO,
                docker.create_container(Some(options), self.create_body(spec, &inherited)),
            )
            .await?
        {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(409) => Err(OrchestratorError::NameTaken { name }),
            Err(e) if status_of(&e) == Some(404) => Err(OrchestratorError::ImageMissing {
                image: spec.image.clone(),
            }),
            Err(e) => Err(map_err(e)),
        }
    }

    /// The labels of `spec`'s image its container must not carry: a container's labels
    /// are the ones Hive sets (compose, proxies and other tools act on labels). An image
    /// with labels in Hive's namespace (`hive.*`) is refused; its other labels but the
    /// descriptive ones ([`descriptive_label`]) are returned, to be set empty on the
    /// container. [`OrchestratorError::ImageMissing`] when the image must be pulled.
    async fn image_labels(&self, spec: &Workload) -> Result<Vec<String>, OrchestratorError> {
        let docker = self.docker().await?;
        let image = match self
            .call(
                "inspect image",
                Duration::ZERO,
                docker.inspect_image(&spec.image),
            )
            .await?
        {
            Ok(image) => image,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(OrchestratorError::ImageMissing {
                    image: spec.image.clone(),
                })
            }
            Err(e) => return Err(map_err(e)),
        };
        let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
        let mut ours: Vec<String> = labels
            .keys()
            .filter(|k| super::is_hive_label(k))
            .map(|k| sanitize(k))
            .collect();
        if !ours.is_empty() {
            ours.sort();
            ours.truncate(8);
            return Err(OrchestratorError::ImageLabels {
                image: spec.image.clone(),
                labels: ours,
            });
        }
        Ok(labels
            .into_keys()
            .filter(|k| !descriptive_label(k))
            .collect())
    }

    async fn start_container(&self, id: &str) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        match self
            .call(
                "start container",
                Duration::ZERO,
                docker.start_container(id, None),
            )
            .await?
        {
            // 304: already started.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            r => r.map_err(|e| map_err_for(e, id)),
        }
    }

    /// Asks the process to stop, killing it after the grace period.
    async fn stop_container(&self, id: &str) -> Result<(), OrchestratorError> {
        let options = StopContainerOptions {
            t: Some(STOP_GRACE_SECS),
            ..Default::default()
        };
        let docker = self.docker().await?;
        match self
            .call(
                "stop container",
                grace(),
                docker.stop_container(id, Some(options)),
            )
            .await?
        {
            // 304: already stopped.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            r => r.map_err(|e| map_err_for(e, id)),
        }
    }

    async fn restart_container(&self, id: &str) -> Result<(), OrchestratorError> {
        let options = RestartContainerOptions {
            t: Some(STOP_GRACE_SECS),
            ..Default::default()
        };
        let docker = self.docker().await?;
        self.call(
            "restart container",
            grace(),
            docker.restart_container(id, Some(options)),
        )
        .await?
        .map_err(|e| map_err_for(e, id))
    }

    /// Resumes a container paused outside Hive.
    async fn unpause_container(&self, id: &str) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        self.call(
            "unpause container",
            Duration::ZERO,
            docker.unpause_container(id),
        )
        .await?
        .map_err(|e| map_err_for(e, id))
    }

    /// Removes a container, killing it if it runs. Says "removed" only once the engine
    /// confirmed it, and a container removed before that is listed again is reported
    /// once as having survived its removal, never announced as removed again.
    async fn remove_one(
        &self,
        id: &str,
        reason: RemoveReason,
    ) -> Result<Vec<Done>, OrchestratorError> {
        let mut done = Vec::new();
        let ago = self
            .removed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .survived(id, Instant::now());
        if let Some(ago) = ago {
            done.push(Done::SurvivedRemoval {
                id: id.to_string(),
                ago: Duration::from_secs(ago.as_secs()),
            });
        }
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let docker = self.docker().await?;
        match self
            .call(
                "remove container",
                grace(),
                docker.remove_container(id, Some(options)),
            )
            .await?
        {
            Ok(()) => {
                let news = self
                    .removed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .confirmed(id, Instant::now());
                if news {
                    done.push(Done::Removed {
                        id: id.to_string(),
                        reason,
                    });
                } else {
                    tracing::debug!(container = %short(id), "removed again");
                }
            }
            // 404: already gone; 409: a removal is already under way.
            Err(e) if status_of(&e) == Some(404) => {
                tracing::debug!(container = %short(id), "was already gone when it was to be removed")
            }
            Err(e) if status_of(&e) == Some(409) => {
                tracing::debug!(container = %short(id), "the engine is removing it already")
            }
            Err(e) => return Err(map_err(e)),
        }
        Ok(done)
    }
}

/// Whether an image label only describes the image (OCI annotations, label-schema,
/// `maintainer`), and so may stay on its containers: nothing acts on it.
fn descriptive_label(key: &str) -> bool {
    key.starts_with("org.opencontainers.")
        || key.starts_with("org.label-schema.")
        || key == "maintainer"
}

/// The short form of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The extra time a call gets when the engine first waits for a process to stop.
fn grace() -> Duration {
    Duration::from_secs(STOP_GRACE_SECS as u64)
}

fn unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A tar archive holding one empty file, `hive-lease`: the lease image's only layer.
fn one_empty_file_tar() -> Vec<u8> {
    let mut header = [0u8; 512];
    let field =
        |h: &mut [u8; 512], at: usize, text: &[u8]| h[at..at + text.len()].copy_from_slice(text);
    field(&mut header, 0, b"hive-lease");
    field(&mut header, 100, b"0000444\0"); // mode
    field(&mut header, 108, b"0000000\0"); // uid
    field(&mut header, 116, b"0000000\0"); // gid
    field(&mut header, 124, b"00000000000\0"); // size
    field(&mut header, 136, b"00000000000\0"); // mtime
    field(&mut header, 156, b"0"); // a regular file
    field(&mut header, 257, b"ustar\0");
    field(&mut header, 263, b"00");
    // The checksum is computed with its own field as spaces.
    field(&mut header, 148, b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    field(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(&[0u8; 1024]); // the end-of-archive marker
    tar
}

/// The shared client: made on first use, and moved to the engine's API version the
/// first time the engine answers (until then bollard's default version is used). While
/// the engine does not answer, negotiation is tried at most every [`NEGOTIATE_EVERY`].
async fn negotiated(client: Arc<std::sync::Mutex<Client>>) -> Result<Docker, OrchestratorError> {
    let docker = {
        let mut c = client.lock().unwrap_or_else(|p| p.into_inner());
        let docker = match &c.docker {
            Some(d) => d.clone(),
            None => {
                let version = bollard::API_DEFAULT_VERSION;
                let secs = c.timeout.as_secs();
                let d = match c.host.as_deref() {
                    None => Docker::connect_with_local_defaults()
                        .map(|d| d.with_timeout(Duration::from_secs(secs))),
                    Some(h) if h.starts_with("tcp://") || h.starts_with("http://") => {
                        Docker::connect_with_http(h, secs, version)
                    }
                    Some(h) => Docker::connect_with_unix(
                        h.strip_prefix("unix://").unwrap_or(h),
                        secs,
                        version,
                    ),
                }
                .map_err(|e| OrchestratorError::Unavailable(e.to_string()))?;
                c.docker = Some(d.clone());
                d
            }
        };
        let due = c
            .last_attempt
            .is_none_or(|t| t.elapsed() >= NEGOTIATE_EVERY);
        if c.negotiated || !due {
            return Ok(docker);
        }
        c.last_attempt = Some(Instant::now());
        docker
    };
    if let Ok(Ok(d)) = tokio::time::timeout(PING_TIMEOUT, docker.clone().negotiate_version()).await
    {
        tracing::info!(api_version = %d.client_version(), "connected to the docker engine");
        let mut c = client.lock().unwrap_or_else(|p| p.into_inner());
        c.docker = Some(d.clone());
        c.negotiated = true;
        return Ok(d);
    }
    Ok(docker)
}

/// The exit code in a listing's status text, such as `Exited (137) 5 seconds ago`.
fn exit_code_of_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// What the engine said, cut to a short, printable line: engine errors can carry what a
/// registry or another service answered, which is not for agents' statuses.
fn message_of(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => sanitize(message),
        other => sanitize(&other.to_string()),
    }
}

/// The first line of `text`, printable ASCII only, at most 160 characters.
pub fn sanitize(text: &str) -> String {
    const MAX: usize = 160;
    let line = text.lines().next().unwrap_or_default();
    let mut out: String = line
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX)
        .collect();
    if line.chars().count() > MAX || text.lines().nth(1).is_some() {
        out.push_str(" ...");
    }
    out
}

fn map_err(e: BollardError) -> OrchestratorError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            OrchestratorError::Refused(sanitize(&message))
        }
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
            OrchestratorError::Refused(sanitize(&e.to_string()))
        }
        BollardError::RequestTimeoutError => OrchestratorError::Timeout {
            call: "a request",
            secs: 0,
        },
        other => OrchestratorError::Unavailable(sanitize(&other.to_string())),
    }
}

fn map_err_for(e: BollardError, id: &str) -> OrchestratorError {
    if status_of(&e) == Some(404) {
        OrchestratorError::NotFound(id.to_string())
    } else {
        map_err(e)
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
