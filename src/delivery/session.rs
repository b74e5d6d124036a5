//! Opening an SMTP session with one MX address (RFC 5321 §3.1, §4.1.1.1; RFC 3207 STARTTLS):
//! TCP connect, the greeting, EHLO (HELO for old servers), and opportunistic STARTTLS followed
//! by a second EHLO (RFC 3207 §4.2: the client must discard what it knew before TLS).
//!
//! Failures here concern the host, not the message: the caller moves on to the next address or
//! the next MX host, as Postfix does.

use super::attempt::{Failure, Rank, Relay, TlsInfo, TlsState};
use crate::reply::{EnhancedCode, Reply};
use mail_send::SmtpClient;
use smtp_proto::{EhloResponse, Response, EXT_START_TLS};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// QUIT after a failure should not hold the next attempt up for a whole command timeout.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What opening a session needs, borrowed from the deliverer.
pub(crate) struct SessionContext<'a> {
    /// Our EHLO name.
    pub hostname: &'a str,
    pub connect_timeout: Duration,
    /// Per command reply (greeting, EHLO, STARTTLS, MAIL, RCPT, DATA).
    pub command_timeout: Duration,
    /// For opportunistic STARTTLS.
    pub tls: &'a TlsConnector,
}

/// An SMTP session after EHLO, in plaintext or TLS.
pub(crate) enum Connection {
    Plain(SmtpClient<TcpStream>),
    /// Boxed: a TLS session's state is large (buffers, keys).
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
}

/// What the server advertised in its (last) EHLO reply.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extensions {
    /// mail-send's bitmask of known extensions (`smtp_proto::EXT_*`); 0 after HELO.
    pub mask: u32,
    /// RFC 1870 SIZE limit; 0 when none was given.
    pub size: usize,
}

impl Extensions {
    pub fn has(&self, ext: u32) -> bool {
        self.mask & ext != 0
    }

    fn from_ehlo(ehlo: &EhloResponse<String>) -> Extensions {
        Extensions {
            mask: ehlo.capabilities,
            size: ehlo.size,
        }
    }
}

/// An open session, ready for MAIL FROM.
pub(crate) struct Session {
    pub relay: Relay,
    pub connection: Connection,
    pub extensions: Extensions,
    pub tls: TlsInfo,
}

/// What to try after a failed session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The next address (this one did not answer).
    Address,
    /// The next MX host (this one answered, but does not want to talk now).
    Host,
    /// The same address again, in plaintext: the TLS handshake failed (Postfix level `may`).
    Plaintext,
}

#[derive(Debug)]
pub(crate) struct SessionError {
    pub failure: Failure,
    pub next: Next,
}

impl SessionError {
    fn new(failure: Failure, next: Next) -> Self {
        SessionError { failure, next }
    }
}

/// Opens a session with `relay`; with `try_tls`, uses STARTTLS when the server offers it.
pub(crate) async fn open(
    ctx: &SessionContext<'_>,
    relay: &Relay,
    try_tls: bool,
) -> Result<Session, SessionError> {
    let stream = connect(relay, ctx.connect_timeout)
        .await
        .map_err(|f| SessionError::new(f, Next::Address))?;
    let mut client = SmtpClient {
        stream,
        timeout: ctx.command_timeout,
    };
    greet(&mut client, relay, ctx.command_timeout).await?;
    let extensions = hello(&mut client, ctx.hostname, relay).await?;
    if !(try_tls && extensions.has(EXT_START_TLS)) {
        return Ok(plain(relay, client, extensions));
    }
    match client.cmd(b"STARTTLS\r\n").await {
        Ok(r) if r.code == 220 => {}
        Ok(r) => {
            // Opportunistic TLS (RFC 7435): a refused STARTTLS means plaintext, like no STARTTLS.
            tracing::info!(
                "{}: STARTTLS refused ({}), continuing in plaintext",
                relay,
                remote_reply(&r)
            );
            return Ok(plain(relay, client, extensions));
        }
        Err(e) => {
            return Err(SessionError::new(
                lost(relay, &e, "sending STARTTLS"),
                Next::Address,
            ))
        }
    }
    let client = start_tls(client, ctx.tls, relay).await?;
    tls_session(client, ctx.hostname, relay).await
}

fn plain(relay: &Relay, client: SmtpClient<TcpStream>, extensions: Extensions) -> Session {
    Session {
        relay: relay.clone(),
        connection: Connection::Plain(client),
        extensions,
        tls: TlsInfo::default(),
    }
}

/// The handshake after `220 Ready to start TLS`; SNI is the MX host name.
async fn start_tls(
    client: SmtpClient<TcpStream>,
    connector: &TlsConnector,
    relay: &Relay,
) -> Result<SmtpClient<TlsStream<TcpStream>>, SessionError> {
    client.into_tls(connector, &relay.host).await.map_err(|e| {
        tracing::info!(
            "{}: TLS handshake failed ({e}), retrying in plaintext",
            relay
        );
        let failure = Failure::new(
            Reply::new(
                451,
                EnhancedCode::new(4, 7, 5),
                format!(
                    "Cannot start TLS: handshake failure with {}: {e}",
                    relay.host_ip()
                ),
            ),
            Some(relay.clone()),
            Rank::Tls,
        );
        SessionError::new(failure, Next::Plaintext)
    })
}

/// RFC 3207 §4.2: after TLS, EHLO again and forget the plaintext extensions.
async fn tls_session(
    mut client: SmtpClient<TlsStream<TcpStream>>,
    hostname: &str,
    relay: &Relay,
) -> Result<Session, SessionError> {
    let (version, cipher) = crate::tls::describe(client.tls_connection()).unzip();
    let extensions = hello(&mut client, hostname, relay).await?;
    Ok(Session {
        relay: relay.clone(),
        connection: Connection::Tls(Box::new(client)),
        extensions,
        tls: TlsInfo {
            state: TlsState::Unverified,
            version,
            cipher,
        },
    })
}

/// TCP connect within the connect timeout, Postfix's wording on failure (4.4.1).
async fn connect(relay: &Relay, timeout: Duration) -> Result<TcpStream, Failure> {
    let why = match tokio::time::timeout(timeout, TcpStream::connect(relay.addr)).await {
        Ok(Ok(stream)) => return Ok(stream),
        Ok(Err(e)) => io_reason(&e),
        Err(_) => "Connection timed out".to_string(),
    };
    Err(Failure::new(
        Reply::new(
            451,
            EnhancedCode::new(4, 4, 1),
            format!("connect to {relay}: {why}"),
        ),
        None,
        Rank::Connect,
    ))
}

/// The C library's words for the common connect errors, as Postfix logs them.
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "Connection refused".into(),
        io::ErrorKind::TimedOut => "Connection timed out".into(),
        io::ErrorKind::HostUnreachable => "No route to host".into(),
        io::ErrorKind::NetworkUnreachable => "Network is unreachable".into(),
        io::ErrorKind::ConnectionReset => "Connection reset by peer".into(),
        _ => e.to_string(),
    }
}

/// RFC 5321 §3.1: the server speaks first. A 4xx/5xx greeting means "not now / not you":
/// QUIT and try the next host (RFC 5321 §3.8 allows a 554 greeting).
async fn greet(
    client: &mut SmtpClient<TcpStream>,
    relay: &Relay,
    timeout: Duration,
) -> Result<(), SessionError> {
    // mail-send's read() has no timeout of its own.
    let greeting = match tokio::time::timeout(timeout, client.read()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let f = lost(relay, &e, "receiving the initial server greeting");
            return Err(SessionError::new(f, Next::Address));
        }
        Err(_) => {
            let f = lost(
                relay,
                &mail_send::Error::Timeout,
                "receiving the initial server greeting",
            );
            return Err(SessionError::new(f, Next::Address));
        }
    };
    if greeting.code / 100 == 2 {
        return Ok(());
    }
    quit(client).await;
    Err(SessionError::new(
        refused_to_talk(relay, &greeting),
        Next::Host,
    ))
}

/// EHLO, and HELO when EHLO gets a 5xx (RFC 5321 §3.2: "older SMTP systems").
async fn hello<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    hostname: &str,
    relay: &Relay,
) -> Result<Extensions, SessionError> {
    let rejected = match client.ehlo(hostname).await {
        Ok(ehlo) => return Ok(Extensions::from_ehlo(&ehlo)),
        Err(mail_send::Error::UnexpectedReply(r)) if r.code / 100 == 5 => r,
        Err(mail_send::Error::UnexpectedReply(r)) => {
            quit(client).await;
            return Err(SessionError::new(refused_to_talk(relay, &r), Next::Host));
        }
        Err(e) => {
            let f = lost(relay, &e, "performing the EHLO handshake");
            return Err(SessionError::new(f, Next::Address));
        }
    };
    tracing::debug!(
        "{relay}: EHLO rejected ({}), trying HELO",
        remote_reply(&rejected)
    );
    match client.cmd(format!("HELO {hostname}\r\n")).await {
        Ok(r) if r.code / 100 == 2 => Ok(Extensions::default()),
        Ok(r) => {
            quit(client).await;
            Err(SessionError::new(refused_to_talk(relay, &r), Next::Host))
        }
        Err(e) => {
            let f = lost(relay, &e, "performing the HELO handshake");
            Err(SessionError::new(f, Next::Address))
        }
    }
}

/// The server's own reply, for a host that will not talk to us; the log shows which host.
fn refused_to_talk(relay: &Relay, r: &Response<String>) -> Failure {
    let reply = remote_reply(r);
    tracing::info!("host {} refused to talk to me: {reply}", relay.host_ip());
    Failure::new(reply, Some(relay.clone()), Rank::Reply)
}

/// Sends QUIT and ignores the answer: the session is over either way (RFC 5321 §4.1.1.10).
pub(crate) async fn quit<T: AsyncRead + AsyncWrite + Unpin>(client: &mut SmtpClient<T>) {
    let _ = tokio::time::timeout(QUIT_TIMEOUT, client.cmd(b"QUIT\r\n")).await;
}

/// A reply as the server sent it, enhanced code kept (RFC 3463), for logs and DSNs.
pub(crate) fn remote_reply(r: &Response<String>) -> Reply {
    let [class, subject, detail] = r.esc;
    if matches!(class, 2 | 4 | 5) {
        Reply::new(
            r.code,
            EnhancedCode::new(class, subject.into(), detail.into()),
            r.message.trim_end(),
        )
    } else {
        Reply::from_remote(r.code, r.message.trim_end())
    }
}

/// A session that broke (connection lost, timeout, garbage) in the middle of `stage`:
/// transient 4.4.2, Postfix's wording.
pub(crate) fn lost(relay: &Relay, e: &mail_send::Error, stage: &str) -> Failure {
    let text = match e {
        mail_send::Error::Timeout => {
            format!(
                "conversation with {} timed out while {stage}",
                relay.host_ip()
            )
        }
        mail_send::Error::UnexpectedReply(r) => {
            // Only reached for replies of unexpected shape; keep what the server said.
            format!(
                "unexpected reply from {} while {stage}: {}",
                relay.host_ip(),
                remote_reply(r)
            )
        }
        _ => format!("lost connection with {} while {stage}", relay.host_ip()),
    };
    tracing::debug!("{relay}: {e}");
    Failure::new(
        Reply::new(451, EnhancedCode::new(4, 4, 2), text),
        Some(relay.clone()),
        Rank::Connect,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_reply_keeps_enhanced_code() {
        let r = Response {
            code: 550,
            esc: [5, 1, 1],
            message: "user unknown\n".to_string(),
        };
        assert_eq!(remote_reply(&r).to_string(), "550 5.1.1 user unknown");
        let r = Response {
            code: 220,
            esc: [0, 0, 0],
            message: "mx.test ESMTP".to_string(),
        };
        assert_eq!(remote_reply(&r), Reply::plain(220, "mx.test ESMTP"));
    }
}
