//! `exec`: a command run in a running agent through Hive (`POST /v1/agents/{name}/exec`)
//! against the same command through the engine's own exec endpoints (create, start
//! attached, read to the end, inspect), alternating one each, so both share the same
//! moment of the engine.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::engine::docker;
use crate::report::Row;
use crate::server::{agent, token, Server};
use crate::ExecArgs;

/// The median and the 99th percentile of `samples`, in milliseconds.
fn p50_p99(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    (samples[n / 2], samples[(n * 99 / 100).min(n - 1)])
}

pub(crate) async fn exec(args: &ExecArgs) -> Result<Vec<Row>> {
    let server = Server::start(4, &[]).await?;
    let name = format!("exec-{}", token());
    server.put(&agent(&name, false)).await?;
    server.wait_all(1, "Running").await?;
    let items = server.list().await?;
    let id = items[0]["status"]["containerId"]
        .as_str()
        .context("the agent's container id")?
        .to_string();
    let d = docker().await?;
    let (mut engine, mut hive) = (Vec::new(), Vec::new());
    for _ in 0..args.requests {
        let start = Instant::now();
        let created = d
            .create_exec(
                &id,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(vec!["sh", "-c", ":"]),
                    ..Default::default()
                },
            )
            .await?;
        if let StartExecResults::Attached { mut output, .. } =
            d.start_exec(&created.id, None).await?
        {
            while output.next().await.is_some() {}
        }
        let code = d.inspect_exec(&created.id).await?.exit_code;
        if code != Some(0) {
            bail!("the engine's exec of sh -c : exited {code:?}");
        }
        engine.push(start.elapsed().as_secs_f64() * 1000.0);

        let start = Instant::now();
        let r: Value = server
            .req(reqwest::Method::POST, &format!("/v1/agents/{name}/exec"))
            .json(&json!({"command": ["sh", "-c", ":"]}))
            .send()
            .await?
            .json()
            .await?;
        if r["exitCode"] != 0 {
            bail!("Hive's exec of sh -c : answered {r}");
        }
        hive.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let (e50, e99) = p50_p99(&mut engine);
    let (h50, h99) = p50_p99(&mut hive);
    let base50 = Row::single("exec", "engine exec of sh -c :, p50", "ms", e50);
    let base99 = Row::single("exec", "engine exec of sh -c :, p99", "ms", e99);
    let rows = vec![
        Row::single("exec", "Hive exec of sh -c :, p50", "ms", h50).against(&base50),
        Row::single("exec", "Hive exec of sh -c :, p99", "ms", h99).against(&base99),
        base50,
        base99,
    ];
    server.stop().await?;
    Ok(rows)
}
