//! Exec: a command run once in an agent's running container, through the engine's exec
//! endpoints (create, start attached, inspect), never a shell of Hive's choosing. The
//! container is checked to be this instance's and the agent's (by its labels) before
//! anything runs in it, and the command runs as the container's own user with its own
//! hardening (never privileged, no user override).

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::orchestrator::{ExecOutput, ExecSpec};

impl DockerOrchestrator {
    /// Whether container `id` carries this instance's labels and the agent `uid`'s, and
    /// runs; the error says why not.
    async fn exec_target(&self, id: &str, uid: uuid::Uuid) -> Result<(), OrchestratorError> {
        let docker = self.docker().await?;
        let gone = || OrchestratorError::NotFound(id.chars().take(12).collect());
        let detail = self
            .request_or_absent(
                "inspect container",
                Duration::ZERO,
                docker.inspect_container(id, None),
            )
            .await?
            .ok_or_else(gone)?;
        let labels = detail.config.and_then(|c| c.labels).unwrap_or_default();
        let label = |k: &str| labels.get(k).map(String::as_str);
        let ours = label(LABEL_MANAGED) == Some("true")
            && label(LABEL_INSTANCE) == Some(self.settings.instance.as_str())
            && label(LABEL_UID) == Some(uid.to_string().as_str());
        if !ours {
            return Err(gone());
        }
        let state = detail.state.unwrap_or_default();
        if state.running != Some(true) || state.paused == Some(true) {
            return Err(OrchestratorError::Refused(
                "the agent's container is not running".into(),
            ));
        }
        Ok(())
    }

    pub(super) async fn exec_in(
        &self,
        id: &str,
        uid: uuid::Uuid,
        spec: &ExecSpec,
    ) -> Result<ExecOutput, OrchestratorError> {
        self.exec_target(id, uid).await?;
        let docker = self.docker().await?;
        let options = CreateExecOptions {
            attach_stdin: Some(spec.stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(
                spec.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            ),
            cmd: Some(spec.command.clone()),
            privileged: Some(false),
            working_dir: spec.working_dir.clone(),
            ..Default::default()
        };
        let created = self
            .request(
                "create exec",
                Duration::ZERO,
                docker.create_exec(id, options),
            )
            .await?;
        let started = self
            .request(
                "start exec",
                Duration::ZERO,
                docker.start_exec(
                    &created.id,
                    Some(StartExecOptions {
                        detach: false,
                        tty: false,
                        output_capacity: None,
                    }),
                ),
            )
            .await?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(OrchestratorError::Refused(
                "the engine did not attach to the command".into(),
            ));
        };
        let mut out = ExecOutput::default();
        let max = spec.max_output;
        let run = async {
            // Input first (bounded by the caller), then end it, so a command reading
            // its input to the end (cat, sh) goes on.
            if let Some(stdin) = &spec.stdin {
                input.write_all(stdin).await.ok();
            }
            input.shutdown().await.ok();
            while let Some(chunk) = output.next().await {
                match chunk.map_err(map_err)? {
                    LogOutput::StdErr { message } => out.keep(true, &message, max),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        out.keep(false, &message, max)
                    }
                    LogOutput::StdIn { .. } => {}
                }
            }
            Ok::<(), OrchestratorError>(())
        };
        match tokio::time::timeout(spec.timeout, run).await {
            Ok(result) => result?,
            Err(_) => {
                out.timed_out = true;
                return Ok(out);
            }
        }
        let inspected = self
            .request(
                "inspect exec",
                Duration::ZERO,
                docker.inspect_exec(&created.id),
            )
            .await?;
        out.exit_code = inspected.exit_code;
        Ok(out)
    }
}
