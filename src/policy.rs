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

use crate::agent::{parse_cpus, parse_memory, Agent, Invalid, SpecDuration};
use crate::image::{Pattern, Reference};

/// The policy file (`--policy`). What it leaves out, down to a single limit, keeps the
/// built-in value of [`Policy::default`]: a file that sets `defaults: {pids: 64}` still
/// gives every container the built-in memory and CPU limits and ceilings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Which images may run, and which private registries they may come from.
    pub images: Images,
    /// Limits applied when a spec sets none.
    pub defaults: Limits,
    /// Limits no agent may exceed.
    pub max: Limits,
    /// Totals per owner, counted on effective values (the defaults included).
    pub quota: Quota,
    /// Capabilities an agent may add back after all are dropped.
    pub capabilities: Capabilities,
    /// Bounds on the environment, `envFrom` secrets included.
    pub env: EnvLimits,
    /// Defaults and maxima of `spec.lifecycle`, for everyone and per owner.
    pub lifecycle: LifecyclePolicy,
    /// Whose agents the manifests directory declares.
    pub gitops: GitOps,
    /// Rules for single owners (an agent-run owner such as Sol's), which replace the
    /// general ones for that owner's agents.
    pub owners: BTreeMap<String, OwnerPolicy>,
    /// `images.allow`, parsed (None: every image).
    #[serde(skip)]
    patterns: Option<Vec<Pattern>>,
}

/// `owners.<name>:` in the policy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnerPolicy {
    /// Which images the owner's agents may run, instead of `images.allow`.
    pub images: OwnerImages,
    /// The owner's quota, instead of `quota`.
    pub quota: Option<Quota>,
    /// `images.allow`, parsed.
    #[serde(skip)]
    patterns: Option<Vec<Pattern>>,
}

/// `owners.<name>.images:` in the policy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnerImages {
    /// Image patterns the owner's agents may run (absent: `images.allow` applies).
    pub allow: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Images {
    /// Image patterns that may run (see [`crate::image`] for their syntax); absent: any.
    pub allow: Option<Vec<String>>,
    /// Registries on loopback, link-local or private addresses that images may still come
    /// from (`host:port` as in the reference). Any other such registry is refused, so that
    /// a pull cannot make the engine reach into the host or its network.
    pub private_registries: Vec<String>,
}

/// Reads one field of [`LifecycleLimits`].
type Field = fn(&LifecycleLimits) -> &Option<SpecDuration>;

/// `lifecycle:` in the policy: what `spec.ttl` and `spec.lifecycle` get when they say
/// nothing, the most they may say, and both again for single owners (their fields win
/// over the general ones).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecyclePolicy {
    pub defaults: LifecycleLimits,
    pub max: LifecycleLimits,
    pub owners: BTreeMap<String, OwnerLifecycle>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnerLifecycle {
    pub defaults: LifecycleLimits,
    pub max: LifecycleLimits,
}

/// Durations (humantime, read when the policy loads) for `spec.ttl` and
/// `spec.lifecycle`'s fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct LifecycleLimits {
    pub ttl: Option<SpecDuration>,
    pub idle_timeout: Option<SpecDuration>,
    pub ttl_after_finished: Option<SpecDuration>,
}

impl LifecycleLimits {
    fn fields(&self) -> [(&'static str, &Option<SpecDuration>); 3] {
        [
            ("ttl", &self.ttl),
            ("idleTimeout", &self.idle_timeout),
            ("ttlAfterFinished", &self.ttl_after_finished),
        ]
    }
}

impl LifecyclePolicy {
    fn check(&self) -> Result<(), String> {
        let mut all = vec![("lifecycle".to_string(), &self.defaults, &self.max)];
        for (owner, o) in &self.owners {
            crate::agent::validate_name(owner).map_err(|e| format!("lifecycle.owners: {e}"))?;
            all.push((format!("lifecycle.owners.{owner}"), &o.defaults, &o.max));
        }
        for (at, defaults, max) in all {
            for (kind, limits) in [("defaults", defaults), ("max", max)] {
                for (field, value) in limits.fields() {
                    if value.as_ref().is_some_and(|d| !d.is_bounded()) {
                        return Err(format!(
                            "{at}.{kind}.{field}: not a duration such as 15m (from 1s to 365d)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills the owner's defaults into `spec.ttl` and `spec.lifecycle` and refuses what
    /// is above its maxima.
    fn admit(&self, owner: &str, spec: &mut crate::agent::AgentSpec) -> Result<(), Refusal> {
        let mine = self.owners.get(owner);
        let pick = |f: Field, defaults: bool| {
            let (general, own) = if defaults {
                (&self.defaults, mine.map(|o| &o.defaults))
            } else {
                (&self.max, mine.map(|o| &o.max))
            };
            own.and_then(|o| f(o).clone())
                .or_else(|| f(general).clone())
        };
        let fields: [(&str, &str, Field, &mut Option<SpecDuration>); 3] = [
            ("ttl", "spec.ttl", |l| &l.ttl, &mut spec.ttl),
            (
                "idleTimeout",
                "spec.lifecycle.idleTimeout",
                |l| &l.idle_timeout,
                &mut spec.lifecycle.idle_timeout,
            ),
            (
                "ttlAfterFinished",
                "spec.lifecycle.ttlAfterFinished",
                |l| &l.ttl_after_finished,
                &mut spec.lifecycle.ttl_after_finished,
            ),
        ];
        for (field, at, get, value) in fields {
            if value.is_none() {
                // A default above the maximum that applies is lowered to it.
                *value = match (pick(get, true), pick(get, false)) {
                    (Some(d), Some(m)) if d.get() > m.get() => Some(m),
                    (d, _) => d,
                };
            }
            if let (Some(v), Some(max)) = (value.as_ref(), pick(get, false)) {
                if v.get() > max.get() {
                    let rule = if mine.is_some_and(|o| get(&o.max).is_some()) {
                        format!("lifecycle.owners.{owner}.max.{field}")
                    } else {
                        format!("lifecycle.max.{field}")
                    };
                    return Err(Refusal::invalid(
                        &rule,
                        at,
                        format!("is above the maximum of {max}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<String>,
    #[serde(default, deserialize_with = "crate::agent::string_or_number")]
    pub cpus: Option<String>,
    pub pids: Option<i64>,
}

impl Limits {
    /// These limits, with what they leave out taken from `base`.
    fn or(self, base: &Limits) -> Limits {
        Limits {
            memory: self.memory.or_else(|| base.memory.clone()),
            cpus: self.cpus.or_else(|| base.cpus.clone()),
            pids: self.pids.or(base.pids),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Quota {
    pub agents: Option<usize>,
    pub memory: Option<String>,
    #[serde(default, deserialize_with = "crate::agent::string_or_number")]
    pub cpus: Option<String>,
    /// Secrets the owner may hold (default [`SECRETS_PER_OWNER`]).
    pub secrets: Option<usize>,
    /// Bytes of secrets (keys and values) the owner may hold (default
    /// [`SECRET_BYTES_PER_OWNER`]), as a quantity (`16Mi`).
    pub secret_bytes: Option<String>,
}

/// Secrets one owner may hold when the policy says nothing.
pub const SECRETS_PER_OWNER: usize = 256;
/// Bytes of secrets one owner may hold when the policy says nothing.
pub const SECRET_BYTES_PER_OWNER: i64 = 16 << 20;

/// What an owner may keep in secrets, and the rule that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretQuota {
    pub count: usize,
    pub bytes: i64,
    /// Where the limits are in the policy (`quota` or `owners.<name>.quota`).
    pub rule: String,
}

impl Quota {
    /// Every limit parses; `at` names where the quota is in the file.
    fn check(&self, at: &str) -> Result<(), String> {
        if let Some(m) = &self.memory {
            parse_memory(m).map_err(|e| format!("{at}.memory: {e}"))?;
        }
        if let Some(c) = &self.cpus {
            parse_cpus(c).map_err(|e| format!("{at}.cpus: {e}"))?;
        }
        if let Some(b) = &self.secret_bytes {
            crate::agent::parse_bytes(b).map_err(|e| format!("{at}.secretBytes: {e}"))?;
        }
        Ok(())
    }
}

impl Quota {
    /// Whether any quota applies.
    pub fn is_set(&self) -> bool {
        self.agents.is_some() || self.memory.is_some() || self.cpus.is_some()
    }
}

impl Policy {
    /// What `owner` may keep in secrets: its own quota's limits, else the general one's,
    /// else the built-in ones.
    pub fn secret_quota(&self, owner: &str) -> SecretQuota {
        let own = self.owners.get(owner).and_then(|o| o.quota.as_ref());
        let rule = if own.is_some_and(|q| q.secrets.is_some() || q.secret_bytes.is_some()) {
            format!("owners.{owner}.quota")
        } else {
            "quota".to_string()
        };
        let count = own
            .and_then(|q| q.secrets)
            .or(self.quota.secrets)
            .unwrap_or(SECRETS_PER_OWNER);
        let bytes = own
            .and_then(|q| q.secret_bytes.as_deref())
            .or(self.quota.secret_bytes.as_deref())
            .and_then(|b| crate::agent::parse_bytes(b).ok())
            .unwrap_or(SECRET_BYTES_PER_OWNER);
        SecretQuota { count, bytes, rule }
    }

    /// Whether any quota applies to `owner`'s agents (the general one, or its own).
    pub fn has_quota(&self, owner: &str) -> bool {
        match self.owners.get(owner).and_then(|o| o.quota.as_ref()) {
            Some(q) => q.is_set(),
            None => self.quota.is_set(),
        }
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
    /// Variables per agent, `envFrom` secrets' keys included.
    pub max_count: usize,
    /// Bytes of names and values together, per agent, `envFrom` secrets included.
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

/// Whose agents the manifests directory declares.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GitOps {
    /// The owner of agents from manifests that name none.
    pub owner: String,
    /// Owners a manifest may name in `metadata.owner` (none by default: anyone who can
    /// write the directory could otherwise make agents that read another owner's secrets).
    pub allow_owners: Vec<String>,
}

impl Default for GitOps {
    fn default() -> Self {
        GitOps {
            owner: crate::access::ADMIN_OWNER.into(),
            allow_owners: Vec::new(),
        }
    }
}

impl Default for Policy {
    /// The policy in force without a file: every image (from public registries), and every
    /// container limited.
    fn default() -> Self {
        Policy {
            images: Images::default(),
            defaults: Limits {
                memory: Some("512Mi".into()),
                cpus: Some("1".into()),
                pids: Some(256),
            },
            max: Limits {
                memory: Some("16Gi".into()),
                cpus: Some("16".into()),
                pids: Some(4096),
            },
            quota: Quota::default(),
            capabilities: Capabilities::default(),
            env: EnvLimits::default(),
            lifecycle: LifecyclePolicy::default(),
            gitops: GitOps::default(),
            owners: BTreeMap::new(),
            patterns: None,
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The agent is not allowed as written (422).
    #[error("{invalid}")]
    Invalid { rule: String, invalid: Invalid },
    /// The owner's quota would be exceeded (403).
    #[error("{message}")]
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
    /// Reads a policy file (a regular file of at most 1 MiB); every limit and pattern in
    /// it must parse. Blocks.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError {
            path: path.display().to_string(),
            message,
        };
        let bytes = crate::files::read_regular(path, 1 << 20).map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| err("is not UTF-8 text".into()))?;
        Policy::from_yaml(&text).map_err(err)
    }

    /// A policy from its YAML text, with the built-in limits filled in where it is silent.
    pub fn from_yaml(text: &str) -> Result<Policy, String> {
        // The error names the field at fault.
        let mut policy: Policy = serde_path_to_error::deserialize(
            serde_yaml::Deserializer::from_str(text),
        )
        .map_err(|e| match e.path().to_string().as_str() {
            "." | "" => e.into_inner().to_string(),
            path => format!("{path}: {}", e.into_inner()),
        })?;
        let builtin = Policy::default();
        policy.defaults = std::mem::take(&mut policy.defaults).or(&builtin.defaults);
        policy.max = std::mem::take(&mut policy.max).or(&builtin.max);
        policy.check()?;
        // A default above the policy's own maximum would refuse every spec that sets none.
        let d = &mut policy.defaults;
        let m = &policy.max;
        if let (Some(dv), Some(mv)) = (&d.memory, &m.memory) {
            if parse_memory(dv)? > parse_memory(mv)? {
                d.memory = Some(mv.clone());
            }
        }
        if let (Some(dv), Some(mv)) = (&d.cpus, &m.cpus) {
            if parse_cpus(dv)? > parse_cpus(mv)? {
                d.cpus = Some(mv.clone());
            }
        }
        if let (Some(dv), Some(mv)) = (d.pids, m.pids) {
            d.pids = Some(dv.min(mv));
        }
        let parse = |allow: &Option<Vec<String>>, at: &str| -> Result<_, String> {
            allow
                .as_ref()
                .map(|allow| {
                    allow
                        .iter()
                        .enumerate()
                        .map(|(i, p)| Pattern::parse(p).map_err(|e| format!("{at}[{i}] {e}")))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
        };
        policy.patterns = parse(&policy.images.allow, "images.allow")?;
        for (owner, o) in &mut policy.owners {
            crate::agent::validate_name(owner).map_err(|e| format!("owners: {e}"))?;
            o.patterns = parse(&o.images.allow, &format!("owners.{owner}.images.allow"))?;
            if let Some(q) = &o.quota {
                q.check(&format!("owners.{owner}.quota"))?;
            }
        }
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
            if let Some(p) = l.pids {
                if !(1..=1 << 22).contains(&p) {
                    return Err(format!("{name}.pids: must be between 1 and 4194304"));
                }
            }
        }
        self.quota.check("quota")?;
        for c in &self.capabilities.allow {
            normalize_cap(c)
                .ok_or_else(|| format!("capabilities.allow: unknown capability {c:?}"))?;
        }
        self.lifecycle.check()?;
        crate::agent::validate_name(&self.gitops.owner)
            .map_err(|e| format!("gitops.owner: {e}"))?;
        for o in &self.gitops.allow_owners {
            crate::agent::validate_name(o).map_err(|e| format!("gitops.allowOwners: {e}"))?;
        }
        Ok(())
    }

    /// Checks an agent (already validated) against the policy and fills in the default
    /// limits. `others` are the owner's other agents, for the quota; `env_from` the
    /// variables its `envFrom` secrets add (those `spec.env` does not override).
    pub fn admit(
        &self,
        agent: &mut Agent,
        others: &[&Agent],
        env_from: &BTreeMap<String, String>,
    ) -> Result<(), Refusal> {
        let owner = agent.metadata.owner.clone().unwrap_or_default();
        let spec = &mut agent.spec;
        self.admit_image(&owner, &spec.image)?;
        self.lifecycle.admit(&owner, spec)?;

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
                    format!("is above the maximum of {max}"),
                ));
            }
        }
        if let (Some(c), Some(max)) = (&r.cpus, &self.max.cpus) {
            if parse_cpus(c).unwrap_or(i64::MAX) > parse_cpus(max).unwrap_or(i64::MAX) {
                return Err(Refusal::invalid(
                    "max.cpus",
                    "spec.resources.cpus",
                    format!("is above the maximum of {max}"),
                ));
            }
        }
        if let (Some(p), Some(max)) = (r.pids, self.max.pids) {
            if p > max {
                return Err(Refusal::invalid(
                    "max.pids",
                    "spec.resources.pids",
                    format!("is above the maximum of {max}"),
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
                        "is not a Linux capability".into(),
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

        let mut env = env_from.clone();
        env.extend(spec.env.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.admit_env(&env, !env_from.is_empty())?;
        self.check_quota(agent, others)
    }

    /// Whether an image may run for `owner`'s agent: its registry is not a private one the
    /// policy does not name, and it matches a pattern the owner's images (or else the
    /// general ones) allow.
    pub fn admit_image(&self, owner: &str, image: &str) -> Result<(), Refusal> {
        let reference = Reference::parse(image).map_err(|e| Refusal::Invalid {
            rule: "images".into(),
            invalid: Invalid::new("spec.image", e),
        })?;
        if reference.is_private_registry()
            && !self
                .images
                .private_registries
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&reference.registry))
        {
            return Err(Refusal::invalid(
                "images.privateRegistries",
                "spec.image",
                "names a registry on a loopback, link-local or private address; images come \
                 from such a registry only if the policy lists it"
                    .into(),
            ));
        }
        let (rule, patterns, allow) = match self.owners.get(owner) {
            Some(o) if o.patterns.is_some() => (
                format!("owners.{owner}.images.allow"),
                &o.patterns,
                &o.images.allow,
            ),
            _ => ("images.allow".into(), &self.patterns, &self.images.allow),
        };
        if let (Some(patterns), Some(allow)) = (patterns, allow) {
            if !patterns.iter().any(|p| p.admits(&reference)) {
                return Err(Refusal::invalid(
                    &rule,
                    "spec.image",
                    format!("matches none of the allowed images {allow:?}"),
                ));
            }
        }
        Ok(())
    }

    /// [`Policy::admit_image`], then where the image's registry leads, looked up: refused
    /// (rule `images.privateRegistries`) if its host resolves to an address that is not
    /// public, or does not resolve, unless the policy lists the registry. Docker Hub, the
    /// engine's own default, is not looked up. Runs before admission and again before a
    /// pull.
    pub async fn screen_registry(
        &self,
        owner: &str,
        image: &str,
        resolver: &crate::resolve::Resolver,
    ) -> Result<(), Refusal> {
        let Ok(reference) = Reference::parse(image) else {
            return Ok(()); // admission says what is wrong with it
        };
        // What the reference alone refuses is refused first: nothing is looked up for an
        // image the policy would not run anyway.
        self.admit_image(owner, image)?;
        let listed = self
            .images
            .private_registries
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&reference.registry));
        if listed || reference.registry == crate::image::DEFAULT_REGISTRY {
            return Ok(());
        }
        match resolver.non_public(owner, reference.host()).await {
            None => Ok(()),
            Some(why) => Err(Refusal::invalid(
                "images.privateRegistries",
                "spec.image",
                format!(
                    "names a registry whose host is not admitted: {why}; images come from a \
                     registry on this host or a private network only if the policy lists it"
                ),
            )),
        }
    }

    /// Checks the whole environment an agent gets. `from_secrets` says part of it comes
    /// from `envFrom`, to name the right field.
    pub fn admit_env(
        &self,
        env: &BTreeMap<String, String>,
        from_secrets: bool,
    ) -> Result<(), Refusal> {
        let field = if from_secrets {
            "spec.envFrom"
        } else {
            "spec.env"
        };
        let with = if from_secrets {
            " (spec.env and its envFrom secrets together)"
        } else {
            ""
        };
        if env.len() > self.env.max_count {
            return Err(Refusal::invalid(
                "env.maxCount",
                field,
                format!(
                    "{} variables{with}; at most {} are allowed",
                    env.len(),
                    self.env.max_count
                ),
            ));
        }
        let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > self.env.max_bytes {
            return Err(Refusal::invalid(
                "env.maxBytes",
                field,
                format!(
                    "{bytes} bytes{with}; at most {} are allowed",
                    self.env.max_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Whether the manifests directory may name `owner` for its agents.
    pub fn gitops_may_name(&self, owner: &str) -> bool {
        owner == self.gitops.owner || self.gitops.allow_owners.iter().any(|o| o == owner)
    }

    /// An agent's memory, CPU and PID limits as they apply: its own, else the defaults.
    fn effective(&self, a: &Agent) -> (i64, i64) {
        let r = &a.spec.resources;
        let memory = r
            .memory
            .as_deref()
            .or(self.defaults.memory.as_deref())
            .and_then(|m| parse_memory(m).ok())
            .unwrap_or(0);
        let cpus = r
            .cpus
            .as_deref()
            .or(self.defaults.cpus.as_deref())
            .and_then(|c| parse_cpus(c).ok())
            .unwrap_or(0);
        (memory, cpus)
    }

    fn check_quota(&self, agent: &Agent, others: &[&Agent]) -> Result<(), Refusal> {
        let owner = agent.metadata.owner.as_deref().unwrap_or_default();
        let (q, at) = match self.owners.get(owner).and_then(|o| o.quota.as_ref()) {
            Some(q) => (q, format!("owners.{owner}.quota")),
            None => (&self.quota, "quota".to_string()),
        };
        if let Some(max) = q.agents {
            if others.len() + 1 > max {
                return Err(Refusal::Quota {
                    rule: format!("{at}.agents"),
                    message: format!("owner {owner:?} has {} agents; the quota is {max} (policy rule {at}.agents)", others.len()),
                });
            }
        }
        let (memory, cpus) = others
            .iter()
            .chain(std::iter::once(&agent))
            .map(|a| self.effective(a))
            .fold((0i64, 0i64), |(m, c), (am, ac)| (m + am, c + ac));
        if let Some(max) = &q.memory {
            if memory > parse_memory(max).unwrap_or(i64::MAX) {
                return Err(Refusal::Quota {
                    rule: format!("{at}.memory"),
                    message: format!("owner {owner:?} would use {} MiB of memory; the quota is {max} (policy rule {at}.memory)", memory >> 20),
                });
            }
        }
        if let Some(max) = &q.cpus {
            if cpus > parse_cpus(max).unwrap_or(i64::MAX) {
                return Err(Refusal::Quota {
                    rule: format!("{at}.cpus"),
                    message: format!("owner {owner:?} would use {:.2} CPUs; the quota is {max} (policy rule {at}.cpus)", cpus as f64 / 1e9),
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

/// The policy's limits, for the start-up log.
pub fn describe(p: &Policy) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (
            "images",
            p.images
                .allow
                .as_ref()
                .map_or("any".into(), |a| format!("{a:?}")),
        ),
        ("defaults", format!("{:?}", p.defaults)),
        ("max", format!("{:?}", p.max)),
        ("quota", format!("{:?}", p.quota)),
        ("capabilities", format!("{:?}", p.capabilities.allow)),
        (
            "owners",
            format!("{:?}", p.owners.keys().collect::<Vec<_>>()),
        ),
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
        Policy::from_yaml(yaml).unwrap()
    }

    fn admit(p: &Policy, a: &mut Agent, others: &[&Agent]) -> Result<(), Refusal> {
        p.admit(a, others, &BTreeMap::new())
    }

    fn rule(r: Result<(), Refusal>) -> String {
        match r.unwrap_err() {
            Refusal::Invalid { rule, .. } | Refusal::Quota { rule, .. } => rule,
        }
    }

    #[test]
    fn images_outside_the_allowlist_are_refused() {
        let p = policy("images: {allow: [\"nanobot:*\"]}");
        assert_eq!(
            rule(admit(
                &p,
                &mut agent(serde_json::json!({"image": "nanobot:5000/evil:1"})),
                &[]
            )),
            "images.allow",
            "a star does not cross into a registry"
        );
        assert!(admit(
            &p,
            &mut agent(serde_json::json!({"image": "nanobot:1"})),
            &[]
        )
        .is_ok());
        assert!(
            admit(&p, &mut agent(serde_json::json!({"image": "nanobot"})), &[]).is_ok(),
            "implied :latest"
        );
        assert_eq!(
            rule(admit(
                &p,
                &mut agent(serde_json::json!({"image": "alpine:3"})),
                &[]
            )),
            "images.allow"
        );
    }

    #[test]
    fn defaults_fill_in_and_maxima_hold() {
        let p =
            policy("defaults: {memory: 256Mi, cpus: 0.5, pids: 100}\nmax: {memory: 1Gi, cpus: 1}");
        let mut a = agent(serde_json::json!({"image": "x"}));
        admit(&p, &mut a, &[]).unwrap();
        assert_eq!(a.spec.resources.memory.as_deref(), Some("256Mi"));
        assert_eq!(a.spec.resources.cpus.as_deref(), Some("0.5"));
        assert_eq!(a.spec.resources.pids, Some(100));
        let mut big = agent(serde_json::json!({"image": "x", "resources": {"memory": "2Gi"}}));
        assert_eq!(rule(admit(&p, &mut big, &[])), "max.memory");
        let mut fast = agent(serde_json::json!({"image": "x", "resources": {"cpus": 2}}));
        assert_eq!(rule(admit(&p, &mut fast, &[])), "max.cpus");
    }

    #[test]
    fn the_compose_deployments_policy_loads_and_bounds_sol() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deployment/policy.yaml");
        let p = Policy::load(&path).unwrap();
        let mut a = agent(serde_json::json!({"image": "nanobot:latest"}));
        admit(&p, &mut a, &[]).unwrap();
        assert_eq!(
            a.spec
                .lifecycle
                .idle_timeout
                .as_ref()
                .map(SpecDuration::as_str),
            Some("30m")
        );
        let mut rogue = agent(serde_json::json!({"image": "alpine:3"}));
        assert_eq!(rule(admit(&p, &mut rogue, &[])), "owners.sol.images.allow");
        assert_eq!(p.gitops.owner, "gitops");
        assert!(p.has_quota("sol"));
    }

    #[test]
    fn an_owner_s_images_and_quota_replace_the_general_ones_for_its_agents() {
        let p = policy(
            "images: {allow: [\"*\"]}\nquota: {agents: 100}\nowners:\n  sol:\n    images: {allow: [\"nanobot:*\"]}\n    quota: {agents: 1}\n",
        );
        let mut a = agent(serde_json::json!({"image": "nanobot:1"}));
        admit(&p, &mut a, &[]).unwrap();
        let mut evil = agent(serde_json::json!({"image": "evil:1"}));
        let refused = admit(&p, &mut evil, &[]).unwrap_err();
        assert_eq!(rule(Err(refused.clone())), "owners.sol.images.allow");
        assert!(
            refused
                .to_string()
                .contains("policy rule owners.sol.images.allow"),
            "{refused}"
        );
        let other = agent(serde_json::json!({"image": "nanobot:1"}));
        let mut second = agent(serde_json::json!({"image": "nanobot:1"}));
        assert_eq!(
            rule(admit(&p, &mut second, &[&other])),
            "owners.sol.quota.agents"
        );
        // Another owner has the general rules.
        let mut bobs = agent(serde_json::json!({"image": "evil:1"}));
        bobs.metadata.owner = Some("bob".into());
        admit(&p, &mut bobs, &[&other]).unwrap();
        assert!(p.has_quota("bob") && p.has_quota("sol"));
        for bad in [
            "owners: {Sol: {}}",
            "owners: {sol: {images: {allow: [\"a b\"]}}}",
            "owners: {sol: {quota: {memory: lots}}}",
            "owners: {sol: {wrong: 1}}",
        ] {
            assert!(Policy::from_yaml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifecycle_defaults_and_maxima_are_per_owner_where_given() {
        let p = policy(
            "lifecycle:\n  defaults: {idleTimeout: 30m, ttlAfterFinished: 1h}\n  max: {idleTimeout: 8h}\n  owners:\n    sol: {defaults: {idleTimeout: 15m}, max: {idleTimeout: 1h}}\n",
        );
        let mut a = agent(serde_json::json!({"image": "x"}));
        admit(&p, &mut a, &[]).unwrap();
        assert_eq!(
            a.spec
                .lifecycle
                .idle_timeout
                .as_ref()
                .map(SpecDuration::as_str),
            Some("15m"),
            "sol's own"
        );
        assert_eq!(
            a.spec
                .lifecycle
                .ttl_after_finished
                .as_ref()
                .map(SpecDuration::as_str),
            Some("1h"),
            "the general one"
        );
        let mut long = agent(serde_json::json!({"image": "x", "lifecycle": {"idleTimeout": "2h"}}));
        assert_eq!(
            rule(admit(&p, &mut long, &[])),
            "lifecycle.owners.sol.max.idleTimeout"
        );
        let mut bob = agent(serde_json::json!({"image": "x", "lifecycle": {"idleTimeout": "2h"}}));
        bob.metadata.owner = Some("bob".into());
        admit(&p, &mut bob, &[]).unwrap();
        let mut bob = agent(serde_json::json!({"image": "x", "lifecycle": {"idleTimeout": "9h"}}));
        bob.metadata.owner = Some("bob".into());
        assert_eq!(rule(admit(&p, &mut bob, &[])), "lifecycle.max.idleTimeout");
        assert!(
            Policy::from_yaml("lifecycle: {defaults: {idleTimeout: soon}}")
                .unwrap_err()
                .contains("lifecycle.defaults.idleTimeout")
        );
    }

    #[test]
    fn capabilities_come_only_from_the_allowlist() {
        let p = policy("capabilities: {allow: [NET_BIND_SERVICE]}");
        let mut ok =
            agent(serde_json::json!({"image": "x", "capabilities": ["cap_net_bind_service"]}));
        admit(&p, &mut ok, &[]).unwrap();
        assert_eq!(
            ok.spec.capabilities,
            Some(vec!["NET_BIND_SERVICE".to_string()])
        );
        let mut bad = agent(serde_json::json!({"image": "x", "capabilities": ["SYS_ADMIN"]}));
        assert_eq!(rule(admit(&p, &mut bad, &[])), "capabilities.allow");
        assert_eq!(
            rule(admit(
                &Policy::default(),
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
        admit(&p, &mut two, &[&one]).unwrap();
        let mut three = one.clone();
        assert_eq!(rule(admit(&p, &mut three, &[&one, &two])), "quota.agents");
        let mut fat = agent(serde_json::json!({"image": "x", "resources": {"memory": "768Mi"}}));
        assert_eq!(rule(admit(&p, &mut fat, &[&one])), "quota.memory");
    }

    #[test]
    fn env_is_bounded() {
        let p = policy("env: {maxCount: 2, maxBytes: 10}");
        let mut many =
            agent(serde_json::json!({"image": "x", "env": {"A": "1", "B": "2", "C": "3"}}));
        assert_eq!(rule(admit(&p, &mut many, &[])), "env.maxCount");
        let mut big = agent(serde_json::json!({"image": "x", "env": {"A": "0123456789"}}));
        assert_eq!(rule(admit(&p, &mut big, &[])), "env.maxBytes");
    }

    #[test]
    fn a_partial_policy_keeps_the_builtin_limits_and_ceilings() {
        let p = policy("defaults: {pids: 64}\nmax: {memory: 256Mi}");
        let mut a = agent(serde_json::json!({"image": "x"}));
        admit(&p, &mut a, &[]).unwrap();
        let r = &a.spec.resources;
        // The built-in default memory (512Mi) is above this policy's maximum: capped.
        assert_eq!(r.memory.as_deref(), Some("256Mi"));
        assert_eq!(r.cpus.as_deref(), Some("1"));
        assert_eq!(r.pids, Some(64));
        let mut many = agent(serde_json::json!({"image": "x", "resources": {"pids": 4_000_000}}));
        assert_eq!(rule(admit(&p, &mut many, &[])), "max.pids");
        let mut fast = agent(serde_json::json!({"image": "x", "resources": {"cpus": 64}}));
        assert_eq!(rule(admit(&p, &mut fast, &[])), "max.cpus");
    }

    #[test]
    fn quotas_count_effective_values() {
        let p = policy("quota: {memory: 1Gi}\ndefaults: {memory: 512Mi}");
        // Stored without limits (an older record): counts as the default, not as nothing.
        let old = agent(serde_json::json!({"image": "x"}));
        let mut second = agent(serde_json::json!({"image": "x"}));
        admit(&p, &mut second, &[&old]).unwrap();
        let mut third = agent(serde_json::json!({"image": "x"}));
        assert_eq!(
            rule(admit(&p, &mut third, &[&old, &second])),
            "quota.memory"
        );
    }

    #[test]
    fn private_registries_are_refused_unless_listed() {
        let mut a = agent(serde_json::json!({"image": "127.0.0.1:5999/x"}));
        assert_eq!(
            rule(admit(&Policy::default(), &mut a, &[])),
            "images.privateRegistries"
        );
        let p = policy("images: {privateRegistries: [\"127.0.0.1:5999\"]}");
        admit(&p, &mut a, &[]).unwrap();
    }

    #[test]
    fn env_from_counts_against_the_env_limits() {
        let p = policy("env: {maxCount: 3}");
        let secrets: BTreeMap<String, String> =
            (0..3).map(|i| (format!("S{i}"), "v".to_string())).collect();
        let mut a = agent(serde_json::json!({"image": "x", "env": {"A": "1"}}));
        match p.admit(&mut a, &[], &secrets).unwrap_err() {
            Refusal::Invalid { rule, invalid } => {
                assert_eq!(
                    (rule.as_str(), invalid.field.as_str()),
                    ("env.maxCount", "spec.envFrom")
                )
            }
            other => panic!("{other:?}"),
        }
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
