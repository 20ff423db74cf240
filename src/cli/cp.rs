//! `hive cp NAME:/path LOCAL` and `hive cp LOCAL NAME:/path`: files to and from an agent,
//! as `kubectl cp` and `docker cp`, through the API (no engine socket). A directory moves
//! as a tar: a local one is packed (regular files and directories only) and unpacked
//! into the agent's existing directory `path`; one read from the agent is unpacked under
//! the local directory, never outside it.

use std::path::{Path, PathBuf};

use reqwest::Method;

use super::{CliError, Client};

/// The most one copy into an agent sends (the server's own bound).
const MAX_UPLOAD: u64 = 16 * 1024 * 1024;
/// The deepest directory a copy into an agent packs.
const MAX_DEPTH: usize = 64;

fn too_large(p: &Path) -> CliError {
    CliError::new(format!(
        "{}: more than {MAX_UPLOAD} bytes, the most Hive takes at once",
        p.display()
    ))
}

/// Runs filesystem work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CliError> + Send + 'static,
) -> Result<T, CliError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CliError::new(format!("copying failed: {e}")))?
}

/// Where a `cp` argument points.
enum End {
    Agent { name: String, path: String },
    Local(PathBuf),
}

fn end(arg: &str) -> End {
    // `NAME:/abs` is an agent's path; anything else (./x, /x, x) is local, as kubectl
    // reads it.
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') && path.starts_with('/') => {
            End::Agent {
                name: name.to_string(),
                path: path.to_string(),
            }
        }
        _ => End::Local(PathBuf::from(arg)),
    }
}

pub(super) async fn cp(client: &Client, from: &str, to: &str) -> Result<(), CliError> {
    match (end(from), end(to)) {
        (End::Agent { name, path }, End::Local(local)) => {
            download(client, &name, &path, &local).await
        }
        (End::Local(local), End::Agent { name, path }) => {
            upload(client, &local, &name, &path).await
        }
        _ => Err(CliError::new(
            "one side must be an agent's path (NAME:/absolute/path) and the other a local one",
        )),
    }
}

async fn download(client: &Client, name: &str, path: &str, local: &Path) -> Result<(), CliError> {
    let req = client
        .agent_request(Method::GET, name, &["files"])
        .query(&[("path", path)]);
    let r = client.send(req).await?;
    let tar = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-tar"));
    let bytes = r
        .bytes()
        .await
        .map_err(|e| CliError::new(format!("reading the answer: {e}")))?;
    let (local, path) = (local.to_path_buf(), path.to_string());
    blocking(move || write_local(&bytes, tar, &local, &path)).await
}

/// Writes what was read from the agent under `local` (on a blocking thread: it is all
/// filesystem work).
fn write_local(bytes: &[u8], tar: bool, local: &Path, path: &str) -> Result<(), CliError> {
    if tar {
        std::fs::create_dir_all(local)
            .map_err(|e| CliError::new(format!("{}: {e}", local.display())))?;
        // `unpack_in` refuses entries that would land outside `local`.
        let mut archive = tar::Archive::new(bytes);
        for entry in archive
            .entries()
            .map_err(|e| CliError::new(format!("the answer is not a tar: {e}")))?
        {
            let mut entry = entry.map_err(|e| CliError::new(format!("a bad tar entry: {e}")))?;
            // Only files and directories: a link the agent made could point anywhere.
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir()) {
                let shown = entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                eprintln!("hive: skipping {shown} (not a regular file or directory)");
                continue;
            }
            entry
                .unpack_in(local)
                .map_err(|e| CliError::new(format!("unpacking into {}: {e}", local.display())))?;
        }
        return Ok(());
    }
    let target = if local.is_dir() {
        local.join(Path::new(path).file_name().unwrap_or_default())
    } else {
        local.to_path_buf()
    };
    // Never write through a link: it may lead anywhere.
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(CliError::new(format!(
            "{} is a symbolic link; not writing through it",
            target.display()
        )));
    }
    std::fs::write(&target, bytes).map_err(|e| CliError::new(format!("{}: {e}", target.display())))
}

async fn upload(client: &Client, local: &Path, name: &str, path: &str) -> Result<(), CliError> {
    let (local, path) = (local.to_path_buf(), path.to_string());
    let (body, content_type, target) = blocking(move || read_local(&local, &path)).await?;
    let req = client
        .agent_request(Method::PUT, name, &["files"])
        .query(&[("path", target.as_str())])
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    client.send(req).await?;
    Ok(())
}

/// Adds `dir` to `tar` as `at`, with its regular files and directories (links and other
/// kinds are skipped with a warning: the server would refuse them), counting the bytes
/// into `size` and stopping past [`MAX_UPLOAD`] or [`MAX_DEPTH`].
fn pack(
    tar: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    at: &Path,
    size: &mut u64,
) -> Result<(), CliError> {
    let fail = |p: &Path, e: std::io::Error| CliError::new(format!("{}: {e}", p.display()));
    if at.components().count() > MAX_DEPTH {
        return Err(CliError::new(format!(
            "{}: more than {MAX_DEPTH} directories deep",
            dir.display()
        )));
    }
    tar.append_dir(at, dir).map_err(|e| fail(dir, e))?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| fail(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let kind = e.file_type().map_err(|err| fail(&path, err))?;
        let inside = at.join(e.file_name());
        if kind.is_dir() {
            pack(tar, &path, &inside, size)?;
        } else if kind.is_file() {
            *size += e.metadata().map_err(|err| fail(&path, err))?.len() + 512;
            if *size > MAX_UPLOAD {
                return Err(too_large(dir));
            }
            tar.append_path_with_name(&path, &inside)
                .map_err(|err| fail(&path, err))?;
        } else {
            eprintln!(
                "hive: skipping {} (not a regular file or directory)",
                path.display()
            );
        }
    }
    Ok(())
}

/// What to send for `local`: a file's bytes, or a tar of a directory, with its media type
/// and the agent's path to write; at most [`MAX_UPLOAD`] bytes, read on a blocking thread.
fn read_local(local: &Path, path: &str) -> Result<(Vec<u8>, &'static str, String), CliError> {
    let meta =
        std::fs::metadata(local).map_err(|e| CliError::new(format!("{}: {e}", local.display())))?;
    let (body, content_type, target) = if meta.is_dir() {
        let base = local
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_os_string()))
            .ok_or_else(|| {
                CliError::new(format!("{}: has no name to copy it as", local.display()))
            })?;
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        pack(&mut tar, local, Path::new(&base), &mut 0)?;
        let bytes = tar
            .into_inner()
            .map_err(|e| CliError::new(format!("packing {}: {e}", local.display())))?;
        (bytes, "application/x-tar", path.to_string())
    } else if !meta.is_file() {
        return Err(CliError::new(format!(
            "{}: neither a regular file nor a directory",
            local.display()
        )));
    } else {
        if meta.len() > MAX_UPLOAD {
            return Err(too_large(local));
        }
        let bytes =
            std::fs::read(local).map_err(|e| CliError::new(format!("{}: {e}", local.display())))?;
        // `NAME:/dir/` writes the file into that directory under its own name.
        let target = if path.ends_with('/') {
            format!(
                "{path}{}",
                local.file_name().unwrap_or_default().to_string_lossy()
            )
        } else {
            path.to_string()
        };
        (bytes, "application/octet-stream", target)
    };
    Ok((body, content_type, target))
}
