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
    /// The queue: list it (like Postfix's mailq; the default), show a message, summarise it
    /// (like qshape), or act on messages (like postqueue -f and postsuper -h/-H/-d/-r).
    /// Through the running daemon's control socket; directly on the spool when none runs.
    Queue(QueueArgs),
    /// How mail to DOMAIN would be secured, and why: MX hosts with their DNSSEC status, TLSA
    /// records, the MTA-STS TXT record and policy (fetched now, the cache untouched), the
    /// effective policy per host and for the domain; with --connect, each MX address's
    /// STARTTLS handshake, certificate chain and verdicts. Exit status 0 whenever the check
    /// ran (whatever it found), 2 for a bad command line or configuration.
    Check(CheckArgs),
    /// Look NAME up as delivery does for DANE (`[dns] dnssec`: in-process validation or a
    /// trusted AD bit) and print the DNSSEC verdict (secure, insecure, bogus, NXDOMAIN, no
    /// records, lookup failed) with the records, like `delv`. Exit status 0 whenever the
    /// look-up ran, 2 for a bad command line or configuration.
    Dns(DnsArgs),
    /// Show, refresh or forget a domain's cached MTA-STS policy: through the running daemon's
    /// control socket, or directly in the cache when no daemon runs.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// TLS-RPT (RFC 8460): the sessions counted and the reports they make, or send the open
    /// period's reports now. Through the running daemon's control socket.
    Tlsrpt {
        #[command(subcommand)]
        command: TlsRptVerb,
    },
    /// The compliance record (`[compliance] file`, one JSON object per recipient attempt).
    Compliance {
        #[command(subcommand)]
        command: ComplianceVerb,
    },
}

#[derive(Subcommand)]
enum ComplianceVerb {
    /// How mail left: attempts counted by tls, policy, status and domain, from record files
    /// (`.gz` ones too). Reads the files directly; no daemon needed.
    Summary(ComplianceSummaryArgs),
}

#[derive(Args)]
struct ComplianceSummaryArgs {
    /// A record file; repeat for several (rotated ones). Default: `compliance.file` of the
    /// configuration.
    #[arg(long = "file", short = 'f')]
    files: Vec<PathBuf>,
    /// Only attempts at or after this time (RFC 3339, or a date: its start in UTC).
    #[arg(long)]
    since: Option<String>,
    /// Only attempts before this time (RFC 3339, or a date).
    #[arg(long)]
    until: Option<String>,
    /// Only recipients at this domain.
    #[arg(long)]
    domain: Option<String>,
    /// One JSON document (field names in the README).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// The table's rows as CSV: domain, policy, tls, status, count.
    #[arg(long)]
    csv: bool,
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TlsRptVerb {
    /// The counts not yet reported, and the report each domain would get, as it would be sent.
    Show {
        /// Only this policy domain.
        domain: Option<String>,
        /// The reports as JSON (one document per line).
        #[arg(long)]
        json: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Close the open period now and send its reports at once (the date-range ends now).
    Send {
        /// Only this policy domain.
        domain: Option<String>,
        /// Required: send now rather than at the end of the period.
        #[arg(long)]
        now: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
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

#[derive(Args)]
struct DnsArgs {
    /// The name to look up, e.g. _25._tcp.mx.example.com.
    name: String,
    /// The record type (A, AAAA, MX, TLSA, TXT, DNSKEY, DS, …).
    #[arg(default_value = "A")]
    rtype: String,
    /// TOML configuration file (the daemon's); without it, the built-in defaults apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct QueueArgs {
    #[command(subcommand)]
    command: Option<QueueVerb>,
    /// TOML configuration file (the daemon's); without it, the built-in defaults apply.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

/// Which messages an action or a listing is about (all given filters must match).
#[derive(Args, Clone, Default)]
struct Selector {
    /// Queue ids.
    ids: Vec<String>,
    /// Messages with a pending recipient in this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Messages from this envelope sender (`<>` for the null sender).
    #[arg(long)]
    sender: Option<String>,
}

#[derive(Args, Clone)]
struct ActionArgs {
    #[command(flatten)]
    select: Selector,
    /// Every message in the queue.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand, Clone)]
enum QueueVerb {
    /// List queued messages (mailq style; `*` marks active, `!` held messages).
    List {
        #[command(flatten)]
        select: Selector,
        /// Only messages in this state: active, deferred or hold.
        #[arg(long)]
        state: Option<String>,
        /// One JSON array (field names in the README).
        #[arg(long)]
        json: bool,
    },
    /// Everything about one message: envelope, recipients, attempts, next attempt, last reply.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Pending recipients by domain and age, like qshape.
    Summary {
        #[arg(long)]
        json: bool,
    },
    /// Make messages due now, backoff reset (postqueue -f; with --domain, postqueue -s).
    Flush(ActionArgs),
    /// Put messages on hold: never tried, never expired, until released (postsuper -h).
    Hold(ActionArgs),
    /// Release held messages (postsuper -H).
    Release(ActionArgs),
    /// Remove messages without a bounce (postsuper -d).
    Delete(ActionArgs),
    /// Return messages to their senders now, with a DSN saying an operator did it.
    Bounce(ActionArgs),
    /// Decide route and policy afresh, at once (postsuper -r).
    Requeue(ActionArgs),
}

impl QueueVerb {
    /// The words of the command, as the control socket reads them.
    fn words(&self) -> Vec<String> {
        let mut words = Vec::new();
        let selector = |words: &mut Vec<String>, s: &Selector| {
            words.extend(s.ids.iter().cloned());
            if let Some(d) = &s.domain {
                words.extend(["--domain".into(), d.clone()]);
            }
            if let Some(x) = &s.sender {
                words.extend(["--sender".into(), x.clone()]);
            }
        };
        let (verb, action) = match self {
            QueueVerb::List {
                select,
                state,
                json,
            } => {
                words.push("list".into());
                selector(&mut words, select);
                if let Some(s) = state {
                    words.extend(["--state".into(), s.clone()]);
                }
                if *json {
                    words.push("--json".into());
                }
                return words;
            }
            QueueVerb::Show { id, json } => {
                words.extend(["show".into(), id.clone()]);
                if *json {
                    words.push("--json".into());
                }
                return words;
            }
            QueueVerb::Summary { json } => {
                words.push("summary".into());
                if *json {
                    words.push("--json".into());
                }
                return words;
            }
            QueueVerb::Flush(a) => ("flush", a),
            QueueVerb::Hold(a) => ("hold", a),
            QueueVerb::Release(a) => ("release", a),
            QueueVerb::Delete(a) => ("delete", a),
            QueueVerb::Bounce(a) => ("bounce", a),
            QueueVerb::Requeue(a) => ("requeue", a),
        };
        words.push(verb.into());
        selector(&mut words, &action.select);
        if action.all {
            words.push("--all".into());
        }
        words
    }
}

#[derive(Args)]
struct CheckArgs {
    /// The recipient domain, e.g. example.com.
    domain: String,
    /// Also connect to each MX address: STARTTLS, the certificate chain, PKIX and DANE verdicts.
    #[arg(long)]
    connect: bool,
    /// Print one JSON object instead of the readable report.
    #[arg(long)]
    json: bool,
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
        Command::Queue(args) => return queue(args),
        Command::Check(args) => return Ok(check(args)),
        Command::Dns(args) => return Ok(dns(args)),
        Command::Tlsrpt { command } => return tlsrpt(command),
        Command::Compliance {
            command: ComplianceVerb::Summary(args),
        } => return Ok(compliance_summary(args)),
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

/// `mxguard compliance summary`: exit 0 with the table, 2 when the command line, the
/// configuration or a file is unusable.
fn compliance_summary(args: ComplianceSummaryArgs) -> ExitCode {
    use mxguard::compliance::summary;
    let usage = |e: String| {
        eprintln!("mxguard: {e}");
        ExitCode::from(2)
    };
    let mut files = args.files;
    if files.is_empty() {
        let config = match load_config(args.config.as_ref()) {
            Ok(c) => c,
            Err(e) => return usage(format!("{e:#}")),
        };
        match config.compliance.file {
            Some(f) if !config.compliance.to_stdout() => files.push(f),
            _ => return usage("no --file, and the configuration names no compliance.file".into()),
        }
    }
    let time = |t: Option<String>| t.map(|t| summary::parse_time(&t)).transpose();
    let filter = match (time(args.since), time(args.until)) {
        (Ok(since), Ok(until)) => summary::Filter {
            since,
            until,
            domain: args.domain,
        },
        (Err(e), _) | (_, Err(e)) => return usage(e),
    };
    match summary::summarize(&files, &filter) {
        Ok(s) if args.json => println!("{}", summary::to_json(&s)),
        Ok(s) if args.csv => print!("{}", summary::to_csv(&s)),
        Ok(s) => print!("{}", summary::to_text(&s)),
        Err(e) => return usage(e),
    }
    ExitCode::SUCCESS
}

/// `mxguard tlsrpt …`: only the daemon holds the counts (its database is open), so this
/// asks it over the control socket.
fn tlsrpt(verb: TlsRptVerb) -> anyhow::Result<ExitCode> {
    let (command, config) = match verb {
        TlsRptVerb::Show {
            domain,
            json,
            config,
        } => (
            control::TlsRptCommand {
                send: false,
                domain,
                json,
            },
            config,
        ),
        TlsRptVerb::Send {
            domain,
            now,
            config,
        } => {
            anyhow::ensure!(
                now,
                "tlsrpt send needs --now (reports are sent by the daemon when a period ends)"
            );
            let command = control::TlsRptCommand {
                send: true,
                domain,
                json: false,
            };
            (command, config)
        }
    };
    let config = load_config(config.as_ref())?;
    let socket = control::socket_path(&config.data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime
        .block_on(control::request_line(&socket, &command.to_line()))
        .with_context(|| format!("no daemon answers on {}", socket.display()))?;
    if reply.ok {
        print!("{}", reply.text);
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{}", reply.text);
        Ok(ExitCode::from(1))
    }
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
                // The cache falls back to memory when its database cannot be opened: right for
                // a daemon on a full disk, wrong for a command that reports or edits the
                // database.
                anyhow::ensure!(
                    !cache.in_memory(),
                    "no daemon answers on {}, and the policy cache database {} cannot be opened",
                    socket.display(),
                    config.policy_cache_dir().display()
                );
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

/// `mxguard queue …`: through the daemon's control socket; when none listens, on the spool
/// here (changes only with the data directory's lock, so never beside a starting daemon).
/// Exit status 1 when the command failed or its selector matched nothing.
fn queue(args: QueueArgs) -> anyhow::Result<ExitCode> {
    use mxguard::queue::command::{Body, Executor, QueueCommand, Verb};
    let config = Arc::new(load_config(args.config.as_ref())?);
    let words = args
        .command
        .map(|c| c.words())
        .unwrap_or_else(|| vec!["list".to_string()]);
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let command = QueueCommand::parse(&refs).map_err(|e| anyhow::anyhow!("queue: {e}"))?;
    let socket = control::socket_path(&config.data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ok = runtime.block_on(async {
        let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
        match control::request_queue(&socket, &command, &mut stdout, &mut stderr).await {
            Ok(ok) => return Ok::<bool, anyhow::Error>(ok),
            Err(ClientError::NotRunning(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // No daemon: work on the spool here.
        let _lock;
        let executor = if matches!(command.verb, Verb::Act(_)) {
            _lock = mxguard::server::lock_data_dir(&config.data_dir)?;
            mxguard::tls::install_crypto_provider();
            let queue = mxguard::queue::Queue::open(&config.spool_dir())?;
            let tables = Arc::new(mxguard::tls_policy::TlsPolicies::open(
                config.delivery.tls_policy_file.as_deref(),
                config.delivery.sender_tls_policy_file.as_deref(),
            )?);
            Executor::offline(queue, config.clone(), tables)
        } else {
            Executor::read_only(&config.spool_dir())
        };
        let by = format!("uid {} (command line, no daemon)", unsafe_uid());
        let answer = executor.run(&command, &by).await;
        let mut out: Box<dyn std::io::Write> = if answer.ok {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::io::stderr())
        };
        match answer.body {
            Body::Text(text) => out.write_all(text.as_bytes())?,
            Body::Stream(mut chunks) => {
                while let Some(chunk) = chunks.recv().await {
                    out.write_all(&chunk)?;
                }
            }
        }
        Ok(answer.ok)
    })?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// `mxguard check DOMAIN`: 0 when the check ran, 2 when it could not start (usage or
/// configuration), whatever the domain turned out to be.
/// `mxguard dns NAME [TYPE]`: see [`mxguard::check::dns`].
fn dns(args: DnsArgs) -> ExitCode {
    const USAGE: u8 = 2;
    let result = load_config(args.config.as_ref()).and_then(|config| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime
            .block_on(mxguard::check::dns::lookup(
                &config.dns,
                &args.name,
                &args.rtype,
            ))
            .map_err(anyhow::Error::msg)
    });
    match result {
        Ok(text) => {
            // A reader that stops early (`| head -1`) is no error of ours.
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mxguard: {e:#}");
            ExitCode::from(USAGE)
        }
    }
}

fn check(args: CheckArgs) -> ExitCode {
    const USAGE: u8 = 2;
    let config = match load_config(args.config.as_ref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mxguard: {e:#}");
            return ExitCode::from(USAGE);
        }
    };
    mxguard::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mxguard: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(mxguard::check::check(&config, &args.domain, args.connect));
    match report {
        Ok(report) if args.json => println!("{}", mxguard::check::to_json(&report)),
        Ok(report) => print!("{}", mxguard::check::render(&report)),
        Err(e) => {
            eprintln!("mxguard check: {e}");
            return ExitCode::from(USAGE);
        }
    }
    ExitCode::SUCCESS
}

fn serve(config: Config) -> anyhow::Result<()> {
    limit_malloc_arenas();
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

/// glibc gives each thread that allocates its own arena (up to eight per core), and memory
/// freed in one stays there. The daemon's file work runs on many blocking threads, so with the
/// default a retry pass over 100,000 queued messages peaked at 31 MB; with two arenas, 25 MB
/// (bench/queue.sh). `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
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
