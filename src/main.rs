//! The `mxguard` command line. Thin: every command calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mxguard::config::Config;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "mxguard",
    version,
    about = "Outbound SMTP relay that delivers only as securely as each destination demands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: SMTP listeners, queue and delivery.
    Serve {
        /// TOML configuration file; without it, the built-in defaults apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and exit (0 when it is valid).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read a password on standard input and print a line for `access.auth_users_file`.
    HashPassword {
        /// The user name to put before the hash.
        user: String,
    },
    /// Show the messages in the queue (like Postfix's mailq).
    Queue {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).with_context(|| format!("configuration {}", p.display())),
        None => Ok(Config::default()),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mxguard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(load_config(config.as_ref())?),
        Command::CheckConfig { config } => {
            load_config(Some(&config))?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::HashPassword { user } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password");
            println!("{user}:{}", mxguard::inbound::hash_password(password));
            Ok(())
        }
        Command::Queue { config } => {
            let config = load_config(config.as_ref())?;
            print!("{}", mxguard::queue::listing(&config.spool_dir())?);
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            let _ = tx.send(true);
        });
        mxguard::server::run(Arc::new(config), rx).await?;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
