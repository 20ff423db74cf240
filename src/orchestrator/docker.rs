//! The Docker implementation of [`Orchestrator`], and the only file that knows bollard.
//!
//! Containers are named `hive-<agent>` (`hive-<instance>-<agent>` for an instance other
//! than `default`) and carry `hive.managed`, `hive.instance`, `hive.agent`, `hive.uid`
//! and `hive.spec-hash` labels; every listing filters on this instance's label, so this
//! type never sees, let alone touches, a container that is not its own.
//!
//! The client connects lazily and negotiates the API version on first contact, so Hive
//! starts while the engine is down and talks to engines older than bollard's default.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, EndpointSettings,
    HostConfig, HostConfigLogConfig, Mount, MountType, NetworkCreateRequest, NetworkingConfig,
    RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    ListVolumesOptions, LogsOptions, RemoveContainerOptions, RemoveVolumeOptions,
    RestartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use super::{
    Container, ContainerSpec, ContainerState, LogOptions, Orchestrator, OrchestratorError,
};
use crate::agent::RestartPolicy;

/// Label every Hive container carries.
pub const LABEL_MANAGED: &str = "hive.managed";
/// Label naming the Hive instance that owns a container.
pub const LABEL_INSTANCE: &str = "hive.instance";
/// Label naming the agent a container runs.
pub const LABEL_AGENT: &str = "hive.agent";
/// Label with the agent's uid.
pub const LABEL_UID: &str = "hive.uid";
/// Label naming the agent's owner.
pub const LABEL_OWNER: &str = "hive.owner";
/// Label naming a volume within its agent.
pub const LABEL_VOLUME: &str = "hive.volume";
/// Label marking a volume kept when its agent is deleted.
pub const LABEL_RETAIN: &str = "hive.retain";
/// Label with the hash of the spec the container was created from.
pub const LABEL_SPEC_HASH: &str = "hive.spec-hash";

/// Seconds an agent gets between the stop signal and the kill.
const STOP_GRACE_SECS: i32 = 10;
/// A request to the engine that takes longer than this is treated as the engine being gone.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// Processes an agent may have when neither spec nor policy says: enough for an agent,
/// too few for a fork bomb.
const DEFAULT_PIDS_LIMIT: i64 = 512;

/// The Docker engine behind one Hive instance.
pub struct DockerOrchestrator {
    /// The client; replaced once by the version-negotiated one.
    client: Arc<Mutex<Client>>,
    /// This Hive's instance name, stamped on and filtered by.
    instance: String,
    /// The network every agent joins, with its name as an alias.
    network: String,
    /// Set once the network is known to exist.
    network_ready: tokio::sync::OnceCell<()>,
}

struct Client {
    /// Where the engine is (None: DOCKER_HOST or the local socket).
    host: Option<String>,
    /// Made on first use; bollard refuses to make one while the socket is missing.
    docker: Option<Docker>,
    /// Whether `docker` speaks the engine's API version.
    negotiated: bool,
}

impl DockerOrchestrator {
    /// Prepares a client for `host` (`unix:///path`, a bare socket path, `tcp://` or
    /// `http://`; `None` means DOCKER_HOST or the local socket). Does no I/O: the
    /// connection is made, and the API version negotiated, when the engine first answers.
    pub fn new(host: Option<&str>, instance: &str, network: &str) -> Self {
        DockerOrchestrator {
            network: network.to_string(),
            network_ready: tokio::sync::OnceCell::new(),
            client: Arc::new(Mutex::new(Client {
                host: host.map(str::to_string),
                docker: None,
                negotiated: false,
            })),
            instance: instance.to_string(),
        }
    }

    /// The client, negotiating the API version with the engine the first time it answers.
    fn docker(
        &self,
    ) -> impl std::future::Future<Output = Result<Docker, OrchestratorError>> + Send + 'static {
        negotiated(self.client.clone())
    }

    /// The engine's name of an agent's volume in this instance.
    pub fn volume_name(&self, agent: &str, volume: &str) -> String {
        format!("{}-{volume}", self.container_name(agent))
    }

    /// Creates the agents' network, labelled, unless it exists.
    async fn ensure_network(&self) -> Result<(), OrchestratorError> {
        self.network_ready
            .get_or_try_init(|| async {
                let docker = self.docker().await?;
                match docker.inspect_network(&self.network, None).await {
                    Ok(_) => return Ok(()),
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => return Err(map_err(e)),
                }
                let request = NetworkCreateRequest {
                    name: self.network.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(
                        LABEL_MANAGED.to_string(),
                        "true".to_string(),
                    )])),
                    ..Default::default()
                };
                match docker.create_network(request).await {
                    Ok(_) => {
                        tracing::info!(network = %self.network, "created the agents' network");
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

    /// Creates (or finds) the agent's named volumes, labelled as Hive's.
    async fn ensure_volumes(&self, spec: &ContainerSpec) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        for v in &spec.volumes {
            let request = VolumeCreateRequest {
                name: Some(self.volume_name(&spec.agent, &v.name)),
                labels: Some(HashMap::from([
                    (LABEL_MANAGED.to_string(), "true".to_string()),
                    (LABEL_INSTANCE.to_string(), self.instance.clone()),
                    (LABEL_AGENT.to_string(), spec.agent.clone()),
                    (LABEL_VOLUME.to_string(), v.name.clone()),
                    (LABEL_RETAIN.to_string(), v.retain.to_string()),
                ])),
                ..Default::default()
            };
            // Creating an existing volume returns it unchanged.
            docker.create_volume(request).await.map_err(map_err)?;
        }
        Ok(())
    }

    /// The container name of an agent in this instance.
    pub fn container_name(&self, agent: &str) -> String {
        if self.instance == "default" {
            format!("hive-{agent}")
        } else {
            format!("hive-{}-{agent}", self.instance)
        }
    }

    fn label_filters(&self, agent: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_INSTANCE}={}", self.instance),
        ];
        if let Some(a) = agent {
            labels.push(format!("{LABEL_AGENT}={a}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    async fn list(&self, agent: Option<&str>) -> Result<Vec<Container>, OrchestratorError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.label_filters(agent)),
            ..Default::default()
        };
        let summaries = self
            .docker()
            .await?
            .list_containers(Some(options))
            .await
            .map_err(map_err)?;
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
                })
            })
            .collect())
    }

    async fn pull(&self, image: &str) -> Result<(), OrchestratorError> {
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        self.docker()
            .await?
            .create_image(Some(options), None, None)
            .try_collect::<Vec<_>>()
            .await
            .map(|_| ())
            .map_err(|e| OrchestratorError::ImageNotFound {
                image: image.to_string(),
                detail: message_of(&e),
            })
    }

    fn create_body(&self, spec: &ContainerSpec) -> ContainerCreateBody {
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
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
                    self.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![spec.agent.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            host_config: Some(HostConfig {
                memory: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                pids_limit: Some(spec.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT)),
                network_mode: Some(self.network.clone()),
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
                security_opt: Some(vec!["no-new-privileges:true".to_string()]),
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
}

#[async_trait]
impl Orchestrator for DockerOrchestrator {
    async fn ping(&self) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        match tokio::time::timeout(Duration::from_secs(3), docker.ping()).await {
            Ok(r) => r.map(|_| ()).map_err(map_err),
            Err(_) => Err(OrchestratorError::Unavailable(
                "the engine did not answer a ping within 3s".into(),
            )),
        }
    }

    async fn list_all(&self) -> Result<Vec<Container>, OrchestratorError> {
        self.list(None).await
    }

    async fn list_agent(&self, agent: &str) -> Result<Vec<Container>, OrchestratorError> {
        let mut containers = self.list(Some(agent)).await?;
        let docker = self.docker().await?;
        for c in &mut containers {
            match docker.inspect_container(&c.id, None).await {
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

    async fn create(&self, spec: &ContainerSpec) -> Result<String, OrchestratorError> {
        let name = self.container_name(&spec.agent);
        let options = || CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        self.ensure_network().await?;
        self.ensure_volumes(spec).await?;
        let docker = self.docker().await?;
        let created = match docker
            .create_container(Some(options()), self.create_body(spec))
            .await
        {
            Err(e) if status_of(&e) == Some(404) => {
                tracing::info!(agent = %spec.agent, image = %spec.image, "image missing on the engine; pulling it");
                self.pull(&spec.image).await?;
                docker
                    .create_container(Some(options()), self.create_body(spec))
                    .await
            }
            other => other,
        };
        match created {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(409) => Err(OrchestratorError::NameTaken { name }),
            Err(e) if status_of(&e) == Some(404) => Err(OrchestratorError::ImageNotFound {
                image: spec.image.clone(),
                detail: message_of(&e),
            }),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn start(&self, id: &str) -> Result<(), OrchestratorError> {
        match self.docker().await?.start_container(id, None).await {
            // 304: already started.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            r => r.map_err(|e| map_err_for(e, id)),
        }
    }

    async fn stop(&self, id: &str) -> Result<(), OrchestratorError> {
        let options = StopContainerOptions {
            t: Some(STOP_GRACE_SECS),
            ..Default::default()
        };
        match self.docker().await?.stop_container(id, Some(options)).await {
            // 304: already stopped.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            r => r.map_err(|e| map_err_for(e, id)),
        }
    }

    async fn restart(&self, id: &str) -> Result<(), OrchestratorError> {
        let options = RestartContainerOptions {
            t: Some(STOP_GRACE_SECS),
            ..Default::default()
        };
        self.docker()
            .await?
            .restart_container(id, Some(options))
            .await
            .map_err(|e| map_err_for(e, id))
    }

    async fn unpause(&self, id: &str) -> Result<(), OrchestratorError> {
        self.docker()
            .await?
            .unpause_container(id)
            .await
            .map_err(|e| map_err_for(e, id))
    }

    async fn remove(&self, id: &str) -> Result<(), OrchestratorError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self
            .docker()
            .await?
            .remove_container(id, Some(options))
            .await
        {
            // 404: already gone; 409: a removal is already under way.
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            r => r.map_err(map_err),
        }
    }

    async fn remove_volumes(&self, agent: &str) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        let mut filters = self.label_filters(Some(agent));
        filters
            .get_mut("label")
            .expect("label filters")
            .push(format!("{LABEL_RETAIN}=false"));
        let options = ListVolumesOptions {
            filters: Some(filters),
        };
        let listed = docker.list_volumes(Some(options)).await.map_err(map_err)?;
        for v in listed.volumes.unwrap_or_default() {
            match docker
                .remove_volume(&v.name, None::<RemoveVolumeOptions>)
                .await
            {
                Err(e) if status_of(&e) != Some(404) => return Err(map_err(e)),
                _ => tracing::info!(volume = %v.name, "removed volume"),
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

/// The shared client: made on first use, and moved to the engine's API version the
/// first time the engine answers (until then bollard's default version is used).
async fn negotiated(client: Arc<Mutex<Client>>) -> Result<Docker, OrchestratorError> {
    let mut client = client.lock().await;
    let docker = match &client.docker {
        Some(d) => d.clone(),
        None => {
            let version = bollard::API_DEFAULT_VERSION;
            let d = match client.host.as_deref() {
                None => Docker::connect_with_local_defaults(),
                Some(h) if h.starts_with("tcp://") || h.starts_with("http://") => {
                    Docker::connect_with_http(h, REQUEST_TIMEOUT_SECS, version)
                }
                Some(h) => Docker::connect_with_unix(
                    h.strip_prefix("unix://").unwrap_or(h),
                    REQUEST_TIMEOUT_SECS,
                    version,
                ),
            }
            .map_err(|e| OrchestratorError::Unavailable(e.to_string()))?;
            client.docker = Some(d.clone());
            d
        }
    };
    if !client.negotiated {
        if let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version()).await
        {
            tracing::info!(api_version = %d.client_version(), "connected to the docker engine");
            client.docker = Some(d.clone());
            client.negotiated = true;
            return Ok(d);
        }
    }
    Ok(client.docker.clone().expect("set above"))
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

fn message_of(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn map_err(e: BollardError) -> OrchestratorError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            OrchestratorError::Refused(message)
        }
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
            OrchestratorError::Refused(e.to_string())
        }
        other => OrchestratorError::Unavailable(other.to_string()),
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
    fn container_names_carry_the_instance_unless_default() {
        let d = DockerOrchestrator::new(Some("unix:///nonexistent.sock"), "default", "hive-net");
        assert_eq!(d.container_name("a"), "hive-a");
        let s = DockerOrchestrator::new(Some("unix:///nonexistent.sock"), "staging", "hive-net");
        assert_eq!(s.container_name("a"), "hive-staging-a");
    }
}
