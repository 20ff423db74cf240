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
        // As the engine splits a name: a first component with a '.', a ':' or an upper-case
        // letter, or `localhost`, is a registry (host names are case-insensitive, so it
        // is kept in lower case: `LOCALHOST:5000` is `localhost:5000`).
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_ascii_lowercase(), rest.to_string())
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
    /// reach what it should not. Read from the reference alone: addresses in any form
    /// the system's resolver takes as one (`127.1`, `0x7f000001`, `2130706433`), and
    /// `localhost` names; other names are resolved before a pull (see
    /// [`crate::resolve`]).
    pub fn is_private_registry(&self) -> bool {
        let host = self.host();
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        literal_address(host).is_some_and(|ip| !is_public(ip))
    }
}

/// The address a host name stands for without a lookup: an IPv6 address, or an IPv4 one
/// in any form `inet_aton` reads (one to four parts, each decimal, `0x` hex or `0` octal),
/// as the system's resolver (and so the engine) does.
pub fn literal_address(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let numbers = parts
        .iter()
        .map(|p| {
            let p = p.to_ascii_lowercase();
            if let Some(hex) = p.strip_prefix("0x") {
                u64::from_str_radix(hex, 16).ok()
            } else if p.len() > 1 && p.starts_with('0') {
                u64::from_str_radix(&p[1..], 8).ok()
            } else {
                p.parse::<u64>().ok()
            }
        })
        .collect::<Option<Vec<u64>>>()?;
    // The last part fills the bytes the others leave.
    let (last, first) = numbers.split_last()?;
    if first.iter().any(|n| *n > 255) || *last >= 1u64 << (8 * (4 - first.len())) {
        return None;
    }
    let mut value = *last;
    for (i, n) in first.iter().enumerate() {
        value |= n << (8 * (3 - i));
    }
    Some(IpAddr::V4(std::net::Ipv4Addr::from(value as u32)))
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// unspecified, broadcast, multicast, shared (carrier-grade NAT) or unique-local, nor an
/// IPv4 address of such a kind inside IPv6.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                // "This network", 0.0.0.0/8.
                || ip.octets()[0] == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
                // Benchmarking, 198.18.0.0/15.
                || (ip.octets()[0] == 198 && (ip.octets()[1] & 0xfe) == 18)
                // Reserved, 240.0.0.0/4.
                || ip.octets()[0] >= 240)
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            let v4 = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(hi) << 16) | u32::from(lo),
                ))
            };
            // Forms that carry an IPv4 address: it decides. Mapped (::ffff:a.b.c.d),
            // compatible (::a.b.c.d, deprecated), translated (::ffff:0:a.b.c.d), NAT64
            // (64:ff9b::/96) and 6to4 (2002:AABB:CCDD::/48).
            if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) && !(s[5] == 0 && s[6] == 0) {
                return is_public(v4(s[6], s[7]));
            }
            if s[..6] == [0, 0, 0, 0, 0xffff, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(v4(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public(v4(s[1], s[2]));
            }
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                // Unique local (fc00::/7) and link-local (fe80::/10).
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // Local-use NAT64, 64:ff9b:1::/48.
                || s[..3] == [0x64, 0xff9b, 1])
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
        // Host names are case-insensitive: kept in lower case, as a registry.
        assert_eq!(r("LOCALHOST:5999/x:1").registry, "localhost:5999");
        assert_eq!(r("Localhost/x").registry, "localhost");
        for bad in ["", "a b", "x:", "x@sha256:zz", "x:t@", "Ab/UPPER"] {
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
            // Spelled otherwise, the same hosts.
            "LOCALHOST:5999/x:1",
            "Localhost:5999/x",
            "127.1:5999/x",
            "2130706433:5999/x",
            "0x7f000001:5999/x",
            "0177.0.0.1:5999/x",
            "0x7f.1/x",
            "[::ffff:127.0.0.1]:5000/x",
            "[::127.0.0.1]:5000/x",
            "a.localhost/x",
            "[64:ff9b::7f00:1]/x",
            "[64:ff9b::a00:5]/x",
            "[::ffff:0:7f00:1]/x",
            "[2002:7f00:1::]/x",
            "[64:ff9b:1::1]/x",
            "198.18.0.1/x",
            "240.0.0.1/x",
        ] {
            assert!(r(private).is_private_registry(), "{private}");
        }
        for public in [
            "busybox",
            "ghcr.io/a/b",
            "8.8.8.8/x",
            "registry.example:5000/x",
            "134744072/x",
            "[2001:4860:4860::8888]/x",
            "[64:ff9b::808:808]/x",
            "[2002:808:808::1]/x",
        ] {
            assert!(!r(public).is_private_registry(), "{public}");
        }
    }
}
