//! `hive get [NAME] [-l SELECTOR] [-o table|wide|yaml|json] [-w]`.

use std::io::Write;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;

use super::render::{table, watch_header, watch_line};
use super::{CliError, Client, Output};
use crate::agent::{Agent, API_VERSION, LIST_KIND};

pub(super) async fn get(
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
        None => (client.agents(selector.as_deref()).await?.items, false),
    };
    let doc = if single {
        serde_json::to_value(&items[0]).unwrap_or_default()
    } else {
        serde_json::json!({"apiVersion": API_VERSION, "kind": LIST_KIND, "items": items})
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
pub(super) async fn watch(
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
    println!("{}", watch_header());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| CliError::new(format!("the watch broke: {e}")))?;
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).map_err(|e| {
                CliError::new(format!("the server sent a line that is not JSON: {e}"))
            })?;
            if event["type"] == "ERROR" {
                return Err(CliError::new(format!(
                    "the watch ended: {}",
                    event["object"]["message"].as_str().unwrap_or("")
                )));
            }
            let agent: Agent = serde_json::from_value(event["object"].clone()).map_err(|e| {
                CliError::new(format!("the server sent an agent that does not read: {e}"))
            })?;
            if name.as_deref().is_some_and(|n| n != agent.metadata.name) {
                continue;
            }
            println!(
                "{}",
                watch_line(event["type"].as_str().unwrap_or(""), &agent)
            );
            let _ = std::io::stdout().flush();
        }
    }
    Ok(())
}
