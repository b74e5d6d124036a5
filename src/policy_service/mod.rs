//! The socketmap policy service: mxguard's TLS decision for a mail domain, answered to
//! Postfix's `smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix`, so that a site
//! that delivers with Postfix itself gets mxguard's policy brain: DANE before MTA-STS
//! (RFC 8461 §2, RFC 7672), the daemon's own MTA-STS cache, its destination table.
//!
//! # The protocol (Postfix socketmap_table(5))
//! Each request and each reply is one netstring ([`netstring`]): `LENGTH:PAYLOAD,`. A request
//! is `NAME KEY` (`postfix example.com`); a reply is `OK DATA`, `NOTFOUND `, `TEMP REASON`,
//! `TIMEOUT REASON` or `PERM REASON`. Postfix sends one request and waits for its reply, and
//! keeps the connection for its next look-ups (it closes it after 10 s idle, 100 s in all, and
//! retries a connection found closed once). The NAME is not checked: every name gets the same
//! answers (`postfix` is the convention, as with postfix-mta-sts-resolver).
//!
//! # The answers (`OK` data is a Postfix TLS policy, TLS_README "TLS policy table")
//! For a mail domain the service makes the plan delivery would make for a message to it
//! (MX hosts, DANE, MTA-STS, the destination table: [`decide`]) and sums it up in one level
//! ([`answer`] has the whole table):
//! - `OK dane-only`: every MX host is under DANE (usable TLSA records) — also when the domain
//!   publishes an MTA-STS policy, which DANE overrides. Where only some MX hosts have usable
//!   records, `OK dane` when the others are opportunistic (Postfix's `dane` level is DANE
//!   host by host, as mxguard's plan), `OK dane-only` when MTA-STS or a local level governs
//!   the others (never weaker than mxguard; stricter, since Postfix then uses only the DANE
//!   hosts). A secure TLSA RRset with no usable record (RFC 7672 §2.2) is `OK dane` (Postfix
//!   encrypts without authentication there) unless an enforced MTA-STS policy demands more.
//!   Postfix needs `smtp_dns_support_level = dnssec` for these: it finds and checks the TLSA
//!   records itself.
//! - `OK secure match=mx1.example.com:.example.com servername=hostname`: an enforced MTA-STS
//!   policy, the match list made of its `mx` patterns as postfix-mta-sts-resolver writes it
//!   (`*.example.com` → `.example.com`); `servername=hostname` only with
//!   `policy_service.require_sni` (the default). A `testing` policy is `NOTFOUND`, or as
//!   `enforce` with `policy_service.strict_testing`.
//! - `OK encrypt`, `OK verify`, `OK secure`, `OK none`: a level of `delivery.tls_policy_file`
//!   that raises what the domain publishes, as delivery would apply it.
//! - `NOTFOUND `: nothing applies (no DANE, no enforced policy: opportunistic TLS), and for a
//!   key that names no mail domain of its own ([`request`]: `.example.com` parent-domain
//!   probes, `[host]:port` next hops, addresses), or a domain that does not exist or has a
//!   null MX.
//! - `TEMP …`: a look-up failed (MX, DNSSEC, every host's TLSA, MTA-STS TXT with nothing
//!   cached) or took longer than `policy_service.timeout`. A look-up that times out goes on
//!   in the background, so a slow policy host is cached for the next request.
//! - `PERM …`: a request that is no netstring, longer than [`MAX_REQUEST`] bytes, or not
//!   `NAME KEY` in UTF-8; the connection is then closed, with a log line.
//!
//! # Bounds
//! At most [`MAX_CONNECTIONS`] connections (more are closed at once); each request must
//! arrive whole within [`IDLE_TIMEOUT`] of the previous answer (then the connection is closed,
//! as a silent one); a reply must be taken within [`WRITE_TIMEOUT`]; at most [`MAX_LOOKUPS`]
//! look-ups run at once (past that: `TEMP`). Requests on one connection are answered in
//! order, one at a time; connections run in parallel.

mod answer;
mod decide;
pub mod netstring;
pub mod request;

pub use answer::Answer;
pub use decide::DecideSetupError;

use crate::config::Config;
use crate::tls_policy::TlsPolicies;
use decide::Decider;
use policy_cache::PolicyCache;
use request::Request;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// The longest request payload accepted (a domain is at most 253 octets; Unicode labels take
/// up to four bytes a character): postfix-mta-sts-resolver's limit too.
pub const MAX_REQUEST: usize = 1024;
/// How long a connection may wait with no complete request (Postfix closes its own after 10 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reply may take to be written.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Look-ups running at once, counting those that went on after their answer timed out.
pub const MAX_LOOKUPS: usize = 256;
/// The longest a `trust-ad` verdict is reused between look-ups (within its DNS TTL): Postfix
/// asks many times a second for the same domains, and checks the TLSA records itself.
pub const DNSSEC_ANSWER_TIME: Duration = Duration::from_secs(5);
/// How long shutdown waits for connections to finish their current request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("policy_service.listen {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("policy_service: {0}")]
    Setup(#[from] DecideSetupError),
}

/// The bound service, ready to serve.
pub struct PolicyService {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What every connection uses.
struct Shared {
    decider: Decider,
    /// `policy_service.timeout`: the longest a look-up may take before it is answered `TEMP`.
    timeout: Duration,
    /// Permits for running look-ups ([`MAX_LOOKUPS`]).
    lookups: Arc<Semaphore>,
    /// Permits for open connections ([`MAX_CONNECTIONS`]).
    connections: Arc<Semaphore>,
    /// Set while connections are being refused, so that an episode is logged once.
    refusing: AtomicBool,
}

impl PolicyService {
    /// Binds `policy_service.listen`; `None` when it is not set. `policies` is the daemon's
    /// MTA-STS cache (`None` with MTA-STS off), `tables` its destination table.
    pub async fn bind(
        config: &Config,
        policies: Option<Arc<PolicyCache>>,
        tables: Arc<TlsPolicies>,
    ) -> Result<Option<PolicyService>, ServiceError> {
        let Some(address) = config.policy_service.listen else {
            return Ok(None);
        };
        let decider = Decider::new(config, policies, tables)?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServiceError::Bind { address, source })?;
        let local = listener.local_addr().unwrap_or(address);
        tracing::info!("policy service: socketmap listening on {local}");
        Ok(Some(PolicyService {
            listener,
            shared: Arc::new(Shared {
                decider,
                timeout: config.policy_service.timeout,
                lookups: Arc::new(Semaphore::new(MAX_LOOKUPS)),
                connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                refusing: AtomicBool::new(false),
            }),
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts connections until `shutdown` turns true, then waits (at most
    /// [`DRAIN_TIMEOUT`]) for the connections to end.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = crate::inbound::shutdown_requested(&mut shutdown) => break,
            };
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!("policy service: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.shared.connections.clone().try_acquire_owned() else {
                if !self.shared.refusing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "policy service: {MAX_CONNECTIONS} connections open; closing new ones \
                         until one ends"
                    );
                }
                continue;
            };
            self.shared.refusing.store(false, Ordering::Relaxed);
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let _permit = permit;
                serve_connection(stream, peer, &shared, shutdown).await;
            });
        }
        drop(self.listener);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("policy service: connections still open after {DRAIN_TIMEOUT:?}");
        }
    }
}

/// Why a connection ends.
enum End {
    /// The peer closed it, stayed silent too long, or the daemon is stopping.
    Quietly,
    /// The peer broke the protocol: the reason is answered `PERM` and logged.
    Protocol(String),
}

/// Answers the requests of one connection, in order, until it ends.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Answers are small and each is awaited by the client: no batching to wait for.
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(256);
    loop {
        let frame = match next_request(&mut stream, &mut buf, &mut shutdown).await {
            Ok(frame) => frame,
            Err(End::Quietly) => return,
            Err(End::Protocol(why)) => {
                tracing::warn!("policy service: {peer}: {why}; closing the connection");
                let _ = write_answer(&mut stream, &Answer::Perm(why)).await;
                return;
            }
        };
        let parsed = request::parse(&buf[frame.payload.clone()]);
        buf.drain(..frame.len);
        let answer = match parsed {
            Ok(Request::Domain(domain)) => {
                let answer = lookup(shared, &domain).await;
                tracing::debug!("policy service: {domain}: {answer}");
                answer
            }
            Ok(Request::NotADomain(what)) => {
                tracing::debug!("policy service: key is {what}: NOTFOUND");
                Answer::NotFound
            }
            Err(e) => {
                let why = e.to_string();
                tracing::warn!("policy service: {peer}: {why}; closing the connection");
                let _ = write_answer(&mut stream, &Answer::Perm(why)).await;
                return;
            }
        };
        if write_answer(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

/// Reads until `buf` starts with a whole request, within [`IDLE_TIMEOUT`].
async fn next_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<netstring::Frame, End> {
    let deadline = Instant::now() + IDLE_TIMEOUT;
    let mut chunk = [0u8; 2048];
    loop {
        match netstring::decode(buf, MAX_REQUEST) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(End::Protocol(e.to_string())),
        }
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)) => read,
            _ = crate::inbound::shutdown_requested(shutdown) => return Err(End::Quietly),
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(End::Quietly),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The answer for `domain`, within `policy_service.timeout`. The look-up runs as a task of its
/// own: past the timeout it goes on, so what it fetches is cached for the next request.
async fn lookup(shared: &Arc<Shared>, domain: &str) -> Answer {
    let Ok(permit) = shared.lookups.clone().try_acquire_owned() else {
        return Answer::Temp(format!("{MAX_LOOKUPS} look-ups running; try again"));
    };
    let task = {
        let domain = domain.to_string();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            shared.decider.decide(&domain).await
        })
    };
    match tokio::time::timeout(shared.timeout, task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::error!("policy service: look-up of {domain} failed: {e}");
            Answer::Temp("internal error".into())
        }
        Err(_) => {
            tracing::info!(
                "policy service: look-up of {domain} took over {:?}: TEMP (it goes on, and \
                 its result is cached)",
                shared.timeout
            );
            Answer::Temp(format!("look-up timed out after {:?}", shared.timeout))
        }
    }
}

async fn write_answer(stream: &mut TcpStream, answer: &Answer) -> std::io::Result<()> {
    let wire = netstring::encode(answer.payload().as_bytes());
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&wire)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
