//! The API key: where it comes from (AGENT_API_KEY, `--api-key-file`, or a key generated
//! once into `<data-dir>/api-key` with mode 0600), and the middleware that demands it on
//! every /v1 route. Keys are compared by SHA-256 digest in constant time and never logged.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// The key a client must present, kept only as its digest.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Where the key came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File(PathBuf),
    Generated(PathBuf),
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the API key in {0} is empty")]
    Empty(String),
    #[error("cannot read the API key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write a generated API key to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ApiKey {
    pub fn new(key: &str) -> Self {
        ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Whether `given` is the key, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        d.ct_eq(&self.digest).into()
    }

    /// Loads the key: `--api-key-file` if given, else AGENT_API_KEY, else the generated
    /// key under `data_dir` (made on first start).
    pub fn load(
        env_key: Option<&str>,
        key_file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(ApiKey, KeySource), KeyError> {
        if let Some(path) = key_file {
            let key = read_key(path)?;
            return Ok((ApiKey::new(&key), KeySource::File(path.to_path_buf())));
        }
        if let Some(key) = env_key {
            let key = key.trim();
            if key.is_empty() {
                return Err(KeyError::Empty("AGENT_API_KEY".into()));
            }
            return Ok((ApiKey::new(key), KeySource::Environment));
        }
        let path = data_dir.join("api-key");
        if path.exists() {
            let key = read_key(&path)?;
            return Ok((ApiKey::new(&key), KeySource::File(path)));
        }
        let key = generate_key();
        write_private(&path, &key).map_err(|source| KeyError::Write {
            path: path.clone(),
            source,
        })?;
        Ok((ApiKey::new(&key), KeySource::Generated(path)))
    }
}

fn read_key(path: &Path) -> Result<String, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(KeyError::Empty(path.display().to_string()));
    }
    Ok(key.to_string())
}

/// 32 random bytes from the OS, hex-encoded.
fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

fn write_private(path: &Path, key: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{key}")?;
    f.sync_all()
}

/// The key a request presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, key) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

/// Middleware: refuse any request without the right key.
pub async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match presented(request.headers()) {
        None => Err(ApiError::Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        )),
        Some(key) if state.key.matches(key) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::Unauthorized("invalid API key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (k1, src) = ApiKey::load(None, None, dir.path()).unwrap();
        let path = dir.path().join("api-key");
        assert_eq!(src, KeySource::Generated(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(k1.matches(text.trim()));
        let (k2, src) = ApiKey::load(None, None, dir.path()).unwrap();
        assert_eq!(src, KeySource::File(path));
        assert!(k2.matches(text.trim()));
    }

    #[test]
    fn keys_come_from_the_file_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, "from-file\n").unwrap();
        let (k, _) = ApiKey::load(Some("from-env"), Some(&file), dir.path()).unwrap();
        assert!(k.matches("from-file") && !k.matches("from-env"));
        let (k, src) = ApiKey::load(Some("from-env"), None, dir.path()).unwrap();
        assert!(k.matches("from-env"));
        assert_eq!(src, KeySource::Environment);
        assert!(ApiKey::load(Some("  "), None, dir.path()).is_err());
    }

    #[test]
    fn both_header_forms_are_read() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "abc".parse().unwrap());
        assert_eq!(presented(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented(&h), None);
    }
}
