//! The Kubernetes backend's pure half: what Kubernetes objects an agent's [`Workload`]
//! becomes and what a Pod means in the orchestrator's neutral terms (what to do with the
//! Pods an agent has is [`super::plan`]). No I/O, so every mapping is unit-tested (and rendered for the
//! schema check in `deployment/kubernetes/rendered/`).
//!
//! The mapping, and why:
//! - An agent is a **Pod** (not a StatefulSet): the controller already does what a
//!   StatefulSet of one would (one workload per agent, replaced on a spec change, recreated
//!   when lost), and a bare Pod keeps one object between Hive and the kubelet, so the
//!   status Hive reports is the Pod's own. Stopping a running agent deletes its Pod
//!   (as a Deployment scaled to zero); a Pod that had already finished when its agent was
//!   stopped is kept with its logs, as Docker keeps an exited container, because both
//!   backends take the one decision in `orchestrator::converge`. Pod names are `<agent>-<5 random>`, so no name is reused; a replacement
//!   is made once the old Pod has terminated, so that two never share the volumes.
//! - The environment goes into a **Secret** named as the Pod and owned by it (an
//!   ownerReference), mounted with `envFrom`: no value is in the Pod spec, and the
//!   Secret goes when the Pod goes.
//! - Named volumes are **PersistentVolumeClaims** (`hive.<instance>.<agent>.<volume>`,
//!   1Gi ReadWriteOnce, the cluster's default storage class), labelled as Docker's
//!   volumes are, checked the same way before they are mounted, and removed with the
//!   agent unless `retain` says keep.
//! - `hive-net` is a headless **Service** per agent named after it (selecting the agent's
//!   Pods by instance and agent label), so agents reach each other by name as on Docker;
//!   the namespace's NetworkPolicy (in `deployment/kubernetes/`) keeps others out.
//! - The hardening is the restricted Pod Security Standard: runAsNonRoot,
//!   allowPrivilegeEscalation false, every capability dropped and only the policy's
//!   allowed ones added back, seccomp RuntimeDefault; no service account token and no
//!   service links, so an agent holds no cluster credentials. The image's own user runs
//!   (it must be numeric and not root), with fsGroup 65532 so it can write its volumes.
//!   Resources become limits (requests default to them). Kubernetes has no per-Pod
//!   process limit (`pids`): the kubelet's podPidsLimit applies instead.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvFromSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, Secret, SecretEnvSource, SecurityContext, Service, ServiceSpec,
    Volume as PodVolume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;

use crate::agent::RestartPolicy;
use crate::orchestrator::{
    Holder, Lease, Observed, RunState, Workload, LABEL_AGENT, LABEL_INSTANCE, LABEL_MANAGED,
    LABEL_OWNER, LABEL_RETAIN, LABEL_SPEC_HASH, LABEL_STORE, LABEL_UID, LABEL_VOLUME,
};

/// The agent's container in its Pod.
pub const CONTAINER: &str = "agent";
/// How long a Pod has to stop before it is killed (Docker's stop grace, too).
pub const STOP_GRACE_SECS: i64 = 10;
/// The group that owns the agent's volumes (and is one of its process's groups).
pub const FS_GROUP: i64 = 65532;
/// The size asked for a volume: the spec has none, and most classes round up anyway.
pub const VOLUME_SIZE: &str = "1Gi";

/// The labels every object made for `want` carries.
pub fn labels(instance: &str, want: &Workload) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_STORE.to_string(), want.store.clone()),
        (LABEL_AGENT.to_string(), want.agent.clone()),
        (LABEL_UID.to_string(), want.uid.to_string()),
        (LABEL_OWNER.to_string(), want.owner.clone()),
    ])
}

/// The label selector of this instance's objects (of one agent when given).
pub fn selector(instance: &str, agent: Option<&str>) -> String {
    let mut s = format!("{LABEL_MANAGED}=true,{LABEL_INSTANCE}={instance}");
    if let Some(a) = agent {
        s.push_str(&format!(",{LABEL_AGENT}={a}"));
    }
    s
}

/// The claim name of an agent's volume in this instance: joined by `.`, which no
/// instance, agent or volume name holds, so no two (instance, agent, volume) share one.
pub fn claim_name(instance: &str, agent: &str, volume: &str) -> String {
    format!("hive.{instance}.{agent}.{volume}")
}

/// The container runtime's default seccomp profile (the restricted standard asks for it).
fn runtime_default() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..Default::default()
    })
}

/// The Pod that runs `want`, named `name`, its environment in the Secret `name` (when
/// it has any).
pub fn pod(instance: &str, want: &Workload, name: &str) -> Pod {
    let mut labels = labels(instance, want);
    labels.insert(LABEL_SPEC_HASH.to_string(), want.hash());
    let mut limits = BTreeMap::new();
    if let Some(m) = want.memory_bytes {
        limits.insert("memory".to_string(), Quantity(m.to_string()));
    }
    if let Some(n) = want.cpu_nanos {
        // Millicores, rounded up so that a small limit is not zero.
        limits.insert(
            "cpu".to_string(),
            Quantity(format!("{}m", (n + 999_999) / 1_000_000)),
        );
    }
    let container = Container {
        name: CONTAINER.to_string(),
        image: Some(want.image.clone()),
        command: want.command.clone(),
        args: want.args.clone(),
        env_from: (!want.env.0.is_empty()).then(|| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: name.to_string(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        }),
        resources: (!limits.is_empty()).then(|| ResourceRequirements {
            limits: Some(limits),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: (!want.capabilities.is_empty()).then(|| want.capabilities.clone()),
            }),
            seccomp_profile: runtime_default(),
            ..Default::default()
        }),
        volume_mounts: (!want.volumes.is_empty()).then(|| {
            want.volumes
                .iter()
                .map(|v| VolumeMount {
                    name: v.name.clone(),
                    mount_path: v.mount_path.clone(),
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some(
                match want.restart_policy {
                    RestartPolicy::Always => "Always",
                    RestartPolicy::OnFailure => "OnFailure",
                    RestartPolicy::Never => "Never",
                }
                .to_string(),
            ),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(STOP_GRACE_SECS),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                // Volumes are group-writable for the agent whatever its (non-root) user.
                fs_group: Some(FS_GROUP),
                fs_group_change_policy: Some("OnRootMismatch".to_string()),
                seccomp_profile: runtime_default(),
                ..Default::default()
            }),
            volumes: (!want.volumes.is_empty()).then(|| {
                want.volumes
                    .iter()
                    .map(|v| PodVolume {
                        name: v.name.clone(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: claim_name(instance, &want.agent, &v.name),
                            read_only: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Secret holding `want`'s environment for the Pod `name` (None without any).
pub fn env_secret(instance: &str, want: &Workload, name: &str) -> Option<Secret> {
    if want.env.0.is_empty() {
        return None;
    }
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels(instance, want)),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(
            want.env
                .0
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    })
}

/// The ownerReference that makes the Pod `name` (uid `uid`) own its Secret, so that
/// Kubernetes removes the Secret with the Pod.
pub fn owned_by_pod(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    }
}

/// The headless Service that gives `want`'s Pods the agent's name.
pub fn service(instance: &str, want: &Workload) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(want.agent.clone()),
            labels: Some(labels(instance, want)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(BTreeMap::from([
                (LABEL_INSTANCE.to_string(), instance.to_string()),
                (LABEL_AGENT.to_string(), want.agent.clone()),
            ])),
            // The name resolves while the agent starts, as a container name does.
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        status: None,
    }
}

/// The claim for `want.volumes[i]`.
pub fn claim(instance: &str, want: &Workload, i: usize) -> PersistentVolumeClaim {
    let v = &want.volumes[i];
    let mut labels = labels(instance, want);
    labels.insert(LABEL_VOLUME.to_string(), v.name.clone());
    labels.insert(LABEL_RETAIN.to_string(), v.retain.to_string());
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(instance, &want.agent, &v.name)),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(VOLUME_SIZE.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Annotations of the lease naming its holder to a person (the token is the Lease's
/// holderIdentity).
pub const LEASE_HOST: &str = "hive.lease/host";
pub const LEASE_PID: &str = "hive.lease/pid";
pub const LEASE_DATA_DIR: &str = "hive.lease/data-dir";
pub const LEASE_STORE: &str = "hive.lease/store";

/// The name of the instance's Lease.
pub fn lease_name(instance: &str) -> String {
    format!("hive-{instance}")
}

/// The Lease object of a [`Lease`] held by `holder` (None: released), to write with its
/// resourceVersion (`lease.handle`; none for a new one).
pub fn lease(instance: &str, lease: &Lease, holder: Option<&Holder>) -> KubeLease {
    let micro = |ms: i64| {
        k8s_openapi::jiff::Timestamp::from_millisecond(ms)
            .ok()
            .map(MicroTime)
    };
    let annotations = holder.map(|h| {
        [
            (LEASE_HOST, h.host.clone()),
            (LEASE_PID, h.pid.to_string()),
            (LEASE_DATA_DIR, h.data_dir.clone()),
            (LEASE_STORE, h.store.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    });
    KubeLease {
        metadata: ObjectMeta {
            name: Some(lease_name(instance)),
            resource_version: (!lease.handle.is_empty()).then(|| lease.handle.clone()),
            labels: Some([(LABEL_INSTANCE.to_string(), instance.to_string())].into()),
            annotations,
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(|h| h.token.clone()),
            acquire_time: micro(lease.acquired_ms),
            renew_time: micro(lease.renewed_ms),
            // Whole seconds, rounded up: never shorter than the Hive's own duration.
            lease_duration_seconds: Some(
                lease
                    .duration
                    .as_secs_f64()
                    .ceil()
                    .clamp(1.0, i32::MAX as f64) as i32,
            ),
            lease_transitions: Some(lease.transitions.min(i32::MAX as u64) as i32),
            ..Default::default()
        }),
    }
}

/// A Pod of the instance in the orchestrator's terms (None for one without a name).
pub fn observed(pod: &Pod) -> Option<Observed> {
    let meta = &pod.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    let label = |k: &str| labels.get(k).cloned();
    let status = pod.status.clone().unwrap_or_default();
    let container = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)
        .cloned();
    let restarts = container
        .as_ref()
        .map_or(0, |c| c.restart_count.max(0) as u64);
    let state = if meta.deletion_timestamp.is_some() {
        RunState::Terminating
    } else {
        match status.phase.as_deref() {
            Some("Succeeded") | Some("Failed") => RunState::Exited {
                code: container
                    .as_ref()
                    .and_then(|c| c.state.as_ref())
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code as i64),
            },
            Some("Running")
                if container
                    .as_ref()
                    .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())) =>
            {
                RunState::Running
            }
            // Pending (scheduling, pulling), or Running while the kubelet restarts it.
            _ => RunState::Starting,
        }
    };
    Some(Observed {
        id: meta.name.clone()?,
        agent: label(LABEL_AGENT).unwrap_or_default(),
        uid: label(LABEL_UID).unwrap_or_default(),
        spec_hash: label(LABEL_SPEC_HASH).unwrap_or_default(),
        store: label(LABEL_STORE),
        state,
        restarts,
        created: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    })
}

/// Why the agent's container waits, as the kubelet says (`ImagePullBackOff`, ...).
pub fn waiting_reason(pod: &Pod) -> Option<&str> {
    waiting(pod)?.reason.as_deref()
}

fn waiting(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStateWaiting> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)?
        .state
        .as_ref()?
        .waiting
        .as_ref()
}

/// What is holding a Pod back, when the status should say so: the scheduler (no node
/// fits, a claim is not bound) or the kubelet (an image it cannot pull, a config it
/// cannot use, a crash loop).
pub fn waiting_note(pod: &Pod) -> Option<String> {
    let unscheduled = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        let reason = c.reason.as_deref().unwrap_or("Unschedulable");
        return Some(match &c.message {
            Some(m) => format!("the scheduler says {reason}: {m}"),
            None => format!("the scheduler says {reason}"),
        });
    }
    let waiting = waiting(pod)?;
    let reason = waiting.reason.as_deref()?;
    if matches!(reason, "ContainerCreating" | "PodInitializing") {
        return None;
    }
    Some(match &waiting.message {
        Some(m) => format!("the kubelet says {reason}: {m}"),
        None => format!("the kubelet says {reason}"),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::agent::{Env, Volume};

    pub(crate) fn workload() -> Workload {
        Workload {
            image: "img:1".into(),
            command: Some(vec!["/bin/sleep".into()]),
            args: Some(vec!["3600".into()]),
            env: Env([("TOKEN".to_string(), "hunter2".to_string())].into()),
            memory_bytes: Some(64 << 20),
            cpu_nanos: Some(250_000_000),
            pids: Some(64),
            capabilities: vec!["NET_BIND_SERVICE".into()],
            volumes: vec![Volume {
                name: "data".into(),
                mount_path: "/data".into(),
                retain: true,
                adopt_retained: false,
            }],
            ..Workload::example()
        }
    }

    pub(crate) fn seen(id: &str, state: RunState) -> Observed {
        let w = workload();
        Observed {
            id: id.into(),
            agent: "a".into(),
            uid: w.uid.to_string(),
            spec_hash: w.hash(),
            store: Some("s".into()),
            state,
            restarts: 0,
            created: 1,
        }
    }

    #[test]
    fn the_pod_is_hardened_and_holds_no_secret() {
        let w = workload();
        let pod = pod("i", &w, "a-x1y2z");
        let json = serde_json::to_string(&pod).unwrap();
        assert!(!json.contains("hunter2"), "the value lives in the Secret");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        let c = &spec.containers[0];
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, Some(vec!["NET_BIND_SERVICE".to_string()]));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let limits = c.resources.clone().unwrap().limits.unwrap();
        assert_eq!(limits["memory"].0, "67108864");
        assert_eq!(limits["cpu"].0, "250m");
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "a-x1y2z"
        );
        assert_eq!(
            spec.volumes.unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "hive.i.a.data"
        );
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_SPEC_HASH], w.hash());
        assert_eq!(labels[LABEL_INSTANCE], "i");
        assert_eq!(labels[LABEL_UID], w.uid.to_string());
        let secret = env_secret("i", &w, "a-x1y2z").unwrap();
        assert_eq!(secret.data.unwrap()["TOKEN"].0, b"hunter2");
        let claim = claim("i", &w, 0);
        assert_eq!(claim.metadata.labels.unwrap()[LABEL_RETAIN], "true");
    }

    #[test]
    fn pod_phases_map_to_run_states() {
        let pod = |phase: &str, container: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "a-1", "labels": {"hive.agent": "a", "hive.uid": "u", "hive.spec-hash": "h"},
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"phase": phase, "containerStatuses": [container]}
            }))
            .unwrap()
        };
        let status = |state: serde_json::Value, restarts: i32| {
            serde_json::json!({"name": "agent", "image": "i", "imageID": "", "ready": true,
                               "restartCount": restarts, "state": state})
        };
        let running = observed(&pod(
            "Running",
            status(serde_json::json!({"running": {}}), 2),
        ))
        .unwrap();
        assert_eq!((running.state, running.restarts), (RunState::Running, 2));
        assert_eq!(running.created, 1_767_225_600);
        let crashing = pod(
            "Running",
            status(
                serde_json::json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}),
                3,
            ),
        );
        assert_eq!(observed(&crashing).unwrap().state, RunState::Starting);
        assert_eq!(
            waiting_note(&crashing).unwrap(),
            "the kubelet says CrashLoopBackOff: back-off 10s"
        );
        let done = observed(&pod(
            "Failed",
            status(serde_json::json!({"terminated": {"exitCode": 3}}), 0),
        ))
        .unwrap();
        assert_eq!(done.state, RunState::Exited { code: Some(3) });
    }

    /// The objects an agent becomes (and the instance's Lease), as
    /// deployment/kubernetes/rendered/agent.json keeps them for the schema check (kubernetes-validate, in test_manifests.py). Set
    /// HIVE_UPDATE_RENDERED=1 to write them after a change of the mapping.
    #[test]
    fn the_rendered_objects_are_those_checked_against_the_schema() {
        let w = workload();
        let name = "a-x1y2z";
        let holder = Holder {
            token: "5f1b2c3d-0000-4000-8000-000000000002".into(),
            host: "hive-0".into(),
            pid: 1,
            data_dir: "/data".into(),
            store: "s".into(),
        };
        let mut secret = env_secret("i", &w, name).unwrap();
        secret.metadata.owner_references = Some(vec![owned_by_pod(
            name,
            "5f1b2c3d-0000-4000-8000-000000000001",
        )]);
        let items = vec![
            serde_json::to_value(pod("i", &w, name)).unwrap(),
            serde_json::to_value(secret).unwrap(),
            serde_json::to_value(service("i", &w)).unwrap(),
            serde_json::to_value(claim("i", &w, 0)).unwrap(),
            serde_json::to_value(lease(
                "i",
                &Lease {
                    holder: holder.clone(),
                    acquired_ms: 1_767_225_600_000,
                    renewed_ms: 1_767_225_605_250,
                    duration: std::time::Duration::from_millis(15_500),
                    transitions: 2,
                    handle: "41".into(),
                },
                Some(&holder),
            ))
            .unwrap(),
        ];
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        // JSON, as Hive sends it (YAML would turn the Lease's times into timestamps).
        let rendered = serde_json::to_string_pretty(&list).unwrap() + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deployment/kubernetes/rendered/agent.json");
        if std::env::var_os("HIVE_UPDATE_RENDERED").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &rendered).unwrap();
        }
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept == rendered,
            "{} is not what the backend renders now; run this test with HIVE_UPDATE_RENDERED=1 and check the difference",
            path.display()
        );
        assert!(!rendered.contains("hunter2"), "data is base64");
    }
}
