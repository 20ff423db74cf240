//! `hive-bench`: measures Hive against the real Docker engine, next to a baseline run in
//! the same process, and prints a table (and JSON with `--json FILE`).
//!
//! - `converge`: N containers created and started straight through the Docker
//!   orchestrator with Hive's parallelism (the baseline), against N agents PUT through
//!   Hive's API until all are Running; then deleting them all, both ways.
//! - `api`: requests per second and latency percentiles of GET one, LIST and PUT, next to
//!   `/healthz` (the HTTP floor).
//! - `steady`: CPU seconds per minute and resident memory of an idle `hive serve` holding
//!   many (Stopped) agents.
//! - `drift`: time until a container is running again after a crash (the engine's
//!   restart policy, as baseline) and after a `docker kill` (only Hive repairs that).
//!
//! It runs the `hive` binary that sits next to it: `cargo build --release --workspace`
//! builds both. The baseline talks to the engine directly (create and start, remove), with
//! the same container shape and parallelism; it shares the busybox image and the
//! `hive serve` child process with the tests (`hive::testing`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    RestartPolicy as DockerRestart, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions,
};
use bollard::Docker;
use clap::{Args, Parser, Subcommand};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use hive::agent::{Agent, AgentSpec, Metadata, RestartPolicy};
use serde::Serialize;
use serde_json::{json, Value};

/// The image the benchmark's agents run: Debian's static busybox, imported once.
const IMAGE: &str = "hive-bench-busybox:1";

#[derive(Parser)]
#[command(about = "Benchmarks Hive against the Docker engine it drives")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// Fleet convergence and deletion, Hive against direct Docker calls.
    Converge(ConvergeArgs),
    /// API throughput and latency.
    Api(ApiArgs),
    /// CPU and memory of an idle Hive holding many agents.
    Steady(SteadyArgs),
    /// Time to repair a killed container.
    Drift(DriftArgs),
    /// Everything above, with defaults.
    All,
}

#[derive(Args, Clone)]
struct ConvergeArgs {
    #[arg(long, default_value_t = 100)]
    agents: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Parallelism of both the baseline and Hive (its --max-concurrent-reconciles).
    #[arg(long, default_value_t = 16)]
    parallelism: usize,
}

#[derive(Args, Clone)]
struct ApiArgs {
    /// Agents stored while measuring (Stopped, so the engine is spared).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Concurrent watchers for the fan-out figure.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
}

#[derive(Args, Clone)]
struct SteadyArgs {
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Length of the idle window measured (should span at least one resync).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

#[derive(Args, Clone)]
struct DriftArgs {
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
struct Row {
    bench: String,
    what: String,
    /// Median over rounds (or the single value).
    value: f64,
    unit: String,
    /// Smallest and largest over rounds.
    min: f64,
    max: f64,
    /// Value divided by the baseline's, where there is one.
    ratio: Option<f64>,
    /// The target this figure should meet, in words.
    target: Option<String>,
}

impl Row {
    fn from_samples(bench: &str, what: &str, unit: &str, samples: &[f64]) -> Row {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Row {
            bench: bench.into(),
            what: what.into(),
            value: s[s.len() / 2],
            unit: unit.into(),
            min: s[0],
            max: s[s.len() - 1],
            ratio: None,
            target: None,
        }
    }

    fn single(bench: &str, what: &str, unit: &str, value: f64) -> Row {
        Row::from_samples(bench, what, unit, &[value])
    }

    fn against(mut self, baseline: &Row) -> Row {
        self.ratio = Some(self.value / baseline.value);
        self
    }

    fn target(mut self, t: &str) -> Row {
        self.target = Some(t.into());
        self
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure_image().await?;
    let mut rows = Vec::new();
    match cli.command {
        Bench::Converge(a) => rows.extend(converge(&a).await?),
        Bench::Api(a) => rows.extend(api(&a).await?),
        Bench::Steady(a) => rows.extend(steady(&a).await?),
        Bench::Drift(a) => rows.extend(drift(&a).await?),
        Bench::All => {
            rows.extend(
                converge(&ConvergeArgs {
                    agents: 100,
                    rounds: 3,
                    parallelism: 16,
                })
                .await?,
            );
            rows.extend(drift(&DriftArgs { rounds: 5 }).await?);
            rows.extend(
                api(&ApiArgs {
                    agents: 1000,
                    requests: 4000,
                    concurrency: 16,
                    watchers: 100,
                })
                .await?,
            );
            rows.extend(
                steady(&SteadyArgs {
                    agents: 1000,
                    seconds: 60,
                })
                .await?,
            );
        }
    }
    print_table(&rows);
    if let Some(path) = cli.json {
        let report = json!({
            "machine": machine(),
            "rows": rows,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<9} {:<44} {:>10} {:<6} {:>10} {:>10} {:>7}  target",
        "bench", "what", "median", "unit", "min", "max", "ratio"
    );
    for r in rows {
        println!(
            "{:<9} {:<44} {:>10.2} {:<6} {:>10.2} {:>10.2} {:>7}  {}",
            r.bench,
            r.what,
            r.value,
            r.unit,
            r.min,
            r.max,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            r.target.as_deref().unwrap_or("")
        );
    }
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    let engine = Command::new("docker")
        .args([
            "version",
            "--format",
            "{{.Server.Version}} API {{.Server.APIVersion}}",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({"cpus": cpus, "memory": mem, "engine": engine})
}

/// The engine, version negotiated.
async fn docker() -> Result<Docker> {
    Ok(Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?)
}

/// Imports the benchmark image from Debian's static busybox unless the engine has it.
async fn ensure_image() -> Result<()> {
    let d = docker().await?;
    if d.inspect_image(IMAGE).await.is_ok() {
        return Ok(());
    }
    let tar = hive::testing::busybox_tar(&["sh", "sleep", "kill"])?;
    let (repo, tag) = IMAGE.split_once(':').expect("a tagged image");
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
        .with_context(|| format!("importing {IMAGE}"))?;
    Ok(())
}

/// The baseline: the engine driven directly, one container per agent, in the shape Hive
/// gives its containers (labels, the agents' network with an alias, limits, an init).
struct Engine {
    docker: Docker,
    instance: String,
}

impl Engine {
    async fn new(instance: &str) -> Result<Engine> {
        let docker = docker().await?;
        if docker.inspect_network("hive-net", None).await.is_err() {
            let request = NetworkCreateRequest {
                name: "hive-net".into(),
                driver: Some("bridge".into()),
                ..Default::default()
            };
            let _ = docker.create_network(request).await;
        }
        Ok(Engine {
            docker,
            instance: instance.to_string(),
        })
    }

    fn filters(&self, agent: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("hive.instance={}", self.instance)];
        if let Some(a) = agent {
            labels.push(format!("hive.agent={a}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    /// Creates and starts a sleeping container for `agent`.
    async fn run(&self, agent: &str) -> Result<String> {
        let body = ContainerCreateBody {
            image: Some(IMAGE.into()),
            entrypoint: Some(vec!["/bin/sleep".into(), "86400".into()]),
            labels: Some(HashMap::from([
                ("hive.managed".to_string(), "true".to_string()),
                ("hive.instance".to_string(), self.instance.clone()),
                ("hive.agent".to_string(), agent.to_string()),
            ])),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    "hive-net".to_string(),
                    EndpointSettings {
                        aliases: Some(vec![format!("{}-{agent}", self.instance)]),
                        ..Default::default()
                    },
                )])),
            }),
            host_config: Some(HostConfig {
                memory: Some(512 << 20),
                nano_cpus: Some(1_000_000_000),
                pids_limit: Some(256),
                network_mode: Some("hive-net".into()),
                init: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                restart_policy: Some(DockerRestart {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(format!("base_{}_{agent}", self.instance)),
            ..Default::default()
        };
        let id = self.docker.create_container(Some(options), body).await?.id;
        self.docker.start_container(&id, None).await?;
        Ok(id)
    }

    /// Ids of this instance's containers (of one agent, or all).
    async fn ids(&self, agent: Option<&str>) -> Result<Vec<String>> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.filters(agent)),
            ..Default::default()
        };
        Ok(self
            .docker
            .list_containers(Some(options))
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }

    /// Whether a container of `agent` runs.
    async fn running(&self, agent: &str) -> Result<bool> {
        let options = ListContainersOptions {
            all: false,
            filters: Some(self.filters(Some(agent))),
            ..Default::default()
        };
        Ok(!self.docker.list_containers(Some(options)).await?.is_empty())
    }

    /// Removes every container of the instance, `parallelism` at a time.
    async fn remove_all(&self, parallelism: usize) -> Result<()> {
        let ids = self.ids(None).await?;
        let results: Vec<_> = stream::iter(ids)
            .map(|id| async move {
                let options = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                self.docker.remove_container(&id, Some(options)).await
            })
            .buffer_unordered(parallelism)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }

    /// The process id of a container's init, for a crash from the host.
    async fn pid(&self, id: &str) -> Result<i64> {
        let detail = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await?;
        detail
            .state
            .and_then(|s| s.pid)
            .context("the container's pid")
    }
}

/// An agent that sleeps, in the shape Hive stores.
fn agent(name: &str, stopped: bool) -> Agent {
    Agent {
        api_version: "hive/v1".into(),
        kind: "Agent".into(),
        metadata: Metadata {
            name: name.into(),
            uid: Some(uuid::Uuid::new_v4()),
            ..Default::default()
        },
        spec: AgentSpec {
            image: IMAGE.into(),
            command: Some(vec!["/bin/sleep".into(), "86400".into()]),
            state: if stopped {
                hive::agent::DesiredState::Stopped
            } else {
                Default::default()
            },
            restart_policy: RestartPolicy::Always,
            ..Default::default()
        },
        status: Default::default(),
    }
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A `hive serve` child process on a fresh store and instance.
struct Server {
    child: Child,
    url: String,
    key: String,
    instance: String,
    dir: PathBuf,
    exe: PathBuf,
    args: Vec<String>,
    http: reqwest::Client,
}

impl Server {
    /// A `hive serve` on a fresh store and instance: the `hive` beside this binary, or the
    /// one `HIVE_BENCH_SERVER` names (to measure another build in the same run).
    async fn start(parallelism: usize, extra: &[&str]) -> Result<Server> {
        let exe = match std::env::var_os("HIVE_BENCH_SERVER") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()?.with_file_name("hive"),
        };
        if !exe.exists() {
            bail!(
                "{} is missing: run `cargo build --release --workspace` first",
                exe.display()
            );
        }
        let instance = format!("bench{}", token());
        let dir = std::env::temp_dir().join(format!("hive-bench-{instance}"));
        std::fs::create_dir_all(&dir)?;
        let key = token() + &token();
        let mut args: Vec<String> = [
            "--instance",
            &instance,
            "--data-dir",
            &dir.join("data").display().to_string(),
            "--max-concurrent-reconciles",
            &parallelism.to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = Self::spawn(&exe, &args, &key, &dir)?;
        Ok(Server {
            child: child.child,
            url: child.url,
            key,
            instance,
            dir,
            exe,
            args,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()?,
        })
    }

    fn spawn(
        exe: &Path,
        args: &[String],
        key: &str,
        dir: &Path,
    ) -> Result<hive::testing::ServeProcess> {
        let env = [
            ("AGENT_API_KEY".to_string(), Some(key.to_string())),
            ("RUST_LOG".to_string(), Some("warn,hive=info".to_string())),
        ];
        Ok(hive::testing::ServeProcess::start(
            exe,
            args,
            &env,
            None,
            dir.join("hive.log"),
            Duration::from_secs(60),
        )?)
    }

    /// Stops the server and starts it again on the same store: the seconds until it logs
    /// its first resync, and until that resync's queue has drained (every agent's status
    /// refreshed).
    async fn restart(&mut self) -> Result<(f64, f64)> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()?;
        let start = Instant::now();
        let child = Self::spawn(&self.exe, &self.args, &self.key, &self.dir)?;
        self.child = child.child;
        self.url = child.url;
        let log = self.dir.join("hive.log");
        let deadline = start + Duration::from_secs(120);
        let (resynced, queued) = loop {
            let text = std::fs::read_to_string(&log)?;
            if let Some(line) = text.lines().find(|l| l.contains("first resync done")) {
                let queued: f64 = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("queued="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                break (start.elapsed().as_secs_f64(), queued);
            }
            if Instant::now() > deadline {
                bail!("no first resync after 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let drained = loop {
            let metrics = self
                .req(reqwest::Method::GET, "/metrics")
                .send()
                .await?
                .text()
                .await?;
            let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            let depth = metrics
                .lines()
                .find(|l| l.starts_with("hive_queue_depth "))
                .and_then(value);
            let done: f64 = metrics
                .lines()
                .filter(|l| l.starts_with("hive_reconciles_total{"))
                .filter_map(value)
                .sum();
            if depth == Some(0.0) && done >= queued {
                break start.elapsed().as_secs_f64();
            }
            if Instant::now() > deadline {
                bail!("the first resync's queue did not drain in 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        Ok((resynced, drained))
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key)
    }

    async fn put(&self, a: &Agent) -> Result<()> {
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("/v1/agents/{}", a.metadata.name),
            )
            .json(a)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "PUT {}: {} {}",
                a.metadata.name,
                r.status(),
                r.text().await?
            );
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Value>> {
        let v: Value = self
            .req(reqwest::Method::GET, "/v1/agents")
            .send()
            .await?
            .json()
            .await?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// Polls until every agent is in `phase` with its generation observed.
    async fn wait_all(&self, n: usize, phase: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let items = self.list().await?;
            let done = items
                .iter()
                .filter(|a| {
                    a["status"]["phase"] == phase
                        && a["status"]["observedGeneration"] == a["metadata"]["generation"]
                })
                .count();
            if done == n && items.len() == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{done}/{n} agents {phase} after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The engine, seen directly, for this server's instance.
    async fn engine(&self) -> Result<Engine> {
        Engine::new(&self.instance).await
    }

    /// Resident memory (bytes) and CPU time (seconds) of the server process.
    fn usage(&self) -> Result<(u64, f64)> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15; after the ')' they are the 12th and 13th.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok((rss_kb * 1024, ticks as f64 / clock_ticks()))
    }

    async fn stop(mut self) -> Result<()> {
        // Stop the server first (or it would recreate what is removed), then remove what
        // this instance made.
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()?;
        self.engine().await?.remove_all(16).await?;
        let lease = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker ps -aq --filter label=hive.lease={} | xargs -r docker rm -f",
                self.instance
            ))
            .status();
        let _ = lease;
        std::fs::remove_dir_all(&self.dir).ok();
        Ok(())
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

async fn converge(args: &ConvergeArgs) -> Result<Vec<Row>> {
    let n = args.agents;
    let (mut base_up, mut base_down, mut hive_up, mut hive_down) = (vec![], vec![], vec![], vec![]);
    // One server for every round, as in production: whatever grows with its history
    // (audit, events, watch history, the network) shows as rounds that get slower.
    let server = Server::start(args.parallelism, &[]).await?;
    for round in 1..=args.rounds {
        eprintln!("converge: round {round}/{} with {n} agents", args.rounds);
        // Baseline: the same containers, straight through the engine.
        let o = Arc::new(Engine::new(&format!("base{}", token())).await?);
        let start = Instant::now();
        let results: Vec<_> = stream::iter(0..n)
            .map(|i| {
                let o = o.clone();
                async move { o.run(&format!("a{i:04}")).await }
            })
            .buffer_unordered(args.parallelism)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<_>>>()?;
        base_up.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        o.remove_all(args.parallelism).await?;
        base_down.push(start.elapsed().as_secs_f64());

        // Hive: PUT through the API, wait until all report Running.
        let agents: Vec<_> = (0..n).map(|i| agent(&format!("a{i:04}"), false)).collect();
        let start = Instant::now();
        let results: Vec<_> = stream::iter(&agents)
            .map(|a| server.put(a))
            .buffer_unordered(args.parallelism)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<_>>>()?;
        server.wait_all(n, "Running").await?;
        hive_up.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        let results: Vec<_> = stream::iter(&agents)
            .map(|a| async {
                server
                    .req(
                        reqwest::Method::DELETE,
                        &format!("/v1/agents/{}", a.metadata.name),
                    )
                    .send()
                    .await?
                    .error_for_status()
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })
            .buffer_unordered(args.parallelism)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<_>>>()?;
        let so = server.engine().await?;
        loop {
            if so.ids(None).await?.is_empty() && server.list().await?.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        hive_down.push(start.elapsed().as_secs_f64());
        eprintln!(
            "converge: round {round}: baseline {:.2} s, hive {:.2} s",
            base_up[round - 1],
            hive_up[round - 1]
        );
    }
    server.stop().await?;
    let bu = Row::from_samples(
        "converge",
        &format!("baseline: create+start {n} containers"),
        "s",
        &base_up,
    );
    let hu = Row::from_samples(
        "converge",
        &format!("hive: {n} agents PUT until Running"),
        "s",
        &hive_up,
    )
    .against(&bu)
    .target("ratio <= 1.15");
    let bd = Row::from_samples(
        "converge",
        &format!("baseline: remove {n} containers"),
        "s",
        &base_down,
    );
    let hd = Row::from_samples(
        "converge",
        &format!("hive: DELETE {n} agents until gone"),
        "s",
        &hive_down,
    )
    .against(&bd)
    .target("ratio <= 1.15");
    // Flat across rounds: the last round against the first, for Hive and for the engine.
    let last = |v: &[f64]| v[v.len() - 1] / v[0];
    let mut rows = vec![bu, hu, bd, hd];
    if args.rounds > 1 {
        rows.push(Row::single(
            "converge",
            &format!("baseline: round {} / round 1", args.rounds),
            "x",
            last(&base_up),
        ));
        rows.push(
            Row::single(
                "converge",
                &format!("hive: round {} / round 1 (one server)", args.rounds),
                "x",
                last(&hive_up),
            )
            .target("<= 1.10"),
        );
    }
    Ok(rows)
}

/// Measures `requests` calls of `make` with `concurrency` in flight; returns rows for
/// requests per second and p50/p99 latency in milliseconds.
async fn load<F, Fut>(label: &str, requests: usize, concurrency: usize, make: F) -> Result<Vec<Row>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let start = Instant::now();
    let latencies: Vec<Result<f64>> = stream::iter(0..requests)
        .map(|i| {
            let f = make(i);
            async move {
                let t = Instant::now();
                f.await?;
                Ok(t.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let total = start.elapsed().as_secs_f64();
    let mut l = latencies.into_iter().collect::<Result<Vec<f64>>>()?;
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    Ok(vec![
        Row::single(
            "api",
            &format!("{label}: throughput"),
            "req/s",
            requests as f64 / total,
        ),
        Row::single("api", &format!("{label}: p50 latency"), "ms", pct(0.50)),
        Row::single("api", &format!("{label}: p99 latency"), "ms", pct(0.99)),
    ])
}

async fn ok(r: reqwest::RequestBuilder) -> Result<()> {
    let r = r.send().await?;
    if !r.status().is_success() {
        bail!("{} {}", r.status(), r.text().await?);
    }
    r.bytes().await?;
    Ok(())
}

/// Declares `n` Stopped agents and waits until each is observed.
/// Each carries a label `group` of 100 values, so that a selector picks 1 in 100.
async fn declare_stopped(server: &Server, n: usize) -> Result<Vec<Agent>> {
    let agents: Vec<_> = (0..n)
        .map(|i| {
            let mut a = agent(&format!("s{i:05}"), true);
            a.metadata
                .labels
                .insert("group".into(), format!("g{}", i % 100));
            a
        })
        .collect();
    let results: Vec<_> = stream::iter(&agents)
        .map(|a| server.put(a))
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>>>()?;
    server.wait_all(n, "Stopped").await?;
    Ok(agents)
}

async fn api(args: &ApiArgs) -> Result<Vec<Row>> {
    let server = Server::start(16, &["--max-streams-per-key", "256"]).await?;
    eprintln!("api: declaring {} stopped agents", args.agents);
    let agents = declare_stopped(&server, args.agents).await?;
    let (req, c) = (args.requests, args.concurrency);
    let s = &server;
    let mut rows = Vec::new();
    let floor = load("GET /healthz (floor)", req, c, |_| {
        ok(s.http.get(format!("{}/healthz", s.url)))
    })
    .await?;
    let get = load("GET one agent", req, c, |i| {
        ok(s.req(
            reqwest::Method::GET,
            &format!("/v1/agents/{}", agents[i % agents.len()].metadata.name),
        ))
    })
    .await?;
    let list = load(
        &format!("LIST {} agents", agents.len()),
        (req / 20).max(50),
        c,
        |_| ok(s.req(reqwest::Method::GET, "/v1/agents")),
    )
    .await?;
    let paged = load("LIST a page of 100", req, c, |_| {
        ok(s.req(reqwest::Method::GET, "/v1/agents?limit=100"))
    })
    .await?;
    let selected = load(
        &format!("LIST by label ({} of {})", agents.len() / 100, agents.len()),
        req,
        c,
        |i| {
            ok(s.req(
                reqwest::Method::GET,
                &format!("/v1/agents?label=group=g{}", i % 100),
            ))
        },
    )
    .await?;
    // Durable writes that change labels only: flushed to disk, no container churn.
    let put = load("PUT (durable, label change)", req / 4, c, |i| {
        let mut a = agents[i % agents.len()].clone();
        a.metadata.labels.insert("bench".into(), i.to_string());
        async move { s.put(&a).await }
    })
    .await?;
    for (i, r) in get
        .into_iter()
        .chain(list)
        .chain(paged)
        .chain(selected)
        .chain(put)
        .enumerate()
    {
        let base = &floor[i % 3];
        rows.push(r.against(base));
    }
    rows.splice(0..0, floor);
    rows.extend(watch_fanout(s, &agents, args.watchers, 50).await?);
    for r in rows.iter_mut() {
        let target = match r.what.as_str() {
            w if w.starts_with("GET one agent: p99") => "< 2 ms",
            w if w.starts_with("LIST") && w.contains("agents: p99") => "< 20 ms",
            w if w.starts_with("LIST by label") && w.ends_with("p99 latency") => "< 2 ms",
            w if w.starts_with("PUT") && w.ends_with("throughput") => ">= 1000 req/s",
            _ => continue,
        };
        r.target = Some(target.into());
    }
    server.stop().await?;
    Ok(rows)
}

/// `watchers` concurrent watches; `changes` label changes made one at a time: for each,
/// the delay from the write's answer until each watcher has the change.
async fn watch_fanout(
    s: &Server,
    agents: &[Agent],
    watchers: usize,
    changes: usize,
) -> Result<Vec<Row>> {
    eprintln!("api: {watchers} watchers, {changes} changes");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let r = s
            .req(
                reqwest::Method::GET,
                "/v1/agents?watch=true&label=watched=yes",
            )
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("watch: {}", r.status());
        }
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = r.bytes_stream();
            let mut buffer = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    if let Some(mark) = v["object"]["metadata"]["labels"]["mark"]
                        .as_str()
                        .and_then(|m| m.parse().ok())
                    {
                        let _ = tx.send((mark, Instant::now()));
                    }
                }
            }
        }));
    }
    let mut a = agents[0].clone();
    a.metadata.labels.insert("watched".into(), "yes".into());
    let mut delays = Vec::new();
    for mark in 0..changes {
        a.metadata.labels.insert("mark".into(), mark.to_string());
        s.put(&a).await?;
        let answered = Instant::now();
        let mut seen = 0;
        let deadline = answered + Duration::from_secs(10);
        while seen < watchers {
            let (m, at) = tokio::time::timeout_at(deadline.into(), rx.recv())
                .await
                .context("a watcher did not see a change in 10 s")?
                .context("the watchers ended")?;
            if m == mark {
                seen += 1;
                // Seen before the write was answered (it is published as it is stored,
                // then made durable): no delay.
                delays.push(at.saturating_duration_since(answered).as_secs_f64() * 1000.0);
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    Ok(vec![
        Row::single(
            "api",
            &format!("watch, {watchers} watchers: p50 delay"),
            "ms",
            pct(0.5),
        ),
        Row::single(
            "api",
            &format!("watch, {watchers} watchers: p99 delay"),
            "ms",
            pct(0.99),
        )
        .target("< 50 ms"),
    ])
}

async fn steady(args: &SteadyArgs) -> Result<Vec<Row>> {
    let mut server = Server::start(16, &[]).await?;
    eprintln!("steady: declaring {} stopped agents", args.agents);
    declare_stopped(&server, args.agents).await?;
    // Let the last events and the first resync settle, then measure an idle window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!("steady: measuring {}s of idleness", args.seconds);
    let (_, cpu0) = server.usage()?;
    let mut peak_rss = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(args.seconds) {
        peak_rss = peak_rss.max(server.usage()?.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (rss, cpu1) = server.usage()?;
    let per_minute = (cpu1 - cpu0) * 60.0 / start.elapsed().as_secs_f64();
    // A build that does not log its first resync (older ones) is not restarted.
    let logs_resync =
        std::fs::read_to_string(server.dir.join("hive.log"))?.contains("first resync done");
    let startup = if logs_resync {
        eprintln!("steady: restarting on the same store");
        Some(server.restart().await?)
    } else {
        None
    };
    let after_restart = server.usage()?.0;
    server.stop().await?;
    let n = args.agents;
    let rss_target = if n >= 10_000 { "< 128 MiB" } else { "< 64 MiB" };
    let mut rows = vec![
        Row::single(
            "steady",
            &format!("CPU while idle, {n} agents"),
            "s/min",
            per_minute,
        )
        .target("< 1 s/min"),
        Row::single(
            "steady",
            &format!("resident memory, {n} agents"),
            "MiB",
            rss.max(peak_rss).max(after_restart) as f64 / 1048576.0,
        )
        .target(rss_target),
    ];
    if let Some((resynced, drained)) = startup {
        rows.push(
            Row::single(
                "steady",
                &format!("start-up to first resync, {n} agents"),
                "s",
                resynced,
            )
            .target("< 2 s"),
        );
        rows.push(Row::single(
            "steady",
            &format!("start-up until every status is refreshed, {n} agents"),
            "s",
            drained,
        ));
    }
    Ok(rows)
}

/// Waits until a container of `agent` runs again; the milliseconds since `start`.
async fn until_running_again(o: &Engine, agent: &str, start: Instant) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if o.running(agent).await? {
            return Ok(start.elapsed().as_secs_f64() * 1000.0);
        }
        if Instant::now() > deadline {
            bail!("{agent} did not run again within 60s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until a container of `agent` runs under another process than `old_pid`: back
/// after a crash or a kill, however quickly (a restart can be quicker than a poll, so
/// "down, then up" could be missed). Answers milliseconds since `start`.
async fn until_replaced(o: &Engine, agent: &str, old_pid: i64, start: Instant) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for id in o.ids(Some(agent)).await? {
            if o.pid(&id).await.is_ok_and(|pid| pid != 0 && pid != old_pid) {
                return Ok(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if Instant::now() > deadline {
            bail!("{agent} did not run again within 60s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn docker_cli(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Kills a container's init process from the host: a crash, as far as the engine knows.
fn crash(pid: i64) -> Result<()> {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 {pid} failed");
    }
    Ok(())
}

async fn drift(args: &DriftArgs) -> Result<Vec<Row>> {
    // Baseline: a container under the engine's own restart policy, crashed.
    let o = Engine::new(&format!("base{}", token())).await?;
    let id = o.run("crash").await?;
    let mut engine_restart = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("drift: engine restart policy, round {round}");
        until_running_again(&o, "crash", Instant::now()).await?;
        // The engine's back-off grows with quick successive crashes; wait it out.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let pid = o.pid(&id).await?;
        let start = Instant::now();
        crash(pid)?;
        engine_restart.push(until_replaced(&o, "crash", pid, start).await?);
    }
    o.remove_all(4).await?;

    // Hive: an agent killed with `docker kill`, which the engine's policy leaves dead.
    let server = Server::start(16, &[]).await?;
    server.put(&agent("drift", false)).await?;
    server.wait_all(1, "Running").await?;
    let so = server.engine().await?;
    let mut hive_repair = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("drift: hive repair after docker kill, round {round}");
        let id = so
            .ids(Some("drift"))
            .await?
            .first()
            .context("the agent's container")?
            .clone();
        let pid = so.pid(&id).await?;
        let start = Instant::now();
        docker_cli(&["kill", &id])?;
        hive_repair.push(until_replaced(&so, "drift", pid, start).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    server.stop().await?;
    let base = Row::from_samples(
        "drift",
        "engine restart policy after a crash",
        "ms",
        &engine_restart,
    );
    let hive = Row::from_samples(
        "drift",
        "hive repair after `docker kill`",
        "ms",
        &hive_repair,
    )
    .against(&base);
    Ok(vec![base, hive])
}
