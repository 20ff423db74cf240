//! The controller: a runtime that decides *when* to reconcile which agent, apart from
//! [`reconcile`] (what one pass does: it returns an [`Action`]), [`plan`] (the pure
//! decisions inside it) and [`workload`] (what an agent asks a backend to run). After a
//! failed pass, [`error_policy`] decides the backoff by the kind of error. Metrics and the
//! BackOff events are recorded here, in one place; the pass records what it decided.
//!
//! Three sources wake it: store writes (through [`Handle::enqueue`]), the engine's event
//! stream for this instance's containers, and a periodic resync that compares the whole
//! store with one listing of the engine and queues only the agents that need work. The
//! runtime runs at most `max_concurrent` passes at once and never two for one agent, and
//! none at all while this Hive does not hold its instance's lease ([`crate::lease`]).
//!
//! Only containers this store declared are the controller's: containers of the instance
//! that another store stamped are reported ([`Handle::foreign`]) and left alone, unless
//! `adopt_foreign` says to take them over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::lease::Leadership;
use crate::orchestrator::{Observed, Orchestrator, OrchestratorError, Ownership};
use crate::store::Store;

pub mod churn;
pub mod events;
pub mod plan;
pub mod pulls;
pub mod queue;
pub mod reconcile;
pub mod status;
pub mod workload;

pub use reconcile::{reconcile, Action, Context, ReconcileError};

use queue::Queue;

/// How the runtime paces itself.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Time between full resyncs.
    pub resync_interval: Duration,
    /// Reconciles allowed in flight at once.
    pub max_concurrent: usize,
    /// Treat containers of this instance from other stores as this store's own.
    pub adopt_foreign: bool,
    /// How long passes in flight may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
}

/// A container of this instance that another store declared.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForeignContainer {
    pub id: String,
    pub agent: String,
    /// The store that declared it ("unknown" for a container without a store stamp).
    pub store: String,
}

/// What the rest of Hive holds to wake the controller and to read what it found.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<String>,
    resync: Arc<Notify>,
    /// Containers of this instance from other stores, as of the last resync.
    foreign: Arc<std::sync::Mutex<Vec<ForeignContainer>>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The next resync looks at every agent (after the engine came back).
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl Handle {
    /// Counts an idle agent woken by a client.
    pub fn resumed(&self) {
        self.metrics.resumed.inc();
    }

    /// Asks for a reconcile of one agent.
    pub fn enqueue(&self, name: &str) {
        // Fails only once the runtime has stopped, when there is nothing left to wake.
        let _ = self.tx.send(name.to_string());
    }

    /// Asks for a full resync now.
    pub fn resync(&self) {
        self.resync.notify_one();
    }

    /// Asks for a resync that passes every agent once, whatever its status says: after
    /// the engine was away, statuses that tell of the outage are refreshed too.
    pub fn resync_all(&self) {
        self.full.store(true, std::sync::atomic::Ordering::SeqCst);
        self.resync.notify_one();
    }

    /// Containers of this instance that another store declared (left alone).
    pub fn foreign(&self) -> Vec<ForeignContainer> {
        self.foreign
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The controller runtime, ready to run.
pub struct Controller {
    ctx: Context,
    settings: Settings,
    handle: Handle,
    rx: mpsc::UnboundedReceiver<String>,
}

impl Controller {
    pub fn new(
        store: Arc<Store>,
        orchestrator: Arc<dyn Orchestrator>,
        metrics: Arc<crate::metrics::Metrics>,
        policy: Arc<crate::policy::Policy>,
        resolver: Arc<crate::resolve::Resolver>,
        settings: Settings,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle_metrics = metrics.clone();
        Controller {
            ctx: Context {
                ownership: Ownership {
                    store: store.id().to_string(),
                    adopt_foreign: settings.adopt_foreign,
                },
                store,
                pulls: Arc::new(pulls::Pulls::new(
                    orchestrator.clone(),
                    tx.clone(),
                    policy.clone(),
                    resolver,
                )),
                orchestrator,
                metrics,
                policy,
                churn: Default::default(),
            },
            settings,
            handle: Handle {
                tx,
                resync: Arc::new(Notify::new()),
                foreign: Default::default(),
                metrics: handle_metrics,
                full: Default::default(),
            },
            rx,
        }
    }

    /// A handle for waking this controller.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs until `shutdown` fires, then lets the passes in flight finish (for at most
    /// the shutdown grace). Passes start only while `leadership` says this Hive leads.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        mut leadership: watch::Receiver<Leadership>,
    ) {
        let Controller {
            ctx,
            settings,
            handle,
            mut rx,
        } = self;
        let mut background = JoinSet::new();
        background.spawn(
            resync_loop(
                ctx.clone(),
                handle.clone(),
                settings.resync_interval,
                leadership.clone(),
                shutdown.clone(),
            )
            .in_current_span(),
        );
        background.spawn(
            event_loop(ctx.orchestrator.clone(), handle.clone(), shutdown.clone())
                .in_current_span(),
        );

        let mut queue = Queue::default();
        let mut passes: JoinSet<(String, Result<Action, Backoff>)> = JoinSet::new();
        let mut leading = leadership.borrow().is_leading();
        ctx.metrics.leader.set(i64::from(leading));
        let mut electing = true;
        loop {
            while leading && passes.len() < settings.max_concurrent.max(1) {
                let Some(name) = queue.pop() else { break };
                let ctx = ctx.clone();
                let span = tracing::info_span!(
                    "reconcile",
                    agent = %name,
                    generation = tracing::field::Empty
                );
                passes.spawn(
                    async move {
                        let start = std::time::Instant::now();
                        // A panic in one agent's pass is that agent's failure: it is
                        // recorded on the agent, and the agent backs off like any other
                        // failure, its place in the queue given back.
                        let pass = std::panic::AssertUnwindSafe(reconcile(&name, &ctx));
                        let result = match pass.catch_unwind().await {
                            Ok(result) => result,
                            Err(panic) => Err(reconcile::panicked(&name, &ctx, &*panic)),
                        };
                        observe_pass(&ctx, start.elapsed(), result.as_ref().err());
                        (name, result.map_err(|e| error_policy(&e)))
                    }
                    .instrument(span),
                );
            }
            if !leading {
                // Nothing reaches the engine; the agents' statuses say why.
                let reason = leadership_reason(&leadership.borrow());
                while let Some(name) = queue.pop() {
                    if let Err(e) = reconcile::explain_waiting(&name, &ctx, &reason) {
                        warn!(agent = %name, error = %e, "could not write a status");
                    }
                    queue.finish(&name, None);
                }
            }
            ctx.metrics.queue_depth.set(queue.len() as i64);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = leadership.changed(), if electing => {
                    if changed.is_err() {
                        // The election is gone: nothing may be reconciled any more.
                        electing = false;
                        leading = false;
                        continue;
                    }
                    let now = leadership.borrow().is_leading();
                    ctx.metrics.leader.set(i64::from(now));
                    if now && !leading {
                        info!("holding the instance's lease: reconciling");
                        // Agents queued while this loop still thought it a standby were
                        // only explained, not reconciled: look at every one again now.
                        handle.resync();
                    } else if !now && leading {
                        warn!("not holding the instance's lease: reconciling paused");
                    }
                    leading = now;
                }
                Some(name) = rx.recv() => queue.push(name),
                () = queue.next_retry() => {}
                Some(done) = passes.join_next() => match done {
                    Ok((name, Ok(action))) => {
                        queue.finish(&name, None);
                        if let Action::Requeue(after) = action {
                            queue.push_after(name, after);
                        }
                    }
                    Ok((name, Err(backoff))) => {
                        // Said only when a retry waits for the backoff: one asked for
                        // again meanwhile runs at once.
                        if let Some(delay) = queue.finish(&name, Some(backoff)) {
                            debug!(agent = %name, ?delay, "retrying after backoff");
                            back_off(&ctx, &name, delay);
                        }
                    }
                    Err(e) => warn!(error = %e, "a reconcile task panicked"),
                },
            }
        }
        info!(
            in_flight = passes.len(),
            "controller stopping; finishing reconciles in flight"
        );
        let drain = async { while passes.join_next().await.is_some() {} };
        if tokio::time::timeout(settings.shutdown_grace, drain)
            .await
            .is_err()
        {
            warn!(
                grace = ?settings.shutdown_grace,
                in_flight = passes.len(),
                "abandoning reconciles still waiting for the engine; the next start picks them up"
            );
            passes.abort_all();
            while passes.join_next().await.is_some() {}
        }
        background.shutdown().await;
    }
}

/// Why this Hive does not reconcile now, for agents' statuses.
fn leadership_reason(l: &Leadership) -> String {
    match l {
        Leadership::Leading { .. } => String::new(),
        Leadership::Unknown { reason } => reason.clone(),
        Leadership::Standby { holder } => format!(
            "another Hive holds this instance ({}); this one is a standby",
            holder.holder
        ),
    }
}

/// How soon a failed pass is tried again, by what failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// The engine did not answer, or something changed under the pass: try again soon
    /// (0.5 s doubling to 30 s).
    Transient,
    /// The agent cannot run as declared (a bad image, a name or volume in use, a broken
    /// store record): a change of its spec wakes it anyway, so wait longer (5 s doubling to
    /// 5 min).
    Persistent,
}

/// Decides the backoff of a failed pass by the kind of its error.
pub fn error_policy(e: &ReconcileError) -> Backoff {
    match e {
        ReconcileError::Orchestrator(e) if e.is_transient() => Backoff::Transient,
        ReconcileError::Orchestrator(OrchestratorError::LeaseConflict(_)) => Backoff::Transient,
        ReconcileError::Store(crate::store::StoreError::Flush(_)) => Backoff::Transient,
        _ => Backoff::Persistent,
    }
}

/// Records a pass in the metrics.
fn observe_pass(ctx: &Context, took: Duration, error: Option<&ReconcileError>) {
    let m = &ctx.metrics;
    m.reconcile_seconds.observe(took.as_secs_f64());
    let label = crate::metrics::ResultLabel {
        result: if error.is_none() { "ok" } else { "error" },
    };
    m.reconciles.get_or_create(&label).inc();
    if let Some(e) = error {
        debug!(error = %e, "reconcile failed; will retry");
        if let ReconcileError::Orchestrator(e) = e {
            let kind = crate::metrics::KindLabel { kind: e.kind() };
            m.engine_errors.get_or_create(&kind).inc();
        }
    }
}

/// Notes a retry's delay in the agent's events.
fn back_off(ctx: &Context, name: &str, delay: Duration) {
    let Ok(Some(r)) = ctx.store.get(name) else {
        return;
    };
    let mut events = events::Events::default();
    events.note(
        events::Reason::BackOff,
        format!("retrying in {}", humantime::format_duration(delay)),
    );
    events.record(ctx, Some(&r));
}

/// Every `interval` (or when asked), compares the store with one listing of the engine
/// and queues the agents whose plan has work or whose status would change. The first
/// pass after this Hive comes to lead queues everything, so a restarted Hive (or one that
/// takes over) refreshes every status. Nothing is listed while it does not lead.
async fn resync_loop(
    ctx: Context,
    handle: Handle,
    interval: Duration,
    mut leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    let mut first = true;
    loop {
        if leadership.borrow().is_leading() {
            let everything = first || handle.full.swap(false, std::sync::atomic::Ordering::SeqCst);
            let resync = std::panic::AssertUnwindSafe(resync_once(&ctx, everything))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(ReconcileError::Panicked(reconcile::panic_message(&*panic)))
                });
            match resync {
                Ok(resync) => {
                    let queued = resync.names.len();
                    report_foreign(&ctx, &handle, resync.foreign);
                    for name in resync.names {
                        handle.enqueue(&name);
                    }
                    if first {
                        let agents = ctx.store.snapshot().agents.len();
                        info!(agents, queued, "first resync done");
                    } else {
                        debug!(queued, "resync");
                    }
                    first = false;
                }
                Err(e) => warn!(error = %e, "resync failed; will try again"),
            }
        } else {
            first = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = handle.resync.notified() => {}
            changed = leadership.changed() => if changed.is_err() { return },
        }
    }
}

/// Publishes the containers of other stores, with one log line when they change.
fn report_foreign(ctx: &Context, handle: &Handle, mut found: Vec<ForeignContainer>) {
    found.sort_by(|a, b| a.id.cmp(&b.id));
    ctx.metrics.foreign_containers.set(found.len() as i64);
    let mut known = handle.foreign.lock().unwrap_or_else(|p| p.into_inner());
    if *known == found {
        return;
    }
    if !found.is_empty() {
        let stores: BTreeSet<&str> = found.iter().map(|f| f.store.as_str()).collect();
        let agents: BTreeSet<&str> = found.iter().map(|f| f.agent.as_str()).collect();
        warn!(
            containers = found.len(),
            stores = ?stores,
            agents = ?agents,
            "containers of this instance belong to another store: they are left alone (start \
             the Hive of that store, or this one with --adopt-foreign to take them over)"
        );
    }
    *known = found;
}

/// What one resync found.
struct Resync {
    /// The agents to queue.
    names: BTreeSet<String>,
    /// Containers of other stores.
    foreign: Vec<ForeignContainer>,
}

/// The names one resync must queue, and the other stores' containers it saw.
async fn resync_once(ctx: &Context, everything: bool) -> Result<Resync, ReconcileError> {
    // Read in place: a resync copies no record.
    let snapshot = ctx.store.snapshot();
    let records: Vec<&crate::store::Record> = snapshot.agents.values().map(|e| &e.record).collect();
    let listed = ctx.orchestrator.list().await?;
    // The uid of the agent a listed workload names (looked up for what is listed only).
    let uid_of = |agent: &str| {
        snapshot
            .agents
            .get(agent)
            .and_then(|e| e.record.agent.metadata.uid)
            .map(|u| u.to_string())
    };
    let mut by_agent: BTreeMap<&str, Vec<Observed>> = BTreeMap::new();
    let mut foreign = Vec::new();
    for w in &listed {
        if ctx.ownership.owns(w, uid_of(&w.agent).as_deref()) {
            by_agent
                .entry(w.agent.as_str())
                .or_default()
                .push(w.clone());
        } else {
            foreign.push(ForeignContainer {
                id: w.id.clone(),
                agent: w.agent.clone(),
                store: w.store.clone().unwrap_or_else(|| "unknown".into()),
            });
        }
    }
    let mut names = BTreeSet::new();
    for r in records {
        let name = r.agent.metadata.name.as_str();
        let mine = by_agent.remove(name).unwrap_or_default();
        // The hash of what it asks to run, made only when needed (None: nothing can run;
        // a pass said why).
        let hash = || {
            workload::workload(r, &ctx.store, &ctx.policy)
                .ok()
                .map(|w| w.hash())
        };
        if everything || plan::needs_pass(r, hash, &mine) {
            names.insert(name.to_string());
        }
    }
    // What is left has no record: this store's orphans, to remove.
    names.extend(by_agent.into_keys().map(str::to_string));
    Ok(Resync { names, foreign })
}

/// Follows the engine's events for this instance and queues the agents they name. When
/// the stream breaks it waits (with backoff) for the engine to answer again, then
/// resubscribes and asks for a resync, since events may have been missed meanwhile.
async fn event_loop(
    orchestrator: Arc<dyn Orchestrator>,
    handle: Handle,
    shutdown: CancellationToken,
) {
    let mut reconnected = false;
    // Streams in a row that broke within a minute of opening: each waits longer before
    // subscribing again (a watch the backend refuses while it answers pings would
    // otherwise resubscribe, and resync everything, twice a second). A stream that lived
    // longer starts the count again, so a blip after a long outage waits 0.5 s, not 30.
    let mut quick_breaks = 0;
    loop {
        let mut events = orchestrator.events();
        let opened = std::time::Instant::now();
        if reconnected {
            info!("engine event stream resumed; resyncing every agent");
            handle.resync_all();
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = events.next() => match next {
                    Some(Ok(agent)) => handle.enqueue(&agent),
                    Some(Err(e)) => {
                        warn!(error = %e, "engine event stream failed");
                        break;
                    }
                    None => break,
                },
            }
        }
        quick_breaks = if opened.elapsed() < std::time::Duration::from_secs(60) {
            quick_breaks + 1
        } else {
            1
        };
        let mut failures = quick_breaks - 1;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(queue::backoff(failures)) => {}
            }
            failures += 1;
            if orchestrator.ping().await.is_ok() {
                break;
            }
        }
        reconnected = true;
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
