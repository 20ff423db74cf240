//! `hive logs NAME [-f] [--tail N] [--since D]`.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;

use super::{CliError, Client};

pub(super) async fn logs(
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
                .agent_request(Method::GET, name, &["logs"])
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
