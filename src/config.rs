//! The flags of `hive serve`, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How `hive serve` runs.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address the API listens on. Use 0.0.0.0:8000 inside a container.
    #[arg(long, env = "HIVE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Directory for the store and a generated API key.
    #[arg(long, env = "HIVE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Where agents run: `docker` (one engine, `--docker-host`) or `kubernetes` (Pods in
    /// one namespace of a cluster, `--namespace`, `--kubeconfig`).
    #[arg(long, env = "HIVE_BACKEND", value_enum, default_value_t = Backend::Docker)]
    pub backend: Backend,

    /// Kubernetes: the namespace agents live in (default: the service account's, or the
    /// kubeconfig context's).
    #[arg(long, env = "HIVE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Kubernetes: a kubeconfig file to use (default: the in-cluster service account,
    /// else KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "HIVE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Docker engine: unix:///path, tcp://host:port. Defaults to DOCKER_HOST or the local socket.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// Time between full resyncs of the store against the engine (e.g. 30s, 2m).
    #[arg(long, env = "HIVE_RESYNC_INTERVAL", default_value = "30s")]
    pub resync_interval: humantime::Duration,

    /// Name of this Hive instance; it only touches containers labelled with it.
    #[arg(long, env = "HIVE_INSTANCE", default_value = "default")]
    pub instance: String,

    /// The Docker network every agent joins (created, labelled, if missing); agents are
    /// reachable on it by their names.
    #[arg(long, env = "HIVE_AGENT_NETWORK", default_value = "hive-net")]
    pub agent_network: String,

    /// Log lines as `text` or `json` (one object a line, with the span's agent and generation).
    #[arg(long, env = "HIVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Reconciles that may run at once.
    #[arg(long, env = "HIVE_MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    pub max_concurrent_reconciles: usize,

    /// The deadline of every call to the container engine (a stop's grace is added where
    /// the engine waits for a process to stop).
    #[arg(long, env = "HIVE_ENGINE_TIMEOUT", default_value = "30s")]
    pub engine_timeout: humantime::Duration,

    /// How long the instance's lease stays valid without a renewal; a dead holder's lease
    /// is taken over after this long. Renewed every third of it.
    #[arg(long, env = "HIVE_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: humantime::Duration,

    /// If another Hive holds the instance, wait (answering 503 on /readyz) and take over
    /// when its lease expires, instead of exiting.
    #[arg(long, env = "HIVE_STANDBY")]
    pub standby: bool,

    /// Treat containers of this instance that another store declared as this store's:
    /// replace them or remove them as orphans. Without it they are left alone.
    #[arg(long, env = "HIVE_ADOPT_FOREIGN")]
    pub adopt_foreign: bool,

    /// Client connections served at once (fewer if the file descriptor limit is low);
    /// more are closed at once.
    #[arg(long, env = "HIVE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Client connections one address may hold at once (below --max-connections, so
    /// one client cannot take them all). Behind a reverse proxy every client has the
    /// proxy's address: set it to --max-connections there and limit clients in the proxy.
    #[arg(long, env = "HIVE_MAX_CONNECTIONS_PER_PEER", default_value_t = 128)]
    pub max_connections_per_peer: usize,

    /// Names no agent may have: the deployment's services on the agents' network, which
    /// an agent of that name would impersonate. Comma-separated.
    #[arg(
        long,
        env = "HIVE_RESERVED_NAMES",
        value_delimiter = ',',
        default_value = "agent-api,sol"
    )]
    pub reserved_names: Vec<String>,

    /// The Host headers /mcp answers (DNS-rebinding protection): host or host:port,
    /// comma-separated; `*` answers any. Add the name clients reach Hive by.
    #[arg(
        long,
        env = "HIVE_MCP_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = crate::api::mcp::DEFAULT_ALLOWED_HOSTS
    )]
    pub mcp_allowed_hosts: Vec<String>,

    /// Concurrent watches, log follows and MCP waits one key may hold open.
    #[arg(long, env = "HIVE_MAX_STREAMS_PER_KEY", default_value_t = 16)]
    pub max_streams_per_key: usize,

    /// Pin a host name to an address for Hive's own lookups (registries), as curl's
    /// --resolve: NAME=IP, comma-separated or repeated. For tests and split-horizon
    /// setups; the engine still resolves names itself.
    #[arg(long, env = "HIVE_RESOLVE", value_delimiter = ',')]
    pub resolve: Vec<String>,

    /// File holding the API key (takes precedence over AGENT_API_KEY).
    #[arg(long, env = "HIVE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// YAML file of further keys, each with an id, owner, role and SHA-256
    /// (see `hive keys new`); re-read on SIGHUP and when it changes.
    #[arg(long, env = "HIVE_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,

    /// YAML admission policy (images, default and maximum limits, quotas, capabilities).
    /// Without one every image is allowed, with default limits on every container.
    #[arg(long, env = "HIVE_POLICY")]
    pub policy: Option<PathBuf>,

    /// Directory of manifests to keep applied (GitOps); see the README.
    #[arg(long, env = "HIVE_MANIFESTS_DIR")]
    pub manifests_dir: Option<PathBuf>,

    /// Time between full rescans of --manifests-dir (changes are also picked up as they happen).
    #[arg(long, env = "HIVE_MANIFESTS_RESCAN", default_value = "60s")]
    pub manifests_rescan: humantime::Duration,

    /// Follow filesystem events in --manifests-dir (false: rely on the rescan alone).
    #[arg(long, env = "HIVE_MANIFESTS_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub manifests_watch: bool,

    /// The largest manifest file read from --manifests-dir (bytes); a bigger one is
    /// reported and not read.
    #[arg(long, env = "HIVE_MANIFESTS_MAX_FILE_BYTES", default_value_t = 1 << 20)]
    pub manifests_max_file_bytes: u64,

    /// The most bytes one scan of --manifests-dir reads in all; past it the scan is
    /// incomplete and nothing is pruned.
    #[arg(long, env = "HIVE_MANIFESTS_MAX_BYTES", default_value_t = 32 << 20)]
    pub manifests_max_bytes: u64,

    /// The deepest directory level below --manifests-dir that is read; deeper, the scan
    /// is incomplete and nothing is pruned.
    #[arg(long, env = "HIVE_MANIFESTS_MAX_DEPTH", default_value_t = 16)]
    pub manifests_max_depth: usize,

    /// The most directory entries (files and directories) one scan looks at; past it the
    /// scan is incomplete and nothing is pruned.
    #[arg(long, env = "HIVE_MANIFESTS_MAX_ENTRIES", default_value_t = 10_000)]
    pub manifests_max_entries: usize,

    /// How long one scan of --manifests-dir may take to read; past it the scan is
    /// incomplete and nothing is pruned.
    #[arg(long, env = "HIVE_MANIFESTS_SCAN_TIMEOUT", default_value = "10s")]
    pub manifests_scan_timeout: humantime::Duration,

    /// The API key itself; from the environment only, so it never shows in `ps`.
    #[arg(skip = std::env::var("AGENT_API_KEY").ok().map(Secret))]
    pub api_key: Option<Secret>,
}

/// Where agents run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Docker,
    Kubernetes,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A value that must never be printed; its `Debug` says so instead.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
