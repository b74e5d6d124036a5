//! The inbound SMTP server (RFC 5321) that Postfix or any MTA hands outbound mail to.
//!
//! Each configured listener accepts connections; each connection runs one [`session`] (two
//! when the client upgrades with STARTTLS), which checks relay [`access`], reads the message
//! and hands it to the durable queue before it answers `250`. The pieces:
//! [`command`] parses lines, [`params`] and [`path`] the MAIL/RCPT arguments, [`data`] decodes
//! DATA, [`io`] bounds what a client can make us buffer, [`auth`] does SMTP AUTH,
//! [`received`] writes the trace header, [`connection`] owns TLS and the connection limit,
//! [`space`] turns mail away while the spool's file system is short of space.

pub mod access;
pub mod auth;
pub mod command;
mod connection;
pub mod data;
mod io;
pub mod params;
pub mod path;
pub mod received;
mod session;
pub mod space;
mod stats;

pub use auth::hash_password;
pub use space::free_bytes;

use crate::config::Config;
use crate::queue::Queue;
use auth::{Users, UsersFileError};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// How long `serve` waits for running sessions after it stops accepting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("listener[{index}].tls_cert: {source}")]
    Tls {
        index: usize,
        source: crate::tls::TlsSetupError,
    },
    #[error(transparent)]
    Users(#[from] UsersFileError),
}

/// The inbound server: what every session shares.
pub struct Inbound {
    config: Arc<Config>,
    queue: Queue,
    /// AUTH credentials; `None` when `access.auth_users_file` is unset (no AUTH offered).
    users: Option<Arc<Users>>,
    /// Per listener, by index into `config.listeners`: its TLS setup, if it has a certificate.
    tls: Vec<Option<TlsAcceptor>>,
    /// One permit per connection, over all listeners (`smtpd.max_connections`).
    connections: Arc<Semaphore>,
    /// Free space on the spool's file system against `queue.min_free`.
    space: space::SpoolSpace,
}

impl Inbound {
    /// Loads TLS server configs of each listener and the AUTH credentials file.
    pub fn new(config: Arc<Config>, queue: Queue) -> Result<Inbound, InboundError> {
        let mut tls = Vec::with_capacity(config.listeners.len());
        let auth = config.access.auth_users_file.is_some();
        for (index, l) in config.listeners.iter().enumerate() {
            let acceptor = match (&l.tls_cert, &l.tls_key) {
                (Some(cert), Some(key)) => {
                    let profile = l.tls_profile(auth).map_err(|(key, message)| {
                        let source = crate::tls::TlsSetupError::Settings { key, message };
                        InboundError::Tls { index, source }
                    })?;
                    let server =
                        crate::tls::server_config(cert, key, &profile, l.tls_preempt_cipherlist)
                            .map_err(|source| InboundError::Tls { index, source })?;
                    tracing::info!(
                        "listener[{index}] {}: TLS {}{}",
                        l.address,
                        if l.tls_mandatory(auth) {
                            "(mandatory) "
                        } else {
                            ""
                        },
                        profile.describe()
                    );
                    Some(TlsAcceptor::from(server))
                }
                _ => None,
            };
            tls.push(acceptor);
        }
        let users = match &config.access.auth_users_file {
            Some(path) => Some(Arc::new(Users::load(path)?)),
            None => None,
        };
        let connections = Arc::new(Semaphore::new(config.smtpd.max_connections));
        let space = space::SpoolSpace::new(config.spool_dir(), config.queue.min_free);
        Ok(Inbound {
            config,
            queue,
            users,
            tls,
            connections,
            space,
        })
    }

    fn tls_acceptor(&self, listener: usize) -> Option<&TlsAcceptor> {
        self.tls.get(listener).and_then(Option::as_ref)
    }

    /// Runs one accept loop per (listener socket, index into config.listeners) until
    /// `shutdown` becomes true, then stops accepting and waits (at most 10 s) for running
    /// sessions to end. Idle sessions notice the shutdown and close with 421.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<(TcpListener, usize)>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut loops = tokio::task::JoinSet::new();
        for (socket, index) in listeners {
            if index >= self.config.listeners.len() {
                tracing::error!(
                    "inbound: no listener[{index}] in the configuration; not serving it"
                );
                continue;
            }
            loops.spawn(connection::accept_loop(
                self.clone(),
                socket,
                index,
                shutdown.clone(),
            ));
        }
        while loops.join_next().await.is_some() {}
        // Every session holds a permit: when all are back, all sessions have ended.
        let all = u32::try_from(self.config.smtpd.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(DRAIN_TIMEOUT, self.connections.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("inbound: sessions still running after {DRAIN_TIMEOUT:?}; leaving them");
        }
    }
}

/// Resolves once `shutdown` is true, or once its sender is gone (nobody could stop us then).
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
