//! `hive exec NAME [-i] [-e K=V] [-w DIR] [--timeout 30s] -- COMMAND...`: runs a command
//! once in a running agent, prints its output as it came (stdout to stdout, stderr to
//! stderr) and exits with its exit code, as `kubectl exec` without a terminal does.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use reqwest::Method;

use super::{CliError, Client};
use crate::wire::{ExecRequest, ExecResult};

/// The most input `-i` sends (the server's own bound).
const MAX_STDIN: u64 = 512 * 1024;
/// The exit status when the time-out came first (as coreutils' `timeout`).
pub const TIMED_OUT: i32 = 124;

/// What `hive exec` was asked.
pub(super) struct ExecArgs {
    pub name: String,
    pub stdin: bool,
    pub timeout: String,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub command: Vec<String>,
}

/// Runs it; the exit status to leave with.
pub(super) async fn exec(client: &Client, args: ExecArgs) -> Result<i32, CliError> {
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CliError::new(format!(
                "--env {pair:?}: expected NAME=VALUE"
            )));
        };
        env.insert(k.to_string(), v.to_string());
    }
    // Read on a blocking thread, bounded: standard input may be a slow pipe.
    let stdin = if args.stdin {
        let read = tokio::task::spawn_blocking(|| {
            let mut text = String::new();
            std::io::stdin()
                .take(MAX_STDIN + 1)
                .read_to_string(&mut text)
                .map(|_| text)
        });
        let text = read
            .await
            .map_err(|e| CliError::new(format!("reading stdin failed: {e}")))?
            .map_err(|e| CliError::new(format!("cannot read stdin as text: {e}")))?;
        if text.len() as u64 > MAX_STDIN {
            return Err(CliError::new(format!(
                "stdin is longer than {MAX_STDIN} bytes; copy large input as a file instead"
            )));
        }
        Some(text)
    } else {
        None
    };
    let request = ExecRequest {
        command: args.command,
        stdin,
        timeout: Some(args.timeout),
        env,
        working_dir: args.workdir,
    };
    let req = client
        .agent_request(Method::POST, &args.name, &["exec"])
        .json(&request);
    let r = client.send(req).await?;
    let result: ExecResult = r
        .json()
        .await
        .map_err(|e| CliError::new(format!("the server's answer is not an exec result: {e}")))?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let _ = out.write_all(result.stdout.as_bytes());
    let _ = err.write_all(result.stderr.as_bytes());
    if result.truncated {
        let _ = writeln!(err, "hive: output cut at 1 MiB per stream");
    }
    let code = if result.timed_out {
        let _ = writeln!(
            err,
            "hive: the command did not end within the time-out; it may still be running"
        );
        TIMED_OUT
    } else {
        result
            .exit_code
            .map_or(1, |c| i32::try_from(c).unwrap_or(1))
    };
    let _ = out.flush();
    let _ = err.flush();
    Ok(code)
}
