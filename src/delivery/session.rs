//! Opening an SMTP session with one MX address (RFC 5321 §3.1, §4.1.1.1; RFC 3207 STARTTLS):
//! TCP connect, the greeting, EHLO (HELO for old servers), and STARTTLS — opportunistic, or
//! required by a policy — followed by a second EHLO (RFC 3207 §4.2: the client must discard
//! what it knew before TLS).
//!
//! Failures here concern the host, not the message: the caller moves on to the next address or
//! the next MX host, as Postfix does.

use super::attempt::{Failure, Rank, Relay, TlsInfo, TlsState};
use super::tls::CheckedHandshake;
use super::tls_failure::TlsFailure;
use super::tlsrpt::PeerFacts;
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
    /// The host is the first (most preferred) one tried: a mail loop found there is
    /// permanent, elsewhere temporary (see [`loops_back`]).
    pub best_mx: bool,
    /// The destination being delivered to (the recipient domain), for the loop message.
    pub next_hop: &'a str,
}

/// How a session uses STARTTLS.
#[derive(Clone, Copy)]
pub(crate) enum StartTls<'a> {
    /// Plaintext: the retry after a failed opportunistic handshake.
    Skip,
    /// RFC 7435: STARTTLS with this connector when offered; plaintext when not offered or
    /// refused.
    Opportunistic(&'a TlsConnector),
    /// STARTTLS must be offered and the handshake, certificate check included, must succeed:
    /// never plaintext (RFC 8461 §5 enforce mode, RFC 7672 §2.2 DANE). The session's TLS
    /// counts as verified when the check authenticates. `sni` replaces the MX host name as
    /// the server name (DANE's TLSA base domain after a CNAME, RFC 7672 §8.1).
    Required {
        checked: &'a CheckedHandshake,
        sni: Option<&'a str>,
    },
}

/// What became of STARTTLS in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartTlsSeen {
    /// Not asked for ([`StartTls::Skip`]).
    NotTried,
    /// The server did not list STARTTLS in its EHLO reply.
    NotOffered,
    /// The server answered STARTTLS with this reply.
    Refused(Reply),
    /// The session runs over TLS.
    Started,
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
    pub starttls: StartTlsSeen,
    /// Our address and the server's EHLO name (TLS-RPT failure details).
    pub peer: PeerFacts,
    /// Counts the session in `mxguard_smtp_sessions` while it lives (pooled too); never
    /// read, only dropped with the session.
    #[allow(dead_code)]
    pub open: crate::metrics::OpenSession,
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
    /// What the session had learnt when it failed (nothing before the TCP connection).
    pub peer: PeerFacts,
    /// A TLS failure's precise reason, for TLS-RPT's `failure-reason-code`.
    pub reason_code: Option<String>,
}

impl SessionError {
    fn new(failure: Failure, next: Next) -> Self {
        SessionError {
            failure,
            next,
            peer: PeerFacts::default(),
            reason_code: None,
        }
    }

    /// A session that failed the TLS requirement at `relay`.
    fn tls(failure: TlsFailure, relay: &Relay) -> Self {
        let reason_code = failure.reason_code();
        SessionError {
            reason_code,
            ..SessionError::new(failure.into_failure(Some(relay.clone())), Next::Address)
        }
    }
}

/// Opens a session with `relay`, using STARTTLS as `starttls` says.
pub(crate) async fn open(
    ctx: &SessionContext<'_>,
    relay: &Relay,
    starttls: StartTls<'_>,
) -> Result<Session, SessionError> {
    let stream = connect(relay, ctx.connect_timeout)
        .await
        .map_err(|f| SessionError::new(f, Next::Address))?;
    let mut peer = PeerFacts {
        local_ip: stream.local_addr().ok().map(|a| a.ip()),
        helo: None,
    };
    match negotiate(ctx, relay, starttls, stream, &mut peer).await {
        Ok(mut session) => {
            session.peer = peer;
            Ok(session)
        }
        Err(mut e) => {
            e.peer = peer;
            Err(e)
        }
    }
}

/// The session after the TCP connection: greeting, EHLO, STARTTLS as `starttls` says.
async fn negotiate(
    ctx: &SessionContext<'_>,
    relay: &Relay,
    starttls: StartTls<'_>,
    stream: TcpStream,
    peer: &mut PeerFacts,
) -> Result<Session, SessionError> {
    let mut client = SmtpClient {
        stream,
        timeout: ctx.command_timeout,
    };
    greet(&mut client, relay, ctx.command_timeout).await?;
    let (extensions, helo) = hello(&mut client, ctx, relay).await?;
    peer.helo = helo;
    let (connector, required) = match starttls {
        StartTls::Skip => return Ok(plain(relay, client, extensions, StartTlsSeen::NotTried)),
        StartTls::Opportunistic(connector) => (connector, None),
        StartTls::Required { checked, sni } => (&checked.connector, Some((checked, sni))),
    };
    if let Err(seen) = ask_starttls(&mut client, relay, extensions).await? {
        if required.is_none() {
            return Ok(plain(relay, client, extensions, seen));
        }
        return Err(tls_not_started(&mut client, relay, seen).await);
    }
    let client = match required {
        Some((checked, sni)) => start_verified_tls(client, checked, relay, sni).await?,
        None => start_tls(client, connector, relay).await?,
    };
    let verified = required.is_some_and(|(checked, _)| checked.authenticates);
    tls_session(client, ctx, relay, verified).await
}

/// RFC 8461 §5: under a policy that requires TLS, a server that does not start it gets no
/// mail from us, and certainly no plaintext.
async fn tls_not_started(
    client: &mut SmtpClient<TcpStream>,
    relay: &Relay,
    seen: StartTlsSeen,
) -> SessionError {
    quit(client).await;
    let failure = match seen {
        StartTlsSeen::Refused(r) => TlsFailure::Refused(r),
        _ => TlsFailure::NotOffered,
    };
    tracing::info!("{relay}: {}", failure.detail());
    SessionError::tls(failure, relay)
}

/// Sends STARTTLS when offered. `Ok(Ok(()))`: go ahead with the handshake; `Ok(Err(seen))`:
/// no TLS in this session (not offered, or refused with the reply in `seen`).
async fn ask_starttls(
    client: &mut SmtpClient<TcpStream>,
    relay: &Relay,
    extensions: Extensions,
) -> Result<Result<(), StartTlsSeen>, SessionError> {
    if !extensions.has(EXT_START_TLS) {
        return Ok(Err(StartTlsSeen::NotOffered));
    }
    match client.cmd(b"STARTTLS\r\n").await {
        Ok(r) if r.code == 220 => Ok(Ok(())),
        Ok(r) => {
            let reply = remote_reply(&r);
            // Opportunistic TLS (RFC 7435): a refused STARTTLS means plaintext, like no
            // STARTTLS; under a policy, the caller turns it into a failure.
            tracing::info!("{relay}: STARTTLS refused ({reply})");
            Ok(Err(StartTlsSeen::Refused(reply)))
        }
        Err(e) => Err(SessionError::new(
            lost(relay, &e, "sending STARTTLS"),
            Next::Address,
        )),
    }
}

fn plain(
    relay: &Relay,
    client: SmtpClient<TcpStream>,
    extensions: Extensions,
    starttls: StartTlsSeen,
) -> Session {
    Session {
        relay: relay.clone(),
        connection: Connection::Plain(client),
        extensions,
        tls: TlsInfo::default(),
        starttls,
        peer: PeerFacts::default(),
        open: crate::metrics::OpenSession::new(crate::metrics::Direction::Outbound),
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
        SessionError::new(
            opportunistic_handshake_failure(relay, &e.to_string()),
            Next::Plaintext,
        )
    })
}

/// A failed handshake where TLS was not required (Postfix's level `may`). It says nothing about
/// what the destination demands, so it is 4.7.0, never the 4.7.5 that the default status filter
/// hardens into a bounce, and it ranks below a connection failure: when the plaintext retry
/// fails too, that retry's outcome is what the recipient sees.
fn opportunistic_handshake_failure(relay: &Relay, error: &str) -> Failure {
    Failure::new(
        Reply::new(
            451,
            EnhancedCode::new(4, 7, 0),
            format!(
                "Cannot start TLS: handshake failure with {}: {error}",
                relay.host_ip()
            ),
        ),
        Some(relay.clone()),
        Rank::OpportunisticTls,
    )
}

/// The handshake under a policy: a refused certificate or any other handshake failure ends
/// this address's session, with no plaintext retry (RFC 8461 §5: no fallback under enforce).
async fn start_verified_tls(
    client: SmtpClient<TcpStream>,
    checked: &CheckedHandshake,
    relay: &Relay,
    sni: Option<&str>,
) -> Result<SmtpClient<TlsStream<TcpStream>>, SessionError> {
    client
        .into_tls(&checked.connector, sni.unwrap_or(&relay.host))
        .await
        .map_err(|e| {
            let failure = match checked.verdict() {
                Some(Err(cert)) => TlsFailure::Certificate(cert),
                _ => TlsFailure::Handshake(e.to_string()),
            };
            tracing::info!("{relay}: {}", failure.detail());
            SessionError::tls(failure, relay)
        })
}

/// RFC 3207 §4.2: after TLS, EHLO again and forget the plaintext extensions. `verified`: the
/// server was authenticated (PKIX or DANE) under a policy that requires it.
async fn tls_session(
    mut client: SmtpClient<TlsStream<TcpStream>>,
    ctx: &SessionContext<'_>,
    relay: &Relay,
    verified: bool,
) -> Result<Session, SessionError> {
    let (version, cipher) = crate::tls::describe(client.tls_connection()).unzip();
    let kx = crate::tls::key_exchange(client.tls_connection());
    let peer_cert_sha256 = crate::tls::peer_certificate_sha256(client.tls_connection());
    let (extensions, _) = hello(&mut client, ctx, relay).await?;
    Ok(Session {
        relay: relay.clone(),
        connection: Connection::Tls(Box::new(client)),
        extensions,
        tls: TlsInfo {
            state: if verified {
                TlsState::Verified
            } else {
                TlsState::Unverified
            },
            version,
            cipher,
            kx,
            peer_cert_sha256,
        },
        starttls: StartTlsSeen::Started,
        peer: PeerFacts::default(),
        open: crate::metrics::OpenSession::new(crate::metrics::Direction::Outbound),
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
    ctx: &SessionContext<'_>,
    relay: &Relay,
) -> Result<(Extensions, Option<String>), SessionError> {
    let hostname = ctx.hostname;
    let rejected = match client.ehlo(hostname).await {
        // RFC 5321 §5.1 ("mail loops back to myself"): a server that answers EHLO with our
        // own name is us, or our own MTA in front of us; delivering there would loop.
        Ok(ehlo) if ehlo.hostname.eq_ignore_ascii_case(hostname) => {
            quit(client).await;
            return Err(SessionError::new(loops_back(ctx, relay), Next::Host));
        }
        Ok(ehlo) => {
            // A peer's text: kept to a domain name's length.
            let name: String = ehlo.hostname.chars().take(255).collect();
            let name = Some(name).filter(|n| !n.is_empty());
            return Ok((Extensions::from_ehlo(&ehlo), name));
        }
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
        Ok(r) if r.code / 100 == 2 => Ok((Extensions::default(), None)),
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

/// Postfix's verdict for a host that greets us with our own name: `5.4.6 mail for D loops
/// back to myself` when it is the best MX (nowhere else to go), 4.4.6 for a backup MX (the
/// better hosts may come back).
fn loops_back(ctx: &SessionContext<'_>, relay: &Relay) -> Failure {
    tracing::warn!(
        "host {} replied to HELO/EHLO with my own hostname {}",
        relay.host_ip(),
        ctx.hostname
    );
    let (code, class) = if ctx.best_mx { (550, 5) } else { (451, 4) };
    Failure::new(
        Reply::new(
            code,
            EnhancedCode::new(class, 4, 6),
            format!("mail for {} loops back to myself", ctx.next_hop),
        ),
        Some(relay.clone()),
        Rank::Reply,
    )
}

/// The server's own reply, for a host that will not talk to us; the log shows which host.
fn refused_to_talk(relay: &Relay, r: &Response<String>) -> Failure {
    let reply = remote_reply(r);
    tracing::info!("host {} refused to talk to me: {reply}", relay.host_ip());
    Failure::from_server(reply, relay.clone())
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

    #[test]
    fn optional_tls_handshake_failure_is_never_a_destination_verdict() {
        let relay = Relay {
            host: "mx.example.test".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
        };
        let f = opportunistic_handshake_failure(&relay, "peer sent no certificates");
        // Not 4.7.5: the default status filter would bounce mail for a domain that never
        // asked for TLS.
        assert_eq!(f.reply.status().to_string(), "4.7.0");
        assert!(f
            .reply
            .text
            .starts_with("Cannot start TLS: handshake failure with mx.example.test[192.0.2.1]"));
        // The plaintext retry's connection failure outranks it.
        assert!(Rank::OpportunisticTls < Rank::Connect);
        assert!(Rank::OpportunisticTls < Rank::Tls);
    }
}
