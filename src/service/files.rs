//! An agent's files, read and written on a client's behalf (as `docker cp` and
//! `kubectl cp`), with the same rule of who may as exec. Reads answer a regular file's
//! bytes, or a tar of a directory; writes put one file, or unpack a tar whose entries are
//! only regular files and directories under the target (no `..`, no absolute paths, no
//! links or devices), owned by the container's user. At most [`MAX_FILE_BYTES`] move at
//! once. Every read and write is audited with its path and size, never the contents.

use std::io::Read;
use std::path::{Component, Path};

use super::inside::{container, inside_error};
use super::{Service, ServiceError};
use crate::access::Principal;
use crate::agent::clip;

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
    /// The file or directory at `path` in the agent `name` (`tar`: always as a tar), at
    /// most `max` bytes of archive (at most [`MAX_FILE_BYTES`]).
    pub async fn read_files(
        &self,
        who: &Principal,
        name: &str,
        path: &str,
        tar: bool,
        max: usize,
    ) -> Result<Files, ServiceError> {
        let result = self
            .read_checked(who, name, path, tar, max.min(MAX_FILE_BYTES))
            .await;
        let detail = match &result {
            Ok(Files::File(b) | Files::Tar(b)) => {
                format!("path {}, {} B out", clip(path, 256), b.len())
            }
            Err(_) => format!("path {}", clip(path, 256)),
        };
        self.audit_detailed(who, "files.read", name, &result, 200, Some(detail));
        result
    }

    /// [`Service::write_files`] in a task of its own, so that a write that started is
    /// carried out and audited to its end even when the caller goes away.
    pub async fn write_files_to_end(
        self: &std::sync::Arc<Self>,
        who: &Principal,
        name: &str,
        path: &str,
        body: Vec<u8>,
        tar: bool,
    ) -> Result<(), ServiceError> {
        let service = std::sync::Arc::clone(self);
        let (who, name, path) = (who.clone(), name.to_string(), path.to_string());
        tokio::spawn(async move { service.write_files(&who, &name, &path, body, tar).await })
            .await
            .unwrap_or_else(|e| Err(ServiceError::Internal(format!("the write failed: {e}"))))
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
        max: usize,
    ) -> Result<Files, ServiceError> {
        check_path(path)?;
        let record = self.reachable(who, name, "read files of")?;
        let (id, uid) = container(&record, name)?;
        let archive = self
            .orchestrator
            .read_archive(&id, uid, path, max)
            .await
            .map_err(|e| inside_error(name, e))?;
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
            (path.to_string(), rebuild_tar(&body)?)
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
        let (id, uid) = container(&record, name)?;
        self.orchestrator
            .write_archive(&id, uid, &dir, archive)
            .await
            .map_err(|e| inside_error(name, e))
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
    append(&mut tar, header, name.as_bytes(), bytes, true)
        .and_then(|()| tar.into_inner())
        .map_err(|e| ServiceError::BadRequest(format!("path: cannot be written: {e}")))
}

/// Appends an entry named `name` (raw bytes). With `long`, or when the name does not fit
/// the header, the name goes first in a GNU long-name record, so that the stream opens
/// with `././@LongLink`: never the magic number of a compressed stream, which the engine
/// would otherwise unpack instead of the tar.
fn append(
    out: &mut tar::Builder<Vec<u8>>,
    mut header: tar::Header,
    name: &[u8],
    data: impl Read,
    long: bool,
) -> std::io::Result<()> {
    if long || name.len() > 99 {
        let mut record = tar::Header::new_gnu();
        record.set_entry_type(tar::EntryType::GNULongName);
        record.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        record.set_mode(0o644);
        record.set_size(name.len() as u64 + 1);
        record.set_cksum();
        let mut bytes = name.to_vec();
        bytes.push(0);
        out.append(&record, bytes.as_slice())?;
    }
    let short = &name[..name.len().min(99)];
    header.as_old_mut().name[..short.len()].copy_from_slice(short);
    header.set_cksum();
    out.append(&header, data)
}

/// The tar that is written: rebuilt from scratch out of the client's, keeping only regular
/// files and directories with relative names, no `..` and no NUL, their contents and
/// permission bits (`& 0o777`). The client's bytes never reach the engine, so nothing the
/// engine would read differently (a compressed stream behind a tar header, a name cut at
/// a NUL, entries after an end of archive) gets through. The first entry at fault is named.
fn rebuild_tar(body: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let bad = |i: usize, what: &str, m: String| {
        ServiceError::BadRequest(format!("tar entry {i} ({}): {m}", clip(what, 128)))
    };
    let mut archive = tar::Archive::new(body);
    let entries = archive
        .entries()
        .map_err(|e| ServiceError::BadRequest(format!("the body is not a tar: {e}")))?;
    let mut out = tar::Builder::new(Vec::new());
    let mut n = 0;
    for (i, entry) in entries.enumerate() {
        let mut entry =
            entry.map_err(|e| ServiceError::BadRequest(format!("tar entry {i}: {e}")))?;
        n = i + 1;
        if n > MAX_ENTRIES {
            return Err(ServiceError::BadRequest(format!(
                "the tar holds more than {MAX_ENTRIES} entries"
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let path = entry
            .path()
            .map_err(|e| bad(i, "?", e.to_string()))?
            .into_owned();
        let shown = path.display().to_string();
        if raw.contains(&0)
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(
                i,
                &shown,
                "must be a relative path without .. or NUL".into(),
            ));
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_mtime(entry.header().mtime().unwrap_or(0));
        let written = match kind {
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| bad(i, &shown, e.to_string()))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                append(&mut out, header, &raw, data.as_slice(), i == 0)
            }
            tar::EntryType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                append(&mut out, header, &raw, std::io::empty(), i == 0)
            }
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
        };
        written.map_err(|e| bad(i, &shown, e.to_string()))?;
    }
    if n == 0 {
        return Err(ServiceError::BadRequest("the tar is empty".into()));
    }
    out.into_inner()
        .map_err(|e| ServiceError::Internal(format!("rebuilding the tar: {e}")))
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
        rebuild_tar(&ok).unwrap();
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
            let e = rebuild_tar(&tar_of(&entries)).unwrap_err().to_string();
            assert!(e.starts_with(at), "{entries:?}: {e}");
        }
        assert!(rebuild_tar(b"not a tar at all, surely").is_err());
        // A GNU long name holding a NUL (another reader would cut it at `..`).
        let mut tar = tar::Builder::new(Vec::new());
        let mut long = tar::Header::new_gnu();
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(6);
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_cksum();
        tar.append(&long, &b"..\0x/y"[..6]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, &b"z"[..]).unwrap();
        let e = rebuild_tar(&tar.into_inner().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tar entry 0"), "{e}");
    }

    #[test]
    fn what_is_written_is_a_plain_tar_rebuilt_from_the_screened_entries() {
        // A name that starts with gzip's magic: the engine would read a compressed stream.
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o4755);
        h.as_old_mut().name[..4].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04]);
        h.set_cksum();
        tar.append(&h, &b"hello"[..]).unwrap();
        let mut body = tar.into_inner().unwrap();
        // Anything after the end of the archive is dropped, not forwarded.
        body.extend_from_slice(&[0xAB; 1024]);
        let rebuilt = rebuild_tar(&body).unwrap();
        assert_ne!(
            &rebuilt[..2],
            &[0x1f, 0x8b],
            "written by Hive, not the client"
        );
        assert!(!rebuilt.windows(8).any(|w| w == [0xAB; 8]));
        let mut a = tar::Archive::new(rebuilt.as_slice());
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.header().mode().unwrap(), 0o755, "no setuid bit");
        let mut text = String::new();
        e.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        assert!(rebuild_tar(&[]).is_err());
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
