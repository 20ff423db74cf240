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
//! Changes are picked up from filesystem events (debounced) and by a periodic rescan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access::Principal;
use crate::agent::now_rfc3339;
use crate::lease::Leadership;
use crate::service::{Prune, Service, ServiceError};

/// The annotation naming the file an agent comes from.
pub const SOURCE: &str = crate::agent::SOURCE_ANNOTATION;
/// How long the directory must be quiet after an event before a scan.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// How the directory is followed.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    /// Time between full rescans.
    pub rescan: Duration,
    /// Whether to follow filesystem events (the rescan runs either way).
    pub watch: bool,
}

/// What `GET /v1/sync` shows.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub dir: String,
    /// RFC 3339 time of the last full scan.
    pub last_scan: Option<String>,
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
    /// RFC 3339 time it was last applied without error.
    pub last_applied: Option<String>,
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
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let _watcher = if self.settings.watch {
            match watch(&self.settings.dir, tx) {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!(dir = %self.settings.dir.display(), error = %e, "cannot watch the manifests directory; relying on the rescan");
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
                Some(()) = rx.recv() => {
                    // Debounce: wait until events stop for a moment.
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tokio::time::sleep(DEBOUNCE) => break,
                            Some(()) = rx.recv() => {}
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
            last_scan: Some(now_rfc3339()),
            ..Default::default()
        };
        let files = match walk(dir) {
            Ok(w) => {
                if !w.skipped.is_empty() {
                    warn!(skipped = ?w.skipped, "manifests directory: paths not read");
                }
                status.skipped = w.skipped;
                Ok(w.files)
            }
            Err(e) => Err(e),
        };
        let files = match files {
            Ok(f) if f.is_empty() => {
                status.problem = Some(format!(
                    "{} holds no manifests; nothing is pruned",
                    dir.display()
                ));
                Vec::new()
            }
            Ok(f) => f,
            Err(e) => {
                status.problem = Some(format!(
                    "cannot read {}: {e}; nothing is pruned",
                    dir.display()
                ));
                Vec::new()
            }
        };

        // First read every file, so that a name moving from one file to another is seen
        // as a move, not a conflict.
        let mut read = Vec::new();
        let mut declared_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for path in &files {
            let rel = path.strip_prefix(dir).unwrap_or(path).display().to_string();
            let before = previous.files.get(&rel).cloned().unwrap_or_default();
            let docs = read_file(path, &rel);
            let names: Vec<String> = match &docs {
                Ok(d) => d
                    .iter()
                    .filter_map(|v| v.pointer("/metadata/name")?.as_str().map(str::to_string))
                    .collect(),
                Err(_) => before.objects.keys().cloned().collect(),
            };
            for n in names {
                declared_by.entry(n).or_default().push(rel.clone());
            }
            read.push((rel, docs, before));
        }
        for (rel, docs, before) in read {
            let file = match docs {
                Ok(docs) => {
                    self.apply_file(docs, &rel, &principal, before, &declared_by)
                        .await
                }
                Err(e) => {
                    warn!(file = %rel, error = %e, "manifest not applied");
                    FileStatus {
                        errors: vec![e],
                        ..before
                    }
                }
            };
            status.files.insert(rel, file);
        }

        if let Some(p) = &status.problem {
            warn!(problem = %p, "manifests directory");
        } else if let Err(e) = self.prune(&principal, &mut status).await {
            warn!(error = %e, "pruning failed; will try again");
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
            warn!(file = %rel, errors = ?errors, "manifest conflicts");
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
                    info!(file = %rel, changed = ?changed, "applied manifest");
                }
                FileStatus {
                    last_applied: Some(now_rfc3339()),
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
                warn!(file = %rel, errors = ?errors, "manifest is invalid");
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
            .prune(p, Prune { annotation: SOURCE }, &declared)
            .await?;
        if !pruned.is_empty() {
            info!(agents = ?pruned, "pruned agents whose manifests went away");
        }
        status.pruned = pruned;
        Ok(())
    }
}

/// Reads and parses one file; a file with no documents counts as an error, since it may
/// be one caught mid-write.
fn read_file(path: &Path, rel: &str) -> Result<Vec<Value>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{rel}: cannot read: {e}"))?;
    let docs = crate::document::stream(&bytes).map_err(|e| format!("{rel}: {e}"))?;
    if docs.is_empty() {
        return Err(format!(
            "{rel}: holds no documents; what it declared is kept (delete the file to remove its agents)"
        ));
    }
    Ok(docs)
}

/// The manifest files below `dir`, sorted; hidden files and directories and editor
/// leftovers (`~`, `#...#`, `.swp`) are skipped, and so are symlinks that leave the
/// directory or loop.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(walk(dir)?.files)
}

/// What a walk of the manifests directory found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Manifest files, sorted.
    pub files: Vec<PathBuf>,
    /// Paths not read, each with why (a symlink out of the directory, a loop).
    pub skipped: Vec<String>,
}

/// Walks `dir` for manifests. A symlink is followed only if where it leads is inside
/// the directory, and a directory is read once, so a loop is reported, not walked.
pub fn walk(dir: &Path) -> std::io::Result<Walk> {
    let root = std::fs::canonicalize(dir)?;
    let mut visited = std::collections::HashSet::from([root.clone()]);
    let mut out = Walk::default();
    collect(dir, dir, &root, &mut visited, &mut out)?;
    Ok(out)
}

fn collect(
    base: &Path,
    dir: &Path,
    root: &Path,
    visited: &mut std::collections::HashSet<PathBuf>,
    out: &mut Walk,
) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') || name.ends_with('~') || name.starts_with('#') {
            continue;
        }
        let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let target = if meta.is_symlink() {
            match std::fs::canonicalize(&p) {
                Ok(t) if !t.starts_with(root) => {
                    out.skipped.push(format!(
                        "{rel}: a symlink that leads out of the directory; not followed"
                    ));
                    continue;
                }
                Ok(t) => t,
                Err(e) => {
                    out.skipped.push(format!(
                        "{rel}: a symlink that does not resolve ({e}); not followed"
                    ));
                    continue;
                }
            }
        } else {
            p.clone()
        };
        if target.is_dir() {
            let canonical = std::fs::canonicalize(&target)?;
            if !visited.insert(canonical) {
                out.skipped.push(format!(
                    "{rel}: leads to a directory already read (a symlink loop); not followed"
                ));
                continue;
            }
            collect(base, &p, root, visited, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.files.push(p);
        }
    }
    Ok(())
}

/// Sends a unit on `tx` for every filesystem event below `dir`.
fn watch(
    dir: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    w.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_out_of_the_directory_and_loops_are_reported_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.yaml"), "a: 1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("agent.yaml"), "a: 1").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/b.yml"), "a: 1").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.yaml"), d.join("s.yaml")).unwrap();
        std::os::unix::fs::symlink(d, d.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(d.join("agent.yaml"), d.join("inside.yaml")).unwrap();
        let w = walk(d).unwrap();
        let names: Vec<String> = w
            .files
            .iter()
            .map(|f| f.strip_prefix(d).unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["agent.yaml", "inside.yaml", "sub/b.yml"]);
        assert_eq!(w.skipped.len(), 3, "{:?}", w.skipped);
        assert!(w
            .skipped
            .iter()
            .any(|s| s.starts_with("out:") && s.contains("out of")));
        assert!(w.skipped.iter().any(|s| s.starts_with("s.yaml:")));
        assert!(w.skipped.iter().any(|s| s.contains("loop")));
    }
}
