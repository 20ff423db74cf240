//! `hive delete NAME... | -f FILE [--wait]`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::Method;

use super::{clear_progress, progress, read_documents, CliError, Client};

pub(super) async fn delete(
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
            .send(client.agent_request(Method::DELETE, name, &[]))
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
