//! The objects an agent's Pod needs around it, made and removed through the API server:
//! its headless Service (its name on the agents' network), its volumes' claims, the Pod
//! itself with its environment's Secret, each checked for this instance's labels before
//! it is used.

use super::*;

impl KubernetesOrchestrator {
    /// Makes the agent's Service unless it is there; refuses a name another object holds.
    /// One left by an earlier agent of the name in this store is made again for this one.
    pub(super) async fn ensure_service(&self, want: &Workload) -> Result<(), OrchestratorError> {
        let api: Api<Service> = self.api().await?;
        let uid = want.uid.to_string();
        for _ in 0..2 {
            let existing = self
                .call("get service", api.get_opt(&want.agent))
                .await?
                .map_err(map_err)?;
            let Some(existing) = existing else {
                let made = self
                    .call(
                        "create service",
                        api.create(
                            &PostParams::default(),
                            &render::service(self.instance(), want),
                        ),
                    )
                    .await?;
                match made {
                    Ok(_) => return Ok(()),
                    // Made meanwhile: look at whose it is.
                    Err(e) if status_code(&e) == Some(409) => continue,
                    Err(e) => return Err(map_err(e)),
                }
            };
            let labels = existing.metadata.labels.unwrap_or_default();
            let label = |k: &str| labels.get(k).map(String::as_str);
            let ours = label(LABEL_MANAGED) == Some("true")
                && label(LABEL_INSTANCE) == Some(self.instance())
                && label(LABEL_AGENT) == Some(want.agent.as_str())
                && label(LABEL_STORE) == Some(want.store.as_str());
            if ours && label(LABEL_UID) == Some(uid.as_str()) {
                return Ok(());
            }
            if !ours {
                let (_, ns) = self.connection().await?;
                return Err(OrchestratorError::NameInUse {
                    name: want.agent.clone(),
                    network: format!("namespace {ns}"),
                    holder: match label(LABEL_INSTANCE) {
                        Some(i) if label(LABEL_MANAGED).is_some() => {
                            format!(
                                "the Service of an agent of Hive instance {i} (store {})",
                                label(LABEL_STORE).unwrap_or("unknown")
                            )
                        }
                        _ => format!("Service {} (not made by this Hive)", want.agent),
                    },
                });
            }
            // An earlier agent's of this name, in this store: this agent's now.
            self.delete_service(&want.agent, None).await?;
        }
        Err(OrchestratorError::Unavailable(format!(
            "the Service {} keeps changing under this Hive",
            want.agent
        )))
    }

    /// Makes the agent's claims, or checks that those there are its to mount.
    pub(super) async fn ensure_claims(&self, want: &Workload) -> Result<(), OrchestratorError> {
        let api: Api<PersistentVolumeClaim> = self.api().await?;
        for (i, v) in want.volumes.iter().enumerate() {
            let name = render::claim_name(self.instance(), &want.agent, &v.name);
            let claim = match self
                .call("get claim", api.get_opt(&name))
                .await?
                .map_err(map_err)?
            {
                Some(c) => c,
                None => match self
                    .call(
                        "create claim",
                        api.create(
                            &PostParams::default(),
                            &render::claim(self.instance(), want, i),
                        ),
                    )
                    .await?
                {
                    Ok(c) => c,
                    Err(e) if status_code(&e) == Some(409) => self
                        .call("get claim", api.get(&name))
                        .await?
                        .map_err(map_err)?,
                    Err(e) => return Err(map_err(e)),
                },
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(OrchestratorError::VolumeConflict(format!(
                    "spec.volumes[{i}]: volume {name} is still being deleted (with an earlier agent); it is made again once it is gone"
                )));
            }
            let labels = claim.metadata.labels.unwrap_or_default();
            crate::orchestrator::may_mount(self.instance(), want, i, &name, |k| {
                labels.get(k).map(String::as_str)
            })?;
        }
        Ok(())
    }

    /// Makes a Pod for `want` (its Service, claims and environment first).
    pub(super) async fn create_pod(&self, want: &Workload) -> Result<Pod, OrchestratorError> {
        self.ensure_service(want).await?;
        self.ensure_claims(want).await?;
        let name = format!(
            "{}-{}",
            want.agent,
            &Uuid::new_v4().simple().to_string()[..5]
        );
        let pods: Api<Pod> = self.api().await?;
        let pod = self
            .call(
                "create pod",
                pods.create(
                    &PostParams::default(),
                    &render::pod(self.instance(), want, &name),
                ),
            )
            .await?
            .map_err(map_err)?;
        // The environment, owned by the Pod: made right after it (the kubelet waits for
        // it), so that it can never outlive the Pod.
        if let Some(mut secret) = render::env_secret(self.instance(), want, &name) {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            secret.metadata.owner_references = Some(vec![render::owned_by_pod(&name, &uid)]);
            let made = match self.api::<Secret>().await {
                Ok(secrets) => self
                    .call(
                        "create secret",
                        secrets.create(&PostParams::default(), &secret),
                    )
                    .await
                    .and_then(|r| r.map_err(map_err)),
                Err(e) => Err(e),
            };
            // Without its environment the Pod cannot start: it goes, whatever failed.
            if let Err(e) = made {
                let _ = self.delete_pod(&name).await;
                return Err(e);
            }
        }
        Ok(pod)
    }

    /// Makes the environment Secret of the Pod `id` again when the kubelet says it is
    /// missing (a Hive stopped between making the Pod and its Secret): without it the Pod
    /// would wait forever.
    pub(super) async fn repair_secret(
        &self,
        want: &Workload,
        id: &str,
        pod: &Pod,
    ) -> Result<(), OrchestratorError> {
        let waiting_for_config = render::waiting_reason(pod) == Some("CreateContainerConfigError");
        let Some(mut secret) =
            render::env_secret(self.instance(), want, id).filter(|_| waiting_for_config)
        else {
            return Ok(());
        };
        let api: Api<Secret> = self.api().await?;
        if self
            .call("get secret", api.get_opt(id))
            .await?
            .map_err(map_err)?
            .is_some()
        {
            return Ok(());
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        secret.metadata.owner_references = Some(vec![render::owned_by_pod(id, &uid)]);
        tracing::warn!(agent = %want.agent, pod = %id, "the agent's Pod has no environment Secret; making it again");
        match self
            .call("create secret", api.create(&PostParams::default(), &secret))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Deletes a Pod with the stop grace; one already gone is fine. Gives back the Pod as
    /// the server last had it, when it had one.
    pub(super) async fn delete_pod(&self, name: &str) -> Result<Option<Pod>, OrchestratorError> {
        let api: Api<Pod> = self.api().await?;
        let params = DeleteParams {
            grace_period_seconds: Some(render::STOP_GRACE_SECS as u32),
            ..Default::default()
        };
        match self.call("delete pod", api.delete(name, &params)).await? {
            Ok(either) => Ok(either.left()),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Deletes the agent's Service if it is this instance's (and, given `uid`, made for
    /// that agent: a Service a newer agent of the name took over is left to it).
    pub(super) async fn delete_service(
        &self,
        agent: &str,
        uid: Option<&str>,
    ) -> Result<(), OrchestratorError> {
        let api: Api<Service> = self.api().await?;
        let Some(s) = self
            .call("get service", api.get_opt(agent))
            .await?
            .map_err(map_err)?
        else {
            return Ok(());
        };
        let labels = s.metadata.labels.unwrap_or_default();
        let label = |k: &str| labels.get(k).map(String::as_str);
        if label(LABEL_MANAGED) != Some("true")
            || label(LABEL_INSTANCE) != Some(self.instance())
            || label(LABEL_AGENT) != Some(agent)
            || uid.is_some_and(|u| label(LABEL_UID) != Some(u))
        {
            return Ok(());
        }
        match self
            .call(
                "delete service",
                api.delete(agent, &DeleteParams::default()),
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }
}
