//! Admission policy: what an Agent may be. Every create and update passes through
//! [`Policy::admit`] before anything is stored. A refusal names the rule that refused.
//!
//! Some things are never allowed, whatever the policy file says: privileged containers,
//! the host's network, PID, IPC or UTS namespaces, devices, host paths, and anything that
//! reaches the Docker socket. The spec has no field for any of them; [`screen`] catches a
//! document asking for one and says why, instead of a bare "unknown field".

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::agent::{parse_cpus, parse_memory, Agent, Invalid};

/// The policy file (`--policy`). Absent parts take the safe defaults of [`Policy::default`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Image patterns that may run; None allows every image.
    pub images: Option<Images>,
    /// Limits applied when a spec sets none.
    pub defaults: Limits,
    /// Limits no agent may exceed.
    pub max: Limits,
    /// Totals per owner.
    pub quota: Quota,
    /// Capabilities an agent may add back after all are dropped.
    pub capabilities: Capabilities,
    /// Bounds on the environment.
    pub env: EnvLimits,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// Patterns where `*` matches anything, such as `nanobot:*` or `registry.example/agents/*`.
    pub allow: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<String>,
    #[serde(default, deserialize_with = "crate::agent::string_or_number")]
    pub cpus: Option<String>,
    pub pids: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub agents: Option<usize>,
    pub memory: Option<String>,
    #[serde(default, deserialize_with = "crate::agent::string_or_number")]
    pub cpus: Option<String>,
}

impl Quota {
    /// Whether any quota applies.
    pub fn is_set(&self) -> bool {
        self.agents.is_some() || self.memory.is_some() || self.cpus.is_some()
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub allow: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct EnvLimits {
    /// Variables per agent.
    pub max_count: usize,
    /// Bytes of names and values together, per agent.
    pub max_bytes: usize,
}

impl Default for EnvLimits {
    fn default() -> Self {
        EnvLimits {
            max_count: 128,
            max_bytes: 256 * 1024,
        }
    }
}

impl Default for Policy {
    /// The policy in force without a file: every image, but every container limited.
    fn default() -> Self {
        Policy {
            images: None,
            defaults: Limits {
                memory: Some("512Mi".into()),
                cpus: Some("1".into()),
                pids: Some(256),
            },
            max: Limits {
                memory: Some("16Gi".into()),
                cpus: None,
                pids: Some(4096),
            },
            quota: Quota::default(),
            capabilities: Capabilities::default(),
            env: EnvLimits::default(),
        }
    }
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("policy file {path}: {message}")]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

/// A refusal: the rule, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The agent is not allowed as written (422).
    Invalid { rule: String, invalid: Invalid },
    /// The owner's quota would be exceeded (403).
    Quota { rule: String, message: String },
}

impl Refusal {
    fn invalid(rule: &str, field: &str, message: String) -> Refusal {
        Refusal::Invalid {
            rule: rule.to_string(),
            invalid: Invalid::new(field, format!("{message} (policy rule {rule})")),
        }
    }
}

/// Capabilities Docker knows; an unknown name is a typo, not a request.
const KNOWN_CAPS: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// Fields that ask for what is never allowed, anywhere under `spec`, with the reason.
const NEVER: &[(&str, &str)] = &[
    ("privileged", "privileged containers are never allowed"),
    (
        "hostNetwork",
        "the host's network namespace is never shared",
    ),
    ("hostPID", "the host's PID namespace is never shared"),
    ("hostIPC", "the host's IPC namespace is never shared"),
    ("hostUTS", "the host's UTS namespace is never shared"),
    (
        "networkMode",
        "network modes are Hive's to choose; the host network is never allowed",
    ),
    ("pidMode", "the host's PID namespace is never shared"),
    ("ipcMode", "the host's IPC namespace is never shared"),
    ("devices", "devices are never passed through"),
    ("hostPath", "host paths are never mounted"),
    ("binds", "host paths are never mounted"),
    ("mounts", "host paths are never mounted"),
    (
        "source",
        "volumes are named by Hive; host paths are never mounted",
    ),
    ("securityOpt", "security options are Hive's to set"),
    (
        "capAdd",
        "use spec.capabilities, checked against the policy's allowlist",
    ),
    ("user", "the user is the image's"),
];

/// Refuses a document that asks for something never allowed, naming the field.
pub fn screen(document: &Value) -> Result<(), Invalid> {
    fn walk(v: &Value, path: &str) -> Result<(), Invalid> {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let here = format!("{path}.{k}");
                    // Variable names are the agent's business; only their values are looked at.
                    let is_env_name = path == "spec.env";
                    if let Some((_, why)) = NEVER
                        .iter()
                        .find(|(f, _)| !is_env_name && f.eq_ignore_ascii_case(k))
                    {
                        return Err(Invalid::new(here, format!("{why} (policy rule never)")));
                    }
                    walk(child, &here)?;
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"))?;
                }
            }
            Value::String(s) if s.contains("docker.sock") => {
                return Err(Invalid::new(
                    path,
                    "nothing may reach the Docker socket (policy rule never)",
                ));
            }
            _ => {}
        }
        Ok(())
    }
    match document.get("spec") {
        Some(spec) => walk(spec, "spec"),
        None => Ok(()),
    }
}

impl Policy {
    /// Reads a policy file; every limit in it must parse.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let policy: Policy = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        policy.check().map_err(err)?;
        Ok(policy)
    }

    fn check(&self) -> Result<(), String> {
        for (name, l) in [("defaults", &self.defaults), ("max", &self.max)] {
            if let Some(m) = &l.memory {
                parse_memory(m).map_err(|e| format!("{name}.memory: {e}"))?;
            }
            if let Some(c) = &l.cpus {
                parse_cpus(c).map_err(|e| format!("{name}.cpus: {e}"))?;
            }
        }
        if let Some(m) = &self.quota.memory {
            parse_memory(m).map_err(|e| format!("quota.memory: {e}"))?;
        }
        if let Some(c) = &self.quota.cpus {
            parse_cpus(c).map_err(|e| format!("quota.cpus: {e}"))?;
        }
        for c in &self.capabilities.allow {
            normalize_cap(c)
                .ok_or_else(|| format!("capabilities.allow: unknown capability {c:?}"))?;
        }
        Ok(())
    }

    /// Checks an agent (already validated) against the policy and fills in the default
    /// limits. `others` are the owner's other agents, for the quota.
    pub fn admit(&self, agent: &mut Agent, others: &[&Agent]) -> Result<(), Refusal> {
        let spec = &mut agent.spec;
        if let Some(images) = &self.images {
            let image = normalize_image(&spec.image);
            if !images
                .allow
                .iter()
                .any(|p| glob(&normalize_image(p), &image) || glob(p, &spec.image))
            {
                return Err(Refusal::invalid(
                    "images.allow",
                    "spec.image",
                    format!(
                        "{:?} matches none of the allowed images {:?}",
                        spec.image, images.allow
                    ),
                ));
            }
        }

        let r = &mut spec.resources;
        if r.memory.is_none() {
            r.memory = self.defaults.memory.clone();
        }
        if r.cpus.is_none() {
            r.cpus = self.defaults.cpus.clone();
        }
        if r.pids.is_none() {
            r.pids = self.defaults.pids;
        }
        if let (Some(m), Some(max)) = (&r.memory, &self.max.memory) {
            if parse_memory(m).unwrap_or(i64::MAX) > parse_memory(max).unwrap_or(i64::MAX) {
                return Err(Refusal::invalid(
                    "max.memory",
                    "spec.resources.memory",
                    format!("{m} is above the maximum of {max}"),
                ));
            }
        }
        if let (Some(c), Some(max)) = (&r.cpus, &self.max.cpus) {
            if parse_cpus(c).unwrap_or(i64::MAX) > parse_cpus(max).unwrap_or(i64::MAX) {
                return Err(Refusal::invalid(
                    "max.cpus",
                    "spec.resources.cpus",
                    format!("{c} is above the maximum of {max}"),
                ));
            }
        }
        if let (Some(p), Some(max)) = (r.pids, self.max.pids) {
            if p > max {
                return Err(Refusal::invalid(
                    "max.pids",
                    "spec.resources.pids",
                    format!("{p} is above the maximum of {max}"),
                ));
            }
        }

        if let Some(caps) = &mut spec.capabilities {
            for (i, c) in caps.iter_mut().enumerate() {
                let field = format!("spec.capabilities[{i}]");
                let Some(name) = normalize_cap(c) else {
                    return Err(Refusal::invalid(
                        "capabilities",
                        &field,
                        format!("{c:?} is not a Linux capability"),
                    ));
                };
                if !self
                    .capabilities
                    .allow
                    .iter()
                    .any(|a| normalize_cap(a) == Some(name))
                {
                    return Err(Refusal::invalid(
                        "capabilities.allow",
                        &field,
                        format!(
                            "{name} may not be added; allowed: {:?}",
                            self.capabilities.allow
                        ),
                    ));
                }
                *c = name.to_string();
            }
        }

        let env = &spec.env.0;
        if env.len() > self.env.max_count {
            return Err(Refusal::invalid(
                "env.maxCount",
                "spec.env",
                format!(
                    "{} variables; at most {} are allowed",
                    env.len(),
                    self.env.max_count
                ),
            ));
        }
        let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > self.env.max_bytes {
            return Err(Refusal::invalid(
                "env.maxBytes",
                "spec.env",
                format!("{bytes} bytes; at most {} are allowed", self.env.max_bytes),
            ));
        }

        self.check_quota(agent, others)
    }

    fn check_quota(&self, agent: &Agent, others: &[&Agent]) -> Result<(), Refusal> {
        let owner = agent.metadata.owner.as_deref().unwrap_or_default();
        let q = &self.quota;
        if let Some(max) = q.agents {
            if others.len() + 1 > max {
                return Err(Refusal::Quota {
                    rule: "quota.agents".into(),
                    message: format!("owner {owner:?} has {} agents; the quota is {max} (policy rule quota.agents)", others.len()),
                });
            }
        }
        let total = |f: &dyn Fn(&Agent) -> Option<i64>| -> i64 {
            others.iter().map(|a| f(a).unwrap_or(0)).sum::<i64>() + f(agent).unwrap_or(0)
        };
        if let Some(max) = &q.memory {
            let used = total(&|a| {
                a.spec
                    .resources
                    .memory
                    .as_deref()
                    .and_then(|m| parse_memory(m).ok())
            });
            if used > parse_memory(max).unwrap_or(i64::MAX) {
                return Err(Refusal::Quota {
                    rule: "quota.memory".into(),
                    message: format!("owner {owner:?} would use {} MiB of memory; the quota is {max} (policy rule quota.memory)", used >> 20),
                });
            }
        }
        if let Some(max) = &q.cpus {
            let used = total(&|a| {
                a.spec
                    .resources
                    .cpus
                    .as_deref()
                    .and_then(|c| parse_cpus(c).ok())
            });
            if used > parse_cpus(max).unwrap_or(i64::MAX) {
                return Err(Refusal::Quota {
                    rule: "quota.cpus".into(),
                    message: format!("owner {owner:?} would use {:.2} CPUs; the quota is {max} (policy rule quota.cpus)", used as f64 / 1e9),
                });
            }
        }
        Ok(())
    }
}

/// `cap_net_bind_service` and `NET_BIND_SERVICE` alike, if Docker knows it.
fn normalize_cap(c: &str) -> Option<&'static str> {
    let upper = c.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    KNOWN_CAPS.iter().copied().find(|k| *k == bare)
}

/// An image reference with its implied `:latest` tag.
fn normalize_image(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') || image.ends_with('*') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The policy's limits, for the start-up log.
pub fn describe(p: &Policy) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (
            "images",
            p.images
                .as_ref()
                .map_or("any".into(), |i| format!("{:?}", i.allow)),
        ),
        ("defaults", format!("{:?}", p.defaults)),
        ("max", format!("{:?}", p.max)),
        ("quota", format!("{:?}", p.quota)),
        ("capabilities", format!("{:?}", p.capabilities.allow)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(spec: Value) -> Agent {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hive/v1", "kind": "Agent",
            "metadata": {"name": "a", "owner": "sol"}, "spec": spec
        }))
        .unwrap()
    }

    fn policy(yaml: &str) -> Policy {
        let p: Policy = serde_yaml::from_str(yaml).unwrap();
        p.check().unwrap();
        p
    }

    fn rule(r: Result<(), Refusal>) -> String {
        match r.unwrap_err() {
            Refusal::Invalid { rule, .. } | Refusal::Quota { rule, .. } => rule,
        }
    }

    #[test]
    fn globs_match_like_shells() {
        assert!(glob("nanobot:*", "nanobot:latest"));
        assert!(glob(
            "registry.example/agents/*",
            "registry.example/agents/x:1"
        ));
        assert!(!glob("nanobot:*", "evil/nanobot:latest"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "aXbYc") && !glob("a*b*c", "aXcYb"));
    }

    #[test]
    fn images_outside_the_allowlist_are_refused() {
        let p = policy("images: {allow: [\"nanobot:*\"]}");
        assert!(p
            .admit(&mut agent(serde_json::json!({"image": "nanobot:1"})), &[])
            .is_ok());
        assert!(
            p.admit(&mut agent(serde_json::json!({"image": "nanobot"})), &[])
                .is_ok(),
            "implied :latest"
        );
        assert_eq!(
            rule(p.admit(&mut agent(serde_json::json!({"image": "alpine:3"})), &[])),
            "images.allow"
        );
    }

    #[test]
    fn defaults_fill_in_and_maxima_hold() {
        let p =
            policy("defaults: {memory: 256Mi, cpus: 0.5, pids: 100}\nmax: {memory: 1Gi, cpus: 1}");
        let mut a = agent(serde_json::json!({"image": "x"}));
        p.admit(&mut a, &[]).unwrap();
        assert_eq!(a.spec.resources.memory.as_deref(), Some("256Mi"));
        assert_eq!(a.spec.resources.cpus.as_deref(), Some("0.5"));
        assert_eq!(a.spec.resources.pids, Some(100));
        let mut big = agent(serde_json::json!({"image": "x", "resources": {"memory": "2Gi"}}));
        assert_eq!(rule(p.admit(&mut big, &[])), "max.memory");
        let mut fast = agent(serde_json::json!({"image": "x", "resources": {"cpus": 2}}));
        assert_eq!(rule(p.admit(&mut fast, &[])), "max.cpus");
    }

    #[test]
    fn capabilities_come_only_from_the_allowlist() {
        let p = policy("capabilities: {allow: [NET_BIND_SERVICE]}");
        let mut ok =
            agent(serde_json::json!({"image": "x", "capabilities": ["cap_net_bind_service"]}));
        p.admit(&mut ok, &[]).unwrap();
        assert_eq!(
            ok.spec.capabilities,
            Some(vec!["NET_BIND_SERVICE".to_string()])
        );
        let mut bad = agent(serde_json::json!({"image": "x", "capabilities": ["SYS_ADMIN"]}));
        assert_eq!(rule(p.admit(&mut bad, &[])), "capabilities.allow");
        assert_eq!(
            rule(Policy::default().admit(
                &mut agent(serde_json::json!({"image": "x", "capabilities": ["NET_RAW"]})),
                &[]
            )),
            "capabilities.allow"
        );
    }

    #[test]
    fn quotas_count_the_owners_other_agents() {
        let p = policy("quota: {agents: 2, memory: 1Gi}");
        let one = agent(serde_json::json!({"image": "x", "resources": {"memory": "512Mi"}}));
        let mut two = one.clone();
        p.admit(&mut two, &[&one]).unwrap();
        let mut three = one.clone();
        assert_eq!(rule(p.admit(&mut three, &[&one, &two])), "quota.agents");
        let mut fat = agent(serde_json::json!({"image": "x", "resources": {"memory": "768Mi"}}));
        assert_eq!(rule(p.admit(&mut fat, &[&one])), "quota.memory");
    }

    #[test]
    fn env_is_bounded() {
        let p = policy("env: {maxCount: 2, maxBytes: 10}");
        let mut many =
            agent(serde_json::json!({"image": "x", "env": {"A": "1", "B": "2", "C": "3"}}));
        assert_eq!(rule(p.admit(&mut many, &[])), "env.maxCount");
        let mut big = agent(serde_json::json!({"image": "x", "env": {"A": "0123456789"}}));
        assert_eq!(rule(p.admit(&mut big, &[])), "env.maxBytes");
    }

    #[test]
    fn forbidden_requests_are_named() {
        for (doc, field) in [
            (
                serde_json::json!({"spec": {"privileged": true}}),
                "spec.privileged",
            ),
            (
                serde_json::json!({"spec": {"hostNetwork": true}}),
                "spec.hostNetwork",
            ),
            (
                serde_json::json!({"spec": {"volumes": [{"hostPath": "/"}]}}),
                "spec.volumes[0].hostPath",
            ),
            (
                serde_json::json!({"spec": {"env": {"X": "/var/run/docker.sock"}}}),
                "spec.env.X",
            ),
        ] {
            assert_eq!(screen(&doc).unwrap_err().field, field);
        }
        // Variable names that look like forbidden fields are fine.
        assert!(
            screen(&serde_json::json!({"spec": {"env": {"USER": "me", "DEVICES": "0"}}})).is_ok()
        );
        let mount =
            serde_json::json!({"spec": {"command": ["x", "-v", "/var/run/docker.sock:/s"]}});
        assert_eq!(screen(&mount).unwrap_err().field, "spec.command[2]");
        assert!(screen(&serde_json::json!({"spec": {"image": "x"}})).is_ok());
    }

    #[test]
    fn a_bad_policy_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, "max: {memory: lots}").unwrap();
        assert!(Policy::load(&path)
            .unwrap_err()
            .to_string()
            .contains("max.memory"));
        std::fs::write(&path, "capabilities: {allow: [FLY]}").unwrap();
        assert!(Policy::load(&path).is_err());
    }
}
