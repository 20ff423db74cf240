//! `hive wait NAME --for phase=<Phase>|condition=<Ready|Progressing> [--timeout D]`.

use std::time::{Duration, Instant};

use super::{clear_progress, progress, CliError, Client};
use crate::agent::WaitFor;

pub(super) async fn wait(
    client: &Client,
    name: &str,
    condition: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    let wanted: WaitFor = condition
        .parse()
        .map_err(|e| CliError::new(format!("--for {condition:?} {e}")))?;
    let start = Instant::now();
    loop {
        let last = match client.agent(name).await? {
            Some(a) if wanted.holds(&a) => {
                clear_progress();
                println!("agent/{name} {wanted}");
                return Ok(());
            }
            Some(a) => WaitFor::last_seen(&a),
            None => "the agent does not exist".into(),
        };
        if start.elapsed() >= timeout {
            clear_progress();
            return Err(CliError::new(format!(
                "timed out after {} waiting for agent {name:?} to reach {wanted}; last seen: {last}",
                humantime::format_duration(timeout)
            )));
        }
        progress(&format!("waiting for {name} ({wanted}): {last}"), start);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
