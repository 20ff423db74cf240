//! The `hive` command line's client commands (apply, get, describe, delete, start, stop,
//! restart, touch, logs, wait, secret, health, and the `mcp` stdio bridge), kubectl-like, all over the HTTP API: one file per command,
//! the rendering in [`render`], on the typed [`Agent`](crate::agent::Agent). Each failure
//! prints one line saying what failed and what to do, and exits non-zero.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

mod action;
mod apply;
pub mod client;
mod cp;
mod delete;
mod describe;
mod exec;
mod forward;
mod get;
mod logs;
mod mcp;
pub mod render;
mod secret;
mod wait;

pub use client::{CliError, Client, Connection};

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
        /// One-shot sync of a directory: also delete the agents an earlier `apply --prune`
        /// of the same apply set made that the directory no longer declares (your own
        /// agents only; an admin's, those of the owners its documents name). Nothing is
        /// pruned if any file is invalid or the directory holds no manifests.
        #[arg(long)]
        prune: bool,
        /// The apply set's name (marked `hive-apply/set` on every agent): a prune deletes
        /// only its members. Default: the directory's name.
        #[arg(long, requires = "prune")]
        applyset: Option<String>,
        /// An owner whose agents an admin's prune may delete besides those its documents
        /// name; needed for each owner when a prune spans more than one. Repeatable.
        #[arg(long = "prune-owner", requires = "prune")]
        prune_owners: Vec<String>,
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
    /// Say an agent is active: its idle clock starts again (one stopped for idleness resumes).
    Touch { name: String },
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
    /// Run a command once in a running agent and exit with its status (as `kubectl exec`
    /// without a terminal): `hive exec NAME -- sh -c 'ls /'`.
    Exec {
        name: String,
        /// Send standard input to the command (read to its end; at most 512 KiB of text).
        #[arg(short = 'i', long)]
        stdin: bool,
        /// A variable for the command, NAME=VALUE (repeatable).
        #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// The directory to run in (an absolute path; default: the image's).
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        /// How long to wait for it (at most 10m); past it the exit status is 124.
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy files to or from an agent (as `kubectl cp`): `hive cp NAME:/path ./local` or
    /// `hive cp ./local NAME:/path` (a directory goes into the agent's existing directory).
    Cp { from: String, to: String },
    /// Forward a local port to an agent's port through Hive (as `kubectl port-forward`):
    /// `hive port-forward NAME 8080:80`; until interrupted.
    PortForward {
        name: String,
        /// `LOCAL:REMOTE`, or one port for both (LOCAL 0 picks a free port).
        ports: String,
    },
    /// Set, list or delete the secrets agents read through envFrom (values never shown).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Exit 0 if the server answers /healthz (for container health checks; needs no key).
    Health,
    /// MCP over stdio for clients that only start servers as processes: forwards each
    /// JSON-RPC line to the server's /mcp with the key, and prints each answer as a line.
    Mcp,
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

/// `hive secret ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Write a secret whole, as kubectl's `create secret generic` (keys not given are dropped).
    Set {
        name: String,
        /// A key and its value (repeatable). Prefer --from-env-file -: a command line is
        /// visible to other processes.
        #[arg(long = "from-literal", value_name = "KEY=VALUE")]
        literals: Vec<String>,
        /// A file of KEY=VALUE lines, as docker's --env-file; - reads stdin (repeatable).
        #[arg(long = "from-env-file", value_name = "FILE")]
        env_files: Vec<PathBuf>,
        /// Whose secret it is (an admin key only; default: the key's own owner).
        #[arg(long)]
        owner: Option<String>,
    },
    /// List secrets, or show one: names and keys.
    Get { name: Option<String> },
    /// Delete secrets.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs a client command, printing its results to stdout; the exit status to leave with
/// (0, or what `exec`'s command exited with).
pub async fn run(conn: &Connection, command: ClientCommand) -> Result<i32, CliError> {
    if let ClientCommand::Health = command {
        return client::health(conn).await.map(|()| 0);
    }
    let client = Client::new(conn)?;
    let done = match command {
        ClientCommand::Exec {
            name,
            stdin,
            env,
            workdir,
            timeout,
            command,
        } => {
            let args = exec::ExecArgs {
                name,
                stdin,
                timeout,
                env,
                workdir,
                command,
            };
            return exec::exec(&client, args).await;
        }
        ClientCommand::Apply {
            files,
            dry_run,
            prune,
            applyset,
            prune_owners,
        } => {
            let prune = prune.then_some(apply::PruneArgs {
                applyset,
                owners: prune_owners,
            });
            apply::apply(&client, &files, dry_run, prune).await
        }
        ClientCommand::Get {
            name,
            selector,
            watch: true,
            ..
        } => get::watch(&client, name, selector).await,
        ClientCommand::Get {
            name,
            selector,
            output,
            ..
        } => get::get(&client, name, selector, output).await,
        ClientCommand::Describe { name } => describe::describe(&client, &name).await,
        ClientCommand::Delete {
            names,
            files,
            wait,
            timeout,
        } => delete::delete(&client, names, &files, wait.then_some(timeout.into())).await,
        ClientCommand::Start { name } => action::action(&client, &name, "start").await,
        ClientCommand::Stop { name } => action::action(&client, &name, "stop").await,
        ClientCommand::Restart { name } => action::action(&client, &name, "restart").await,
        ClientCommand::Touch { name } => action::action(&client, &name, "touch").await,
        ClientCommand::Logs {
            name,
            follow,
            tail,
            since,
        } => logs::logs(&client, &name, follow, tail, since.map(Into::into)).await,
        ClientCommand::Wait {
            name,
            condition,
            timeout,
        } => wait::wait(&client, &name, &condition, timeout.into()).await,
        ClientCommand::Secret(SecretCommand::Set {
            name,
            literals,
            env_files,
            owner,
        }) => secret::set(&client, &name, &literals, &env_files, owner.as_deref()).await,
        ClientCommand::Secret(SecretCommand::Get { name }) => {
            secret::get(&client, name.as_deref()).await
        }
        ClientCommand::Secret(SecretCommand::Delete { names }) => {
            secret::delete(&client, &names).await
        }
        ClientCommand::Cp { from, to } => cp::cp(&client, &from, &to).await,
        ClientCommand::PortForward { name, ports } => {
            forward::port_forward(&client, &name, &ports).await
        }
        ClientCommand::Mcp => mcp::bridge(client).await,
        ClientCommand::Health => client::health(conn).await,
    };
    done.map(|()| 0)
}

/// One document read from a file, and where it came from.
pub(crate) struct Sourced {
    pub source: String,
    pub value: Value,
}

/// Reads every document of the given files (directories recursively: *.yaml, *.yml, *.json).
pub(crate) fn read_documents(paths: &[PathBuf]) -> Result<Vec<Sourced>, CliError> {
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

/// A one-line progress note on a terminal (nothing when stderr is not one).
pub(crate) fn progress(what: &str, start: Instant) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[K{what} ({}s)", start.elapsed().as_secs());
        let _ = err.flush();
    }
}

pub(crate) fn clear_progress() {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[K");
    }
}
