//! `GET /v1/agents?watch=true`: the changes of the agents a key sees, as newline-delimited
//! JSON, from now or from a list's resourceVersion.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::error::ApiError;
use super::AppState;
use crate::access::Principal;
use crate::agent::Agent;
use crate::selector::Selector;
use crate::store::Entry;

/// `GET /v1/agents?watch=true[&resourceVersion=N]`: one JSON object a line,
/// `{"type": "ADDED" | "MODIFIED" | "DELETED", "object": <agent>}`, for every change of an
/// agent the caller sees. Without a resourceVersion the current agents come first, as
/// ADDED. A watcher that falls too far behind gets `{"type": "ERROR", "object": {"code":
/// 410, ...}}` and the stream ends: list again and watch from the list's version.
pub(super) fn watch(
    state: &AppState,
    p: Principal,
    selector: Selector,
    since: Option<&str>,
    closer: Option<crate::serve::ConnectionCloser>,
) -> Result<Response, ApiError> {
    let place = state.streams.acquire(&p)?;
    let since = since
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest("resourceVersion is not a version from a list".into())
            })
        })
        .transpose()?;
    let (past, rx) = state.store.watch(since).map_err(|horizon| ApiError::Gone(format!(
        "resourceVersion {} is older than the changes kept (from {horizon}); list again and watch from the list's resourceVersion",
        since.unwrap_or_default()
    )))?;
    // Without a version: the agents as they are now, then every change after.
    let initial: Vec<(&'static str, Arc<Entry>, u64)> = match since {
        Some(_) => past.into_iter().map(|e| (e.kind, e.entry, e.seq)).collect(),
        None => {
            let snapshot = state.store.snapshot();
            let seq = snapshot.version;
            snapshot
                .agents
                .values()
                .map(|e| ("ADDED", e.clone(), seq))
                .collect()
        }
    };
    let visible = Arc::new(move |a: &Agent| {
        p.sees(a.metadata.owner.as_deref().unwrap_or_default())
            && selector.matches(&a.metadata.labels)
    });
    let seen = initial.iter().map(|(_, _, seq)| *seq).max().unwrap_or(0);
    let first: Vec<_> = initial
        .into_iter()
        .filter(|(_, e, _)| visible(&e.record.agent))
        .map(|(k, e, _)| Ok::<_, Infallible>(watch_line(k, &e.json)))
        .collect();
    // State: the receiver and the newest version sent; None once the stream must end.
    let live = futures_util::stream::unfold(Some((rx, seen)), move |state| {
        let visible = visible.clone();
        async move {
            let (mut rx, mut seen) = state?;
            loop {
                match rx.recv().await {
                    Ok(e) if e.seq <= seen => continue,
                    Ok(e) => {
                        seen = e.seq;
                        if visible(e.agent()) {
                            return Some((Ok(watch_line(e.kind, &e.entry.json)), Some((rx, seen))));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let gone = serde_json::json!({"code": 410, "message": "this watch fell too far behind; list again and watch from the list's resourceVersion"});
                        return Some((Ok(watch_line("ERROR", gone.to_string().as_bytes())), None));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    // The stream holds its place among the key's open streams until it ends, and ends
    // with an ERROR line when the key is revoked.
    let revoked = serde_json::json!({"code": 401, "message": super::streams::REVOKED});
    let revoked = Ok(watch_line("ERROR", revoked.to_string().as_bytes()));
    let body = Body::from_stream(place.bind(
        futures_util::stream::iter(first).chain(live),
        Some(revoked),
        closer,
    ));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// One line of a watch: `{"type": kind, "object": <the agent's JSON>}`, the agent's
/// bytes copied in as they are (serialized once per change, not once per watcher).
fn watch_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}
