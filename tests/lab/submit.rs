//! Handing mail to the relay, as Postfix would: a small SMTP client (RFC 5321) that sends one
//! transaction step by step and keeps every reply, so a test can assert on each of them
//! (`250 2.0.0 Ok: queued as ID`), and a helper that writes a simple RFC 5322 message.
//! A submission may first say STARTTLS (RFC 3207) and verify the relay's certificate, as a
//! client must before it may ask for REQUIRETLS (RFC 8689 §4).

use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long any one reply may take before the helper gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// One SMTP transaction to send.
#[derive(Clone, Debug)]
pub struct Submission {
    pub ehlo: String,
    /// Reverse-path without brackets; empty for the null sender.
    pub mail_from: String,
    /// ESMTP parameters of MAIL, e.g. `RET=HDRS`, `ENVID=abc`, `BODY=8BITMIME`.
    pub mail_params: Vec<String>,
    /// Recipients with their RCPT parameters (`NOTIFY=…`, `ORCPT=rfc822;…`).
    pub rcpts: Vec<(String, Vec<String>)>,
    /// The message content, CRLF line endings; dot-stuffed by the client when sent.
    pub data: Vec<u8>,
    /// Say STARTTLS after the first EHLO (and EHLO again inside TLS); `None`: plaintext.
    pub tls: Option<ClientTls>,
}

/// How a submission starts TLS with the relay: the roots it trusts and the name it verifies.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the relay's certificate must be valid for (also sent as SNI).
    pub server_name: String,
}

impl ClientTls {
    /// Trusts only `ca_der` (e.g. the lab CA's certificate) and expects `server_name`.
    pub fn trusting(ca_der: &[u8], server_name: &str) -> ClientTls {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der.to_vec()))
            .expect("a CA certificate for the client's roots");
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(policy_cache::crypto::provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        ClientTls {
            config: Arc::new(config),
            server_name: server_name.to_string(),
        }
    }
}

impl Submission {
    pub fn new(mail_from: &str, data: impl Into<Vec<u8>>) -> Submission {
        Submission {
            ehlo: "postfix.lab.test".into(),
            mail_from: mail_from.into(),
            mail_params: Vec::new(),
            rcpts: Vec::new(),
            data: data.into(),
            tls: None,
        }
    }

    /// Starts TLS before MAIL (see [`ClientTls`]).
    pub fn starttls(mut self, tls: ClientTls) -> Submission {
        self.tls = Some(tls);
        self
    }

    pub fn rcpt(mut self, address: &str) -> Submission {
        self.rcpts.push((address.into(), Vec::new()));
        self
    }

    pub fn rcpt_with(mut self, address: &str, params: &[&str]) -> Submission {
        self.rcpts.push((
            address.into(),
            params.iter().map(|p| p.to_string()).collect(),
        ));
        self
    }

    /// Adds a MAIL parameter such as `RET=FULL`.
    pub fn param(mut self, param: &str) -> Submission {
        self.mail_params.push(param.into());
        self
    }
}

/// What the relay answered, command by command.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    pub greeting: String,
    /// `(command sent, reply received)`; a multi-line reply's lines are joined with `\n`.
    pub replies: Vec<(String, String)>,
}

impl Transcript {
    /// The reply to the first command starting with `prefix` (e.g. `"RCPT TO:<bob"`).
    pub fn reply_to(&self, prefix: &str) -> Option<&str> {
        self.replies
            .iter()
            .find(|(c, _)| c.starts_with(prefix))
            .map(|(_, r)| r.as_str())
    }

    /// The reply after the end of data, if data was sent.
    pub fn data_reply(&self) -> Option<&str> {
        self.reply_to(".")
    }

    /// The queue id from `250 2.0.0 Ok: queued as ID`.
    pub fn queue_id(&self) -> Option<String> {
        let r = self.data_reply()?;
        r.starts_with("250")
            .then(|| r.split_whitespace().last().map(str::to_string))
            .flatten()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    stream: BufReader<Box<dyn Io>>,
}

impl Client {
    async fn read_reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_line(&mut line))
                .await
                .expect("relay reply within the timeout")
                .expect("read from relay");
            assert!(n > 0, "relay closed the connection; got so far: {lines:?}");
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let s = self.stream.get_mut();
        s.write_all(bytes).await.expect("write to relay");
        s.flush().await.expect("flush to relay");
    }

    /// The client side of the TLS handshake after `220` to STARTTLS, verifying the relay.
    async fn handshake(self, tls: &ClientTls) -> Client {
        assert!(
            self.stream.buffer().is_empty(),
            "the relay sent data after its 220 to STARTTLS"
        );
        let name = ServerName::try_from(tls.server_name.clone()).expect("a valid server name");
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream = tokio::time::timeout(
            REPLY_TIMEOUT,
            connector.connect(name, self.stream.into_inner()),
        )
        .await
        .expect("TLS handshake with the relay within the timeout")
        .expect("TLS handshake with the relay");
        Client {
            stream: BufReader::new(Box::new(stream) as Box<dyn Io>),
        }
    }

    async fn command(&mut self, t: &mut Transcript, line: String) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        let reply = self.read_reply().await;
        t.replies.push((line, reply.clone()));
        reply
    }
}

/// Sends one transaction to `addr` and returns every reply. Stops early (with QUIT) when the
/// relay refuses MAIL, every RCPT or DATA.
pub async fn submit(addr: SocketAddr, s: &Submission) -> Transcript {
    let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect to relay within the timeout")
        .expect("connect to relay");
    let mut c = Client {
        stream: BufReader::new(Box::new(stream) as Box<dyn Io>),
    };
    let mut t = Transcript {
        greeting: c.read_reply().await,
        ..Default::default()
    };
    c.command(&mut t, format!("EHLO {}", s.ehlo)).await;
    if let Some(tls) = &s.tls {
        let reply = c.command(&mut t, "STARTTLS".into()).await;
        assert!(
            reply.starts_with("220"),
            "the relay refused STARTTLS: {t:#?}"
        );
        c = c.handshake(tls).await;
        // RFC 3207 §4.2: the session starts over inside TLS.
        c.command(&mut t, format!("EHLO {}", s.ehlo)).await;
    }
    let mut mail = format!("MAIL FROM:<{}>", s.mail_from);
    for p in &s.mail_params {
        mail.push(' ');
        mail.push_str(p);
    }
    let ok = c.command(&mut t, mail).await.starts_with('2');
    let mut accepted = 0;
    if ok {
        for (to, params) in &s.rcpts {
            let mut rcpt = format!("RCPT TO:<{to}>");
            for p in params {
                rcpt.push(' ');
                rcpt.push_str(p);
            }
            if c.command(&mut t, rcpt).await.starts_with('2') {
                accepted += 1;
            }
        }
    }
    if ok && accepted > 0 && c.command(&mut t, "DATA".into()).await.starts_with('3') {
        c.send(&dot_stuff(&s.data)).await;
        let reply = c.read_reply().await;
        t.replies.push((".".into(), reply));
    }
    c.command(&mut t, "QUIT".into()).await;
    t
}

/// Submits and asserts the message was queued; returns the queue id.
pub async fn submit_ok(addr: SocketAddr, s: &Submission) -> String {
    let t = submit(addr, s).await;
    match t.queue_id() {
        Some(id) => id,
        None => panic!("the relay did not queue the message: {t:#?}"),
    }
}

/// RFC 5321 §4.5.2: doubles a leading dot on every line and appends the end-of-data mark.
/// Content not ending in CRLF gets one, as every client must add.
///
/// Written independently of `mxguard::delivery`'s dot-stuffing on purpose: a lab that used the
/// code under test to build its input could not catch a bug in it.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

static MESSAGE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A simple RFC 5322 message with CRLF line endings; `body` may use `\n`.
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    let n = MESSAGE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let id = format!("<{}.{n}@lab.test>", std::process::id());
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: {id}\r\n\r\n"
    );
    for line in body.lines() {
        m.push_str(line);
        m.push_str("\r\n");
    }
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffs_leading_dots() {
        assert_eq!(
            dot_stuff(b".a\r\nb\r\n..c\r\n"),
            b"..a\r\nb\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
    }
}
