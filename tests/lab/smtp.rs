//! The lab's receiving SMTP servers (RFC 5321): the MX hosts the relay delivers to. A test
//! scripts each server's [`Behaviour`] — what it advertises, whether it offers STARTTLS and with
//! which certificate, which replies it gives at greeting, MAIL, RCPT and DATA, whether it is slow
//! or drops the connection — and can change it while the relay runs (e.g. 451 now, 250 on the
//! retry). Each server records what it received ([`ReceivedMessage`]): the envelope with its
//! parameters, the data both as the wire carried it (dot-stuffed) and as the content it stands
//! for (RFC 5321 §4.5.2), and the TLS facts of the session.

mod behaviour;
mod received;

// Not every test crate names each of these.
#[allow(unused_imports)]
pub use behaviour::{server_tls_config, Behaviour, Extensions};
#[allow(unused_imports)]
pub use received::{Rcpt, ReceivedMessage, TlsInfo};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a session waits for the next client line before giving up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a server shares between its sessions and the test.
struct Shared {
    name: String,
    behaviour: Mutex<Behaviour>,
    connections: AtomicUsize,
    /// Sessions open now, and the most ever open at once.
    open: AtomicUsize,
    peak: AtomicUsize,
    /// Bumped when the script is replaced: sessions opened before, when between
    /// transactions, close at once, as a restarted server's would.
    generation: tokio::sync::watch::Sender<usize>,
    /// Every line in and out, prefixed `C:` / `S:`, for assertions and for failure output.
    transcript: Mutex<Vec<String>>,
    /// TLS handshakes that failed, with the error (a client that rejected our certificate).
    tls_failures: Mutex<Vec<String>>,
    messages: Mutex<Vec<ReceivedMessage>>,
    arrivals: mpsc::UnboundedSender<ReceivedMessage>,
}

impl Shared {
    fn note(&self, line: String) {
        eprintln!("[{}] {line}", self.name);
        self.transcript.lock().unwrap().push(line);
    }
}

/// A running receiving server. Dropping it closes the listener.
#[must_use = "dropping the server closes it"]
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<ReceivedMessage>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    /// Binds `addr` (port 0 for an ephemeral one) and serves with `behaviour`.
    pub async fn start(addr: SocketAddr, behaviour: Behaviour) -> io::Result<SmtpServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: format!("mx {addr}"),
            behaviour: Mutex::new(behaviour),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            generation: tokio::sync::watch::Sender::new(0),
            transcript: Mutex::new(Vec::new()),
            tls_failures: Mutex::new(Vec::new()),
            messages: Mutex::new(Vec::new()),
            arrivals: tx,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(SmtpServer {
            addr,
            shared,
            arrivals: tokio::sync::Mutex::new(rx),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the script; sessions already past a step are not affected.
    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.behaviour.lock().unwrap());
    }

    /// Replaces the script, as if another server were started in this one's place: sessions
    /// open now are closed at their next command outside a transaction.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// The most sessions ever open at once.
    pub fn peak_sessions(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn transcript(&self) -> Vec<String> {
        self.shared.transcript.lock().unwrap().clone()
    }

    pub fn tls_failures(&self) -> Vec<String> {
        self.shared.tls_failures.lock().unwrap().clone()
    }

    /// Every message accepted so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// The next accepted message not yet returned by this method; panics after `timeout`.
    pub async fn next_message(&self, timeout: Duration) -> ReceivedMessage {
        let mut rx = self.arrivals.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(m)) => m,
            _ => panic!(
                "{}: no message within {timeout:?}; transcript:\n{}",
                self.shared.name,
                self.transcript().join("\n")
            ),
        }
    }

    /// Waits until a transcript line (`C: …`, `S: …`, `-- …`) satisfies `pred`; returns it.
    /// Panics with the transcript after `timeout`.
    pub async fn wait_for_transcript(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.transcript().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no matching transcript line within {timeout:?}; transcript:\n{}",
                self.shared.name,
                self.transcript().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `timeout` for a message; `None` if none came.
    pub async fn try_next_message(&self, timeout: Duration) -> Option<ReceivedMessage> {
        let mut rx = self.arrivals.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(open, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.note(format!("-- connection from {peer}"));
            let outcome = Session::new(shared.clone(), stream).run(open).await;
            if let Err(e) = outcome {
                shared.note(format!("-- session ended: {e}"));
            }
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP session, over plain TCP and then possibly TLS.
struct Session {
    shared: Arc<Shared>,
    stream: Option<BufReader<Box<dyn Io>>>,
    tls: Option<TlsInfo>,
    helo: String,
    mail: Option<(String, Vec<String>)>,
    rcpts: Vec<Rcpt>,
}

enum Step {
    Continue,
    Close,
}

impl Session {
    fn new(shared: Arc<Shared>, stream: TcpStream) -> Session {
        Session {
            shared,
            stream: Some(BufReader::new(Box::new(stream) as Box<dyn Io>)),
            tls: None,
            helo: String::new(),
            mail: None,
            rcpts: Vec::new(),
        }
    }

    fn behaviour(&self) -> Behaviour {
        self.shared.behaviour.lock().unwrap().clone()
    }

    fn io(&mut self) -> &mut BufReader<Box<dyn Io>> {
        self.stream.as_mut().expect("stream present")
    }

    async fn reply(&mut self, text: &str) -> io::Result<()> {
        self.shared.note(format!("S: {text}"));
        let io = self.io();
        io.get_mut()
            .write_all(format!("{text}\r\n").as_bytes())
            .await?;
        io.get_mut().flush().await
    }

    /// Reads one line including its line ending; `None` at end of stream.
    /// Between transactions, a replaced script closes the session (see
    /// [`SmtpServer::set_behaviour`]).
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let mut replaced = self.shared.generation.subscribe();
        let idle = self.mail.is_none();
        let read = tokio::time::timeout(IDLE_TIMEOUT, self.io().read_until(b'\n', &mut line));
        let n = tokio::select! {
            n = read => n.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client idle"))??,
            _ = replaced.changed(), if idle => {
                self.shared.note("-- closed: the server's script was replaced".to_string());
                return Ok(None);
            }
        };
        Ok((n > 0).then_some(line))
    }

    /// Serves the session; `open` counts the sessions open with this one.
    async fn run(mut self, open: usize) -> io::Result<()> {
        let b = self.behaviour();
        if b.session_limit.is_some_and(|limit| open > limit) {
            return self.reply("421 4.7.0 Too many connections").await;
        }
        if !b.greeting_delay.is_zero() {
            tokio::time::sleep(b.greeting_delay).await;
        }
        self.reply(&b.greeting).await?;
        let refused = !b.greeting.starts_with('2');
        if b.greeting.starts_with("421") {
            return Ok(());
        }
        while let Some(line) = self.read_line().await? {
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            self.shared.note(format!("C: {text}"));
            let verb = text
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            if refused && verb != "QUIT" {
                self.reply("503 5.5.1 Bad sequence of commands").await?;
                continue;
            }
            match self.command(&verb, &text).await? {
                Step::Continue => {}
                Step::Close => return Ok(()),
            }
        }
        Ok(())
    }

    async fn command(&mut self, verb: &str, text: &str) -> io::Result<Step> {
        match verb {
            "EHLO" => {
                self.helo = text[4..].trim().to_string();
                self.reset();
                let lines = self.ehlo_lines();
                let n = lines.len();
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i + 1 == n { ' ' } else { '-' };
                    self.reply(&format!("250{sep}{l}")).await?;
                }
            }
            "HELO" => {
                self.helo = text[4..].trim().to_string();
                self.reset();
                self.reply("250 mx.lab.test").await?;
            }
            "STARTTLS" => return self.starttls().await,
            "MAIL" => self.mail(text).await?,
            "RCPT" => self.rcpt(text).await?,
            "DATA" => return self.data().await,
            "RSET" => {
                self.reset();
                self.reply("250 2.0.0 Ok").await?;
            }
            "NOOP" => self.reply("250 2.0.0 Ok").await?,
            "QUIT" => {
                self.reply("221 2.0.0 Bye").await?;
                return Ok(Step::Close);
            }
            _ => self.reply("502 5.5.2 Command not recognized").await?,
        }
        Ok(Step::Continue)
    }

    fn ehlo_lines(&self) -> Vec<String> {
        let b = self.behaviour();
        let e = &b.extensions;
        let mut lines = vec!["mx.lab.test".to_string()];
        if e.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(size) = e.size {
            lines.push(format!("SIZE {size}"));
        }
        if (b.tls.is_some() || b.tls_handoff.is_some()) && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if e.enhancedstatuscodes {
            lines.push("ENHANCEDSTATUSCODES".into());
        }
        if e.eightbitmime {
            lines.push("8BITMIME".into());
        }
        if e.dsn {
            lines.push("DSN".into());
        }
        if e.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if e.requiretls && self.tls.is_some() {
            lines.push("REQUIRETLS".into());
        }
        lines
    }

    fn reset(&mut self) {
        self.mail = None;
        self.rcpts.clear();
    }

    async fn starttls(&mut self) -> io::Result<Step> {
        let b = self.behaviour();
        if let (Some(tls_server), None) = (b.tls_handoff, &self.tls) {
            return self.hand_off_tls(tls_server).await;
        }
        let config = match (&b.tls, &self.tls) {
            (Some(c), None) => c.clone(),
            _ => {
                self.reply("502 5.5.1 STARTTLS not available").await?;
                return Ok(Step::Continue);
            }
        };
        if let Some(r) = &b.starttls_reply {
            self.reply(r).await?;
            return Ok(Step::Continue);
        }
        self.reply("220 2.0.0 Ready to start TLS").await?;
        let reader = self.stream.take().expect("stream present");
        if !reader.buffer().is_empty() {
            // RFC 3207 §4.2: the client must not pipeline commands after STARTTLS.
            self.shared
                .note("-- client pipelined data after STARTTLS".into());
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        match acceptor.accept(reader.into_inner()).await {
            Ok(tls) => {
                let conn = tls.get_ref().1;
                let info = TlsInfo {
                    version: conn
                        .protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                    cipher: conn
                        .negotiated_cipher_suite()
                        .map(|c| format!("{:?}", c.suite()))
                        .unwrap_or_default(),
                    sni: conn.server_name().map(str::to_string),
                };
                self.shared.note(format!("-- TLS established: {info:?}"));
                self.tls = Some(info);
                self.stream = Some(BufReader::new(Box::new(tls) as Box<dyn Io>));
                // RFC 3207 §4.2: after TLS the session starts over, EHLO included.
                self.helo.clear();
                self.reset();
                Ok(Step::Continue)
            }
            Err(e) => {
                self.shared.note(format!("-- TLS handshake failed: {e}"));
                self.shared.tls_failures.lock().unwrap().push(e.to_string());
                Ok(Step::Close)
            }
        }
    }

    /// STARTTLS answered here, the handshake (and whatever follows) done by `tls_server`.
    async fn hand_off_tls(&mut self, tls_server: SocketAddr) -> io::Result<Step> {
        self.reply("220 2.0.0 Ready to start TLS").await?;
        let reader = self.stream.take().expect("stream present");
        let mut client = reader.into_inner();
        let mut server = tokio::net::TcpStream::connect(tls_server).await?;
        self.shared.note(format!(
            "-- STARTTLS handed to the TLS server at {tls_server}"
        ));
        let copied = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        self.shared
            .note(format!("-- TLS server session ended: {copied:?}"));
        Ok(Step::Close)
    }

    async fn mail(&mut self, text: &str) -> io::Result<()> {
        let Some((from, params)) = parse_path(text, "MAIL FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        if self.mail.is_some() {
            return self.reply("503 5.5.1 Error: nested MAIL command").await;
        }
        if let Some(wait) = self.behaviour().probe_pipelining {
            // fill_buf waits for more input only when none is buffered yet; nothing is consumed.
            let ahead = tokio::time::timeout(wait, self.io().fill_buf()).await;
            if matches!(ahead, Ok(Ok(buf)) if !buf.is_empty()) {
                self.shared.note("-- pipelined after MAIL".into());
            }
        }
        match self.behaviour().mail_reply {
            Some(r) => {
                let ok = r.starts_with('2');
                self.reply(&r).await?;
                if ok {
                    self.mail = Some((from, params));
                }
                Ok(())
            }
            None => {
                self.mail = Some((from, params));
                self.reply("250 2.1.0 Ok").await
            }
        }
    }

    async fn rcpt(&mut self, text: &str) -> io::Result<()> {
        let Some((to, params)) = parse_path(text, "RCPT TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        if self.mail.is_none() {
            return self.reply("503 5.5.1 Error: need MAIL command").await;
        }
        let b = self.behaviour();
        let r = b
            .rcpt_replies
            .get(&to.to_ascii_lowercase())
            .or(b.rcpt_default.as_ref())
            .cloned()
            .unwrap_or_else(|| "250 2.1.5 Ok".into());
        let full = b.rcpt_limit.is_some_and(|n| self.rcpts.len() >= n);
        if full && r.starts_with('2') {
            return self.reply("452 4.5.3 Error: too many recipients").await;
        }
        if r.starts_with('2') {
            self.rcpts.push(Rcpt {
                address: to,
                params,
            });
        }
        self.reply(&r).await
    }

    async fn data(&mut self) -> io::Result<Step> {
        let b = self.behaviour();
        if self.mail.is_none() || self.rcpts.is_empty() {
            self.reply("554 5.5.1 Error: no valid recipients").await?;
            return Ok(Step::Continue);
        }
        if let Some(r) = &b.data_reply {
            self.reply(r).await?;
            if !r.starts_with('3') {
                self.reset();
                return Ok(Step::Continue);
            }
        } else {
            self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        }
        let mut raw = Vec::new();
        let mut data = Vec::new();
        loop {
            let Some(line) = self.read_line().await? else {
                self.shared.note("-- connection closed during DATA".into());
                return Ok(Step::Close);
            };
            raw.extend_from_slice(&line);
            if b.drop_mid_data {
                self.shared
                    .note("-- dropping the connection mid-DATA".into());
                return Ok(Step::Close);
            }
            if line == b".\r\n" {
                break;
            }
            // RFC 5321 §4.5.2: a leading dot was doubled by the client; remove one.
            let content = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(content);
        }
        self.shared
            .note(format!("-- end of data ({} bytes)", data.len()));
        if !b.end_of_data_delay.is_zero() {
            self.shared.note(format!(
                "-- stalling the end-of-data reply for {:?}",
                b.end_of_data_delay
            ));
            tokio::time::sleep(b.end_of_data_delay).await;
        }
        let r = b
            .end_of_data_reply
            .clone()
            .unwrap_or_else(|| "250 2.0.0 Ok: queued".into());
        let (mail_from, mail_params) = self.mail.take().expect("MAIL given");
        let message = ReceivedMessage {
            helo: self.helo.clone(),
            mail_from,
            mail_params,
            rcpts: std::mem::take(&mut self.rcpts),
            data,
            raw_data: raw,
            tls: self.tls.clone(),
        };
        if r.starts_with('2') {
            self.shared.messages.lock().unwrap().push(message.clone());
            let _ = self.shared.arrivals.send(message);
        }
        self.reply(&r).await?;
        Ok(Step::Continue)
    }
}

/// Splits `MAIL FROM:<addr> P1 P2` (case-insensitive keyword) into the address and parameters.
fn parse_path(text: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = text.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = text[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let close = rest.find('>')?;
    let address = rest[..close].to_string();
    let params = rest[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((address, params))
}

/// How many transactions `mx` saw begin (MAIL FROM), in plaintext or over TLS.
pub fn mail_commands(mx: &SmtpServer) -> usize {
    mx.transcript()
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("C: MAIL FROM"))
        .count()
}

/// `mx` received nothing: no message, not even a MAIL FROM.
#[track_caller]
pub fn assert_nothing_sent(mx: &SmtpServer) {
    assert!(mx.messages().is_empty(), "no message may arrive");
    assert_eq!(
        mail_commands(mx),
        0,
        "no transaction may start: {:#?}",
        mx.transcript()
    );
}
