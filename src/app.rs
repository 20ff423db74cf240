//! The server wired together: [`App::build`] opens the store and wires the service, the
//! controller and the adapters around a backend; [`App::start`] takes the instance's
//! lease; [`App::run`] serves until shutdown. [`run`] does all three, as `main` calls it.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::{
    access, agent, api, config, controller, gitops, lease, metrics, orchestrator, policy, resolve,
    serve, service, store,
};

pub use crate::config::Config;

use access::{KeySource, Keys};
use orchestrator::Backend;
use service::Service;
use store::Store;

/// Why Hive could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Key(#[from] access::KeyError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// A flag's value cannot be used.
    #[error("{0}")]
    Config(String),
    #[error("invalid --instance {0:?}: {1}")]
    Instance(String, String),
    #[error("cannot use --data-dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("serving HTTP failed: {0}")]
    Serve(std::io::Error),
    /// Another Hive holds the instance (and this one is not a standby).
    #[error(transparent)]
    Held(Box<lease::InstanceHeld>),
}

impl From<lease::InstanceHeld> for Error {
    fn from(held: lease::InstanceHeld) -> Self {
        Error::Held(Box::new(held))
    }
}

/// The Docker backend `config` asks for (`--docker-host`, `--instance`,
/// `--agent-network`, `--engine-timeout`). Connects lazily: no I/O here.
pub fn docker_backend(config: &Config) -> Arc<dyn Backend> {
    Arc::new(orchestrator::docker::DockerOrchestrator::new(
        orchestrator::docker::DockerSettings {
            host: config.docker_host.clone(),
            instance: config.instance.clone(),
            network: config.agent_network.clone(),
            timeout: config.engine_timeout.into(),
        },
    ))
}

/// The Kubernetes backend `config` asks for (`--namespace`, `--kubeconfig`,
/// `--instance`, `--engine-timeout`). Connects lazily: no I/O here.
pub fn kubernetes_backend(config: &Config) -> Arc<dyn Backend> {
    Arc::new(orchestrator::kubernetes::KubernetesOrchestrator::new(
        orchestrator::kubernetes::KubernetesSettings {
            namespace: config.namespace.clone(),
            kubeconfig: config.kubeconfig.clone(),
            instance: config.instance.clone(),
            timeout: config.engine_timeout.into(),
        },
    ))
}

/// The backend `--backend` names.
pub fn backend(config: &Config) -> Arc<dyn Backend> {
    match config.backend {
        config::Backend::Docker => docker_backend(config),
        config::Backend::Kubernetes => kubernetes_backend(config),
    }
}

/// Runs Hive with `backend` on `listener` until `shutdown` completes: see [`App`].
pub async fn run(
    config: Config,
    backend: Arc<dyn Backend>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let mut app = App::build(config, backend).await?;
    app.start().await?;
    app.run(listener, shutdown).await
}

/// Everything `hive serve` runs, wired around a backend but not yet running: the store,
/// the keys and policy, the service (the one write path), the controller, the lease
/// election and the router. [`App::build`] wires (and touches nothing but its files);
/// [`App::start`] takes the instance's lease; [`App::run`] spawns and serves. Tests build
/// one around the in-memory backend and drive its [`router`](App::router) without a
/// socket.
pub struct App {
    config: Config,
    store: Arc<Store>,
    keys: Arc<Keys>,
    service: Arc<Service>,
    controller: controller::Controller,
    elector: lease::Elector,
    leadership: tokio::sync::watch::Receiver<lease::Leadership>,
    state: api::AppState,
    /// The engine, for the first look at it when starting.
    backend: Arc<dyn Backend>,
    /// Whether [`App::start`] ran.
    started: bool,
}

impl App {
    /// Opens the store (created if needed, private to Hive's user), loads the keys and the
    /// policy, and wires the rest. Nothing reaches the engine yet.
    pub async fn build(config: Config, backend: Arc<dyn Backend>) -> Result<App, Error> {
        agent::validate_name(&config.instance)
            .map_err(|m| Error::Instance(config.instance.clone(), m))?;
        // Files and the store are opened on a blocking thread, as every file Hive reads.
        let opening = config.clone();
        let (store, keys, source, policy) = tokio::task::spawn_blocking(move || open(&opening))
            .await
            .map_err(|e| Error::Config(format!("opening the store and files failed: {e}")))??;
        let store = Arc::new(store);
        let keys = Arc::new(keys);
        match &config.policy {
            Some(path) => {
                info!(path = %path.display(), rules = ?policy::describe(&policy), "admission policy")
            }
            None => {
                warn!("no --policy: every image is allowed (containers still get default limits)")
            }
        }
        let policy = Arc::new(policy);
        match source {
            KeySource::Environment => info!("API key from AGENT_API_KEY"),
            KeySource::File(path) => info!(path = %path.display(), "API key from file"),
            KeySource::Generated(path) => {
                info!(path = %path.display(), "generated an API key (mode 0600); clients need its contents")
            }
        }
        let lease_settings = lease::Settings {
            instance: config.instance.clone(),
            duration: config.lease_duration.into(),
            standby: config.standby,
        };
        let (elector, leadership) = lease::Elector::new(
            backend.clone(),
            lease::this_process(&config.data_dir, store.id()),
            lease_settings,
        );

        let resolver = Arc::new(resolve::Resolver::new(&config.resolve).map_err(Error::Config)?);
        let metrics = Arc::new(metrics::Metrics::default());
        let controller = controller::Controller::new(
            store.clone(),
            backend.clone(),
            metrics.clone(),
            policy.clone(),
            resolver.clone(),
            controller::Settings {
                resync_interval: config.resync_interval.into(),
                max_concurrent: config.max_concurrent_reconciles,
                adopt_foreign: config.adopt_foreign,
                shutdown_grace: SHUTDOWN_GRACE,
            },
        );
        if config.adopt_foreign {
            warn!("--adopt-foreign: containers of this instance from other stores are replaced or removed as this store's own");
        }
        let service = Arc::new(Service::new(service::Parts {
            store: store.clone(),
            policy,
            controller: controller.handle(),
            reserved_names: config.reserved_names.clone(),
            leadership: leadership.clone(),
            instance: config.instance.clone(),
            resolver,
            orchestrator: backend.clone(),
        }));
        let state = api::AppState {
            service: service.clone(),
            store: store.clone(),
            controller: controller.handle(),
            keys: keys.clone(),
            metrics: metrics.clone(),
            sync: config
                .manifests_dir
                .as_ref()
                .map(|_| Arc::new(std::sync::Mutex::new(gitops::SyncStatus::default()))),
            leadership: leadership.clone(),
            instance: config.instance.clone(),
            streams: Arc::new(api::streams::StreamLimits::new(
                config.max_streams_per_key,
                keys.clone(),
                metrics.streams.clone(),
            )),
            mcp_allowed_hosts: Arc::new(config.mcp_allowed_hosts.clone()),
        };
        Ok(App {
            config,
            store,
            keys,
            service,
            controller,
            elector,
            leadership,
            state,
            backend,
            started: false,
        })
    }

    /// Looks at the engine and takes the instance's lease if it may: an instance held by a
    /// live Hive is an error, unless `--standby` (then it waits to take over).
    pub async fn start(&mut self) -> Result<(), Error> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        if let Err(e) = self.backend.ping().await {
            warn!(error = %e, "the container engine does not answer yet; serving anyway and retrying");
        }
        let first_look = std::time::Duration::from(self.config.lease_duration)
            + std::time::Duration::from(self.config.engine_timeout);
        match tokio::time::timeout(first_look, self.elector.start()).await {
            Ok(Err(held)) => return Err(held.into()),
            Ok(Ok(())) => {}
            Err(_) => warn!("the instance's lease is not settled yet; not reconciling until it is"),
        }
        match &*self.leadership.borrow() {
            lease::Leadership::Leading { .. } => {}
            lease::Leadership::Standby { holder } => info!(
                instance = %self.config.instance, holder = %holder.holder,
                "standing by: another Hive holds the instance; taking over when its lease expires"
            ),
            lease::Leadership::Unknown { reason } => {
                warn!(%reason, "not reconciling until the instance's lease is held")
            }
        }
        Ok(())
    }

    /// The API, for driving without a socket.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// The one write path.
    pub fn service(&self) -> Arc<Service> {
        self.service.clone()
    }

    /// Serves on `listener` until `shutdown` completes: the controller, the lease, the
    /// manifests directory, the keys file and the API. On shutdown it stops accepting,
    /// finishes the reconciles in flight and the requests open (for at most the grace),
    /// gives up the lease and flushes the store; agents keep running.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.start().await?;
        let App {
            config,
            store,
            keys,
            service,
            controller,
            elector,
            leadership,
            state,
            ..
        } = self;
        let stop = CancellationToken::new();
        if let (Some(dir), Some(status)) = (&config.manifests_dir, &state.sync) {
            info!(dir = %dir.display(), rescan = %config.manifests_rescan, watch = config.manifests_watch, "following a manifests directory");
            let syncer = gitops::Syncer::new(
                gitops::Settings {
                    dir: dir.clone(),
                    rescan: config.manifests_rescan.into(),
                    watch: config.manifests_watch,
                    limits: gitops::Limits {
                        file_bytes: config.manifests_max_file_bytes,
                        total_bytes: config.manifests_max_bytes,
                        depth: config.manifests_max_depth,
                        entries: config.manifests_max_entries,
                        time: config.manifests_scan_timeout.into(),
                    },
                },
                service,
                leadership.clone(),
                status.clone(),
            );
            tokio::spawn(syncer.run(stop.clone()).in_current_span());
        }
        if keys.file().is_some() {
            tokio::spawn(watch_keys(keys, stop.clone()).in_current_span());
        }
        let controller_task =
            tokio::spawn(controller.run(stop.clone(), leadership).in_current_span());
        // The lease is given up last, once nothing reconciles any more.
        let stop_lease = CancellationToken::new();
        let (fatal_tx, mut fatal) = tokio::sync::mpsc::channel(1);
        let elector_task =
            tokio::spawn(elector.run(stop_lease.clone(), fatal_tx).in_current_span());

        let addr = listener.local_addr().map_err(Error::Serve)?;
        info!(%addr, instance = %config.instance, store = %store.id(), "listening");
        // Tasks carry the span they were started in (none in production; a test's Hive
        // runs in one that names it).
        let mut server = tokio::spawn(
            serve::serve(
                listener,
                api::router(state),
                serve::Caps {
                    connections: config.max_connections,
                    per_peer: config.max_connections_per_peer,
                },
                stop.clone(),
                SHUTDOWN_GRACE,
            )
            .in_current_span(),
        );
        let mut held = None;
        let served = tokio::select! {
            () = shutdown => None,
            r = &mut server => Some(r),
            Some(h) = fatal.recv() => {
                held = Some(h);
                None
            }
        };
        match &held {
            Some(h) => warn!("{h}; shutting down"),
            None => info!("shutting down: no new requests"),
        }
        stop.cancel();
        // Reconciles in flight and open requests get the same grace, at the same time.
        let server_done = async {
            match served {
                Some(r) => r,
                None => server.await,
            }
        };
        let (controller_done, served) = tokio::join!(controller_task, server_done);
        if controller_done.is_err() {
            warn!("the controller task panicked");
        }
        stop_lease.cancel();
        if elector_task.await.is_err() {
            warn!("the lease task panicked");
        }
        store.flush().await?;
        info!("stopped; agents keep running");
        if let Some(h) = held {
            return Err(h.into());
        }
        served
            .map_err(|e| Error::Serve(std::io::Error::other(e)))?
            .map_err(Error::Serve)
    }
}

/// Opens the data directory (made private to Hive's user: the store holds secrets) and
/// the store, and reads the keys and the policy. Blocks.
fn open(config: &Config) -> Result<(Store, Keys, KeySource, policy::Policy), Error> {
    std::fs::create_dir_all(&config.data_dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|source| Error::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let store = Store::open(&config.data_dir)?;
    let (keys, source) = Keys::load(
        config.api_key.as_ref().map(|s| s.0.as_str()),
        config.api_key_file.as_deref(),
        config.keys_file.as_deref(),
        &config.data_dir,
    )?;
    let policy = match &config.policy {
        Some(path) => policy::Policy::load(path)?,
        None => policy::Policy::default(),
    };
    Ok((store, keys, source, policy))
}

/// Re-reads the keys file on SIGHUP and whenever its modification time or size changes
/// (looked at every second, off the runtime). A file that does not parse, or is gone,
/// fails closed; either way every stream a key no longer valid holds ends at once (see
/// [`api::streams`]).
async fn watch_keys(keys: Arc<Keys>, stop: CancellationToken) {
    let Some(path) = keys.file().map(std::path::Path::to_path_buf) else {
        return;
    };
    let stamp = |p: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        })
        .await
        .ok()
        .flatten()
    };
    let mut last = stamp(path.clone()).await;
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; the keys file is still watched");
            None
        }
    };
    let mut tick = tokio::time::interval(KEYS_FILE_POLL);
    loop {
        let signalled = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            _ = signalled => {}
            _ = tick.tick() => {
                let now = stamp(path.clone()).await;
                if now == last {
                    continue;
                }
                last = now;
            }
        }
        let reloading = keys.clone();
        let reloaded = tokio::task::spawn_blocking(move || reloading.reload()).await;
        match reloaded {
            Ok(Ok(n)) => info!(path = %path.display(), keys = n, "reloaded the keys file"),
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "the keys file does not load: none of its keys is accepted until it does (the admin key still is)"
            ),
            Err(e) => tracing::error!(error = %e, "reloading the keys file failed"),
        }
    }
}

/// How often the keys file's modification time and size are looked at: a revoked key's
/// streams end within about this long.
const KEYS_FILE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long open requests and reconciles in flight may take to finish once shutdown
/// begins. With the lease given up and the store flushed after it, Hive exits within 15 s
/// of a SIGTERM even while the engine hangs.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
