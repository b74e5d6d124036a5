//! Connections: the accept loop of one listener, the limit on simultaneous clients, and the
//! TLS handshakes, implicit (RFC 8314 §3.3: TLS from the first byte) or after STARTTLS
//! (RFC 3207), around the SMTP sessions.

use super::session::{Client, Ending, Session};
use super::Inbound;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::{info, warn};

/// Accepts connections on one listener until shutdown.
pub async fn accept_loop(
    inbound: Arc<Inbound>,
    socket: TcpListener,
    listener: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = super::shutdown_requested(&mut shutdown) => return,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!("inbound: accept on listener[{listener}]: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = inbound.connections.clone().try_acquire_owned() else {
            refuse_busy(&inbound, &stream, peer);
            continue;
        };
        tokio::spawn(handle(
            inbound.clone(),
            stream,
            peer,
            listener,
            shutdown.clone(),
            permit,
        ));
    }
}

/// Over `smtpd.max_connections`: say so and close. A single non-blocking write into a fresh
/// socket's empty send buffer, so a flood of connections cannot tie up the accept loop.
fn refuse_busy(inbound: &Inbound, stream: &TcpStream, peer: SocketAddr) {
    info!(
        "warning: too many connections; refusing [{}]",
        peer.ip().to_canonical()
    );
    let text = format!(
        "421 4.3.2 {} Error: too many connections, try again later\r\n",
        inbound.config.hostname
    );
    let _ = stream.try_write(text.as_bytes());
}

/// One client connection, from accept to close.
async fn handle(
    inbound: Arc<Inbound>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _open = crate::metrics::OpenSession::new(crate::metrics::Direction::Inbound);
    let mut client = Client::new(peer, listener);
    info!("connect from {}", client.ip_text());
    let implicit = inbound
        .config
        .listeners
        .get(listener)
        .is_some_and(|l| l.implicit_tls);
    if implicit {
        if let Some(tls) = handshake(&inbound, &mut client, stream).await {
            Session::new(tls, &inbound, &mut client, shutdown)
                .run(true)
                .await;
        }
    } else {
        let ending = Session::new(stream, &inbound, &mut client, shutdown.clone())
            .run(true)
            .await;
        if let Ending::StartTls(stream) = ending {
            if let Some(tls) = handshake(&inbound, &mut client, stream).await {
                // RFC 3207 §4.2: the server discards all knowledge from before TLS; the
                // new session starts fresh and waits for a new EHLO.
                Session::new(tls, &inbound, &mut client, shutdown)
                    .run(false)
                    .await;
            }
        }
    }
    info!("disconnect from {} {}", client.ip_text(), client.stats);
}

/// Runs the server side of a TLS handshake, bounded by `smtpd.timeout`; records the version
/// and cipher on success.
async fn handshake(
    inbound: &Inbound,
    client: &mut Client,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = inbound.tls_acceptor(client.listener)?;
    let timeout = inbound.config.smtpd.timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let (_, connection) = tls.get_ref();
            client.tls = crate::tls::negotiated(connection);
            if let Some(n) = &client.tls {
                info!(
                    "{}: TLS established: {} with cipher {} key-exchange {}",
                    client.ip_text(),
                    n.version,
                    n.cipher,
                    n.kx.as_deref().unwrap_or("-")
                );
            }
            Some(tls)
        }
        Ok(Err(e)) => {
            info!("TLS handshake failed from {}: {e}", client.ip_text());
            None
        }
        Err(_) => {
            info!("TLS handshake timeout from {}", client.ip_text());
            None
        }
    }
}
