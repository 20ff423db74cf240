//! Leader election: at most one Hive reconciles an instance at a time.
//!
//! Modelled on Kubernetes leader election. The instance's [`Lease`] lives on the engine
//! itself (the backend keeps it; see `orchestrator::docker` for how), so it works across
//! hosts that share an engine. It names its holder (host, pid, data dir, store), when it
//! was acquired and last renewed, and how long it stays valid.
//!
//! - The holder renews it every third of its duration. If it cannot renew for two thirds
//!   of the duration (the engine does not answer), it stops reconciling until it can.
//! - A Hive that finds the lease held by a live holder does not reconcile: it exits with
//!   one line naming the instance and the holder, or, with `--standby`, waits (and
//!   answers 503 on `/readyz` saying who holds the instance) until the lease expires.
//! - A lease expires when it has not been renewed for its duration, as observed on this
//!   Hive's own clock (what client-go does, so clock skew between hosts cannot make a live
//!   lease look dead). A `kill -9`ed holder therefore loses it within one duration plus
//!   one poll.
//! - A Hive on the same store as the holder (the store is locked by one process at a
//!   time, so the holder is gone) takes the lease back at once.
//! - A Hive that stops cleanly gives the lease up, so another may take it at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::orchestrator::{Holder, Lease, LeaseStore, OrchestratorError};

/// Where this Hive stands with its instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Leadership {
    /// Not known: the engine has not answered yet. Nothing is reconciled meanwhile.
    Unknown { reason: String },
    /// This Hive holds the lease and reconciles.
    Leading { lease: Lease },
    /// Another Hive holds the instance; this one waits for the lease to expire.
    Standby { holder: Lease },
}

impl Leadership {
    pub fn is_leading(&self) -> bool {
        matches!(self, Leadership::Leading { .. })
    }
}

/// How the election runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The instance the lease is for (for messages).
    pub instance: String,
    /// How long a lease stays valid after a renewal.
    pub duration: Duration,
    /// Wait for a held instance instead of exiting.
    pub standby: bool,
}

impl Settings {
    /// Time between renewals.
    fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// A holder that could not renew for this long stops reconciling.
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// Time between looks at a lease held by another.
    fn poll_every(&self) -> Duration {
        (self.duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(3))
    }
}

/// Why this Hive must not run: another holds its instance.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "instance {instance:?} is held by another Hive ({holder}) since {since}; stop that one, \
     choose another --instance, or start this one with --standby to take over when it stops"
)]
pub struct InstanceHeld {
    pub instance: String,
    pub holder: Holder,
    /// When the holder took it (RFC 3339).
    pub since: String,
}

impl InstanceHeld {
    fn new(instance: &str, lease: &Lease) -> Self {
        InstanceHeld {
            instance: instance.to_string(),
            holder: lease.holder.clone(),
            since: rfc3339_ms(lease.acquired_ms),
        }
    }
}

/// What to do about the lease as it stands.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Take it, replacing this one (None: there is none).
    Take(Option<Lease>),
    /// It is ours: renew it.
    Renew(Lease),
    /// Someone else holds it; `live` when its renewal is recent by the clocks.
    Wait { lease: Lease, live: bool },
}

/// Tracks when the lease last changed, on this Hive's clock.
#[derive(Debug, Default)]
struct Observation {
    /// The lease's handle and renewal time when last seen, and when that was first seen.
    last: Option<(String, i64, Instant)>,
}

impl Observation {
    /// How long `lease` has stood unchanged, as far as this Hive has seen.
    fn unchanged_for(&mut self, lease: &Lease, now: Instant) -> Duration {
        match &self.last {
            Some((handle, renewed, since))
                if *handle == lease.handle && *renewed == lease.renewed_ms =>
            {
                now - *since
            }
            _ => {
                self.last = Some((lease.handle.clone(), lease.renewed_ms, now));
                Duration::ZERO
            }
        }
    }
}

/// The pure decision: what to do given the lease found, the time by the clocks
/// (`now_ms`) and how long it has stood unchanged here.
fn decide(me: &Holder, lease: Option<Lease>, now_ms: i64, unchanged: Duration) -> Decision {
    let Some(lease) = lease else {
        return Decision::Take(None);
    };
    if lease.holder.token == me.token {
        return Decision::Renew(lease);
    }
    // The store is locked by one process: a lease of our own store is a dead process's.
    if !lease.holder.store.is_empty() && lease.holder.store == me.store {
        return Decision::Take(Some(lease));
    }
    if unchanged > lease.duration {
        return Decision::Take(Some(lease));
    }
    let live = now_ms - lease.renewed_ms <= lease.duration.as_millis() as i64;
    Decision::Wait { lease, live }
}

/// Runs the election for one Hive.
pub struct Elector {
    backend: Arc<dyn LeaseStore>,
    me: Holder,
    settings: Settings,
    state: watch::Sender<Leadership>,
    observation: Observation,
    /// When the lease was last renewed (or taken) by this Hive.
    last_renewed: Option<Instant>,
}

impl Elector {
    pub fn new(
        backend: Arc<dyn LeaseStore>,
        me: Holder,
        settings: Settings,
    ) -> (Elector, watch::Receiver<Leadership>) {
        let (state, rx) = watch::channel(Leadership::Unknown {
            reason: "the lease has not been read yet".into(),
        });
        let elector = Elector {
            backend,
            me,
            settings,
            state,
            observation: Observation::default(),
            last_renewed: None,
        };
        (elector, rx)
    }

    /// The first look at start-up: takes the lease if it may. Returns an error when the
    /// instance is held by a live holder and this Hive is not a standby. A lease whose
    /// holder looks dead by the clocks is watched for up to its duration before it is
    /// taken; an engine that does not answer leaves the leadership unknown.
    pub async fn start(&mut self) -> Result<(), InstanceHeld> {
        loop {
            let waited = self.step().await;
            match (&*self.state.borrow(), waited) {
                (Leadership::Leading { .. } | Leadership::Unknown { .. }, _) => return Ok(()),
                (Leadership::Standby { holder }, OtherHolder::Live) if !self.settings.standby => {
                    return Err(InstanceHeld::new(&self.settings.instance, holder))
                }
                (Leadership::Standby { .. }, OtherHolder::Live) => return Ok(()),
                _ => {}
            }
            // A lease that looks stale: see whether it changes before taking it.
            tokio::time::sleep(self.settings.poll_every()).await;
        }
    }

    /// Keeps the lease (or waits for it) until `stop`; then gives it up. Sends on `fatal`
    /// when this Hive finds its instance held and is not a standby.
    pub async fn run(mut self, stop: CancellationToken, fatal: mpsc::Sender<InstanceHeld>) {
        loop {
            let pause = if self.state.borrow().is_leading() {
                self.settings.renew_every()
            } else {
                self.settings.poll_every()
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            let waited = self.step().await;
            if let (Leadership::Standby { holder }, OtherHolder::Live) =
                (&*self.state.borrow(), waited)
            {
                if !self.settings.standby {
                    let _ = fatal.try_send(InstanceHeld::new(&self.settings.instance, holder));
                }
            }
        }
        let held = match &*self.state.borrow() {
            Leadership::Leading { lease } => Some(lease.clone()),
            _ => None,
        };
        if let Some(lease) = held {
            match tokio::time::timeout(Duration::from_secs(3), self.backend.release_lease(&lease))
                .await
            {
                Ok(Ok(())) => info!(instance = %self.settings.instance, "gave up the lease"),
                Ok(Err(e)) => {
                    warn!(error = %e, "could not give up the lease; it expires on its own")
                }
                Err(_) => warn!("giving up the lease timed out; it expires on its own"),
            }
        }
    }

    /// One look at the lease, and what follows from it: what it found of another Hive
    /// holding it.
    async fn step(&mut self) -> OtherHolder {
        let leading = match &*self.state.borrow() {
            Leadership::Leading { lease } => Some(lease.clone()),
            _ => None,
        };
        if let Some(lease) = leading {
            return self.renew(lease).await;
        }
        let lease = match self.backend.read_lease().await {
            Ok(l) => l,
            Err(e) => {
                self.set(Leadership::Unknown {
                    reason: format!("the lease cannot be read: {e}"),
                });
                return OtherHolder::None;
            }
        };
        let unchanged = lease.as_ref().map_or(Duration::ZERO, |l| {
            self.observation.unchanged_for(l, Instant::now())
        });
        match decide(&self.me, lease, now_ms(), unchanged) {
            Decision::Renew(lease) => self.renew(lease).await,
            Decision::Take(current) => {
                self.take(current).await;
                OtherHolder::None
            }
            Decision::Wait { lease, live } => {
                if !live && !matches!(*self.state.borrow(), Leadership::Standby { .. }) {
                    info!(
                        instance = %self.settings.instance,
                        holder = %lease.holder,
                        "the instance's lease has not been renewed lately; watching it for up to {} before taking it",
                        humantime::format_duration(lease.duration)
                    );
                }
                self.set(Leadership::Standby { holder: lease });
                if live {
                    OtherHolder::Live
                } else {
                    OtherHolder::Stale
                }
            }
        }
    }

    async fn take(&mut self, current: Option<Lease>) {
        let previous = current.as_ref().map(|l| l.holder.clone());
        match self
            .backend
            .acquire_lease(&self.me, self.settings.duration, current.as_ref())
            .await
        {
            Ok(lease) => {
                match previous {
                    Some(p) => {
                        info!(instance = %self.settings.instance, previous = %p, "took over the instance's lease")
                    }
                    None => {
                        info!(instance = %self.settings.instance, "acquired the instance's lease")
                    }
                }
                self.last_renewed = Some(Instant::now());
                self.set(Leadership::Leading { lease });
            }
            // Someone else was faster; the next look sees who.
            Err(OrchestratorError::LeaseConflict(m)) => info!("{m}"),
            Err(e) => self.set(Leadership::Unknown {
                reason: format!("the lease cannot be taken: {e}"),
            }),
        }
    }

    async fn renew(&mut self, lease: Lease) -> OtherHolder {
        // A renewal may not outlast the renew deadline: a call hanging past it would keep
        // this Hive leading while another takes the expired lease (client-go bounds it
        // the same way).
        // Once leadership has ended, safety no longer needs the bound: a renewal then
        // gets the lease's duration, so that one slow engine does not keep it out for good.
        let left = self.last_renewed.map_or(Duration::ZERO, |t| {
            self.settings.renew_deadline().saturating_sub(t.elapsed())
        });
        let bound = if self.state.borrow().is_leading() {
            left
        } else {
            self.settings.duration
        };
        let renewed = tokio::time::timeout(bound, self.backend.renew_lease(&lease))
            .await
            .unwrap_or(Err(OrchestratorError::Timeout {
                call: "renew lease",
                secs: bound.as_secs(),
            }));
        match renewed {
            Ok(lease) => {
                self.last_renewed = Some(Instant::now());
                self.set(Leadership::Leading { lease });
                OtherHolder::None
            }
            // Taken, or the lease object is gone (removed by hand): no longer ours.
            Err(OrchestratorError::LeaseConflict(m) | OrchestratorError::NotFound(m)) => {
                warn!(instance = %self.settings.instance, "lost the lease: {m}");
                // The next look says who holds it now.
                self.set(Leadership::Unknown {
                    reason: format!("lost the lease: {m}"),
                });
                OtherHolder::None
            }
            Err(e) => {
                let overdue = self
                    .last_renewed
                    .is_none_or(|t| t.elapsed() > self.settings.renew_deadline());
                // Still leading until the deadline: the next renewal tries again.
                if overdue {
                    if self.state.borrow().is_leading() {
                        warn!(error = %e, "cannot renew the lease; reconciling stops until it is renewed");
                    }
                    self.set(Leadership::Unknown {
                        reason: format!("the lease cannot be renewed: {e}"),
                    });
                }
                OtherHolder::None
            }
        }
    }

    fn set(&self, next: Leadership) {
        self.state.send_if_modified(|now| {
            let changed = match (&*now, &next) {
                (Leadership::Leading { lease: a }, Leadership::Leading { lease: b }) => {
                    a.handle != b.handle || a.renewed_ms != b.renewed_ms
                }
                (a, b) => a != b,
            };
            *now = next;
            changed
        });
    }
}

/// This process, as a lease holder.
pub fn this_process(data_dir: &std::path::Path, store: &str) -> Holder {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let data_dir = std::fs::canonicalize(data_dir)
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .display()
        .to_string();
    Holder {
        token: uuid::Uuid::new_v4().simple().to_string(),
        host,
        pid: std::process::id(),
        data_dir,
        store: store.to_string(),
    }
}

/// What one look at the lease found of another Hive holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OtherHolder {
    /// None does (this Hive leads, took it, or cannot tell).
    None,
    /// Another Hive holds it and renews it.
    Live,
    /// Another Hive holds it but has not renewed it lately: it is watched, then taken.
    Stale,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Unix milliseconds as RFC 3339 (seconds precision).
pub fn rfc3339_ms(ms: i64) -> String {
    crate::agent::Timestamp::from_unix_ms(ms - ms.rem_euclid(1000))
        .map_or_else(|| ms.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::fake::FakeOrchestrator;

    fn holder(token: &str, store: &str) -> Holder {
        Holder {
            token: token.into(),
            host: "h".into(),
            pid: 1,
            data_dir: "/d".into(),
            store: store.into(),
        }
    }

    fn lease(of: Holder, renewed_ms: i64) -> Lease {
        Lease {
            holder: of,
            acquired_ms: renewed_ms,
            renewed_ms,
            duration: Duration::from_secs(15),
            transitions: 0,
            handle: "l1".into(),
        }
    }

    #[test]
    fn decisions_follow_the_lease() {
        let me = holder("me", "s1");
        let now = 100_000;
        assert_eq!(decide(&me, None, now, Duration::ZERO), Decision::Take(None));
        let mine = lease(me.clone(), now);
        assert_eq!(
            decide(&me, Some(mine.clone()), now, Duration::ZERO),
            Decision::Renew(mine)
        );
        // Our own store's previous process: taken back at once.
        let previous = lease(holder("old", "s1"), now);
        assert!(matches!(
            decide(&me, Some(previous), now, Duration::ZERO),
            Decision::Take(Some(_))
        ));
        // Another store's live holder: wait; fresh by the clocks.
        let other = lease(holder("x", "s2"), now - 1_000);
        assert_eq!(
            decide(&me, Some(other.clone()), now, Duration::from_secs(3)),
            Decision::Wait {
                lease: other.clone(),
                live: true
            }
        );
        // Stale by the clocks but not yet observed long enough: still wait.
        let stale = lease(holder("x", "s2"), now - 60_000);
        assert_eq!(
            decide(&me, Some(stale.clone()), now, Duration::from_secs(3)),
            Decision::Wait {
                lease: stale.clone(),
                live: false
            }
        );
        // Unchanged for longer than its duration on our clock: take it.
        assert_eq!(
            decide(&me, Some(stale.clone()), now, Duration::from_secs(16)),
            Decision::Take(Some(stale))
        );
        // A live lease whose holder's clock runs behind is still taken only by observation.
        assert!(matches!(
            decide(&me, Some(other), now, Duration::from_secs(16)),
            Decision::Take(Some(_))
        ));
    }

    #[test]
    fn an_observation_restarts_when_the_lease_changes() {
        let mut o = Observation::default();
        let t0 = Instant::now();
        let mut l = lease(holder("x", "s"), 1);
        assert_eq!(o.unchanged_for(&l, t0), Duration::ZERO);
        assert_eq!(
            o.unchanged_for(&l, t0 + Duration::from_secs(4)),
            Duration::from_secs(4)
        );
        l.renewed_ms = 2;
        assert_eq!(
            o.unchanged_for(&l, t0 + Duration::from_secs(5)),
            Duration::ZERO
        );
    }

    fn settings(standby: bool) -> Settings {
        Settings {
            instance: "i".into(),
            duration: Duration::from_millis(600),
            standby,
        }
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_a_standby_takes_over_when_it_stops() {
        let engine = Arc::new(FakeOrchestrator::default());
        let (mut first, first_state) =
            Elector::new(engine.clone(), holder("a", "s1"), settings(false));
        first.start().await.unwrap();
        assert!(first_state.borrow().is_leading());

        let (mut second, _) = Elector::new(engine.clone(), holder("b", "s2"), settings(false));
        let held = second.start().await.unwrap_err();
        assert_eq!(held.holder.token, "a");
        assert!(held
            .to_string()
            .contains("instance \"i\" is held by another Hive"));

        let (mut standby, standby_state) =
            Elector::new(engine.clone(), holder("c", "s3"), settings(true));
        standby.start().await.unwrap();
        assert!(matches!(
            *standby_state.borrow(),
            Leadership::Standby { .. }
        ));
        let (fatal, _rx) = mpsc::channel(1);
        let stop_first = CancellationToken::new();
        let first_task = tokio::spawn(first.run(stop_first.clone(), fatal.clone()));
        let stop_standby = CancellationToken::new();
        let standby_task = tokio::spawn(standby.run(stop_standby.clone(), fatal));
        // While the first renews, the standby keeps waiting.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(first_state.borrow().is_leading());
        assert!(!standby_state.borrow().is_leading());
        // The first stops cleanly and gives the lease up: the standby takes it.
        stop_first.cancel();
        first_task.await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !standby_state.borrow().is_leading() {
            assert!(Instant::now() < deadline, "the standby never took over");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(engine.read_lease().await.unwrap().unwrap().transitions, 0);
        stop_standby.cancel();
        standby_task.await.unwrap();
    }

    #[tokio::test]
    async fn a_renewal_that_hangs_ends_leadership_by_the_renew_deadline() {
        // An engine that stops answering must not keep a leader leading past the point
        // where a standby may take the expired lease.
        let engine = Arc::new(FakeOrchestrator::default());
        let lasting = Settings {
            duration: Duration::from_secs(3),
            ..settings(false)
        };
        let (mut leader, state) = Elector::new(engine.clone(), holder("a", "s1"), lasting);
        leader.start().await.unwrap();
        let (fatal, _rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let task = tokio::spawn(leader.run(stop.clone(), fatal));
        engine
            .hang_renewals
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // The last renewal the engine answered: the lease expires 3 s after it, and this
        // Hive must have stopped leading by then (its renew deadline is 2 s after it).
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.borrow().is_leading() {
            assert!(
                Instant::now() < deadline,
                "still leading with renewals hanging"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ended = now_ms();
        let renewed = engine.read_lease().await.unwrap().unwrap().renewed_ms;
        assert!(
            ended < renewed + 3000,
            "stopped leading {} ms after the last renewal; the lease had expired at 3000",
            ended - renewed
        );
        // The engine answers again, slowly (slower than the time that was left): the lease
        // is renewed and this Hive leads again.
        engine
            .renew_delay_ms
            .store(1500, std::sync::atomic::Ordering::SeqCst);
        engine
            .hang_renewals
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !state.borrow().is_leading() {
            assert!(
                Instant::now() < deadline,
                "never led again once renewals answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_holder_loses_the_lease_after_its_duration() {
        let engine = Arc::new(FakeOrchestrator::default());
        // A holder that took the lease and then died without renewing.
        engine
            .acquire_lease(&holder("dead", "s1"), Duration::from_millis(600), None)
            .await
            .unwrap();
        let (mut standby, state) = Elector::new(engine.clone(), holder("c", "s3"), settings(true));
        let started = Instant::now();
        standby.start().await.unwrap();
        let (fatal, _rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let task = tokio::spawn(standby.run(stop.clone(), fatal));
        while !state.borrow().is_leading() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never took over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "took over before the lease could expire: {:?}",
            started.elapsed()
        );
        let lease = engine.read_lease().await.unwrap().unwrap();
        assert_eq!((lease.holder.token.as_str(), lease.transitions), ("c", 1));
        stop.cancel();
        task.await.unwrap();
    }
}
