//! A directory of manifests, as both the server's manifests directory ([`crate::gitops`])
//! and the client's `hive apply -f DIR` read it: which files hold manifests (every
//! `*.yaml`, `*.yml` and `*.json` below it; hidden and editor files skipped; symlinks
//! followed only within it, and a loop reported, not walked), within [`Limits`].
//! Blocking: the server calls it on a blocking thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one scan of the directory may read (`--manifests-max-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one file.
    pub file_bytes: u64,
    /// Bytes of all files together.
    pub total_bytes: u64,
    /// Directory levels below the top.
    pub depth: usize,
    /// Directory entries looked at, files and directories together.
    pub entries: usize,
    /// How long one scan's reading may take.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_bytes: 1 << 20,
            total_bytes: 32 << 20,
            depth: 16,
            entries: 10_000,
            time: Duration::from_secs(10),
        }
    }
}

/// The manifest files below `dir`, sorted; hidden files and directories and editor
/// leftovers (`~`, `#...#`, `.swp`) are skipped, and so are symlinks that leave the
/// directory or loop. (The command line's reading of a directory; the server's scan
/// reads within its [`Limits`].)
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
    /// Why the walk stopped short (a limit of the whole directory).
    pub problem: Option<String>,
}

/// Walks `dir` for manifests within the default [`Limits`]. A symlink is followed only if
/// where it leads is inside the directory, and a directory is read once, so a loop is
/// reported, not walked.
pub fn walk(dir: &Path) -> std::io::Result<Walk> {
    let limits = Limits::default();
    let w = walk_within(dir, &limits, std::time::Instant::now() + limits.time)?;
    match &w.problem {
        Some(p) => Err(std::io::Error::other(p.clone())),
        None => Ok(w),
    }
}

/// Walks `dir` for manifests, stopping (with a problem) at `limits`' depth or number of
/// entries, or at `deadline`.
pub fn walk_within(
    dir: &Path,
    limits: &Limits,
    deadline: std::time::Instant,
) -> std::io::Result<Walk> {
    let root = std::fs::canonicalize(dir)?;
    let mut visited = std::collections::HashSet::from([root.clone()]);
    let mut out = Walk::default();
    let mut walker = Walker {
        base: dir,
        root: &root,
        limits,
        deadline,
        entries: 0,
        stopped: false,
    };
    walker.collect(dir, 0, &mut visited, &mut out)?;
    Ok(out)
}

/// One walk's bounds and progress.
struct Walker<'a> {
    base: &'a Path,
    root: &'a Path,
    limits: &'a Limits,
    deadline: std::time::Instant,
    /// Entries looked at so far.
    entries: usize,
    /// Whether a limit of the whole walk (entries, time) ended it.
    stopped: bool,
}

impl Walker<'_> {
    fn collect(
        &mut self,
        dir: &Path,
        depth: usize,
        visited: &mut std::collections::HashSet<PathBuf>,
        out: &mut Walk,
    ) -> std::io::Result<()> {
        let mut entries: Vec<PathBuf> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            self.entries += 1;
            if self.entries > self.limits.entries {
                self.stopped = true;
                out.problem = Some(format!(
                    "it holds more than {} entries (--manifests-max-entries)",
                    self.limits.entries
                ));
                return Ok(());
            }
            if let Ok(e) = e {
                entries.push(e.path());
            }
        }
        entries.sort();
        for p in entries {
            if self.stopped {
                return Ok(());
            }
            if std::time::Instant::now() > self.deadline {
                self.stopped = true;
                out.problem = Some(format!(
                    "reading it took longer than {}",
                    humantime::format_duration(self.limits.time)
                ));
                return Ok(());
            }
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') || name.ends_with('~') || name.starts_with('#') {
                continue;
            }
            let rel = p
                .strip_prefix(self.base)
                .unwrap_or(&p)
                .display()
                .to_string();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let target = if meta.is_symlink() {
                match std::fs::canonicalize(&p) {
                    Ok(t) if !t.starts_with(self.root) => {
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
            let is_dir = if meta.is_symlink() {
                target.is_dir()
            } else {
                meta.is_dir()
            };
            if is_dir {
                if depth + 1 > self.limits.depth {
                    // Not read, and so the scan is incomplete; the rest is still read.
                    out.skipped.push(format!(
                        "{rel}: more than {} levels deep (--manifests-max-depth); not read",
                        self.limits.depth
                    ));
                    out.problem.get_or_insert_with(|| {
                        format!(
                            "{rel} is more than {} levels deep (--manifests-max-depth)",
                            self.limits.depth
                        )
                    });
                    continue;
                }
                let canonical = std::fs::canonicalize(&target)?;
                if !visited.insert(canonical) {
                    out.skipped.push(format!(
                        "{rel}: leads to a directory already read (a symlink loop); not followed"
                    ));
                    continue;
                }
                self.collect(&p, depth + 1, visited, out)?;
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                // Its type is checked when it is opened (a FIFO is reported there).
                out.files.push(p);
            }
        }
        Ok(())
    }
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
