//! Outbound delivery: for one message and one recipient domain, find where to send it (a static
//! route or the domain's MX hosts, RFC 5321 §5.1), connect, use TLS as the policy demands,
//! and transact, yielding one outcome per recipient.
//!
//! The steps, each in its own module:
//! - [`route`]: static routes (`[host]:port` skips MX lookup);
//! - `mx`, `dns`: MX resolution (RFC 5321 §5.1, RFC 7505 null MX) and host addresses;
//! - `session`: TCP connect, greeting, EHLO/HELO, opportunistic STARTTLS (RFC 3207);
//! - `transaction`: MAIL, RCPT, DATA with SIZE, 8BITMIME, SMTPUTF8 and DSN parameters;
//! - `attempt`: the per-recipient outcome and the delivery log line.
//!
//! Hosts are tried in order, and each host's addresses in order, until one session reaches
//! MAIL FROM; what that session's server says then is final for this attempt. When no host
//! can be used, every recipient gets the most informative failure seen.

mod attempt;
mod data;
mod dns;
mod mx;
mod route;
mod session;
mod tls;
mod transaction;

pub use crate::next_hop::NextHop;
pub use attempt::{Attempt, Relay, Status, TlsInfo, TlsState};
pub use route::route_for;

use crate::config::Config;
use crate::envelope::Envelope;
use crate::queue_id::QueueId;
use crate::reply::{EnhancedCode, Reply};
use attempt::{Failure, Rank, WorstFailure};
use hickory_resolver::TokioResolver;
use session::{Connection, Next, Session, SessionContext};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use transaction::Transaction;

/// At most this many addresses (over all MX hosts) are tried in one attempt, like Postfix's
/// `smtp_mx_address_limit`: a domain with dozens of MX addresses that all time out must not
/// hold a delivery slot for an hour.
pub const MAX_ADDRESSES: usize = 10;

/// The reason given in `policy=` until DANE, MTA-STS and local levels set one.
const NO_POLICY: &str = "none";

/// One delivery attempt's input: some recipients of one message, all in one domain.
pub struct Job<'a> {
    pub queue_id: &'a QueueId,
    pub envelope: &'a Envelope,
    /// The stored message: CRLF line ends, not dot-stuffed.
    pub message: &'a [u8],
    /// The recipients' (lower-case) domain.
    pub domain: &'a str,
    /// Indexes into `envelope.recipients`.
    pub recipients: &'a [usize],
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryInitError {
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Delivers jobs; one per process, shared by the scheduler's tasks.
pub struct Deliverer {
    config: Arc<Config>,
    resolver: TokioResolver,
    /// Opportunistic TLS (any certificate) for STARTTLS.
    opportunistic: TlsConnector,
    /// Bounds simultaneous SMTP sessions (`delivery.max_concurrency`).
    sessions: Semaphore,
}

/// Where one job goes: hosts in the order to try, all at the same port.
struct Plan {
    hosts: Vec<String>,
    port: u16,
}

impl Deliverer {
    /// Builds the resolver (`config.dns`) and the client TLS configuration.
    pub fn new(config: Arc<Config>) -> Result<Deliverer, DeliveryInitError> {
        let resolver = dns::build_resolver(&config.dns)
            .map_err(|e| DeliveryInitError::Resolver(e.to_string()))?;
        let opportunistic = tls::opportunistic_connector()?;
        let sessions = Semaphore::new(config.delivery.max_concurrency.max(1));
        Ok(Deliverer {
            config,
            resolver,
            opportunistic,
            sessions,
        })
    }

    /// One delivery attempt for `job.recipients`, all of `job.domain`, over one connection.
    /// Never panics; every recipient gets exactly one [`Attempt`].
    pub async fn deliver(&self, job: &Job<'_>) -> Vec<Attempt> {
        if job.recipients.is_empty() {
            return Vec::new();
        }
        let plan = match self.plan(job.domain).await {
            Ok(plan) => plan,
            Err(failure) => return every_recipient(job, failure),
        };
        // Never closed; a failure to acquire would only mean "no limit".
        let _permit = self.sessions.acquire().await.ok();
        let mut worst = WorstFailure::default();
        match self.try_hosts(job, &plan, &mut worst).await {
            Some(attempts) => attempts,
            None => {
                let failure = worst.take().unwrap_or_else(|| no_host(job.domain));
                every_recipient(job, failure)
            }
        }
    }

    /// The static route if one matches, else the domain's MX hosts.
    async fn plan(&self, domain: &str) -> Result<Plan, Failure> {
        let default_port = self.config.delivery.smtp_port;
        let routes = &self.config.routes;
        let plan = match route_for(routes, domain) {
            Some(hop) if hop.no_mx => Plan {
                port: hop.port.unwrap_or(default_port),
                hosts: vec![hop.host],
            },
            Some(hop) => Plan {
                hosts: mx::mx_hosts(&self.resolver, &hop.host).await?,
                port: hop.port.unwrap_or(default_port),
            },
            None => Plan {
                hosts: mx::mx_hosts(&self.resolver, domain).await?,
                port: default_port,
            },
        };
        Ok(plan)
    }

    /// Hosts in order, each host's addresses in order, up to [`MAX_ADDRESSES`]. `None` when no
    /// session reached a transaction; `worst` then holds the failure to report.
    async fn try_hosts(
        &self,
        job: &Job<'_>,
        plan: &Plan,
        worst: &mut WorstFailure,
    ) -> Option<Vec<Attempt>> {
        let mut budget = MAX_ADDRESSES;
        'hosts: for host in &plan.hosts {
            if budget == 0 {
                break;
            }
            // RFC 5321 §5.1: a host whose address cannot be found is skipped.
            let addrs = match mx::host_addresses(&self.resolver, host).await {
                Ok(addrs) => addrs,
                Err(failure) => {
                    worst.record(failure);
                    continue;
                }
            };
            for ip in addrs.into_iter().take(budget) {
                budget -= 1;
                let relay = Relay {
                    host: host.clone(),
                    addr: SocketAddr::new(ip, plan.port),
                };
                match self.try_address(job, &relay, worst).await {
                    Ok(attempts) => return Some(attempts),
                    Err(Next::Host) => continue 'hosts,
                    Err(_) => continue,
                }
            }
        }
        None
    }

    /// One address: a session (with STARTTLS if offered, else or after a failed handshake in
    /// plaintext), then the transaction. On failure, records why and says what to try next.
    async fn try_address(
        &self,
        job: &Job<'_>,
        relay: &Relay,
        worst: &mut WorstFailure,
    ) -> Result<Vec<Attempt>, Next> {
        let ctx = self.session_context();
        let session = match session::open(&ctx, relay, true).await {
            Ok(session) => session,
            Err(e) if e.next == Next::Plaintext => {
                // Postfix level `may`: a failed handshake is retried without TLS.
                worst.record(e.failure);
                session::open(&ctx, relay, false).await.map_err(|e| {
                    worst.record(e.failure);
                    e.next
                })?
            }
            Err(e) => {
                worst.record(e.failure);
                return Err(e.next);
            }
        };
        Ok(self.transact(job, session).await)
    }

    fn session_context(&self) -> SessionContext<'_> {
        let d = &self.config.delivery;
        SessionContext {
            hostname: &self.config.hostname,
            connect_timeout: d.connect_timeout,
            command_timeout: d.command_timeout,
            tls: &self.opportunistic,
        }
    }

    async fn transact(&self, job: &Job<'_>, session: Session) -> Vec<Attempt> {
        let Session {
            relay,
            connection,
            extensions,
            tls,
        } = session;
        let tx = Transaction {
            job,
            relay: &relay,
            extensions,
            data_timeout: self.config.delivery.data_timeout,
        };
        let dsn_passed_on = extensions.has(smtp_proto::EXT_DSN);
        let replies = match connection {
            Connection::Plain(mut client) => tx.run(&mut client).await,
            Connection::Tls(mut client) => tx.run(client.as_mut()).await,
        };
        replies
            .into_iter()
            .map(|(rcpt, reply)| Attempt {
                rcpt,
                reply,
                relay: Some(relay.clone()),
                tls: tls.clone(),
                policy: NO_POLICY.to_string(),
                dsn_passed_on,
            })
            .collect()
    }
}

/// The same failure for every recipient of the job.
fn every_recipient(job: &Job<'_>, failure: Failure) -> Vec<Attempt> {
    job.recipients
        .iter()
        .map(|&rcpt| Attempt {
            rcpt,
            reply: failure.reply.clone(),
            relay: failure.relay.clone(),
            tls: TlsInfo::default(),
            policy: NO_POLICY.to_string(),
            dsn_passed_on: false,
        })
        .collect()
}

/// Only reachable with an empty host list, which MX resolution never returns.
fn no_host(domain: &str) -> Failure {
    Failure::new(
        Reply::new(
            451,
            EnhancedCode::new(4, 4, 4),
            format!("no usable mail host for {domain}"),
        ),
        None,
        Rank::DnsTemporary,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_with_configured_nameservers_outside_a_runtime() {
        let mut config = Config::default();
        config.dns.nameservers = vec!["127.0.0.1:53".parse().unwrap()];
        assert!(Deliverer::new(Arc::new(config)).is_ok());
    }

    #[tokio::test]
    async fn a_job_without_recipients_has_no_attempts() {
        let mut config = Config::default();
        config.dns.nameservers = vec!["127.0.0.1:9".parse().unwrap()];
        let deliverer = Deliverer::new(Arc::new(config)).unwrap();
        let id = QueueId::generate();
        let env = Envelope::new("a@b.test");
        let job = Job {
            queue_id: &id,
            envelope: &env,
            message: b"",
            domain: "b.test",
            recipients: &[],
        };
        assert!(deliverer.deliver(&job).await.is_empty());
    }
}
