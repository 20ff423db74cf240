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

use crate::agent::{parse_cpus, parse_memory, Agent, Invalid};
use crate::image::{Pattern, Reference};

mod amount;
mod lifecycle;

pub use crate::agent::screen;
pub use amount::{Amount, Bytes, Cpus, Memory};
pub use lifecycle::{LifecycleLimits, LifecyclePolicy, OwnerLifecycle};

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
    /// Whether commands may be run in agents (`exec`), for every owner.
    pub exec: Exec,
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
    /// Whether commands may be run in the owner's agents, instead of `exec`.
    pub exec: Option<Exec>,
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

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<Amount<Memory>>,
    pub cpus: Option<Amount<Cpus>>,
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
    pub memory: Option<Amount<Memory>>,
    pub cpus: Option<Amount<Cpus>>,
    /// Secrets the owner may hold (default [`SECRETS_PER_OWNER`]).
    pub secrets: Option<usize>,
    /// Bytes of secrets (keys and values) the owner may hold (default
    /// [`SECRET_BYTES_PER_OWNER`]), as a quantity (`16Mi`).
    pub secret_bytes: Option<Amount<Bytes>>,
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
            .and_then(|q| q.secret_bytes.as_ref())
            .or(self.quota.secret_bytes.as_ref())
            .map_or(SECRET_BYTES_PER_OWNER, Amount::value);
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

/// `exec:` (and `owners.<name>.exec:`) in the policy: whether operators may run commands
/// in their agents (`POST /v1/agents/{name}/exec`). Admins always may; viewers never.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exec {
    /// Allowed unless set false.
    pub allow: bool,
}

impl Default for Exec {
    fn default() -> Self {
        Exec { allow: true }
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
                memory: Some(Amount::parse("512Mi").expect("a built-in amount")),
                cpus: Some(Amount::parse("1").expect("a built-in amount")),
                pids: Some(256),
            },
            max: Limits {
                memory: Some(Amount::parse("16Gi").expect("a built-in amount")),
                cpus: Some(Amount::parse("16").expect("a built-in amount")),
                pids: Some(4096),
            },
            quota: Quota::default(),
            exec: Exec::default(),
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
            if dv.value() > mv.value() {
                d.memory = Some(mv.clone());
            }
        }
        if let (Some(dv), Some(mv)) = (&d.cpus, &m.cpus) {
            if dv.value() > mv.value() {
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
        }
        Ok(policy)
    }

    fn check(&self) -> Result<(), String> {
        for (name, l) in [("defaults", &self.defaults), ("max", &self.max)] {
            if let Some(p) = l.pids {
                if !(1..=1 << 22).contains(&p) {
                    return Err(format!("{name}.pids: must be between 1 and 4194304"));
                }
            }
        }
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
            r.memory = self.defaults.memory.as_ref().map(|a| a.text().to_string());
        }
        if r.cpus.is_none() {
            r.cpus = self.defaults.cpus.as_ref().map(|a| a.text().to_string());
        }
        if r.pids.is_none() {
            r.pids = self.defaults.pids;
        }
        if let (Some(m), Some(max)) = (&r.memory, &self.max.memory) {
            let m = parse_memory(m)
                .map_err(|e| Refusal::invalid("max.memory", "spec.resources.memory", e))?;
            if m > max.value() {
                return Err(Refusal::invalid(
                    "max.memory",
                    "spec.resources.memory",
                    format!("is above the maximum of {max}"),
                ));
            }
        }
        if let (Some(c), Some(max)) = (&r.cpus, &self.max.cpus) {
            let c = parse_cpus(c)
                .map_err(|e| Refusal::invalid("max.cpus", "spec.resources.cpus", e))?;
            if c > max.value() {
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

    /// Whether an operator may run commands in `owner`'s agents; the refusal names the
    /// rule that says no.
    pub fn may_exec(&self, owner: &str) -> Result<(), String> {
        match self.owners.get(owner).and_then(|o| o.exec.as_ref()) {
            Some(rule) if !rule.allow => Err(format!("owners.{owner}.exec.allow")),
            Some(_) => Ok(()),
            None if !self.exec.allow => Err("exec.allow".into()),
            None => Ok(()),
        }
    }

    /// Whether the manifests directory may name `owner` for its agents.
    pub fn gitops_may_name(&self, owner: &str) -> bool {
        owner == self.gitops.owner || self.gitops.allow_owners.iter().any(|o| o == owner)
    }

    /// An agent's memory, CPU and PID limits as they apply: its own, else the defaults.
    fn effective(&self, a: &Agent) -> (i64, i64) {
        let r = &a.spec.resources;
        let memory = match &r.memory {
            Some(m) => parse_memory(m).unwrap_or(0),
            None => self.defaults.memory.as_ref().map_or(0, Amount::value),
        };
        let cpus = match &r.cpus {
            Some(c) => parse_cpus(c).unwrap_or(0),
            None => self.defaults.cpus.as_ref().map_or(0, Amount::value),
        };
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
            if memory > max.value() {
                return Err(Refusal::Quota {
                    rule: format!("{at}.memory"),
                    message: format!("owner {owner:?} would use {} MiB of memory; the quota is {max} (policy rule {at}.memory)", memory >> 20),
                });
            }
        }
        if let Some(max) = &q.cpus {
            if cpus > max.value() {
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
mod tests;
