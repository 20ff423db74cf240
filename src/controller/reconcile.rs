//! One reconcile pass for one agent: read the record, decide the [`Workload`] it asks for,
//! have the backend apply it, and write the status. Level-based and idempotent: it
//! neither knows nor cares why it was called. It returns an [`Action`] (when to look
//! again); what happens after an error is the runtime's `error_policy`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info;

use super::churn;
use super::events::{Events, Reason};
use super::plan::with_conditions;
use super::pulls::{PullStatus, Pulls};
use super::status::{self, Deadline};
use super::workload::workload;
use crate::agent::{ConditionType, Phase};
use crate::orchestrator::{
    CreateGate, Orchestrator, OrchestratorError, Ownership, RemoveReason, Workload,
};
use crate::store::{CpuReading, Record, Store, StoreError};

/// What a reconcile needs.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<Store>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The admission policy, for what only the resolved workload shows (the environment
    /// its secrets give it).
    pub policy: Arc<crate::policy::Policy>,
    /// Which workloads are this store's.
    pub ownership: Ownership,
    /// The storm guard's create histories.
    pub churn: Arc<Mutex<churn::Guard>>,
    /// Image pulls, run apart from the passes.
    pub pulls: Arc<Pulls>,
}

/// When to look at the agent again after a pass that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// After this long, whatever happens (a `spec.ttl` running out, a backoff ending).
    Requeue(Duration),
    /// Only when something changes: a write, an engine event, a resync.
    AwaitChange,
}

/// Why a pass did not finish; the runtime's `error_policy` decides when to try again.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    /// The pass panicked: a bug in Hive, recorded on the agent it was for.
    #[error("the pass failed unexpectedly (a bug in Hive): {0}")]
    Panicked(String),
}

/// The text a panic carried (its message, never a backtrace).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    crate::agent::clip(&text, 200)
}

/// Records a pass that panicked on its agent (Failed, with an event), and returns the
/// error the runtime backs off from.
pub fn panicked(name: &str, ctx: &Context, panic: &(dyn std::any::Any + Send)) -> ReconcileError {
    let e = ReconcileError::Panicked(panic_message(panic));
    tracing::error!(agent = %name, error = %e, "a reconcile pass panicked");
    if let Ok(Some(record)) = ctx.store.get(name) {
        if let Err(write) = write_failure(ctx, &record, &e.to_string(), Failure::Lasting) {
            tracing::error!(agent = %name, error = %write, "could not record the failure");
        }
    }
    e
}

/// Converges one agent: its deadlines first (an expired agent is deleted, an idle one
/// checked), then its workload applied by the backend, then what that means written.
pub async fn reconcile(name: &str, ctx: &Context) -> Result<Action, ReconcileError> {
    let Some(mut record) = ctx.store.get(name)? else {
        remove_orphans(name, ctx).await?;
        return Ok(Action::AwaitChange);
    };
    tracing::Span::current().record("generation", record.agent.metadata.generation);
    if record.agent.is_terminating() {
        return finish_deletion(record, ctx).await;
    }
    let now = time::OffsetDateTime::now_utc();
    let (due, mut requeue) = status::deadlines(&record, now);
    match due {
        Deadline::Expired(why) => return expire(record, ctx, why).await,
        Deadline::IdleCheck => {
            if let Some(again) = idle_check(ctx, &record).await? {
                requeue = status::sooner(requeue, again);
            }
            let Some(fresh) = ctx.store.get(name)? else {
                return Ok(Action::AwaitChange);
            };
            record = fresh;
        }
        Deadline::None => {}
    }
    // An agent stopped for idleness runs as Stopped until something wakes it.
    let effective = record.effective().into_owned();
    let want = match workload(&effective, &ctx.store, &ctx.policy) {
        Ok(w) => w,
        // A missing secret, or one grown past the env limits: writing the secret wakes
        // the agent again.
        Err(invalid) => {
            write_failure(ctx, &record, &invalid.to_string(), Failure::Lasting)?;
            return Ok(requeue);
        }
    };
    let gate = ChurnGate::new(ctx, &want);
    match ctx.orchestrator.apply(&want, &ctx.ownership, &gate).await {
        Ok(applied) => {
            let after = status::status_after(&record, &effective, &applied, now, requeue);
            write_after(ctx, &record, after).await
        }
        Err(OrchestratorError::ImageMissing { image }) => {
            wait_for_image(ctx, &record, image).map(|()| requeue)
        }
        Err(OrchestratorError::CreateDeferred) => held_back(ctx, &record, &gate),
        Err(e) => fail(ctx, &record, e),
    }
}

/// The agent's image must be pulled first: asks for the pull (which wakes the agent when
/// it ends) and says so, or fails the agent with the last pull's answer.
fn wait_for_image(ctx: &Context, record: &Record, image: String) -> Result<(), ReconcileError> {
    let owner = record.agent.metadata.owner.as_deref().unwrap_or_default();
    let name = &record.agent.metadata.name;
    let message = match ctx.pulls.request(&image, owner, name) {
        PullStatus::Failed(detail) => {
            let e = OrchestratorError::ImageNotFound { image, detail };
            return fail(ctx, record, e).map(|_| ());
        }
        PullStatus::Pulling => format!("pulling image {image}"),
        PullStatus::Queued => format!(
            "waiting to pull image {image}: its owner's (or the engine's) pull slots are taken"
        ),
    };
    write_waiting(ctx, record, &message, Reason::PullingImage)?;
    Ok(())
}

/// The storm guard held the agent's create back: says why, and looks again when it may.
fn held_back(ctx: &Context, record: &Record, gate: &ChurnGate) -> Result<Action, ReconcileError> {
    let throttled = gate
        .refusal()
        .expect("the gate said why it held the create back");
    let reason = if throttled.vanishing {
        Reason::ContainerChurn
    } else {
        Reason::CreateRateLimited
    };
    if write_waiting(ctx, record, &throttled.message, reason)? {
        ctx.metrics.create_backoffs.inc();
    }
    Ok(Action::Requeue(throttled.wait))
}

/// Deletes an agent whose deadline ran out, as a DELETE would, saying why.
async fn expire(record: Record, ctx: &Context, why: String) -> Result<Action, ReconcileError> {
    let mut events = Events::default();
    events.note(Reason::Expired, why);
    events.record(ctx, Some(&record));
    let record = ctx.store.mark_deleted(&record.agent.metadata.name)?;
    finish_deletion(record, ctx).await
}

/// Writes what a pass decided: its events, the status, and the idle check's baseline.
async fn write_after(
    ctx: &Context,
    record: &Record,
    after: status::After,
) -> Result<Action, ReconcileError> {
    let agent = &record.agent;
    let uid = agent.metadata.uid.unwrap_or_default();
    after.events.record(ctx, Some(record));
    ctx.store
        .update_status(&agent.metadata.name, uid, after.status, after.internal)?;
    if let Some(id) = after.baseline {
        if let Ok(Some(cpu)) = ctx.orchestrator.cpu_time(&id).await {
            ctx.store
                .record_cpu(&agent.metadata.name, uid, &id, cpu, CpuReading::Baseline)?;
        }
    }
    Ok(after.requeue)
}

/// CPU time a container must have used since the last look to count as working: 20 ms
/// (more than an init's housekeeping, less than any real work), or 0.1% of the timeout if
/// that is more, so that a background loop does not keep an agent with a long timeout
/// awake forever.
fn work_threshold(timeout: Duration) -> u64 {
    20_000_000u128.max(timeout.as_nanos() / 1000) as u64
}

/// The idle deadline passed with no write, action or touch: one read of the container's
/// CPU time says whether it worked on its own since the last look (an agent busy with
/// outbound calls is not idle). Worked: the clock starts again (the wait until the next
/// deadline is returned). Did not: the agent is marked idle, and the pass stops it.
async fn idle_check(ctx: &Context, record: &Record) -> Result<Option<Duration>, ReconcileError> {
    let name = &record.agent.metadata.name;
    let uid = record.agent.metadata.uid.unwrap_or_default();
    let timeout = record
        .agent
        .spec
        .lifecycle
        .idle_timeout()
        .unwrap_or_default();
    let reading = match record.agent.status.container_id.as_deref() {
        // Best effort: an engine that does not answer now must not fail the pass.
        Some(id) => ctx
            .orchestrator
            .cpu_time(id)
            .await
            .ok()
            .flatten()
            .map(|cpu| (id, cpu)),
        None => None,
    };
    let Some((id, cpu)) = reading else {
        // Nothing to read (it is not running after all, or the engine did not say): no
        // proof of idleness; look again at the next deadline.
        return Ok(Some(timeout));
    };
    let seen = match &record.internal.cpu_seen {
        Some((container, ns)) if container == id => Some(*ns),
        _ => None,
    };
    // Idle only if the counter is where it was (give or take an init's housekeeping).
    let idle =
        seen.is_some_and(|ns| cpu >= ns && cpu <= ns.saturating_add(work_threshold(timeout)));
    if !idle {
        // It worked; or it was never read, or restarted since (the counter went back):
        // then this reading is the new baseline.
        let reading = if seen.is_some_and(|ns| cpu > ns) {
            CpuReading::Worked
        } else {
            CpuReading::Baseline
        };
        ctx.store.record_cpu(name, uid, id, cpu, reading)?;
        return Ok(Some(timeout));
    }
    if ctx
        .store
        .mark_idle(name, uid, record.internal.last_activity)?
    {
        ctx.metrics.idled.inc();
        let mut events = Events::default();
        events.note(
            Reason::Idled,
            format!(
                "no activity for {} (spec.lifecycle.idleTimeout): stopping it, its volumes kept; start or touch it to resume",
                record.agent.spec.lifecycle.idle_timeout.as_ref().map(ToString::to_string).unwrap_or_default()
            ),
        );
        events.record(ctx, Some(record));
    }
    Ok(None)
}

/// The storm guard, asked by the backend right before it makes a workload.
struct ChurnGate<'a> {
    guard: &'a Mutex<churn::Guard>,
    agent: &'a str,
    /// What the create would be for: the agent's uid and spec hash.
    what: String,
    refusal: Mutex<Option<churn::Throttled>>,
}

impl<'a> ChurnGate<'a> {
    fn new(ctx: &'a Context, want: &'a Workload) -> Self {
        ChurnGate {
            guard: &ctx.churn,
            agent: &want.agent,
            what: format!("{}/{}", want.uid, want.hash()),
            refusal: Mutex::new(None),
        }
    }

    fn refusal(&self) -> Option<churn::Throttled> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl CreateGate for ChurnGate<'_> {
    fn may_create(&self) -> bool {
        let verdict = self.guard.lock().unwrap_or_else(|p| p.into_inner()).admit(
            self.agent,
            &self.what,
            Instant::now(),
        );
        match verdict {
            Ok(()) => true,
            Err(t) => {
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
                false
            }
        }
    }

    fn created(&self) {
        self.guard.lock().unwrap_or_else(|p| p.into_inner()).record(
            self.agent,
            &self.what,
            Instant::now(),
        );
    }
}

/// Removes this store's workloads of an agent that has no record.
async fn remove_orphans(name: &str, ctx: &Context) -> Result<(), ReconcileError> {
    let ids: Vec<String> = ctx
        .orchestrator
        .observe(name)
        .await?
        .into_iter()
        .filter(|w| ctx.ownership.owns(w, None))
        .map(|w| w.id)
        .collect();
    if !ids.is_empty() {
        let done = ctx.orchestrator.remove(&ids, RemoveReason::NoAgent).await?;
        let mut events = Events::default();
        events.note_done(&done, 0);
    }
    Ok(())
}

/// Removes a deleted agent's workloads and volumes, then its record.
async fn finish_deletion(record: Record, ctx: &Context) -> Result<Action, ReconcileError> {
    let agent = &record.agent;
    let name = agent.metadata.name.as_str();
    let uid = agent.metadata.uid.unwrap_or_default();
    let result = async {
        let ids: Vec<String> = ctx
            .orchestrator
            .observe(name)
            .await?
            .into_iter()
            .filter(|w| ctx.ownership.owns(w, Some(&uid.to_string())))
            .map(|w| w.id)
            .collect();
        let done = ctx
            .orchestrator
            .remove(&ids, RemoveReason::AgentDeleted)
            .await?;
        ctx.orchestrator.remove_volumes(name, uid).await?;
        Ok::<_, OrchestratorError>(done)
    }
    .await;
    match result {
        Ok(done) => {
            let mut events = Events::default();
            events.note_done(&done, agent.metadata.generation);
            ctx.store.remove(name, uid)?;
            ctx.churn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget(name);
            info!("agent deleted; its record is removed");
            Ok(Action::AwaitChange)
        }
        Err(e) => fail(ctx, &record, e),
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

/// Writes the status of an agent that waits for something (Pending, not Ready for
/// `reason`), with an event the first time. Returns whether that was news.
fn write_waiting(
    ctx: &Context,
    r: &Record,
    message: &str,
    reason: Reason,
) -> Result<bool, ReconcileError> {
    let agent = &r.agent;
    let mut status = agent.status.clone();
    status.phase = Phase::Pending;
    status.observed_generation = agent.metadata.generation;
    status.container_id = None;
    status.message = Some(message.to_string());
    let status = with_conditions(&agent.status.conditions, status, Some(reason.as_str()));
    let news = agent
        .status
        .conditions
        .iter()
        .all(|c| c.kind != ConditionType::Ready || c.reason != reason.as_str());
    if news {
        let mut events = Events::default();
        events.note(reason, message);
        events.record(ctx, Some(r));
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
fn fail(ctx: &Context, record: &Record, e: OrchestratorError) -> Result<Action, ReconcileError> {
    let failure = if e.is_transient() {
        Failure::Transient
    } else {
        Failure::Lasting
    };
    write_failure(ctx, record, &e.to_string(), failure)?;
    Err(e.into())
}

/// How a failure of a pass shows in the agent's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Likely to pass by itself (the engine busy or away): the phase stays, the message
    /// says why.
    Transient,
    /// Needs a change (a bad spec, a missing image or secret): the agent is Failed.
    Lasting,
}

/// Writes why a pass failed into the agent's status (and an event when the reason is new).
fn write_failure(
    ctx: &Context,
    r: &Record,
    message: &str,
    failure: Failure,
) -> Result<(), ReconcileError> {
    let agent = &r.agent;
    tracing::warn!(error = %message, "reconcile failed");
    let mut status = agent.status.clone();
    if failure == Failure::Lasting && !agent.is_terminating() {
        status.phase = Phase::Failed;
        status.observed_generation = agent.metadata.generation;
    }
    status.message = Some(message.to_string());
    let status = with_conditions(&agent.status.conditions, status, None);
    if agent.status.message.as_deref() != Some(message) {
        let mut events = Events::default();
        events.note(Reason::Failed, message);
        events.record(ctx, Some(r));
    }
    ctx.store.update_status(
        &agent.metadata.name,
        agent.metadata.uid.unwrap_or_default(),
        status,
        r.internal.clone(),
    )?;
    Ok(())
}
