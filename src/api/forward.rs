//! `GET /v1/agents/{name}/portforward?port=N`, upgraded to a WebSocket that carries one
//! TCP connection to the agent's port: binary frames both ways, a close when either side
//! ends. `hive port-forward` opens one per local connection (as `kubectl port-forward`
//! does over its own protocol). The service dials the agent; this only carries bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::Query;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::Principal;
use crate::service::Forwarded;

/// Query of the port-forward route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardQuery {
    /// The agent's port.
    port: u16,
}

#[utoipa::path(get, path = "/v1/agents/{name}/portforward", operation_id = "portForwardAgent", tag = "agents",
    params(("name" = String, Path), ("port" = u16, Query, description = "the agent's TCP port")),
    responses((status = 101, description = "a WebSocket carrying one TCP connection to the port, binary frames both ways"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the agent is not running, or nothing answers on the port"), (status = 429, body = ErrorBody), (status = 501, body = ErrorBody)))]
/// `GET /v1/agents/{name}/portforward?port=N`: one TCP connection to the agent's port,
/// over a WebSocket. It holds one of the key's open streams, and ends when the key is
/// revoked.
pub async fn forward(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<ForwardQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|_| {
        ApiError::BadRequest(
            "port-forward is a WebSocket: send the upgrade headers (hive port-forward does)".into(),
        )
    })?;
    let place = state.streams.acquire(&p)?;
    let tcp = state.service.connect(&p, &name, query.port).await?;
    // Frames of at most 1 MiB (a forwarded stream is cut into 16 KiB ones anyway).
    let upgrade = upgrade.max_message_size(1 << 20).max_frame_size(1 << 20);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let started = Instant::now();
        let counts = Counts::default();
        tokio::select! {
            () = carry(socket, tcp, &counts) => {}
            () = place.revoked() => {}
        }
        let forwarded = Forwarded {
            bytes_in: counts.to_agent.load(Ordering::Relaxed),
            bytes_out: counts.from_agent.load(Ordering::Relaxed),
            duration: started.elapsed(),
        };
        state.service.forwarded(&p, &name, query.port, forwarded);
    }))
}

/// Bytes carried each way, counted as they go (so a connection cut short by revocation
/// is still audited with what went through).
#[derive(Default)]
struct Counts {
    to_agent: AtomicU64,
    from_agent: AtomicU64,
}

/// Carries bytes between the WebSocket and the TCP connection until both directions
/// ended.
async fn carry(socket: WebSocket, tcp: TcpStream, counts: &Counts) {
    let (mut sink, mut frames) = socket.split();
    let (mut from_agent, mut to_agent) = tcp.into_split();
    let inbound = async {
        while let Some(Ok(message)) = frames.next().await {
            match message {
                Message::Binary(bytes) => {
                    counts
                        .to_agent
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if to_agent.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_agent.shutdown().await;
    };
    let outbound = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match from_agent.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    counts.from_agent.fetch_add(read as u64, Ordering::Relaxed);
                    let chunk = axum::body::Bytes::copy_from_slice(&buffer[..read]);
                    if sink.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    tokio::join!(inbound, outbound);
}
