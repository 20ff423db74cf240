//! `lifecycle:` in the policy: what `spec.ttl` and `spec.lifecycle` get when they say
//! nothing, and the most they may say, for everyone and per owner.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Refusal;
use crate::agent::SpecDuration;

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
    pub(super) fn check(&self) -> Result<(), String> {
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
    pub(super) fn admit(
        &self,
        owner: &str,
        spec: &mut crate::agent::AgentSpec,
    ) -> Result<(), Refusal> {
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
