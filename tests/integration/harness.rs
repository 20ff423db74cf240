//! The test harness: builds the test image, runs Hive (in this process through
//! `hive::App` on port 0, as mini-redis's tests do, or as a `hive serve` child process
//! where a test needs a process: signals, `kill -9`, a file descriptor limit, its log
//! format), talks to it over HTTP, looks at the engine directly, and waits by polling
//! with a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures_util::TryStreamExt;
use serde_json::Value;
use tokio::sync::OnceCell;
use tracing::Instrument;

/// The image every test agent runs: Debian's static busybox, imported as a one-file image.
pub const IMAGE: &str = "hive-test-busybox:2";
/// A command that runs until stopped.
pub const SLEEP: [&str; 2] = ["/bin/sleep", "3600"];

/// How long a test waits for anything before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);

static IMAGE_READY: OnceCell<()> = OnceCell::const_new();
/// The prefix of the network each test Hive's agents join: one per instance (made by
/// Hive, removed with the test's containers), since agents of different instances on one
/// network would shadow each other's names and Hive refuses that.
pub const NETWORK_PREFIX: &str = "hive-test-";

/// A client for the engine, as the tests see it (not through Hive).
pub fn docker() -> Docker {
    Docker::connect_with_local_defaults().expect("a Docker engine on the local socket")
}

/// Negotiated once per call site; cheap enough for tests.
pub async fn engine() -> Docker {
    docker()
        .negotiate_version()
        .await
        .expect("the Docker engine answers")
}

/// Imports the test image from /bin/busybox unless the engine has it already.
pub async fn ensure_image() {
    IMAGE_READY
        .get_or_init(|| async {
            let d = engine().await;
            if d.inspect_image(IMAGE).await.is_ok() {
                return;
            }
            let tar = hive::testing::busybox_tar(&[
                "sh", "sleep", "echo", "true", "false", "cat", "env", "httpd",
            ])
            .expect("the test image's layer (.ci/run installs busybox-static)");
            let (repo, tag) = IMAGE.split_once(':').unwrap();
            let options = CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(repo.into()),
                tag: Some(tag.into()),
                changes: vec!["ENV PATH=/bin".into()],
                ..Default::default()
            };
            d.create_image(Some(options), Some(bollard::body_full(tar.into())), None)
                .try_collect::<Vec<_>>()
                .await
                .expect("importing the test image");
        })
        .await;
}

/// Polls `check` until it yields a value, failing with `what` after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A random lower-case token for instance names and keys.
pub fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// How a test's Hive runs.
enum Running {
    /// In this process, on a runtime of its own: a stop signal and the thread to join.
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    },
    /// A `hive serve` child process.
    Process(Child),
}

/// Makes the backend a Hive runs on, inside its runtime (the default: the Docker
/// backend its flags name).
pub type BackendFactory = std::sync::Arc<
    dyn Fn(&hive::Config) -> std::sync::Arc<dyn hive::orchestrator::Backend> + Send + Sync,
>;

/// One running Hive with its own instance, data directory and key.
pub struct Hive {
    pub instance: String,
    pub key: String,
    pub url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    running: Option<Running>,
    /// Whether it runs as a child process (else in this process).
    process: bool,
    /// Extra environment for the child (None removes the variable); in process,
    /// `DOCKER_HOST` and `AGENT_API_KEY` are read from here too.
    env: HashMap<String, Option<String>>,
    /// Extra flags for `hive serve`.
    args: Vec<String>,
    starts: usize,
    /// Names this Hive's log lines (in process) across its runs.
    log_id: String,
    /// Whether dropping this Hive removes its instance's containers.
    cleanup: bool,
    /// The backend, when not Docker's.
    backend: Option<BackendFactory>,
}

impl Hive {
    /// Starts Hive in this process with a fresh store and instance, and waits until it serves.
    pub async fn start() -> Hive {
        Hive::start_full(HashMap::new(), Vec::new()).await
    }

    /// Starts Hive in this process with extra environment (`DOCKER_HOST`, or no
    /// `AGENT_API_KEY` for a generated key).
    pub async fn start_with(env: HashMap<String, Option<String>>) -> Hive {
        Hive::start_full(env, Vec::new()).await
    }

    /// Starts Hive in this process with extra flags for `hive serve`.
    pub async fn start_args(args: &[String]) -> Hive {
        Hive::start_full(HashMap::new(), args.to_vec()).await
    }

    /// Starts Hive in this process with a fresh store on a given instance (another
    /// Hive's, say).
    pub async fn start_on(instance: &str, args: &[&str]) -> Hive {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--instance".to_string(), instance.to_string()]);
        Hive::start_full(HashMap::new(), args).await
    }

    /// Starts Hive in this process with extra environment and flags.
    pub async fn start_full(env: HashMap<String, Option<String>>, args: Vec<String>) -> Hive {
        Hive::launch(env, args, false).await
    }

    /// Starts Hive in this process on the backend `factory` makes.
    pub async fn start_on_backend(factory: BackendFactory) -> Hive {
        Hive::launch_with(HashMap::new(), Vec::new(), false, Some(factory)).await
    }

    /// Starts `hive serve` as a child process: for tests that signal it, `kill -9` it,
    /// limit its file descriptors (`HIVE_TEST_NOFILE`) or read its log format.
    pub async fn process(env: HashMap<String, Option<String>>, args: Vec<String>) -> Hive {
        Hive::launch(env, args, true).await
    }

    async fn launch(
        env: HashMap<String, Option<String>>,
        args: Vec<String>,
        process: bool,
    ) -> Hive {
        Hive::launch_with(env, args, process, None).await
    }

    async fn launch_with(
        env: HashMap<String, Option<String>>,
        mut args: Vec<String>,
        process: bool,
        backend: Option<BackendFactory>,
    ) -> Hive {
        ensure_image().await;
        let instance = match args.iter().position(|a| a == "--instance") {
            Some(i) => {
                let name = args[i + 1].clone();
                args.drain(i..=i + 1);
                name
            }
            None => format!("t{}", token()),
        };
        if !args.iter().any(|a| a == "--agent-network") {
            args.extend(["--agent-network".to_string(), network_of(&instance)]);
        }
        let mut hive = Hive {
            instance,
            key: token() + &token(),
            url: String::new(),
            http: reqwest::Client::new(),
            dir: tempfile::tempdir().unwrap(),
            running: None,
            process,
            env,
            args,
            starts: 0,
            log_id: token(),
            cleanup: true,
            backend,
        };
        hive.spawn().await;
        hive
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("hive-{}.log", self.starts))
    }

    /// The flags of every run.
    fn flags(&self) -> Vec<String> {
        let mut flags: Vec<String> = ["--resync-interval", "2s", "--instance", &self.instance]
            .iter()
            .map(|s| s.to_string())
            .collect();
        flags.push("--data-dir".into());
        flags.push(self.data_dir().display().to_string());
        flags.extend(self.args.iter().cloned());
        flags
    }

    /// Runs Hive and waits until it serves.
    async fn spawn(&mut self) {
        self.starts += 1;
        if self.process {
            self.spawn_process();
        } else {
            self.spawn_in_process().await;
        }
    }

    fn spawn_process(&mut self) {
        let mut env: Vec<(String, Option<String>)> = vec![
            ("AGENT_API_KEY".into(), Some(self.key.clone())),
            ("RUST_LOG".into(), Some("info,hive=debug".into())),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let nofile = self
            .env
            .get("HIVE_TEST_NOFILE")
            .cloned()
            .flatten()
            .map(|n| n.parse().unwrap());
        let started = hive::testing::ServeProcess::start(
            Path::new(env!("CARGO_BIN_EXE_hive")),
            &self.flags(),
            &env,
            nofile,
            self.log_path(),
            DEADLINE,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.url = started.url;
        self.running = Some(Running::Process(started.child));
    }

    async fn spawn_in_process(&mut self) {
        capture_logs();
        let flags = self.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut config = hive::testing::config(&flags).expect("the test's flags");
        if let Some(Some(host)) = self.env.get("DOCKER_HOST") {
            config.docker_host = Some(host.clone());
        }
        if !matches!(self.env.get("AGENT_API_KEY"), Some(None)) {
            config.api_key = Some(hive::config::Secret(self.key.clone()));
        }
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let span_id = self.log_id.clone();
        let factory = self.backend.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let span = tracing::info_span!("hive", hive_test = %span_id);
            rt.block_on(
                async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(|e| e.to_string())?;
                    let addr = listener.local_addr().map_err(|e| e.to_string())?;
                    let backend = match factory {
                        Some(make) => make(&config),
                        None => hive::docker_backend(&config),
                    };
                    let started = async {
                        let mut app = hive::App::build(config, backend).await?;
                        app.start().await?;
                        Ok::<_, hive::Error>(app)
                    };
                    let app = match started.await {
                        Ok(app) => app,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return Err(e.to_string());
                        }
                    };
                    let _ = ready_tx.send(Ok(addr));
                    app.run(listener, async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
                }
                .instrument(span),
            )
        });
        let addr = ready_rx
            .await
            .expect("hive stopped before it started")
            .unwrap_or_else(|e| panic!("hive did not start: {e}"));
        self.url = format!("http://{addr}");
        self.running = Some(Running::InProcess {
            stop: Some(stop_tx),
            thread: Some(thread),
        });
    }

    /// Everything Hive logged so far (all runs).
    pub fn logs(&self) -> String {
        if !self.process {
            return captured(&self.log_id);
        }
        let mut all = String::new();
        for i in 1..=self.starts {
            if let Ok(mut f) = std::fs::File::open(self.dir.path().join(format!("hive-{i}.log"))) {
                f.read_to_string(&mut all).ok();
            }
        }
        all
    }

    /// Leaves the instance's containers in place when this Hive is dropped (another Hive
    /// of the test shares the instance and cleans up).
    pub fn leave_containers(&mut self) {
        self.cleanup = false;
    }

    /// The process id of the running Hive (this process's, in process).
    pub fn pid(&self) -> u32 {
        match &self.running {
            Some(Running::Process(child)) => child.id(),
            _ => std::process::id(),
        }
    }

    /// A graceful stop (SIGTERM for a child process), and how it ended.
    pub fn stop(&mut self) -> Stopped {
        match self.running.take().expect("hive is running") {
            Running::Process(mut child) => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let status = child.wait().unwrap();
                Stopped(if status.success() {
                    Ok(())
                } else {
                    Err(status.to_string())
                })
            }
            Running::InProcess { stop, thread } => {
                if let Some(stop) = stop {
                    let _ = stop.send(());
                }
                Stopped(
                    thread
                        .expect("a thread")
                        .join()
                        .unwrap_or_else(|_| Err("hive panicked".into())),
                )
            }
        }
    }

    /// Sends SIGHUP (a child process only).
    pub fn sighup(&self) {
        let Some(Running::Process(child)) = &self.running else {
            panic!("SIGHUP needs a hive process: start it with Hive::process");
        };
        assert!(Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success());
    }

    /// SIGKILL: no chance to flush or clean up (a child process only).
    pub fn kill9(&mut self) {
        let Some(Running::Process(mut child)) = self.running.take() else {
            panic!("kill -9 needs a hive process: start it with Hive::process");
        };
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts Hive again on the same store and instance.
    pub async fn restart(&mut self) {
        if self.running.is_some() {
            let stopped = self.stop();
            assert!(
                stopped.success(),
                "hive did not stop cleanly: {stopped}\n{}",
                self.logs()
            );
        }
        self.spawn().await;
    }

    pub fn container_name(&self, agent: &str) -> String {
        format!("hive_{}_{agent}", self.instance)
    }

    /// The network this Hive's agents join.
    pub fn network(&self) -> String {
        match self.args.iter().position(|a| a == "--agent-network") {
            Some(i) => self.args[i + 1].clone(),
            None => network_of(&self.instance),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key)
    }

    /// PUTs a YAML document to /v1/agents/{name}.
    pub async fn put_yaml(&self, name: &str, yaml: &str) -> reqwest::Response {
        self.req(reqwest::Method::PUT, &format!("/v1/agents/{name}"))
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// GET a path without a key (health and readiness).
    pub async fn get_open(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// GET `path` with the admin key, as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.req(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GET `path` with the admin key, as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.req(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// GET /v1/agents with the admin key: the AgentList.
    pub async fn list(&self) -> Value {
        let r = self
            .req(reqwest::Method::GET, "/v1/agents")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// GET /v1/agents/{name}: the object, or None on 404.
    pub async fn get(&self, name: &str) -> Option<Value> {
        let r = self
            .req(reqwest::Method::GET, &format!("/v1/agents/{name}"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => Some(r.json().await.unwrap()),
            404 => None,
            s => panic!("GET {name}: {s} {}", r.text().await.unwrap()),
        }
    }

    /// Declares a sleeping agent (with `extra_spec` lines) and waits until it runs.
    pub async fn running(&self, name: &str, extra_spec: &str) -> Value {
        let r = self.put_yaml(name, &agent_yaml(name, extra_spec)).await;
        assert!(r.status().is_success(), "PUT {name}: {}", r.status());
        self.wait_phase(name, "Running").await
    }

    /// Waits until the agent reports `phase` for its current generation.
    pub async fn wait_phase(&self, name: &str, phase: &str) -> Value {
        let what = format!("{name} to be {phase}");
        let mut last = Value::Null;
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(a) = self.get(name).await {
                    let caught_up =
                        a["status"]["observedGeneration"] == a["metadata"]["generation"];
                    if caught_up && a["status"]["phase"] == phase {
                        return a;
                    }
                    last = a;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; last seen: {last:#}\nlogs:\n{}",
                self.logs()
            )
        })
    }

    /// The environment of an agent's container, as the engine has it.
    pub async fn container_env(&self, agent: &str) -> Vec<String> {
        let c = self.inspect(agent).await.expect("the agent's container");
        c.config.and_then(|c| c.env).unwrap_or_default()
    }

    /// Runs `hive ARGS` against this server with its key; returns success, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli_with(&self.url, &self.key, args)
    }

    /// The engine's containers of this instance (all states).
    pub async fn containers(&self) -> Vec<bollard::models::ContainerSummary> {
        containers_with_label(&format!("hive.instance={}", self.instance)).await
    }

    pub async fn inspect(&self, agent: &str) -> Option<ContainerInspectResponse> {
        engine()
            .await
            .inspect_container(&self.container_name(agent), None)
            .await
            .ok()
    }
}

pub async fn containers_with_label(label: &str) -> Vec<bollard::models::ContainerSummary> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![label.to_string()],
        )])),
        ..Default::default()
    };
    engine().await.list_containers(Some(options)).await.unwrap()
}

/// Runs `hive ARGS` as a user would, with a server and key in the environment; returns
/// exit success, stdout and stderr.
pub fn cli_with(url: &str, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(args)
        .env("AGENT_API_URL", url)
        .env("AGENT_API_KEY", key)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The container id an agent's status names.
pub fn container_id(agent: &Value) -> String {
    agent["status"]["containerId"]
        .as_str()
        .expect("a container id")
        .to_string()
}

/// A minimal agent document in YAML.
pub fn agent_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: hive/v1\nkind: Agent\nmetadata:\n  name: {name}\nspec:\n  image: {IMAGE}\n  command: [\"{}\", \"{}\"]\n{extra_spec}",
        SLEEP[0], SLEEP[1]
    )
}

impl Drop for Hive {
    fn drop(&mut self) {
        // A graceful stop first: a killed Hive may leave a create in flight at the engine,
        // which would land after the clean-up below.
        match self.running.take() {
            Some(Running::Process(mut child)) => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let start = Instant::now();
                while child.try_wait().ok().flatten().is_none() {
                    if start.elapsed() > Duration::from_secs(20) {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Some(Running::InProcess { stop, thread }) => {
                if let Some(stop) = stop {
                    let _ = stop.send(());
                }
                if let Some(thread) = thread {
                    let start = Instant::now();
                    while !thread.is_finished() && start.elapsed() < Duration::from_secs(20) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if thread.is_finished() {
                        let _ = thread.join();
                    }
                }
            }
            None => {}
        }
        if self.cleanup {
            remove_instance_containers(&self.instance);
        }
    }
}

/// How a Hive stopped.
pub struct Stopped(Result<(), String>);

impl Stopped {
    pub fn success(&self) -> bool {
        self.0.is_ok()
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(()) => f.write_str("stopped cleanly"),
            Err(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Log lines of in-process Hives, by the `hive_test` field of the span each runs in.
static LOGS: std::sync::OnceLock<std::sync::Mutex<HashMap<String, String>>> =
    std::sync::OnceLock::new();

/// Installs, once, the test binary's subscriber: it keeps each in-process Hive's log
/// lines apart (by the span it runs in) and prints nothing.
fn capture_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info,hive=debug"))
            .with(Capture)
            .try_init();
    });
}

/// What an in-process Hive has logged.
fn captured(id: &str) -> String {
    LOGS.get_or_init(Default::default)
        .lock()
        .unwrap()
        .get(id)
        .cloned()
        .unwrap_or_default()
}

/// The layer that keeps log lines by Hive.
struct Capture;

/// Which Hive a span belongs to.
struct TestId(String);

/// Fields of a span or an event, as `message k=v ...`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
    test_id: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "hive_test" => self.test_id = Some(format!("{value:?}")),
            name => self.rest += &format!(" {name}={value:?}"),
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "hive_test" => self.test_id = Some(value.to_string()),
            name => self.rest += &format!(" {name}={value}"),
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(test), Some(span)) = (fields.test_id, ctx.span(id)) {
            span.extensions_mut().insert(TestId(test));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let Some(test) = scope
            .from_root()
            .find_map(|s| s.extensions().get::<TestId>().map(|t| t.0.clone()))
        else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let m = event.metadata();
        let line = format!(
            "{} {}: {}{}\n",
            m.level(),
            m.target(),
            fields.message,
            fields.rest
        );
        LOGS.get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(test)
            .or_default()
            .push_str(&line);
    }
}

/// The agents' network of a test instance.
pub fn network_of(instance: &str) -> String {
    format!("{NETWORK_PREFIX}{instance}")
}

/// A label without meaning to Hive, for containers a test makes by hand on behalf of an
/// instance: they go with the instance's own.
pub const PLAIN_LABEL: &str = "hive-test-plain";

/// Removes every container of an instance when dropped, even when the test fails: for
/// instances a test makes containers for without starting a Hive on them.
pub struct RemoveOnDrop(pub String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        remove_instance_containers(&self.0);
    }
}

/// Removes every container of a test instance, its lease and its network included, from
/// a thread of its own so it works inside or outside a runtime (Drop runs in both).
pub fn remove_instance_containers(instance: &str) {
    let labels = [
        format!("hive.instance={instance}"),
        format!("hive.lease={instance}"),
        format!("{PLAIN_LABEL}={instance}"),
    ];
    let network = network_of(instance);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let d = engine().await;
            for label in &labels {
                for c in containers_with_label(label).await {
                    let options = RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    };
                    let _ = d.remove_container(&c.id.unwrap(), Some(options)).await;
                }
            }
            let volumes = bollard::query_parameters::ListVolumesOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![labels[0].clone()],
                )])),
            };
            if let Ok(listed) = d.list_volumes(Some(volumes)).await {
                for v in listed.volumes.unwrap_or_default() {
                    let _ = d
                        .remove_volume(
                            &v.name,
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await;
                }
            }
            let _ = d.remove_network(&network).await;
        });
    })
    .join()
    .unwrap();
}

/// Runs `hive serve ARGS` (a fresh data directory, this test's key) until it exits on its
/// own, failing if it is still running after [`DEADLINE`]; returns its exit status and
/// what it printed on stderr.
pub async fn serve_until_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_hive"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env("AGENT_API_KEY", token())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("hive exits instead of serving")
    .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether a path's permission bits are exactly `mode`.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs `hive keys new` and returns (key, entry lines).
pub fn new_key(owner: &str, role: &str, id: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["keys", "new", "--owner", owner, "--role", role, "--id", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("key: ")
        .unwrap()
        .to_string();
    let entry: String = text
        .lines()
        .skip_while(|l| !l.starts_with("- "))
        .map(|l| format!("  {l}\n"))
        .collect();
    assert!(
        entry.contains(&format!("id: {id}")) && !entry.contains(&key),
        "{text}"
    );
    (key, entry)
}

pub fn write_keys(path: &Path, entries: &[&str]) {
    std::fs::write(path, format!("keys:\n{}", entries.concat())).unwrap();
}

/// A request with a given key.
pub fn with_key(
    hive: &Hive,
    key: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    hive.http
        .request(method, format!("{}{path}", hive.url))
        .bearer_auth(key)
}

pub async fn put_as(hive: &Hive, key: &str, name: &str, yaml: &str) -> reqwest::Response {
    with_key(
        hive,
        key,
        reqwest::Method::PUT,
        &format!("/v1/agents/{name}"),
    )
    .header("content-type", "application/yaml")
    .body(yaml.to_string())
    .send()
    .await
    .unwrap()
}
