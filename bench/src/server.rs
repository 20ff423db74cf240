//! A `hive serve` child process on a fresh store and instance, and the agents it is given.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hive::agent::{Agent, AgentSpec, Metadata, RestartPolicy};
use serde_json::Value;

use crate::engine::Engine;
use crate::IMAGE;

/// An agent that sleeps, in the shape Hive stores.
pub(crate) fn agent(name: &str, stopped: bool) -> Agent {
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

pub(crate) fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A `hive serve` child process on a fresh store and instance.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) key: String,
    pub(crate) instance: String,
    pub(crate) dir: PathBuf,
    pub(crate) exe: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) http: reqwest::Client,
}

impl Server {
    /// A `hive serve` on a fresh store and instance: the `hive` beside this binary, or the
    /// one `HIVE_BENCH_SERVER` names (to measure another build in the same run).
    pub(crate) async fn start(parallelism: usize, extra: &[&str]) -> Result<Server> {
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

    pub(crate) fn spawn(
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
    pub(crate) async fn restart(&mut self) -> Result<(f64, f64)> {
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

    pub(crate) fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key)
    }

    pub(crate) async fn put(&self, a: &Agent) -> Result<()> {
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

    pub(crate) async fn list(&self) -> Result<Vec<Value>> {
        let v: Value = self
            .req(reqwest::Method::GET, "/v1/agents")
            .send()
            .await?
            .json()
            .await?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// Polls until every agent is in `phase` with its generation observed.
    pub(crate) async fn wait_all(&self, n: usize, phase: &str) -> Result<()> {
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
    pub(crate) async fn engine(&self) -> Result<Engine> {
        Engine::new(&self.instance).await
    }

    /// Resident memory (bytes) and CPU time (seconds) of the server process.
    pub(crate) fn usage(&self) -> Result<(u64, f64)> {
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

    pub(crate) async fn stop(mut self) -> Result<()> {
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

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
