//! The inbound SMTP server, spoken to over real loopback sockets: each test starts the server
//! in-process on 127.0.0.1:0 with its own spool, talks raw SMTP, and checks the replies and
//! what the queue stored.

#[allow(dead_code)] // the lab CA serves other tests too
#[path = "lab/ca.rs"]
mod ca;

use ca::LabCa;
use mxguard::config::Config;
use mxguard::envelope::{Envelope, Ret};
use mxguard::inbound::{hash_password, Inbound};
use mxguard::queue::{Queue, QueueId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

const WAIT: Duration = Duration::from_secs(10);
const HOST: &str = "relay.test";
const GREETING: &str = "220 relay.test ESMTP mxguard";

/// What kind of listener a test needs; the default is the plain one Postfix talks to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listen {
    Plain,
    StartTls,
    Implicit,
}

/// The server a test runs. The default is the happy path: one plain listener, loopback in
/// mynetworks, no AUTH, default limits.
struct Setup {
    listeners: Vec<Listen>,
    /// TOML array for `access.mynetworks`; `None` keeps the default (loopback).
    mynetworks: Option<&'static str>,
    /// `(user, password)` pairs for the AUTH users file.
    users: Vec<(&'static str, &'static str)>,
    /// Extra lines for the `[smtpd]` section.
    smtpd: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            listeners: vec![Listen::Plain],
            mynetworks: None,
            users: Vec::new(),
            smtpd: "",
        }
    }
}

impl Setup {
    /// The default server with extra `[smtpd]` lines, e.g. `"recipient_limit = 2"`.
    fn with_smtpd(smtpd: &'static str) -> Setup {
        Setup {
            smtpd,
            ..Default::default()
        }
    }

    /// The default server with these listeners instead of the one plain one.
    fn with_listeners(listeners: &[Listen]) -> Setup {
        Setup {
            listeners: listeners.to_vec(),
            ..Default::default()
        }
    }

    /// One STARTTLS listener where only an authenticated client may relay: loopback is not in
    /// mynetworks, and `user` is the one AUTH user.
    fn auth_required(user: &'static str, password: &'static str) -> Setup {
        Setup {
            listeners: vec![Listen::StartTls],
            mynetworks: Some("[]"),
            users: vec![(user, password)],
            ..Default::default()
        }
    }
}

struct Relay {
    addrs: Vec<SocketAddr>,
    queue: Queue,
    tls: tokio_rustls::TlsConnector,
    shutdown: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Relay {
    async fn start(setup: Setup) -> Relay {
        mxguard::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = LabCa::new();
        let (cert, key) = ca
            .issue_with(&[HOST], ca::CertOptions::default())
            .write_pem(dir.path(), "relay");
        // Bound first, so the configuration names the real addresses.
        let mut sockets = Vec::new();
        let mut addrs = Vec::new();
        for index in 0..setup.listeners.len() {
            let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(socket.local_addr().unwrap());
            sockets.push((socket, index));
        }
        let mut toml = format!(
            "hostname = \"{HOST}\"\ndata_dir = \"{}\"\n",
            dir.path().display()
        );
        for (kind, addr) in setup.listeners.iter().zip(&addrs) {
            toml.push_str(&format!("[[listener]]\naddress = \"{addr}\"\n"));
            if *kind != Listen::Plain {
                toml.push_str(&format!(
                    "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                    cert.display(),
                    key.display()
                ));
            }
            if *kind == Listen::Implicit {
                toml.push_str("implicit_tls = true\n");
            }
        }
        toml.push_str("[access]\n");
        if let Some(nets) = setup.mynetworks {
            toml.push_str(&format!("mynetworks = {nets}\n"));
        }
        if !setup.users.is_empty() {
            let users = dir.path().join("users");
            let mut text = String::from("# lab users\n\n");
            for (user, password) in &setup.users {
                text.push_str(&format!("{user}:{}\n", hash_password(password)));
            }
            std::fs::write(&users, text).unwrap();
            toml.push_str(&format!("auth_users_file = \"{}\"\n", users.display()));
        }
        toml.push_str(&format!("[smtpd]\n{}\n", setup.smtpd));
        let config = Arc::new(Config::from_toml(&toml).unwrap());

        let queue = Queue::open(&config.spool_dir()).unwrap();
        let inbound = Arc::new(Inbound::new(config.clone(), queue.clone()).unwrap());
        let (shutdown, rx) = watch::channel(false);
        let serve = tokio::spawn(inbound.serve(sockets, rx));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().into()).unwrap();
        let client = mxguard::tls::client_config_verified(roots).unwrap();
        Relay {
            addrs,
            queue,
            tls: tokio_rustls::TlsConnector::from(client),
            shutdown,
            serve,
            _dir: dir,
        }
    }

    /// Connects to listener `index` and reads the greeting.
    async fn connect(&self, index: usize) -> Smtp<TcpStream> {
        let mut c = self.connect_raw(index).await;
        c.expect(GREETING).await;
        c
    }

    /// Connects to listener `index`, reads the greeting and says EHLO.
    async fn connect_and_ehlo(&self, index: usize) -> Smtp<TcpStream> {
        let mut c = self.connect(index).await;
        c.ehlo().await;
        c
    }

    async fn connect_raw(&self, index: usize) -> Smtp<TcpStream> {
        let stream = TcpStream::connect(self.addrs[index]).await.unwrap();
        Smtp::new(stream)
    }

    /// Connects to an implicit-TLS listener, handshakes, and reads the greeting.
    async fn connect_tls(&self, index: usize) -> Smtp<TlsStream<TcpStream>> {
        let stream = TcpStream::connect(self.addrs[index]).await.unwrap();
        let mut c = Smtp::new(self.handshake(stream).await);
        c.expect(GREETING).await;
        c
    }

    /// The client side of a TLS handshake on `stream`, verifying the relay's certificate.
    async fn handshake(&self, stream: TcpStream) -> TlsStream<TcpStream> {
        self.tls
            .connect(HOST.try_into().unwrap(), stream)
            .await
            .unwrap()
    }

    fn stored(&self) -> Vec<QueueId> {
        self.queue.spool().scan().unwrap()
    }

    fn load(&self, queued_reply: &str) -> (Envelope, String) {
        let id = queued_reply
            .rsplit(' ')
            .next()
            .and_then(QueueId::parse)
            .unwrap_or_else(|| panic!("no queue id in {queued_reply:?}"));
        let (envelope, message) = self.queue.spool().load(&id).unwrap();
        (envelope, String::from_utf8(message).unwrap())
    }
}

/// The client side of a test session.
struct Smtp<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    fn new(stream: S) -> Self {
        Smtp {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.stream
            .get_mut()
            .write_all(raw.as_bytes())
            .await
            .unwrap();
    }

    /// Reads one (possibly multi-line) reply; `""` when the server closed the connection.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(WAIT, self.stream.read_line(&mut line))
                .await
                .expect("no reply from the server");
            if read.unwrap_or(0) == 0 {
                return lines.join("\n");
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Reads a reply whose last line begins with `expected`.
    async fn expect(&mut self, expected: &str) -> String {
        let reply = self.reply().await;
        let last = reply.rsplit('\n').next().unwrap_or_default();
        assert!(
            last.starts_with(expected),
            "expected {expected:?}, got {reply:?}"
        );
        reply
    }

    async fn cmd(&mut self, line: &str, expected: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.expect(expected).await
    }

    async fn ehlo(&mut self) -> String {
        self.cmd("EHLO client.test", "250 ").await
    }

    async fn mail(&mut self, from: &str, expected: &str) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), expected).await
    }

    async fn rcpt(&mut self, to: &str, expected: &str) -> String {
        self.cmd(&format!("RCPT TO:<{to}>"), expected).await
    }

    /// MAIL from alice and RCPT to bob, both accepted: the transaction is ready for DATA.
    async fn alice_to_bob(&mut self) {
        self.mail("alice@client.test", "250").await;
        self.rcpt("bob@example.net", "250").await;
    }

    /// DATA, then `body` as given (already dot-stuffed, with its end line): the final reply.
    async fn data(&mut self, body: &str, expected: &str) -> String {
        self.cmd("DATA", "354 ").await;
        self.send(body).await;
        self.expect(expected).await
    }

    /// The server closed the connection.
    async fn closed(&mut self) {
        assert_eq!(self.reply().await, "", "connection should be closed");
    }
}

impl Smtp<TcpStream> {
    /// STARTTLS and the handshake; the session continues inside TLS.
    async fn starttls(mut self, relay: &Relay) -> Smtp<TlsStream<TcpStream>> {
        self.cmd("STARTTLS", "220 2.0.0").await;
        assert!(self.stream.buffer().is_empty());
        Smtp::new(relay.handshake(self.stream.into_inner()).await)
    }
}

const BODY: &str = "Subject: test\r\n\r\nhello\r\n.\r\n";

/// Sends one message through an open session: the queue reply.
async fn send_mail<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Smtp<S>) -> String {
    c.mail("alice@client.test", "250 2.1.0").await;
    c.rcpt("bob@example.net", "250 2.1.5").await;
    c.data(BODY, "250 2.0.0 Ok: queued as ").await
}

fn lines(reply: &str) -> Vec<&str> {
    reply.lines().map(|l| &l[4..]).collect()
}

#[tokio::test]
async fn message_is_queued_with_received_header_and_client_facts() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect_and_ehlo(0).await;
    let queued = send_mail(&mut c).await;
    c.cmd("QUIT", "221 2.0.0").await;
    let (envelope, message) = relay.load(&queued);
    let id = queued.rsplit(' ').next().unwrap();
    assert_eq!(envelope.mail_from, "alice@client.test");
    assert_eq!(envelope.recipients[0].address, "bob@example.net");
    assert_eq!(envelope.client.helo, "client.test");
    assert_eq!(envelope.client.addr, "127.0.0.1");
    assert_eq!(envelope.client.tls, None);
    assert_eq!(envelope.client.listener, relay.addrs[0].to_string());
    let expected_start = format!(
        "Received: from client.test ([127.0.0.1] [127.0.0.1])\r\n\
         \tby relay.test (mxguard) with ESMTP id {id}\r\n\
         \tfor <bob@example.net>; "
    );
    assert!(message.starts_with(&expected_start), "{message}");
    assert!(
        message.ends_with("+0000\r\nSubject: test\r\n\r\nhello\r\n"),
        "{message}"
    );
}

#[tokio::test]
async fn ehlo_keywords_depend_on_tls() {
    let relay = Relay::start(Setup {
        users: vec![("alice", "pw")],
        ..Setup::with_listeners(&[Listen::StartTls, Listen::Plain])
    })
    .await;
    let mut c = relay.connect(0).await;
    let before = c.ehlo().await;
    let before = lines(&before);
    assert_eq!(before[0], HOST);
    for keyword in [
        "PIPELINING",
        "SIZE 10240000",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
    ] {
        assert!(
            before.contains(&keyword),
            "{keyword} missing from {before:?}"
        );
    }
    // RFC 4954 §4 and RFC 8689 §4: AUTH and REQUIRETLS only inside TLS.
    assert!(!before.iter().any(|l| l.starts_with("AUTH")), "{before:?}");
    assert!(!before.contains(&"REQUIRETLS"), "{before:?}");

    let mut c = c.starttls(&relay).await;
    let after = c.ehlo().await;
    let after = lines(&after);
    assert!(!after.contains(&"STARTTLS"), "{after:?}");
    assert!(after.contains(&"AUTH PLAIN LOGIN"), "{after:?}");
    assert!(after.contains(&"REQUIRETLS"), "{after:?}");

    // A listener without a certificate offers no STARTTLS.
    let mut plain = relay.connect(1).await;
    let ehlo = plain.ehlo().await;
    assert!(!lines(&ehlo).contains(&"STARTTLS"), "{ehlo}");
    plain.cmd("STARTTLS", "502 5.5.1").await;
}

#[tokio::test]
async fn greeting_commands_and_replies() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect(0).await;
    c.cmd("HELO client.test", "250 relay.test").await;
    c.cmd("NOOP", "250 2.0.0").await;
    c.cmd("HELP", "214 2.0.0").await;
    c.cmd("VRFY bob", "252 2.0.0").await;
    c.cmd("RSET", "250 2.0.0").await;
    c.cmd("EXPN list", "502 5.5.1").await;
    // HELO, not EHLO: the protocol is plain SMTP (RFC 3848).
    let queued = send_mail(&mut c).await;
    assert!(relay.load(&queued).1.contains(" with SMTP id "));
    c.cmd("QUIT", "221 2.0.0").await;
    c.closed().await;
}

#[tokio::test]
async fn pipelined_transaction_in_one_write() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect(0).await;
    // RFC 2920: the whole group in one packet, every reply in order.
    c.send(
        "EHLO client.test\r\nMAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@example.net>\r\n\
         RCPT TO:<carol@example.org>\r\nDATA\r\n",
    )
    .await;
    c.expect("250 ").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("250 2.1.5").await;
    c.expect("354 ").await;
    c.send("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    let queued = c.expect("250 2.0.0 Ok: queued as").await;
    c.expect("221 2.0.0").await;
    let (envelope, message) = relay.load(&queued);
    assert_eq!(envelope.recipients.len(), 2);
    // Two recipients: the header names neither.
    assert!(!message.contains("\tfor <"), "{message}");
}

/// A client that does not wait for 354 (the message right after DATA, RFC 2920 §3.1 forbids
/// it) when its only RCPT is refused: DATA gets 554, the message's lines are read as commands,
/// each a 500, and the hard error limit ends the session. Nothing is stored, nothing hangs.
#[tokio::test]
async fn data_sent_without_waiting_after_a_refused_rcpt_stores_nothing() {
    let relay = Relay::start(Setup {
        mynetworks: Some("[\"192.0.2.0/24\"]"),
        smtpd: "hard_error_limit = 5",
        ..Default::default()
    })
    .await;
    let mut c = relay.connect_and_ehlo(0).await;
    c.send(
        "MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n\
         Subject: not for you\r\n\r\nline one\r\nline two\r\nline three\r\n.\r\n",
    )
    .await;
    c.expect("250 2.1.0").await;
    c.expect("554 5.7.1").await;
    c.expect("554 5.5.1").await;
    // The rest came as commands: errors until the limit closes the session.
    let mut last = String::new();
    for _ in 0..6 {
        last = c.reply().await;
        if last.starts_with("421") || last.is_empty() {
            break;
        }
        assert!(last.starts_with('5'), "{last}");
    }
    assert!(last.starts_with("421 4.7.0"), "{last}");
    c.closed().await;
    assert!(relay.stored().is_empty());
}

#[tokio::test]
async fn size_limit_on_parameter_and_on_data() {
    let relay = Relay::start(Setup::with_smtpd("message_size_limit = 1000")).await;
    let mut c = relay.connect(0).await;
    let ehlo = c.ehlo().await;
    assert!(lines(&ehlo).contains(&"SIZE 1000"), "{ehlo}");
    // RFC 1870 §6.2: a declared size over the limit is refused at MAIL.
    c.cmd("MAIL FROM:<alice@client.test> SIZE=1001", "552 5.3.4")
        .await;
    c.cmd("MAIL FROM:<alice@client.test> SIZE=1000", "250 2.1.0")
        .await;
    c.rcpt("bob@example.net", "250").await;
    // A client that lies about the size: read to the end, then 552; nothing stored.
    let big = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(5000));
    c.data(&big, "552 5.3.4").await;
    assert!(relay.stored().is_empty());
    // The session goes on.
    c.cmd("RSET", "250").await;
    send_mail(&mut c).await;
    assert_eq!(relay.stored().len(), 1);
}

#[tokio::test]
async fn recipient_limit() {
    let relay = Relay::start(Setup::with_smtpd("recipient_limit = 2")).await;
    let mut c = relay.connect_and_ehlo(0).await;
    c.mail("alice@client.test", "250").await;
    c.rcpt("a@example.net", "250").await;
    c.rcpt("b@example.net", "250").await;
    c.rcpt("c@example.net", "452 4.5.3").await;
    let queued = c.data(BODY, "250 2.0.0").await;
    assert_eq!(relay.load(&queued).0.recipients.len(), 2);
}

#[tokio::test]
async fn not_an_open_relay() {
    // Loopback is not in mynetworks, so we are just another client on the Internet.
    let relay = Relay::start(Setup {
        mynetworks: Some("[\"192.0.2.0/24\", \"2001:db8::/32\"]"),
        ..Default::default()
    })
    .await;
    let mut c = relay.connect_and_ehlo(0).await;
    c.mail("alice@client.test", "250").await;
    let r = c.rcpt("bob@example.net", "554 5.7.1").await;
    assert_eq!(r, "554 5.7.1 <bob@example.net>: Relay access denied");
    // RFC 2920 §3.1: no valid recipient, so DATA is refused rather than answered with 354.
    c.cmd("DATA", "554 5.5.1").await;
    assert!(relay.stored().is_empty());
}

#[tokio::test]
async fn auth_after_starttls_allows_relay() {
    let relay = Relay::start(Setup::auth_required("alice", "correct horse")).await;
    let mut c = relay.connect_and_ehlo(0).await.starttls(&relay).await;
    // RFC 3207 §4.2: after TLS the client must greet again.
    c.mail("alice@client.test", "503 5.5.1").await;
    c.ehlo().await;
    c.mail("alice@client.test", "250").await;
    c.rcpt("bob@example.net", "554 5.7.1").await;
    c.cmd("RSET", "250").await;
    // AUTH PLAIN with an initial response: "\0alice\0correct horse".
    c.cmd("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=", "235 2.7.0")
        .await;
    c.cmd("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=", "503 5.5.1")
        .await;
    let queued = send_mail(&mut c).await;
    let (envelope, message) = relay.load(&queued);
    assert_eq!(envelope.client.auth_user.as_deref(), Some("alice"));
    assert!(envelope
        .client
        .tls
        .as_deref()
        .is_some_and(|t| t.starts_with("TLSv1.3 ")));
    assert!(
        message.contains("\t(using TLSv1.3 with cipher "),
        "{message}"
    );
    assert!(message.contains(" with ESMTPSA id "), "{message}");
}

#[tokio::test]
async fn auth_login_and_wrong_password() {
    let relay = Relay::start(Setup::auth_required("alice", "pw")).await;
    let mut c = relay.connect_and_ehlo(0).await.starttls(&relay).await;
    c.ehlo().await;
    // "\0alice\0wrong"
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8").await;
    // Unknown user: the same answer.
    c.cmd("AUTH PLAIN AG1hbGxvcnkAcHc=", "535 5.7.8").await;
    c.cmd("AUTH CRAM-MD5", "504 5.5.4").await;
    // LOGIN, cancelled, then for real: "Username:" / "Password:" challenges.
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd("*", "501 5.7.0").await;
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd("YWxpY2U=", "334 UGFzc3dvcmQ6").await;
    c.cmd("cHc=", "235 2.7.0").await;
    c.alice_to_bob().await;
}

#[tokio::test]
async fn auth_refused_before_tls() {
    let relay = Relay::start(Setup::auth_required("alice", "pw")).await;
    let mut c = relay.connect_and_ehlo(0).await;
    // Correct credentials, but in plaintext: refused, and relaying stays closed.
    c.cmd("AUTH PLAIN AGFsaWNlAHB3", "503 5.5.1").await;
    c.mail("alice@client.test", "250").await;
    c.rcpt("bob@example.net", "554 5.7.1").await;
}

#[tokio::test]
async fn starttls_with_pipelined_commands_is_refused() {
    let relay = Relay::start(Setup::with_listeners(&[Listen::StartTls])).await;
    let mut c = relay.connect_and_ehlo(0).await;
    // CVE-2011-0411: plaintext commands sent behind STARTTLS must never run inside TLS.
    c.send("STARTTLS\r\nMAIL FROM:<mallory@client.test>\r\n")
        .await;
    c.expect("554 5.5.1").await;
    c.closed().await;
}

#[tokio::test]
async fn implicit_tls_listener_and_requiretls() {
    let relay = Relay::start(Setup::with_listeners(&[Listen::Implicit])).await;
    let mut c = relay.connect_tls(0).await;
    let ehlo = c.ehlo().await;
    assert!(!lines(&ehlo).contains(&"STARTTLS"), "{ehlo}");
    assert!(lines(&ehlo).contains(&"REQUIRETLS"), "{ehlo}");
    c.cmd("MAIL FROM:<alice@client.test> REQUIRETLS", "250")
        .await;
    c.rcpt("bob@example.net", "250").await;
    let queued = c.data(BODY, "250 2.0.0").await;
    let (envelope, message) = relay.load(&queued);
    assert!(envelope.requiretls);
    assert!(envelope.client.tls.is_some());
    assert!(message.contains(" with ESMTPS id "), "{message}");
}

#[tokio::test]
async fn requiretls_needs_tls() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect_and_ehlo(0).await;
    c.cmd("MAIL FROM:<alice@client.test> REQUIRETLS", "555 5.5.4")
        .await;
}

#[tokio::test]
async fn dsn_parameters_are_stored() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect_and_ehlo(0).await;
    c.cmd(
        "MAIL FROM:<alice@client.test> RET=HDRS ENVID=QQ+2B314",
        "250",
    )
    .await;
    c.cmd("RCPT TO:<bob@example.net> NOTIFY=BOGUS", "501 5.5.4")
        .await;
    c.cmd(
        "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+40example.net",
        "250",
    )
    .await;
    c.cmd("RCPT TO:<carol@example.net> NOTIFY=NEVER", "250")
        .await;
    let queued = c.data(BODY, "250 2.0.0").await;
    let (envelope, _) = relay.load(&queued);
    assert_eq!(envelope.ret, Some(Ret::Headers));
    assert_eq!(envelope.envid.as_deref(), Some("QQ+314"));
    let bob = &envelope.recipients[0];
    let notify = bob.notify.unwrap();
    assert!(notify.success && notify.failure && !notify.delay && !notify.never);
    assert_eq!(bob.orcpt, Some(("rfc822".into(), "Bob@example.net".into())));
    assert!(envelope.recipients[1].notify.unwrap().never);
    c.cmd("MAIL FROM:<alice@client.test> RET=SOME", "501 5.5.4")
        .await;
}

#[tokio::test]
async fn bad_sequences_get_503() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect(0).await;
    c.mail("alice@client.test", "503 5.5.1").await;
    c.ehlo().await;
    c.rcpt("bob@example.net", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.mail("alice@client.test", "250").await;
    c.mail("alice@client.test", "503 5.5.1").await;
}

#[tokio::test]
async fn unknown_garbage_and_long_lines_get_500() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect(0).await;
    c.cmd("FROBNICATE", "500 5.5.2").await;
    c.send("\u{0}\u{1}\u{7f}binary\r\n").await;
    c.expect("500 5.5.2").await;
    c.stream
        .get_mut()
        .write_all(b"\xff\xfe\xfd\r\n")
        .await
        .unwrap();
    c.expect("500 5.5.2").await;
    // RFC 5321 §4.5.3.1.4: lines are bounded; the session survives the long one.
    c.cmd(
        &format!("NOOP {}", "x".repeat(3000)),
        "500 5.5.2 Line too long",
    )
    .await;
    c.cmd("MAIL FROM:alice@client.test", "501 5.1.7").await;
    c.ehlo().await;
    c.cmd("MAIL FROM:alice@client.test", "501 5.1.7").await;
    c.cmd("NOOP", "250").await;
}

#[tokio::test]
async fn dot_unstuffing_and_bare_lf_normalization() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect(0).await;
    // Commands may end in a bare LF.
    c.send("EHLO client.test\n").await;
    c.expect("250 ").await;
    c.alice_to_bob().await;
    // A smuggling attempt: `<LF>.<CR><LF>` is not the end of the data, so the "second
    // message" stays inside the first; bare LFs become CRLF.
    let body = "Subject: a\r\n\r\n..stuffed\r\nbare\nlf\r\n\n.\r\nMAIL FROM:<mallory@client.test>\r\n.\r\n";
    let queued = c.data(body, "250 2.0.0").await;
    let (_, message) = relay.load(&queued);
    let content = message.split_once("Subject: a").unwrap().1;
    assert_eq!(
        content,
        "\r\n\r\n.stuffed\r\nbare\r\nlf\r\n\r\n.\r\nMAIL FROM:<mallory@client.test>\r\n"
    );
    assert_eq!(relay.stored().len(), 1);
}

#[tokio::test]
async fn disconnect_mid_data_stores_nothing() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect_and_ehlo(0).await;
    c.alice_to_bob().await;
    c.cmd("DATA", "354").await;
    c.send("Subject: cut\r\n\r\nhalf a message\r\n").await;
    drop(c);
    // The session needs a moment to see the close; a second session proves it ended.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d = relay.connect(0).await;
    d.cmd("QUIT", "221").await;
    assert!(relay.stored().is_empty());
}

#[tokio::test]
async fn idle_timeout_closes_with_421() {
    let relay = Relay::start(Setup::with_smtpd("timeout = 1")).await;
    let mut c = relay.connect_and_ehlo(0).await;
    let started = std::time::Instant::now();
    c.expect("421 4.4.2 relay.test Error: timeout exceeded")
        .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    c.closed().await;
}

/// A slowloris client trickling a command line (a byte every 300 ms, never a line end, so it
/// is an over-long line being skipped too) is cut off when the line's time is up, not kept
/// alive by each byte: the whole line must arrive within `smtpd.timeout`.
#[tokio::test]
async fn a_trickled_command_line_times_out_as_a_whole() {
    let relay = Relay::start(Setup::with_smtpd("timeout = 1")).await;
    let mut c = relay.connect_and_ehlo(0).await;
    let started = std::time::Instant::now();
    let mut answered = None;
    for _ in 0..30 {
        // Bytes written after the server gave up fail, which is the point: ignore the errors.
        let _ = c.stream.get_mut().write_all(b"M").await;
        if let Ok(reply) = tokio::time::timeout(Duration::from_millis(300), c.reply()).await {
            answered = Some((reply, started.elapsed()));
            break;
        }
    }
    let (reply, at) = answered.expect("the server never gave up on a trickled line (9 s)");
    assert_eq!(reply, "421 4.4.2 relay.test Error: timeout exceeded");
    assert!(
        at < Duration::from_millis(2500),
        "cut off only after {at:?}"
    );
    c.closed().await;
}

#[tokio::test]
async fn data_timeout_stores_nothing() {
    let relay = Relay::start(Setup::with_smtpd("data_timeout = 1")).await;
    let mut c = relay.connect_and_ehlo(0).await;
    c.alice_to_bob().await;
    c.cmd("DATA", "354").await;
    // A trickle of data that never ends: each piece arrives well within `timeout`, but the
    // whole DATA runs past `data_timeout`.
    for _ in 0..4 {
        c.send("x\r\n").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    c.expect("421 4.4.2").await;
    assert!(relay.stored().is_empty());
}

#[tokio::test]
async fn max_connections_over_all_listeners() {
    let relay = Relay::start(Setup {
        smtpd: "max_connections = 1",
        ..Setup::with_listeners(&[Listen::Plain, Listen::Plain])
    })
    .await;
    let mut first = relay.connect(0).await;
    let mut second = relay.connect_raw(1).await;
    second
        .expect("421 4.3.2 relay.test Error: too many connections, try again later")
        .await;
    second.closed().await;
    first.cmd("QUIT", "221").await;
    first.closed().await;
    // The slot is free again once the first session has ended.
    let mut third = relay.connect_raw(1).await;
    for _ in 0..50 {
        if third.reply().await.starts_with("220 ") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        third = relay.connect_raw(1).await;
    }
    panic!("the connection slot was never released");
}

#[tokio::test]
async fn hard_error_limit_closes_session() {
    let relay = Relay::start(Setup::with_smtpd("hard_error_limit = 3")).await;
    let mut c = relay.connect(0).await;
    c.cmd("BOGUS1", "500").await;
    c.cmd("BOGUS2", "500").await;
    c.cmd("BOGUS3", "500").await;
    c.expect("421 4.7.0 relay.test Error: too many errors")
        .await;
    c.closed().await;
}

#[tokio::test]
async fn smtputf8_addresses_need_the_parameter() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect_and_ehlo(0).await;
    c.mail("jöran@client.test", "553 5.6.7").await;
    c.cmd(
        "MAIL FROM:<jöran@client.test> SMTPUTF8 BODY=8BITMIME",
        "250",
    )
    .await;
    c.rcpt("bücher@example.net", "250").await;
    let queued = c.data(BODY, "250 2.0.0").await;
    let (envelope, message) = relay.load(&queued);
    assert!(envelope.smtputf8);
    assert!(message.contains(" with UTF8SMTP id "), "{message}");
    assert!(message.contains("for <bücher@example.net>"), "{message}");
}

#[tokio::test]
async fn each_listener_is_named_in_the_envelope() {
    let relay = Relay::start(Setup::with_listeners(&[Listen::Plain, Listen::Plain])).await;
    for index in 0..2 {
        let mut c = relay.connect_and_ehlo(index).await;
        let queued = send_mail(&mut c).await;
        let listener = relay.load(&queued).0.client.listener;
        assert_eq!(listener, relay.addrs[index].to_string());
    }
    assert_eq!(relay.stored().len(), 2);
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_and_serve_returns() {
    let relay = Relay::start(Setup::default()).await;
    let mut c = relay.connect_and_ehlo(0).await;
    relay.shutdown.send(true).unwrap();
    c.expect("421 4.3.2").await;
    c.closed().await;
    tokio::time::timeout(WAIT, relay.serve)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bad_users_file_is_named_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "# ok\nalice:$argon2id$nonsense\n").unwrap();
    let toml = format!("[access]\nauth_users_file = \"{}\"\n", users.display());
    let config = Arc::new(Config::from_toml(&toml).unwrap());
    let queue = Queue::open(&dir.path().join("spool")).unwrap();
    let Err(e) = Inbound::new(config, queue) else {
        panic!("a bad users file must stop start-up");
    };
    let e = e.to_string();
    assert!(e.contains("users:2"), "{e}");
}
