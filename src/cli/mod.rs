//! The `hive` command line's client commands (apply, get, describe, delete, start, stop,
//! restart, logs, wait), kubectl-like, all over the HTTP API. Each failure prints one line
//! saying what failed and what to do, and exits non-zero.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

pub mod client;

pub use client::{CliError, Client, Connection};

/// The annotation `hive apply --prune` marks what it applies with (the file, relative to
/// the directory). A client's own: `hive/` annotations are the server's, and the server's
/// manifests directory never takes over what carries this one.
pub const APPLY_SOURCE: &str = "hive-apply/source";

/// Output formats of `hive get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
}

/// The client commands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Create or update agents from files (YAML streams or JSON), a directory, or - for stdin.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Show what would change, as a diff, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// One-shot sync of a directory: also delete agents from manifests (those with a
        /// `hive-apply/source` annotation) that the directory no longer declares. Nothing is pruned
        /// if any file is invalid or the directory holds no manifests.
        #[arg(long)]
        prune: bool,
    },
    /// List agents, or show one.
    Get {
        name: Option<String>,
        /// Label selector: k=v, k!=v, k, !k, comma-separated.
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Keep watching: print a line for every change (until interrupted).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show an agent's spec, status and container.
    Describe { name: String },
    /// Delete agents by name or by the files that declare them.
    Delete {
        names: Vec<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// Wait until they are gone.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "60s")]
        timeout: humantime::Duration,
    },
    /// Declare an agent Running.
    Start { name: String },
    /// Declare an agent Stopped.
    Stop { name: String },
    /// Restart an agent's container once.
    Restart { name: String },
    /// Print an agent's output.
    Logs {
        name: String,
        /// Keep following new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// Only output newer than this (e.g. 10m).
        #[arg(long)]
        since: Option<humantime::Duration>,
    },
    /// Exit 0 if the server answers /healthz (for container health checks; needs no key).
    Health,
    /// Wait until an agent reaches a phase (its current generation observed).
    Wait {
        name: String,
        /// What to wait for: phase=<Phase> or condition=<Ready|Progressing>.
        #[arg(long = "for")]
        condition: String,
        #[arg(long, default_value = "60s")]
        timeout: humantime::Duration,
    },
}

/// Runs a client command, printing its results to stdout.
pub async fn run(conn: &Connection, command: ClientCommand) -> Result<(), CliError> {
    if let ClientCommand::Health = command {
        return client::health(conn).await;
    }
    let client = Client::new(conn)?;
    match command {
        ClientCommand::Apply {
            files,
            dry_run,
            prune,
        } => apply(&client, &files, dry_run, prune).await,
        ClientCommand::Get {
            name,
            selector,
            watch: true,
            ..
        } => watch(&client, name, selector).await,
        ClientCommand::Get {
            name,
            selector,
            output,
            ..
        } => get(&client, name, selector, output).await,
        ClientCommand::Describe { name } => describe(&client, &name).await,
        ClientCommand::Delete {
            names,
            files,
            wait,
            timeout,
        } => delete(&client, names, &files, wait.then_some(timeout.into())).await,
        ClientCommand::Start { name } => action(&client, &name, "start").await,
        ClientCommand::Stop { name } => action(&client, &name, "stop").await,
        ClientCommand::Restart { name } => action(&client, &name, "restart").await,
        ClientCommand::Logs {
            name,
            follow,
            tail,
            since,
        } => logs(&client, &name, follow, tail, since.map(Into::into)).await,
        ClientCommand::Wait {
            name,
            condition,
            timeout,
        } => wait(&client, &name, &condition, timeout.into()).await,
        ClientCommand::Health => client::health(conn).await,
    }
}

/// One document read from a file, and where it came from.
struct Sourced {
    source: String,
    value: Value,
}

/// Reads every document of the given files (directories recursively: *.yaml, *.yml, *.json).
fn read_documents(paths: &[PathBuf]) -> Result<Vec<Sourced>, CliError> {
    let mut files = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            files.push(p.clone());
        } else if p.is_dir() {
            let found = crate::manifests::manifest_files(p)
                .map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))?;
            files.extend(found);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            return Err(CliError::new(format!("{} does not exist", p.display())));
        }
    }
    let mut docs = Vec::new();
    for f in files {
        let (name, bytes) = if f.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
            ("stdin".to_string(), buf)
        } else {
            let bytes = std::fs::read(&f)
                .map_err(|e| CliError::new(format!("cannot read {}: {e}", f.display())))?;
            (f.display().to_string(), bytes)
        };
        let values =
            crate::document::stream(&bytes).map_err(|e| CliError::new(format!("{name}: {e}")))?;
        let many = values.len() > 1;
        for (i, value) in values.into_iter().enumerate() {
            let source = if many {
                format!("{name} (document {})", i + 1)
            } else {
                name.clone()
            };
            docs.push(Sourced { source, value });
        }
    }
    if docs.is_empty() {
        return Err(CliError::new("no documents found in the given files"));
    }
    Ok(docs)
}

async fn apply(
    client: &Client,
    files: &[PathBuf],
    dry_run: bool,
    prune: bool,
) -> Result<(), CliError> {
    let docs = if prune {
        let [dir] = files else {
            return Err(CliError::new("--prune takes exactly one directory: -f DIR"));
        };
        if !dir.is_dir() {
            return Err(CliError::new(format!(
                "--prune takes a directory; {} is not one",
                dir.display()
            )));
        }
        read_sourced(dir)?
    } else {
        read_documents(files)?
    };
    let body: Vec<&Value> = docs.iter().map(|d| &d.value).collect();
    let path = if dry_run {
        "/v1/apply?dryRun=true"
    } else {
        "/v1/apply"
    };
    let r = client
        .request(Method::POST, path)
        .json(&body)
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    if r.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        let e: Value = r.json().await.unwrap_or(Value::Null);
        if let Some(bad) = e["error"]["documents"].as_array() {
            let lines: Vec<String> = bad
                .iter()
                .map(|d| {
                    let i = d["index"].as_u64().unwrap_or(0) as usize;
                    let at = docs.get(i).map_or("?", |d| d.source.as_str());
                    format!("  {at}: {}", d["message"].as_str().unwrap_or(""))
                })
                .collect();
            return Err(CliError::new(format!(
                "{}\n{}",
                e["error"]["message"]
                    .as_str()
                    .unwrap_or("invalid documents"),
                lines.join("\n")
            )));
        }
        return Err(CliError::new(
            e["error"]["message"]
                .as_str()
                .unwrap_or("invalid")
                .to_string(),
        ));
    }
    let answer = client.json_of(r).await?;
    let suffix = if dry_run { " (dry run)" } else { "" };
    let mut out = std::io::stdout().lock();
    for item in answer["items"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "agent/{} {}{suffix}",
            item["name"].as_str().unwrap_or(""),
            item["result"].as_str().unwrap_or("")
        );
        if let Some(diff) = item["diff"].as_str() {
            for line in diff.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    drop(out);
    if prune {
        let declared: std::collections::BTreeSet<&str> = docs
            .iter()
            .filter_map(|d| d.value.pointer("/metadata/name")?.as_str())
            .collect();
        let list = client
            .json(client.request(Method::GET, "/v1/agents"))
            .await?;
        for a in list["items"].as_array().into_iter().flatten() {
            let name = a["metadata"]["name"].as_str().unwrap_or_default();
            let from_manifest = a["metadata"]["annotations"][APPLY_SOURCE].is_string();
            let deleting = a["metadata"]["deletionTimestamp"].is_string();
            if !from_manifest || deleting || declared.contains(name) {
                continue;
            }
            if !dry_run {
                client
                    .send(client.request(Method::DELETE, &format!("/v1/agents/{name}")))
                    .await?;
            }
            println!("agent/{name} pruned{suffix}");
        }
    }
    Ok(())
}

/// Every document below `dir`, annotated with its source path as the manifests sync does.
fn read_sourced(dir: &std::path::Path) -> Result<Vec<Sourced>, CliError> {
    let files = crate::manifests::manifest_files(dir)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", dir.display())))?;
    if files.is_empty() {
        return Err(CliError::new(format!(
            "{} holds no manifests; nothing applied or pruned",
            dir.display()
        )));
    }
    let mut docs = Vec::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        for mut d in read_documents(std::slice::from_ref(&f))? {
            if let Some(meta) = d.value.get_mut("metadata").and_then(Value::as_object_mut) {
                let notes = meta.entry("annotations").or_insert_with(|| json!({}));
                if let Some(n) = notes.as_object_mut() {
                    n.insert(APPLY_SOURCE.into(), Value::String(rel.clone()));
                }
            }
            docs.push(d);
        }
    }
    Ok(docs)
}

async fn get(
    client: &Client,
    name: Option<String>,
    selector: Option<String>,
    output: Output,
) -> Result<(), CliError> {
    let (items, single) = match &name {
        Some(n) => {
            let a = client
                .agent(n)
                .await?
                .ok_or_else(|| CliError::new(format!("agent {n:?} not found")))?;
            (vec![a], true)
        }
        None => {
            let mut req = client.request(Method::GET, "/v1/agents");
            if let Some(s) = &selector {
                req = req.query(&[("label", s)]);
            }
            let list = client.json(req).await?;
            (list["items"].as_array().cloned().unwrap_or_default(), false)
        }
    };
    let doc = if single {
        items[0].clone()
    } else {
        json!({"apiVersion": "hive/v1", "kind": "AgentList", "items": items})
    };
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n",
        Output::Yaml => serde_yaml::to_string(&doc).unwrap_or_default(),
        Output::Table | Output::Wide => table(&items, output == Output::Wide),
    };
    print!("{text}");
    Ok(())
}

/// `hive get -w`: the agents now, then a line for every change.
async fn watch(
    client: &Client,
    name: Option<String>,
    selector: Option<String>,
) -> Result<(), CliError> {
    let mut req = client
        .request(Method::GET, "/v1/agents")
        .query(&[("watch", "true")]);
    if let Some(s) = &selector {
        req = req.query(&[("label", s)]);
    }
    let r = client.send(req).await?;
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    println!(
        "{:<9} {:<24} {:<8} {:<11} RESTARTS",
        "EVENT", "NAME", "STATE", "PHASE"
    );
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| CliError::new(format!("the watch broke: {e}")))?;
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).map_err(|e| {
                CliError::new(format!("the server sent a line that is not JSON: {e}"))
            })?;
            let a = &event["object"];
            if event["type"] == "ERROR" {
                return Err(CliError::new(format!(
                    "the watch ended: {}",
                    a["message"].as_str().unwrap_or("")
                )));
            }
            let agent = a["metadata"]["name"].as_str().unwrap_or("");
            if name.as_deref().is_some_and(|n| n != agent) {
                continue;
            }
            println!(
                "{:<9} {:<24} {:<8} {:<11} {}",
                event["type"].as_str().unwrap_or(""),
                agent,
                a["spec"]["state"].as_str().unwrap_or("Running"),
                a["status"]["phase"].as_str().unwrap_or(""),
                a["status"]["restartCount"].as_u64().unwrap_or(0)
            );
            let _ = std::io::stdout().flush();
        }
    }
    Ok(())
}

/// Agents as an aligned table.
pub fn table(items: &[Value], wide: bool) -> String {
    let mut rows = vec![{
        let mut h = vec!["NAME", "STATE", "PHASE", "IMAGE", "RESTARTS", "AGE"];
        if wide {
            h.extend(["OWNER", "GENERATION", "MESSAGE"]);
        }
        h.into_iter().map(String::from).collect::<Vec<_>>()
    }];
    for a in items {
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let mut row = vec![
            s(&a["metadata"]["name"]),
            a["spec"]["state"].as_str().unwrap_or("Running").to_string(),
            s(&a["status"]["phase"]),
            s(&a["spec"]["image"]),
            a["status"]["restartCount"]
                .as_u64()
                .unwrap_or(0)
                .to_string(),
            age(a["metadata"]["creationTimestamp"].as_str()),
        ];
        if wide {
            row.push(s(&a["metadata"]["owner"]));
            row.push(format!(
                "{}/{}",
                a["status"]["observedGeneration"].as_u64().unwrap_or(0),
                a["metadata"]["generation"].as_u64().unwrap_or(0)
            ));
            row.push(s(&a["status"]["message"]));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
            .collect();
        out += cells.join("   ").trim_end();
        out += "\n";
    }
    out
}

/// How long ago an RFC 3339 time was, in the largest whole unit (`45s`, `3m`, `2h`, `4d`).
fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    }) else {
        return "-".into();
    };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

async fn describe(client: &Client, name: &str) -> Result<(), CliError> {
    let a = client
        .agent(name)
        .await?
        .ok_or_else(|| CliError::new(format!("agent {name:?} not found")))?;
    let m = &a["metadata"];
    let st = &a["status"];
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    let labels = m["labels"]
        .as_object()
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "-".into());
    let mut out = String::new();
    out += &format!("Name:         {}\n", s(&m["name"]));
    out += &format!("Owner:        {}\n", s(&m["owner"]));
    out += &format!("Labels:       {labels}\n");
    out += &format!("UID:          {}\n", s(&m["uid"]));
    out += &format!(
        "Created:      {} ({} ago)\n",
        s(&m["creationTimestamp"]),
        age(m["creationTimestamp"].as_str())
    );
    out += &format!(
        "Generation:   {} (observed {})\n",
        m["generation"].as_u64().unwrap_or(0),
        st["observedGeneration"].as_u64().unwrap_or(0)
    );
    out += "Spec:\n";
    for line in serde_yaml::to_string(&a["spec"])
        .unwrap_or_default()
        .lines()
    {
        out += &format!("  {line}\n");
    }
    out += "Status:\n";
    out += &format!(
        "  Phase:      {} (since {})\n",
        s(&st["phase"]),
        s(&st["lastTransitionTime"])
    );
    out += &format!("  Message:    {}\n", s(&st["message"]));
    out += &format!(
        "  Container:  {}\n",
        st["containerId"]
            .as_str()
            .map_or("-".into(), |c| c.chars().take(12).collect::<String>())
    );
    out += &format!(
        "  Restarts:   {}\n",
        st["restartCount"].as_u64().unwrap_or(0)
    );
    for c in st["conditions"].as_array().into_iter().flatten() {
        out += &format!(
            "  {:<11} {} ({}{})\n",
            format!("{}:", s(&c["type"])),
            s(&c["status"]),
            s(&c["reason"]),
            c["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    let events = client
        .json(client.request(Method::GET, &format!("/v1/agents/{name}/events")))
        .await?;
    out += "Events:\n";
    let items = events["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        out += "  <none>\n";
    }
    for e in items.iter().rev().take(15).rev() {
        let count = e["count"].as_u64().unwrap_or(1);
        out += &format!(
            "  {:<8} {:<10} {:>5} ago  {}{}\n",
            s(&e["type"]),
            s(&e["reason"]),
            age(e["lastTime"].as_str()),
            s(&e["message"]),
            if count > 1 {
                format!(" (x{count})")
            } else {
                String::new()
            }
        );
    }
    print!("{out}");
    Ok(())
}

async fn delete(
    client: &Client,
    mut names: Vec<String>,
    files: &[PathBuf],
    wait_for: Option<Duration>,
) -> Result<(), CliError> {
    if !files.is_empty() {
        for d in read_documents(files)? {
            let name = d.value["metadata"]["name"]
                .as_str()
                .ok_or_else(|| CliError::new(format!("{}: no metadata.name", d.source)))?;
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err(CliError::new("name the agents to delete, or give -f FILE"));
    }
    for name in &names {
        client
            .send(client.request(Method::DELETE, &format!("/v1/agents/{name}")))
            .await?;
        println!("agent/{name} deleted");
    }
    if let Some(timeout) = wait_for {
        let start = Instant::now();
        for name in &names {
            loop {
                if client.agent(name).await?.is_none() {
                    break;
                }
                if start.elapsed() > timeout {
                    return Err(CliError::new(format!(
                        "timed out after {} waiting for agent {name:?} to be gone",
                        humantime::format_duration(timeout)
                    )));
                }
                progress(&format!("waiting for {name} to be gone"), start);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        clear_progress();
    }
    Ok(())
}

async fn action(client: &Client, name: &str, verb: &str) -> Result<(), CliError> {
    let req = client
        .request(Method::POST, &format!("/v1/agents/{name}/action"))
        .json(&json!({ "action": verb }));
    client.send(req).await?;
    println!("agent/{name} {verb} requested");
    Ok(())
}

async fn logs(
    client: &Client,
    name: &str,
    follow: bool,
    tail: Option<u64>,
    since: Option<Duration>,
) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = vec![("follow", follow.to_string())];
    if let Some(t) = tail {
        query.push(("tail", t.to_string()));
    }
    if let Some(s) = since {
        query.push((
            "since",
            humantime::format_duration(s).to_string().replace(' ', ""),
        ));
    }
    let r = client
        .send(
            client
                .request(Method::GET, &format!("/v1/agents/{name}/logs"))
                .query(&query),
        )
        .await?;
    let mut body = r.bytes_stream();
    let mut out = std::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| CliError::new(format!("the log stream broke: {e}")))?;
        let _ = out.write_all(&chunk);
        let _ = out.flush();
    }
    Ok(())
}

async fn wait(
    client: &Client,
    name: &str,
    condition: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    let (what, wanted) = match condition.split_once('=') {
        Some(("phase", p)) => ("phase", p.to_string()),
        Some(("condition", c)) => ("condition", c.to_string()),
        _ => {
            return Err(CliError::new(format!(
                "--for {condition:?} is not understood; use --for phase=<Pending|Running|Stopped|Succeeded|Failed> or --for condition=<Ready|Progressing>"
            )))
        }
    };
    let phase = wanted.as_str();
    let start = Instant::now();
    loop {
        let last;
        if let Some(a) = client.agent(name).await? {
            let st = &a["status"];
            let caught_up = st["observedGeneration"] == a["metadata"]["generation"];
            let now = st["phase"].as_str().unwrap_or("");
            let holds = if what == "phase" {
                now.eq_ignore_ascii_case(phase)
            } else {
                st["conditions"].as_array().into_iter().flatten().any(|c| {
                    c["type"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(phase))
                        && c["status"] == "True"
                })
            };
            last = format!(
                "phase {now}{}{}",
                if caught_up {
                    ""
                } else {
                    " (generation not yet observed)"
                },
                st["message"]
                    .as_str()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            if caught_up && holds {
                clear_progress();
                if what == "phase" {
                    println!("agent/{name} phase={now}");
                } else {
                    println!("agent/{name} condition={phase}");
                }
                return Ok(());
            }
        } else {
            last = "the agent does not exist".into();
        }
        if start.elapsed() >= timeout {
            clear_progress();
            return Err(CliError::new(format!(
                "timed out after {} waiting for agent {name:?} to reach {what} {phase}; last seen: {last}",
                humantime::format_duration(timeout)
            )));
        }
        progress(
            &format!("waiting for {name} (phase {phase}): {last}"),
            start,
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A one-line progress note on a terminal (nothing when stderr is not one).
fn progress(what: &str, start: Instant) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[K{what} ({}s)", start.elapsed().as_secs());
        let _ = err.flush();
    }
}

fn clear_progress() {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[K");
    }
}
