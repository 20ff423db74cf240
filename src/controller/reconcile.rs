//! One reconcile pass for one agent: read the record and the agent's containers,
//! [`plan`], carry the plan out, and write the status. Level-based and idempotent: it
//! neither knows nor cares why it was called.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::churn;
use super::plan::{plan, ContainerAction, Plan};
use super::pulls::PullStatus;
use crate::agent::{AgentStatus, Condition, Phase};
use crate::orchestrator::{Container, Orchestrator, OrchestratorError, Removal};
use crate::store::{NewEvent, Record, Store, StoreError};

/// What a reconcile needs.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<Store>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The admission policy, for what only the resolved spec shows (the environment its
    /// secrets give it).
    pub policy: Arc<crate::policy::Policy>,
    /// Which containers are this store's.
    pub ownership: Ownership,
    /// The storm guard's create histories.
    pub churn: Arc<Mutex<churn::Guard>>,
    /// Image pulls, run apart from the passes.
    pub pulls: Arc<super::pulls::Pulls>,
    /// Containers this Hive removed lately, to notice one that survives its removal.
    pub removed: Arc<Mutex<HashMap<String, Removed>>>,
}

/// How long a removal is remembered.
const REMEMBER_REMOVALS: Duration = Duration::from_secs(600);

/// A container this Hive had the engine remove.
#[derive(Clone, Debug)]
pub struct Removed {
    pub at: Instant,
    /// Whether its surviving the removal was reported already.
    pub reported: bool,
}

/// Which containers of the instance belong to this store.
#[derive(Clone, Debug)]
pub struct Ownership {
    /// This store's id.
    pub store: String,
    /// Take every container of the instance for this store's (`--adopt-foreign`).
    pub adopt_foreign: bool,
}

impl Ownership {
    /// Whether `c` is this store's: stamped with its id, or made before containers were
    /// stamped and carrying the uid of the agent this store declares by that name.
    pub fn owns(&self, c: &Container, agent_uid: Option<&str>) -> bool {
        self.adopt_foreign
            || match &c.store {
                Some(s) => *s == self.store,
                None => agent_uid.is_some_and(|u| u == c.uid),
            }
    }
}

/// Why a pass did not finish. The runtime retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
}

/// Converges one agent. Returns when to look again, if time alone will change something
/// (a `spec.ttl` running out).
pub async fn reconcile(name: &str, ctx: &Context) -> Result<Option<Duration>, ReconcileError> {
    let mut record = ctx.store.get(name)?;
    if let Some(r) = &record {
        tracing::Span::current().record("generation", r.agent.metadata.generation);
    }
    // An expired ttl deletes the agent, as a DELETE would.
    let mut requeue = None;
    if let Some(expires) = record
        .as_ref()
        .filter(|r| !r.agent.is_terminating())
        .and_then(|r| r.agent.expires_at())
    {
        let left = expires - time::OffsetDateTime::now_utc();
        if left.is_positive() {
            requeue = Some(Duration::try_from(left).unwrap_or_default());
        } else {
            let mut done = Decisions::default();
            done.normal(
                "Expired",
                format!(
                    "spec.ttl ({}) ran out; deleting the agent",
                    record
                        .as_ref()
                        .and_then(|r| r.agent.spec.ttl.clone())
                        .unwrap_or_default()
                ),
            );
            done.record(ctx, record.as_ref());
            ctx.store.mark_deleted(name)?;
            record = ctx.store.get(name)?;
        }
    }
    let live = record.as_ref().filter(|r| !r.agent.is_terminating());
    let spec = live
        .map(|r| {
            let spec = ctx.store.container_spec(&r.agent)?;
            // Secrets may have grown since the agent was admitted.
            if r.agent
                .spec
                .env_from
                .as_ref()
                .is_some_and(|e| !e.is_empty())
            {
                ctx.policy
                    .admit_env(&spec.env.0, true)
                    .map_err(|refusal| match refusal {
                        crate::policy::Refusal::Invalid { invalid, .. } => invalid,
                        crate::policy::Refusal::Quota { message, .. } => {
                            crate::agent::Invalid::new("spec.envFrom", message)
                        }
                    })?;
            }
            Ok::<_, crate::agent::Invalid>(spec)
        })
        .transpose();
    let spec = match spec {
        Ok(spec) => spec,
        Err(invalid) => {
            // A missing secret (or a record from an older, laxer Hive). Writing the secret
            // wakes the agent again.
            let r = live.expect("a spec comes from a record");
            write_failure(ctx, r, &format!("{invalid}"), false)?;
            return Ok(requeue);
        }
    };
    let hash = spec.as_ref().map(|s| s.hash()).unwrap_or_default();
    let listed = match ctx.orchestrator.list_agent(name).await {
        Ok(c) => c,
        Err(e) => return fail(ctx, record.as_ref(), e).map(|()| None),
    };
    let uid = record
        .as_ref()
        .and_then(|r| r.agent.metadata.uid)
        .map(|u| u.to_string());
    let (containers, foreign): (Vec<Container>, Vec<Container>) = listed
        .into_iter()
        .partition(|c| ctx.ownership.owns(c, uid.as_deref()));
    let plan = plan(record.as_ref(), &hash, &containers);
    if let (Some(ContainerAction::Create { .. }), Some(r)) = (&plan.action, live) {
        // Another store's container holds the name: leave it alone and say so.
        if let Some(f) = foreign
            .iter()
            .find(|c| c.state != crate::orchestrator::ContainerState::Removing)
        {
            let message = format!(
                "a container of another Hive store ({}) runs agent {name:?} on this instance; \
                 it is left alone (stop using that store, remove the container, or start this \
                 Hive with --adopt-foreign to replace it)",
                f.store.as_deref().unwrap_or("unknown")
            );
            write_failure(ctx, r, &message, false)?;
            return Ok(requeue);
        }
        let what = format!("{}/{hash}", uid.as_deref().unwrap_or_default());
        let verdict =
            ctx.churn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .check(name, &what, Instant::now());
        if let Err(throttled) = verdict {
            held_back(ctx, r, &throttled)?;
            return Ok(Some(throttled.wait));
        }
    }
    let mut done = Decisions::default();
    let result = execute(
        ctx,
        record.as_ref(),
        spec.as_ref(),
        &plan,
        &containers,
        &mut done,
    )
    .await;
    if !plan.delete_record || result.is_err() {
        done.record(ctx, record.as_ref());
    } else if plan.delete_record {
        ctx.churn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(name);
    }
    match result {
        Ok(created) => finish(ctx, record, plan, created).map(|()| requeue),
        Err(OrchestratorError::ImageMissing { image }) => {
            let r = live.expect("a create comes with a record");
            let owner = r.agent.metadata.owner.as_deref().unwrap_or_default();
            let message = match ctx.pulls.request(&image, owner, name) {
                PullStatus::Failed(detail) => {
                    let e = OrchestratorError::ImageNotFound { image, detail };
                    return fail(ctx, record.as_ref(), e).map(|()| None);
                }
                PullStatus::Pulling => format!("pulling image {image}"),
                PullStatus::Queued => format!(
                    "waiting to pull image {image}: its owner's (or the engine's) pull slots are taken"
                ),
            };
            // The pull wakes the agent when it ends; nothing to retry meanwhile.
            write_waiting(ctx, r, &message, "PullingImage")?;
            Ok(requeue)
        }
        Err(e) => fail(ctx, record.as_ref(), e).map(|()| None),
    }
}

/// The pass of a Hive that does not hold its instance's lease: nothing reaches the
/// engine, and a live agent's status says why nothing happens.
pub fn explain_waiting(name: &str, ctx: &Context, reason: &str) -> Result<(), ReconcileError> {
    let Some(r) = ctx.store.get(name)? else {
        return Ok(());
    };
    if r.agent.is_terminating() {
        return Ok(());
    }
    let mut status = r.agent.status.clone();
    status.message = Some(format!("not reconciled: {reason}"));
    let status = with_conditions(&r.agent.status.conditions, status, Some("NotReconciling"));
    ctx.store.update_status(
        name,
        r.agent.metadata.uid.unwrap_or_default(),
        status,
        r.internal.clone(),
    )?;
    Ok(())
}

/// What a pass decided and did, as events for the agent's history (and log lines).
#[derive(Default)]
struct Decisions(Vec<(&'static str, &'static str, String)>);

impl Decisions {
    fn normal(&mut self, reason: &'static str, message: String) {
        info!(reason, "{message}");
        self.0.push(("Normal", reason, message));
    }

    fn warning(&mut self, reason: &'static str, message: String) {
        warn!(reason, "{message}");
        self.0.push(("Warning", reason, message));
    }

    /// Stores them as the agent's events (not for an agent that is gone).
    fn record(self, ctx: &Context, record: Option<&Record>) {
        let Some(r) = record else { return };
        for (kind, reason, message) in self.0 {
            let event = NewEvent {
                kind,
                reason,
                message,
                generation: r.agent.metadata.generation,
            };
            if let Err(e) = ctx.store.record_event(&r.agent.metadata.name, event) {
                warn!(error = %e, "could not record an event");
            }
        }
    }
}

/// Carries out the plan's engine steps, noting each in `done`; returns the id of a
/// container it created.
async fn execute(
    ctx: &Context,
    record: Option<&Record>,
    spec: Option<&crate::orchestrator::ContainerSpec>,
    plan: &Plan,
    containers: &[crate::orchestrator::Container],
    done: &mut Decisions,
) -> Result<Option<String>, OrchestratorError> {
    let o = &ctx.orchestrator;
    let generation = record.map_or(0, |r| r.agent.metadata.generation);
    let mut replaced = false;
    for (id, reason) in &plan.remove {
        replaced |= *reason == "the spec changed";
        let earlier = ctx
            .removed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(earlier) = &earlier {
            // Removed before, yet listed again: say so once, then stop announcing it.
            if !earlier.reported {
                done.warning(
                    "RemovalFailed",
                    format!(
                        "container {} survived its removal {} ago; the engine still lists it",
                        short(id),
                        humantime::format_duration(Duration::from_secs(
                            earlier.at.elapsed().as_secs()
                        ))
                    ),
                );
                remember_removal(ctx, id, true);
            }
        }
        match o.remove(id).await? {
            Removal::Removed if earlier.is_none() => {
                remember_removal(ctx, id, false);
                done.normal(
                    "Removed",
                    format!("removed container {} because {reason}", short(id)),
                );
            }
            Removal::Removed => debug!(container = %short(id), "removed again"),
            Removal::AlreadyGone => {
                debug!(container = %short(id), "was already gone when it was to be removed")
            }
            Removal::InProgress => {
                debug!(container = %short(id), "the engine is removing it already")
            }
        }
    }
    if plan.delete_record {
        if let Some(r) = record {
            o.remove_volumes(
                &r.agent.metadata.name,
                r.agent.metadata.uid.unwrap_or_default(),
            )
            .await?;
        }
    }
    let mut created = None;
    match &plan.action {
        None => {}
        Some(ContainerAction::Create { start }) => {
            let spec = spec.expect("a create comes with a record");
            let id = o.create(spec).await?;
            let (reason, why) = if replaced {
                ("Recreated", "because the spec changed")
            } else {
                ("Created", "")
            };
            done.normal(
                reason,
                format!(
                    "created container {} for generation {generation} {why}",
                    short(&id)
                )
                .trim_end()
                .to_string(),
            );
            created = Some(id.clone());
            if *start {
                o.start(&id).await?;
                done.normal("Started", format!("started container {}", short(&id)));
            }
        }
        Some(ContainerAction::Start { id, repair }) => {
            o.start(id).await?;
            if *repair {
                let code = containers
                    .iter()
                    .find(|c| c.id == *id)
                    .and_then(|c| match c.state {
                        crate::orchestrator::ContainerState::Exited(code) => code,
                        _ => None,
                    });
                let code = code.map_or("an unknown code".into(), |c| format!("code {c}"));
                done.warning(
                    "Repaired",
                    format!(
                        "started container {} again: it had stopped outside Hive (exit {code})",
                        short(id)
                    ),
                );
            } else {
                done.normal("Started", format!("started container {}", short(id)));
            }
        }
        Some(ContainerAction::Stop { id }) => {
            o.stop(id).await?;
            done.normal(
                "Stopped",
                format!("stopped container {} as declared", short(id)),
            );
        }
        Some(ContainerAction::Restart { id }) => {
            o.restart(id).await?;
            done.normal(
                "Restarted",
                format!("restarted container {} as asked", short(id)),
            );
        }
        Some(ContainerAction::Unpause { id }) => {
            o.unpause(id).await?;
            done.warning(
                "Resumed",
                format!(
                    "resumed container {}: it was paused outside Hive",
                    short(id)
                ),
            );
        }
    }
    Ok(created)
}

/// Writes the status of a pass whose steps all succeeded, or drops a deleted agent's record.
fn finish(
    ctx: &Context,
    record: Option<Record>,
    plan: Plan,
    created: Option<String>,
) -> Result<(), ReconcileError> {
    let (Some(record), Some(outcome)) = (record, plan.outcome) else {
        return Ok(());
    };
    let agent = &record.agent;
    let uid = agent.metadata.uid.unwrap_or_default();
    if plan.delete_record {
        ctx.store.remove(&agent.metadata.name, uid)?;
        info!("agent deleted; its record is removed");
        return Ok(());
    }
    let mut internal = record.internal.clone();
    match &plan.action {
        Some(ContainerAction::Create { .. }) => internal.repairs = 0,
        Some(ContainerAction::Start { repair: true, .. }) => internal.repairs += 1,
        Some(ContainerAction::Restart { .. }) => internal.repairs += 1,
        _ => {}
    }
    // A restart asked for while the agent is stopped, or carried out now, is done.
    internal.restarts_done = internal.restarts_requested;
    let status = AgentStatus {
        phase: outcome.phase,
        observed_generation: agent.metadata.generation,
        container_id: created.or(outcome.container_id),
        restart_count: outcome.engine_restarts + internal.repairs,
        message: outcome.message,
        last_transition_time: None,
        expires_at: agent.expires_at().and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
        conditions: Vec::new(),
    };
    let status = with_conditions(&agent.status.conditions, status, None);
    if status.message.is_some() && status.message != agent.status.message {
        let mut note = Decisions::default();
        note.warning("NotReady", status.message.clone().unwrap_or_default());
        note.record(ctx, Some(&record));
    }
    ctx.store
        .update_status(&agent.metadata.name, uid, status, internal)?;
    Ok(())
}

/// Notes that this Hive had `id` removed (`reported`: its survival was reported).
fn remember_removal(ctx: &Context, id: &str, reported: bool) {
    let mut removed = ctx.removed.lock().unwrap_or_else(|p| p.into_inner());
    removed.retain(|_, r| r.at.elapsed() < REMEMBER_REMOVALS);
    let at = removed.get(id).map_or_else(Instant::now, |r| r.at);
    removed.insert(id.to_string(), Removed { at, reported });
}

/// Writes the status of an agent whose create the storm guard holds back, and says why
/// in an event when that is news.
fn held_back(
    ctx: &Context,
    r: &Record,
    throttled: &churn::Throttled,
) -> Result<(), ReconcileError> {
    let reason = if throttled.vanishing {
        "ContainerChurn"
    } else {
        "CreateRateLimited"
    };
    if write_waiting(ctx, r, &throttled.message, reason)? {
        ctx.metrics.create_backoffs.inc();
    }
    Ok(())
}

/// Writes the status of an agent that waits for something (Pending, not Ready for
/// `reason`), with a warning event the first time. Returns whether that was news.
fn write_waiting(
    ctx: &Context,
    r: &Record,
    message: &str,
    reason: &'static str,
) -> Result<bool, ReconcileError> {
    let agent = &r.agent;
    let mut status = agent.status.clone();
    status.phase = Phase::Pending;
    status.observed_generation = agent.metadata.generation;
    status.container_id = None;
    status.message = Some(message.to_string());
    let status = with_conditions(&agent.status.conditions, status, Some(reason));
    let news = agent
        .status
        .conditions
        .iter()
        .all(|c| c.kind != "Ready" || c.reason != reason);
    if news {
        let mut note = Decisions::default();
        if reason == "PullingImage" {
            note.normal(reason, message.to_string());
        } else {
            note.warning(reason, message.to_string());
        }
        note.record(ctx, Some(r));
    }
    ctx.store.update_status(
        &agent.metadata.name,
        agent.metadata.uid.unwrap_or_default(),
        status,
        r.internal.clone(),
    )?;
    Ok(news)
}

/// Records why a pass failed, then hands the error to the runtime for a retry.
fn fail(
    ctx: &Context,
    record: Option<&Record>,
    e: OrchestratorError,
) -> Result<(), ReconcileError> {
    if let Some(r) = record {
        write_failure(ctx, r, &e.to_string(), e.is_transient())?;
    }
    Err(e.into())
}

/// A transient failure keeps the phase and says why in the message; any other makes the
/// agent Failed.
fn write_failure(
    ctx: &Context,
    r: &Record,
    message: &str,
    transient: bool,
) -> Result<(), ReconcileError> {
    let agent = &r.agent;
    warn!(error = %message, "reconcile failed");
    let mut status = agent.status.clone();
    if !transient && !agent.is_terminating() {
        status.phase = Phase::Failed;
        status.observed_generation = agent.metadata.generation;
    }
    status.message = Some(message.to_string());
    let status = with_conditions(&agent.status.conditions, status, None);
    if agent.status.message.as_deref() != Some(message) {
        let mut note = Decisions::default();
        note.warning("Failed", message.to_string());
        note.record(ctx, Some(r));
    }
    ctx.store.update_status(
        &agent.metadata.name,
        agent.metadata.uid.unwrap_or_default(),
        status,
        r.internal.clone(),
    )?;
    Ok(())
}

/// Sets Ready (running the current generation) and Progressing (still on its way: the
/// engine has yet to run it) from the rest of the status. Both follow from the phase, so a
/// settled agent's status does not change again. `reason` names why it is not ready
/// when the phase alone does not say.
fn with_conditions(
    previous: &[Condition],
    mut status: AgentStatus,
    reason: Option<&str>,
) -> AgentStatus {
    let phase = format!("{:?}", status.phase);
    let ready = status.phase == Phase::Running && status.message.is_none();
    let progressing = status.phase == Phase::Pending;
    status.conditions = vec![
        Condition::set(
            previous,
            "Ready",
            ready,
            if ready {
                "Running"
            } else {
                reason.unwrap_or(&phase)
            },
            status.message.clone(),
        ),
        Condition::set(
            previous,
            "Progressing",
            progressing,
            if progressing {
                "Reconciling"
            } else {
                "Converged"
            },
            None,
        ),
    ];
    status
}

/// The short form of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
