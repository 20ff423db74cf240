//! Reaching inside an agent's container: a command run once through the engine's exec
//! endpoints (create, start attached, inspect), never a shell of Hive's choosing, and
//! files read and written through its archive endpoints. The container is checked to be
//! this instance's and the agent's (by its labels) before anything is done in it; the
//! command runs as the container's own user with its own hardening (never privileged, no
//! user override), and files written are owned by that user.

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::orchestrator::{ExecOutput, ExecSpec};

impl DockerOrchestrator {
    /// Whether container `id` carries this instance's labels and the agent `uid`'s (and,
    /// with `running`, runs); the error says why not. Answers what the engine said of it.
    async fn target(
        &self,
        id: &str,
        uid: uuid::Uuid,
        running: bool,
    ) -> Result<bollard::models::ContainerInspectResponse, OrchestratorError> {
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
        let labels = detail
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let label = |k: &str| labels.get(k).map(String::as_str);
        let ours = label(LABEL_MANAGED) == Some("true")
            && label(LABEL_INSTANCE) == Some(self.settings.instance.as_str())
            && label(LABEL_UID) == Some(uid.to_string().as_str());
        if !ours {
            return Err(gone());
        }
        let state = detail.state.clone().unwrap_or_default();
        if running && state.running != Some(true) || state.paused == Some(true) {
            return Err(OrchestratorError::NotRunning);
        }
        Ok(detail)
    }

    pub(super) async fn address_of(
        &self,
        id: &str,
        uid: uuid::Uuid,
    ) -> Result<std::net::IpAddr, OrchestratorError> {
        let detail = self.target(id, uid, true).await?;
        detail
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.settings.network))
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| {
                OrchestratorError::Refused(format!(
                    "the agent's container has no address on network {}",
                    self.settings.network
                ))
            })
    }

    pub(super) async fn exec_in(
        &self,
        id: &str,
        uid: uuid::Uuid,
        spec: &ExecSpec,
    ) -> Result<ExecOutput, OrchestratorError> {
        self.target(id, uid, true).await?;
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
        // Input is written while output is read, so a command that prints much before it
        // has read all its input never waits on Hive (nor Hive on it); then input ends, so
        // a command reading to the end (cat, sh) goes on.
        let feed = async {
            if let Some(stdin) = &spec.stdin {
                input.write_all(stdin).await.ok();
            }
            input.shutdown().await.ok();
        };
        let drain = async {
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
        let run = async { tokio::join!(feed, drain).1 };
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

    pub(super) async fn read_archive_of(
        &self,
        id: &str,
        uid: uuid::Uuid,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, OrchestratorError> {
        self.target(id, uid, false).await?;
        let docker = self.docker().await?;
        let options = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let read = async {
            let mut stream = docker.download_from_container(id, Some(options));
            let mut tar = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if tar.len() + chunk.len() > max {
                    return Ok(Err(OrchestratorError::TooLarge {
                        what: crate::agent::clip(path, 256),
                        max,
                    }));
                }
                tar.extend_from_slice(&chunk);
            }
            Ok(Ok(tar))
        };
        match self.call("read files", Duration::ZERO, read).await? {
            Ok(Ok(tar)) => Ok(tar),
            Ok(Err(too_large)) => Err(too_large),
            Err(e) if status_of(&e) == Some(404) => {
                Err(OrchestratorError::NoSuchPath(crate::agent::clip(path, 256)))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    pub(super) async fn write_archive_to(
        &self,
        id: &str,
        uid: uuid::Uuid,
        dir: &str,
        tar: Vec<u8>,
    ) -> Result<(), OrchestratorError> {
        self.target(id, uid, false).await?;
        let docker = self.docker().await?;
        let options = UploadToContainerOptions {
            path: dir.to_string(),
            // A file never replaces a directory, nor a directory a file.
            no_overwrite_dir_non_dir: Some("1".into()),
            // Owned by the container's user, as `docker cp -a` does.
            copy_uidgid: Some("1".into()),
        };
        let write = docker.upload_to_container(id, Some(options), bollard::body_full(tar.into()));
        match self.call("write files", Duration::ZERO, write).await? {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => {
                Err(OrchestratorError::NoSuchPath(crate::agent::clip(dir, 256)))
            }
            Err(e) => Err(map_err(e)),
        }
    }
}
