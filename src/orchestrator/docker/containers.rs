//! Containers: their names and labels, what is made for a workload (the hardening
//! included), and the lifecycle calls (create, start, stop, restart, unpause, remove).

use super::*;

impl DockerOrchestrator {
    /// The container name of an agent in this instance.
    pub fn container_name(&self, agent: &str) -> String {
        format!("hive_{}_{agent}", self.settings.instance)
    }

    pub(super) fn label_filters(&self, agent: Option<&str>) -> HashMap<String, Vec<String>> {
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
    pub(super) async fn list_summaries(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, OrchestratorError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let docker = self.docker().await?;
        self.request(
            "list containers",
            Duration::ZERO,
            docker.list_containers(Some(options)),
        )
        .await
    }

    pub(super) async fn list_containers(
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
    pub(super) fn create_body(&self, spec: &Workload, inherited: &[String]) -> ContainerCreateBody {
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

    /// The containers of this instance for one agent, with restart counts and exit codes
    /// from an inspect of each.
    pub(super) async fn inspect_agent(
        &self,
        agent: &str,
    ) -> Result<Vec<Container>, OrchestratorError> {
        let mut containers = self.list_containers(Some(agent)).await?;
        let docker = self.docker().await?;
        for c in &mut containers {
            match self
                .request_or_absent(
                    "inspect container",
                    Duration::ZERO,
                    docker.inspect_container(&c.id, None),
                )
                .await?
            {
                Some(detail) => {
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
                None => c.state = ContainerState::Removing,
            }
        }
        Ok(containers)
    }

    /// Creates (not starts) the agent's container, after its network identity and volumes
    /// are checked; [`OrchestratorError::ImageMissing`] when its image must be pulled.
    pub(super) async fn create_container(
        &self,
        spec: &Workload,
    ) -> Result<String, OrchestratorError> {
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
    pub(super) async fn image_labels(
        &self,
        spec: &Workload,
    ) -> Result<Vec<String>, OrchestratorError> {
        let docker = self.docker().await?;
        let image = self
            .request_or_absent(
                "inspect image",
                Duration::ZERO,
                docker.inspect_image(&spec.image),
            )
            .await?
            .ok_or_else(|| OrchestratorError::ImageMissing {
                image: spec.image.clone(),
            })?;
        let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
        let mut ours: Vec<String> = labels
            .keys()
            .filter(|k| crate::orchestrator::is_hive_label(k))
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

    pub(super) async fn start_container(&self, id: &str) -> Result<(), OrchestratorError> {
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
    pub(super) async fn stop_container(&self, id: &str) -> Result<(), OrchestratorError> {
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

    pub(super) async fn restart_container(&self, id: &str) -> Result<(), OrchestratorError> {
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
    pub(super) async fn unpause_container(&self, id: &str) -> Result<(), OrchestratorError> {
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
    pub(super) async fn remove_one(
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
pub(super) fn descriptive_label(key: &str) -> bool {
    key.starts_with("org.opencontainers.")
        || key.starts_with("org.label-schema.")
        || key == "maintainer"
}

/// The short form of a container id, as `docker ps` shows it.
pub(super) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The extra time a call gets when the engine first waits for a process to stop.
pub(super) fn grace() -> Duration {
    Duration::from_secs(STOP_GRACE_SECS as u64)
}
