//! The command line's HTTP client: finds the server and the key, sends requests, and
//! turns failures into one sentence that says what to do.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::Agent;
use crate::wire::{AgentList, EventList};

/// Where the server is and how to prove who we are.
#[derive(Clone, Debug, clap::Args)]
pub struct Connection {
    /// Hive's URL.
    #[arg(
        long,
        env = "AGENT_API_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub server: String,
    /// The API key (default: AGENT_API_KEY, else the file --key-file names, else the key a
    /// local `hive serve` generated in $HIVE_DATA_DIR/api-key or ./data/api-key).
    #[arg(long, env = "AGENT_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// A file holding the API key (HIVE_API_KEY_FILE, as `hive serve --api-key-file`: in
    /// the compose deployment's agent-api, the admin key's file).
    #[arg(long, env = "HIVE_API_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
}

/// A failure of a command, as the one line the user sees.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        CliError(message.into())
    }
}

/// Agents a list asks for at a time.
const LIST_PAGE: usize = 500;

/// A client bound to one server and key.
pub struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(c: &Connection) -> Result<Client, CliError> {
        let key = match (&c.api_key, &c.key_file) {
            (Some(k), _) if !k.trim().is_empty() => k.trim().to_string(),
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    CliError::new(format!("cannot read the key file {}: {e}", path.display()))
                })?;
                let key = text.trim();
                if key.is_empty() {
                    return Err(CliError::new(format!(
                        "the key file {} is empty",
                        path.display()
                    )));
                }
                key.to_string()
            }
            _ => local_key().ok_or_else(|| {
                CliError::new(
                    "no API key: set --api-key or AGENT_API_KEY, or --key-file (a local `hive serve` keeps one in ./data/api-key)",
                )
            })?,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CliError::new(format!("cannot make an HTTP client: {e}")))?;
        Ok(Client {
            base: c.server.trim_end_matches('/').to_string(),
            key,
            http,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    /// A request to `/v1/agents/{name}[/{rest}]`, the name sent as one path segment
    /// (quoted), so that a name such as `../secrets/x` can never reach another route.
    pub fn agent_request(&self, method: Method, name: &str, rest: &[&str]) -> RequestBuilder {
        let mut segments = vec!["v1", "agents", name];
        segments.extend(rest);
        self.path_request(method, &segments)
    }

    /// A request to the path made of `segments`, each sent as one (quoted) segment.
    pub fn path_request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let mut url = reqwest::Url::parse(&self.base)
            .unwrap_or_else(|_| reqwest::Url::parse("http://invalid.invalid").expect("a URL"));
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        self.http.request(method, url).bearer_auth(&self.key)
    }

    /// A WebSocket request to `/v1/agents/{name}/{rest}?query`, with the key.
    pub fn agent_websocket(
        &self,
        name: &str,
        rest: &str,
        query: &[(&str, &str)],
    ) -> Result<tokio_tungstenite::tungstenite::http::Request<()>, CliError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut url = reqwest::Url::parse(&self.base)
            .map_err(|e| CliError::new(format!("--server {:?}: {e}", self.base)))?;
        let scheme = match url.scheme() {
            "http" => "ws",
            "https" => "wss",
            other => {
                return Err(CliError::new(format!(
                    "--server: scheme {other:?} is not http"
                )))
            }
        };
        url.set_scheme(scheme)
            .map_err(|()| CliError::new("--server: cannot be reached over a WebSocket"))?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["v1", "agents", name, rest]);
        }
        url.query_pairs_mut().extend_pairs(query);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| CliError::new(format!("a WebSocket request: {e}")))?;
        let auth = format!("Bearer {}", self.key)
            .parse()
            .map_err(|_| CliError::new("the API key holds characters a header cannot"))?;
        request.headers_mut().insert("authorization", auth);
        Ok(request)
    }

    /// Sends and reads a typed answer; an error answer becomes its message.
    pub async fn typed<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, CliError> {
        let r = self.send(req).await?;
        r.json().await.map_err(|e| {
            CliError::new(format!("the server's answer is not what was expected: {e}"))
        })
    }

    /// The agents a selector selects, fetched a page at a time (as kubectl does), every
    /// page read at the first page's resourceVersion.
    pub async fn agents(&self, selector: Option<&str>) -> Result<AgentList, CliError> {
        let mut token: Option<String> = None;
        let mut all: Option<AgentList> = None;
        loop {
            let mut req = self
                .request(Method::GET, "/v1/agents")
                .query(&[("limit", LIST_PAGE.to_string())]);
            if let Some(s) = selector {
                req = req.query(&[("label", s)]);
            }
            if let Some(t) = &token {
                req = req.query(&[("continue", t)]);
            }
            let page: AgentList = self.typed(req).await?;
            token = page.metadata["continue"].as_str().map(str::to_string);
            match &mut all {
                None => all = Some(page),
                Some(list) => list.items.extend(page.items),
            }
            if token.is_none() {
                let mut list = all.expect("a first page");
                if let Some(m) = list.metadata.as_object_mut() {
                    m.remove("continue");
                }
                return Ok(list);
            }
        }
    }

    /// An agent's recent events, oldest first.
    pub async fn events(&self, name: &str) -> Result<EventList, CliError> {
        self.typed(self.agent_request(Method::GET, name, &["events"]))
            .await
    }

    /// Sends and reads a JSON answer; an error answer becomes its message.
    pub async fn json(&self, req: RequestBuilder) -> Result<Value, CliError> {
        let r = self.send(req).await?;
        r.json()
            .await
            .map_err(|e| CliError::new(format!("the server's answer is not JSON: {e}")))
    }

    /// Reads the JSON of a successful answer, or turns an error answer into its sentence.
    pub async fn json_of(&self, r: reqwest::Response) -> Result<Value, CliError> {
        if !r.status().is_success() {
            return Err(answer_error(r).await);
        }
        r.json()
            .await
            .map_err(|e| CliError::new(format!("the server's answer is not JSON: {e}")))
    }

    /// Sends; any answer but a success becomes an error sentence.
    pub async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response, CliError> {
        let r = req.send().await.map_err(|e| self.unreachable(e))?;
        if r.status().is_success() {
            return Ok(r);
        }
        Err(answer_error(r).await)
    }

    /// GET of one agent, None on 404.
    pub async fn agent(&self, name: &str) -> Result<Option<Agent>, CliError> {
        let r = self
            .agent_request(Method::GET, name, &[])
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(answer_error(r).await);
        }
        r.json()
            .await
            .map(Some)
            .map_err(|e| CliError::new(e.to_string()))
    }

    /// A transport failure as a sentence (connection refused says so).
    pub fn unreachable(&self, e: reqwest::Error) -> CliError {
        if e.is_connect() {
            CliError::new(format!(
                "cannot reach Hive at {}: connection refused; is `hive serve` running? (set --server or AGENT_API_URL)",
                self.base
            ))
        } else if e.is_timeout() {
            CliError::new(format!("Hive at {} did not answer in time", self.base))
        } else {
            CliError::new(format!("request to {} failed: {e}", self.base))
        }
    }
}

/// `hive health`: whether the server answers /healthz.
pub async fn health(c: &Connection) -> Result<(), CliError> {
    let url = format!("{}/healthz", c.server.trim_end_matches('/'));
    let r = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| CliError::new(format!("{url} does not answer: {e}")))?;
    if r.status().is_success() {
        println!("ok");
        Ok(())
    } else {
        Err(CliError::new(format!("{url} answered {}", r.status())))
    }
}

/// An error answer as a sentence: the server's message, and for 401 what to do.
pub(super) async fn answer_error(r: reqwest::Response) -> CliError {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"].as_str().unwrap_or("").to_string();
    if status == StatusCode::UNAUTHORIZED {
        return CliError::new(format!(
            "the server refused the API key (401 {message}); set --api-key or AGENT_API_KEY"
        ));
    }
    if let Some(docs) = body["error"]["documents"].as_array() {
        let lines: Vec<String> = docs
            .iter()
            .map(|d| {
                format!(
                    "  document {}: {}",
                    d["index"],
                    d["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        return CliError::new(format!("{message}\n{}", lines.join("\n")));
    }
    if message.is_empty() {
        CliError::new(format!("the server answered {status}"))
    } else {
        CliError::new(format!("{message} ({})", status.as_u16()))
    }
}

/// The key a local `hive serve` generated, if readable here.
fn local_key() -> Option<String> {
    let dir =
        std::env::var_os("HIVE_DATA_DIR").map_or_else(|| PathBuf::from("./data"), PathBuf::from);
    let key = std::fs::read_to_string(dir.join("api-key")).ok()?;
    let key = key.trim();
    (!key.is_empty()).then(|| key.to_string())
}
