//! One reconcile pass for one agent: read the record and the agent's containers,
//! [`plan`], carry the plan out, and write the status. Level-based and idempotent: it
//! neither knows nor cares why it was called.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::plan::{plan, ContainerAction, Plan};
use crate::agent::{AgentStatus, Phase};
use crate::orchestrator::{Orchestrator, OrchestratorError};
use crate::store::{Record, Store, StoreError};

/// What a reconcile needs.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<Store>,
    pub orchestrator: Arc<dyn Orchestrator>,
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
            info!("spec.ttl ran out; deleting the agent");
            ctx.store.mark_deleted(name)?;
            record = ctx.store.get(name)?;
        }
    }
    let live = record.as_ref().filter(|r| !r.agent.is_terminating());
    let spec = match live.map(|r| ctx.store.container_spec(&r.agent)).transpose() {
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
    let containers = match ctx.orchestrator.list_agent(name).await {
        Ok(c) => c,
        Err(e) => return fail(ctx, record.as_ref(), e).map(|()| None),
    };
    let plan = plan(record.as_ref(), &hash, &containers);
    match execute(ctx, record.as_ref(), spec.as_ref(), &plan).await {
        Ok(created) => finish(ctx, record, plan, created).map(|()| requeue),
        Err(e) => fail(ctx, record.as_ref(), e).map(|()| None),
    }
}

/// Carries out the plan's engine steps; returns the id of a container it created.
async fn execute(
    ctx: &Context,
    record: Option<&Record>,
    spec: Option<&crate::orchestrator::ContainerSpec>,
    plan: &Plan,
) -> Result<Option<String>, OrchestratorError> {
    let o = &ctx.orchestrator;
    let generation = record.map_or(0, |r| r.agent.metadata.generation);
    for (id, reason) in &plan.remove {
        info!(container = %short(id), reason, "removing container");
        o.remove(id).await?;
    }
    if plan.delete_record {
        if let Some(r) = record {
            ctx.orchestrator
                .remove_volumes(&r.agent.metadata.name)
                .await?;
        }
    }
    let mut created = None;
    match &plan.action {
        None => {}
        Some(ContainerAction::Create { start }) => {
            let spec = spec.expect("a create comes with a record");
            let id = o.create(spec).await?;
            info!(container = %short(&id), generation, "created container");
            created = Some(id.clone());
            if *start {
                o.start(&id).await?;
                info!(container = %short(&id), "started container");
            }
        }
        Some(ContainerAction::Start { id, repair }) => {
            o.start(id).await?;
            if *repair {
                info!(container = %short(id), "restarted a container that had stopped outside Hive");
            } else {
                info!(container = %short(id), "started container");
            }
        }
        Some(ContainerAction::Stop { id }) => {
            o.stop(id).await?;
            info!(container = %short(id), "stopped container");
        }
        Some(ContainerAction::Restart { id }) => {
            o.restart(id).await?;
            info!(container = %short(id), "restarted container as asked");
        }
        Some(ContainerAction::Unpause { id }) => {
            o.unpause(id).await?;
            info!(container = %short(id), "resumed a container paused outside Hive");
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
    };
    ctx.store
        .update_status(&agent.metadata.name, uid, status, internal)?;
    Ok(())
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
    ctx.store.update_status(
        &agent.metadata.name,
        agent.metadata.uid.unwrap_or_default(),
        status,
        r.internal.clone(),
    )?;
    Ok(())
}

/// The short form of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
