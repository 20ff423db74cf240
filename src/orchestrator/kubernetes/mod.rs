//! The Kubernetes backend: the [`Orchestrator`] over a cluster's API server, through
//! kube-rs. This module (with its pure half, [`render`]) is the only user of `kube` and
//! `k8s-openapi`, as `docker` is of bollard.
//!
//! What an agent becomes, and why, is said in [`render`]. The backend works in one
//! namespace (`--namespace`, else the one of its service account or kubeconfig) and only
//! on objects labelled with its instance; every name it makes is checked for its labels
//! before it is used, as on Docker. Changes arrive through kube-runtime's watcher on the
//! instance's Pods; the instance's lease is a `coordination.k8s.io/v1` Lease named
//! `hive-<instance>`. What differs from Docker: images are pulled by the kubelet (so
//! [`Orchestrator::pull`] does nothing and a bad image shows as the kubelet's waiting
//! reason), a running Pod is deleted to stop its agent (so its logs go with it), and there is no CPU
//! counter to read (metrics.k8s.io gives rates), so an idle timeout never fires here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::Client;
use uuid::Uuid;

use super::{
    Applied, CreateGate, Done, LogOptions, Observed, Orchestrator, OrchestratorError, Ownership,
    RemoveReason, RunState, Workload, LABEL_AGENT, LABEL_INSTANCE, LABEL_MANAGED, LABEL_RETAIN,
    LABEL_STORE, LABEL_UID,
};

#[cfg(any(test, feature = "testing"))]
pub mod apiserver;
mod client;
mod lease;
mod objects;
pub mod plan;
pub mod render;
#[cfg(test)]
mod tests;

use client::{connect, map_err, status_code};
use plan::Create;

/// Where the cluster is and which part of it is this Hive's.
#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    /// The namespace agents live in (None: the service account's, or the kubeconfig's).
    pub namespace: Option<String>,
    /// A kubeconfig file (None: the in-cluster service account, else the usual
    /// `KUBECONFIG` / `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// The Hive instance: every object made carries it.
    pub instance: String,
    /// How long one API call may take.
    pub timeout: Duration,
}

/// The Kubernetes backend. Connects lazily: building one does no I/O.
#[derive(Clone)]
pub struct KubernetesOrchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KubernetesSettings,
    /// The client and the namespace, once connected.
    client: tokio::sync::OnceCell<(Client, String)>,
}

impl KubernetesOrchestrator {
    pub fn new(settings: KubernetesSettings) -> Self {
        KubernetesOrchestrator {
            inner: Arc::new(Inner {
                settings,
                client: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// A backend over a client already made (tests hand it one over a mock server).
    pub fn with_client(client: Client, namespace: &str, instance: &str) -> Self {
        let settings = KubernetesSettings {
            namespace: Some(namespace.to_string()),
            kubeconfig: None,
            instance: instance.to_string(),
            timeout: Duration::from_secs(30),
        };
        KubernetesOrchestrator {
            inner: Arc::new(Inner {
                settings,
                client: tokio::sync::OnceCell::new_with(Some((client, namespace.to_string()))),
            }),
        }
    }

    fn instance(&self) -> &str {
        &self.inner.settings.instance
    }

    /// The client and namespace (connecting on first use), as a future that owns what it
    /// needs, so that streams can start from it.
    fn connection(
        &self,
    ) -> impl std::future::Future<Output = Result<(Client, String), OrchestratorError>> + 'static
    {
        let inner = self.inner.clone();
        async move {
            inner
                .client
                .get_or_try_init(|| connect(&inner.settings))
                .await
                .cloned()
        }
    }

    async fn api<K>(&self) -> Result<Api<K>, OrchestratorError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        let (client, ns) = self.connection().await?;
        Ok(Api::namespaced(client, &ns))
    }

    /// Runs one API call under the deadline.
    async fn call<T>(
        &self,
        call: &'static str,
        f: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>, OrchestratorError> {
        let limit = self.inner.settings.timeout;
        tokio::time::timeout(limit, f)
            .await
            .map_err(|_| OrchestratorError::Timeout {
                call,
                secs: limit.as_secs(),
            })
    }

    /// This instance's Pods (of one agent when given).
    async fn pods(&self, agent: Option<&str>) -> Result<Vec<Pod>, OrchestratorError> {
        let api: Api<Pod> = self.api().await?;
        let params = ListParams::default().labels(&render::selector(self.instance(), agent));
        let list = self
            .call("list pods", api.list(&params))
            .await?
            .map_err(map_err)?;
        Ok(list.items)
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[async_trait]
impl Orchestrator for KubernetesOrchestrator {
    async fn ping(&self) -> Result<(), OrchestratorError> {
        // Not /version, which anyone may read: this asks what the backend needs (a list
        // of the instance's Pods), so a Role that lost its verbs is not "reachable".
        let api: Api<Pod> = self.api().await?;
        let params = ListParams::default()
            .labels(&render::selector(self.instance(), None))
            .limit(1);
        self.call("list pods", api.list_metadata(&params))
            .await?
            .map(|_| ())
            .map_err(map_err)
    }

    async fn list(&self) -> Result<Vec<Observed>, OrchestratorError> {
        // Pods already being deleted are left out: removing them again at every resync
        // (one on a lost node terminates for ever) would only say "removed" again. An
        // agent's own pass still sees them (observe), and waits for them.
        Ok(self
            .pods(None)
            .await?
            .iter()
            .filter_map(render::observed)
            .filter(|o| o.state != RunState::Terminating)
            .map(|o| Observed { restarts: 0, ..o })
            .collect())
    }

    async fn observe(&self, agent: &str) -> Result<Vec<Observed>, OrchestratorError> {
        Ok(self
            .pods(Some(agent))
            .await?
            .iter()
            .filter_map(render::observed)
            .collect())
    }

    async fn apply(
        &self,
        want: &Workload,
        ownership: &Ownership,
        gate: &dyn CreateGate,
    ) -> Result<Applied, OrchestratorError> {
        let uid = want.uid.to_string();
        let pods = self.pods(Some(&want.agent)).await?;
        let all: Vec<(Observed, &Pod)> = pods
            .iter()
            .filter_map(|p| render::observed(p).map(|o| (o, p)))
            .collect();
        let observed: Vec<Observed> = all.iter().map(|(o, _)| o.clone()).collect();
        let selection = super::select(want, &observed, ownership);
        let plan = plan::plan_selected(want, &selection);
        // Another store's Pod carries the agent (for an agent to make, or a stopped one,
        // whose start would meet it): leave it alone and say so.
        selection.refuse_foreign(want, plan.create.is_some())?;
        let mine: Vec<&(Observed, &Pod)> = all
            .iter()
            .filter(|(o, _)| ownership.owns(o, Some(&uid)))
            .collect();
        if plan.create.is_some() && !plan.waiting && !gate.may_create() {
            return Err(OrchestratorError::CreateDeferred);
        }
        let mut applied = Applied {
            current: plan.keeper.clone(),
            note: None,
            done: Vec::new(),
        };
        for (id, reason) in &plan.remove {
            self.delete_pod(id).await?;
            applied.done.push(Done::Removed {
                id: id.clone(),
                reason: *reason,
            });
        }
        for id in &plan.stop {
            self.delete_pod(id).await?;
            applied.done.push(match &plan.create {
                Some(Create::Restart) => Done::Restarted { id: id.clone() },
                Some(Create::Repair { exit_code }) => Done::Repaired {
                    id: id.clone(),
                    exit_code: *exit_code,
                },
                _ if !want.intent.runs() => Done::Stopped { id: id.clone() },
                // A finished Pod started again: the new one says so.
                _ => continue,
            });
        }
        let Some(_) = plan.create.as_ref().filter(|_| !plan.waiting) else {
            applied.note = if plan.waiting {
                Some("waiting for the old Pod to terminate".into())
            } else {
                plan.keeper.as_ref().and_then(|k| {
                    mine.iter()
                        .find(|(o, _)| o.id == k.id)
                        .and_then(|(_, p)| render::waiting_note(p))
                })
            };
            if let Some((k, pod)) = plan
                .keeper
                .as_ref()
                .and_then(|k| mine.iter().find(|(o, _)| o.id == k.id).map(|m| (k, m.1)))
            {
                // Its name and environment, in case they went (by hand, or a Hive that
                // stopped halfway through making them).
                self.ensure_service(want).await?;
                self.repair_secret(want, &k.id, pod).await?;
            }
            return Ok(applied);
        };
        let pod = self.create_pod(want).await?;
        gate.created();
        let made = render::observed(&pod).unwrap_or_else(|| Observed {
            id: pod.metadata.name.clone().unwrap_or_default(),
            agent: want.agent.clone(),
            uid: uid.clone(),
            spec_hash: want.hash(),
            store: Some(want.store.clone()),
            state: RunState::Starting,
            restarts: 0,
            created: unix_ms() / 1000,
        });
        let id = made.id.clone();
        applied.done.push(Done::Created {
            id: id.clone(),
            replacing: plan
                .remove
                .iter()
                .any(|(_, r)| *r == RemoveReason::SpecChanged),
        });
        applied.done.push(Done::Started { id });
        applied.current = Some(made);
        Ok(applied)
    }

    async fn remove(
        &self,
        ids: &[String],
        reason: RemoveReason,
    ) -> Result<Vec<Done>, OrchestratorError> {
        let mut done = Vec::new();
        for id in ids {
            let gone = self.delete_pod(id).await?;
            if matches!(reason, RemoveReason::AgentDeleted | RemoveReason::NoAgent) {
                let labels = gone.and_then(|p| p.metadata.labels).unwrap_or_default();
                if let (Some(agent), Some(uid)) = (labels.get(LABEL_AGENT), labels.get(LABEL_UID)) {
                    self.delete_service(agent, Some(uid)).await?;
                }
            }
            done.push(Done::Removed {
                id: id.clone(),
                reason,
            });
        }
        Ok(done)
    }

    async fn remove_volumes(&self, agent: &str, uid: Uuid) -> Result<(), OrchestratorError> {
        self.delete_service(agent, Some(&uid.to_string())).await?;
        let api: Api<PersistentVolumeClaim> = self.api().await?;
        let params = ListParams::default().labels(&format!(
            "{},{LABEL_UID}={uid}",
            render::selector(self.instance(), Some(agent)),
        ));
        let claims = self
            .call("list claims", api.list(&params))
            .await?
            .map_err(map_err)?;
        for c in claims.items {
            let keep = c
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_RETAIN))
                .is_some_and(|r| r == "true");
            let Some(name) = c.metadata.name.filter(|_| !keep) else {
                continue;
            };
            match self
                .call("delete claim", api.delete(&name, &DeleteParams::default()))
                .await?
            {
                Ok(_) => {}
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(())
    }

    async fn pull(&self, _image: &str) -> Result<(), OrchestratorError> {
        // The kubelet pulls images itself; a failure shows as the Pod's waiting reason.
        Ok(())
    }

    async fn cpu_time(&self, _id: &str) -> Result<Option<u64>, OrchestratorError> {
        // No cumulative counter through the API server (metrics.k8s.io has rates only):
        // without a reading, an agent is never stopped for idleness.
        Ok(None)
    }

    fn logs(
        &self,
        id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<Vec<u8>, OrchestratorError>> {
        let params = LogParams {
            container: Some(render::CONTAINER.to_string()),
            follow: options.follow,
            tail_lines: options.tail.map(|n| n.min(i64::MAX as u64) as i64),
            since_seconds: options.since.map(|s| (unix_ms() / 1000 - s).max(1)),
            ..Default::default()
        };
        let id = id.to_string();
        let connection = self.connection();
        stream::once(async move {
            let (client, ns) = connection.await?;
            let api: Api<Pod> = Api::namespaced(client, &ns);
            let reader = api.log_stream(&id, &params).await.map_err(map_err)?;
            Ok::<_, OrchestratorError>(stream::unfold(Box::pin(reader), |mut reader| async move {
                use futures_util::io::AsyncReadExt;
                let mut buf = vec![0u8; 16 * 1024];
                match reader.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(buf), reader))
                    }
                    Err(e) => Some((
                        Err(OrchestratorError::Unavailable(format!("reading logs: {e}"))),
                        reader,
                    )),
                }
            }))
        })
        .try_flatten()
        .boxed()
    }

    async fn exec(
        &self,
        _id: &str,
        _uid: Uuid,
        _spec: &super::ExecSpec,
    ) -> Result<super::ExecOutput, OrchestratorError> {
        Err(OrchestratorError::Unsupported(
            "exec is not available on the Kubernetes backend yet (it is on Docker); use kubectl exec with the cluster's own credentials meanwhile".into(),
        ))
    }

    async fn address(&self, _id: &str, _uid: Uuid) -> Result<std::net::IpAddr, OrchestratorError> {
        Err(OrchestratorError::Unsupported(
            "port-forward is not available on the Kubernetes backend yet (it is on Docker)".into(),
        ))
    }

    async fn read_archive(
        &self,
        _id: &str,
        _uid: Uuid,
        _path: &str,
        _max: usize,
    ) -> Result<Vec<u8>, OrchestratorError> {
        Err(OrchestratorError::Unsupported(
            "reading an agent's files is not available on the Kubernetes backend yet (it is on Docker)".into(),
        ))
    }

    async fn write_archive(
        &self,
        _id: &str,
        _uid: Uuid,
        _dir: &str,
        _tar: Vec<u8>,
    ) -> Result<(), OrchestratorError> {
        Err(OrchestratorError::Unsupported(
            "writing an agent's files is not available on the Kubernetes backend yet (it is on Docker)".into(),
        ))
    }

    fn events(&self) -> BoxStream<'static, Result<String, OrchestratorError>> {
        use kube::runtime::watcher::{self, Event};
        let selector = render::selector(self.instance(), None);
        let connection = self.connection();
        stream::once(async move {
            let (client, ns) = connection.await?;
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            Ok::<_, OrchestratorError>(
                watcher::watcher(pods, watcher::Config::default().labels(&selector))
                    .map_err(|e| OrchestratorError::Unavailable(format!("watching Pods: {e}"))),
            )
        })
        .try_flatten()
        // The caller subscribes again after an error: the watcher's own retry would spin.
        .scan(false, |failed, item| {
            if *failed {
                return futures_util::future::ready(None);
            }
            *failed = item.is_err();
            futures_util::future::ready(Some(item))
        })
        .filter_map(|item| {
            futures_util::future::ready(match item {
                Ok(Event::Apply(p) | Event::Delete(p) | Event::InitApply(p)) => p
                    .metadata
                    .labels
                    .and_then(|l| l.get(LABEL_AGENT).cloned())
                    .map(Ok),
                Ok(Event::Init | Event::InitDone) => None,
                Err(e) => Some(Err(e)),
            })
        })
        .boxed()
    }
}

/// The backend over a mock API server (kube-rs's way of testing controllers): every
/// request Hive makes reaches the returned handle as an `http::Request` with its whole
/// body, and is answered with what the test's server sends back.
#[cfg(any(test, feature = "testing"))]
pub fn mock(namespace: &str, instance: &str) -> (KubernetesOrchestrator, mock::Handle) {
    let (service, handle) = tower_test::mock::pair::<mock::Request, mock::Response>();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let mut service = service.clone();
        async move {
            use http_body_util::BodyExt;
            use tower::{Service, ServiceExt};
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            service.ready().await?;
            service.call(http::Request::from_parts(parts, body)).await
        }
    });
    let client = Client::new(service, namespace);
    (
        KubernetesOrchestrator::with_client(client, namespace, instance),
        handle,
    )
}

/// The types a mock API server deals in.
#[cfg(any(test, feature = "testing"))]
pub mod mock {
    /// A request with its whole body.
    pub type Request = http::Request<bytes::Bytes>;
    /// An answer; its body may stream (a watch).
    pub type Response =
        http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>>;
    pub type Handle = tower_test::mock::Handle<Request, Response>;
}
