//! An agent's files, read and written on a client's behalf (as `docker cp` and
//! `kubectl cp`), with the same rule of who may as exec. Reads answer a regular file's
//! bytes, or a tar of a directory; writes put one file, or unpack a tar whose entries are
//! only regular files and directories under the target (no `..`, no absolute paths, no
//! links or devices), owned by the container's user. At most [`MAX_FILE_BYTES`] move at
//! once. Every read and write is audited with its path and size, never the contents.

use std::io::Read;
use std::path::{Component, Path};

use super::{Service, ServiceError};
use crate::access::Principal;
use crate::agent::clip;
use crate::orchestrator::OrchestratorError;

/// The most bytes one read or write moves (a tar's headers included).
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// The most entries a written tar may hold.
const MAX_ENTRIES: usize = 10_000;

/// What a read of an agent's path answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Files {
    /// A regular file's bytes.
    File(Vec<u8>),
    /// A tar of the path (a directory, or anything when a tar was asked for).
    Tar(Vec<u8>),
}

impl Service {
    /// The file or directory at `path` in the agent `name` (`tar`: always as a tar).
    pub async fn read_files(
        &self,
        who: &Principal,
        name: &str,
        path: &str,
        tar: bool,
    ) -> Result<Files, ServiceError> {
        let result = self.read_checked(who, name, path, tar).await;
        let detail = match &result {
            Ok(Files::File(b) | Files::Tar(b)) => {
                format!("path {}, {} B out", clip(path, 256), b.len())
            }
            Err(_) => format!("path {}", clip(path, 256)),
        };
        self.audit_detailed(who, "files.read", name, &result, 200, Some(detail));
        result
    }

    /// Writes `body` at `path` in the agent `name`: one file, or with `tar` the archive's
    /// entries under the directory `path`.
    pub async fn write_files(
        &self,
        who: &Principal,
        name: &str,
        path: &str,
        body: Vec<u8>,
        tar: bool,
    ) -> Result<(), ServiceError> {
        let size = body.len();
        let result = self.write_checked(who, name, path, body, tar).await;
        let detail = format!(
            "path {}, {size} B in{}",
            clip(path, 256),
            if tar { " (tar)" } else { "" }
        );
        self.audit_detailed(who, "files.write", name, &result, 200, Some(detail));
        result
    }

    async fn read_checked(
        &self,
        who: &Principal,
        name: &str,
        path: &str,
        tar: bool,
    ) -> Result<Files, ServiceError> {
        check_path(path)?;
        let record = self.reachable(who, name, "read files of")?;
        let (id, uid) = container_of(&record, name)?;
        let archive = self
            .orchestrator
            .read_archive(&id, uid, path, MAX_FILE_BYTES)
            .await
            .map_err(files_error)?;
        if tar {
            return Ok(Files::Tar(archive));
        }
        // The archive's first entry is the path itself.
        let mut entries = tar::Archive::new(archive.as_slice());
        let mut first = entries
            .entries()
            .ok()
            .and_then(|mut e| e.next())
            .and_then(Result::ok)
            .ok_or_else(|| ServiceError::Internal("the engine's archive is empty".into()))?;
        match first.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut bytes = Vec::new();
                first.read_to_end(&mut bytes).map_err(|e| {
                    ServiceError::Internal(format!("reading the engine's archive: {e}"))
                })?;
                Ok(Files::File(bytes))
            }
            tar::EntryType::Directory => {
                drop(first);
                Ok(Files::Tar(archive))
            }
            tar::EntryType::Symlink => Err(ServiceError::BadRequest(format!(
                "path: {} is a symbolic link; read what it points to",
                clip(path, 256)
            ))),
            _ => Err(ServiceError::BadRequest(format!(
                "path: {} is neither a regular file nor a directory",
                clip(path, 256)
            ))),
        }
    }

    async fn write_checked(
        &self,
        who: &Principal,
        name: &str,
        path: &str,
        body: Vec<u8>,
        tar: bool,
    ) -> Result<(), ServiceError> {
        check_path(path)?;
        if body.len() > MAX_FILE_BYTES {
            return Err(ServiceError::TooLarge(format!(
                "the body is larger than {MAX_FILE_BYTES} bytes, the most Hive writes at once"
            )));
        }
        let record = self.reachable(who, name, "write files of")?;
        let (dir, archive) = if tar {
            screen_tar(&body)?;
            (path.to_string(), body)
        } else {
            let p = Path::new(path);
            let (Some(dir), Some(file)) = (p.parent(), p.file_name()) else {
                return Err(ServiceError::BadRequest(
                    "path: names a directory; give the file's path (or send a tar with Content-Type application/x-tar)".into(),
                ));
            };
            if path.ends_with('/') {
                return Err(ServiceError::BadRequest(
                    "path: ends with /; give the file's path (or send a tar with Content-Type application/x-tar)".into(),
                ));
            }
            (
                dir.display().to_string(),
                one_file_tar(&file.to_string_lossy(), &body)?,
            )
        };
        let (id, uid) = container_of(&record, name)?;
        self.orchestrator
            .write_archive(&id, uid, &dir, archive)
            .await
            .map_err(files_error)
    }
}

/// The agent's container and uid, or why it has none.
fn container_of(
    record: &crate::store::Record,
    name: &str,
) -> Result<(String, uuid::Uuid), ServiceError> {
    match (&record.agent.status.container_id, record.agent.metadata.uid) {
        (Some(id), Some(uid)) => Ok((id.clone(), uid)),
        _ => Err(ServiceError::Conflict {
            code: "no_container",
            message: format!(
                "agent {name:?} has no container (phase {}): start it first",
                record.agent.status.phase
            ),
        }),
    }
}

fn files_error(e: OrchestratorError) -> ServiceError {
    match e {
        OrchestratorError::NoSuchPath(_) => ServiceError::NotFound(e.to_string()),
        OrchestratorError::TooLarge { .. } => ServiceError::TooLarge(e.to_string()),
        OrchestratorError::NotFound(_) => ServiceError::Conflict {
            code: "no_container",
            message: "the agent's container is gone; it is being replaced".into(),
        },
        OrchestratorError::Unsupported(m) => ServiceError::NotImplemented(m),
        OrchestratorError::Refused(m) => {
            ServiceError::BadRequest(format!("the engine refused: {m}"))
        }
        other => ServiceError::Unavailable(other.to_string()),
    }
}

/// An absolute path without `..`, NUL or excess length.
fn check_path(path: &str) -> Result<(), ServiceError> {
    let bad = |m: &str| ServiceError::BadRequest(format!("path: {m}"));
    if !path.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if path.len() > 4096 || path.contains('\0') {
        return Err(bad("must be at most 4096 bytes without NUL"));
    }
    if Path::new(path)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(bad("may not hold .."));
    }
    Ok(())
}

/// A tar holding one regular file, `name`, with `bytes`.
fn one_file_tar(name: &str, bytes: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, bytes)
        .and_then(|()| tar.into_inner())
        .map_err(|e| ServiceError::BadRequest(format!("path: cannot be written: {e}")))
}

/// Refuses a tar with anything but regular files and directories, relative and without
/// `..`, naming the first entry at fault.
fn screen_tar(body: &[u8]) -> Result<(), ServiceError> {
    let bad = |i: usize, what: &str, m: String| {
        ServiceError::BadRequest(format!("tar entry {i} ({}): {m}", clip(what, 128)))
    };
    let mut archive = tar::Archive::new(body);
    let entries = archive
        .entries()
        .map_err(|e| ServiceError::BadRequest(format!("the body is not a tar: {e}")))?;
    let mut n = 0;
    for (i, entry) in entries.enumerate() {
        let entry = entry.map_err(|e| ServiceError::BadRequest(format!("tar entry {i}: {e}")))?;
        n = i + 1;
        if n > MAX_ENTRIES {
            return Err(ServiceError::BadRequest(format!(
                "the tar holds more than {MAX_ENTRIES} entries"
            )));
        }
        let path = entry
            .path()
            .map_err(|e| bad(i, "?", e.to_string()))?
            .into_owned();
        let shown = path.display().to_string();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(i, &shown, "must be a relative path without ..".into()));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(bad(
                    i,
                    &shown,
                    "links are not written into agents; send the file itself".into(),
                ))
            }
            other => {
                return Err(bad(
                    i,
                    &shown,
                    format!("entries of type {other:?} are not written"),
                ))
            }
        }
    }
    if n == 0 {
        return Err(ServiceError::BadRequest("the tar is empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(0);
            h.set_mode(0o644);
            // Set the name raw, as a hostile client would (the builder refuses `..`).
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_cksum();
            tar.append(&h, std::io::empty()).unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn a_written_tar_holds_only_files_and_directories_under_the_target() {
        let ok = tar_of(&[
            ("d/", tar::EntryType::Directory, ""),
            ("d/f.txt", tar::EntryType::Regular, ""),
            ("./g", tar::EntryType::Regular, ""),
        ]);
        screen_tar(&ok).unwrap();
        for (entries, at) in [
            (vec![("../x", tar::EntryType::Regular, "")], "tar entry 0"),
            (
                vec![
                    ("a", tar::EntryType::Regular, ""),
                    ("a/../../x", tar::EntryType::Regular, ""),
                ],
                "tar entry 1",
            ),
            (
                vec![("/etc/passwd", tar::EntryType::Regular, "")],
                "tar entry 0",
            ),
            (vec![("l", tar::EntryType::Symlink, "/etc")], "tar entry 0"),
            (vec![("h", tar::EntryType::Link, "x")], "tar entry 0"),
            (vec![("p", tar::EntryType::Fifo, "")], "tar entry 0"),
        ] {
            let e = screen_tar(&tar_of(&entries)).unwrap_err().to_string();
            assert!(e.starts_with(at), "{entries:?}: {e}");
        }
        assert!(screen_tar(b"not a tar at all, surely").is_err());
        assert!(screen_tar(&[]).is_err());
    }

    #[test]
    fn paths_are_absolute_without_parent_steps() {
        check_path("/data/x.txt").unwrap();
        for bad in ["data", "/data/../etc", "/a\0b", ""] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        let one = one_file_tar("x.txt", b"hello").unwrap();
        let mut a = tar::Archive::new(one.as_slice());
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("x.txt"));
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }
}
