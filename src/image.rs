//! Image references, parsed as the engine reads them (registry, repository, tag, digest),
//! the admission policy's image patterns, and which registries are off limits.
//!
//! A reference's first path component is a registry when it holds a `.` or a `:` or is
//! `localhost`; otherwise the registry is Docker Hub (`docker.io`), and a one-component
//! repository lives under `library/`. So `busybox:5000/evil:1` is repository `evil` at
//! registry `busybox:5000`, not a tag of `busybox`.
//!
//! Patterns are references whose parts may hold `*` (any characters within one part: a
//! path segment, the registry host and port, or the tag) or `**` (any number of path
//! segments). A pattern without a tag admits every tag, one without a digest every digest.
//! `nanobot:*` admits `nanobot:1` (`docker.io/library/nanobot:1`) and nothing from another
//! registry; `registry.example/agents/*` admits `registry.example/agents/x:1` but not
//! `registry.example/agents/x/y`; `registry.example/**` admits anything from that registry.

use std::net::IpAddr;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Host, with a port if one is given: `docker.io`, `registry.example:5000`.
    pub registry: String,
    /// Path components joined by `/`, with `library/` added for Docker Hub's short names.
    pub repository: String,
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

/// The registry a reference without one is pulled from.
pub const DEFAULT_REGISTRY: &str = "docker.io";

impl Reference {
    /// Parses `text` as the engine would; the error says which part is wrong (without
    /// echoing the reference).
    pub fn parse(text: &str) -> Result<Reference, String> {
        Self::split(text, false)
    }

    /// Splits a reference or (with `pattern`) a pattern, where parts may hold `*`.
    fn split(text: &str, pattern: bool) -> Result<Reference, String> {
        if text.is_empty() || text.len() > 512 {
            return Err("must be between 1 and 512 characters".into());
        }
        if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err("must be printable ASCII without spaces".into());
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (text, None),
        };
        if let Some(d) = &digest {
            let ok = d.split_once(':').is_some_and(|(alg, hex)| {
                !alg.is_empty()
                    && alg.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b)
                    })
                    && hex.len() >= 32
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if !(ok || pattern && d == "*") {
                return Err("has a digest that is not algorithm:hex".into());
            }
        }
        // A tag follows the last ':' after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b"_.-".contains(&b) || (pattern && b == b'*')
                });
            if !ok {
                return Err(
                    "has a tag that is not 1 to 128 letters, digits, '_', '.' or '-'".into(),
                );
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ if !name.contains('/') => (DEFAULT_REGISTRY.to_string(), format!("library/{name}")),
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
            _ => registry,
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"._-".contains(&b)
                        || (pattern && b == b'*')
                })
        };
        if !path.split('/').all(component_ok) {
            return Err(
                "has a repository that is not lower-case path components of letters, digits, '.', '_' or '-'"
                    .into(),
            );
        }
        let host_ok = registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b) || (pattern && b == b'*'));
        if !host_ok {
            return Err("has a registry that is not a host name or address".into());
        }
        Ok(Reference {
            registry,
            repository: path,
            tag,
            digest,
        })
    }

    /// The registry's host without its port (and without brackets for IPv6).
    pub fn host(&self) -> &str {
        let r = self.registry.as_str();
        if let Some(v6) = r.strip_prefix('[') {
            return v6.split(']').next().unwrap_or(v6);
        }
        r.rsplit_once(':').map_or(r, |(h, _)| h)
    }

    /// Whether the registry is on this host or a private network (loopback, link-local,
    /// private or unspecified addresses, `localhost`), where a pull would make the engine
    /// reach what it should not.
    pub fn is_private_registry(&self) -> bool {
        let host = self.host();
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                ip.is_loopback()
                    || ip.is_private()
                    || ip.is_link_local()
                    || ip.is_unspecified()
                    || ip.is_broadcast()
                    // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                    || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
            }
            Ok(IpAddr::V6(ip)) => {
                ip.is_loopback()
                    || ip.is_unspecified()
                    // Unique local (fc00::/7) and link-local (fe80::/10).
                    || (ip.segments()[0] & 0xfe00) == 0xfc00
                    || (ip.segments()[0] & 0xffc0) == 0xfe80
                    || ip.to_ipv4_mapped().is_some_and(|v4| {
                        v4.is_loopback() || v4.is_private() || v4.is_link_local()
                    })
            }
            Err(_) => false,
        }
    }
}

/// An image pattern of the admission policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(Reference);

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        Reference::split(text, true).map(Pattern)
    }

    /// Whether `r` is one of the images this pattern admits.
    pub fn admits(&self, r: &Reference) -> bool {
        let p = &self.0;
        glob(&p.registry, &r.registry, b"/")
            && path_glob(&p.repository, &r.repository)
            && p.tag.as_ref().is_none_or(|t| {
                // A digest-only reference has no tag; only an any-tag pattern admits it.
                r.tag.as_ref().map_or(t == "*", |rt| glob(t, rt, b""))
            })
            && p.digest
                .as_ref()
                .is_none_or(|d| d == "*" || r.digest.as_ref() == Some(d))
    }
}

/// Matches a repository path: `**` spans any number of segments, each other segment is
/// matched with [`glob`] within the segment.
fn path_glob(pattern: &str, path: &str) -> bool {
    fn go(p: &[&str], s: &[&str]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((&"**", rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((first, rest)) => s
                .split_first()
                .is_some_and(|(h, t)| glob(first, h, b"/") && go(rest, t)),
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    go(&p, &s)
}

/// `*` matches any run of characters that holds none of `stops`; everything else matches
/// itself.
fn glob(pattern: &str, text: &str, stops: &[u8]) -> bool {
    fn go(p: &[u8], t: &[u8], stops: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => {
                let mut i = 0;
                loop {
                    if go(rest, &t[i..], stops) {
                        return true;
                    }
                    if i == t.len() || stops.contains(&t[i]) {
                        return false;
                    }
                    i += 1;
                }
            }
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..], stops),
        }
    }
    go(pattern.as_bytes(), text.as_bytes(), stops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn references_are_read_as_the_engine_reads_them() {
        assert_eq!(
            r("busybox"),
            Reference {
                registry: "docker.io".into(),
                repository: "library/busybox".into(),
                tag: None,
                digest: None
            }
        );
        let evil = r("busybox:5000/evil:1");
        assert_eq!(
            (
                evil.registry.as_str(),
                evil.repository.as_str(),
                evil.tag.as_deref()
            ),
            ("busybox:5000", "evil", Some("1"))
        );
        let local = r("localhost/x");
        assert_eq!(local.registry, "localhost");
        let d = r(
            "ghcr.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        );
        assert_eq!(
            (d.registry.as_str(), d.repository.as_str(), d.tag),
            ("ghcr.io", "a/b", None)
        );
        for bad in ["", "UPPER/x", "a b", "x:", "x@sha256:zz", "x:t@"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_star_stays_within_its_part() {
        let p = Pattern::parse("busybox:*").unwrap();
        assert!(p.admits(&r("busybox:1")));
        assert!(p.admits(&r("docker.io/library/busybox:latest")));
        assert!(
            !p.admits(&r("busybox:5000/evil:1")),
            "a registry, not a tag"
        );
        assert!(!p.admits(&r("evil.example/busybox:1")));
        let agents = Pattern::parse("registry.example/agents/*").unwrap();
        assert!(agents.admits(&r("registry.example/agents/x:1")));
        assert!(agents.admits(&r("registry.example/agents/x")));
        assert!(!agents.admits(&r("registry.example/agents/x/y")));
        assert!(!agents.admits(&r("registry.example.evil/agents/x")));
        assert!(Pattern::parse("registry.example/**")
            .unwrap()
            .admits(&r("registry.example/a/b/c:2")));
        let tags = Pattern::parse("nanobot:1.*").unwrap();
        assert!(tags.admits(&r("nanobot:1.2")));
        assert!(!tags.admits(&r("nanobot:2.0")));
        assert!(!tags.admits(&r("nanobot")), "no tag is not tag 1.*");
    }

    #[test]
    fn private_and_loopback_registries_are_recognised() {
        for private in [
            "127.0.0.1:5999/x",
            "localhost:5000/x",
            "10.1.2.3/x",
            "172.16.0.1/x",
            "192.168.1.1:443/x",
            "169.254.169.254/x",
            "[::1]:5000/x",
            "[fd00::1]/x",
            "0.0.0.0/x",
            "100.64.0.1/x",
        ] {
            assert!(r(private).is_private_registry(), "{private}");
        }
        for public in [
            "busybox",
            "ghcr.io/a/b",
            "8.8.8.8/x",
            "registry.example:5000/x",
        ] {
            assert!(!r(public).is_private_registry(), "{public}");
        }
    }
}
