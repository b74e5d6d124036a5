//! The `mxguard` command line. Thin: every command calls the library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mxguard::config::Config;
use mxguard::control::{self, ClientError, PolicyAction, Reply, Request};
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// Show, refresh or forget a domain's cached MTA-STS policy: through the running daemon's
    /// control socket, or directly in the cache when no daemon runs.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// What is cached for the domain, and why.
    Show(PolicyArgs),
    /// Fetch the domain's policy now, whatever the cache holds; print it, then the cache.
    Refresh(PolicyArgs),
    /// Drop everything cached for the domain.
    Forget(PolicyArgs),
}

#[derive(Args)]
struct PolicyArgs {
    /// The recipient domain, e.g. example.com.
    domain: String,
    /// TOML configuration file (the daemon's); without it, the built-in defaults apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).with_context(|| format!("configuration {}", p.display())),
        None => Ok(Config::default()),
    }
}

fn main() -> ExitCode {
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("mxguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
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
        Command::Policy { command } => {
            let (action, args) = match command {
                PolicyCommand::Show(args) => (PolicyAction::Show, args),
                PolicyCommand::Refresh(args) => (PolicyAction::Refresh, args),
                PolicyCommand::Forget(args) => (PolicyAction::Forget, args),
            };
            return policy(action, args);
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// `mxguard policy …`: asks the daemon over its control socket; when none listens, opens the
/// cache here and runs the same command (sled lets only one process open the database).
fn policy(action: PolicyAction, args: PolicyArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_ref())?;
    let request = Request::new(action, &args.domain)?;
    let socket = control::socket_path(&config.data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply: Reply = runtime.block_on(async {
        match control::request(&socket, &request).await {
            Ok(reply) => Ok(reply),
            Err(ClientError::NotRunning(_)) => {
                mxguard::tls::install_crypto_provider();
                let cache = control::open_cache(&config).with_context(|| {
                    format!(
                        "no daemon answers on {}, so opening the cache",
                        socket.display()
                    )
                })?;
                Ok(control::execute(&cache, &request).await)
            }
            Err(e) => Err(anyhow::Error::from(e)),
        }
    })?;
    if reply.ok {
        print!("{}", reply.text);
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{}", reply.text);
        Ok(ExitCode::FAILURE)
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
