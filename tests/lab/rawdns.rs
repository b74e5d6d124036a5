//! A raw DNS responder for the hostile-DNS tests: UDP and TCP on one port of a lab address,
//! misbehaving as a test says, in front of the lab's real name server ([`super::dns`]).
//!
//! Each protocol has a mode, changeable while the relay runs (so a test can "fix the DNS"):
//! - UDP ([`Udp`]): forward to the lab server as is; answer with the TC bit set and no (or only
//!   part of the) answer (RFC 1035 §4.1.1, RFC 7766 §5: the client must ask again over TCP);
//!   answer under a wrong message ID, with bytes that decode as no DNS message, or with random
//!   bytes; or never answer.
//! - TCP ([`Tcp`]): forward to the lab server; accept and close at once; or refuse (nothing
//!   listens on the port: only at start).
//!
//! Forwarding is byte for byte: the lab server sees the client's own query (its ID, its EDNS
//! payload size) and its answer goes back unchanged, so an answer that is too large for UDP
//! comes back truncated by the lab server itself.
//!
//! Queries are parsed with hickory-proto (a query that does not parse gets no answer) and kept,
//! with the protocol they came over, for tests that assert what was asked and how.

use hickory_server::proto::op::Message;
use rand::RngCore;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How long a forwarded query may wait for the lab server.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// What the responder does with a UDP query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Udp {
    /// The lab server's answer over UDP, unchanged.
    Forward,
    /// The question echoed with TC set, RCODE NOERROR, no records at all.
    Truncated,
    /// TC set, with only the first answer record of the full answer (fetched over TCP): a
    /// server that fills a datagram as far as it goes (RFC 2181 §9 allows it).
    TruncatedPartial,
    /// The lab server's answer under another message ID (a spoofing attempt or a confused
    /// middlebox; RFC 5452 §4.3: such an answer must be ignored).
    WrongId,
    /// The query's message ID, then a header whose counts promise records the datagram does not
    /// hold: it cannot be decoded.
    Undecodable,
    /// 64 random bytes (so, almost always, a wrong message ID too).
    Random,
    /// Reads the query and never answers.
    Silent,
}

/// What the responder does with a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    /// Each query (two-byte length prefix, RFC 1035 §4.2.2) to the lab server over TCP, its
    /// answer back; the connection stays open for more.
    Forward,
    /// Accepts and closes the connection without reading.
    Close,
    /// Nothing listens on the port: connections are refused. Only as the mode at start.
    Refuse,
}

/// One query the responder received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Over TCP (else UDP).
    pub tcp: bool,
    /// `name. TYPE`, as [`super::dns::DnsServer::queries`] writes it.
    pub query: String,
    /// The query had the AD bit set (RFC 6840 §5.7): mxguard's `trust-ad` client sets it, its
    /// hickory resolver does not.
    pub ad: bool,
}

struct State {
    udp: Mutex<Udp>,
    tcp: Mutex<Tcp>,
    upstream: SocketAddr,
    seen: Mutex<Vec<Seen>>,
    /// TCP connections accepted, whatever was done with them.
    connections: AtomicUsize,
}

impl State {
    fn note(&self, tcp: bool, query: &Message) {
        if let Some(q) = query.queries.first() {
            self.seen.lock().unwrap().push(Seen {
                tcp,
                query: format!("{} {}", q.name(), q.query_type()),
                ad: query.metadata.authentic_data,
            });
        }
    }
}

/// A running responder. Dropping it stops it.
pub struct RawDns {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl RawDns {
    /// Starts a responder on `ip` (UDP and TCP on one ephemeral port) in front of the lab
    /// server at `upstream`. Needs a Tokio runtime.
    pub async fn start(ip: IpAddr, upstream: SocketAddr, udp: Udp, tcp: Tcp) -> RawDns {
        let (socket, listener) = bind_pair(ip).await;
        let addr = socket.local_addr().unwrap();
        let state = Arc::new(State {
            udp: Mutex::new(udp),
            tcp: Mutex::new(tcp),
            upstream,
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let mut tasks = vec![tokio::spawn(serve_udp(Arc::new(socket), state.clone()))];
        if tcp == Tcp::Refuse {
            drop(listener);
        } else {
            tasks.push(tokio::spawn(serve_tcp(listener, state.clone())));
        }
        RawDns { addr, state, tasks }
    }

    /// Where the relay's `[dns] nameservers` must point.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, UDP queries get `mode`.
    pub fn set_udp(&self, mode: Udp) {
        *self.state.udp.lock().unwrap() = mode;
    }

    /// From now on, TCP connections get `mode` (not [`Tcp::Refuse`]: the listener stays).
    pub fn set_tcp(&self, mode: Tcp) {
        assert!(
            *self.state.tcp.lock().unwrap() != Tcp::Refuse && mode != Tcp::Refuse,
            "Tcp::Refuse is only a mode at start"
        );
        *self.state.tcp.lock().unwrap() = mode;
    }

    /// Every query received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many TCP connections were accepted (with [`Tcp::Close`] too, which reads no query).
    pub fn tcp_connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The queries received over UDP (`false`) or TCP (`true`), as `name. TYPE`.
    pub fn queries(&self, tcp: bool) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.tcp == tcp)
            .map(|s| s.query)
            .collect()
    }
}

impl Drop for RawDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<State>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let query = buf[..len].to_vec();
        let (socket, state) = (socket.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(parsed) = Message::from_vec(&query) else {
                return;
            };
            state.note(false, &parsed);
            let mode = *state.udp.lock().unwrap();
            if let Some(reply) = udp_reply(mode, &query, &parsed, &state).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

/// The datagram to send back for `query` in `mode`, if any.
async fn udp_reply(mode: Udp, query: &[u8], parsed: &Message, state: &State) -> Option<Vec<u8>> {
    match mode {
        Udp::Forward => forward_udp(state.upstream, query).await,
        Udp::Truncated => {
            let mut reply = Message::response(parsed.metadata.id, parsed.metadata.op_code);
            reply.metadata.recursion_desired = parsed.metadata.recursion_desired;
            reply.metadata.truncation = true;
            reply.add_queries(parsed.queries.iter().cloned());
            if let Some(edns) = parsed.edns.clone() {
                reply.set_edns(edns);
            }
            Some(reply.to_vec().expect("encode a truncated reply"))
        }
        Udp::TruncatedPartial => {
            let full = forward_tcp(state.upstream, query).await?;
            let mut reply = Message::from_vec(&full).ok()?;
            reply.answers.truncate(1);
            reply.authorities.clear();
            reply.additionals.clear();
            reply.metadata.truncation = true;
            Some(reply.to_vec().expect("encode a partial reply"))
        }
        Udp::WrongId => {
            let mut reply = forward_udp(state.upstream, query).await?;
            reply[0] ^= 0x5a;
            reply[1] ^= 0xa5;
            Some(reply)
        }
        Udp::Undecodable => {
            // ID, flags QR RD RA NOERROR, 1 question and 5 answers promised; then a name whose
            // first byte is a compression pointer far past the end of the datagram.
            let mut reply = query[..2].to_vec();
            reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 5, 0, 0, 0, 0]);
            reply.extend_from_slice(&[0xff; 20]);
            Some(reply)
        }
        Udp::Random => {
            let mut reply = vec![0u8; 64];
            rand::thread_rng().fill_bytes(&mut reply);
            Some(reply)
        }
        Udp::Silent => None,
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let mode = *state.tcp.lock().unwrap();
        match mode {
            Tcp::Forward => {
                tokio::spawn(forward_connection(stream, state.clone()));
            }
            Tcp::Close | Tcp::Refuse => drop(stream),
        }
    }
}

/// Serves one client connection: each query forwarded to the lab server over TCP.
async fn forward_connection(mut client: TcpStream, state: Arc<State>) {
    while let Some(query) = read_framed(&mut client).await {
        if let Ok(parsed) = Message::from_vec(&query) {
            state.note(true, &parsed);
        }
        let Some(answer) = forward_tcp(state.upstream, &query).await else {
            return;
        };
        if write_framed(&mut client, &answer).await.is_err() {
            return;
        }
    }
}

/// One query to the lab server over UDP; its answer, or `None` after [`UPSTREAM_TIMEOUT`].
async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let local = SocketAddr::new(upstream.ip(), 0);
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.send_to(query, upstream).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(len);
    Some(buf)
}

/// One query to the lab server over TCP; its (whole) answer.
async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await.ok()?;
        write_framed(&mut stream, query).await.ok()?;
        read_framed(&mut stream).await
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// One DNS message over TCP: two-byte length, then the message (RFC 1035 §4.2.2).
async fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = stream.read_u16().await.ok()?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).expect("a DNS message fits in 64 KiB");
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Binds UDP on `ip:0`, then TCP on the same port, retrying when TCP's port is taken.
async fn bind_pair(ip: IpAddr) -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap_or_else(|e| panic!("raw DNS: cannot bind UDP on {ip}: {e}"));
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(SocketAddr::new(ip, port)).await {
            return (udp, tcp);
        }
    }
    panic!("raw DNS: no port free for both UDP and TCP on {ip}");
}
