//! The lab's MTA-STS policy host (RFC 8461 §3.3): an in-process HTTPS server (rustls, a
//! hand-written minimal HTTP/1.1) on `127.X.Y.n` at an ephemeral port, serving
//! `/.well-known/mta-sts.txt` for any number of `mta-sts.<domain>` names, chosen by SNI.
//!
//! Every host has a certificate (from the lab CA, or a broken one a test hands in) and a
//! scripted [`Response`]: status, content type, body, `Content-Length` exact / absent (chunked)
//! / lying, a delay before answering, a `Location`. Each connection serves one request and
//! closes (`Connection: close`), so every fetch is a fresh request the server counts.
//!
//! Wiring a test:
//! ```ignore
//! let lab = Lab::new().await;
//! let server = PolicyServer::start(&lab, 80).await;
//! server.publish(&lab.ca, "example.test", "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n");
//! lab.zone(
//!     Zone::new("example.test")
//!         .mx(10, "mx.example.test")
//!         .txt("_mta-sts.example.test", "v=STSv1; id=1")
//!         .a("mta-sts.example.test", server.ip()),
//! );
//! // or: lab.zone(server.announce(Zone::new("example.test").mx(10, "mx.example.test"), "example.test", "1"));
//! // The relay: `[mta_sts] https_port = server.port()`; it already trusts the lab CA
//! // (`delivery.extra_ca_files`). A `policy_cache::Settings` gets `https_port` and
//! // `extra_ca_files = vec![lab.ca.write_pem(lab.dir())]`.
//! assert_eq!(server.requests("mta-sts.example.test"), 1);
//! server.set("mta-sts.example.test", Response::status(404)); // change it while running
//! ```

use super::ca::{Issued, LabCa};
use super::dns::Zone;
use super::Lab;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The path of the policy file; other paths get 404.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// How the body's length is told to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Length {
    /// `Content-Length` with the body's true length.
    #[default]
    Exact,
    /// No `Content-Length`: `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length: n` whatever the body really is (a lying server); the connection is
    /// closed after the body.
    Declared(u64),
}

/// What the body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Bytes(Vec<u8>),
    /// This many bytes of plain text (`# filler…` lines), generated while sending, so a test
    /// can offer hundreds of megabytes without holding them.
    Filler(u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Filler(n) => *n,
        }
    }
}

/// One scripted answer to `GET /.well-known/mta-sts.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `None` sends no `Content-Type` header.
    pub content_type: Option<String>,
    pub body: Body,
    pub length: Length,
    /// Waited before the status line is sent.
    pub delay: Duration,
    pub location: Option<String>,
    /// `Content-Encoding` header, sent as given (the body is not encoded by the server).
    pub content_encoding: Option<String>,
    /// When set, the body is written one byte at a time with this pause between bytes.
    pub trickle: Option<Duration>,
}

impl Response {
    /// 200, `text/plain; charset=utf-8`, `text` as the body.
    pub fn policy(text: &str) -> Response {
        Response {
            status: 200,
            content_type: Some("text/plain; charset=utf-8".into()),
            body: Body::Bytes(text.as_bytes().to_vec()),
            length: Length::Exact,
            delay: Duration::ZERO,
            location: None,
            content_encoding: None,
            trickle: None,
        }
    }

    /// `code` with a short text/plain body saying so.
    pub fn status(code: u16) -> Response {
        Response {
            status: code,
            ..Response::policy(&format!("{code} {}\n", reason(code)))
        }
    }

    /// A redirect: `code` (301, 302, 307, …) with `Location: target`.
    pub fn redirect(code: u16, target: &str) -> Response {
        Response::status(code).location(target)
    }

    /// 200 text/plain with `len` bytes of filler text.
    pub fn filler(len: u64) -> Response {
        Response {
            body: Body::Filler(len),
            ..Response::policy("")
        }
    }

    pub fn content_type(mut self, content_type: &str) -> Response {
        self.content_type = Some(content_type.into());
        self
    }

    pub fn no_content_type(mut self) -> Response {
        self.content_type = None;
        self
    }

    pub fn body(mut self, body: &[u8]) -> Response {
        self.body = Body::Bytes(body.to_vec());
        self
    }

    pub fn chunked(mut self) -> Response {
        self.length = Length::Chunked;
        self
    }

    pub fn declared_length(mut self, n: u64) -> Response {
        self.length = Length::Declared(n);
        self
    }

    pub fn delay(mut self, delay: Duration) -> Response {
        self.delay = delay;
        self
    }

    pub fn location(mut self, target: &str) -> Response {
        self.location = Some(target.into());
        self
    }

    pub fn content_encoding(mut self, encoding: &str) -> Response {
        self.content_encoding = Some(encoding.into());
        self
    }

    /// Sends the body one byte per `pause`.
    pub fn trickle(mut self, pause: Duration) -> Response {
        self.trickle = Some(pause);
        self
    }
}

/// One request the server answered (or tried to), in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The SNI name the client asked for.
    pub host: String,
    pub path: String,
    /// The status sent (0 if the client left before the status line went out).
    pub status: u16,
    /// Body bytes written to the connection (not counting chunk framing).
    pub body_bytes: u64,
    /// Whether the whole response was written; false when the client went away mid-way.
    pub completed: bool,
}

struct Shared {
    name: String,
    /// Certificate per host name (lower case), chosen by SNI.
    certs: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    responses: Mutex<HashMap<String, Response>>,
    /// Requests received per host, counted as soon as the request head is read.
    requests: Mutex<HashMap<String, usize>>,
    /// Requests whose response is over (written or abandoned).
    served: Mutex<Vec<Served>>,
    tls_failures: Mutex<Vec<String>>,
    /// Connection tasks, aborted when the server is dropped.
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

/// Picks the certificate for the client's SNI; no SNI or an unknown name fails the handshake.
#[derive(Debug)]
struct BySni(Arc<Shared>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.certs.lock().unwrap().get(&name).cloned()
    }
}

/// A running policy host. Dropping it closes the listener and every connection.
#[must_use = "dropping the server closes it"]
pub struct PolicyServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl PolicyServer {
    /// Listens on `127.X.Y.n` of `lab` at an ephemeral port, with no hosts yet.
    pub async fn start(lab: &Lab, n: u8) -> PolicyServer {
        let addr = SocketAddr::new(lab.ip(n).into(), 0);
        PolicyServer::start_at(addr)
            .await
            .unwrap_or_else(|e| panic!("lab HTTPS server on {addr}: {e}"))
    }

    /// Listens on `addr` (port 0 for an ephemeral one).
    pub async fn start_at(addr: SocketAddr) -> io::Result<PolicyServer> {
        policy_cache::crypto::install_default();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: format!("https {addr}"),
            certs: Mutex::new(HashMap::new()),
            responses: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            served: Mutex::new(Vec::new()),
            tls_failures: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(policy_cache::crypto::provider()))
                .with_safe_default_protocol_versions()
                .map_err(io::Error::other)?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(BySni(shared.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(PolicyServer { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port to give the fetcher (`Settings::https_port`, `[mta_sts] https_port`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address to publish as `mta-sts.<domain>`'s A record.
    pub fn ip(&self) -> Ipv4Addr {
        match self.addr.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => panic!("the lab policy server is IPv4"),
        }
    }

    /// Serves `policy_text` for `domain`: a lab-CA certificate for `mta-sts.<domain>` and a
    /// 200 `text/plain; charset=utf-8` response. Returns the host name.
    pub fn publish(&self, ca: &LabCa, domain: &str, policy_text: &str) -> String {
        let host = format!("mta-sts.{domain}");
        self.certify(&host, &ca.issue_with(&[&host], Default::default()));
        self.set(&host, Response::policy(policy_text));
        host
    }

    /// `zone` plus the records that announce this server's policy for `domain`: the TXT
    /// `_mta-sts.<domain>` with `id` and the A record of `mta-sts.<domain>`.
    pub fn announce(&self, zone: Zone, domain: &str, id: &str) -> Zone {
        zone.txt(&format!("_mta-sts.{domain}"), &format!("v=STSv1; id={id}"))
            .a(&format!("mta-sts.{domain}"), self.ip())
    }

    /// Presents `issued` (its chain and key) to clients asking for `host` by SNI: a good
    /// certificate, or a broken one (expired, wrong name, from another CA, self-signed).
    pub fn certify(&self, host: &str, issued: &Issued) {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("lab certificate chain");
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("lab key");
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).expect("lab key type");
        self.shared.certs.lock().unwrap().insert(
            host.to_ascii_lowercase(),
            Arc::new(CertifiedKey::new(certs, key)),
        );
    }

    /// Sets (or replaces, while running) the answer for `host`. A host with a certificate but
    /// no response answers 404.
    pub fn set(&self, host: &str, response: Response) {
        self.shared
            .responses
            .lock()
            .unwrap()
            .insert(host.to_ascii_lowercase(), response);
    }

    /// How many requests (any path) arrived for `host` so far.
    pub fn requests(&self, host: &str) -> usize {
        let requests = self.shared.requests.lock().unwrap();
        requests
            .get(&host.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Every request whose response is over, oldest first.
    pub fn served(&self) -> Vec<Served> {
        self.shared.served.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for `count` responses to `host` to be over; returns them.
    pub async fn wait_served(&self, host: &str, count: usize, timeout: Duration) -> Vec<Served> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let served: Vec<Served> = self
                .served()
                .into_iter()
                .filter(|s| s.host.eq_ignore_ascii_case(host))
                .collect();
            if served.len() >= count {
                return served;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{}: {count} responses to {host} not over within {timeout:?}: {served:?}",
                    self.shared.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Handshakes that failed, as the server saw them (the client's alert, usually).
    pub fn tls_failures(&self) -> Vec<String> {
        self.shared.tls_failures.lock().unwrap().clone()
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

/// One connection: handshake, one request, one response, close.
async fn connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: &Shared,
) -> io::Result<()> {
    let mut tls = match acceptor.accept(stream).await {
        Ok(tls) => tls,
        Err(e) => {
            shared.note(format!("-- TLS handshake failed: {e}"));
            shared.tls_failures.lock().unwrap().push(e.to_string());
            return Ok(());
        }
    };
    let host = tls
        .get_ref()
        .1
        .server_name()
        .unwrap_or("")
        .to_ascii_lowercase();
    let Some(path) = read_request(&mut tls).await? else {
        return Ok(());
    };
    *shared
        .requests
        .lock()
        .unwrap()
        .entry(host.clone())
        .or_default() += 1;
    shared.note(format!("-- GET {path} for {host}"));
    let response = match (path == POLICY_PATH)
        .then(|| shared.responses.lock().unwrap().get(&host).cloned())
        .flatten()
    {
        Some(r) => r,
        None => Response::status(404),
    };
    let mut served = Served {
        host,
        path,
        status: 0,
        body_bytes: 0,
        completed: false,
    };
    let outcome = respond(&mut tls, &response, &mut served).await;
    if outcome.is_ok() {
        served.completed = true;
        let _ = tls.shutdown().await;
    }
    shared.note(format!("-- served {served:?}"));
    shared.served.lock().unwrap().push(served);
    outcome
}

/// Reads the request head; returns the path of a GET, `None` if the client sent nothing
/// usable.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Ok(None);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or("").split(' ');
    match (words.next(), words.next()) {
        (Some("GET"), Some(path)) => Ok(Some(path.to_string())),
        _ => Ok(None),
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
    served: &mut Served,
) -> io::Result<()> {
    if !response.delay.is_zero() {
        tokio::time::sleep(response.delay).await;
    }
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    if let Some(ct) = &response.content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(location) = &response.location {
        head.push_str(&format!("Location: {location}\r\n"));
    }
    if let Some(encoding) = &response.content_encoding {
        head.push_str(&format!("Content-Encoding: {encoding}\r\n"));
    }
    match response.length {
        Length::Exact => head.push_str(&format!("Content-Length: {}\r\n", response.body.len())),
        Length::Declared(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        Length::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    served.status = response.status;

    let chunked = response.length == Length::Chunked;
    let mut piece = Vec::with_capacity(16 * 1024);
    let mut offset = 0u64;
    let total = response.body.len();
    let step = if response.trickle.is_some() {
        1
    } else {
        16 * 1024
    };
    while offset < total {
        if let Some(pause) = response.trickle {
            stream.flush().await?;
            tokio::time::sleep(pause).await;
        }
        piece.clear();
        let n = (total - offset).min(step);
        match &response.body {
            Body::Bytes(b) => piece.extend_from_slice(&b[offset as usize..(offset + n) as usize]),
            Body::Filler(_) => piece.extend((0..n).map(|i| filler_byte(offset + i))),
        }
        if chunked {
            stream
                .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
        }
        stream.write_all(&piece).await?;
        if chunked {
            stream.write_all(b"\r\n").await?;
        }
        offset += n;
        served.body_bytes = offset;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    stream.flush().await
}

/// Filler text: 64-byte lines of `#` comments, valid UTF-8 and plausible as a policy file.
fn filler_byte(i: u64) -> u8 {
    match i % 64 {
        0 => b'#',
        63 => b'\n',
        _ => b'x',
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
