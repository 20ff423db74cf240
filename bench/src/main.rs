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

mod api;
mod converge;
mod drift;
mod engine;
mod exec;
mod report;
mod server;
mod steady;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use report::Row;

/// The image the benchmark's agents run: Debian's static busybox, imported once.
pub(crate) const IMAGE: &str = "hive-bench-busybox:1";

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
    /// A command run in an agent through Hive, against the engine's own exec.
    Exec(ExecArgs),
    /// Everything above, with defaults.
    All,
}

#[derive(Args, Clone)]
pub(crate) struct ConvergeArgs {
    #[arg(long, default_value_t = 100)]
    pub(crate) agents: usize,
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Parallelism of both the baseline and Hive (its --max-concurrent-reconciles).
    #[arg(long, default_value_t = 16)]
    pub(crate) parallelism: usize,
}

#[derive(Args, Clone)]
pub(crate) struct ApiArgs {
    /// Agents stored while measuring (Stopped, so the engine is spared).
    #[arg(long, default_value_t = 1000)]
    pub(crate) agents: usize,
    #[arg(long, default_value_t = 4000)]
    pub(crate) requests: usize,
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Concurrent watchers for the fan-out figure.
    #[arg(long, default_value_t = 100)]
    pub(crate) watchers: usize,
}

#[derive(Args, Clone)]
pub(crate) struct SteadyArgs {
    #[arg(long, default_value_t = 1000)]
    pub(crate) agents: usize,
    /// Length of the idle window measured (should span at least one resync).
    #[arg(long, default_value_t = 60)]
    pub(crate) seconds: u64,
}

#[derive(Args, Clone)]
pub(crate) struct DriftArgs {
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
}

#[derive(Args, Clone)]
pub(crate) struct ExecArgs {
    /// Execs of each kind, alternating.
    #[arg(long, default_value_t = 200)]
    pub(crate) requests: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    engine::ensure_image().await?;
    let mut rows = Vec::new();
    match cli.command {
        Bench::Converge(a) => rows.extend(converge::converge(&a).await?),
        Bench::Api(a) => rows.extend(api::api(&a).await?),
        Bench::Steady(a) => rows.extend(steady::steady(&a).await?),
        Bench::Drift(a) => rows.extend(drift::drift(&a).await?),
        Bench::Exec(a) => rows.extend(exec::exec(&a).await?),
        Bench::All => {
            rows.extend(
                converge::converge(&ConvergeArgs {
                    agents: 100,
                    rounds: 3,
                    parallelism: 16,
                })
                .await?,
            );
            rows.extend(drift::drift(&DriftArgs { rounds: 5 }).await?);
            rows.extend(exec::exec(&ExecArgs { requests: 200 }).await?);
            rows.extend(
                api::api(&ApiArgs {
                    agents: 1000,
                    requests: 4000,
                    concurrency: 16,
                    watchers: 100,
                })
                .await?,
            );
            rows.extend(
                steady::steady(&SteadyArgs {
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
