//! The instance's lease, kept on the engine as two containers that are created and never
//! started, from a one-file image Hive imports itself (see the module's overview).

use super::*;

/// Label naming the instance a lease (or its renewal stamp) belongs to.
pub const LABEL_LEASE: &str = "hive.lease";

/// Prefix of the lease's other labels.
pub(super) const LEASE: &str = "hive.lease.";

/// Label of a renewal stamp: the token of the lease it renews.
pub(super) const LABEL_STAMP: &str = "hive.lease.stamp";

/// The image lease containers are made from (imported by Hive, never pulled).
pub(super) const LEASE_IMAGE: &str = "hive-lease:1";

impl DockerOrchestrator {
    /// The name of this instance's lease container.
    pub(super) fn lease_name(&self) -> String {
        format!("hive-lease_{}", self.settings.instance)
    }

    /// The name of a renewal stamp of the lease `token`, renewed at `ms`.
    pub(super) fn stamp_name(&self, token: &str, ms: i64) -> String {
        format!("hive-lease_{}_{token}_{ms}", self.settings.instance)
    }

    /// Imports the image lease containers are made from, unless the engine has it: a
    /// one-file layer, so nothing needs to be pulled.
    pub(super) async fn ensure_lease_image(&self) -> Result<(), OrchestratorError> {
        self.lease_image_ready
            .get_or_try_init(|| async {
                let docker = self.docker().await?;
                let present = self
                    .request_or_absent(
                        "inspect image",
                        Duration::ZERO,
                        docker.inspect_image(LEASE_IMAGE),
                    )
                    .await?;
                if present.is_some() {
                    return Ok(());
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
                self.request("import the lease image", Duration::ZERO, imported)
                    .await?;
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The lease container and the renewal stamps of this instance.
    pub(super) async fn lease_objects(&self) -> Result<LeaseObjects, OrchestratorError> {
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
    pub(super) async fn remove_lease_object(&self, id: &str) -> Result<(), OrchestratorError> {
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
    pub(super) async fn create_lease_object(
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
pub(super) struct LeaseObjects {
    /// The lease container: id and labels.
    pub(super) lease: Option<(String, HashMap<String, String>)>,
    /// Renewal stamps: id, the token they renew, and the renewal time (Unix ms).
    pub(super) stamps: Vec<(String, String, i64)>,
}

impl LeaseObjects {
    /// The lease as a value, if there is one.
    pub(super) fn lease(&self) -> Option<Lease> {
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

pub(super) fn unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A tar archive holding one empty file, `hive-lease`: the lease image's only layer.
pub(super) fn one_empty_file_tar() -> Vec<u8> {
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
                self.request(
                    "renew the lease",
                    Duration::ZERO,
                    docker.rename_container(id, options),
                )
                .await?;
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
