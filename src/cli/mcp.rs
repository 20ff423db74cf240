//! `hive mcp`: MCP over stdio, for clients that only start MCP servers as processes. A
//! bridge, not a server: each JSON-RPC message read from stdin (one a line) is POSTed to
//! the Hive given by `--server` at `/mcp` with the usual key, and each answer is written to
//! stdout as one line. Requests run concurrently (a `wait_agent` does not hold up a
//! `get_agent`); a request Hive cannot answer gets a JSON-RPC error, so the client never
//! waits for nothing. Nothing but protocol goes to stdout; failures go to stderr.

use std::sync::{Arc, Mutex};

use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{CliError, Client};

/// What the server told the bridge to send back: a session (a stateful server) and the
/// protocol version agreed at initialize.
#[derive(Default)]
struct Session {
    id: Option<HeaderValue>,
    protocol: Option<HeaderValue>,
}

pub(super) async fn bridge(client: Client) -> Result<(), CliError> {
    let client = Arc::new(client);
    let session = Arc::new(Mutex::new(Session::default()));
    let (out, mut lines_out) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines_out.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let mut calls = JoinSet::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin
        .next_line()
        .await
        .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?
    {
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                let _ = out.send(rpc_error(&Value::Null, -32700, &format!("not JSON: {e}")));
                continue;
            }
        };
        let (client, session, out) = (client.clone(), session.clone(), out.clone());
        let call = forward(client, session, message, out);
        // initialize goes first and alone: what it answers (a session, a version) is
        // sent with everything after it.
        if is_initialize(&line) {
            call.await;
        } else {
            calls.spawn(call);
        }
    }
    while calls.join_next().await.is_some() {}
    drop(out);
    let _ = writer.await;
    Ok(())
}

fn is_initialize(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|m| m["method"] == "initialize")
}

/// POSTs one message and writes what comes back.
async fn forward(
    client: Arc<Client>,
    session: Arc<Mutex<Session>>,
    message: Value,
    out: mpsc::UnboundedSender<String>,
) {
    let id = message.get("id").cloned();
    let mut req = client
        .request(Method::POST, "/mcp")
        .header(ACCEPT, "application/json, text/event-stream")
        .header(CONTENT_TYPE, "application/json")
        .body(message.to_string());
    {
        let s = session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = &s.id {
            req = req.header("mcp-session-id", v.clone());
        }
        if let Some(v) = &s.protocol {
            req = req.header("mcp-protocol-version", v.clone());
        }
    }
    let answers = match client.send(req).await {
        Ok(r) => {
            if let Some(v) = r.headers().get("mcp-session-id") {
                session.lock().unwrap_or_else(|p| p.into_inner()).id = Some(v.clone());
            }
            let sse = r
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("text/event-stream"));
            match read_capped(r).await {
                Ok(body) if sse => Ok(sse_data(&body)),
                Ok(body) if body.trim().is_empty() => Ok(Vec::new()),
                Ok(body) => Ok(vec![body]),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e.0),
    };
    let answers = answers.and_then(|answers| {
        let mut answered = false;
        for answer in answers {
            let Ok(v) = serde_json::from_str::<Value>(&answer) else {
                continue;
            };
            if let Some(version) = v["result"]["protocolVersion"].as_str() {
                if let Ok(h) = HeaderValue::from_str(version) {
                    session.lock().unwrap_or_else(|p| p.into_inner()).protocol = Some(h);
                }
            }
            answered |= id.as_ref().is_some_and(|id| v.get("id") == Some(id));
            let _ = out.send(v.to_string());
        }
        match &id {
            Some(_) if !answered => {
                Err("the server's answer is not a JSON-RPC answer to this request".into())
            }
            _ => Ok(()),
        }
    });
    match answers {
        Ok(()) => {}
        Err(why) => {
            eprintln!("hive mcp: {why}");
            // A notification has no answer to fail; a request must not hang.
            if let Some(id) = id {
                let _ = out.send(rpc_error(&id, -32000, &why));
            }
        }
    }
}

/// The most an answer may hold; a bigger one is refused rather than read.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The body of an answer, refused past [`MAX_ANSWER_BYTES`].
async fn read_capped(mut r: reqwest::Response) -> Result<String, String> {
    let mut body = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| format!("the answer did not arrive whole: {e}"))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "the server's answer is larger than {} MiB",
                MAX_ANSWER_BYTES >> 20
            ));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "the server's answer is not UTF-8 text".to_string())
}

/// The `data:` payloads of a server-sent event stream, one per event.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .map(|event| {
            event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|d| !d.trim().is_empty())
        .collect()
}

fn rpc_error(id: &Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_give_their_data() {
        let body = "id: 0\nretry: 3000\ndata:\n\ndata: {\"a\":1}\n\nevent: message\ndata: {\"b\":\ndata: 2}\n\n";
        assert_eq!(sse_data(body), vec!["{\"a\":1}", "{\"b\":\n2}"]);
        assert!(is_initialize(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#
        ));
        assert!(!is_initialize(r#"{"method":"tools/list"}"#));
        let e: Value = serde_json::from_str(&rpc_error(&json!(7), -32000, "down")).unwrap();
        assert_eq!(e["id"], 7);
        assert_eq!(e["error"]["message"], "down");
    }
}
