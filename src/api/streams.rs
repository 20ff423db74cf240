//! Long-lived answers (watches, followed logs, MCP waits): how many one key may hold open
//! at once, and their end when the key stops being valid.
//!
//! Each holds memory, and a followed log an engine connection, so a single key must not
//! be able to take them all. And a key removed from the keys file (or the file broken or
//! gone) must not keep reading through what it opened before: every stream is bound to
//! its key's validity ([`StreamGuard::revoked`]), and ends within a second or so of the
//! keys file changing, with a last line that says why where the protocol has one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};

use super::ApiError;
use crate::access::{Keys, Principal};

/// Open streams per key id.
pub struct StreamLimits {
    /// Streams one key may hold.
    max: usize,
    open: Mutex<HashMap<String, usize>>,
    /// Whose keys are still valid.
    keys: Arc<Keys>,
    /// Streams open in all (`hive_open_streams`).
    gauge: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
}

/// One open stream; dropping it (when the answer ends) frees its place.
pub struct StreamGuard {
    limits: Arc<StreamLimits>,
    principal: Principal,
}

/// How long a revoked stream may take to end by itself before its connection is closed.
const CLOSE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What a stream cut short by revocation says last.
pub const REVOKED: &str = "the key this stream was opened with is no longer valid";

impl StreamLimits {
    pub fn new(
        max: usize,
        keys: Arc<Keys>,
        gauge: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
    ) -> Self {
        StreamLimits {
            max,
            open: Mutex::default(),
            keys,
            gauge,
        }
    }

    /// A place for one more stream of `p`'s key, or 429 when it holds the most it may.
    pub fn acquire(self: &Arc<Self>, p: &Principal) -> Result<StreamGuard, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(p.key_id.clone()).or_default();
        if *n >= self.max {
            return Err(ApiError::TooManyRequests(format!(
                "key {:?} holds {} watches, log reads, execs and waits open, the most it may; close one first",
                p.key_id, self.max
            )));
        }
        *n += 1;
        self.gauge.inc();
        Ok(StreamGuard {
            limits: self.clone(),
            principal: p.clone(),
        })
    }
}

impl StreamGuard {
    /// Resolves once the key that opened this stream is no longer valid.
    pub async fn revoked(&self) {
        self.limits.keys.revoked(&self.principal).await
    }

    /// `stream`, ended when the key is revoked: `last` is sent then (when given), and
    /// nothing after it. The guard (the stream's place) lives as long as the stream. With
    /// `closer` (the connection's), a revocation also closes the connection at once, so
    /// that a client that stopped reading cannot keep the stream (or its place) open.
    pub fn bind<S>(
        self,
        stream: S,
        last: Option<S::Item>,
        closer: Option<crate::serve::ConnectionCloser>,
    ) -> impl Stream<Item = S::Item> + Send + 'static
    where
        S: Stream + Send + 'static,
        S::Item: Send + 'static,
    {
        let guard = Arc::new(self);
        // A watcher that outlives no longer than the stream.
        let done = tokio_util::sync::CancellationToken::new();
        if let Some(closer) = closer {
            let (guard, done) = (guard.clone(), done.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = guard.revoked() => {}
                    () = done.cancelled() => return,
                }
                // A client that reads gets the stream's last line and its end; one that
                // does not loses its connection.
                tokio::select! {
                    () = done.cancelled() => {}
                    () = tokio::time::sleep(CLOSE_AFTER) => closer.close(),
                }
            });
        }
        let state = (Box::pin(stream), guard, last, false, done.drop_guard());
        futures_util::stream::unfold(
            state,
            |(mut stream, guard, mut last, ended, done)| async move {
                if ended {
                    return None;
                }
                // Revocation first: a stream whose items are always ready (a fast source,
                // a slow reader) must still end.
                tokio::select! {
                    biased;
                    () = guard.revoked() => {
                        let item = last.take()?;
                        Some((item, (stream, guard, None, true, done)))
                    }
                    item = stream.next() => item.map(|i| (i, (stream, guard, last, false, done))),
                }
            },
        )
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.limits.gauge.dec();
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.principal.key_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.principal.key_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Principal {
        Keys::admin_only("k").authenticate("k").unwrap()
    }

    #[test]
    fn a_key_holds_at_most_its_share_and_a_closed_stream_frees_its_place() {
        let limits = Arc::new(StreamLimits::new(
            2,
            Arc::new(Keys::admin_only("k")),
            Default::default(),
        ));
        let p = admin();
        let a = limits.acquire(&p).unwrap();
        let _b = limits.acquire(&p).unwrap();
        assert!(limits.acquire(&p).is_err());
        let other = Principal::gitops("x");
        assert!(
            limits.acquire(&other).is_ok(),
            "other keys are not affected"
        );
        drop(a);
        assert!(limits.acquire(&p).is_ok());
    }
}
