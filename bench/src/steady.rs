//! `steady`: CPU and memory of an idle Hive holding many (Stopped) agents, and its restart.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::api::declare_stopped;
use crate::report::Row;
use crate::server::Server;
use crate::SteadyArgs;

pub(crate) async fn steady(args: &SteadyArgs) -> Result<Vec<Row>> {
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
