//! The control socket: how `mxguard policy …` and `mxguard queue …` reach a running daemon.
//!
//! The MTA-STS policy cache is a sled database, and sled lets one process open it at a time.
//! While `mxguard serve` runs, the operator's commands therefore go through the daemon: it
//! listens on a Unix socket, `<data_dir>/control.sock` (mode 0600, and only peers running as
//! the daemon's user or root are served), and runs each command against its own cache. When no
//! daemon listens, the command line opens the cache itself and runs the very same code
//! ([`execute`]), so the output is the same either way.
//!
//! The protocol is one request line and one reply, then the daemon closes the connection:
//!
//! ```text
//! → policy show example.com\n              (at most 512 bytes, UTF-8)
//! ← ok\n                                   (or `error\n`)
//! ← text for the operator, any number of lines
//! ```
//!
//! Commands: `policy show DOMAIN`, `policy refresh DOMAIN`, `policy forget DOMAIN`, and the
//! queue's (`queue list|show|summary|flush|hold|release|delete|bounce|requeue …`, see
//! [`crate::queue::command`]; a queue listing is streamed, however long). Anything else, an
//! over-long line, or a line that is not UTF-8 gets an `error` reply naming the fault. Who
//! asked (uid and pid of the peer) is logged with every queue command.

use crate::config::Config;
use crate::queue::command::{Answer, Body, Executor, QueueCommand};
use crate::queue::Queue;
use policy_cache::{ActivePolicy, Mode, PolicyCache, StsLookup, SystemClock};
use std::fmt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The longest request line accepted, newline included: a command word or two and a domain
/// name (at most 253 octets, RFC 1035 §2.3.4) fit with room to spare.
pub const MAX_REQUEST: usize = 512;
/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may run. A refresh is bounded by the fetcher's own timeouts; this only
/// makes sure that no connection lingers whatever happens.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long writing the reply may take (the client stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest queue command line: a few hundred queue ids fit.
pub const MAX_QUEUE_REQUEST: usize = 64 * 1024;
/// How long a queue command may run: `queue hold --all` over 300,000 messages takes a while.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 8;
/// The longest reply a client reads: the cache's account of one domain is far shorter.
const MAX_REPLY: u64 = 1 << 20;

/// The control socket of the daemon whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {0}: a file that is not a socket is in the way")]
    NotASocket(String),
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error(transparent)]
    Cache(#[from] policy_cache::CacheError),
}

/// What the operator asks about a domain's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    /// What is cached, and why.
    Show,
    /// Fetch now, whatever the cache holds.
    Refresh,
    /// Drop everything cached.
    Forget,
}

impl PolicyAction {
    fn word(self) -> &'static str {
        match self {
            PolicyAction::Show => "show",
            PolicyAction::Refresh => "refresh",
            PolicyAction::Forget => "forget",
        }
    }
}

/// One command, as sent over the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: PolicyAction,
    /// Lower-case, without a trailing dot.
    pub domain: String,
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("empty request")]
    Empty,
    #[error("unknown command {0:?} (expected: policy show|refresh|forget DOMAIN)")]
    Unknown(String),
    #[error("bad domain {0:?}")]
    BadDomain(String),
    #[error("{0}")]
    Queue(String),
}

/// A request line, of any family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Policy(Request),
    Queue(QueueCommand),
    TlsRpt(TlsRptCommand),
}

/// What the TLS-RPT sender offers the control socket (implemented by
/// `report::send::Reporter`).
pub trait TlsRptService: Send + Sync {
    /// The counts not yet reported and the report each domain would get now.
    fn show<'a>(
        &'a self,
        domain: Option<&'a str>,
        json: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + 'a>>;
    /// Closes the open period now and sends its reports at once; what was done.
    fn send_now<'a>(
        &'a self,
        domain: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + 'a>>;
}

/// `tlsrpt show [DOMAIN] [--json]` or `tlsrpt send [DOMAIN] --now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptCommand {
    /// `send --now` (else `show`).
    pub send: bool,
    pub domain: Option<String>,
    pub json: bool,
}

impl TlsRptCommand {
    fn parse(words: &[&str]) -> Result<TlsRptCommand, RequestError> {
        let usage = || {
            RequestError::Unknown(
                "expected: tlsrpt show [DOMAIN] [--json] | tlsrpt send [DOMAIN] --now".into(),
            )
        };
        let (send, rest) = match words.split_first() {
            Some((&"show", rest)) => (false, rest),
            Some((&"send", rest)) => (true, rest),
            _ => return Err(usage()),
        };
        let mut command = TlsRptCommand {
            send,
            domain: None,
            json: false,
        };
        let mut now = false;
        for word in rest {
            match *word {
                "--json" if !send => command.json = true,
                "--now" if send => now = true,
                w if !w.starts_with('-') && command.domain.is_none() => {
                    command.domain = Some(normalize_domain(w)?);
                }
                _ => return Err(usage()),
            }
        }
        // `send` without `--now` would suggest a scheduled send; the daemon does that itself.
        if send && !now {
            return Err(usage());
        }
        Ok(command)
    }

    /// The request line.
    pub fn to_line(&self) -> String {
        let mut line = String::from(if self.send {
            "tlsrpt send"
        } else {
            "tlsrpt show"
        });
        if let Some(d) = &self.domain {
            line.push(' ');
            line.push_str(d);
        }
        line.push_str(match (self.send, self.json) {
            (true, _) => " --now",
            (false, true) => " --json",
            (false, false) => "",
        });
        line
    }
}

impl Incoming {
    fn parse(line: &str) -> Result<Incoming, RequestError> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.split_first() {
            Some((&"queue", rest)) => QueueCommand::parse(rest)
                .map(Incoming::Queue)
                .map_err(RequestError::Queue),
            _ if line.len() >= MAX_REQUEST => Err(RequestError::TooLong),
            Some((&"tlsrpt", rest)) => TlsRptCommand::parse(rest).map(Incoming::TlsRpt),
            _ => Request::parse(line).map(Incoming::Policy),
        }
    }
}

impl Request {
    pub fn new(action: PolicyAction, domain: &str) -> Result<Request, RequestError> {
        Ok(Request {
            action,
            domain: normalize_domain(domain)?,
        })
    }

    /// Parses one request line (without its line end).
    pub fn parse(line: &str) -> Result<Request, RequestError> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let action = match words.as_slice() {
            [] => return Err(RequestError::Empty),
            ["policy", "show", _] => PolicyAction::Show,
            ["policy", "refresh", _] => PolicyAction::Refresh,
            ["policy", "forget", _] => PolicyAction::Forget,
            _ => return Err(RequestError::Unknown(truncate(line, 80))),
        };
        Request::new(action, words[2])
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy {} {}", self.action.word(), self.domain)
    }
}

/// A domain as the operator types it, made canonical: lower case, no trailing dot. Only its
/// shape is checked here (length, no spaces or control characters); the cache applies IDNA.
fn normalize_domain(domain: &str) -> Result<String, RequestError> {
    let d = domain.strip_suffix('.').unwrap_or(domain).to_lowercase();
    let shape_ok = !d.is_empty()
        && d.len() <= 253
        && !d.starts_with('.')
        && !d.contains("..")
        && !d
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/\\@:[]".contains(c));
    if shape_ok {
        Ok(d)
    } else {
        Err(RequestError::BadDomain(truncate(domain, 80)))
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// The answer to one request: success or failure, and text for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub text: String,
}

impl Reply {
    pub fn ok(text: String) -> Reply {
        Reply { ok: true, text }
    }

    pub fn error(text: String) -> Reply {
        Reply { ok: false, text }
    }

    /// The bytes on the wire: the status line, then the text.
    pub fn encode(&self) -> Vec<u8> {
        let status = if self.ok { "ok\n" } else { "error\n" };
        let mut out = Vec::with_capacity(status.len() + self.text.len());
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    /// Reads a reply back; `None` when the status line is missing or unknown.
    pub fn decode(bytes: &[u8]) -> Option<Reply> {
        let text = String::from_utf8_lossy(bytes);
        let (status, rest) = text.split_once('\n')?;
        let ok = match status {
            "ok" => true,
            "error" => false,
            _ => return None,
        };
        Some(Reply {
            ok,
            text: rest.to_string(),
        })
    }
}

/// Runs one command against `cache`: the same code serves the daemon and the command line.
pub async fn execute(cache: &PolicyCache, request: &Request) -> Reply {
    let domain = request.domain.as_str();
    match request.action {
        PolicyAction::Show => Reply::ok(with_newline(cache.show(domain))),
        PolicyAction::Refresh => {
            let lookup = cache.refresh(domain).await;
            let mut text = describe_lookup(domain, &lookup);
            text.push_str("\n\n");
            text.push_str(&with_newline(cache.show(domain)));
            match lookup {
                StsLookup::TempFail { .. } => Reply::error(text),
                StsLookup::Policy(_) | StsLookup::NoPolicy { .. } => Reply::ok(text),
            }
        }
        PolicyAction::Forget => match cache.forget(domain) {
            Ok(true) => Reply::ok(format!("forgot {domain}\n")),
            Ok(false) => Reply::ok(format!("nothing cached for {domain}\n")),
            Err(e) => Reply::error(format!("{e}\n")),
        },
    }
}

/// One line (then the policy's MX patterns) saying what a refresh produced.
fn describe_lookup(domain: &str, lookup: &StsLookup) -> String {
    match lookup {
        StsLookup::Policy(active) => describe_policy(active),
        StsLookup::NoPolicy { reason, .. } => format!("{domain}: no MTA-STS policy: {reason}"),
        StsLookup::TempFail { reason } => {
            format!("{domain}: cannot tell now (temporary failure): {reason}")
        }
    }
}

fn describe_policy(active: &ActivePolicy) -> String {
    let mode = match active.policy.mode {
        Mode::Enforce => "enforce",
        Mode::Testing => "testing",
        Mode::None => "none",
    };
    let mx: Vec<&str> = active.policy.mx.iter().map(|p| p.0.as_str()).collect();
    format!(
        "{}: policy id={} mode={} max_age={} mx={} fetched={} expires={}",
        active.domain,
        active.id,
        mode,
        active.policy.max_age,
        mx.join(","),
        humantime::format_rfc3339_seconds(active.fetched_at),
        humantime::format_rfc3339_seconds(active.expires_at),
    )
}

fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Opens the policy cache of `config` in this process, with a resolver built as delivery
/// builds its own (`[dns]`), for the command line when no daemon runs.
pub fn open_cache(config: &Config) -> Result<PolicyCache, ControlError> {
    let resolver = crate::delivery::dns::build_resolver(&config.dns)
        .map_err(|e| ControlError::Resolver(e.to_string()))?;
    Ok(PolicyCache::open(
        &config.policy_cache_dir(),
        resolver,
        config.policy_settings(),
        Arc::new(SystemClock),
    )?)
}

/// The daemon's side: a bound control socket, not yet serving.
pub struct ControlListener {
    listener: UnixListener,
    /// Removed again when serving ends.
    path: PathBuf,
}

impl ControlListener {
    /// Binds `path` with mode 0600, first removing a socket left by a daemon that did not
    /// stop cleanly. The caller holds the data directory's lock, so no live daemon owns it.
    pub fn bind(path: &Path) -> Result<ControlListener, ControlError> {
        let err = |source| ControlError::Socket {
            path: path.display().to_string(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
            Ok(_) => return Err(ControlError::NotASocket(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        // Peers are also checked by uid when they connect, which covers the moment between
        // bind and chmod.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(ControlListener {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves requests until `shutdown` turns true, then removes the socket file. Without a
    /// policy cache (`mta_sts.enabled = false`) every policy command gets an error reply.
    pub async fn serve(
        self,
        policies: Option<Arc<PolicyCache>>,
        queue: Option<Queue>,
        reporter: Option<Arc<dyn TlsRptService>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let queue = queue.map(|q| Arc::new(Executor::daemon(q)));
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut handlers = JoinSet::new();
        let mut stop = std::pin::pin!(async move {
            // A dropped sender also means that nobody can keep us running.
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
        loop {
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut stop => break,
            };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = &mut stop => break,
            };
            while handlers.try_join_next().is_some() {}
            match accepted {
                Ok((stream, _)) => {
                    let Some(who) = peer_allowed(&stream) else {
                        tracing::warn!("control socket: refused a peer of another user");
                        continue;
                    };
                    let policies = policies.clone();
                    let queue = queue.clone();
                    let reporter = reporter.clone();
                    handlers.spawn(async move {
                        let services = Services {
                            policies: policies.as_deref(),
                            queue: queue.as_deref(),
                            reporter: reporter.as_deref(),
                            who: &who,
                        };
                        handle(stream, services).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("control socket: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // Commands still running are abandoned: a refresh in flight is harmless to cut.
        handlers.shutdown().await;
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("control socket {}: {e}", self.path.display());
        }
    }
}

/// Only our own user and root may command the daemon; who it is, for the log.
fn peer_allowed(stream: &UnixStream) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let cred = stream.peer_cred().ok()?;
    (cred.uid() == me || cred.uid() == 0).then(|| match cred.pid() {
        Some(pid) => format!("uid {} pid {pid}", cred.uid()),
        None => format!("uid {}", cred.uid()),
    })
}

/// What a connection may use.
#[derive(Clone, Copy)]
struct Services<'a> {
    policies: Option<&'a PolicyCache>,
    queue: Option<&'a Executor>,
    reporter: Option<&'a dyn TlsRptService>,
    who: &'a str,
}

/// One connection: read the request, run it, write the reply. Never panics on what the peer
/// sends; every fault becomes an `error` reply or a closed connection.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, services: Services<'_>) {
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => error_answer("timed out reading the request\n".into()),
        Ok(Err(e)) => error_answer(format!("{e}\n")),
        Ok(Ok(Incoming::Policy(request))) => policy_answer(services.policies, &request).await,
        Ok(Ok(Incoming::TlsRpt(command))) => match services.reporter {
            None => error_answer("TLS-RPT reporting is not running in this daemon\n".into()),
            Some(reporter) => {
                tracing::info!(
                    "control socket: {} (by {})",
                    command.to_line(),
                    services.who
                );
                let run = async {
                    if command.send {
                        reporter.send_now(command.domain.as_deref()).await
                    } else {
                        reporter.show(command.domain.as_deref(), command.json).await
                    }
                };
                match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
                    Ok(text) => Answer {
                        ok: true,
                        body: Body::Text(text),
                    },
                    Err(_) => error_answer("timed out\n".into()),
                }
            }
        },
        Ok(Ok(Incoming::Queue(command))) => match services.queue {
            None => error_answer("the queue is not served here\n".into()),
            Some(executor) => {
                tracing::info!(
                    "control socket: queue {} (by {})",
                    command.to_words().join(" "),
                    services.who
                );
                match tokio::time::timeout(QUEUE_TIMEOUT, executor.run(&command, services.who))
                    .await
                {
                    Ok(answer) => answer,
                    Err(_) => error_answer("timed out\n".into()),
                }
            }
        },
    };
    if let Err(e) = write_answer(&mut stream, answer).await {
        tracing::debug!("control socket: writing the reply: {e}");
    }
}

fn error_answer(text: String) -> Answer {
    Answer {
        ok: false,
        body: Body::Text(text),
    }
}

async fn policy_answer(policies: Option<&PolicyCache>, request: &Request) -> Answer {
    let reply = match policies {
        None => Reply::error("MTA-STS is disabled in this daemon (mta_sts.enabled)\n".into()),
        Some(cache) => {
            tracing::info!("control socket: {request}");
            match tokio::time::timeout(COMMAND_TIMEOUT, execute(cache, request)).await {
                Ok(reply) => reply,
                Err(_) => Reply::error(format!("{request}: timed out\n")),
            }
        }
    };
    Answer {
        ok: reply.ok,
        body: Body::Text(reply.text),
    }
}

/// The status line, then the body; a streamed body chunk by chunk, each write bounded.
async fn write_answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    answer: Answer,
) -> std::io::Result<()> {
    let status: &[u8] = if answer.ok { b"ok\n" } else { b"error\n" };
    let timed = |r: Result<std::io::Result<()>, _>| r.map_err(std::io::Error::from)?;
    timed(tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(status)).await)?;
    match answer.body {
        Body::Text(text) => {
            timed(tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(text.as_bytes())).await)?
        }
        Body::Stream(mut chunks) => {
            while let Some(chunk) = chunks.recv().await {
                timed(tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&chunk)).await)?;
            }
        }
    }
    timed(tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await)
}

/// Reads one line of at most [`MAX_REQUEST`] bytes (the end of input also ends it).
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Incoming, RequestError> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_QUEUE_REQUEST as u64));
    // An I/O error mid-line leaves what was read; the parse below judges it.
    let _ = reader.read_until(b'\n', &mut line).await;
    if line.last() != Some(&b'\n') && line.len() >= MAX_QUEUE_REQUEST {
        return Err(RequestError::TooLong);
    }
    let text = std::str::from_utf8(&line).map_err(|_| RequestError::NotUtf8)?;
    Incoming::parse(text.trim_end_matches(['\r', '\n']))
}

/// Why the command line could not get an answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (no file, or a file left by a stopped daemon).
    #[error("no daemon listens on {0}")]
    NotRunning(String),
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {0}: no answer within {COMMAND_TIMEOUT:?}")]
    Timeout(String),
    #[error("control socket {0}: malformed reply")]
    Malformed(String),
}

/// Sends a queue command to the daemon listening on `path` and copies the reply's text as it
/// arrives (a listing may be large) to `out`, or to `err` when the daemon said `error`; true
/// when it said `ok`.
pub async fn request_queue<'a>(
    path: &Path,
    command: &QueueCommand,
    out: &'a mut (dyn std::io::Write + Send),
    err: &'a mut (dyn std::io::Write + Send),
) -> Result<bool, ClientError> {
    let shown = path.display().to_string();
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let mut stream = connect(path).await?;
    let line = format!("queue {}\n", command.to_words().join(" "));
    stream.write_all(line.as_bytes()).await.map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut status = Vec::new();
    let mut head = (&mut reader).take(16);
    tokio::time::timeout(QUEUE_TIMEOUT, head.read_until(b'\n', &mut status))
        .await
        .map_err(|_| ClientError::Timeout(shown.clone()))?
        .map_err(io)?;
    let ok = match status.as_slice() {
        b"ok\n" => true,
        b"error\n" => false,
        _ => return Err(ClientError::Malformed(shown)),
    };
    let out = if ok { out } else { err };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(QUEUE_TIMEOUT, reader.read(&mut buf))
            .await
            .map_err(|_| ClientError::Timeout(shown.clone()))?
            .map_err(io)?;
        if n == 0 {
            return Ok(ok);
        }
        match out.write_all(&buf[..n]) {
            Ok(()) => {}
            // The reader went away (`mxguard queue list | head`): not our failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ok),
            Err(e) => return Err(io(e)),
        }
    }
}

async fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    let shown = path.display().to_string();
    match UnixStream::connect(path).await {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(ClientError::NotRunning(shown))
        }
        Err(source) => Err(ClientError::Io {
            path: shown,
            source,
        }),
    }
}

/// Sends `request` to the daemon listening on `path` and returns its reply.
pub async fn request(path: &Path, request: &Request) -> Result<Reply, ClientError> {
    request_line(path, &request.to_string()).await
}

/// Sends one request line (without its line end) and returns the daemon's reply.
pub async fn request_line(path: &Path, line: &str) -> Result<Reply, ClientError> {
    let shown = path.display().to_string();
    let mut stream = connect(path).await?;
    let exchange = async {
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut bytes = Vec::new();
        // Margin over the daemon's own limit, so its timeout reply arrives first.
        (&mut stream)
            .take(MAX_REPLY)
            .read_to_end(&mut bytes)
            .await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(COMMAND_TIMEOUT + WRITE_TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout(shown.clone()))?
        .map_err(|source| ClientError::Io {
            path: shown.clone(),
            source,
        })?;
    Reply::decode(&bytes).ok_or(ClientError::Malformed(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(line: &str, action: PolicyAction, domain: &str) {
        assert_eq!(
            Request::parse(line),
            Ok(Request {
                action,
                domain: domain.into()
            }),
            "{line:?}"
        );
    }

    fn bad(line: &str) -> RequestError {
        Request::parse(line).expect_err(line)
    }

    #[test]
    fn parses_tlsrpt_commands() {
        let parse = |line: &str| match Incoming::parse(line) {
            Ok(Incoming::TlsRpt(c)) => Ok(c),
            Ok(other) => panic!("{line:?} parsed as {other:?}"),
            Err(e) => Err(e),
        };
        let show = parse("tlsrpt show").expect("show");
        assert!(!show.send && show.domain.is_none() && !show.json);
        let show = parse("tlsrpt show Example.NET. --json").expect("show domain");
        assert_eq!(show.domain.as_deref(), Some("example.net"));
        assert!(show.json);
        assert_eq!(show.to_line(), "tlsrpt show example.net --json");
        let send = parse("tlsrpt send --now").expect("send");
        assert!(send.send && send.domain.is_none());
        assert_eq!(
            parse("tlsrpt send example.net --now")
                .expect("send")
                .to_line(),
            "tlsrpt send example.net --now"
        );
        // `send` only with `--now`; `--json` only for `show`; one domain.
        assert!(parse("tlsrpt send").is_err());
        assert!(parse("tlsrpt send --json --now").is_err());
        assert!(parse("tlsrpt show a.example b.example").is_err());
        assert!(parse("tlsrpt frobnicate").is_err());
        assert!(parse("tlsrpt show a/b").is_err());
    }

    #[test]
    fn parses_requests() {
        good("policy show example.com", PolicyAction::Show, "example.com");
        good(
            "policy refresh Example.COM.",
            PolicyAction::Refresh,
            "example.com",
        );
        good("  policy   forget a.b  ", PolicyAction::Forget, "a.b");
        good(
            "policy show bücher.example",
            PolicyAction::Show,
            "bücher.example",
        );
        assert_eq!(bad(""), RequestError::Empty);
        assert!(matches!(bad("policy list"), RequestError::Unknown(_)));
        assert!(matches!(bad("queue flush x"), RequestError::Unknown(_)));
        assert!(matches!(bad("policy show a b"), RequestError::Unknown(_)));
        assert!(matches!(
            bad("policy show a..b"),
            RequestError::BadDomain(_)
        ));
        assert!(matches!(bad("policy show ."), RequestError::BadDomain(_)));
        assert!(matches!(bad("policy show a/b"), RequestError::BadDomain(_)));
        assert!(matches!(
            bad("policy show a\u{7}b"),
            RequestError::BadDomain(_)
        ));
        let long = format!("policy show {}.com", "a".repeat(260));
        assert!(matches!(bad(&long), RequestError::BadDomain(_)));
    }

    #[test]
    fn requests_round_trip() {
        let r = Request::new(PolicyAction::Refresh, "Example.org.").unwrap();
        assert_eq!(r.to_string(), "policy refresh example.org");
        assert_eq!(Request::parse(&r.to_string()), Ok(r));
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::ok("a\nb\n".into()),
            Reply::error("no\n".into()),
            Reply::ok(String::new()),
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        }
        assert_eq!(Reply::decode(b""), None);
        assert_eq!(Reply::decode(b"maybe\ntext"), None);
    }

    /// Runs `handle` over an in-memory pipe with `input` from the client; returns the reply.
    async fn exchange(input: &[u8]) -> Reply {
        let (mut client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move {
            let services = Services {
                reporter: None,
                policies: None,
                queue: None,
                who: "uid 0",
            };
            handle(server, services).await
        });
        // The server may reply and close before reading everything; that is fine.
        let _ = client.write_all(input).await;
        let _ = client.shutdown().await;
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        task.await.unwrap();
        Reply::decode(&bytes).unwrap()
    }

    #[tokio::test]
    async fn bad_input_gets_an_error_reply() {
        let r = exchange(b"frobnicate\n").await;
        assert!(!r.ok);
        assert!(r.text.contains("unknown command"), "{}", r.text);
        let r = exchange(&[b'x'; 2000]).await;
        assert!(!r.ok);
        assert!(r.text.contains("longer than"), "{}", r.text);
        let r = exchange(b"policy show \xff\xfe\n").await;
        assert!(r.text.contains("not UTF-8"), "{}", r.text);
        let r = exchange(b"").await;
        assert!(r.text.contains("empty request"), "{}", r.text);
    }

    #[tokio::test]
    async fn without_a_cache_policy_commands_are_refused() {
        let r = exchange(b"policy show example.com\r\n").await;
        assert!(!r.ok);
        assert!(r.text.contains("MTA-STS is disabled"), "{}", r.text);
    }

    #[tokio::test]
    async fn serves_a_socket_and_removes_it_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        // A stale socket from a crashed daemon is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (tx, rx) = watch::channel(false);
        let listener = ControlListener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let task = tokio::spawn(listener.serve(None, None, None, rx));
        let req = Request::new(PolicyAction::Forget, "example.com").unwrap();
        let reply = request(&path, &req).await.unwrap();
        assert!(!reply.ok);
        tx.send(true).unwrap();
        task.await.unwrap();
        assert!(!path.exists());
        assert!(matches!(
            request(&path, &req).await,
            Err(ClientError::NotRunning(_))
        ));
    }

    #[test]
    fn refuses_to_replace_a_file_that_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        std::fs::write(&path, "precious").unwrap();
        assert!(matches!(
            ControlListener::bind(&path),
            Err(ControlError::NotASocket(_))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
