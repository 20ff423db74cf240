//! The instance's lease on Kubernetes: a `coordination.k8s.io/v1` Lease named
//! `hive-<instance>`, written over the version last read (a newer one is a conflict), as
//! client-go's leader election does.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease as KubeLease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};

use super::client::{map_err, status_code};
use super::render::{self, LEASE_DATA_DIR, LEASE_HOST, LEASE_PID, LEASE_STORE};
use super::{unix_ms, KubernetesOrchestrator};
use crate::orchestrator::{Holder, Lease, LeaseStore, OrchestratorError};

impl KubernetesOrchestrator {
    fn lease_name(&self) -> String {
        render::lease_name(self.instance())
    }

    /// Writes a lease over the version `lease.handle`; a newer one is a conflict.
    async fn write_lease(
        &self,
        lease: &Lease,
        holder: Option<&Holder>,
        lost: &str,
    ) -> Result<Lease, OrchestratorError> {
        let api: Api<KubeLease> = self.api().await?;
        let object = render::lease(self.instance(), lease, holder);
        let written = if lease.handle.is_empty() {
            self.call("create lease", api.create(&PostParams::default(), &object))
                .await?
        } else {
            self.call(
                "replace lease",
                api.replace(&self.lease_name(), &PostParams::default(), &object),
            )
            .await?
        };
        match written {
            Ok(o) => Ok(Lease {
                handle: o.metadata.resource_version.unwrap_or_default(),
                ..lease.clone()
            }),
            Err(e) if status_code(&e) == Some(409) => {
                Err(OrchestratorError::LeaseConflict(lost.to_string()))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    /// The lease object as the server has it, and what it says (None: nobody holds it).
    async fn lease_now(&self) -> Result<(Option<KubeLease>, Option<Lease>), OrchestratorError> {
        let api: Api<KubeLease> = self.api().await?;
        let object = self
            .call("get lease", api.get_opt(&self.lease_name()))
            .await?
            .map_err(map_err)?;
        let lease = object.as_ref().and_then(lease_of);
        Ok((object, lease))
    }
}

/// What a Lease object says, when someone holds it.
fn lease_of(object: &KubeLease) -> Option<Lease> {
    let spec = object.spec.as_ref()?;
    let token = spec.holder_identity.clone().filter(|t| !t.is_empty())?;
    let note = |k: &str| {
        object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let ms = |t: &Option<MicroTime>| t.as_ref().map_or(0, |t| t.0.as_millisecond());
    Some(Lease {
        holder: Holder {
            token,
            host: note(LEASE_HOST),
            pid: note(LEASE_PID).parse().unwrap_or(0),
            data_dir: note(LEASE_DATA_DIR),
            store: note(LEASE_STORE),
        },
        acquired_ms: ms(&spec.acquire_time),
        renewed_ms: ms(&spec.renew_time).max(ms(&spec.acquire_time)),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
        transitions: spec.lease_transitions.unwrap_or(0).max(0) as u64,
        handle: object.metadata.resource_version.clone().unwrap_or_default(),
    })
}

#[async_trait]
impl LeaseStore for KubernetesOrchestrator {
    async fn read_lease(&self) -> Result<Option<Lease>, OrchestratorError> {
        Ok(self.lease_now().await?.1)
    }

    async fn acquire_lease(
        &self,
        me: &Holder,
        duration: Duration,
        current: Option<&Lease>,
    ) -> Result<Lease, OrchestratorError> {
        let (object, held) = self.lease_now().await?;
        let conflict = || {
            OrchestratorError::LeaseConflict(
                "another Hive changed the instance's lease first".to_string(),
            )
        };
        // What the caller saw must still be what is there.
        if held.as_ref().map(|l| (&l.holder.token, &l.handle))
            != current.map(|l| (&l.holder.token, &l.handle))
        {
            return Err(conflict());
        }
        let now = unix_ms();
        let lease = Lease {
            holder: me.clone(),
            acquired_ms: now,
            renewed_ms: now,
            duration,
            // Every change of holder counts, a release in between or not (client-go's way).
            transitions: object
                .as_ref()
                .and_then(|o| o.spec.as_ref()?.lease_transitions)
                .map_or(0, |t| t.max(0) as u64 + 1),
            handle: object
                .and_then(|o| o.metadata.resource_version)
                .unwrap_or_default(),
        };
        self.write_lease(
            &lease,
            Some(me),
            "another Hive took the instance's lease first",
        )
        .await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, OrchestratorError> {
        let renewed = Lease {
            renewed_ms: unix_ms(),
            ..lease.clone()
        };
        self.write_lease(
            &renewed,
            Some(&lease.holder),
            "the instance's lease is no longer this Hive's",
        )
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), OrchestratorError> {
        self.write_lease(lease, None, "the instance's lease is no longer this Hive's")
            .await
            .map(|_| ())
    }
}
