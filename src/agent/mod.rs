//! The `Agent` resource: its document shape (apiVersion/kind/metadata/spec/status), with
//! its validation in [`validate`], its quantities in [`quantity`], and what a client may
//! wait for in [`WaitFor`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

mod duration;
mod never;
mod quantity;
mod timestamp;
mod validate;
mod wait;

pub use duration::{earlier, later, until, SpecDuration, MAX_DURATION, MIN_DURATION};

pub use never::screen;
pub use quantity::{parse_bytes, parse_cpus, parse_memory};
pub use timestamp::Timestamp;
pub use validate::{clip, shown_key, validate_env_name, validate_label_value, validate_name};
pub use wait::WaitFor;

/// The only apiVersion this server speaks.
pub const API_VERSION: &str = "hive/v1";
/// The kind of a single agent document.
pub const KIND: &str = "Agent";
/// The kind of a list of agents.
pub const LIST_KIND: &str = "AgentList";

/// The annotation naming the manifest file an agent comes from (set by the manifests
/// sync only: annotations under `hive/` are Hive's).
pub const SOURCE_ANNOTATION: &str = "hive/source";

/// One agent: what a client declared (`metadata`, `spec`) and what Hive observed (`status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Agent {
    /// Always `hive/v1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `Agent`.
    #[serde(default)]
    pub kind: String,
    /// Identity and bookkeeping; the server owns every field but `name`, `labels` and `annotations`.
    #[serde(default)]
    pub metadata: Metadata,
    /// The desired state, as declared.
    pub spec: AgentSpec,
    /// The observed state. Written only by Hive; ignored when a client sends it.
    #[serde(default)]
    pub status: AgentStatus,
}

/// Identity of an agent, in the shape of Kubernetes' ObjectMeta.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// DNS-1123 label; the key of the agent and the stem of its container's name.
    #[serde(default)]
    pub name: String,
    /// Free-form key/value pairs clients select on (`?label=team=research`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Whose agent this is: set by the server from the caller's key (an admin may name one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free-form notes for tools; never interpreted by the core.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the server at creation (UUID v4); a recreated agent of the same name gets a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<Uuid>,
    /// Starts at 1 and grows by one on every change of spec.
    #[serde(default)]
    pub generation: u64,
    /// Changes on every stored write; a PUT carrying a stale one is refused with 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// RFC 3339 time of creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub creation_timestamp: Option<Timestamp>,
    /// RFC 3339 time a delete was asked for; the agent is Terminating from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deletion_timestamp: Option<Timestamp>,
}

/// What a client wants to run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    /// Image reference; must be on the engine or pullable by it.
    #[serde(default)]
    pub image: String,
    /// Replaces the image's entrypoint (Kubernetes' `command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's default arguments (Kubernetes' `args`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment of the agent; values are never logged.
    #[serde(default, skip_serializing_if = "Env::is_empty")]
    pub env: Env,
    /// Whether the agent should be running.
    #[serde(default)]
    pub state: DesiredState,
    /// What happens when the agent's process exits.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Limits on memory, CPU and processes.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Linux capabilities added back after all are dropped; the policy's allowlist decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Secrets whose keys become environment variables (`spec.env` wins on a clash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFrom>>,
    /// Named volumes Hive creates and labels; never host paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// Delete the agent this long after its creation (humantime, e.g. `2h`; at most 365d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ttl: Option<SpecDuration>,
    /// When Hive stops an idle agent, and deletes a finished one.
    #[serde(default, skip_serializing_if = "Lifecycle::is_empty")]
    pub lifecycle: Lifecycle,
}

/// `spec.lifecycle`: durations in humantime (`90s`, `15m`, `2h`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lifecycle {
    /// Stop the agent (its volumes kept) after this long without activity: no write or
    /// action on it, no `touch`, and no work of its own (CPU time) since the last look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub idle_timeout: Option<SpecDuration>,
    /// Delete the agent this long after it finished (phase Succeeded or Failed, as
    /// Kubernetes Jobs' `ttlSecondsAfterFinished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ttl_after_finished: Option<SpecDuration>,
}

impl Lifecycle {
    pub fn is_empty(&self) -> bool {
        self.idle_timeout.is_none() && self.ttl_after_finished.is_none()
    }

    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        self.idle_timeout.as_ref().map(SpecDuration::get)
    }

    pub fn ttl_after_finished(&self) -> Option<std::time::Duration> {
        self.ttl_after_finished.as_ref().map(SpecDuration::get)
    }
}

/// One entry of `spec.envFrom`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFrom {
    /// The name of a secret (`PUT /v1/secrets/{name}`) of the agent's owner.
    pub secret_ref: String,
}

/// One entry of `spec.volumes`: a named volume, `hive_<instance>_<agent>_<name>` on the
/// engine, labelled with the agent's owner and uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    /// Absolute path inside the container.
    pub mount_path: String,
    /// Keep the volume when the agent is deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain: bool,
    /// Mount the volume a deleted agent of this name and owner retained. Without it, a
    /// retained volume is never handed to a new agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_retained: bool,
}

/// Environment variables. Its `Debug` shows names only, so a stray `?spec` in a log line
/// cannot leak a secret.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Env(pub BTreeMap<String, String>);

impl Env {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

/// `spec.state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
}

/// `spec.restartPolicy`, as in Kubernetes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a process that exited with `code` (None: the engine did not say) is done
    /// under this policy, rather than to be run again: the one rule every backend and the
    /// status follow.
    pub fn finished(self, code: Option<i64>) -> bool {
        match self {
            RestartPolicy::Always => false,
            RestartPolicy::OnFailure => code == Some(0),
            RestartPolicy::Never => true,
        }
    }
}

/// `spec.resources`: limits in Kubernetes quantity notation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Memory limit: `512Mi`, `1Gi`, `500M`, or bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU limit: `"0.5"`, `2`, or millicores such as `500m`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_number"
    )]
    pub cpus: Option<String>,
    /// Most processes the agent may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

impl Resources {
    fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none() && self.pids.is_none()
    }
}

/// Accepts `cpus: "0.5"` as well as `cpus: 0.5`, keeping the text.
pub(crate) fn string_or_number<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        U(u64),
        F(f64),
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| match t {
        Text::S(s) => s,
        Text::U(u) => u.to_string(),
        Text::F(f) => f.to_string(),
    }))
}

/// `status.phase`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Phase {
    /// Accepted; its container is not running yet.
    #[default]
    Pending,
    /// Its container runs the current spec.
    Running,
    /// Stopped as declared.
    Stopped,
    /// Its process exited 0 and the restart policy keeps it down.
    Succeeded,
    /// It cannot be brought to the declared state; `message` says why.
    Failed,
    /// Deletion was asked for; the record goes once its container is gone.
    Terminating,
}

impl Phase {
    /// Every phase, in the order of an agent's life.
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Running,
        Phase::Stopped,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Terminating,
    ];

    /// The phase as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Stopped => "Stopped",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Terminating => "Terminating",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Hive observed of an agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentStatus {
    pub phase: Phase,
    /// The generation this status describes.
    #[serde(default)]
    pub observed_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Restarts of the current container after it exited, by the engine's restart policy or by Hive.
    #[serde(default)]
    pub restart_count: u64,
    /// Why the agent is not as desired, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339 time the phase last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_transition_time: Option<Timestamp>,
    /// RFC 3339 time the agent is deleted: `spec.ttl` running out, or
    /// `spec.lifecycle.ttlAfterFinished` after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// RFC 3339 time Hive stops it for idleness if nothing happens before
    /// (`spec.lifecycle.idleTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub stops_at: Option<Timestamp>,
    /// RFC 3339 time Hive stopped it for idleness; `start` (or any write, action or
    /// touch) resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub idle_since: Option<Timestamp>,
    /// Ready and Progressing, in the Kubernetes shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One entry of `status.conditions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub status: ConditionStatus,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last flipped.
    #[schema(value_type = String, format = DateTime)]
    pub last_transition_time: Timestamp,
}

/// What a condition is about, as Kubernetes' condition types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionType {
    /// It runs the current generation as declared.
    Ready,
    /// It is on its way: the engine has yet to run it.
    Progressing,
}

impl ConditionType {
    /// Every condition an agent has.
    pub const ALL: [ConditionType; 2] = [ConditionType::Ready, ConditionType::Progressing];

    /// The type as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Progressing => "Progressing",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a condition holds (Kubernetes writes it as the strings `True` and `False`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionStatus {
    True,
    False,
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> ConditionStatus {
        if holds {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
        })
    }
}

impl Condition {
    /// The condition `kind` set to `status`, keeping its transition time from `previous`
    /// unless the status flipped.
    pub fn set(
        previous: &[Condition],
        kind: ConditionType,
        holds: bool,
        reason: &str,
        message: Option<String>,
    ) -> Condition {
        let status = ConditionStatus::from(holds);
        let last_transition_time = previous
            .iter()
            .find(|c| c.kind == kind && c.status == status)
            .map_or_else(Timestamp::now, |c| c.last_transition_time);
        Condition {
            kind,
            status,
            reason: reason.to_string(),
            message,
            last_transition_time,
        }
    }
}

/// A validation failure: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// Dotted path of the field at fault, such as `spec.resources.memory`.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Agent {
    /// When `spec.ttl` runs out, if it is set (None also past the last time there is).
    pub fn expires_at(&self) -> Option<time::OffsetDateTime> {
        let ttl = self.spec.ttl.as_ref()?.get();
        later(self.metadata.creation_timestamp?.get(), ttl)
    }

    /// True while a delete is in progress.
    pub fn is_terminating(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_never_show_in_debug() {
        let a: Agent = serde_yaml::from_str(
            "apiVersion: hive/v1\nkind: Agent\nmetadata: {name: a}\nspec: {image: x, env: {MODEL: gpt-4o}}\n",
        )
        .unwrap();
        let shown = format!("{a:?}");
        assert!(shown.contains("MODEL"));
        assert!(!shown.contains("gpt-4o"));
    }
}
