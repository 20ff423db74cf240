//! The client: one connection to the engine, made lazily and with the API version
//! negotiated on first contact, every call under a deadline, and the engine's errors in
//! Hive's words (cut to one printable line).

use super::*;

pub(super) struct Client {
    /// Where the engine is (None: DOCKER_HOST or the local socket).
    pub(super) host: Option<String>,
    /// bollard's own per-request timeout, a backstop behind [`DockerOrchestrator::call`].
    pub(super) timeout: Duration,
    /// Made on first use; bollard refuses to make one while the socket is missing.
    pub(super) docker: Option<Docker>,
    /// Whether `docker` speaks the engine's API version.
    pub(super) negotiated: bool,
    /// When a negotiation was last tried, so a silent engine is not asked on every call.
    pub(super) last_attempt: Option<Instant>,
}

/// The shared client: made on first use, and moved to the engine's API version the
/// first time the engine answers (until then bollard's default version is used). While
/// the engine does not answer, negotiation is tried at most every [`NEGOTIATE_EVERY`].
pub(super) async fn negotiated(
    client: Arc<std::sync::Mutex<Client>>,
) -> Result<Docker, OrchestratorError> {
    let docker = {
        let mut c = client.lock().unwrap_or_else(|p| p.into_inner());
        let docker = match &c.docker {
            Some(d) => d.clone(),
            None => {
                let version = bollard::API_DEFAULT_VERSION;
                let secs = c.timeout.as_secs();
                let d = match c.host.as_deref() {
                    None => Docker::connect_with_local_defaults()
                        .map(|d| d.with_timeout(Duration::from_secs(secs))),
                    Some(h) if h.starts_with("tcp://") || h.starts_with("http://") => {
                        Docker::connect_with_http(h, secs, version)
                    }
                    Some(h) => Docker::connect_with_unix(
                        h.strip_prefix("unix://").unwrap_or(h),
                        secs,
                        version,
                    ),
                }
                .map_err(|e| OrchestratorError::Unavailable(e.to_string()))?;
                c.docker = Some(d.clone());
                d
            }
        };
        let due = c
            .last_attempt
            .is_none_or(|t| t.elapsed() >= NEGOTIATE_EVERY);
        if c.negotiated || !due {
            return Ok(docker);
        }
        c.last_attempt = Some(Instant::now());
        docker
    };
    if let Ok(Ok(d)) = tokio::time::timeout(PING_TIMEOUT, docker.clone().negotiate_version()).await
    {
        tracing::info!(api_version = %d.client_version(), "connected to the docker engine");
        let mut c = client.lock().unwrap_or_else(|p| p.into_inner());
        c.docker = Some(d.clone());
        c.negotiated = true;
        return Ok(d);
    }
    Ok(docker)
}

/// The exit code in a listing's status text, such as `Exited (137) 5 seconds ago`.
pub(super) fn exit_code_of_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

pub(super) fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// What the engine said, cut to a short, printable line: engine errors can carry what a
/// registry or another service answered, which is not for agents' statuses.
pub(super) fn message_of(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => sanitize(message),
        other => sanitize(&other.to_string()),
    }
}

/// The first line of `text`, printable ASCII only, at most 160 characters.
pub fn sanitize(text: &str) -> String {
    const MAX: usize = 160;
    let line = text.lines().next().unwrap_or_default();
    let mut out: String = line
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX)
        .collect();
    if line.chars().count() > MAX || text.lines().nth(1).is_some() {
        out.push_str(" ...");
    }
    out
}

pub(super) fn map_err(e: BollardError) -> OrchestratorError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            OrchestratorError::Refused(sanitize(&message))
        }
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
            OrchestratorError::Refused(sanitize(&e.to_string()))
        }
        BollardError::RequestTimeoutError => OrchestratorError::Timeout {
            call: "a request",
            secs: 0,
        },
        other => OrchestratorError::Unavailable(sanitize(&other.to_string())),
    }
}

pub(super) fn map_err_for(e: BollardError, id: &str) -> OrchestratorError {
    if status_of(&e) == Some(404) {
        OrchestratorError::NotFound(id.to_string())
    } else {
        map_err(e)
    }
}

impl DockerOrchestrator {
    /// The client, negotiating the API version with the engine the first time it answers.
    pub(super) fn docker(
        &self,
    ) -> impl std::future::Future<Output = Result<Docker, OrchestratorError>> + Send + 'static {
        negotiated(self.client.clone())
    }

    /// Runs one engine call under the deadline (plus `extra` where the engine itself
    /// waits, as for a stop), and hands back the engine's answer.
    pub(super) async fn call<T>(
        &self,
        call: &'static str,
        extra: Duration,
        f: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<Result<T, BollardError>, OrchestratorError> {
        let limit = self.settings.timeout + extra;
        tokio::time::timeout(limit, f)
            .await
            .map_err(|_| OrchestratorError::Timeout {
                call,
                secs: limit.as_secs(),
            })
    }
}

impl DockerOrchestrator {
    /// [`DockerOrchestrator::call`], with the engine's refusal in Hive's words.
    pub(super) async fn request<T>(
        &self,
        call: &'static str,
        extra: Duration,
        f: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, OrchestratorError> {
        self.call(call, extra, f).await?.map_err(map_err)
    }

    /// [`DockerOrchestrator::call`] of something that may not be there: absent (404) is
    /// an answer, None; any other refusal is an error.
    pub(super) async fn request_or_absent<T>(
        &self,
        call: &'static str,
        extra: Duration,
        f: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<Option<T>, OrchestratorError> {
        match self.call(call, extra, f).await? {
            Ok(v) => Ok(Some(v)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }
}
