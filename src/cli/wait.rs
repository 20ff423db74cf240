//! `hive wait NAME --for phase=<Phase>|condition=<Ready|Progressing> [--timeout D]`.

use std::time::{Duration, Instant};

use super::{clear_progress, progress, CliError, Client};

pub(super) async fn wait(
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
            let st = &a.status;
            let caught_up = st.observed_generation == a.metadata.generation;
            let now = format!("{:?}", st.phase);
            let holds = if what == "phase" {
                now.eq_ignore_ascii_case(phase)
            } else {
                st.conditions
                    .iter()
                    .any(|c| c.kind.eq_ignore_ascii_case(phase) && c.status == "True")
            };
            last = format!(
                "phase {now}{}{}",
                if caught_up {
                    ""
                } else {
                    " (generation not yet observed)"
                },
                st.message
                    .as_deref()
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
