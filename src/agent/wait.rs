//! What `hive wait --for` and MCP's `wait_agent` wait for: a phase, or a condition that
//! holds, in both cases with the agent's current generation observed.

use std::str::FromStr;

use super::{Agent, ConditionStatus, ConditionType, Phase};

/// `phase=<Phase>` or `condition=<Ready|Progressing>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitFor {
    Phase(Phase),
    Condition(ConditionType),
}

impl FromStr for WaitFor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        // The value is not echoed: what a client sent is never repeated back at length.
        let wrong = || {
            "is not understood; use phase=<Pending|Running|Stopped|Succeeded|Failed> or condition=<Ready|Progressing>".to_string()
        };
        match text.split_once('=') {
            Some(("phase", p)) => Phase::ALL
                .into_iter()
                .find(|phase| phase.as_str().eq_ignore_ascii_case(p))
                .map(WaitFor::Phase)
                .ok_or_else(wrong),
            Some(("condition", c)) => ConditionType::ALL
                .into_iter()
                .find(|kind| kind.as_str().eq_ignore_ascii_case(c))
                .map(WaitFor::Condition)
                .ok_or_else(wrong),
            _ => Err(wrong()),
        }
    }
}

impl std::fmt::Display for WaitFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitFor::Phase(p) => write!(f, "phase={p}"),
            WaitFor::Condition(c) => write!(f, "condition={c}"),
        }
    }
}

impl WaitFor {
    /// Whether `agent` is there: what is waited for holds for its current generation.
    pub fn holds(&self, agent: &Agent) -> bool {
        let st = &agent.status;
        let caught_up = st.observed_generation == agent.metadata.generation;
        caught_up
            && match self {
                WaitFor::Phase(p) => st.phase == *p,
                WaitFor::Condition(c) => st
                    .conditions
                    .iter()
                    .any(|k| k.kind == *c && k.status == ConditionStatus::True),
            }
    }

    /// How the agent was last seen, for a message that says why waiting did not end.
    pub fn last_seen(agent: &Agent) -> String {
        let st = &agent.status;
        format!(
            "phase {}{}{}",
            st.phase,
            if st.observed_generation == agent.metadata.generation {
                ""
            } else {
                " (generation not yet observed)"
            },
            st.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_conditions_parse_and_nothing_else() {
        assert_eq!("phase=running".parse(), Ok(WaitFor::Phase(Phase::Running)));
        assert_eq!(
            "condition=Ready".parse(),
            Ok(WaitFor::Condition(ConditionType::Ready))
        );
        for bad in [
            "ready",
            "phase=Sleeping",
            "condition=Happy",
            "state=Running",
        ] {
            let err = bad.parse::<WaitFor>().unwrap_err();
            assert!(err.contains("use phase=<Pending"), "{bad}: {err}");
            assert!(!err.contains(bad), "the value is not echoed: {err}");
        }
        assert_eq!(WaitFor::Phase(Phase::Stopped).to_string(), "phase=Stopped");
    }
}
