//! The lab's TLS-RPT HTTPS receiver (RFC 8460 §5.4): an in-process HTTPS server (rustls, a
//! hand-written minimal HTTP/1.1) on `127.X.Y.n` at an ephemeral port that takes POSTed
//! reports, records each one — the SNI name, path, `Content-Type` and body bytes — and gives
//! the [`Reply`] the test scripted: a status, a delay first, a `Location`, a body.
//!
//! It presents one certificate whatever name is asked for (from the lab CA, or a broken one a
//! test hands in). Each connection serves one request and closes.
//!
//! ```ignore
//! let lab = Lab::new().await;
//! let receiver = Receiver::start(&lab, 80).await;
//! receiver.certify(&lab.ca.issue_with(&["reports.example.test"], Default::default()));
//! lab.zone(Zone::new("example.test").a("reports.example.test", receiver.ip()));
//! let url = receiver.url("reports.example.test", "/v1/tlsrpt");
//! // … POST to `url`, trusting the lab CA …
//! let posted = receiver.wait_received(1, WAIT).await;
//! assert_eq!(posted[0].content_type, "application/tlsrpt+gzip");
//! receiver.reply(Reply::status(500)); // change it while running
//! ```

use super::ca::Issued;
use super::Lab;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bodies beyond this are refused (413) unread: a report is far smaller.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// The scripted answer to every POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Waited after the request is read, before the status line is sent.
    pub delay: Duration,
    pub location: Option<String>,
    pub body: Vec<u8>,
    /// Sends the head (with the body's `Content-Length`), then nothing more, ever.
    pub stall_body: bool,
}

impl Reply {
    /// `code` with a one-line text body.
    pub fn status(code: u16) -> Reply {
        Reply {
            status: code,
            delay: Duration::ZERO,
            location: None,
            body: format!("{code}\n").into_bytes(),
            stall_body: false,
        }
    }

    /// A redirect to `target`.
    pub fn redirect(code: u16, target: &str) -> Reply {
        Reply {
            location: Some(target.into()),
            ..Reply::status(code)
        }
    }

    /// Waits `delay` before answering (a long one: a server that never answers).
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Sends the head, then never the body.
    pub fn stall_body(mut self) -> Reply {
        self.stall_body = true;
        self
    }

    /// Answers with `len` bytes of body.
    pub fn body_of(mut self, len: usize) -> Reply {
        self.body = vec![b'x'; len];
        self
    }
}

/// One request whose head and body were read, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The SNI name the client asked for.
    pub host: String,
    pub method: String,
    pub path: String,
    /// `Content-Type` as sent (empty when absent).
    pub content_type: String,
    pub body: Vec<u8>,
}

struct Shared {
    name: String,
    cert: Mutex<Option<Arc<CertifiedKey>>>,
    reply: Mutex<Reply>,
    received: Mutex<Vec<Received>>,
    /// Connection tasks, aborted when the receiver is dropped.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Shared {
    fn note(&self, line: String) {
        eprintln!("[{}] {line}", self.name);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The one certificate, whatever the SNI; none yet fails the handshake.
#[derive(Debug)]
struct OneCert(Arc<Shared>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.cert.lock().unwrap().clone()
    }
}

/// A running receiver. Dropping it closes the listener and every connection.
#[must_use = "dropping the receiver closes it"]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Receiver {
    /// Listens on `127.X.Y.n` of `lab` at an ephemeral port, answering 200, with no
    /// certificate yet.
    pub async fn start(lab: &Lab, n: u8) -> Receiver {
        let addr = SocketAddr::new(lab.ip(n).into(), 0);
        Receiver::start_at(addr)
            .await
            .unwrap_or_else(|e| panic!("lab TLS-RPT receiver on {addr}: {e}"))
    }

    /// Listens on `addr` (port 0 for an ephemeral one).
    pub async fn start_at(addr: SocketAddr) -> io::Result<Receiver> {
        policy_cache::crypto::install_default();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: format!("tlsrpt https {addr}"),
            cert: Mutex::new(None),
            reply: Mutex::new(Reply::status(200)),
            received: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(policy_cache::crypto::provider()))
                .with_safe_default_protocol_versions()
                .map_err(io::Error::other)?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(OneCert(shared.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(Receiver { addr, shared, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address to publish as the report host's A record.
    pub fn ip(&self) -> Ipv4Addr {
        match self.addr.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => panic!("the lab TLS-RPT receiver is IPv4"),
        }
    }

    /// `https://<host>:<port><path>`.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port())
    }

    /// Presents `issued` (its chain and key) from now on.
    pub fn certify(&self, issued: &Issued) {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("lab certificate chain");
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("lab key");
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).expect("lab key type");
        *self.shared.cert.lock().unwrap() = Some(Arc::new(CertifiedKey::new(certs, key)));
    }

    /// Answers every following request with `reply`.
    pub fn reply(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    /// Every request read so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests were read (or `wait` passes); returns them.
    pub async fn wait_received(&self, n: usize, wait: Duration) -> Vec<Received> {
        let deadline = Instant::now() + wait;
        loop {
            let received = self.received();
            if received.len() >= n || Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let shared2 = shared.clone();
        let acceptor = acceptor.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = connection(stream, acceptor, &shared2).await {
                shared2.note(format!("-- {peer}: {e}"));
            }
        });
        let mut tasks = shared.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

/// One connection: handshake, one request, one reply, close.
async fn connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: &Shared,
) -> io::Result<()> {
    let mut tls = match acceptor.accept(stream).await {
        Ok(tls) => tls,
        Err(e) => {
            shared.note(format!("-- TLS handshake failed: {e}"));
            return Ok(());
        }
    };
    let host = tls
        .get_ref()
        .1
        .server_name()
        .unwrap_or("")
        .to_ascii_lowercase();
    let reply = match read_request(&mut tls, host).await? {
        Request::Complete(received) => {
            shared.note(format!(
                "-- {} {} for {}: {} bytes of {:?}",
                received.method,
                received.path,
                received.host,
                received.body.len(),
                received.content_type
            ));
            shared.received.lock().unwrap().push(received);
            shared.reply.lock().unwrap().clone()
        }
        Request::Refused(code) => Reply::status(code),
        Request::Nothing => return Ok(()),
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if let Some(location) = &reply.location {
        head.push_str(&format!("Location: {location}\r\n"));
    }
    head.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    tls.write_all(head.as_bytes()).await?;
    if reply.stall_body {
        tls.flush().await?;
        std::future::pending::<()>().await;
    }
    tls.write_all(&reply.body).await?;
    tls.flush().await?;
    let _ = tls.shutdown().await;
    Ok(())
}

enum Request {
    Complete(Received),
    /// Answered with this status, not recorded: no usable length, or too large.
    Refused(u16),
    /// The client went away or sent no HTTP.
    Nothing,
}

/// Reads one request: the head, then a body of `Content-Length` bytes.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, host: String) -> io::Result<Request> {
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if data.len() > 64 * 1024 {
            return Ok(Request::Nothing);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Request::Nothing);
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut words = head.split("\r\n").next().unwrap_or("").split(' ');
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        return Ok(Request::Nothing);
    };
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let Some(length) = header("Content-Length").and_then(|v| v.parse::<usize>().ok()) else {
        return Ok(Request::Refused(411));
    };
    if length > MAX_BODY {
        return Ok(Request::Refused(413));
    }
    let mut body = data[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Request::Nothing);
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    Ok(Request::Complete(Received {
        host,
        method: method.to_string(),
        path: path.to_string(),
        content_type: header("Content-Type").unwrap_or_default(),
        body,
    }))
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
