//! Who may call Hive: the admin key (AGENT_API_KEY, `--api-key-file`, or one generated
//! into `<data-dir>/api-key`) and the keys of `--keys-file`, each with an owner and a
//! role. Keys are held only as SHA-256 digests, compared in constant time, and never
//! logged; a key is named in logs and audit by its id.
//!
//! The keys file is re-read on SIGHUP and when it changes. A file that is deleted or does
//! not parse fails closed: its keys stop working (a revoked key must not live on because
//! the file that revoked it has a typo) and only the admin key, the break-glass key, is
//! accepted until the file loads again; the log and `/readyz` say so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::agent::validate_name;

/// The owner of agents made with the admin key, unless it names another.
pub const ADMIN_OWNER: &str = "admin";
/// The id of the admin key in logs and audit.
pub const ADMIN_KEY_ID: &str = "admin";
/// The identity the manifests directory's writes are audited under.
pub const GITOPS_KEY_ID: &str = "gitops";

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, over every owner's agents.
    Admin,
    /// Create, change and delete its owner's agents.
    Operator,
    /// Read its owner's agents and their logs.
    Viewer,
    /// Hive's own writers (the manifests directory); never a key's role.
    #[serde(skip)]
    System,
}

impl Role {
    /// The role's name, as the keys file and the audit log write it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::System => "system",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's id: what logs and audit show instead of the key.
    pub key_id: String,
    /// Whose agents it sees and makes.
    pub owner: String,
    pub role: Role,
    /// Which keys-file entry admitted it (None: the admin key, or Hive itself), so that
    /// what it holds open can be ended when that entry goes ([`Keys::is_valid`]).
    credential: Option<Digest32>,
}

/// A key's SHA-256, never shown.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digest32([u8; 32]);

impl std::fmt::Debug for Digest32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<digest>")
    }
}

/// Key ids that name Hive's own identities: a keys-file entry may not take one, or it
/// would share their audit trail and stream budget.
pub const RESERVED_KEY_IDS: [&str; 3] = [ADMIN_KEY_ID, GITOPS_KEY_ID, "-"];

impl Principal {
    fn admin() -> Principal {
        Principal {
            key_id: ADMIN_KEY_ID.into(),
            owner: ADMIN_OWNER.into(),
            role: Role::Admin,
            credential: None,
        }
    }

    /// The manifests directory, writing agents for `owner`.
    pub fn gitops(owner: &str) -> Principal {
        Principal {
            key_id: GITOPS_KEY_ID.into(),
            owner: owner.to_string(),
            role: Role::System,
            credential: None,
        }
    }

    /// Whether this is an admin or Hive itself, whose audit entries refusals never push
    /// out.
    pub fn is_privileged(&self) -> bool {
        matches!(self.role, Role::Admin | Role::System)
    }

    /// Whether this caller may see an agent of `owner`.
    pub fn sees(&self, owner: &str) -> bool {
        matches!(self.role, Role::Admin | Role::System) || self.owner == owner
    }

    /// Whether this caller acts on every owner's behalf (an admin key).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this caller may change agents at all.
    pub fn may_write(&self) -> bool {
        self.role != Role::Viewer
    }
}

/// The keys file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// One entry of the keys file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    pub owner: String,
    pub role: Role,
    /// Hex SHA-256 of the key.
    pub sha256: String,
}

/// Why keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the API key in {0} is empty")]
    Empty(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write a generated API key to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keys file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Where the admin key came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File(PathBuf),
    Generated(PathBuf),
}

struct Entry {
    digest: [u8; 32],
    principal: Principal,
}

/// The largest keys file read.
pub const MAX_KEYS_FILE: u64 = 1 << 20;

/// The keys Hive accepts.
pub struct Keys {
    admin: [u8; 32],
    file: Option<PathBuf>,
    entries: RwLock<Arc<Vec<Entry>>>,
    /// Why the keys file does not load, while it does not (its keys are refused meanwhile).
    broken: RwLock<Option<String>>,
    /// Counts reloads: what holds a key's stream open waits on it to look again.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl Keys {
    /// The admin key alone.
    pub fn admin_only(key: &str) -> Keys {
        Keys {
            admin: digest(key),
            file: None,
            entries: RwLock::new(Arc::new(Vec::new())),
            broken: RwLock::new(None),
            reloads: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Loads the admin key (`--api-key-file`, else AGENT_API_KEY, else the generated key
    /// under `data_dir`) and the keys file, if any.
    pub fn load(
        env_key: Option<&str>,
        key_file: Option<&Path>,
        keys_file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(Keys, KeySource), KeyError> {
        let (admin, source) = admin_key(env_key, key_file, data_dir)?;
        let keys = Keys {
            admin: digest(&admin),
            file: keys_file.map(Path::to_path_buf),
            entries: RwLock::new(Arc::new(Vec::new())),
            broken: RwLock::new(None),
            reloads: tokio::sync::watch::Sender::new(0),
        };
        if keys_file.is_some() {
            keys.reload()?;
        }
        Ok((keys, source))
    }

    /// The keys file, if one is in use.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Re-reads the keys file. On error it fails closed: none of its keys is accepted
    /// until it loads again (the admin key still is).
    pub fn reload(&self) -> Result<usize, KeyError> {
        let Some(path) = &self.file else { return Ok(0) };
        let (entries, broken, result) = match read_keys_file(path) {
            Ok(entries) => {
                let n = entries.len();
                (entries, None, Ok(n))
            }
            Err(e) => (Vec::new(), Some(e.to_string()), Err(e)),
        };
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(entries);
        *self.broken.write().unwrap_or_else(|p| p.into_inner()) = broken;
        self.reloads.send_modify(|n| *n += 1);
        result
    }

    /// Whether `p` would still be let in: the admin key and Hive itself always are; a
    /// keys-file caller while the entry that admitted it is in the file as it was.
    pub fn is_valid(&self, p: &Principal) -> bool {
        let Some(credential) = p.credential else {
            return true;
        };
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        entries
            .iter()
            .any(|e| e.digest == credential.0 && e.principal == *p)
    }

    /// Resolves once `p` is no longer valid (its entry removed or changed, or the file
    /// broken or gone); never for the admin key.
    pub async fn revoked(&self, p: &Principal) {
        if p.credential.is_none() {
            return std::future::pending().await;
        }
        let mut reloads = self.reloads.subscribe();
        loop {
            if !self.is_valid(p) {
                return;
            }
            if reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Why the keys file does not load, while it does not.
    pub fn broken(&self) -> Option<String> {
        self.broken
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The caller a presented key belongs to. Every entry is compared, in constant time,
    /// whatever matches, so timing says nothing about which keys exist.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let d = digest(presented);
        let mut found = None;
        if bool::from(d.ct_eq(&self.admin)) {
            found = Some(Principal::admin());
        }
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for e in entries.iter() {
            if bool::from(d.ct_eq(&e.digest)) && found.is_none() {
                found = Some(e.principal.clone());
            }
        }
        found
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Reads the keys file: a regular file of at most [`MAX_KEYS_FILE`] bytes. Blocks.
fn read_keys_file(path: &Path) -> Result<Vec<Entry>, KeyError> {
    let bytes = crate::files::read_regular(path, MAX_KEYS_FILE).map_err(|e| match e {
        crate::files::ReadError::Io { source, .. } => KeyError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => KeyError::Invalid {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    let text = String::from_utf8(bytes).map_err(|_| KeyError::Invalid {
        path: path.to_path_buf(),
        message: "is not UTF-8 text".into(),
    })?;
    parse_keys(&text).map_err(|message| KeyError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

/// The entries of a keys file's text. Each id and each key belongs to one entry, and no
/// entry takes the id of one of Hive's own identities ([`RESERVED_KEY_IDS`]).
fn parse_keys(text: &str) -> Result<Vec<Entry>, String> {
    let file: KeysFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, k) in file.keys.into_iter().enumerate() {
        let at = format!("keys[{i}]");
        if k.id.trim().is_empty() {
            return Err(format!("{at}.id is empty"));
        }
        let shown = crate::agent::shown_key(&k.id);
        if k.id.len() > 63 || k.id.chars().any(|c| c.is_control()) {
            return Err(format!("{at}.id must be at most 63 printable characters"));
        }
        if k.id.trim() != k.id {
            return Err(format!("{at}.id {shown:?} begins or ends with a space"));
        }
        if RESERVED_KEY_IDS
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&k.id))
        {
            return Err(format!(
                "{at}.id {shown:?} is one of Hive's own identities ({}); choose another",
                RESERVED_KEY_IDS.join(", ")
            ));
        }
        if !ids.insert(k.id.clone()) {
            return Err(format!("{at}.id {shown:?} appears twice"));
        }
        validate_name(&k.owner).map_err(|m| format!("{at}.owner: {m}"))?;
        let mut d = [0u8; 32];
        hex::decode_to_slice(k.sha256.trim(), &mut d)
            .map_err(|_| format!("{at}.sha256 must be 64 hex digits (the SHA-256 of the key)"))?;
        if let Some(first) = entries.iter().find(|e| e.digest == d) {
            return Err(format!(
                "{at}.sha256 is the key of {:?} too: one key, one entry",
                first.principal.key_id
            ));
        }
        entries.push(Entry {
            digest: d,
            principal: Principal {
                key_id: k.id,
                owner: k.owner,
                role: k.role,
                credential: Some(Digest32(d)),
            },
        });
    }
    Ok(entries)
}

fn admin_key(
    env_key: Option<&str>,
    key_file: Option<&Path>,
    data_dir: &Path,
) -> Result<(String, KeySource), KeyError> {
    if let Some(path) = key_file {
        return Ok((read_key(path)?, KeySource::File(path.to_path_buf())));
    }
    if let Some(key) = env_key {
        let key = key.trim();
        if key.is_empty() {
            return Err(KeyError::Empty("AGENT_API_KEY".into()));
        }
        return Ok((key.to_string(), KeySource::Environment));
    }
    let path = data_dir.join("api-key");
    if path.exists() {
        return Ok((read_key(&path)?, KeySource::File(path)));
    }
    let key = generate_key();
    write_private(&path, &key).map_err(|source| KeyError::Write {
        path: path.clone(),
        source,
    })?;
    Ok((key, KeySource::Generated(path)))
}

fn read_key(path: &Path) -> Result<String, KeyError> {
    let bytes = crate::files::read_regular(path, 4096).map_err(|e| match e {
        crate::files::ReadError::Io { source, .. } => KeyError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => KeyError::Invalid {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let key = text.trim();
    if key.is_empty() {
        return Err(KeyError::Empty(path.display().to_string()));
    }
    Ok(key.to_string())
}

/// 32 random bytes from the OS, hex-encoded.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// A fresh key and the keys-file entry that admits it.
pub fn new_key(id: &str, owner: &str, role: Role) -> Result<(String, String), String> {
    validate_name(owner).map_err(|m| format!("--owner: {m}"))?;
    let key = generate_key();
    let entry = KeyEntry {
        id: id.to_string(),
        owner: owner.to_string(),
        role,
        sha256: hex::encode(digest(&key)),
    };
    let yaml = serde_yaml::to_string(&vec![entry]).map_err(|e| e.to_string())?;
    Ok((key, yaml))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_, src) = Keys::load(None, None, None, dir.path()).unwrap();
        let path = dir.path().join("api-key");
        assert_eq!(src, KeySource::Generated(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let (k, src) = Keys::load(None, None, None, dir.path()).unwrap();
        assert_eq!(src, KeySource::File(path));
        assert_eq!(k.authenticate(text.trim()).unwrap().role, Role::Admin);
    }

    #[test]
    fn the_admin_key_comes_from_the_file_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, "from-file\n").unwrap();
        let (k, _) = Keys::load(Some("from-env"), Some(&file), None, dir.path()).unwrap();
        assert!(k.authenticate("from-file").is_some() && k.authenticate("from-env").is_none());
        let (k, src) = Keys::load(Some("from-env"), None, None, dir.path()).unwrap();
        assert!(k.authenticate("from-env").is_some());
        assert_eq!(src, KeySource::Environment);
        assert!(Keys::load(Some("  "), None, None, dir.path()).is_err());
    }

    #[test]
    fn keys_file_entries_authenticate_and_a_bad_reload_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (key, entry) = new_key("sol-1", "sol", Role::Operator).unwrap();
        let file = dir.path().join("keys.yaml");
        std::fs::write(&file, format!("keys:\n{}", indent(&entry))).unwrap();
        let (k, _) = Keys::load(Some("admin-key"), None, Some(&file), dir.path()).unwrap();
        let p = k.authenticate(&key).unwrap();
        assert_eq!(
            (p.key_id.as_str(), p.owner.as_str(), p.role),
            ("sol-1", "sol", Role::Operator)
        );
        assert!(k.authenticate(&format!("{key}x")).is_none());
        std::fs::write(&file, "keys: [{id: x").unwrap();
        assert!(k.reload().is_err());
        assert!(k.authenticate(&key).is_none(), "a broken file fails closed");
        assert!(
            k.authenticate("admin-key").is_some(),
            "the admin key still works"
        );
        assert!(k.broken().is_some());
        std::fs::write(&file, format!("keys:\n{}", indent(&entry))).unwrap();
        assert_eq!(k.reload().unwrap(), 1);
        assert!(k.authenticate(&key).is_some() && k.broken().is_none());
        std::fs::remove_file(&file).unwrap();
        assert!(k.reload().is_err());
        assert!(
            k.authenticate(&key).is_none(),
            "a deleted file fails closed"
        );
    }

    #[test]
    fn bad_entries_are_refused_with_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        for (text, want) in [
            (
                "keys: [{id: a, owner: sol, role: root, sha256: aa}]",
                "role",
            ),
            (
                "keys: [{id: a, owner: Sol, role: viewer, sha256: aa}]",
                "keys[0].owner",
            ),
            (
                "keys: [{id: a, owner: sol, role: viewer, sha256: aa}]",
                "keys[0].sha256",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Keys::load(Some("k"), None, Some(&file), dir.path()).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn one_key_one_entry_and_hives_own_ids_are_not_taken() {
        let (_, sol) = new_key("sol-1", "sol", Role::Operator).unwrap();
        let twice = format!(
            "keys:\n{}{}",
            indent(&sol),
            indent(&sol.replace("sol-1", "bob-1"))
        );
        let e = parse_keys(&twice).map(|_| ()).unwrap_err();
        assert!(
            e.contains("keys[1].sha256") && e.contains("one key, one entry"),
            "{e}"
        );
        for id in RESERVED_KEY_IDS
            .into_iter()
            .chain(["Admin", "GITOPS", " sol"])
        {
            let text = format!(
                "keys:\n{}",
                indent(&sol.replace("sol-1", &format!("{id:?}")))
            );
            let e = parse_keys(&text).map(|_| ()).unwrap_err();
            assert!(
                e.contains("Hive's own identities") || e.contains("begins or ends with a space"),
                "{id}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn a_principal_is_revoked_when_its_entry_goes_or_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        let (key, entry) = new_key("sol-1", "sol", Role::Operator).unwrap();
        std::fs::write(&file, format!("keys:\n{}", indent(&entry))).unwrap();
        let (k, _) = Keys::load(Some("admin-key"), None, Some(&file), dir.path()).unwrap();
        let sol = k.authenticate(&key).unwrap();
        let admin = k.authenticate("admin-key").unwrap();
        assert!(k.is_valid(&sol) && k.is_valid(&admin));
        let revoked = k.revoked(&sol);
        tokio::pin!(revoked);
        assert!(futures_util::poll!(&mut revoked).is_pending());
        // The same key, now a viewer: what it opened as an operator ends.
        std::fs::write(
            &file,
            format!("keys:\n{}", indent(&entry.replace("operator", "viewer"))),
        )
        .unwrap();
        k.reload().unwrap();
        assert!(!k.is_valid(&sol));
        tokio::time::timeout(std::time::Duration::from_secs(1), revoked)
            .await
            .expect("revoked");
        assert!(k.is_valid(&admin), "the admin key is never revoked");
    }

    fn indent(yaml: &str) -> String {
        yaml.lines().map(|l| format!("  {l}\n")).collect()
    }
}
