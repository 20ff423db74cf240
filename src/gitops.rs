//! GitOps: keep Hive's agents in step with a directory of manifests (`--manifests-dir`).
//!
//! Every `*.yaml`, `*.yml` and `*.json` file below the directory (recursively; hidden and
//! editor files skipped) may hold several documents. Each file is applied as a unit through
//! the same path as `POST /v1/apply`, with every object annotated `hive/source: <path>`;
//! an unchanged file writes nothing. An agent whose file is removed, or which is removed
//! from its file, is deleted ("pruned") — only agents carrying a `hive/source` are, never
//! ones made through the API. A manifest naming an agent the API made is a conflict.
//!
//! Safety: a file that does not parse or validate is reported, and what it declared before
//! stays declared (nothing of it is pruned) until it is fixed; an empty or unreadable
//! directory (an unmounted volume, say) prunes nothing and is reported.
//!
//! Changes are picked up from filesystem events (writes, creates, renames and removals
//! only, debounced: reading a file is not a change) and by a periodic rescan.
//!
//! The directory is someone else's, so its shape must not stall Hive: a scan runs on a
//! blocking thread (never on the runtime that serves requests), one at a time, and within
//! [`Limits`]: regular files only (a FIFO, socket or device is reported, never waited
//! on; see [`crate::files`]), a size per file and in all, a depth, a number of entries
//! and a time. A file past its limit is an error of that file (what it declared is kept);
//! a directory past one is a problem of the whole scan (nothing is pruned).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access::Principal;
use crate::agent::Timestamp;
use crate::lease::Leadership;
use crate::manifests::walk_within;
pub use crate::manifests::Limits;
use crate::service::{Prune, Service, ServiceError};

/// The annotation naming the file an agent comes from.
pub const SOURCE: &str = crate::agent::SOURCE_ANNOTATION;
/// How long the directory must be quiet after an event before a scan.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// The longest a burst of events holds a scan back.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// How often a file that failed to apply, unchanged since, is applied again (a conflict
/// may have gone away meanwhile); between such retries it is neither applied nor audited
/// again.
const RETRY_UNCHANGED: Duration = Duration::from_secs(600);

/// How the directory is followed.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    /// Time between full rescans.
    pub rescan: Duration,
    /// Whether to follow filesystem events (the rescan runs either way).
    pub watch: bool,
    /// What one scan may read.
    pub limits: Limits,
}

/// What `GET /v1/sync` shows.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub dir: String,
    /// When the last full scan was.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_scan: Option<Timestamp>,
    /// Scans since Hive started (a rescan, or a change in the directory).
    pub scans: u64,
    /// A problem with the directory as a whole (nothing is pruned while there is one).
    pub problem: Option<String>,
    /// Per file, by path relative to the directory.
    pub files: BTreeMap<String, FileStatus>,
    /// Agents removed because their manifest went, in the last scan.
    pub pruned: Vec<String>,
    /// Paths not read, each with why: symlinks leading out of the directory, loops.
    pub skipped: Vec<String>,
}

/// The sync state of one file.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileStatus {
    /// When it was last applied without error.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_applied: Option<Timestamp>,
    /// The agents it declares (the last good reading while it has errors), with their
    /// resourceVersions after the last apply.
    pub objects: BTreeMap<String, Option<String>>,
    /// Why it is not applied (empty when it is).
    pub errors: Vec<String>,
}

/// Follows one directory, writing through the service like any other client (audited
/// under the key id `gitops` and the policy's `gitops.owner`).
pub struct Syncer {
    settings: Settings,
    service: Arc<Service>,
    leadership: tokio::sync::watch::Receiver<Leadership>,
    status: Arc<Mutex<SyncStatus>>,
    /// Files that failed to apply: the hash of what they held, and when they were last
    /// applied, so an unchanged one is not applied (and audited) again at every scan.
    failed: Mutex<BTreeMap<String, (u64, std::time::Instant)>>,
}

impl Syncer {
    pub fn new(
        settings: Settings,
        service: Arc<Service>,
        leadership: tokio::sync::watch::Receiver<Leadership>,
        status: Arc<Mutex<SyncStatus>>,
    ) -> Self {
        Syncer {
            settings,
            service,
            leadership,
            status,
            failed: Mutex::default(),
        }
    }

    /// Scans once this Hive holds its instance, then on every change and rescan tick,
    /// until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut leadership = self.leadership.clone();
        tokio::select! {
            () = stop.cancelled() => return,
            r = leadership.wait_for(|l| l.is_leading()) => if r.is_err() { return },
        }
        // Changes wake the loop through one flag, however many there are.
        let changed = Arc::new(tokio::sync::Notify::new());
        let _watcher = if self.settings.watch {
            // Setting up a recursive watch walks the directory: off the runtime.
            let dir = self.settings.dir.clone();
            let wake = changed.clone();
            match tokio::task::spawn_blocking(move || watch(&dir, wake)).await {
                Ok(Ok(w)) => Some(w),
                Ok(Err(e)) => {
                    warn!(dir = %self.settings.dir.display(), error = ?e, "cannot watch the manifests directory; relying on the rescan");
                    None
                }
                Err(e) => {
                    warn!(error = ?e, "cannot watch the manifests directory; relying on the rescan");
                    None
                }
            }
        } else {
            None
        };
        let mut tick = tokio::time::interval(self.settings.rescan);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
                () = changed.notified() => {
                    // Debounce: wait until changes stop for a moment, but never longer
                    // than a while in all, so that a file rewritten without pause
                    // cannot hold every scan back.
                    let most = tokio::time::Instant::now() + MAX_DEBOUNCE;
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tokio::time::sleep(DEBOUNCE) => break,
                            _ = tokio::time::sleep_until(most) => break,
                            () = changed.notified() => {}
                        }
                    }
                }
            }
            // Only the Hive that reconciles the instance applies its manifests.
            if self.leadership.borrow().is_leading() {
                self.scan().await;
            }
        }
    }

    /// One full pass: apply every good file, report bad ones, prune what went away.
    pub async fn scan(&self) {
        let dir = &self.settings.dir;
        let principal = Principal::gitops(&self.service.policy().gitops.owner);
        let previous = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut status = SyncStatus {
            dir: dir.display().to_string(),
            last_scan: Some(Timestamp::now()),
            scans: previous.scans + 1,
            ..Default::default()
        };
        // The directory is read, and its files parsed, on a blocking thread.
        let read = {
            let dir = dir.clone();
            let limits = self.settings.limits;
            tokio::task::spawn_blocking(move || read_tree(&dir, &limits))
                .await
                .unwrap_or_else(|e| Tree {
                    problem: Some(format!("reading it failed: {e}")),
                    ..Tree::default()
                })
        };
        if !read.skipped.is_empty() {
            warn!(skipped = ?read.skipped, "manifests directory: paths not read");
        }
        status.skipped = read.skipped;
        status.problem = match read.problem {
            Some(p) => Some(format!("{}: {p}; nothing is pruned", dir.display())),
            None if read.files.is_empty() => Some(format!(
                "{} holds no manifests; nothing is pruned",
                dir.display()
            )),
            None => None,
        };

        // A name moving from one file to another is a move, not a conflict: every file
        // was read before any is applied.
        let mut declared_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut files = Vec::new();
        for file in read.files {
            let before = previous.files.get(&file.rel).cloned().unwrap_or_default();
            let names: Vec<String> = match &file.docs {
                Ok(d) => d
                    .iter()
                    .filter_map(|v| v.pointer("/metadata/name")?.as_str().map(str::to_string))
                    .collect(),
                Err(_) => before.objects.keys().cloned().collect(),
            };
            for n in names {
                declared_by.entry(n).or_default().push(file.rel.clone());
            }
            files.push((file, before));
        }
        for (file, before) in files {
            let FileRead { rel, docs, hash } = file;
            let unchanged_failure = {
                let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.get(&rel).is_some_and(|(h, at)| {
                    *h == hash && !before.errors.is_empty() && at.elapsed() < RETRY_UNCHANGED
                })
            };
            let result = match docs {
                // Failed before, unchanged since: reported as before, not applied again.
                _ if unchanged_failure => before,
                Ok(docs) => {
                    self.apply_file(docs, &rel, &principal, before, &declared_by)
                        .await
                }
                Err(e) => {
                    warn!(file = ?rel, error = ?e, "manifest not applied");
                    FileStatus {
                        errors: vec![e],
                        ..before
                    }
                }
            };
            {
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                if result.errors.is_empty() {
                    failed.remove(&rel);
                } else if !unchanged_failure {
                    failed.insert(rel.clone(), (hash, std::time::Instant::now()));
                }
            }
            status.files.insert(rel, result);
        }
        {
            // Files that went away are forgotten.
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.retain(|rel, _| status.files.contains_key(rel));
        }

        if let Some(p) = &status.problem {
            // Said once while it lasts, not at every scan.
            if previous.problem.as_ref() != Some(p) {
                warn!(problem = ?p, "manifests directory");
            }
        } else if let Err(e) = self.prune(&principal, &mut status).await {
            warn!(error = ?e, "pruning failed; will try again");
        }
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// Applies one file's documents; on any error keeps what it declared before.
    async fn apply_file(
        &self,
        mut docs: Vec<Value>,
        rel: &str,
        p: &Principal,
        before: FileStatus,
        declared_by: &BTreeMap<String, Vec<String>>,
    ) -> FileStatus {
        let failed = |errors: Vec<String>| FileStatus {
            errors,
            ..before.clone()
        };
        // Mark each object with its source; refuse to take over agents that are not ours.
        let mut errors = Vec::new();
        for (i, doc) in docs.iter_mut().enumerate() {
            let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) else {
                continue; // typed checking reports it
            };
            let name = meta
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(SOURCE.into(), Value::String(rel.to_string()));
            }
            let others: Vec<&String> = declared_by
                .get(&name)
                .into_iter()
                .flatten()
                .filter(|f| f.as_str() != rel)
                .collect();
            if !others.is_empty() {
                errors.push(format!(
                    "{rel} (document {}): conflict: agent {name:?} is also declared by {}",
                    i + 1,
                    others
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            } else if let Ok(Some(existing)) = self.service.store().get(&name) {
                // Made through the API: not the directory's to take over. (An agent whose
                // source is another file that no longer declares it has moved: adopt it.)
                if !existing.agent.metadata.annotations.contains_key(SOURCE) {
                    errors.push(format!(
                        "{rel} (document {}): conflict: agent {name:?} was made through the API; it is left alone",
                        i + 1
                    ));
                }
            }
        }
        if !errors.is_empty() {
            warn!(file = ?rel, errors = ?errors, "manifest conflicts");
            return failed(errors);
        }
        match self.service.apply(p, docs, false, None).await {
            Ok(results) => {
                let changed: Vec<_> = results
                    .iter()
                    .filter(|r| r.result != crate::service::Outcome::Unchanged)
                    .map(|r| format!("{} {:?}", r.name, r.result))
                    .collect();
                if !changed.is_empty() {
                    info!(file = ?rel, changed = ?changed, "applied manifest");
                }
                FileStatus {
                    last_applied: Some(Timestamp::now()),
                    objects: results
                        .into_iter()
                        .map(|r| (r.name, r.resource_version))
                        .collect(),
                    errors: Vec::new(),
                }
            }
            Err(ServiceError::InvalidDocuments { documents, .. }) => {
                let errors = documents
                    .iter()
                    .map(|d| format!("{rel} (document {}): {}", d.index + 1, d.message))
                    .collect::<Vec<_>>();
                warn!(file = ?rel, errors = ?errors, "manifest is invalid");
                failed(errors)
            }
            Err(e) => failed(vec![format!("{rel}: {e}")]),
        }
    }

    /// Deletes agents that carry a source but are declared by no file.
    async fn prune(&self, p: &Principal, status: &mut SyncStatus) -> Result<(), ServiceError> {
        let declared: BTreeSet<String> = status
            .files
            .values()
            .flat_map(|f| f.objects.keys().cloned())
            .collect();
        let pruned = self
            .service
            .prune(
                p,
                Prune {
                    annotation: SOURCE,
                    set: None,
                    owners: BTreeSet::new(),
                },
                &declared,
            )
            .await?;
        if !pruned.is_empty() {
            info!(agents = ?pruned, "pruned agents whose manifests went away");
        }
        status.pruned = pruned;
        Ok(())
    }
}

/// One manifest file as a scan read it.
#[derive(Debug)]
struct FileRead {
    /// Its path relative to the directory.
    rel: String,
    /// Its documents, or why they could not be had.
    docs: Result<Vec<Value>, String>,
    /// A hash of its bytes (0 when it could not be read).
    hash: u64,
}

/// What one scan read.
#[derive(Debug, Default)]
struct Tree {
    files: Vec<FileRead>,
    /// Paths not read, each with why.
    skipped: Vec<String>,
    /// Why the scan is incomplete (a limit of the whole directory): nothing is pruned.
    problem: Option<String>,
}

/// Walks `dir` and reads and parses its manifests within `limits`. Blocks.
fn read_tree(dir: &Path, limits: &Limits) -> Tree {
    let deadline = std::time::Instant::now() + limits.time;
    let walk = match walk_within(dir, limits, deadline) {
        Ok(w) => w,
        Err(e) => {
            return Tree {
                problem: Some(format!("cannot read it: {e}")),
                ..Tree::default()
            }
        }
    };
    let mut tree = Tree {
        skipped: walk.skipped,
        problem: walk.problem,
        ..Tree::default()
    };
    let mut total = 0u64;
    for path in walk.files {
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        if std::time::Instant::now() > deadline {
            tree.problem = Some(format!(
                "reading it took longer than {}",
                humantime::format_duration(limits.time)
            ));
            break;
        }
        let bytes = crate::files::read_regular(&path, limits.file_bytes).map_err(|e| match e {
            crate::files::ReadError::NotRegular { kind, .. } => {
                format!("{rel}: is {kind}, not a regular file; it is not read")
            }
            crate::files::ReadError::TooLarge { max, .. } => format!(
                "{rel}: is larger than {max} bytes (--manifests-max-file-bytes); it is not read"
            ),
            crate::files::ReadError::Io { source, .. } => format!("{rel}: cannot read: {source}"),
        });
        if let Ok(b) = &bytes {
            total += b.len() as u64;
            if total > limits.total_bytes {
                tree.problem = Some(format!(
                    "its manifests hold more than {} bytes in all (--manifests-max-bytes)",
                    limits.total_bytes
                ));
                break;
            }
        }
        let hash = bytes.as_ref().map_or(0, |b| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.hash(&mut h);
            h.finish()
        });
        let docs = bytes.and_then(|b| parse_documents(&b, &rel));
        tree.files.push(FileRead { rel, docs, hash });
    }
    tree
}

/// Parses one file's bytes; a file with no documents counts as an error, since it may be
/// one caught mid-write.
fn parse_documents(bytes: &[u8], rel: &str) -> Result<Vec<Value>, String> {
    let docs = crate::document::stream(bytes).map_err(|e| format!("{rel}: {e}"))?;
    if docs.is_empty() {
        return Err(format!(
            "{rel}: holds no documents; what it declared is kept (delete the file to remove its agents)"
        ));
    }
    Ok(docs)
}

/// Whether a filesystem event can change what the directory declares: a write, a
/// create, a rename or a removal. Opening, reading and closing a file (the scan's own
/// reads) and changes of access times are not.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{EventKind, ModifyKind};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Wakes `changed` for every change below `dir` (see [`is_change`]); a burst is one
/// wake-up, coalesced by the caller's debounce.
fn watch(
    dir: &Path,
    changed: Arc<tokio::sync::Notify>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| is_change(&e.kind)) {
            changed.notify_one();
        }
    })?;
    w.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(w)
}
