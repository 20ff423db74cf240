//! `/mcp`: the Model Context Protocol over streamable HTTP, so that any agent framework
//! (nanobot's `tools.mcpServers`, Claude Code, the OpenAI Agents SDK, LangGraph) can declare
//! agents through Hive with no plugin. Served by rmcp, the official Rust SDK (this file is
//! its only user), on the API's own listener and behind the API's own key middleware: a
//! missing or wrong key is a 401 before any MCP exchange. Each tool is an adapter over the
//! same [`Service`](crate::service::Service) as `/v1`, so owners, roles, the admission
//! policy and the audit are the same; a refusal is a tool result with `isError: true`
//! whose text is the API's own error body (`{"error": {"code", "message", "field", ...}}`).
//!
//! Stateless (no MCP session to keep or to exhaust), answering plain JSON: every call is
//! one POST with its answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::request::Parts;
use futures_util::StreamExt;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::AppState;
use crate::access::Principal;
use crate::agent::WaitFor;
use crate::selector::Selector;
use crate::service::Action;

/// The Host headers `/mcp` answers by default: loopback, and the compose service name.
pub const DEFAULT_ALLOWED_HOSTS: &str = "localhost,127.0.0.1,::1,agent-api";
/// The longest `wait_agent` may wait.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// The most of a file one `read_agent_file` answers.
const MAX_FILE_TEXT: usize = 1024 * 1024;

/// The most log output one `agent_logs` answers (the newest).
const MAX_LOG_BYTES: usize = 1024 * 1024;

#[utoipa::path(post, path = "/mcp", operation_id = "mcp", tag = "mcp",
    request_body(content = Object, content_type = "application/json", description = "a JSON-RPC 2.0 message of the Model Context Protocol (initialize, tools/list, tools/call, ...)"),
    responses((status = 200, description = "the JSON-RPC answer; a refused tool call is a result with isError true whose text is the API's error body", content_type = "application/json"), (status = 202, description = "a notification, accepted"), (status = 401, body = super::error::ErrorBody), (status = 403, description = "a Host header not in --mcp-allowed-hosts"), (status = 406, description = "Accept must list application/json and text/event-stream"), (status = 413, description = "the message is larger than 1 MiB")))]
/// `POST /mcp`: the Model Context Protocol over streamable HTTP (documentation only: the
/// endpoint is rmcp's service, nested into the router).
#[allow(dead_code)]
pub(super) async fn document_mcp() {}

/// The MCP endpoint, to nest at `/mcp`. `allowed_hosts` are the Host headers it answers
/// (DNS-rebinding protection); `*` answers any.
pub fn service(
    state: AppState,
    allowed_hosts: &[String],
) -> StreamableHttpService<HiveTools, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(super::body::MAX_BODY_BYTES);
    config = if allowed_hosts.iter().any(|h| h == "*") {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(allowed_hosts.iter().cloned())
    };
    let tools = HiveTools::tool_router();
    StreamableHttpService::new(
        move || {
            Ok(HiveTools {
                state: state.clone(),
                tool_router: tools.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// Hive's MCP tools, over the service.
#[derive(Clone)]
pub struct HiveTools {
    state: AppState,
    tool_router: ToolRouter<HiveTools>,
}

/// `apply_agents`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyArgs {
    /// One or more Agent documents (apiVersion hive/v1, kind Agent, metadata.name, spec.image,
    /// ...): YAML separated by `---`, or JSON (one object or an array).
    pub manifest: String,
    /// Check every document and answer what would change, as a diff; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// An agent's name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameArgs {
    /// The agent's name (metadata.name).
    pub name: String,
}

/// `list_agents`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// A label selector: `k=v`, `k!=v`, `k` or `!k`, comma-separated; all must hold.
    #[serde(default)]
    pub selector: Option<String>,
}

/// `agent_logs`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    /// The agent's name.
    pub name: String,
    /// Only the last N lines (default 100).
    #[serde(default)]
    pub tail: Option<u64>,
    /// Only output newer than this: a duration such as `10m`, or an RFC 3339 time.
    #[serde(default)]
    pub since: Option<String>,
}

/// `exec_agent`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    /// The agent's name.
    pub name: String,
    /// The program and its arguments; no shell runs unless it names one (["sh", "-c", "..."]).
    pub command: Vec<String>,
    /// Text given to the command's standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// How long to wait (default 30s, at most 10m).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `read_agent_file`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadFileArgs {
    /// The agent's name.
    pub name: String,
    /// An absolute path to a regular file in the agent.
    pub path: String,
    /// The most bytes answered (default and at most 1 MiB); the rest is cut.
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

/// `write_agent_file`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// The agent's name.
    pub name: String,
    /// An absolute path to write (its directory must exist).
    pub path: String,
    /// The file's text.
    pub content: String,
}

/// `wait_agent`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    /// The agent's name.
    pub name: String,
    /// What to wait for: `phase=<Pending|Running|Stopped|Succeeded|Failed>` or
    /// `condition=<Ready|Progressing>`, with the agent's current generation observed.
    #[serde(rename = "for")]
    pub wait_for: String,
    /// How long to wait at most, e.g. `60s` or `2m` (default 60s, at most 10m).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// The authenticated caller, which the key middleware put on the HTTP request.
fn caller(ctx: &RequestContext<RoleServer>) -> Result<Principal, ErrorData> {
    ctx.extensions
        .get::<Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request carries no authenticated key", None))
}

/// A success: the answer as JSON text.
fn answer(value: &impl Serialize) -> CallToolResult {
    let text = serde_json::to_string(value).unwrap_or_else(|e| e.to_string());
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// A success whose JSON is already made (an agent's stored JSON, a list of them).
fn text(json: &[u8]) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(
        String::from_utf8_lossy(json).into_owned(),
    )])
}

/// A refusal: `isError`, and the API's error body as the text.
fn refusal(error: impl Into<ApiError>) -> CallToolResult {
    let (_, body) = error.into().body();
    error_body(body)
}

fn error_body(body: ErrorBody) -> CallToolResult {
    let text = serde_json::to_string(&body).unwrap_or_else(|e| e.to_string());
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// A call the client cancelled or went away from.
fn gone() -> ErrorData {
    ErrorData::internal_error("the request was cancelled", None)
}

/// Either answer as a tool result.
fn result<T: Serialize, E: Into<ApiError>>(r: Result<T, E>) -> CallToolResult {
    match r {
        Ok(v) => answer(&v),
        Err(e) => refusal(e),
    }
}

#[tool_router]
impl HiveTools {
    #[tool(
        description = "Create or update agents from one or more Agent documents (YAML or JSON), as `kubectl apply`: every document is checked (shape, policy, quota) before any is written, and nothing is written if one is refused. Answers each agent's result (created, configured, unchanged) and generation; with dryRun, the diff instead."
    )]
    async fn apply_agents(
        &self,
        Parameters(args): Parameters<ApplyArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        let documents = if args.manifest.trim().is_empty() {
            Err("the manifest is empty".to_string())
        } else {
            crate::document::stream(args.manifest.as_bytes())
                .map_err(|e| format!("the manifest has a bad {e}"))
        };
        let documents = match documents {
            Ok(d) => d,
            Err(message) => {
                // Refused before the service, which audits what reaches it.
                self.state
                    .service
                    .audit_refusal(Some(&p), "apply", "-", 400, &message);
                return Ok(refusal(ApiError::BadRequest(message)));
            }
        };
        let applied = self
            .state
            .service
            .apply(&p, documents, args.dry_run, None)
            .await
            .map(|items| crate::wire::ApplyAnswer {
                dry_run: args.dry_run,
                items,
            });
        Ok(result(applied))
    }

    #[tool(
        description = "One agent: its spec, and its status (phase, conditions, message, container, restarts) as Hive last observed it."
    )]
    async fn get_agent(
        &self,
        Parameters(args): Parameters<NameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        Ok(result(
            self.state.service.visible(&p, &args.name).map(|r| r.agent),
        ))
    }

    #[tool(
        description = "The agents this key may see, optionally only those a label selector selects (e.g. team=research,tier!=gpu)."
    )]
    async fn list_agents(
        &self,
        Parameters(args): Parameters<ListArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        let selector = match args.selector.as_deref().map(Selector::parse).transpose() {
            Ok(s) => s.unwrap_or_default(),
            Err(message) => return Ok(refusal(ApiError::BadRequest(message))),
        };
        Ok(match self.state.service.list(&p, &selector, None, None) {
            Ok(page) => text(&super::agents::list_body(&page)),
            Err(e) => refusal(e),
        })
    }

    #[tool(
        description = "What Hive did to an agent and why (created, started, recreated on a change, repaired, failed), oldest first."
    )]
    async fn agent_events(
        &self,
        Parameters(args): Parameters<NameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        Ok(result(
            self.state
                .service
                .events(&p, &args.name)
                .map(|items| crate::wire::EventList { items }),
        ))
    }

    #[tool(
        description = "Delete an agent: Hive removes its container (and its volumes unless they are retained), then the agent."
    )]
    async fn delete_agent(
        &self,
        Parameters(args): Parameters<NameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        Ok(result(self.state.service.delete(&p, &args.name).await))
    }

    #[tool(description = "Declare an agent Running (spec.state); Hive starts its container.")]
    async fn start_agent(
        &self,
        Parameters(args): Parameters<NameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.act(ctx, &args.name, Action::Start).await
    }

    #[tool(
        description = "Declare an agent Stopped (spec.state); Hive stops its container and keeps its volumes."
    )]
    async fn stop_agent(
        &self,
        Parameters(args): Parameters<NameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.act(ctx, &args.name, Action::Stop).await
    }

    #[tool(
        description = "Say an agent is active (a heartbeat): its idle clock (spec.lifecycle.idleTimeout) starts again, and an agent Hive stopped for idleness resumes."
    )]
    async fn touch_agent(
        &self,
        Parameters(args): Parameters<NameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.act(ctx, &args.name, Action::Touch).await
    }

    #[tool(description = "Restart an agent's container once.")]
    async fn restart_agent(
        &self,
        Parameters(args): Parameters<NameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.act(ctx, &args.name, Action::Restart).await
    }

    #[tool(
        description = "Run a command once in a running agent's container (as `kubectl exec` without a terminal) and answer {exitCode, stdout, stderr, truncated, timedOut}. The command is a list of words; use [\"sh\", \"-c\", \"...\"] for a shell."
    )]
    async fn exec_agent(
        &self,
        Parameters(args): Parameters<ExecArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        // An exec holds a place among the key's open streams while it runs, as over HTTP.
        let place = match self.state.streams.acquire(&p) {
            Ok(place) => place,
            Err(e) => return Ok(refusal(e)),
        };
        let request = crate::wire::ExecRequest {
            command: args.command,
            stdin: args.stdin,
            timeout: args.timeout,
            ..Default::default()
        };
        tokio::select! {
            _ = ctx.ct.cancelled() => Err(gone()),
            () = place.revoked() => Ok(refusal(ApiError::Unauthorized(super::streams::REVOKED))),
            r = self.state.service.exec_to_end(&p, &args.name, request) => Ok(result(r)),
        }
    }

    #[tool(
        description = "Read a regular file of an agent as text (invalid UTF-8 replaced), its first maxBytes (default and at most 1 MiB); a file larger than 1 MiB is refused."
    )]
    async fn read_agent_file(
        &self,
        Parameters(args): Parameters<ReadFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        // A read holds a place among the key's open streams, as over HTTP.
        let _place = match self.state.streams.acquire(&p) {
            Ok(place) => place,
            Err(e) => return Ok(refusal(e)),
        };
        let max = args.max_bytes.unwrap_or(MAX_FILE_TEXT).min(MAX_FILE_TEXT);
        // A file larger than 1 MiB (with its archive's headers) is refused, not read whole.
        let read = self.state.service.read_files(
            &p,
            &args.name,
            &args.path,
            false,
            MAX_FILE_TEXT + 64 * 1024,
        );
        match read.await {
            Ok(crate::service::Files::File(bytes)) => {
                Ok(CallToolResult::success(vec![ContentBlock::text(
                    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned(),
                )]))
            }
            Ok(crate::service::Files::Tar(_)) => Ok(refusal(ApiError::BadRequest(format!(
                "path: {} is a directory; list it with exec_agent (ls)",
                args.path.chars().take(256).collect::<String>()
            )))),
            Err(e) => Ok(refusal(e)),
        }
    }

    #[tool(
        description = "Write a text file into an agent (its directory must exist), owned by the agent's user."
    )]
    async fn write_agent_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        let _place = match self.state.streams.acquire(&p) {
            Ok(place) => place,
            Err(e) => return Ok(refusal(e)),
        };
        let written = self
            .state
            .service
            .write_files_to_end(&p, &args.name, &args.path, args.content.into_bytes(), false)
            .await;
        Ok(result(
            written.map(|()| serde_json::json!({"written": args.path})),
        ))
    }

    #[tool(
        description = "An agent's output (stdout and stderr), the last `tail` lines (default 100), optionally only since a time."
    )]
    async fn agent_logs(
        &self,
        Parameters(args): Parameters<LogsArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        let request = crate::service::LogRequest {
            tail: Some(args.tail.unwrap_or(100)),
            follow: false,
            since: args.since.as_deref(),
        };
        let mut stream = match self.state.service.logs(&p, &args.name, request) {
            Ok(stream) => stream,
            Err(e) => return Ok(refusal(e)),
        };
        // A read of the engine's output holds a place among the key's streams, as a log
        // follow does, and ends when the client goes away.
        let place = match self.state.streams.acquire(&p) {
            Ok(place) => place,
            Err(e) => return Ok(refusal(e)),
        };
        let mut output = Vec::new();
        let read = async {
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => output.extend_from_slice(&bytes),
                    Err(e) => return Err(ApiError::from(e)),
                }
                if output.len() > 2 * MAX_LOG_BYTES {
                    // Keep the end: the newest output is what the caller asked for.
                    output.drain(..output.len() - MAX_LOG_BYTES);
                }
            }
            Ok(())
        };
        tokio::select! {
            _ = ctx.ct.cancelled() => return Err(gone()),
            () = place.revoked() => return Ok(refusal(ApiError::Unauthorized(super::streams::REVOKED))),
            r = read => if let Err(e) = r { return Ok(refusal(e)) },
        }
        let start = output.len().saturating_sub(MAX_LOG_BYTES);
        Ok(CallToolResult::success(vec![ContentBlock::text(
            String::from_utf8_lossy(&output[start..]).into_owned(),
        )]))
    }

    #[tool(
        description = "Wait until an agent reaches a phase (for: phase=Running) or a condition holds (for: condition=Ready), its current generation observed, as `hive wait`; answers the agent, or an error saying how it was last seen when the timeout passes."
    )]
    async fn wait_agent(
        &self,
        Parameters(args): Parameters<WaitArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        let wanted: WaitFor = match args.wait_for.parse() {
            Ok(w) => w,
            Err(e) => return Ok(refusal(ApiError::BadRequest(format!("for: {e}")))),
        };
        let timeout = match args.timeout.as_deref().map(humantime::parse_duration) {
            None => Duration::from_secs(60),
            Some(Ok(t)) if t <= MAX_WAIT => t,
            Some(_) => {
                return Ok(refusal(ApiError::BadRequest(
                    "timeout: a duration such as 60s or 2m, at most 10m".into(),
                )))
            }
        };
        // A wait holds a place among the key's open streams, as a watch does.
        let place = match self.state.streams.acquire(&p) {
            Ok(place) => place,
            Err(e) => return Ok(refusal(e)),
        };
        let start = Instant::now();
        // Subscribed before the first look, so no change between the two is missed.
        let mut changes = match self.state.store.watch(None) {
            Ok((_, rx)) => rx,
            Err(_) => {
                return Ok(refusal(ApiError::Internal(
                    "cannot follow the store".into(),
                )))
            }
        };
        loop {
            let last = match self.state.service.visible(&p, &args.name) {
                Ok(r) if wanted.holds(&r.agent) => return Ok(answer(&r.agent)),
                Ok(r) => WaitFor::last_seen(&r.agent),
                // An agent that goes away (or was never there) ends the wait.
                Err(e) => return Ok(refusal(e)),
            };
            let left = timeout.saturating_sub(start.elapsed());
            let changed = async {
                loop {
                    match changes.recv().await {
                        Ok(event) if event.agent().metadata.name != args.name => continue,
                        // This agent changed, or changes were missed: look again.
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            return true
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                    }
                }
            };
            let changed = async {
                tokio::select! {
                    _ = ctx.ct.cancelled() => None,
                    // A revoked key's wait ends as if it had never been let in.
                    () = place.revoked() => Some(Err(())),
                    c = changed => Some(Ok(c)),
                }
            };
            match tokio::time::timeout(left, changed).await {
                // The client went away: stop waiting, and give its place back.
                Ok(None) => return Err(gone()),
                Ok(Some(Err(()))) => {
                    return Ok(refusal(ApiError::Unauthorized(super::streams::REVOKED)))
                }
                Ok(Some(Ok(true))) => continue,
                Ok(Some(Ok(false))) => {
                    return Ok(refusal(ApiError::Unavailable("Hive is shutting down".into())))
                }
                Err(_) => {
                    return Ok(error_body(ErrorBody {
                        error: ErrorDetail {
                            code: "timeout",
                            message: format!(
                                "timed out after {} waiting for agent {:?} to reach {wanted}; last seen: {last}",
                                humantime::format_duration(timeout),
                                args.name
                            ),
                            field: None,
                            rule: None,
                            documents: None,
                        },
                    }))
                }
            }
        }
    }
}

impl HiveTools {
    async fn act(
        &self,
        ctx: RequestContext<RoleServer>,
        name: &str,
        action: Action,
    ) -> Result<CallToolResult, ErrorData> {
        let p = caller(&ctx)?;
        Ok(result(self.state.service.act(&p, name, action).await))
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "hive",
    instructions = "Hive runs AI agents in containers, declaratively. Declare agents with apply_agents (Agent documents: apiVersion hive/v1, kind Agent, metadata.name, spec.image, spec.command, spec.env, spec.envFrom secrets, spec.state Running|Stopped); watch them with get_agent, list_agents, agent_events, agent_logs and wait_agent; change them with start_agent, stop_agent, restart_agent, touch_agent and delete_agent; run a command in one with exec_agent, and read or write its files with read_agent_file and write_agent_file. Every agent is reachable by its name on the agents' network."
)]
impl ServerHandler for HiveTools {}
