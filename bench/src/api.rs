//! `api`: throughput and latency of reads, writes and watches, next to `/healthz`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use hive::agent::Agent;
use serde_json::Value;

use crate::report::Row;
use crate::server::{agent, Server};
use crate::ApiArgs;

/// Measures `requests` calls of `make` with `concurrency` in flight; returns rows for
/// requests per second and p50/p99 latency in milliseconds.
pub(crate) async fn load<F, Fut>(
    label: &str,
    requests: usize,
    concurrency: usize,
    make: F,
) -> Result<Vec<Row>>
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

pub(crate) async fn ok(r: reqwest::RequestBuilder) -> Result<()> {
    let r = r.send().await?;
    if !r.status().is_success() {
        bail!("{} {}", r.status(), r.text().await?);
    }
    r.bytes().await?;
    Ok(())
}

/// Declares `n` Stopped agents and waits until each is observed.
/// Each carries a label `group` of 100 values, so that a selector picks 1 in 100.
pub(crate) async fn declare_stopped(server: &Server, n: usize) -> Result<Vec<Agent>> {
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

pub(crate) async fn api(args: &ApiArgs) -> Result<Vec<Row>> {
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
pub(crate) async fn watch_fanout(
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
