//! Validation of what clients send: every field they control, each failure naming the
//! field and saying what is wrong, never echoing the value.

use super::quantity::{parse_cpus, parse_memory};
use super::{Agent, AgentSpec, Invalid, API_VERSION, KIND};

impl Agent {
    /// Checks everything a client controls. Server-owned fields are not looked at.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.api_version != API_VERSION {
            return Err(Invalid::new(
                "apiVersion",
                format!("must be {API_VERSION:?}"),
            ));
        }
        if self.kind != KIND {
            return Err(Invalid::new("kind", format!("must be {KIND:?}")));
        }
        validate_name(&self.metadata.name).map_err(|m| Invalid::new("metadata.name", m))?;
        if let Some(owner) = &self.metadata.owner {
            validate_name(owner).map_err(|m| Invalid::new("metadata.owner", m))?;
        }
        if let Some(rv) = &self.metadata.resource_version {
            let number = !rv.is_empty() && rv.len() <= 20 && rv.bytes().all(|b| b.is_ascii_digit());
            if !number {
                return Err(Invalid::new(
                    "metadata.resourceVersion",
                    "must be the resourceVersion read from Hive (a number), or left out",
                ));
            }
        }
        for (k, v) in &self.metadata.labels {
            if k.starts_with("hive.") || k.starts_with("hive/") {
                return Err(Invalid::new(
                    format!("metadata.labels.{}", shown_key(k)),
                    "labels under \"hive.\" are Hive's own and cannot be set",
                ));
            }
            let at = || format!("metadata.labels.{}", shown_key(k));
            validate_label_key(k).map_err(|m| Invalid::new(at(), m))?;
            validate_label_value(v).map_err(|m| Invalid::new(at(), m))?;
        }
        for k in self.metadata.annotations.keys() {
            validate_label_key(k)
                .map_err(|m| Invalid::new(format!("metadata.annotations.{}", shown_key(k)), m))?;
        }
        self.spec.validate()
    }
}

impl AgentSpec {
    fn validate(&self) -> Result<(), Invalid> {
        if self.image.trim().is_empty() {
            return Err(Invalid::new("spec.image", "is required"));
        }
        validate_image(&self.image).map_err(|m| Invalid::new("spec.image", m))?;
        for (field, list) in [("spec.command", &self.command), ("spec.args", &self.args)] {
            if let Some(list) = list {
                if field == "spec.command" && list.is_empty() {
                    return Err(Invalid::new(
                        field,
                        "must not be empty; leave it out to use the image's",
                    ));
                }
                if let Some(i) = list.iter().position(|s| s.contains('\0')) {
                    return Err(Invalid::new(
                        format!("{field}[{i}]"),
                        "must not contain a NUL byte",
                    ));
                }
            }
        }
        for (k, v) in &self.env.0 {
            let at = || format!("spec.env.{}", shown_key(k));
            validate_env_name(k).map_err(|m| Invalid::new(at(), m))?;
            if v.contains('\0') {
                return Err(Invalid::new(at(), "value must not contain a NUL byte"));
            }
        }
        if let Some(m) = &self.resources.memory {
            parse_memory(m).map_err(|e| Invalid::new("spec.resources.memory", e))?;
        }
        if let Some(c) = &self.resources.cpus {
            parse_cpus(c).map_err(|e| Invalid::new("spec.resources.cpus", e))?;
        }
        for (i, e) in self.env_from.iter().flatten().enumerate() {
            validate_name(&e.secret_ref)
                .map_err(|m| Invalid::new(format!("spec.envFrom[{i}].secretRef"), m))?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, v) in self.volumes.iter().flatten().enumerate() {
            let at = format!("spec.volumes[{i}]");
            validate_name(&v.name).map_err(|m| Invalid::new(format!("{at}.name"), m))?;
            if v.name.len() > 40 {
                return Err(Invalid::new(
                    format!("{at}.name"),
                    "is longer than 40 characters",
                ));
            }
            let p = &v.mount_path;
            if !p.starts_with('/') || p == "/" || p.split('/').any(|c| c == "..") || p.contains(':')
            {
                return Err(Invalid::new(
                    format!("{at}.mountPath"),
                    "must be an absolute path other than /, without '..' or ':'",
                ));
            }
            if !seen.insert(v.name.clone()) || !seen.insert(format!("path:{p}")) {
                return Err(Invalid::new(
                    at,
                    "volume names and mount paths must be unique",
                ));
            }
        }
        for (field, value) in [
            ("spec.ttl", &self.ttl),
            ("spec.lifecycle.idleTimeout", &self.lifecycle.idle_timeout),
            (
                "spec.lifecycle.ttlAfterFinished",
                &self.lifecycle.ttl_after_finished,
            ),
        ] {
            if value.as_ref().is_some_and(|d| !d.is_bounded()) {
                return Err(Invalid::new(
                    field,
                    "is not a duration such as 90s, 15m or 2h (from 1s to 365d)",
                ));
            }
        }
        if let Some(p) = self.resources.pids {
            if !(1..=1 << 22).contains(&p) {
                return Err(Invalid::new(
                    "spec.resources.pids",
                    "must be between 1 and 4194304",
                ));
            }
        }
        Ok(())
    }
}

/// A key (of a label, an annotation or a variable) as it may appear in a field path or a
/// message: printable, and cut to 63 characters, so that what a client sent is never
/// echoed at length.
pub fn shown_key(key: &str) -> String {
    let mut shown: String = key
        .chars()
        .take(63)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if key.chars().count() > 63 {
        shown.push_str("...");
    }
    shown
}

/// `text`, printable, cut to `max` characters.
pub fn clip(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// A DNS-1123 label: 1..63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "is {} characters; at most 63 are allowed",
            name.len()
        ));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok || !ends(name.as_bytes()[0]) || !ends(name.as_bytes()[name.len() - 1]) {
        return Err(
            "is not a DNS-1123 label: use lower-case letters, digits and '-', \
                    starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 253
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("has an invalid prefix before '/'".into());
        }
    }
    if name.is_empty() || name.len() > 63 || !label_chars(name) {
        return Err(
            "the key must be at most 63 letters, digits, '-', '_' or '.', \
                    starting and ending alphanumeric (optionally after a 'prefix/')"
                .into(),
        );
    }
    Ok(())
}

/// A label value: empty, or at most 63 letters, digits, `-`, `_` or `.`, starting and
/// ending alphanumeric (as in Kubernetes).
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 || !label_chars(value) {
        return Err(
            "the value must be at most 63 letters, digits, '-', '_' or '.', \
                    starting and ending alphanumeric"
                .into(),
        );
    }
    Ok(())
}

fn label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

pub fn validate_env_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(
            "is not a valid variable name: use letters, digits and '_', not starting with a digit"
                .into(),
        )
    }
}

/// A Docker image reference, parsed as the engine reads it.
fn validate_image(image: &str) -> Result<(), String> {
    crate::image::Reference::parse(image).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Agent, DesiredState, RestartPolicy};

    fn agent(yaml: &str) -> Agent {
        serde_yaml::from_str(yaml).unwrap()
    }

    const GOOD: &str = "apiVersion: hive/v1\nkind: Agent\nmetadata: {name: researcher-1, labels: {team: research}}\nspec:\n  image: nanobot:latest\n  command: [nanobot, gateway]\n  env: {MODEL: gpt-4o}\n  resources: {memory: 512Mi, cpus: \"0.5\"}\n";

    #[test]
    fn the_issue_example_is_valid_and_defaults_apply() {
        let a = agent(GOOD);
        a.validate().unwrap();
        assert_eq!(a.spec.state, DesiredState::Running);
        assert_eq!(a.spec.restart_policy, RestartPolicy::Always);
    }

    #[test]
    fn names_follow_dns_1123() {
        for ok in ["a", "a-1", "researcher-1", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("apiVersion: v2", "apiVersion"),
            ("kind: Pod", "kind"),
            ("metadata: {name: Bad_Name}", "metadata.name"),
            ("spec: {image: ''}", "spec.image"),
            ("spec: {image: 'Nanobot:1'}", "spec.image"),
            (
                "spec: {image: x, resources: {memory: lots}}",
                "spec.resources.memory",
            ),
            (
                "spec: {image: x, resources: {memory: 1Ki}}",
                "spec.resources.memory",
            ),
            (
                "spec: {image: x, resources: {cpus: fast}}",
                "spec.resources.cpus",
            ),
            (
                "spec: {image: x, resources: {cpus: 0}}",
                "spec.resources.cpus",
            ),
            ("spec: {image: x, env: {'1BAD': v}}", "spec.env.1BAD"),
            ("spec: {image: x, command: []}", "spec.command"),
        ];
        for (patch, field) in cases {
            let mut base: serde_yaml::Mapping = serde_yaml::from_str(GOOD).unwrap();
            let patch: serde_yaml::Mapping = serde_yaml::from_str(patch).unwrap();
            for (k, v) in patch {
                base.insert(k, v);
            }
            let a: Agent = serde_yaml::from_value(serde_yaml::Value::Mapping(base)).unwrap();
            let err = a.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
