//! What the service reads from the engine on a client's behalf: an agent's output, and
//! whether this Hive is ready. The HTTP layer and MCP call these; neither knows the
//! engine (its types, its errors, or that there is one).

use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{Service, ServiceError};
use crate::access::Principal;
use crate::agent::Phase;
use crate::controller::ForeignContainer;
use crate::orchestrator::LogOptions;

/// The most lines `tail` asks for; follow the logs for more.
pub const MAX_TAIL: u64 = 1_000_000;

/// What a client asks of an agent's output.
#[derive(Clone, Debug, Default)]
pub struct LogRequest<'a> {
    /// Only the last N lines.
    pub tail: Option<u64>,
    /// Keep streaming new output.
    pub follow: bool,
    /// Only output newer than this: a duration such as `10m`, or an RFC 3339 time.
    pub since: Option<&'a str>,
}

/// An agent's output as it arrives; an error ends it.
pub type LogStream = BoxStream<'static, Result<Vec<u8>, ServiceError>>;

/// Why this Hive is not ready, or what it is.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// Containers of this instance that another store declared (left alone).
    pub foreign: Vec<ForeignContainer>,
}

impl Service {
    /// The output of an agent the caller may see (its current container's). Bad options
    /// are refused naming the parameter.
    pub fn logs(
        &self,
        who: &Principal,
        name: &str,
        r: LogRequest,
    ) -> Result<LogStream, ServiceError> {
        if r.tail.is_some_and(|n| n > MAX_TAIL) {
            return Err(ServiceError::BadRequest(format!(
                "tail: at most {MAX_TAIL} lines"
            )));
        }
        let since = match r.since {
            None => None,
            Some(text) => Some(since_unix(text).ok_or_else(|| {
                ServiceError::BadRequest(
                    "since is neither a duration such as 10m nor an RFC 3339 time".into(),
                )
            })?),
        };
        let record = self.visible(who, name)?;
        let stopped = record.agent.status.phase == Phase::Stopped;
        let Some(id) = record.agent.status.container_id else {
            return Err(ServiceError::NotFound(if stopped {
                format!("agent {name:?} is stopped and has no container: it has not run, or its logs went with its container")
            } else {
                format!("agent {name:?} has no container yet")
            }));
        };
        let options = LogOptions {
            tail: r.tail,
            follow: r.follow,
            since,
        };
        Ok(self
            .orchestrator
            .logs(&id, options)
            .map(|chunk| chunk.map_err(|e| ServiceError::Unavailable(e.to_string())))
            .boxed())
    }

    /// Whether this Hive can serve and reconcile: its store reads, it is not a standby,
    /// the engine answers and its instance's lease is settled. The error says which.
    pub async fn readiness(&self) -> Result<Readiness, ServiceError> {
        if !self.store.is_healthy() {
            return Err(ServiceError::Unavailable("the store cannot be read".into()));
        }
        if let Some(reason) = self.standby_reason() {
            return Err(ServiceError::Unavailable(reason));
        }
        self.orchestrator
            .ping()
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        if let crate::lease::Leadership::Unknown { reason } = &*self.leadership.borrow() {
            return Err(ServiceError::Unavailable(format!(
                "not reconciling: {reason}"
            )));
        }
        Ok(Readiness {
            foreign: self.controller.foreign(),
        })
    }
}

/// Unix seconds of `since`: a duration back from now, or an RFC 3339 time.
fn since_unix(text: &str) -> Option<i64> {
    let now = time::OffsetDateTime::now_utc();
    if let Ok(d) = humantime::parse_duration(text) {
        return Some(crate::agent::earlier(now, d)?.unix_timestamp());
    }
    crate::agent::Timestamp::parse(text)
        .ok()
        .map(|t| t.get().unix_timestamp())
}
