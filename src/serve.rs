//! The HTTP server loop: accepts connections and serves the router on each, with the
//! limits that keep clients from starving Hive before they are even authenticated.
//!
//! - At most `max_connections` connections at once (and never so many that Hive runs out
//!   of file descriptors for its store and its engine connection): one more is closed at
//!   once.
//! - At most `max_per_peer` of them from one address, so that one client cannot hold
//!   them all (behind a reverse proxy every client is the proxy's address: raise it to
//!   the global cap there and limit clients in the proxy).
//! - A client has [`HEADER_TIMEOUT`] to send a request's headers (including a first one
//!   on a new connection), so half-sent requests cannot hold connections.
//! - On shutdown, connections finish their request in flight within the grace, then close.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept back from clients for the store, the engine and the rest.
const RESERVED_FDS: usize = 64;

/// How many connections the server may hold.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// In all.
    pub connections: usize,
    /// From one address.
    pub per_peer: usize,
}

/// Connections open per peer address; a [`PeerPlace`] holds one.
#[derive(Default)]
struct Peers(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One connection's place among its peer's.
struct PeerPlace {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    /// A place for one more connection from `ip`, unless it holds `max` already.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerPlace> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerPlace {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `stop`, then lets open requests finish for at
/// most `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    caps: Caps,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let cap = connection_cap(caps.connections);
    let per_peer = caps.per_peer.clamp(1, cap);
    let permits = Arc::new(Semaphore::new(cap));
    let peers = Arc::new(Peers::default());
    let mut refused_peer = 0u64;
    let mut connections = JoinSet::new();
    let mut refused = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, most likely: wait for some to come back.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(place) = peers.take(peer.ip(), per_peer) else {
                    refused_peer += 1;
                    if refused_peer.is_power_of_two() {
                        warn!(per_peer, peer = %peer.ip(), refused = refused_peer, "too many connections from one address: closing its new ones");
                    }
                    drop(stream);
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        warn!(cap, refused, "too many connections: closing new ones");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(router.clone());
                let stop = stop.clone();
                connections.spawn(tracing::Instrument::in_current_span(async move {
                    let _permit = (permit, place);
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::pin!(connection);
                    let result = tokio::select! {
                        r = connection.as_mut() => r,
                        () = stop.cancelled() => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(e) = result {
                        debug!(error = %e, "connection ended with an error");
                    }
                }));
            }
        }
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        warn!(grace = ?grace, open = connections.len(), "closing connections still open after the grace period");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

/// The connections allowed at once: `wanted`, but never more than the process's file
/// descriptor limit leaves after [`RESERVED_FDS`] (half of it under a tiny limit).
fn connection_cap(wanted: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        });
    match soft {
        Some(soft) => {
            let reserve = RESERVED_FDS.min(soft / 2);
            wanted.min(soft - reserve).max(1)
        }
        None => wanted.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest_of_hive() {
        let cap = connection_cap(usize::MAX);
        let soft: usize = std::fs::read_to_string("/proc/self/limits")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .split_whitespace()
            .nth(3)
            .unwrap()
            .parse()
            .unwrap();
        assert!(cap < soft, "{cap} of {soft}");
        assert_eq!(connection_cap(10), 10.min(cap));
    }
}
