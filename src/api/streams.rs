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
}

/// One open stream; dropping it (when the answer ends) frees its place.
pub struct StreamGuard {
    limits: Arc<StreamLimits>,
    principal: Principal,
}

/// What a stream cut short by revocation says last.
pub const REVOKED: &str = "the key this stream was opened with is no longer valid";

impl StreamLimits {
    pub fn new(max: usize, keys: Arc<Keys>) -> Self {
        StreamLimits {
            max,
            open: Mutex::default(),
            keys,
        }
    }

    /// A place for one more stream of `p`'s key, or 429 when it holds the most it may.
    pub fn acquire(self: &Arc<Self>, p: &Principal) -> Result<StreamGuard, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(p.key_id.clone()).or_default();
        if *n >= self.max {
            return Err(ApiError::TooManyRequests(format!(
                "key {:?} holds {} watches, log follows and waits open, the most it may; close one first",
                p.key_id, self.max
            )));
        }
        *n += 1;
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
    /// nothing after it. The guard (the stream's place) lives as long as the stream.
    pub fn bind<S>(
        self,
        stream: S,
        last: Option<S::Item>,
    ) -> impl Stream<Item = S::Item> + Send + 'static
    where
        S: Stream + Send + 'static,
        S::Item: Send + 'static,
    {
        let state = (Box::pin(stream), self, last, false);
        futures_util::stream::unfold(state, |(mut stream, guard, mut last, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                item = stream.next() => item.map(|i| (i, (stream, guard, last, false))),
                () = guard.revoked() => {
                    let item = last.take()?;
                    Some((item, (stream, guard, None, true)))
                }
            }
        })
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
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
        let limits = Arc::new(StreamLimits::new(2, Arc::new(Keys::admin_only("k"))));
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
