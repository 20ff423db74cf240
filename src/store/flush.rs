//! The group-commit flusher: one thread that fsyncs the store for every caller waiting
//! at once.

use tokio::sync::{mpsc, oneshot};

/// The flusher: takes every waiting request, fsyncs once, answers them all, repeats.
/// (sled's own `flush_async` was seen to hang under concurrent callers.) Ends when the
/// store is dropped.
pub(super) fn group_commit(
    db: sled::Db,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = requests.blocking_recv() {
        let mut waiters = vec![first];
        while let Ok(more) = requests.try_recv() {
            waiters.push(more);
        }
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
