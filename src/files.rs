//! Reading files that someone else controls (the manifests directory, the keys file, the
//! policy file) without letting their shape stall Hive: the one rule every such read
//! follows.
//!
//! - Only regular files are read. A file is opened with `O_NONBLOCK` and `O_NOCTTY`, so
//!   opening a FIFO, a socket or a device returns at once instead of waiting for a writer,
//!   and the type is checked on the open handle (not on the path, which could be swapped
//!   in between).
//! - At most a given number of bytes is read: a bigger (or sparse, or growing) file is
//!   refused by name, and never read whole.
//! - These calls block: callers on the async runtime run them in `spawn_blocking` (see
//!   [`read_regular_async`]), so that a slow disk holds up one blocking thread, not the
//!   runtime that serves `/healthz`.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not a regular file; it is not read")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} is larger than {max} bytes; it is not read")]
    TooLarge { path: PathBuf, max: u64 },
}

impl ReadError {
    /// Whether the file is not there (as opposed to there and unreadable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What kind of thing a file type is, in words.
pub fn kind_of(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Reads the regular file at `path` (following symlinks), at most `max` bytes. Blocks:
/// call it off the async runtime.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The type by the path first (a socket cannot even be opened), then on the handle.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    // The file may grow between the stat and the read: read one byte past the cap to see.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(bytes)
}

/// [`read_regular`] on a blocking thread.
pub async fn read_regular_async(path: PathBuf, max: u64) -> Result<Vec<u8>, ReadError> {
    let at = path.clone();
    tokio::task::spawn_blocking(move || read_regular(&path, max))
        .await
        .unwrap_or_else(|e| {
            Err(ReadError::Io {
                path: at,
                source: std::io::Error::other(e.to_string()),
            })
        })
}

/// `O_NONBLOCK | O_NOCTTY`: opening a FIFO without a writer, or a terminal, returns at once.
fn libc_flags() -> i32 {
    libc::O_NONBLOCK | libc::O_NOCTTY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_without_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.yaml");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let started = std::time::Instant::now();
        let e = read_regular(&fifo, 1024).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular { kind: "a FIFO", .. }),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let socket = dir.path().join("sock.yaml");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let e = read_regular(&socket, 1024).unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::NotRegular {
                    kind: "a socket",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_file_over_the_cap_is_refused_without_being_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        // Sparse: a terabyte on paper, nothing on disk.
        f.set_len(1 << 40).unwrap();
        let e = read_regular(&big, 1 << 20).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { .. }), "{e}");
        std::fs::write(&big, "a: 1\n").unwrap();
        assert_eq!(read_regular(&big, 5).unwrap(), b"a: 1\n");
        assert!(read_regular(&big, 4).is_err());
        assert!(read_regular(dir.path(), 10).is_err(), "a directory");
        assert!(read_regular(&dir.path().join("none"), 10)
            .unwrap_err()
            .is_not_found());
    }
}
