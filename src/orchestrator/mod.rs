//! The one door to where agents run. The controller decides *what* each agent should be,
//! a neutral [`Workload`] (image, command, environment, limits, volumes, whether it runs),
//! and a backend makes it so and reports what runs ([`Observed`]): no engine's vocabulary
//! (create-then-start, unpause, Docker's restart states) crosses this trait, so the
//! Docker backend ([`docker`]) and a Kubernetes backend stand side by side.
//!
//! Every backend is bound to one Hive *instance*: it lists, changes and removes only what
//! carries that instance, and stamps what it makes with the instance and the declaring
//! store ([`Workload::store`]). Which store made a workload is reported
//! ([`Observed::store`]); a Hive leaves another store's workloads alone ([`Ownership`]).
//!
//! A backend also keeps the instance's [`Lease`] (Kubernetes' leader election, kept on the
//! engine itself), so that only one Hive reconciles an instance at a time.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::agent::{Env, RestartPolicy, Volume};

pub use converge::{decide, select, step, Intent, Ownership, Selection, Step};

mod converge;
pub mod docker;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod kubernetes;

/// Label every Hive container (and object) carries.
pub const LABEL_MANAGED: &str = "hive.managed";
/// Label naming the Hive instance that owns a container or object.
pub const LABEL_INSTANCE: &str = "hive.instance";
/// Label naming the store that declared a container.
pub const LABEL_STORE: &str = "hive.store";
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

/// Whether a label key is in Hive's own namespace (`hive.*`), which only Hive sets.
pub fn is_hive_label(key: &str) -> bool {
    key.to_ascii_lowercase().starts_with("hive.")
}
/// Whether the volume `name` (the agent's `spec.volumes[i]`), whose labels `label` reads,
/// may be mounted for the agent of `spec` on `instance`: only one made by Hive for this
/// instance and owner, for this agent (same uid), or retained by an earlier agent of the
/// name when the volume says `adoptRetained`. Every backend asks this before mounting.
pub fn may_mount<'a>(
    instance: &str,
    spec: &Workload,
    i: usize,
    name: &str,
    label: impl Fn(&str) -> Option<&'a str>,
) -> Result<(), OrchestratorError> {
    let refuse = |why: String| {
        Err(OrchestratorError::VolumeConflict(format!(
            "spec.volumes[{i}]: volume {name} {why}"
        )))
    };
    if label(LABEL_MANAGED) != Some("true") || label(LABEL_INSTANCE).is_none() {
        return refuse(
            "exists but was not made by Hive; it is never mounted (remove or rename it)".into(),
        );
    }
    if label(LABEL_INSTANCE) != Some(instance) {
        return refuse("belongs to another Hive instance; it is never mounted here".into());
    }
    if label(LABEL_OWNER) != Some(spec.owner.as_str()) {
        return refuse("belongs to another owner; it is never mounted for this agent".into());
    }
    let volume = &spec.volumes[i];
    if label(LABEL_AGENT) != Some(spec.agent.as_str())
        || label(LABEL_VOLUME) != Some(volume.name.as_str())
    {
        return refuse(
            "was made for another agent or volume name; it is never mounted for this one".into(),
        );
    }
    if label(LABEL_UID) == Some(spec.uid.to_string().as_str()) {
        return Ok(());
    }
    if label(LABEL_RETAIN) == Some("true") && volume.adopt_retained {
        tracing::info!(volume = %name, "mounting a volume retained from an earlier agent of this name, as adoptRetained says");
        return Ok(());
    }
    if label(LABEL_RETAIN) == Some("true") {
        return refuse(
            "holds data retained from an earlier agent of this name; set adoptRetained: true \
             on the volume to mount it, or remove the volume"
                .into(),
        );
    }
    refuse("belongs to another agent of this name; it is never mounted for this one".into())
}

/// What an agent should be, in no engine's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// The agent's name: its name on the agents' network too.
    pub agent: String,
    /// The agent's uid: a deleted and re-created agent never takes over its predecessor's
    /// workload.
    pub uid: Uuid,
    /// Whose agent it is.
    pub owner: String,
    /// The store that declares it, stamped on what the backend makes.
    pub store: String,
    pub image: String,
    /// Replaces the image's entrypoint (Kubernetes' `command`).
    pub command: Option<Vec<String>>,
    /// Replaces the image's default arguments (Kubernetes' `args`).
    pub args: Option<Vec<String>>,
    /// The environment, secrets resolved; its `Debug` hides the values.
    pub env: Env,
    pub restart_policy: RestartPolicy,
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU.
    pub cpu_nanos: Option<i64>,
    /// Most processes at once (the backend's default when None).
    pub pids: Option<i64>,
    /// Capabilities added back after all are dropped, already checked by the policy.
    pub capabilities: Vec<String>,
    pub volumes: Vec<Volume>,
    /// Whether it should run, and what Hive knows of its history (a restart asked for,
    /// a start after a declared stop).
    pub intent: Intent,
}

impl Workload {
    /// A stable digest of everything that shapes the workload (16 bytes of SHA-256 over
    /// its JSON). A change recreates it; whether it runs, or a restart asked for, does
    /// not. (The fields and their names are those of every earlier Hive, so an upgrade
    /// recreates nothing.)
    pub fn hash(&self) -> String {
        #[derive(Serialize)]
        struct Shape<'a> {
            agent: &'a str,
            uid: Uuid,
            owner: &'a str,
            image: &'a str,
            command: &'a Option<Vec<String>>,
            args: &'a Option<Vec<String>>,
            env: &'a Env,
            restart_policy: RestartPolicy,
            memory_bytes: Option<i64>,
            nano_cpus: Option<i64>,
            pids_limit: Option<i64>,
            capabilities: &'a [String],
            volumes: &'a [Volume],
        }
        let shape = Shape {
            agent: &self.agent,
            uid: self.uid,
            owner: &self.owner,
            image: &self.image,
            command: &self.command,
            args: &self.args,
            env: &self.env,
            restart_policy: self.restart_policy,
            memory_bytes: self.memory_bytes,
            nano_cpus: self.cpu_nanos,
            pids_limit: self.pids,
            capabilities: &self.capabilities,
            volumes: &self.volumes,
        };
        let json = serde_json::to_vec(&shape).expect("a workload always serializes");
        hex::encode(&Sha256::digest(&json)[..16])
    }
}

#[cfg(test)]
impl Workload {
    /// For tests: agent `a` (uid 7) of owner `o` in store `s`, image `img`, running, with
    /// nothing else set.
    pub(crate) fn example() -> Workload {
        Workload {
            agent: "a".into(),
            uid: Uuid::from_u128(7),
            owner: "o".into(),
            store: "s".into(),
            image: "img".into(),
            command: None,
            args: None,
            env: crate::agent::Env::default(),
            restart_policy: RestartPolicy::Always,
            memory_bytes: None,
            cpu_nanos: None,
            pids: None,
            capabilities: vec![],
            volumes: vec![],
            intent: Intent::Run,
        }
    }
}

/// How a workload's process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Made and never started: it needs a start (Docker's created container).
    Created,
    /// On its way to running: being started, by the engine after an exit too.
    Starting,
    Running,
    /// Frozen from outside Hive (Docker's pause).
    Suspended,
    /// Its process exited with this code (None when the engine did not say).
    Exited {
        code: Option<i64>,
    },
    /// Being removed, or dead: about to disappear.
    Terminating,
}

/// One workload of the instance, as the backend sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The backend's id of it (a container id on Docker).
    pub id: String,
    pub agent: String,
    /// The uid it was made for (may be garbage on one added out of band).
    pub uid: String,
    /// The [`Workload::hash`] it was made from.
    pub spec_hash: String,
    /// The store that declared it (None on workloads made before stores were stamped, or
    /// by hand).
    pub store: Option<String>,
    pub state: RunState,
    /// How often the engine started it again after an exit (known when observed for one
    /// agent; 0 in a listing).
    pub restarts: u64,
    /// Unix seconds of creation: the newest of duplicates is kept.
    pub created: i64,
}

/// Why a backend removed a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Its agent's spec changed.
    SpecChanged,
    /// It belongs to an earlier agent of the same name.
    EarlierAgent,
    /// Another workload carries the agent.
    Duplicate,
    /// Its agent is being deleted.
    AgentDeleted,
    /// No agent of its name exists.
    NoAgent,
}

impl RemoveReason {
    /// Why a workload of an agent that is not the one kept goes: it was made for an
    /// earlier agent of the name (`uid`), from another spec (`spec_hash`), or it is a
    /// duplicate. `want_uid` and `want_hash` are the agent's now.
    pub fn of_extra(want_uid: &str, want_hash: &str, uid: &str, spec_hash: &str) -> Self {
        if uid != want_uid {
            RemoveReason::EarlierAgent
        } else if spec_hash != want_hash {
            RemoveReason::SpecChanged
        } else {
            RemoveReason::Duplicate
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RemoveReason::SpecChanged => "the spec changed",
            RemoveReason::EarlierAgent => "it belongs to an earlier agent of that name",
            RemoveReason::Duplicate => "it duplicates the agent's container",
            RemoveReason::AgentDeleted => "its agent is being deleted",
            RemoveReason::NoAgent => "its agent does not exist",
        }
    }
}

/// One thing a backend did, for the agent's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    Removed {
        id: String,
        reason: RemoveReason,
    },
    /// A removal the engine had confirmed earlier, yet the workload is still there.
    SurvivedRemoval {
        id: String,
        ago: Duration,
    },
    Created {
        id: String,
        replacing: bool,
    },
    Started {
        id: String,
    },
    /// Started again: it had stopped outside Hive.
    Repaired {
        id: String,
        exit_code: Option<i64>,
    },
    Stopped {
        id: String,
    },
    /// Unfrozen: it had been suspended outside Hive.
    Resumed {
        id: String,
    },
    /// Restarted once, as asked.
    Restarted {
        id: String,
    },
}

/// What [`Orchestrator::apply`] left behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// The workload carrying the agent now (None while an old one is still going away).
    pub current: Option<Observed>,
    /// What the engine is doing about it, in words, when the status should say so.
    pub note: Option<String>,
    /// What the backend did, in order.
    pub done: Vec<Done>,
}

/// Asked by a backend right before it makes a new workload for an agent: the storm guard
/// may say not now.
pub trait CreateGate: Send + Sync {
    /// Whether a new workload may be made now.
    fn may_create(&self) -> bool;
    /// A new workload was made (one that failed before it existed, such as one whose
    /// image must be pulled first, is not).
    fn created(&self) {}
}

/// A gate that always says yes.
pub struct AlwaysCreate;

impl CreateGate for AlwaysCreate {
    fn may_create(&self) -> bool {
        true
    }
}

/// Who holds (or asks for) an instance's lease: enough to name the process to a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Unique per process start (a UUID): the lease's identity.
    pub token: String,
    /// The host the Hive runs on.
    pub host: String,
    pub pid: u32,
    /// The Hive's `--data-dir`, made absolute.
    pub data_dir: String,
    /// The id of the Hive's store.
    pub store: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {}, pid {}, data dir {} (store {})",
            self.host, self.pid, self.data_dir, self.store
        )
    }
}

/// The lease of one instance, as Kubernetes' coordination Lease: holder identity, acquire
/// time, renew time and duration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: Holder,
    /// When the holder took it (Unix milliseconds).
    pub acquired_ms: i64,
    /// When the holder last renewed it (Unix milliseconds, the holder's clock).
    pub renewed_ms: i64,
    /// How long it stays valid after a renewal.
    pub duration: Duration,
    /// How often the lease has changed hands.
    pub transitions: u64,
    /// The backend's handle on the lease object (a container id on Docker).
    pub handle: String,
}

/// Options for reading a workload's output.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Only the last N lines (all when None).
    pub tail: Option<u64>,
    /// Keep streaming new output.
    pub follow: bool,
    /// Only output after this time (Unix seconds).
    pub since: Option<i64>,
}

/// A command to run in a workload, once, without a terminal (`docker exec`,
/// `kubectl exec` without `-it`).
#[derive(Clone, Debug, Default)]
pub struct ExecSpec {
    /// The program and its arguments (no shell unless it names one).
    pub command: Vec<String>,
    /// Given to the command's standard input, which is then closed (None: no input).
    pub stdin: Option<Vec<u8>>,
    /// Variables added to the workload's environment for the command.
    pub env: Vec<(String, String)>,
    /// Where it runs (None: the image's working directory).
    pub working_dir: Option<String>,
    /// How long the answer is waited for; past it the output so far is answered.
    pub timeout: Duration,
    /// The most bytes kept of each of stdout and stderr; the rest is read and dropped.
    pub max_output: usize,
}

/// What a command run by [`Orchestrator::exec`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code (None: it had not exited when the time-out came).
    pub exit_code: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// More output came than `max_output` kept.
    pub truncated: bool,
    /// The time-out came first.
    pub timed_out: bool,
}

impl ExecOutput {
    /// Keeps `chunk` of stdout (or stderr) within `max`, noting what was dropped.
    pub fn keep(&mut self, stderr: bool, chunk: &[u8], max: usize) {
        let buffer = if stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let room = max.saturating_sub(buffer.len());
        buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            self.truncated = true;
        }
    }
}

/// Failures of the engine, in the orchestrator's words.
#[derive(Clone, Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The engine could not be reached at all.
    #[error("container engine unreachable: {0}")]
    Unavailable(String),
    /// The image is not on the engine: it must be pulled first.
    #[error("image {image:?} is not on the engine")]
    ImageMissing { image: String },
    /// The image is not on the engine and pulling it failed.
    #[error("image {image:?} is not on the engine and could not be pulled ({detail}); build or load it there, or fix spec.image")]
    ImageNotFound { image: String, detail: String },
    /// A workload by that name exists but is not this Hive's to touch.
    #[error("container name {name:?} is taken by a container this Hive instance does not manage; remove or rename it")]
    NameTaken { name: String },
    /// Another store's workload runs the agent on this instance.
    #[error("a container of another Hive store ({store}) runs agent {agent:?} on this instance; it is left alone (stop using that store, remove the container, or start this Hive with --adopt-foreign to replace it)")]
    HeldByForeign { agent: String, store: String },
    /// The agent's name is already a name on the agents' network: it would shadow it.
    #[error("the name {name:?} is already in use on network {network} by {holder}; an agent of that name would answer in its place, so it is not created: choose another name")]
    NameInUse {
        name: String,
        network: String,
        holder: String,
    },
    /// The image carries labels in Hive's own namespace, which its containers would
    /// inherit.
    #[error("image {image:?} carries labels in Hive's own namespace ({}): a container inherits its image's labels, and Hive's labels on a container are Hive's alone; rebuild the image without them", .labels.join(", "))]
    ImageLabels { image: String, labels: Vec<String> },
    /// A volume the spec names exists but may not be mounted for this agent.
    #[error("{0}")]
    VolumeConflict(String),
    /// The storm guard said not now (see [`CreateGate`]).
    #[error("creating a container for the agent is held back")]
    CreateDeferred,
    /// The workload vanished under us.
    #[error("container {0} no longer exists")]
    NotFound(String),
    /// The engine refused the request.
    #[error("container engine refused: {0}")]
    Refused(String),
    /// The workload is not running (stopped, exited or paused).
    #[error("the agent's container is not running")]
    NotRunning,
    /// A path in a workload that is not there.
    #[error("{0}: no such file or directory in the agent")]
    NoSuchPath(String),
    /// More than a bound allows.
    #[error("{what} is larger than {max} bytes, the most Hive moves at once")]
    TooLarge { what: String, max: usize },
    /// The backend cannot do this (yet); the message says what and where it can.
    #[error("{0}")]
    Unsupported(String),
    /// The engine accepted the request but did not answer in time.
    #[error("the container engine did not answer {call} within {secs}s")]
    Timeout { call: &'static str, secs: u64 },
    /// A lease changed under us: someone else took or holds it.
    #[error("{0}")]
    LeaseConflict(String),
}

impl OrchestratorError {
    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            OrchestratorError::Unavailable(_) => "unavailable",
            OrchestratorError::ImageMissing { .. } => "image_missing",
            OrchestratorError::ImageNotFound { .. } => "image_not_found",
            OrchestratorError::NameTaken { .. } => "name_taken",
            OrchestratorError::HeldByForeign { .. } => "held_by_foreign",
            OrchestratorError::NameInUse { .. } => "name_in_use",
            OrchestratorError::VolumeConflict(_) => "volume_conflict",
            OrchestratorError::ImageLabels { .. } => "image_labels",
            OrchestratorError::CreateDeferred => "create_deferred",
            OrchestratorError::NotFound(_) => "not_found",
            OrchestratorError::Refused(_) => "refused",
            OrchestratorError::Timeout { .. } => "timeout",
            OrchestratorError::LeaseConflict(_) => "lease_conflict",
            OrchestratorError::Unsupported(_) => "unsupported",
            OrchestratorError::NoSuchPath(_) => "no_such_path",
            OrchestratorError::NotRunning => "not_running",
            OrchestratorError::TooLarge { .. } => "too_large",
        }
    }

    /// Whether trying again soon may help without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OrchestratorError::Unavailable(_)
                | OrchestratorError::NotFound(_)
                | OrchestratorError::Timeout { .. }
        )
    }
}

/// Where agents run, seen through what Hive needs of it.
#[async_trait]
pub trait Orchestrator: Send + Sync + 'static {
    /// Answers when the engine is reachable.
    async fn ping(&self) -> Result<(), OrchestratorError>;
    /// Every workload of this instance, whatever store made it (restart counts are 0).
    async fn list(&self) -> Result<Vec<Observed>, OrchestratorError>;
    /// The workloads of this instance for one agent, whatever store made them, with
    /// restart counts.
    async fn observe(&self, agent: &str) -> Result<Vec<Observed>, OrchestratorError>;
    /// Makes the engine run `want` (or keep it stopped): replaces what carries the agent
    /// if its spec or uid differ, starts or stops it, restarts it once when asked, repairs
    /// what was done to it outside Hive, and removes strays. Only workloads `ownership`
    /// grants are touched; `gate` is asked before a new workload is made.
    /// [`OrchestratorError::ImageMissing`] when the image must be pulled first.
    async fn apply(
        &self,
        want: &Workload,
        ownership: &Ownership,
        gate: &dyn CreateGate,
    ) -> Result<Applied, OrchestratorError>;
    /// Removes these workloads (any state); says what the engine confirmed.
    async fn remove(
        &self,
        ids: &[String],
        reason: RemoveReason,
    ) -> Result<Vec<Done>, OrchestratorError>;
    /// Removes the volumes made for the agent `uid`, except those marked to be retained.
    async fn remove_volumes(&self, agent: &str, uid: Uuid) -> Result<(), OrchestratorError>;
    /// Pulls an image onto the engine.
    async fn pull(&self, image: &str) -> Result<(), OrchestratorError>;
    /// The CPU time (ns) a workload has used since it started; None when it is not
    /// running. One read, for the idle check; never polled.
    async fn cpu_time(&self, id: &str) -> Result<Option<u64>, OrchestratorError>;
    /// A workload's output, stdout and stderr interleaved.
    fn logs(
        &self,
        id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<Vec<u8>, OrchestratorError>>;
    /// Runs a command in the running workload `id` of the agent `uid` (checked against
    /// the workload's labels first) and answers its output and exit code.
    async fn exec(
        &self,
        id: &str,
        uid: Uuid,
        spec: &ExecSpec,
    ) -> Result<ExecOutput, OrchestratorError>;
    /// A tar of `path` (a file or a directory) in the workload `id` of the agent `uid`
    /// (checked against its labels first; any state), at most `max` bytes.
    async fn read_archive(
        &self,
        id: &str,
        uid: Uuid,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, OrchestratorError>;
    /// Unpacks `tar` into the existing directory `dir` of the workload `id` of the agent
    /// `uid` (checked first), its files owned by the workload's user.
    async fn write_archive(
        &self,
        id: &str,
        uid: Uuid,
        dir: &str,
        tar: Vec<u8>,
    ) -> Result<(), OrchestratorError>;
    /// The address Hive reaches the running workload `id` of the agent `uid` at (checked
    /// against its labels first), on the agents' network.
    async fn address(&self, id: &str, uid: Uuid) -> Result<std::net::IpAddr, OrchestratorError>;
    /// Names of agents whose workloads changed (made, started, died, removed, ...). The
    /// stream ends or errs when the engine goes away; callers re-subscribe.
    fn events(&self) -> BoxStream<'static, Result<String, OrchestratorError>>;
}

/// Where an instance's lease is kept (the same engine its workloads run on), for
/// [`crate::lease`]'s election: apart from the workloads' verbs.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// The instance's lease as the engine has it (None: nobody holds it).
    async fn read_lease(&self) -> Result<Option<Lease>, OrchestratorError>;
    /// Takes the lease for `me`, replacing `current` (None: there is none). Fails with
    /// [`OrchestratorError::LeaseConflict`] if someone else changed it first.
    async fn acquire_lease(
        &self,
        me: &Holder,
        duration: Duration,
        current: Option<&Lease>,
    ) -> Result<Lease, OrchestratorError>;
    /// Renews a lease this process holds; [`OrchestratorError::LeaseConflict`] if it is
    /// no longer ours.
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, OrchestratorError>;
    /// Gives the lease up, so that another Hive may take it at once.
    async fn release_lease(&self, lease: &Lease) -> Result<(), OrchestratorError>;
}

/// A backend: where workloads run and where the instance's lease is kept.
pub trait Backend: Orchestrator + LeaseStore {}

impl<T: Orchestrator + LeaseStore> Backend for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_mounted_only_for_the_agent_and_volume_it_was_made_for() {
        let w = Workload {
            volumes: vec![Volume {
                name: "data".into(),
                mount_path: "/data".into(),
                retain: false,
                adopt_retained: false,
            }],
            ..Workload::example()
        };
        let labels = |agent: &str, volume: &str| {
            std::collections::HashMap::from([
                (LABEL_MANAGED, "true".to_string()),
                (LABEL_INSTANCE, "i".to_string()),
                (LABEL_OWNER, "o".to_string()),
                (LABEL_AGENT, agent.to_string()),
                (LABEL_VOLUME, volume.to_string()),
                (LABEL_UID, w.uid.to_string()),
            ])
        };
        let check = |l: std::collections::HashMap<&str, String>| {
            may_mount("i", &w, 0, "vol", |k| l.get(k).map(String::as_str))
        };
        assert!(check(labels("a", "data")).is_ok());
        for (agent, volume) in [("a-x", "data"), ("a", "x-data")] {
            let err = check(labels(agent, volume)).unwrap_err().to_string();
            assert!(err.contains("another agent or volume"), "{err}");
        }
        let mut other_instance = labels("a", "data");
        other_instance.insert(LABEL_INSTANCE, "j".into());
        assert!(check(other_instance)
            .unwrap_err()
            .to_string()
            .contains("another Hive instance"));
    }

    #[test]
    fn the_hash_is_the_one_earlier_hives_stamped() {
        // An upgrade must not recreate every container: the digest of this workload was
        // computed by the previous release's ContainerSpec.
        let w = Workload {
            agent: "a".into(),
            uid: Uuid::from_u128(7),
            owner: "sol".into(),
            store: "s".into(),
            image: "img".into(),
            command: Some(vec!["sleep".into()]),
            args: None,
            env: Env([("A".to_string(), "1".to_string())].into()),
            restart_policy: RestartPolicy::Always,
            memory_bytes: Some(1 << 29),
            cpu_nanos: Some(500_000_000),
            pids: Some(256),
            capabilities: vec![],
            volumes: vec![],
            intent: Intent::Run,
        };
        let json = r#"{"agent":"a","uid":"00000000-0000-0000-0000-000000000007","owner":"sol","image":"img","command":["sleep"],"args":null,"env":{"A":"1"},"restart_policy":"Always","memory_bytes":536870912,"nano_cpus":500000000,"pids_limit":256,"capabilities":[],"volumes":[]}"#;
        assert_eq!(
            w.hash(),
            hex::encode(&Sha256::digest(json.as_bytes())[..16])
        );
        let stopped = Workload {
            intent: Intent::Stop,
            store: "other".into(),
            ..w.clone()
        };
        assert_eq!(stopped.hash(), w.hash(), "not part of the shape");
    }
}
