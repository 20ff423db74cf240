//! Label selectors, as `?label=` takes them: `k=v`, `k!=v`, `k` and `!k`, comma-separated,
//! all of which must hold.

/// A parsed label selector.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    terms: Vec<Term>,
}

#[derive(Clone, Debug)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    /// Parses `k=v`, `k==v`, `k!=v`, `k` and `!k` terms, comma-separated; all must hold.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for raw in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let term = if let Some((k, v)) = raw.split_once("!=") {
                Term::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
                Term::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = raw.strip_prefix('!') {
                Term::Absent(k.trim().into())
            } else {
                Term::Exists(raw.into())
            };
            let key = match &term {
                Term::Equals(k, _) | Term::NotEquals(k, _) | Term::Exists(k) | Term::Absent(k) => k,
            };
            if key.is_empty() {
                return Err(
                    "a label selector term has no key; use key=value, key!=value, key or !key"
                        .into(),
                );
            }
            terms.push(term);
        }
        Ok(Selector { terms })
    }

    /// Whether `labels` satisfy every term.
    /// The `k=v` terms: any agent selected carries each of them (what a label index can
    /// look up instead of scanning).
    pub fn equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.terms.iter().filter_map(|t| match t {
            Term::Equals(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn selectors_combine_terms() {
        let labels = BTreeMap::from([("team".to_string(), "research".to_string())]);
        let m = |s: &str| Selector::parse(s).unwrap().matches(&labels);
        assert!(m("team=research"));
        assert!(m("team==research"));
        assert!(!m("team=ops"));
        assert!(m("team!=ops"));
        assert!(m("team"));
        assert!(!m("!team"));
        assert!(!m("team=research,tier"));
        assert!(Selector::parse("=x").is_err());
    }
}
