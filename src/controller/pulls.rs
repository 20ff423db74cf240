//! Image pulls, apart from the reconcile passes.
//!
//! A pull can take minutes (or hang on a registry that never answers), so it never runs
//! inside a pass: a pass that finds its image missing asks for a pull here and ends, and
//! the agents waiting for the image are woken when the pull is done. Pulls are bounded
//! per owner and in all, so one owner's images cannot hold up another owner's agents. A
//! failed pull is remembered for a while, so that its agents fail with its message
//! instead of pulling again at once. Right before a pull the image's registry is looked
//! up again ([`crate::policy::Policy::screen_registry`]): the engine never dials a
//! registry whose name leads to this host or a private network, whatever it resolved to
//! when the agent was admitted.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::orchestrator::Orchestrator;

/// Pulls one owner may have running at once.
pub const PER_OWNER: usize = 2;
/// Pulls running at once in all.
pub const TOTAL: usize = 4;
/// How long a failed pull's answer stands before the image is tried again.
const REMEMBER_FAILURE: Duration = Duration::from_secs(30);

/// Where an agent's image stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullStatus {
    /// Being pulled now.
    Pulling,
    /// Waiting for a pull slot (the owner's or the engine's are all taken).
    Queued,
    /// The last pull failed, saying this.
    Failed(String),
}

#[derive(Default)]
struct State {
    /// Images being pulled, with their owner.
    running: HashMap<String, String>,
    /// Pulls waiting for a slot, in order: (image, owner).
    queued: VecDeque<(String, String)>,
    /// Agents to wake when an image's pull ends.
    waiting: HashMap<String, BTreeSet<String>>,
    /// Pulls that failed lately, with when and why.
    failed: HashMap<String, (Instant, String)>,
}

/// The pulls of one Hive.
pub struct Pulls {
    state: Mutex<State>,
    orchestrator: Arc<dyn Orchestrator>,
    /// Queues an agent for a reconcile.
    wake: mpsc::UnboundedSender<String>,
    /// Which registries images may come from.
    policy: Arc<crate::policy::Policy>,
    /// Looks registries up right before a pull.
    resolver: Arc<crate::resolve::Resolver>,
}

impl Pulls {
    pub fn new(
        orchestrator: Arc<dyn Orchestrator>,
        wake: mpsc::UnboundedSender<String>,
        policy: Arc<crate::policy::Policy>,
        resolver: Arc<crate::resolve::Resolver>,
    ) -> Self {
        Pulls {
            state: Mutex::default(),
            orchestrator,
            wake,
            policy,
            resolver,
        }
    }

    /// `agent` (of `owner`) needs `image`: starts or queues its pull unless one is under
    /// way, and says where it stands. The agent is woken when the pull ends.
    pub fn request(self: &Arc<Self>, image: &str, owner: &str, agent: &str) -> PullStatus {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, why)) = s.failed.get(image) {
            if at.elapsed() < REMEMBER_FAILURE {
                return PullStatus::Failed(why.clone());
            }
            s.failed.remove(image);
        }
        s.waiting
            .entry(image.to_string())
            .or_default()
            .insert(agent.to_string());
        if s.running.contains_key(image) {
            return PullStatus::Pulling;
        }
        if !s.queued.iter().any(|(i, _)| i == image) {
            s.queued.push_back((image.to_string(), owner.to_string()));
        }
        self.start_what_fits(&mut s);
        if s.running.contains_key(image) {
            PullStatus::Pulling
        } else {
            PullStatus::Queued
        }
    }

    /// Starts queued pulls, oldest first, while their owner and the engine have room.
    fn start_what_fits(self: &Arc<Self>, s: &mut State) {
        let mut i = 0;
        while i < s.queued.len() && s.running.len() < TOTAL {
            let owner = &s.queued[i].1;
            let owners_running = s.running.values().filter(|o| *o == owner).count();
            if owners_running >= PER_OWNER {
                i += 1;
                continue;
            }
            let (image, owner) = s.queued.remove(i).expect("in range");
            s.running.insert(image.clone(), owner.clone());
            let me = self.clone();
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let screened = me
                    .policy
                    .screen_registry(&owner, &image, &me.resolver)
                    .await;
                let result = match screened {
                    Ok(()) => {
                        info!(%image, %owner, "pulling an image");
                        // What went wrong, once: the agent's status says the rest.
                        me.orchestrator.pull(&image).await.map_err(|e| match e {
                            crate::orchestrator::OrchestratorError::ImageNotFound {
                                detail,
                                ..
                            } => detail,
                            other => other.to_string(),
                        })
                    }
                    Err(refusal) => Err(format!("not pulled: {refusal}")),
                };
                me.finish(&image, result);
            }));
        }
    }

    /// Ends a pull: wakes its agents and starts what was waiting for the slot.
    fn finish(self: &Arc<Self>, image: &str, result: Result<(), String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.running.remove(image);
        match result {
            Ok(()) => info!(%image, "pulled an image"),
            Err(why) => {
                warn!(%image, error = %why, "pulling an image failed");
                s.failed.insert(image.to_string(), (Instant::now(), why));
            }
        }
        for agent in s.waiting.remove(image).unwrap_or_default() {
            let _ = self.wake.send(agent);
        }
        self.start_what_fits(&mut s);
    }

    /// Pulls running now, for tests and metrics.
    pub fn running(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::fake::FakeOrchestrator;

    #[tokio::test]
    async fn a_registry_that_leads_to_this_host_is_never_pulled_from() {
        let fake = Arc::new(FakeOrchestrator::default());
        let (wake, mut woken) = mpsc::unbounded_channel();
        // Admitted while the name led elsewhere; now it leads to loopback.
        let resolver = crate::resolve::Resolver::new(&["reg.test=127.0.0.1".into()]).unwrap();
        let pulls = Arc::new(Pulls::new(
            fake.clone(),
            wake,
            Arc::new(crate::policy::Policy::default()),
            Arc::new(resolver),
        ));
        let image = "reg.test:5000/x:1";
        assert_eq!(pulls.request(image, "o", "a"), PullStatus::Pulling);
        assert_eq!(woken.recv().await.as_deref(), Some("a"));
        let PullStatus::Failed(why) = pulls.request(image, "o", "a") else {
            panic!("the pull did not fail");
        };
        assert!(
            why.contains("127.0.0.1") && why.contains("images.privateRegistries"),
            "{why}"
        );
        assert_eq!(
            fake.max_pulls.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the engine was never asked to pull"
        );
    }
}
