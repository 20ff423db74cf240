//! `hive port-forward NAME [LOCAL:]REMOTE`: listens on 127.0.0.1:LOCAL and carries each
//! accepted connection to the agent's port REMOTE through Hive (one WebSocket each), as
//! `kubectl port-forward` does; until interrupted.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::{CliError, Client};

/// `LOCAL:REMOTE` or `PORT` (the same on both sides; LOCAL 0 picks a free one).
fn ports(spec: &str) -> Result<(u16, u16), CliError> {
    let bad = || {
        CliError::new(format!(
            "{spec:?}: expected [LOCAL:]REMOTE, such as 8080:80"
        ))
    };
    let parse = |p: &str| p.parse::<u16>().map_err(|_| bad());
    match spec.split_once(':') {
        Some((local, remote)) => Ok((parse(local)?, parse(remote)?)),
        None => {
            let p = parse(spec)?;
            Ok((p, p))
        }
    }
}

pub(super) async fn port_forward(client: &Client, name: &str, spec: &str) -> Result<(), CliError> {
    let (local, remote) = ports(spec)?;
    if remote == 0 {
        return Err(CliError::new("the agent's port must be 1 to 65535"));
    }
    let listener = TcpListener::bind(("127.0.0.1", local))
        .await
        .map_err(|e| CliError::new(format!("cannot listen on 127.0.0.1:{local}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::new(e.to_string()))?;
    println!("Forwarding from {bound} -> {name}:{remote}");
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|e| CliError::new(format!("accepting: {e}")))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let request =
            client.agent_websocket(name, "portforward", &[("port", &remote.to_string())])?;
        tokio::spawn(async move {
            if let Err(e) = carry(request, tcp).await {
                eprintln!("hive: port-forward to {remote}: {e}");
            }
        });
    }
}

/// One connection: the WebSocket to Hive on one side, the local client on the other.
async fn carry(
    request: tokio_tungstenite::tungstenite::http::Request<()>,
    tcp: TcpStream,
) -> Result<(), String> {
    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(s) => s,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(String::from))
                .unwrap_or_else(|| body.to_string());
            return Err(format!("Hive refused ({}): {message}", r.status()));
        }
        Err(e) => return Err(e.to_string()),
    };
    let (mut sink, mut frames) = socket.split();
    let (mut from_client, mut to_client) = tcp.into_split();
    let up = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match from_client.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::binary(buffer[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(message)) = frames.next().await {
            match message {
                Message::Binary(bytes) if to_client.write_all(&bytes).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_local_colon_remote_or_one_for_both() {
        assert_eq!(ports("8080:80").unwrap(), (8080, 80));
        assert_eq!(ports("9000").unwrap(), (9000, 9000));
        assert_eq!(ports("0:80").unwrap(), (0, 80));
        for bad in ["", "a:80", "80:", "70000", "1:2:3"] {
            assert!(ports(bad).is_err(), "{bad}");
        }
    }
}
