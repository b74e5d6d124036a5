//! Outbound delivery: for one message and one recipient domain, find where to send it (a static
//! route or the domain's MX hosts, RFC 5321 §5.1), connect, use TLS as the policy demands,
//! and transact, yielding one outcome per recipient.
//!
//! The steps, each in its own module:
//! - [`route`]: static routes (`[host]:port` skips MX lookup);
//! - `mx`, `dns`: MX resolution (RFC 5321 §5.1, RFC 7505 null MX) and host addresses;
//! - `dane`: which MX hosts DANE authenticates (RFC 7672 §2), from DNSSEC-validated MX,
//!   address and TLSA lookups;
//! - `requirement`: the TLS the destination demands (DANE first, then MTA-STS, RFC 8461 §5),
//!   decided purely from the lookups, and what that means for each MX host;
//! - `hosts`: trying the hosts in order under that requirement, reporting policy failures;
//! - `session`: TCP connect, greeting, EHLO/HELO, STARTTLS (RFC 3207), opportunistic or required;
//! - `tls`, `tls_failure`: client TLS (opportunistic, PKIX-verified) and how a host that fails
//!   a requirement is reported (reply, TLS-RPT result type);
//! - `transaction`: MAIL, RCPT, DATA, pipelined where offered (RFC 2920), with the
//!   parameters of `smtp_params` (SIZE, 8BITMIME, SMTPUTF8, REQUIRETLS, DSN);
//! - `attempt`: the per-recipient outcome and the delivery log line.
//!
//! Hosts are tried in order, and each host's addresses in order, until one session reaches
//! MAIL FROM; what that session's server says then is final for this attempt. When no host
//! can be used, every recipient gets the most informative failure seen.
//!
//! DANE and MTA-STS apply to the MX hosts of the recipient domain itself. A static route (`[host]` or
//! the MX hosts of another name) is the operator's choice of next hop, like a Postfix transport
//! map entry: no DANE or MTA-STS policy is looked up for it.

mod attempt;
pub(crate) mod dane;
mod data;
pub(crate) mod destination;
pub(crate) mod dns;
mod hosts;
pub mod local;
mod mime_downgrade;
pub(crate) mod mx;
pub(crate) mod plan;
mod pool;
pub(crate) mod requirement;
mod route;
pub(crate) mod session;
mod smtp_params;
pub(crate) mod tls;
pub(crate) mod tls_failure;
mod tls_report;
mod tlsrpt;
mod transaction;

pub use crate::next_hop::NextHop;
pub use attempt::{AppliedPolicy, Attempt, Relay, Status, StsFacts, TlsInfo, TlsState};
pub use data::header_field;
pub use route::route_for;

use crate::config::Config;
use crate::dnssec::SecureResolver;
use crate::envelope::Envelope;
use crate::queue_id::QueueId;
use crate::reply::{EnhancedCode, Reply};
use crate::tls_policy::TlsPolicies;
use attempt::{Failure, Rank, WorstFailure};
use dane::DanePlan;
use destination::{Admission, Destinations, Feedback};
use hickory_resolver::TokioResolver;
use hosts::Run;
use local::LocalRequirement;
use plan::DeliveryPlan;
use policy_cache::{PolicyCache, StsLookup};
use requirement::TlsRequirement;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// At most this many addresses (over all MX hosts) are tried in one attempt, like Postfix's
/// `smtp_mx_address_limit`: a domain with dozens of MX addresses that all time out must not
/// hold a delivery slot for an hour.
pub const MAX_ADDRESSES: usize = 10;

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
    #[error("TLS trust roots: {0}")]
    Roots(#[from] crate::tls::TlsSetupError),
    #[error("TLS certificate verifier: {0}")]
    Verifier(String),
    #[error("DNSSEC: {0}")]
    Dnssec(#[from] crate::dnssec::DnssecSetupError),
    #[error("TLS policy table {0}")]
    Tables(#[from] crate::tls_policy::TableError),
}

/// Delivers jobs; one per process, shared by the scheduler's tasks.
pub struct Deliverer {
    config: Arc<Config>,
    resolver: TokioResolver,
    /// DNSSEC-aware look-ups for DANE (`dns.dnssec`); `None` when DNSSEC is off.
    secure_dns: Option<SecureResolver>,
    /// Opportunistic TLS (any certificate) for STARTTLS.
    opportunistic: TlsConnector,
    /// PKIX checking (Web PKI roots plus `delivery.extra_ca_files`) for hosts whose
    /// certificate a policy requires to be valid, or wants reported on.
    pkix: tls::PkixChecker,
    /// MTA-STS policies (RFC 8461); `None` when `mta_sts.enabled` is false.
    policies: Option<Arc<PolicyCache>>,
    /// Bounds simultaneous SMTP sessions (`delivery.max_concurrency`).
    sessions: Semaphore,
    /// The operator's minimum levels by destination and sender.
    tls_policies: Arc<TlsPolicies>,
    /// Sessions kept open between transactions.
    pool: pool::Pool,
    /// Per-destination concurrency windows.
    destinations: Arc<Destinations>,
    /// Where sessions are counted for TLS-RPT (RFC 8460); `None` when reporting is off.
    tls_reports: Option<Arc<crate::report::counts::Counter>>,
}

/// Where one job goes: hosts in the order to try, all at the same port.
struct NextHops {
    hosts: Vec<String>,
    port: u16,
    /// The hosts are the recipient domain's own MX hosts (no static route): its MTA-STS
    /// policy applies to them.
    own_mx: bool,
}

impl Deliverer {
    /// Builds the resolver (`config.dns`) and the client TLS configurations. `policies` is the
    /// MTA-STS policy cache, `None` when MTA-STS is disabled.
    pub fn new(
        config: Arc<Config>,
        policies: Option<Arc<PolicyCache>>,
    ) -> Result<Deliverer, DeliveryInitError> {
        let resolver = dns::build_resolver(&config.dns)
            .map_err(|e| DeliveryInitError::Resolver(e.to_string()))?;
        let (opportunistic, mandatory) = config
            .delivery
            .tls_profiles()
            .map_err(|(key, e)| DeliveryInitError::Verifier(format!("delivery.{key}: {e}")))?;
        tracing::info!("delivery: opportunistic TLS {}", opportunistic.describe());
        tracing::info!("delivery: mandatory TLS {}", mandatory.describe());
        let roots = crate::tls::root_store(&config.delivery.extra_ca_files)?;
        let pkix = tls::PkixChecker::new(roots, opportunistic.clone(), mandatory)
            .map_err(DeliveryInitError::Verifier)?;
        let opportunistic = tls::opportunistic_connector(&opportunistic)?;
        let sessions = Semaphore::new(config.delivery.max_concurrency.max(1));
        let secure_dns = SecureResolver::from_config(&config.dns)?;
        let tls_policies = Arc::new(TlsPolicies::open(
            config.delivery.tls_policy_file.as_deref(),
            config.delivery.sender_tls_policy_file.as_deref(),
        )?);
        let d = &config.delivery;
        let pool = pool::Pool::new(pool::PoolLimits {
            enabled: d.connection_reuse,
            idle: d.connection_cache_time_limit,
            uses: d.connection_reuse_count_limit,
            age: d.connection_reuse_time_limit,
        });
        let destinations = Arc::new(Destinations::new(destination::Limits {
            limit: d.destination_concurrency_limit,
            initial: d.initial_destination_concurrency,
            cohort_limit: d.destination_concurrency_failed_cohort_limit,
            rate_delay: d.destination_rate_delay,
            dead_time: config.queue.min_backoff,
        }));
        Ok(Deliverer {
            destinations,
            pool,
            tls_policies,
            config,
            resolver,
            secure_dns,
            opportunistic,
            pkix,
            policies,
            sessions,
            tls_reports: None,
        })
    }

    /// Counts every session's TLS outcome into `counter` (TLS-RPT).
    pub fn with_tls_reports(mut self, counter: Arc<crate::report::counts::Counter>) -> Self {
        self.tls_reports = Some(counter);
        self
    }

    /// Closes pooled sessions past their time; call every second or so.
    pub async fn reap_idle_sessions(&self) {
        self.pool.reap().await;
        self.destinations.prune();
    }

    /// Closes every pooled session (at shutdown).
    pub async fn close_idle_sessions(&self) {
        self.pool.close_all().await;
    }

    /// The destination and sender tables, for the daemon to reread when they change.
    pub fn tls_policies(&self) -> Arc<TlsPolicies> {
        self.tls_policies.clone()
    }

    /// One delivery attempt for `job.recipients`, all of `job.domain`, over one connection,
    /// outside the per-destination limits (the queue uses [`Deliverer::try_deliver`]).
    /// Never panics; every recipient gets exactly one [`Attempt`].
    pub async fn deliver(&self, job: &Job<'_>) -> Vec<Attempt> {
        self.attempt(job).await.0
    }

    /// Like [`Deliverer::deliver`], within the destination's concurrency window: `Err` when
    /// the window is full (nothing was tried; the queue parks the message until
    /// [`Deliverer::destination_room`] says there is room). A dead destination's recipients
    /// are deferred at once, without a connection.
    pub async fn try_deliver(&self, job: &Job<'_>) -> Result<Vec<Attempt>, Busy> {
        if job.recipients.is_empty() {
            return Ok(Vec::new());
        }
        let destination = self.destination_of(job.domain);
        let mut slot = match self.destinations.admit(&destination) {
            Admission::Go(slot) => slot,
            Admission::Busy => return Err(Busy { destination }),
            Admission::Dead(reply) => {
                let failure = Failure::new(reply, None, Rank::Connect);
                return Ok(every_recipient(job, failure, AppliedPolicy::named("none")));
            }
        };
        let (attempts, feedback) = self.attempt(job).await;
        slot.feedback(feedback);
        Ok(attempts)
    }

    /// The destination a recipient domain's mail goes to: the route's next hop when one
    /// matches, else the domain.
    pub fn destination_of(&self, domain: &str) -> String {
        match route_for(&self.config.routes, domain) {
            Some(hop) if hop.no_mx => format!("[{}]:{}", hop.host, hop.port.unwrap_or(0)),
            Some(hop) => format!("{}:{}", hop.host, hop.port.unwrap_or(0)),
            None => domain.to_ascii_lowercase(),
        }
    }

    /// How many more deliveries `destination` takes now.
    pub fn destination_room(&self, destination: &str) -> usize {
        self.destinations.room(destination)
    }

    /// The attempts, and what they say about the destination's health.
    async fn attempt(&self, job: &Job<'_>) -> (Vec<Attempt>, Feedback) {
        let neutral = |attempts| (attempts, Feedback::Neutral);
        if job.recipients.is_empty() {
            return neutral(Vec::new());
        }
        let mut hops = match self.next_hops(job.domain).await {
            Ok(hops) => hops,
            Err(failure) => {
                let none = TlsRequirement::Opportunistic.applied(None);
                return neutral(every_recipient(job, failure, none));
            }
        };
        let mut local =
            LocalRequirement::for_job(&self.tls_policies, job.envelope, job.message, job.domain);
        local.dnssec_off = self.secure_dns.is_none();
        if !local.uses_published() {
            // RFC 8689 §4.1: TLS-Required: No sets DANE and MTA-STS aside (the plan would
            // ignore them; this spares the look-ups).
            hops.own_mx = false;
        }
        let dane = match self.dane(job.domain, &mut hops).await {
            Ok(dane) => dane,
            Err(failure) => {
                return neutral(every_recipient(job, failure, AppliedPolicy::named("dane")))
            }
        };
        let looked_up_at = SystemTime::now();
        let requirement = match self.requirement(job, &hops).await {
            Ok(requirement) => requirement,
            // With every host under DANE, MTA-STS would not be consulted anyway.
            Err(_) if dane.covers_all() => TlsRequirement::Opportunistic,
            Err(failure) => return neutral(every_recipient(job, failure, sts_unknown())),
        };
        let facts = |requirement| plan::Facts {
            domain: job.domain,
            hosts: &hops.hosts,
            port: hops.port,
            dane: &dane,
            requirement,
            local: &local,
        };
        let first = plan::plan(&facts(&requirement));
        let worst = match self.run(job, &first, &requirement).await {
            Ok(attempts) => return got_through(attempts),
            Err(worst) => worst,
        };
        let Some(newer) = self
            .recheck(job.domain, &requirement, &worst, looked_up_at)
            .await
        else {
            return failed(job, worst, &first);
        };
        let second = plan::plan(&facts(&newer));
        match self.run(job, &second, &newer).await {
            Ok(attempts) => got_through(attempts),
            Err(worst) => failed(job, worst, &second),
        }
    }

    /// DANE's plan for the domain's own MX hosts (RFC 7672 §2.2); a secure MX RRset also
    /// decides the hosts to try. A failure when the MX RRset is bogus or unverifiable.
    async fn dane(&self, domain: &str, hops: &mut NextHops) -> Result<DanePlan, Failure> {
        let Some(dns) = &self.secure_dns else {
            return Ok(DanePlan::none());
        };
        if !hops.own_mx {
            return Ok(DanePlan::none());
        }
        let dane = dane::plan(dns, domain, &hops.hosts, hops.port).await?;
        dane.log_verdicts(domain);
        if let Some(hosts) = &dane.hosts {
            hops.hosts = hosts.clone();
        }
        Ok(dane)
    }

    /// The static route if one matches, else the domain's MX hosts.
    async fn next_hops(&self, domain: &str) -> Result<NextHops, Failure> {
        let default_port = self.config.delivery.smtp_port;
        let routes = &self.config.routes;
        let hops = match route_for(routes, domain) {
            Some(hop) if hop.no_mx => NextHops {
                port: hop.port.unwrap_or(default_port),
                hosts: vec![hop.host],
                own_mx: false,
            },
            Some(hop) => NextHops {
                hosts: mx::mx_hosts(&self.resolver, &hop.host).await?,
                port: hop.port.unwrap_or(default_port),
                own_mx: false,
            },
            // RFC 5321 §5.1: an address literal (`bob@[192.0.2.1]`) names the host itself; it
            // is used directly, without MX lookup, and has no MTA-STS policy (RFC 8461 §4.1
            // concerns MX host names).
            None => match address_literal(domain) {
                Some(ip) => NextHops {
                    hosts: vec![ip.to_string()],
                    port: default_port,
                    own_mx: false,
                },
                None => NextHops {
                    hosts: mx::mx_hosts(&self.resolver, domain).await?,
                    port: default_port,
                    own_mx: true,
                },
            },
        };
        Ok(hops)
    }

    /// The TLS the job's hosts must offer: from the domain's MTA-STS policy when one applies.
    async fn requirement(&self, job: &Job<'_>, hops: &NextHops) -> Result<TlsRequirement, Failure> {
        let domain = job.domain;
        match &self.policies {
            Some(policies) if hops.own_mx => {
                let lookup = policies.lookup(domain).await;
                if let StsLookup::NoPolicy {
                    fetch_failure: Some(failure),
                    ..
                } = &lookup
                {
                    self.count_fetch_failure(job, failure);
                }
                requirement::requirement(lookup, domain)
            }
            _ => Ok(TlsRequirement::Opportunistic),
        }
    }

    /// RFC 8460 §4.3.1: a policy the domain announces but that could not be had counts as a
    /// failure of its `sts` policy (no session, so no addresses), once per delivery it
    /// leaves unprotected.
    fn count_fetch_failure(&self, job: &Job<'_>, failure: &policy_cache::FetchFailure) {
        let Some(counter) = &self.tls_reports else {
            return;
        };
        if job.envelope.tls_report {
            return;
        }
        use crate::report::counts::{FailureDetail, Policy, PolicyKind, SessionResult};
        let policy = Policy::new(PolicyKind::Sts, job.domain, Vec::new(), Vec::new());
        let detail: String = failure.detail.chars().take(200).collect();
        let result = SessionResult::Failure(FailureDetail {
            reason_code: Some(detail),
            ..FailureDetail::new(failure.result_type)
        });
        counter.record(&[policy], &result);
    }

    /// One pass over the plan's hosts, holding a session slot. `requirement` is the MTA-STS
    /// side the plan came from, for reporting its failures (TLS-RPT).
    async fn run(
        &self,
        job: &Job<'_>,
        plan: &DeliveryPlan,
        requirement: &TlsRequirement,
    ) -> Result<Vec<Attempt>, WorstFailure> {
        // Never closed; a failure to acquire would only mean "no limit".
        let _permit = self.sessions.acquire().await.ok();
        let mut run = Run::new(self, job, plan, requirement);
        match run.try_hosts().await {
            Some(attempts) => Ok(attempts),
            None => Err(run.into_worst()),
        }
    }

    /// RFC 8461 §5.1: "senders SHOULD check for an updated policy before failing" mail for an
    /// enforced policy. When every host failed because of the policy (not authorized, TLS,
    /// certificate) and the policy was not fetched just now, fetch it again; a policy that
    /// changed (id, mode or MX patterns) gets one more pass.
    async fn recheck(
        &self,
        domain: &str,
        requirement: &TlsRequirement,
        worst: &WorstFailure,
        looked_up_at: SystemTime,
    ) -> Option<TlsRequirement> {
        let TlsRequirement::StsEnforce(policy) = requirement else {
            return None;
        };
        // A policy fetched by this very lookup is as fresh as a re-fetch would be.
        if !worst.only_policy_failures() || policy.fetched_at >= looked_up_at {
            return None;
        }
        let policies = self.policies.as_ref()?;
        let refreshed = policies.refresh(domain).await;
        let Ok(newer) = requirement::requirement(refreshed, domain) else {
            tracing::info!("{domain}: MTA-STS re-check before failing: lookup failed");
            return None;
        };
        if !newer.differs_from(requirement) {
            tracing::info!(
                "{domain}: MTA-STS re-check before failing: policy {} unchanged",
                policy.id
            );
            return None;
        }
        let now = newer.applied(None);
        tracing::info!(
            "{domain}: MTA-STS re-check before failing: policy {} (enforce) changed, now \
             policy={}, sts_id={}; trying again",
            policy.id,
            now.name,
            now.sts.as_ref().map_or("-", |s| s.id.as_str())
        );
        Some(newer)
    }
}

/// The address of an address-literal domain (RFC 5321 §4.1.3): `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]` (the tag in any case); `None` for a domain name.
pub(crate) fn address_literal(domain: &str) -> Option<std::net::IpAddr> {
    let literal = domain.strip_prefix('[')?.strip_suffix(']')?;
    match literal.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => literal[5..]
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(std::net::IpAddr::V6),
        _ => literal
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(std::net::IpAddr::V4),
    }
}

/// The same failure for every recipient of the job.
fn every_recipient(job: &Job<'_>, failure: Failure, policy: AppliedPolicy) -> Vec<Attempt> {
    job.recipients
        .iter()
        .map(|&rcpt| Attempt {
            rcpt,
            reply: failure.reply.clone(),
            remote_reply: failure.remote_reply,
            relay: failure.relay.clone(),
            tls: failure.tls.as_deref().cloned().unwrap_or_default(),
            policy: policy.clone(),
            dsn_passed_on: false,
            conn_use: 0,
        })
        .collect()
}

/// Every recipient gets the most informative failure of a pass in which no host took the mail.
fn failed(job: &Job<'_>, worst: WorstFailure, plan: &DeliveryPlan) -> (Vec<Attempt>, Feedback) {
    let failure = worst.take().unwrap_or_else(|| no_host(job.domain));
    let feedback = match unwell(&failure.reply) || failure.rank == Rank::Connect {
        true => Feedback::Failure(failure.reply.clone()),
        false => Feedback::Neutral,
    };
    let policy = plan.policy_for(failure.relay.as_ref().map(|r| r.host.as_str()));
    (every_recipient(job, failure, policy), feedback)
}

/// A session reached a transaction: the destination is well, unless it closed on us with 421
/// (or the connection broke) before taking anything.
fn got_through(attempts: Vec<Attempt>) -> (Vec<Attempt>, Feedback) {
    let feedback = match attempts.iter().all(|a| unwell(&a.reply)) {
        true => attempts
            .first()
            .map_or(Feedback::Success, |a| Feedback::Failure(a.reply.clone())),
        false => Feedback::Success,
    };
    (attempts, feedback)
}

/// A reply that says the destination is unwell, not that it refused the mail: 421 (closing),
/// or our 4.4.2 for a connection that broke or timed out.
fn unwell(reply: &Reply) -> bool {
    reply.code == 421 || reply.enhanced == Some(EnhancedCode::new(4, 4, 2))
}

/// The destination's window was full: nothing was tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub destination: String,
}

/// The log facts when the MTA-STS lookup itself failed: MTA-STS decided, no policy known.
fn sts_unknown() -> AppliedPolicy {
    AppliedPolicy {
        name: "mta-sts".to_string(),
        sts: Some(StsFacts {
            id: "-".to_string(),
            mx: None,
        }),
        tlsa_digest: None,
    }
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
    fn address_literals() {
        assert_eq!(
            address_literal("[192.0.2.1]"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            address_literal("[ipv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(address_literal("[2001:db8::1]"), None);
        assert_eq!(address_literal("example.net"), None);
        assert_eq!(address_literal("[300.0.0.1]"), None);
    }

    #[test]
    fn builds_with_configured_nameservers_outside_a_runtime() {
        let mut config = Config::default();
        config.dns.nameservers = vec!["127.0.0.1:53".parse().unwrap()];
        assert!(Deliverer::new(Arc::new(config), None).is_ok());
    }

    #[tokio::test]
    async fn a_job_without_recipients_has_no_attempts() {
        let mut config = Config::default();
        config.dns.nameservers = vec!["127.0.0.1:9".parse().unwrap()];
        let deliverer = Deliverer::new(Arc::new(config), None).unwrap();
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
