//! The baseline: the Docker engine driven directly, with the container shape Hive uses.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    RestartPolicy as DockerRestart, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions,
};
use bollard::Docker;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::IMAGE;

/// The engine, version negotiated.
pub(crate) async fn docker() -> Result<Docker> {
    Ok(Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?)
}

/// Imports the benchmark image from Debian's static busybox unless the engine has it.
pub(crate) async fn ensure_image() -> Result<()> {
    let d = docker().await?;
    if d.inspect_image(IMAGE).await.is_ok() {
        return Ok(());
    }
    let tar = hive::testing::busybox_tar(&["sh", "sleep", "kill"])?;
    let (repo, tag) = IMAGE.split_once(':').expect("a tagged image");
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes: vec!["ENV PATH=/bin".into()],
        ..Default::default()
    };
    d.create_image(Some(options), Some(bollard::body_full(tar.into())), None)
        .try_collect::<Vec<_>>()
        .await
        .with_context(|| format!("importing {IMAGE}"))?;
    Ok(())
}

/// The baseline: the engine driven directly, one container per agent, in the shape Hive
/// gives its containers (labels, the agents' network with an alias, limits, an init).
pub(crate) struct Engine {
    docker: Docker,
    instance: String,
}

impl Engine {
    pub(crate) async fn new(instance: &str) -> Result<Engine> {
        let docker = docker().await?;
        if docker.inspect_network("hive-net", None).await.is_err() {
            let request = NetworkCreateRequest {
                name: "hive-net".into(),
                driver: Some("bridge".into()),
                ..Default::default()
            };
            let _ = docker.create_network(request).await;
        }
        Ok(Engine {
            docker,
            instance: instance.to_string(),
        })
    }

    pub(crate) fn filters(&self, agent: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("hive.instance={}", self.instance)];
        if let Some(a) = agent {
            labels.push(format!("hive.agent={a}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    /// Creates and starts a sleeping container for `agent`.
    pub(crate) async fn run(&self, agent: &str) -> Result<String> {
        let body = ContainerCreateBody {
            image: Some(IMAGE.into()),
            entrypoint: Some(vec!["/bin/sleep".into(), "86400".into()]),
            labels: Some(HashMap::from([
                ("hive.managed".to_string(), "true".to_string()),
                ("hive.instance".to_string(), self.instance.clone()),
                ("hive.agent".to_string(), agent.to_string()),
            ])),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    "hive-net".to_string(),
                    EndpointSettings {
                        aliases: Some(vec![format!("{}-{agent}", self.instance)]),
                        ..Default::default()
                    },
                )])),
            }),
            host_config: Some(HostConfig {
                memory: Some(512 << 20),
                nano_cpus: Some(1_000_000_000),
                pids_limit: Some(256),
                network_mode: Some("hive-net".into()),
                init: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                restart_policy: Some(DockerRestart {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(format!("base_{}_{agent}", self.instance)),
            ..Default::default()
        };
        let id = self.docker.create_container(Some(options), body).await?.id;
        self.docker.start_container(&id, None).await?;
        Ok(id)
    }

    /// Ids of this instance's containers (of one agent, or all).
    pub(crate) async fn ids(&self, agent: Option<&str>) -> Result<Vec<String>> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.filters(agent)),
            ..Default::default()
        };
        Ok(self
            .docker
            .list_containers(Some(options))
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }

    /// Whether a container of `agent` runs.
    pub(crate) async fn running(&self, agent: &str) -> Result<bool> {
        let options = ListContainersOptions {
            all: false,
            filters: Some(self.filters(Some(agent))),
            ..Default::default()
        };
        Ok(!self.docker.list_containers(Some(options)).await?.is_empty())
    }

    /// Removes every container of the instance, `parallelism` at a time.
    pub(crate) async fn remove_all(&self, parallelism: usize) -> Result<()> {
        let ids = self.ids(None).await?;
        let results: Vec<_> = stream::iter(ids)
            .map(|id| async move {
                let options = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                self.docker.remove_container(&id, Some(options)).await
            })
            .buffer_unordered(parallelism)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }

    /// The process id of a container's init, for a crash from the host.
    pub(crate) async fn pid(&self, id: &str) -> Result<i64> {
        let detail = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await?;
        detail
            .state
            .and_then(|s| s.pid)
            .context("the container's pid")
    }
}
