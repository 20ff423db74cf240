//! The storm guard: bounds how often one agent's container is created.
//!
//! Something that keeps removing an agent's containers (another Hive on the same
//! instance, a cleanup script) would otherwise make Hive create one after another as fast
//! as the engine allows. Here each agent gets, as a CrashLoopBackOff does, a backoff that
//! doubles with every burst of disappearances, and a hard cap on creates per minute
//! whatever their reason.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The window the counts below are taken over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Replacements of a vanished container allowed within [`WINDOW`] before backing off.
pub const MAX_VANISHED: usize = 3;
/// Creates of any kind allowed within [`WINDOW`].
pub const MAX_CREATES: usize = 10;
/// The first backoff after a burst of disappearances; it doubles with each burst.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest backoff.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A quiet spell this long forgets earlier bursts.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// Why a create must wait, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttled {
    pub wait: Duration,
    /// True when the agent's containers keep disappearing; false for the plain rate cap.
    pub vanishing: bool,
    /// What is happening, in words, for the status and the event.
    pub message: String,
}

#[derive(Default)]
struct History {
    creates: VecDeque<Instant>,
    vanished: VecDeque<Instant>,
    /// Bursts of disappearances so far; each doubles the backoff.
    strikes: u32,
    /// No create before this.
    blocked: Option<(Instant, Throttled)>,
    /// What the last create was for (the agent's uid and spec hash): a create for the same
    /// replaces a container that disappeared, since Hive replaces its own containers only
    /// when one of them changes.
    last: Option<String>,
}

/// Per-agent create histories.
#[derive(Default)]
pub struct Guard {
    agents: HashMap<String, History>,
}

impl Guard {
    /// Asks to create `agent`'s container now, for `what` (its uid and spec hash), and
    /// counts the create as made: [`Guard::admit`] then [`Guard::record`].
    pub fn check(&mut self, agent: &str, what: &str, now: Instant) -> Result<(), Throttled> {
        self.admit(agent, what, now)?;
        self.record(agent, what, now);
        Ok(())
    }

    /// Whether `agent`'s container may be created now, for `what`; counts nothing (a
    /// create that then fails, such as one whose image must be pulled first, is not one).
    pub fn admit(&mut self, agent: &str, what: &str, now: Instant) -> Result<(), Throttled> {
        let h = self.agents.entry(agent.to_string()).or_default();
        let vanished = h.last.as_deref() == Some(what);
        let recent = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
                q.pop_front();
            }
        };
        if h.vanished
            .back()
            .is_none_or(|t| now.duration_since(*t) > FORGET_AFTER)
        {
            h.strikes = 0;
        }
        recent(&mut h.creates);
        recent(&mut h.vanished);
        if let Some((until, why)) = &h.blocked {
            if now < *until {
                return Err(Throttled {
                    wait: *until - now,
                    ..why.clone()
                });
            }
            // The create the backoff held back may go ahead; the next disappearance backs
            // off twice as long.
            return Ok(());
        }
        if vanished && h.vanished.len() + 1 > MAX_VANISHED {
            h.strikes += 1;
            let wait = BACKOFF_BASE
                .saturating_mul(1 << (h.strikes - 1).min(8))
                .min(BACKOFF_CAP);
            let why = Throttled {
                wait,
                vanishing: true,
                message: format!(
                    "its container keeps disappearing ({} times within {}): something else \
                     removes Hive's containers (another Hive on this instance?); creating it \
                     again in {}",
                    h.vanished.len() + 1,
                    humantime::format_duration(WINDOW),
                    humantime::format_duration(wait)
                ),
            };
            // This one disappeared too: it counts.
            h.vanished.push_back(now);
            h.blocked = Some((now + wait, why.clone()));
            return Err(why);
        }
        if h.creates.len() >= MAX_CREATES {
            let until = h.creates[0] + WINDOW;
            let wait = until.saturating_duration_since(now);
            let why = Throttled {
                wait,
                vanishing: false,
                message: format!(
                    "{MAX_CREATES} containers were created for it within {}; creating the next \
                     in {}",
                    humantime::format_duration(WINDOW),
                    humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                ),
            };
            h.blocked = Some((until, why.clone()));
            return Err(why);
        }
        Ok(())
    }

    /// Counts a create of `agent`'s container for `what` that was made.
    pub fn record(&mut self, agent: &str, what: &str, now: Instant) {
        let h = self.agents.entry(agent.to_string()).or_default();
        if h.blocked.as_ref().is_some_and(|(until, _)| now >= *until) {
            h.blocked = None;
        }
        if h.last.as_deref() == Some(what) {
            h.vanished.push_back(now);
        }
        h.creates.push_back(now);
        h.last = Some(what.to_string());
    }

    /// Drops what is known of a deleted agent.
    pub fn forget(&mut self, agent: &str) {
        self.agents.remove(agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disappearing_containers_back_off_and_the_backoff_doubles() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        g.check("a", "h1", at(0)).unwrap();
        for s in 1..=3 {
            g.check("a", "h1", at(s)).unwrap();
        }
        let first = g.check("a", "h1", at(4)).unwrap_err();
        assert!(first.vanishing);
        assert_eq!(first.wait, Duration::from_secs(10));
        assert!(
            first.message.contains("keeps disappearing"),
            "{}",
            first.message
        );
        // Asking again during the backoff waits for what is left of it.
        assert_eq!(
            g.check("a", "h1", at(9)).unwrap_err().wait,
            Duration::from_secs(5)
        );
        // After it, a create is allowed; the next disappearance backs off twice as long.
        g.check("a", "h1", at(14)).unwrap();
        assert_eq!(
            g.check("a", "h1", at(15)).unwrap_err().wait,
            Duration::from_secs(20)
        );
        // Other agents are not affected.
        g.check("b", "h1", at(15)).unwrap();
    }

    #[test]
    fn creates_of_any_kind_are_capped_per_window() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        // Every create for a new spec: no disappearance, only the cap.
        for i in 0..MAX_CREATES as u64 {
            g.check("a", &format!("h{i}"), t0 + Duration::from_secs(i))
                .unwrap();
        }
        let t = g
            .check("a", "h99", t0 + Duration::from_secs(10))
            .unwrap_err();
        assert!(!t.vanishing);
        assert_eq!(t.wait, Duration::from_secs(50));
        g.check("a", "h100", t0 + Duration::from_secs(61)).unwrap();
    }

    #[test]
    fn a_create_that_fails_before_a_container_exists_is_not_counted() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        // An image that cannot be pulled: the create is asked for again and again, and
        // never made. Nothing disappeared.
        for s in 0..20 {
            g.admit("a", "h1", t0 + Duration::from_secs(s)).unwrap();
        }
        g.check("a", "h1", t0 + Duration::from_secs(21)).unwrap();
    }

    #[test]
    fn a_quiet_spell_forgets_earlier_bursts() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        for s in 0..5 {
            let _ = g.check("a", "h1", t0 + Duration::from_secs(s));
        }
        let later = t0 + Duration::from_secs(1000);
        for s in 0..3 {
            g.check("a", "h1", later + Duration::from_secs(s)).unwrap();
        }
        assert_eq!(
            g.check("a", "h1", later + Duration::from_secs(3))
                .unwrap_err()
                .wait,
            Duration::from_secs(10),
            "the backoff starts over"
        );
    }
}
