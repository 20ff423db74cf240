//! Named volumes: made and labelled for the agent they belong to, and mounted only for it
//! (nothing is mounted by name alone).

use super::*;

impl DockerOrchestrator {
    /// The engine's name of an agent's volume in this instance.
    pub fn volume_name(&self, agent: &str, volume: &str) -> String {
        format!("{}_{volume}", self.container_name(agent))
    }

    /// Creates the agent's named volumes, labelled with its instance, owner and uid, or
    /// checks that those that exist are this agent's to mount.
    pub(super) async fn ensure_volumes(&self, spec: &Workload) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        for (i, v) in spec.volumes.iter().enumerate() {
            let name = self.volume_name(&spec.agent, &v.name);
            let existing = self
                .request_or_absent(
                    "inspect volume",
                    Duration::ZERO,
                    docker.inspect_volume(&name),
                )
                .await?;
            if let Some(existing) = existing {
                self.may_mount(spec, i, &name, &existing.labels)?;
                continue;
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
                .request(
                    "create volume",
                    Duration::ZERO,
                    docker.create_volume(request),
                )
                .await?;
            self.may_mount(spec, i, &name, &made.labels)?;
        }
        Ok(())
    }

    /// Whether the volume `name` (spec.volumes[i]), with these labels, may be mounted for
    /// the agent of `spec`.
    pub(super) fn may_mount(
        &self,
        spec: &Workload,
        i: usize,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), OrchestratorError> {
        crate::orchestrator::may_mount(&self.settings.instance, spec, i, name, |k| {
            labels.get(k).map(String::as_str)
        })
    }
}
