//! The `Agent` resource: its document shape (apiVersion/kind/metadata/spec/status),
//! validation of what clients send, and the translation of a spec into the
//! orchestrator-neutral [`ContainerSpec`] whose hash decides recreation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::orchestrator::ContainerSpec;

/// The only apiVersion this server speaks.
pub const API_VERSION: &str = "hive/v1";
/// The kind of a single agent document.
pub const KIND: &str = "Agent";
/// The kind of a list of agents.
pub const LIST_KIND: &str = "AgentList";

/// The annotation naming the manifest file an agent comes from (set by the manifests
/// sync only: annotations under `hive/` are Hive's).
pub const SOURCE_ANNOTATION: &str = "hive/source";

/// Docker refuses memory limits below 6 MiB; say so before the engine does.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

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
    pub creation_timestamp: Option<String>,
    /// RFC 3339 time a delete was asked for; the agent is Terminating from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
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
    /// Delete the agent this long after its creation (humantime, e.g. `2h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
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
    pub last_transition_time: Option<String>,
    /// RFC 3339 time `spec.ttl` runs out and the agent is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Ready and Progressing, in the Kubernetes shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One entry of `status.conditions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Ready or Progressing.
    #[serde(rename = "type")]
    pub kind: String,
    /// "True" or "False".
    pub status: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last flipped.
    pub last_transition_time: String,
}

impl Condition {
    /// The condition `kind` set to `status`, keeping its transition time from `previous`
    /// unless the status flipped.
    pub fn set(
        previous: &[Condition],
        kind: &str,
        status: bool,
        reason: &str,
        message: Option<String>,
    ) -> Condition {
        let status = if status { "True" } else { "False" }.to_string();
        let last_transition_time = previous
            .iter()
            .find(|c| c.kind == kind && c.status == status)
            .map_or_else(now_rfc3339, |c| c.last_transition_time.clone());
        Condition {
            kind: kind.to_string(),
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
    /// Checks everything a client controls. Server-owned fields are not looked at.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.api_version != API_VERSION {
            return Err(Invalid::new(
                "apiVersion",
                format!("must be {API_VERSION:?}"),
            ));
        }
        if self.kind != KIND {
            return Err(Invalid::new("kind", format!("must be {KIND:?}")));
        }
        validate_name(&self.metadata.name).map_err(|m| Invalid::new("metadata.name", m))?;
        if let Some(owner) = &self.metadata.owner {
            validate_name(owner).map_err(|m| Invalid::new("metadata.owner", m))?;
        }
        for (k, v) in &self.metadata.labels {
            if k.starts_with("hive.") || k.starts_with("hive/") {
                return Err(Invalid::new(
                    format!("metadata.labels.{}", shown_key(k)),
                    "labels under \"hive.\" are Hive's own and cannot be set",
                ));
            }
            let at = || format!("metadata.labels.{}", shown_key(k));
            validate_label_key(k).map_err(|m| Invalid::new(at(), m))?;
            validate_label_value(v).map_err(|m| Invalid::new(at(), m))?;
        }
        for k in self.metadata.annotations.keys() {
            validate_label_key(k)
                .map_err(|m| Invalid::new(format!("metadata.annotations.{}", shown_key(k)), m))?;
        }
        self.spec.validate()
    }

    /// The container this agent's spec asks for.
    pub fn container_spec(&self) -> Result<ContainerSpec, Invalid> {
        let r = &self.spec.resources;
        Ok(ContainerSpec {
            agent: self.metadata.name.clone(),
            uid: self.metadata.uid.unwrap_or_default(),
            owner: self.metadata.owner.clone().unwrap_or_default(),
            image: self.spec.image.clone(),
            command: self.spec.command.clone(),
            args: self.spec.args.clone(),
            env: self.spec.env.clone(),
            restart_policy: self.spec.restart_policy,
            memory_bytes: r
                .memory
                .as_deref()
                .map(parse_memory)
                .transpose()
                .map_err(|m| Invalid::new("spec.resources.memory", m))?,
            nano_cpus: r
                .cpus
                .as_deref()
                .map(parse_cpus)
                .transpose()
                .map_err(|m| Invalid::new("spec.resources.cpus", m))?,
            pids_limit: r.pids,
            capabilities: self.spec.capabilities.clone().unwrap_or_default(),
            volumes: self.spec.volumes.clone().unwrap_or_default(),
        })
    }

    /// When `spec.ttl` runs out, if it is set (None also for a ttl that does not parse).
    pub fn expires_at(&self) -> Option<time::OffsetDateTime> {
        let ttl = humantime::parse_duration(self.spec.ttl.as_deref()?).ok()?;
        let created = time::OffsetDateTime::parse(
            self.metadata.creation_timestamp.as_deref()?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        Some(created + ttl)
    }

    /// True while a delete is in progress.
    pub fn is_terminating(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}

impl AgentSpec {
    fn validate(&self) -> Result<(), Invalid> {
        if self.image.trim().is_empty() {
            return Err(Invalid::new("spec.image", "is required"));
        }
        validate_image(&self.image).map_err(|m| Invalid::new("spec.image", m))?;
        for (field, list) in [("spec.command", &self.command), ("spec.args", &self.args)] {
            if let Some(list) = list {
                if field == "spec.command" && list.is_empty() {
                    return Err(Invalid::new(
                        field,
                        "must not be empty; leave it out to use the image's",
                    ));
                }
                if let Some(i) = list.iter().position(|s| s.contains('\0')) {
                    return Err(Invalid::new(
                        format!("{field}[{i}]"),
                        "must not contain a NUL byte",
                    ));
                }
            }
        }
        for (k, v) in &self.env.0 {
            let at = || format!("spec.env.{}", shown_key(k));
            validate_env_name(k).map_err(|m| Invalid::new(at(), m))?;
            if v.contains('\0') {
                return Err(Invalid::new(at(), "value must not contain a NUL byte"));
            }
        }
        if let Some(m) = &self.resources.memory {
            parse_memory(m).map_err(|e| Invalid::new("spec.resources.memory", e))?;
        }
        if let Some(c) = &self.resources.cpus {
            parse_cpus(c).map_err(|e| Invalid::new("spec.resources.cpus", e))?;
        }
        for (i, e) in self.env_from.iter().flatten().enumerate() {
            validate_name(&e.secret_ref)
                .map_err(|m| Invalid::new(format!("spec.envFrom[{i}].secretRef"), m))?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, v) in self.volumes.iter().flatten().enumerate() {
            let at = format!("spec.volumes[{i}]");
            validate_name(&v.name).map_err(|m| Invalid::new(format!("{at}.name"), m))?;
            if v.name.len() > 40 {
                return Err(Invalid::new(
                    format!("{at}.name"),
                    "is longer than 40 characters",
                ));
            }
            let p = &v.mount_path;
            if !p.starts_with('/') || p == "/" || p.split('/').any(|c| c == "..") || p.contains(':')
            {
                return Err(Invalid::new(
                    format!("{at}.mountPath"),
                    "must be an absolute path other than /, without '..' or ':'",
                ));
            }
            if !seen.insert(v.name.clone()) || !seen.insert(format!("path:{p}")) {
                return Err(Invalid::new(
                    at,
                    "volume names and mount paths must be unique",
                ));
            }
        }
        if let Some(ttl) = &self.ttl {
            match humantime::parse_duration(ttl) {
                Ok(d) if !d.is_zero() => {}
                _ => {
                    return Err(Invalid::new(
                        "spec.ttl",
                        "is not a positive duration such as 30m or 2h",
                    ))
                }
            }
        }
        if let Some(p) = self.resources.pids {
            if !(1..=1 << 22).contains(&p) {
                return Err(Invalid::new(
                    "spec.resources.pids",
                    "must be between 1 and 4194304",
                ));
            }
        }
        Ok(())
    }
}

/// A key (of a label, an annotation or a variable) as it may appear in a field path or a
/// message: printable, and cut to 63 characters, so that what a client sent is never
/// echoed at length.
pub fn shown_key(key: &str) -> String {
    let mut shown: String = key
        .chars()
        .take(63)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if key.chars().count() > 63 {
        shown.push_str("...");
    }
    shown
}

/// A DNS-1123 label: 1..63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "is {} characters; at most 63 are allowed",
            name.len()
        ));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok || !ends(name.as_bytes()[0]) || !ends(name.as_bytes()[name.len() - 1]) {
        return Err(
            "is not a DNS-1123 label: use lower-case letters, digits and '-', \
                    starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 253
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("has an invalid prefix before '/'".into());
        }
    }
    if name.is_empty() || name.len() > 63 || !label_chars(name) {
        return Err(
            "the key must be at most 63 letters, digits, '-', '_' or '.', \
                    starting and ending alphanumeric (optionally after a 'prefix/')"
                .into(),
        );
    }
    Ok(())
}

fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 || !label_chars(value) {
        return Err(
            "the value must be at most 63 letters, digits, '-', '_' or '.', \
                    starting and ending alphanumeric"
                .into(),
        );
    }
    Ok(())
}

fn label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

pub fn validate_env_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(
            "is not a valid variable name: use letters, digits and '_', not starting with a digit"
                .into(),
        )
    }
}

/// A Docker image reference, parsed as the engine reads it.
fn validate_image(image: &str) -> Result<(), String> {
    crate::image::Reference::parse(image).map(|_| ())
}

/// Parses a memory quantity into bytes: `512Mi`, `1Gi`, `500M`, `1.5G`, `1024`.
pub fn parse_memory(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 =
        match unit {
            "" => 1.0,
            "k" | "K" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(
                "has an unknown unit: use bytes or one of Ki, Mi, Gi, Ti, k, M, G, T (e.g. 512Mi)"
                    .into(),
            ),
        };
    let n: f64 = num
        .parse()
        .map_err(|_| "is not a memory quantity such as 512Mi or 1Gi".to_string())?;
    let bytes = (n * mult).round();
    if !bytes.is_finite() || bytes > i64::MAX as f64 {
        return Err("is too large".into());
    }
    if (bytes as u64) < MIN_MEMORY_BYTES {
        return Err("is below the engine's minimum of 6Mi".into());
    }
    Ok(bytes as i64)
}

/// Parses a CPU quantity into billionths of a CPU: `"0.5"`, `2`, `500m`.
pub fn parse_cpus(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (num, scale) = match t.strip_suffix('m') {
        Some(milli) => (milli, 1e6),
        None => (t, 1e9),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| "is not a CPU quantity such as \"0.5\", 2 or 500m".to_string())?;
    let nano = (n * scale).round();
    if nano < 1e7 {
        return Err("is below the minimum of 0.01 CPU".into());
    }
    if nano > 1024.0 * 1e9 {
        return Err("is more than 1024 CPUs".into());
    }
    Ok(nano as i64)
}

/// Now, as RFC 3339 with second precision, the form of every timestamp Hive writes.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(yaml: &str) -> Agent {
        serde_yaml::from_str(yaml).unwrap()
    }

    const GOOD: &str = "apiVersion: hive/v1\nkind: Agent\nmetadata: {name: researcher-1, labels: {team: research}}\nspec:\n  image: nanobot:latest\n  command: [nanobot, gateway]\n  env: {MODEL: gpt-4o}\n  resources: {memory: 512Mi, cpus: \"0.5\"}\n";

    #[test]
    fn the_issue_example_is_valid_and_defaults_apply() {
        let a = agent(GOOD);
        a.validate().unwrap();
        assert_eq!(a.spec.state, DesiredState::Running);
        assert_eq!(a.spec.restart_policy, RestartPolicy::Always);
        let c = a.container_spec().unwrap();
        assert_eq!(c.memory_bytes, Some(512 * 1024 * 1024));
        assert_eq!(c.nano_cpus, Some(500_000_000));
    }

    #[test]
    fn names_follow_dns_1123() {
        for ok in ["a", "a-1", "researcher-1", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("apiVersion: v2", "apiVersion"),
            ("kind: Pod", "kind"),
            ("metadata: {name: Bad_Name}", "metadata.name"),
            ("spec: {image: ''}", "spec.image"),
            ("spec: {image: 'Nanobot:1'}", "spec.image"),
            (
                "spec: {image: x, resources: {memory: lots}}",
                "spec.resources.memory",
            ),
            (
                "spec: {image: x, resources: {memory: 1Ki}}",
                "spec.resources.memory",
            ),
            (
                "spec: {image: x, resources: {cpus: fast}}",
                "spec.resources.cpus",
            ),
            (
                "spec: {image: x, resources: {cpus: 0}}",
                "spec.resources.cpus",
            ),
            ("spec: {image: x, env: {'1BAD': v}}", "spec.env.1BAD"),
            ("spec: {image: x, command: []}", "spec.command"),
        ];
        for (patch, field) in cases {
            let mut base: serde_yaml::Mapping = serde_yaml::from_str(GOOD).unwrap();
            let patch: serde_yaml::Mapping = serde_yaml::from_str(patch).unwrap();
            for (k, v) in patch {
                base.insert(k, v);
            }
            let a: Agent = serde_yaml::from_value(serde_yaml::Value::Mapping(base)).unwrap();
            let err = a.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("500M"), Ok(500_000_000));
        assert_eq!(parse_memory("8388608"), Ok(8_388_608));
        assert!(parse_memory("12Qi").is_err());
        assert_eq!(parse_cpus("500m"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert!(parse_cpus("-1").is_err());
    }

    #[test]
    fn env_values_never_show_in_debug() {
        let a = agent(GOOD);
        let shown = format!("{a:?}");
        assert!(shown.contains("MODEL"));
        assert!(!shown.contains("gpt-4o"));
    }
}
