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
//!   on a new connection), so half-sent requests cannot hold connections; and one that
//!   stops reading answers is cut off once a write has waited [`WRITE_STALL`].
//! - Peers are counted by address, an IPv6 one by its /64 (what one host is given).
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
/// How long a write to a client may wait for the client to read before the connection is
/// closed (a stream that is merely quiet never waits: it writes nothing).
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// File descriptors kept back from clients for the store, the engine and the rest.
const RESERVED_FDS: usize = 64;

/// Closes the connection a request came on, at once, whatever it is sending (in the
/// request's extensions when it came through [`serve`]).
#[derive(Clone, Debug)]
pub struct ConnectionCloser(CancellationToken);

impl ConnectionCloser {
    /// Closes it.
    pub fn close(&self) {
        self.0.cancel()
    }
}

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
                let Some(place) = peers.take(peer_key(peer.ip()), per_peer) else {
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
                // What a request may use to close its own connection at once (a stream
                // whose key was revoked, while its client is not reading).
                let kill = CancellationToken::new();
                let close = ConnectionCloser(kill.clone());
                let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                    router.clone(),
                    move |mut request: hyper::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(close.clone());
                        request
                    },
                ));
                let stop = stop.clone();
                connections.spawn(tracing::Instrument::in_current_span(async move {
                    let _permit = (permit, place);
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(WriteStall::new(stream, WRITE_STALL)), service)
                        .with_upgrades();
                    tokio::pin!(connection);
                    let result = tokio::select! {
                        r = connection.as_mut() => r,
                        // Dropped at once: what it had not sent is not sent.
                        () = kill.cancelled() => Ok(()),
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

/// What a peer is counted by: its IPv4 address, or its IPv6 /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A connection whose writes fail once one has waited `stall` for the peer to read.
struct WriteStall<T> {
    io: T,
    stall: Duration,
    /// Running while a write waits.
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteStall<T> {
    fn new(io: T, stall: Duration) -> Self {
        WriteStall {
            io,
            stall,
            waiting: None,
        }
    }

    /// After the inner write answered `r`: a ready answer ends the wait; a pending one
    /// starts or goes on waiting, and fails once it has waited too long.
    fn waited<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        use std::future::Future;
        if r.is_ready() {
            self.waiting = None;
            return r;
        }
        let stall = self.stall;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStall<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStall<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.waited(cx, r)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.waited(cx, r)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.waited(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
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
    fn peers_are_counted_by_address_and_ipv6_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(peer_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(peer_key(v4), v4);
    }

    #[tokio::test]
    async fn a_write_that_waits_too_long_for_the_reader_fails() {
        use tokio::io::AsyncWriteExt;
        // A pipe whose reader never reads: its buffer fills, then a write waits.
        let (client, server) = tokio::io::duplex(64);
        let mut w = WriteStall::new(server, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let e = w.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(client);
    }

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
