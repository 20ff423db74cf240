//! How many long-lived answers (watches, followed logs) one key may hold open at once:
//! each holds memory, and a followed log an engine connection, so a single key must not
//! be able to take them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::ApiError;

/// Open streams per key id.
pub struct StreamLimits {
    /// Streams one key may hold.
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; dropping it (when the answer ends) frees its place.
pub struct StreamGuard {
    limits: Arc<StreamLimits>,
    key: String,
}

impl StreamLimits {
    pub fn new(max: usize) -> Self {
        StreamLimits {
            max,
            open: Mutex::default(),
        }
    }

    /// A place for one more stream of `key`, or 429 when it holds the most it may.
    pub fn acquire(self: &Arc<Self>, key: &str) -> Result<StreamGuard, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.to_string()).or_default();
        if *n >= self.max {
            return Err(ApiError::TooManyRequests(format!(
                "key {key:?} holds {} watches and log follows open, the most it may; close one first",
                self.max
            )));
        }
        *n += 1;
        Ok(StreamGuard {
            limits: self.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_share_and_a_closed_stream_frees_its_place() {
        let limits = Arc::new(StreamLimits::new(2));
        let a = limits.acquire("k").unwrap();
        let _b = limits.acquire("k").unwrap();
        assert!(limits.acquire("k").is_err());
        assert!(
            limits.acquire("other").is_ok(),
            "other keys are not affected"
        );
        drop(a);
        assert!(limits.acquire("k").is_ok());
    }
}
