//! The `hive` binary: parses flags, starts logging, and hands over to the library.

#[cfg(feature = "server")]
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// Hive: run fleets of AI agents in containers, declaratively.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    connection: hive::cli::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and the controller (the only process that talks to Docker).
    #[cfg(feature = "server")]
    Serve(Box<hive::Config>),
    /// Manage API keys.
    #[cfg(feature = "server")]
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a shell's completion script: `source <(hive completion bash)`, or
    /// `hive completion zsh > "${fpath[1]}/_hive"` (also fish, powershell, elvish).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(hive::cli::ClientCommand),
}

#[cfg(feature = "server")]
#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh random key, once, and the --keys-file entry that admits it.
    New {
        /// Whose agents the key sees and makes.
        #[arg(long)]
        owner: String,
        /// admin, operator or viewer.
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// The key's name in logs and audit (default: <owner>-<random>).
        #[arg(long)]
        id: Option<String>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Client(command) => match hive::cli::run(&cli.connection, command).await {
            Ok(0) => Ok(()),
            // What `exec`'s command exited with (its output is written and flushed).
            Ok(code) => std::process::exit(code),
            Err(e) => Err(anyhow::Error::from(e)),
        },
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hive", &mut std::io::stdout());
            Ok(())
        }
        #[cfg(feature = "server")]
        Command::Keys(command) => keys(command),
        #[cfg(feature = "server")]
        Command::Serve(config) => serve(*config).await,
    };
    // One line on failure, and a non-zero exit.
    if let Err(e) = result {
        eprintln!("hive: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(feature = "server")]
fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let KeysCommand::New { owner, role, id } = command;
    let role = match role.as_str() {
        "admin" => hive::access::Role::Admin,
        "operator" => hive::access::Role::Operator,
        _ => hive::access::Role::Viewer,
    };
    let id = id.unwrap_or_else(|| format!("{owner}-{}", &hive::access::generate_key()[..6]));
    let (key, entry) = hive::access::new_key(&id, &owner, role).map_err(anyhow::Error::msg)?;
    println!("key: {key}");
    println!("(shown once; give it to {owner}. Add this under `keys:` in the --keys-file:)");
    print!("{entry}");
    Ok(())
}

#[cfg(feature = "server")]
async fn serve(config: hive::Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        hive::config::LogFormat::Json => logs.json().with_current_span(true).init(),
        hive::config::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let backend = hive::backend(&config);
    hive::run(config, backend, listener, hive::shutdown::signal()).await?;
    Ok(())
}
