//! The wire: the shapes of what the API answers and takes besides the `Agent` itself
//! (lists, events, an apply's answer) and the annotations clients set. The server and the
//! client (`cli`) both use this module, so that the client imports nothing of the server.

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, Timestamp};

/// The annotation `hive apply --prune` marks what it applies with (the file, relative to
/// the directory). A client's own: `hive/` annotations are the server's, and the server's
/// manifests directory never takes over what carries this one.
pub const APPLY_SOURCE: &str = "hive-apply/source";

/// The annotation naming the apply set an agent belongs to (`?applyset=`): a prune
/// deletes only members of its own set.
pub const APPLY_SET: &str = "hive-apply/set";

/// The body of `GET /v1/agents`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentList {
    pub api_version: String,
    pub kind: String,
    /// `resourceVersion`: the version this list reflects, to watch from; `continue`: the
    /// token of the next page, when `limit` cut the list short.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub items: Vec<Agent>,
}

/// The body of `GET /v1/agents/{name}/events`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventList {
    /// Oldest first.
    pub items: Vec<Event>,
}

/// Why an event was recorded: one word, as Kubernetes' event reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Created,
    Recreated,
    Started,
    Stopped,
    Repaired,
    Restarted,
    /// Woken from idleness by activity (a write, an action, a touch).
    Resumed,
    /// Unpaused: it was paused outside Hive.
    Unpaused,
    Removed,
    RemovalFailed,
    Failed,
    NotReady,
    BackOff,
    Expired,
    Idled,
    ContainerChurn,
    CreateRateLimited,
    PullingImage,
}

impl Reason {
    /// The reason as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Created => "Created",
            Reason::Recreated => "Recreated",
            Reason::Started => "Started",
            Reason::Stopped => "Stopped",
            Reason::Repaired => "Repaired",
            Reason::Restarted => "Restarted",
            Reason::Resumed => "Resumed",
            Reason::Unpaused => "Unpaused",
            Reason::Removed => "Removed",
            Reason::RemovalFailed => "RemovalFailed",
            Reason::Failed => "Failed",
            Reason::NotReady => "NotReady",
            Reason::BackOff => "BackOff",
            Reason::Expired => "Expired",
            Reason::Idled => "Idled",
            Reason::ContainerChurn => "ContainerChurn",
            Reason::CreateRateLimited => "CreateRateLimited",
            Reason::PullingImage => "PullingImage",
        }
    }

    /// `Warning` for what is outside the declared course, else `Normal`.
    pub fn event_type(self) -> EventType {
        if self.is_warning() {
            EventType::Warning
        } else {
            EventType::Normal
        }
    }

    /// Whether it warns of something outside the declared course.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Reason::Repaired
                | Reason::Unpaused
                | Reason::RemovalFailed
                | Reason::Failed
                | Reason::NotReady
                | Reason::BackOff
                | Reason::ContainerChurn
                | Reason::CreateRateLimited
        )
    }
}

/// An event's type, as Kubernetes' events: `Normal`, or `Warning` for what is outside
/// the declared course.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    Normal,
    Warning,
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        })
    }
}

/// A decision of the reconciler about one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    /// One word, a [`Reason`]: Created, Recreated, Started, Stopped, Repaired, Failed,
    /// BackOff, ... (text, so that a store written by a later Hive still reads).
    pub reason: String,
    pub message: String,
    /// The agent's generation when it happened.
    pub generation: u64,
    /// How often it happened in a row.
    pub count: u32,
    #[schema(value_type = String, format = DateTime)]
    pub first_time: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_time: Timestamp,
}

/// What applying one document did (or would do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    /// Deleted by a prune: its source no longer declares it.
    Pruned,
}

/// What applying one document did (or would do).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub name: String,
    pub result: Outcome,
    /// The agent's generation after the apply (the current one on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The stored resourceVersion after the apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// On a dry run: what would change, as `-`/`+` lines of YAML.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The body of a successful `POST /v1/apply`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyAnswer {
    pub dry_run: bool,
    pub items: Vec<ApplyResult>,
}

/// What kind of failure an answer reports: every error of every layer is one of these,
/// and [`ErrorKind::status`] is the one table of their HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A request's parameter or body cannot be read.
    BadRequest,
    UnsupportedMediaType,
    PayloadTooLarge,
    /// A field of a document is wrong.
    Invalid,
    /// The admission policy refused it.
    Refused,
    Unauthorized,
    Forbidden,
    /// An owner's quota would be exceeded.
    Quota,
    NotFound,
    /// It contradicts what is stored.
    Conflict,
    /// Some documents of a bulk apply are bad.
    InvalidDocuments,
    /// What it refers to is no longer kept.
    Gone,
    TooManyRequests,
    RequestTimeout,
    Unavailable,
    /// The backend cannot do this (yet).
    NotImplemented,
    Internal,
}

impl ErrorKind {
    /// The HTTP status an answer of this kind carries.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden | ErrorKind::Quota => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::Conflict => 409,
            ErrorKind::Gone => 410,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Invalid | ErrorKind::Refused | ErrorKind::InvalidDocuments => 422,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::Internal => 500,
            ErrorKind::NotImplemented => 501,
            ErrorKind::Unavailable => 503,
        }
    }
}

/// The body of `POST /v1/agents/{name}/exec`: a command run once in the agent's running
/// container, without a terminal, as the container's own user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments; no shell runs unless it names one (`["sh", "-c", "..."]`).
    pub command: Vec<String>,
    /// Text given to the command's standard input, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// How long to wait for it (default 30s, at most 10m); past it the answer carries the
    /// output so far and `timedOut`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Variables added to the container's environment for the command.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// An absolute path to run in (default: the image's working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// What `POST /v1/agents/{name}/exec` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// Its exit code; null when it had not exited when the time-out came.
    pub exit_code: Option<i64>,
    /// Standard output as text (invalid UTF-8 replaced), at most 1 MiB.
    pub stdout: String,
    /// Standard error as text, at most 1 MiB.
    pub stderr: String,
    /// More output came than was kept.
    pub truncated: bool,
    /// The time-out came before the command ended (it may still be running: the engine
    /// has no way to stop a command it runs this way; `spec.resources.pids` bounds them).
    pub timed_out: bool,
}
