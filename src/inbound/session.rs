//! One ESMTP session (RFC 5321 §3, §4.1): greeting, EHLO, then mail transactions of MAIL,
//! RCPT… and DATA, until QUIT. The session runs over any byte stream, plain or TLS; STARTTLS
//! (RFC 3207) ends the plain session and hands the stream back, and a fresh session, which
//! remembers nothing of the plaintext one, continues inside TLS.

mod transaction;

use super::auth::{self, Exchange, Step};
use super::command::{self, Command};
use super::io::{IoError, Line, SmtpIo};
use super::stats::Stats;
use super::Inbound;
use crate::envelope::Envelope;
use crate::reply::{EnhancedCode, Reply};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::info;

/// Facts about the client connection that outlive a STARTTLS.
#[derive(Debug)]
pub struct Client {
    pub addr: SocketAddr,
    /// Index into `config.listeners`.
    pub listener: usize,
    /// `(version, cipher)` once TLS is up.
    pub tls: Option<crate::tls::Negotiated>,
    pub stats: Stats,
    /// Error replies sent so far (Postfix's `smtpd_hard_error_limit` counts them per connection).
    pub errors: u32,
}

impl Client {
    pub fn new(addr: SocketAddr, listener: usize) -> Self {
        Client {
            addr,
            listener,
            tls: None,
            stats: Stats::default(),
            errors: 0,
        }
    }

    /// `[192.0.2.1]`, as Postfix names an address in its log.
    pub fn ip_text(&self) -> String {
        format!("[{}]", self.addr.ip().to_canonical())
    }
}

/// What the client said in HELO or EHLO.
#[derive(Debug, Clone)]
struct Helo {
    name: String,
    /// EHLO (extended SMTP) rather than HELO.
    esmtp: bool,
}

/// RFC 5321 §4.1.4: the order in which commands may come.
#[derive(Debug)]
enum State {
    /// No HELO/EHLO yet (or none since STARTTLS).
    Fresh,
    /// Greeted; no mail transaction open.
    Ready(Helo),
    /// MAIL accepted; collecting recipients until DATA.
    Transaction(Helo, Box<Envelope>),
}

/// Why the command loop ends.
#[derive(Debug)]
enum Stop {
    Quit,
    /// The client went away or the stream failed.
    Lost(IoError),
    Timeout,
    Shutdown,
    /// We have sent the reply that ends the session (hard error limit, STARTTLS injection).
    Closed,
    /// STARTTLS was accepted; the caller does the handshake.
    StartTls,
}

impl From<IoError> for Stop {
    fn from(e: IoError) -> Self {
        match e {
            IoError::Timeout => Stop::Timeout,
            other => Stop::Lost(other),
        }
    }
}

/// How a session ended, for the connection to act on.
pub enum Ending<S> {
    Closed,
    /// The client asked for TLS: here is the stream, with nothing left unread in our buffer.
    StartTls(S),
}

type Flow = Result<(), Stop>;

fn reply(code: u16, class: u8, subject: u16, detail: u16, text: impl Into<String>) -> Reply {
    Reply::new(code, EnhancedCode::new(class, subject, detail), text)
}

fn bad_sequence(text: &str) -> Reply {
    reply(503, 5, 5, 1, format!("Error: {text}"))
}

pub struct Session<'a, S> {
    io: SmtpIo<S>,
    inbound: &'a Inbound,
    client: &'a mut Client,
    shutdown: watch::Receiver<bool>,
    state: State,
    /// The user name of a successful AUTH.
    auth_user: Option<String>,
    /// Code of the last reply, for the statistics of the command that caused it.
    last_code: u16,
    /// Name of the command being handled, for "lost connection after DATA".
    current: &'static str,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin + Send> Session<'a, S> {
    pub fn new(
        stream: S,
        inbound: &'a Inbound,
        client: &'a mut Client,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Session {
            io: SmtpIo::new(stream),
            inbound,
            client,
            shutdown,
            state: State::Fresh,
            auth_user: None,
            last_code: 0,
            current: "CONNECT",
        }
    }

    fn hostname(&self) -> &str {
        &self.inbound.config.hostname
    }

    fn tls_active(&self) -> bool {
        self.client.tls.is_some()
    }

    /// STARTTLS is offered on a listener with a certificate, before TLS is up.
    fn starttls_offered(&self) -> bool {
        !self.tls_active() && self.inbound.tls_acceptor(self.client.listener).is_some()
    }

    /// RFC 4954 §4: AUTH PLAIN/LOGIN send the password itself, so only inside TLS.
    fn auth_offered(&self) -> bool {
        self.tls_active() && self.inbound.users.is_some()
    }

    /// Runs the session; `greet` is false for the session that continues after STARTTLS
    /// (RFC 3207 §4.2: no new greeting).
    pub async fn run(mut self, greet: bool) -> Ending<S> {
        let stop = self.command_loop(greet).await;
        let ip = self.client.ip_text();
        match stop {
            Stop::StartTls => return Ending::StartTls(self.io.into_inner()),
            Stop::Quit | Stop::Closed => {}
            Stop::Lost(e) => info!(
                "lost connection after {} from {ip}: {e}",
                self.current.to_uppercase()
            ),
            Stop::Timeout => {
                info!("timeout after {} from {ip}", self.current.to_uppercase());
                let text = format!("{} Error: timeout exceeded", self.hostname());
                self.close_with(reply(421, 4, 4, 2, text)).await;
            }
            Stop::Shutdown => {
                let text = format!("{} Service shutting down", self.hostname());
                self.close_with(reply(421, 4, 3, 2, text)).await;
            }
        }
        self.io.close().await;
        Ending::Closed
    }

    async fn close_with(&mut self, r: Reply) {
        let _ = self.io.send(&r).await;
        let _ = self.io.flush().await;
    }

    async fn command_loop(&mut self, greet: bool) -> Stop {
        if greet {
            let text = format!("{} ESMTP mxguard", self.hostname());
            if let Err(stop) = self.send(Reply::plain(220, text)).await {
                return stop;
            }
        }
        loop {
            let line = match self.next_line().await {
                Ok(line) => line,
                Err(stop) => return stop,
            };
            if let Err(stop) = self.handle_line(line).await {
                return stop;
            }
        }
    }

    /// Waits for the next command line, giving up on the idle timeout or at shutdown.
    async fn next_line(&mut self) -> Result<Line, Stop> {
        let timeout = self.inbound.config.smtpd.timeout;
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            // Commands already received are still answered before a shutdown closes the door.
            biased;
            line = self.io.read_line(timeout) => Ok(line?),
            _ = super::shutdown_requested(&mut shutdown) => Err(Stop::Shutdown),
        }
    }

    /// Sends a reply; error replies count toward the hard error limit, and reaching it closes
    /// the session with 421 (Postfix's `smtpd_hard_error_limit`).
    async fn send(&mut self, r: Reply) -> Flow {
        self.last_code = r.code;
        self.io.send(&r).await?;
        if r.code >= 400 {
            self.client.errors += 1;
            if self.client.errors >= self.inbound.config.smtpd.hard_error_limit {
                info!(
                    "too many errors after {} from {}",
                    self.current,
                    self.client.ip_text()
                );
                let text = format!("{} Error: too many errors", self.hostname());
                self.close_with(reply(421, 4, 7, 0, text)).await;
                return Err(Stop::Closed);
            }
        }
        Ok(())
    }

    async fn handle_line(&mut self, line: Line) -> Flow {
        let command = match line {
            Line::TooLong => Err(reply(500, 5, 5, 2, "Line too long")),
            Line::Complete(bytes) => command::parse(&bytes),
        };
        let command = match command {
            Ok(c) => c,
            Err(r) => {
                self.current = "unknown";
                let result = self.send(r).await;
                self.client.stats.record("unknown", false);
                return result;
            }
        };
        self.current = name(&command);
        let result = self.dispatch(command).await;
        if !matches!(result, Err(Stop::Lost(_)) | Err(Stop::Timeout)) {
            self.client.stats.record(self.current, self.last_code < 400);
        }
        result
    }

    async fn dispatch(&mut self, command: Command) -> Flow {
        match command {
            Command::Ehlo(name) => self.hello(name, true).await,
            Command::Helo(name) => self.hello(name, false).await,
            Command::Mail { from, params } => self.mail(from, params).await,
            Command::Rcpt { to, params } => self.rcpt(to, params).await,
            Command::Data => self.data().await,
            Command::Rset => {
                self.reset_transaction();
                self.send(reply(250, 2, 0, 0, "Ok")).await
            }
            Command::Noop => self.send(reply(250, 2, 0, 0, "Ok")).await,
            Command::Quit => {
                self.send(reply(221, 2, 0, 0, "Bye")).await?;
                Err(Stop::Quit)
            }
            // RFC 5321 §3.5.3: 252 when we cannot verify but would accept.
            Command::Vrfy => {
                let text = "Cannot VRFY user, but will accept message and attempt delivery";
                self.send(reply(252, 2, 0, 0, text)).await
            }
            Command::Help => {
                let text =
                    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH";
                self.send(reply(214, 2, 0, 0, text)).await
            }
            Command::StartTls => self.starttls().await,
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial).await,
            Command::NotImplemented => {
                self.send(reply(502, 5, 5, 1, "Error: command not implemented"))
                    .await
            }
        }
    }

    /// RFC 5321 §4.1.4: RSET, and a new EHLO, abort any transaction.
    fn reset_transaction(&mut self) {
        if let State::Transaction(h, _) = &self.state {
            self.state = State::Ready(h.clone());
        }
    }

    async fn hello(&mut self, name: String, esmtp: bool) -> Flow {
        let answer = if esmtp {
            Reply::plain(250, self.ehlo_lines().join("\n"))
        } else {
            Reply::plain(250, self.hostname().to_string())
        };
        self.state = State::Ready(Helo { name, esmtp });
        self.send(answer).await
    }

    /// The EHLO reply: our name, then one extension per line.
    fn ehlo_lines(&self) -> Vec<String> {
        let smtpd = &self.inbound.config.smtpd;
        let mut lines = vec![
            self.hostname().to_string(),
            "PIPELINING".into(),
            format!("SIZE {}", smtpd.message_size_limit),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.extend(["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"].map(String::from));
        // RFC 8689 §4: REQUIRETLS is offered only on a TLS session.
        if self.tls_active() {
            lines.push("REQUIRETLS".into());
        }
        lines
    }

    async fn starttls(&mut self) -> Flow {
        if self.tls_active() {
            return self
                .send(reply(554, 5, 5, 1, "Error: TLS already active"))
                .await;
        }
        if !self.starttls_offered() {
            let r = reply(502, 5, 5, 1, "Error: command not implemented");
            return self.send(r).await;
        }
        if matches!(self.state, State::Transaction(..)) {
            return self
                .send(bad_sequence("MAIL transaction in progress"))
                .await;
        }
        // RFC 3207 §4.2 and CVE-2011-0411: anything the client pipelined after STARTTLS was
        // sent in plaintext, and must not be read as if it had come through TLS. A client
        // that does this is broken or an attack: refuse and close.
        if self.io.has_buffered_input() {
            info!(
                "improper command pipelining after STARTTLS from {}",
                self.client.ip_text()
            );
            let r = reply(
                554,
                5,
                5,
                1,
                "Error: improper command pipelining after STARTTLS",
            );
            self.last_code = r.code;
            self.close_with(r).await;
            return Err(Stop::Closed);
        }
        self.send(reply(220, 2, 0, 0, "Ready to start TLS")).await?;
        self.io.flush().await?;
        Err(Stop::StartTls)
    }

    async fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Flow {
        if !self.auth_offered() {
            return self.send(bad_sequence("authentication not enabled")).await;
        }
        let refusal = match &self.state {
            State::Fresh => Some("send HELO/EHLO first"),
            State::Transaction(..) => Some("MAIL transaction in progress"),
            State::Ready(_) if self.auth_user.is_some() => Some("already authenticated"),
            State::Ready(_) => None,
        };
        if let Some(text) = refusal {
            return self.send(bad_sequence(text)).await;
        }
        let Some((mut exchange, mut step)) = Exchange::start(mechanism, initial.as_deref()) else {
            let r = reply(504, 5, 5, 4, "Unsupported authentication mechanism");
            return self.send(r).await;
        };
        loop {
            match step {
                Step::Failed(r) => return self.send(r).await,
                Step::Credentials { user, password } => return self.verify(user, password).await,
                Step::Challenge(challenge) => {
                    self.send(Reply::plain(334, challenge)).await?;
                    let line = match self.next_line().await? {
                        Line::Complete(bytes) => String::from_utf8(bytes).unwrap_or_default(),
                        Line::TooLong => {
                            return self
                                .send(reply(
                                    500,
                                    5,
                                    5,
                                    6,
                                    "Authentication Exchange line is too long",
                                ))
                                .await
                        }
                    };
                    step = exchange.respond(&line);
                }
            }
        }
    }

    async fn verify(&mut self, user: String, password: String) -> Flow {
        let Some(users) = self.inbound.users.clone() else {
            return self.send(auth::failed()).await;
        };
        // argon2 is deliberately slow: keep it off the threads that run sessions.
        let check_user = user.clone();
        let ok = tokio::task::spawn_blocking(move || users.verify(&check_user, &password))
            .await
            .unwrap_or(false);
        if ok {
            info!("{}: sasl_username={user}", self.client.ip_text());
            self.auth_user = Some(user);
            self.send(reply(235, 2, 7, 0, "Authentication successful"))
                .await
        } else {
            info!(
                "warning: {}: SASL authentication failed",
                self.client.ip_text()
            );
            self.send(auth::failed()).await
        }
    }
}

/// The command's name in the `disconnect` statistics.
fn name(command: &Command) -> &'static str {
    match command {
        Command::Ehlo(_) => "ehlo",
        Command::Helo(_) => "helo",
        Command::Mail { .. } => "mail",
        Command::Rcpt { .. } => "rcpt",
        Command::Data => "data",
        Command::Rset => "rset",
        Command::Noop => "noop",
        Command::Quit => "quit",
        Command::Vrfy => "vrfy",
        Command::Help => "help",
        Command::StartTls => "starttls",
        Command::Auth { .. } => "auth",
        Command::NotImplemented => "unimplemented",
    }
}
