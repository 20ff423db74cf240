//! `drift`: a crashed container back under the engine's policy, against a killed one Hive repairs.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::engine::Engine;
use crate::report::Row;
use crate::server::{agent, token, Server};
use crate::DriftArgs;

/// Waits until a container of `agent` runs again; the milliseconds since `start`.
pub(crate) async fn until_running_again(o: &Engine, agent: &str, start: Instant) -> Result<f64> {
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
pub(crate) async fn until_replaced(
    o: &Engine,
    agent: &str,
    old_pid: i64,
    start: Instant,
) -> Result<f64> {
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

pub(crate) fn docker_cli(args: &[&str]) -> Result<String> {
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
pub(crate) fn crash(pid: i64) -> Result<()> {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 {pid} failed");
    }
    Ok(())
}

pub(crate) async fn drift(args: &DriftArgs) -> Result<Vec<Row>> {
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
