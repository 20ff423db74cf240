//! `converge`: a fleet created and removed, Hive against the engine driven directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::stream::{self, StreamExt};

use crate::engine::Engine;
use crate::report::Row;
use crate::server::{agent, token, Server};
use crate::ConvergeArgs;

pub(crate) async fn converge(args: &ConvergeArgs) -> Result<Vec<Row>> {
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
