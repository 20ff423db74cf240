//! The agents' network: made (labelled) when first needed, and the names other containers
//! answer to on it, so that no agent is created under a name something else holds.

use super::*;

/// Names other containers answer to on the agents' network, each with who holds it.
pub(super) type NetworkNames = Vec<(String, String)>;

/// What one scan of the network found, or why it could not.
pub(super) type NetworkScan = Result<Arc<NetworkNames>, OrchestratorError>;

impl DockerOrchestrator {
    /// Creates the agents' network, labelled, unless it exists.
    pub(super) async fn ensure_network(&self) -> Result<(), OrchestratorError> {
        self.network_ready
            .get_or_try_init(|| async {
                let docker = self.docker().await?;
                let network = &self.settings.network;
                let present = self
                    .request_or_absent(
                        "inspect network",
                        Duration::ZERO,
                        docker.inspect_network(network, None),
                    )
                    .await?;
                if present.is_some() {
                    return Ok(());
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

    /// Refuses a workload whose name another container on the network answers to (its
    /// name, a network alias, a compose service, another instance's agent): Docker's DNS
    /// would resolve the name to either. This Hive's own containers are skipped.
    pub(super) async fn check_network_name(
        &self,
        spec: &Workload,
    ) -> Result<(), OrchestratorError> {
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
    pub(super) async fn network_names(
        &self,
        asked: Instant,
    ) -> Result<Arc<NetworkNames>, OrchestratorError> {
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

    pub(super) async fn scan_network(&self) -> Result<NetworkNames, OrchestratorError> {
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
            let Some(detail) = self
                .request_or_absent(
                    "inspect container",
                    Duration::ZERO,
                    docker.inspect_container(id, None),
                )
                .await?
            else {
                continue;
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
}
