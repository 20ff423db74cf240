//! The one door to the container engine. The controller speaks only these types; no
//! Docker type crosses this trait, so a Kubernetes backend can stand beside [`docker`].
//!
//! Every implementation is bound to one Hive *instance* and one *store*: it stamps both on
//! what it creates, and lists, stops and removes only what carries that instance. Which
//! store declared a container is reported ([`Container::store`]); the controller leaves
//! another store's containers alone.
//!
//! The backend also keeps the instance's [`Lease`] (Kubernetes' leader election, kept on
//! the engine itself), so that only one Hive reconciles an instance at a time, across
//! hosts sharing an engine.

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::agent::{Env, RestartPolicy, Volume};

pub mod docker;

/// Everything in an agent's spec that shapes its container. A change of any field
/// changes [`ContainerSpec::hash`] and so recreates the container.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerSpec {
    /// The agent's name.
    pub agent: String,
    /// The agent's uid, so a deleted and re-created agent never adopts its predecessor's container.
    pub uid: Uuid,
    /// The agent's owner, stamped as `hive.owner`.
    pub owner: String,
    pub image: String,
    /// Replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// Replaces the image's default arguments.
    pub args: Option<Vec<String>>,
    /// Environment, secrets resolved; its `Debug` hides the values.
    pub env: Env,
    pub restart_policy: RestartPolicy,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    /// Most processes at once (Hive's default when None).
    pub pids_limit: Option<i64>,
    /// Capabilities added back after dropping all, already checked by the policy.
    pub capabilities: Vec<String>,
    /// Named volumes to mount.
    pub volumes: Vec<Volume>,
}

impl ContainerSpec {
    /// A stable digest of the spec (16 bytes of SHA-256 over its JSON, fields and maps in a fixed order).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a ContainerSpec always serializes");
        hex::encode(&Sha256::digest(&json)[..16])
    }
}

/// The engine's view of a container's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    Running,
    Paused,
    /// Exited and waiting for the engine's restart policy to start it again.
    Restarting,
    /// Exited with this code (None when the engine did not say).
    Exited(Option<i64>),
    /// Being removed, or dead: about to disappear.
    Removing,
}

/// One container that carries this instance's labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    pub id: String,
    /// Value of the agent label.
    pub agent: String,
    /// Value of the uid label (may be garbage on a container added out of band).
    pub uid: String,
    /// Value of the spec-hash label.
    pub spec_hash: String,
    pub state: ContainerState,
    /// How often the engine's restart policy restarted it (known when listed for one agent).
    pub restart_count: u64,
    /// Unix seconds of creation; used to keep the newest of duplicates.
    pub created: i64,
    /// The id of the store that declared it (None on containers made before stores were
    /// stamped, or by hand).
    pub store: Option<String>,
}

/// What a removal did, as the engine confirmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The engine removed it.
    Removed,
    /// It was gone already (removed by someone else).
    AlreadyGone,
    /// The engine is removing it already; not confirmed yet.
    InProgress,
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
    pub duration: std::time::Duration,
    /// How often the lease has changed hands.
    pub transitions: u64,
    /// The backend's handle on the lease object (a container id on Docker).
    pub handle: String,
}

/// Options for reading a container's output.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Only the last N lines (all when None).
    pub tail: Option<u64>,
    /// Keep streaming new output.
    pub follow: bool,
    /// Only output after this time (Unix seconds).
    pub since: Option<i64>,
}

/// Failures of the engine, in the orchestrator's words.
#[derive(Debug, thiserror::Error)]
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
    /// A container by that name exists but is not ours to touch.
    #[error("container name {name:?} is taken by a container this Hive instance does not manage; remove or rename it")]
    NameTaken { name: String },
    /// The agent's name is already a name on the agents' network: it would shadow it.
    #[error("the name {name:?} is already in use on network {network} by {holder}; an agent of that name would answer in its place, so it is not created: choose another name")]
    NameInUse {
        name: String,
        network: String,
        holder: String,
    },
    /// A volume the spec names exists but may not be mounted for this agent.
    #[error("{0}")]
    VolumeConflict(String),
    /// The container vanished under us.
    #[error("container {0} no longer exists")]
    NotFound(String),
    /// The engine refused the request.
    #[error("container engine refused: {0}")]
    Refused(String),
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
            OrchestratorError::NameInUse { .. } => "name_in_use",
            OrchestratorError::VolumeConflict(_) => "volume_conflict",
            OrchestratorError::NotFound(_) => "not_found",
            OrchestratorError::Refused(_) => "refused",
            OrchestratorError::Timeout { .. } => "timeout",
            OrchestratorError::LeaseConflict(_) => "lease_conflict",
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

/// The container engine, seen through what Hive needs of it.
#[async_trait]
pub trait Orchestrator: Send + Sync + 'static {
    /// Answers when the engine is reachable.
    async fn ping(&self) -> Result<(), OrchestratorError>;
    /// Every container of this instance (states from the listing; restart counts are 0).
    async fn list_all(&self) -> Result<Vec<Container>, OrchestratorError>;
    /// The containers of this instance for one agent, with restart counts filled in.
    async fn list_agent(&self, agent: &str) -> Result<Vec<Container>, OrchestratorError>;
    /// Creates (not starts) the agent's container; [`OrchestratorError::ImageMissing`] when
    /// its image must be pulled first.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, OrchestratorError>;
    /// Pulls an image onto the engine.
    async fn pull(&self, image: &str) -> Result<(), OrchestratorError>;
    async fn start(&self, id: &str) -> Result<(), OrchestratorError>;
    /// Asks the process to stop, killing it after the grace period.
    async fn stop(&self, id: &str) -> Result<(), OrchestratorError>;
    async fn restart(&self, id: &str) -> Result<(), OrchestratorError>;
    /// Resumes a container paused outside Hive.
    async fn unpause(&self, id: &str) -> Result<(), OrchestratorError>;
    /// Removes the container, killing it if it runs, and says what the engine confirmed.
    async fn remove(&self, id: &str) -> Result<Removal, OrchestratorError>;
    /// Removes the volumes made for the agent `uid`, except those marked to be retained.
    async fn remove_volumes(&self, agent: &str, uid: Uuid) -> Result<(), OrchestratorError>;
    /// The container's output, stdout and stderr interleaved.
    fn logs(
        &self,
        id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<Vec<u8>, OrchestratorError>>;
    /// Names of agents whose containers changed (created, started, died, removed, ...).
    /// The stream ends or errs when the engine goes away; callers re-subscribe.
    fn events(&self) -> BoxStream<'static, Result<String, OrchestratorError>>;

    /// The instance's lease as the engine has it (None: nobody holds it).
    async fn read_lease(&self) -> Result<Option<Lease>, OrchestratorError>;
    /// Takes the lease for `me`, replacing `current` (None: there is none). Fails with
    /// [`OrchestratorError::LeaseConflict`] if someone else changed it first.
    async fn acquire_lease(
        &self,
        me: &Holder,
        duration: std::time::Duration,
        current: Option<&Lease>,
    ) -> Result<Lease, OrchestratorError>;
    /// Renews a lease this process holds; [`OrchestratorError::LeaseConflict`] if it is
    /// no longer ours.
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, OrchestratorError>;
    /// Gives the lease up, so that another Hive may take it at once.
    async fn release_lease(&self, lease: &Lease) -> Result<(), OrchestratorError>;
}

#[cfg(test)]
pub mod fake;
