//! One pass over a job's hosts under its TLS requirement: hosts in order (RFC 5321 §5.1), each
//! host's addresses in order, until a session reaches a transaction.
//!
//! What the requirement changes (RFC 8461 §4, §5): under an enforced MTA-STS policy, hosts
//! outside the policy are skipped and the others must give verified TLS, with no plaintext
//! fallback; under a testing policy, delivery is opportunistic but every would-be failure is
//! reported to the policy cache (for TLS-RPT, RFC 8460). Each pass evaluates its own job's
//! policy: nothing learnt about a host is kept for another job, whose domain may say otherwise.

use super::attempt::AppliedPolicy;
use super::attempt::{Attempt, Failure, Rank, Relay, WorstFailure};
use super::dane::DaneAuth;
use super::plan::{DeliveryPlan, PlannedHost};
use super::pool::{self, Pooled};
use super::requirement::{HostPlan, TlsRequirement};
use super::session::{self, Connection, Next, Session, SessionContext, StartTls, StartTlsSeen};
use super::tls::CheckedHandshake;
use super::tls_failure::{ResultType, TlsFailure};
use super::tlsrpt::{self, PeerFacts};
use super::transaction::{End, Outcome, Transaction};
use super::{mx, Deliverer, Job, MAX_ADDRESSES};
use crate::reply::{EnhancedCode, Reply};
use crate::report::counts::SessionResult;
use policy_cache::FailureRecord;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;
use tokio_rustls::TlsConnector;

/// One pass over the hosts of one job under one requirement.
pub(crate) struct Run<'a> {
    deliverer: &'a Deliverer,
    job: &'a Job<'a>,
    /// The hosts, and what each must meet.
    plan: &'a DeliveryPlan,
    /// The MTA-STS side of the plan, for reporting what fails under it (TLS-RPT).
    requirement: &'a TlsRequirement,
    /// The log facts of the host being tried.
    policy: AppliedPolicy,
    /// The failure to report if no host takes the mail.
    worst: WorstFailure,
    /// A host outside the policy already counts as a failure: only the most preferred one
    /// is named to the recipients.
    unauthorized_counted: bool,
    /// The host being tried is the first of the plan (a mail loop there is permanent).
    best_mx: bool,
    /// The host being tried, for counting its sessions (TLS-RPT).
    current: Option<&'a PlannedHost>,
    /// A would-be failure of the session being opened (MTA-STS testing): it counts as a
    /// failed session for TLS-RPT even though the mail goes ahead.
    probe_failure: Option<SessionResult>,
}

impl<'a> Run<'a> {
    pub fn new(
        deliverer: &'a Deliverer,
        job: &'a Job<'a>,
        plan: &'a DeliveryPlan,
        requirement: &'a TlsRequirement,
    ) -> Run<'a> {
        Run {
            deliverer,
            job,
            plan,
            requirement,
            policy: AppliedPolicy::named(super::requirement::NO_POLICY),
            worst: WorstFailure::default(),
            unauthorized_counted: false,
            best_mx: false,
            current: None,
            probe_failure: None,
        }
    }

    pub fn into_worst(self) -> WorstFailure {
        self.worst
    }

    /// Hosts in order, each host's addresses in order, up to [`MAX_ADDRESSES`]. `None` when no
    /// session reached a transaction; the worst failure then says why.
    pub async fn try_hosts(&mut self) -> Option<Vec<Attempt>> {
        let mut budget = MAX_ADDRESSES;
        let plan = self.plan;
        'hosts: for (index, planned) in plan.hosts.iter().enumerate() {
            if budget == 0 {
                break;
            }
            self.best_mx = index == 0;
            self.policy = planned.policy.clone();
            self.current = Some(planned);
            let host = &planned.name;
            if !self.admit(host, &planned.plan) {
                continue;
            }
            if let Some(attempts) = self.try_pooled(planned).await {
                return Some(attempts);
            }
            // RFC 5321 §5.1: a host whose address cannot be found is skipped.
            let addrs = match mx::host_addresses(&self.deliverer.resolver, host).await {
                Ok(addrs) => addrs,
                Err(failure) => {
                    self.worst.record(failure);
                    continue;
                }
            };
            for ip in addrs.into_iter().take(budget) {
                budget -= 1;
                let relay = Relay {
                    host: host.clone(),
                    addr: SocketAddr::new(ip, plan.port),
                };
                match self.try_address(&relay, planned).await {
                    Ok(attempts) => return Some(attempts),
                    Err(Next::Host) => continue 'hosts,
                    Err(_) => continue,
                }
            }
        }
        None
    }

    /// Sessions the pool holds for this host under exactly its requirement, until one carries
    /// the transaction. A dead one is closed and the next tried, then a new connection.
    async fn try_pooled(&mut self, planned: &PlannedHost) -> Option<Vec<Attempt>> {
        let requirement = planned.session_requirement(self.plan.requiretls);
        let pool = &self.deliverer.pool;
        while let Some(pooled) = pool.take(&planned.name, self.plan.port, &requirement) {
            if let Ok(attempts) = self.transact(pooled).await {
                return Some(attempts);
            }
        }
        None
    }

    /// Whether to try `host` at all; reports a host outside the policy.
    fn admit(&mut self, host: &str, plan: &HostPlan) -> bool {
        match plan {
            HostPlan::Skip(
                failure @ (TlsFailure::TlsaLookup { .. }
                | TlsFailure::DaneRequired { .. }
                | TlsFailure::RequireTls { .. }),
            ) => {
                // RFC 7672 §2.1.1: a host whose TLSA records cannot be had is unusable for
                // now; never tried with less security. A host the local requirement (or
                // REQUIRETLS) refuses is not tried either.
                let domain = self.job.domain;
                tracing::info!("{domain}: skipping MX host {host}: {}", failure.detail());
                if !matches!(failure, TlsFailure::RequireTls { .. }) {
                    self.count_failure(failure, None, &PeerFacts::default());
                }
                self.worst.record(failure.clone().into_failure(None));
                false
            }
            HostPlan::Skip(failure) => {
                // RFC 8461 §4.1: senders must not deliver to MX hosts that match no pattern.
                let domain = self.job.domain;
                tracing::info!("{domain}: skipping MX host {host}: {}", failure.detail());
                self.report(host, failure);
                self.count_failure(failure, None, &PeerFacts::default());
                if !self.unauthorized_counted {
                    self.unauthorized_counted = true;
                    self.worst.record(failure.clone().into_failure(None));
                }
                false
            }
            HostPlan::Probe { pattern: None } => {
                // RFC 8461 §5: in testing mode, deliver anyway, but report.
                let failure = TlsFailure::NotAuthorized {
                    host: host.to_string(),
                    domain: self.job.domain.to_string(),
                };
                self.report(host, &failure);
                true
            }
            _ => true,
        }
    }

    /// One address: a session as the host's plan says, then the transaction. On failure,
    /// records why and says what to try next.
    async fn try_address(
        &mut self,
        relay: &Relay,
        planned: &PlannedHost,
    ) -> Result<Vec<Attempt>, Next> {
        self.probe_failure = None;
        let session = match &planned.plan {
            HostPlan::Verified { .. } => self.open_verified(relay).await?,
            HostPlan::Secure { domain, mx_pattern } => {
                let mx_host = mx_pattern.as_ref().map(|_| relay.host.as_str());
                let checked = self.tls_setup(self.deliverer.pkix.secure(domain, mx_host))?;
                self.open_required(relay, &checked, None).await?
            }
            HostPlan::Plaintext => {
                let ctx = self.session_context();
                session::open(&ctx, relay, StartTls::Skip)
                    .await
                    .map_err(|e| {
                        self.worst.record(e.failure);
                        e.next
                    })?
            }
            HostPlan::Probe { pattern } => self.open_probe(relay, pattern.is_none()).await?,
            HostPlan::Opportunistic => {
                let connector = &self.deliverer.opportunistic;
                self.open_opportunistic(relay, connector, false).await?
            }
            HostPlan::Dane(auth) => self.open_dane(relay, auth).await?,
            HostPlan::Encrypt => self.open_encrypted(relay).await?,
            HostPlan::Skip(_) => return Err(Next::Host),
        };
        self.count_session(planned, &session);
        let session = self.check_requiretls(session).await?;
        let pooled = Pooled {
            session,
            requirement: planned.session_requirement(self.plan.requiretls),
            opened: tokio::time::Instant::now(),
            uses: 0,
            reset: false,
        };
        // A new session is never stale: what it got is the destination's answer.
        match self.transact(pooled).await {
            Ok(attempts) => Ok(attempts),
            Err(Stale) => Err(Next::Address),
        }
    }

    /// RFC 8689 §4.2.1: a REQUIRETLS message goes only to a server that advertises
    /// REQUIRETLS (after TLS: the EHLO reply that counts).
    async fn check_requiretls(&mut self, mut session: Session) -> Result<Session, Next> {
        if !self.plan.requiretls || session.extensions.has(smtp_proto::EXT_REQUIRE_TLS) {
            return Ok(session);
        }
        let failure = TlsFailure::RequireTls {
            host: session.relay.host_ip(),
            reason: "did not advertise REQUIRETLS".into(),
        };
        tracing::info!("{}: {}", session.relay, failure.detail());
        match &mut session.connection {
            Connection::Plain(client) => session::quit(client).await,
            Connection::Tls(client) => session::quit(client.as_mut()).await,
        }
        let mut failure = failure.into_failure(Some(session.relay.clone()));
        failure.tls = Some(Box::new(session.tls.clone()));
        self.worst.record(failure);
        Err(Next::Host)
    }

    fn session_context(&self) -> SessionContext<'a> {
        let config = &self.deliverer.config;
        SessionContext {
            hostname: &config.hostname,
            connect_timeout: config.delivery.connect_timeout,
            command_timeout: config.delivery.command_timeout,
            best_mx: self.best_mx,
            next_hop: self.job.domain,
        }
    }

    /// STARTTLS if offered, else (or after a failed handshake) plaintext: Postfix level `may`.
    /// With `probe`, a failed handshake is reported as a policy would-be failure.
    async fn open_opportunistic(
        &mut self,
        relay: &Relay,
        connector: &TlsConnector,
        probe: bool,
    ) -> Result<Session, Next> {
        let ctx = self.session_context();
        match session::open(&ctx, relay, StartTls::Opportunistic(connector)).await {
            Ok(session) => Ok(session),
            Err(e) if e.next == Next::Plaintext => {
                let failure = TlsFailure::Handshake(e.failure.reply.text.clone());
                if probe {
                    self.report(&relay.host, &failure);
                }
                // The failed handshake is the session that counts; the plaintext retry that
                // follows is not counted again.
                self.count_failure(&failure, Some(relay), &e.peer);
                self.worst.record(e.failure);
                session::open(&ctx, relay, StartTls::Skip)
                    .await
                    .map_err(|e| {
                        self.worst.record(e.failure);
                        e.next
                    })
            }
            Err(e) => {
                self.worst.record(e.failure);
                Err(e.next)
            }
        }
    }

    /// RFC 8461 §4.2, §5 (enforce): STARTTLS offered, TLS 1.2+, a certificate PKIX-valid for
    /// the MX host name, or no session at all.
    async fn open_verified(&mut self, relay: &Relay) -> Result<Session, Next> {
        let checked = self.checked_handshake(true)?;
        let ctx = self.session_context();
        let required = StartTls::Required {
            checked: &checked,
            sni: None,
        };
        match session::open(&ctx, relay, required).await {
            Ok(session) => Ok(session),
            Err(e) => {
                if let Some(result_type) = e.failure.result_type {
                    self.report_raw(&relay.host, result_type, &e.failure.reply.text);
                }
                self.count_session_error(relay, &e);
                self.worst.record(e.failure);
                Err(e.next)
            }
        }
    }

    /// RFC 7672 §3: STARTTLS offered, and a certificate that matches the host's TLSA
    /// records, or no session at all.
    async fn open_dane(&mut self, relay: &Relay, auth: &DaneAuth) -> Result<Session, Next> {
        let checked = self.tls_setup(
            self.deliverer
                .pkix
                .dane(auth.records.clone(), auth.names.clone()),
        )?;
        let session = self.open_required(relay, &checked, Some(&auth.sni)).await?;
        if let Some(matched) = checked.dane_match() {
            tracing::info!("{relay}: DANE {} {matched}", auth.tlsa_name);
        }
        Ok(session)
    }

    /// TLS mandatory, the certificate unchecked (RFC 7672 §2.2: no usable TLSA record).
    async fn open_encrypted(&mut self, relay: &Relay) -> Result<Session, Next> {
        let checked = self.tls_setup(self.deliverer.pkix.encrypt_only())?;
        self.open_required(relay, &checked, None).await
    }

    /// A session whose STARTTLS must succeed with `checked`; `sni` overrides the host name.
    async fn open_required(
        &mut self,
        relay: &Relay,
        checked: &CheckedHandshake,
        sni: Option<&str>,
    ) -> Result<Session, Next> {
        let ctx = self.session_context();
        session::open(&ctx, relay, StartTls::Required { checked, sni })
            .await
            .map_err(|e| {
                self.count_session_error(relay, &e);
                self.worst.record(e.failure);
                e.next
            })
    }

    /// RFC 8461 §5 (testing): opportunistic delivery, with the certificate checked as
    /// enforce mode would, and every would-be failure reported.
    /// `unauthorized`: the host matches no `mx` of the policy (reported already by
    /// [`Run::admit`]; here it makes the session count as failed).
    async fn open_probe(&mut self, relay: &Relay, unauthorized: bool) -> Result<Session, Next> {
        let checked = self.checked_handshake(false)?;
        let session = self
            .open_opportunistic(relay, &checked.connector, true)
            .await?;
        let failure = match &session.starttls {
            StartTlsSeen::NotOffered => Some(TlsFailure::NotOffered),
            StartTlsSeen::Refused(r) => Some(TlsFailure::Refused(r.clone())),
            StartTlsSeen::Started => match checked.verdict() {
                Some(Err(e)) => Some(TlsFailure::Certificate(e)),
                _ => None,
            },
            StartTlsSeen::NotTried => None,
        };
        if let Some(failure) = &failure {
            self.report(&relay.host, failure);
        }
        // What the session counts as (TLS-RPT): a certificate that enforce mode would have
        // refused, else a host outside the policy; STARTTLS not had is counted by
        // `count_session` for every opportunistic session alike.
        let counted = match failure {
            Some(f @ TlsFailure::Certificate(_)) => Some(f),
            _ if unauthorized => Some(TlsFailure::NotAuthorized {
                host: relay.host.clone(),
                domain: self.job.domain.to_string(),
            }),
            _ => None,
        };
        if let (Some(f), Some(planned)) = (counted, self.current) {
            self.probe_failure = Some(tlsrpt::failure_detail(
                f.result_type(),
                f.reason_code().as_deref(),
                Some(relay),
                &planned.name,
                &session.peer,
                None,
            ));
        }
        Ok(session)
    }

    /// A connector of its own for one handshake. Failing to build one is our fault, never the
    /// destination's: transient 4.3.0, never 4.7.5 (DESIGN.md), and ranked high so that the
    /// operator sees it rather than whatever other hosts said.
    fn checked_handshake(&mut self, enforce: bool) -> Result<CheckedHandshake, Next> {
        self.tls_setup(self.deliverer.pkix.handshake(enforce))
    }

    fn tls_setup(
        &mut self,
        built: Result<CheckedHandshake, rustls::Error>,
    ) -> Result<CheckedHandshake, Next> {
        built.map_err(|e| {
            tracing::error!("TLS client setup: {e}");
            self.worst.record(Failure::new(
                Reply::new(
                    451,
                    EnhancedCode::new(4, 3, 0),
                    format!("TLS client setup failed: {e}"),
                ),
                None,
                Rank::Reply,
            ));
            Next::Host
        })
    }

    /// A policy failure at `mx_host`, for the policy cache's record and the log.
    fn report(&self, mx_host: &str, failure: &TlsFailure) {
        self.report_raw(mx_host, failure.result_type(), &failure.detail());
    }

    /// Counts a failed session (or a host refused before dialling: `relay` is `None`) with
    /// the current host, for TLS-RPT.
    fn count_failure(&self, failure: &TlsFailure, relay: Option<&Relay>, peer: &PeerFacts) {
        let Some(planned) = self.current else { return };
        let outcome = tlsrpt::failure_detail(
            failure.result_type(),
            failure.reason_code().as_deref(),
            relay,
            &planned.name,
            peer,
            None,
        );
        self.count(planned, &outcome);
    }

    /// Counts a session that failed under a requirement, if it failed on TLS (a connection
    /// refused or a server that would not talk never reached the TLS decision).
    fn count_session_error(&self, relay: &Relay, e: &session::SessionError) {
        let (Some(planned), Some(result_type)) = (self.current, e.failure.result_type) else {
            return;
        };
        let outcome = tlsrpt::failure_detail(
            result_type,
            e.reason_code.as_deref(),
            Some(relay),
            &planned.name,
            &e.peer,
            None,
        );
        self.count(planned, &outcome);
    }

    /// Counts a session that was opened: a success, unless TLS was not had where it was
    /// tried (opportunistic and testing) or a would-be failure was seen (testing).
    fn count_session(&mut self, planned: &PlannedHost, session: &Session) {
        let outcome = match (self.probe_failure.take(), &session.starttls) {
            (Some(failure), _) => failure,
            (None, StartTlsSeen::Started) => SessionResult::Success,
            (None, StartTlsSeen::NotOffered) => tlsrpt::failure_detail(
                ResultType::StarttlsNotSupported,
                None,
                Some(&session.relay),
                &planned.name,
                &session.peer,
                None,
            ),
            (None, StartTlsSeen::Refused(r)) => {
                let failure = TlsFailure::Refused(r.clone());
                tlsrpt::failure_detail(
                    failure.result_type(),
                    failure.reason_code().as_deref(),
                    Some(&session.relay),
                    &planned.name,
                    &session.peer,
                    None,
                )
            }
            // Plaintext by choice (a local `none`), or the retry after a failed handshake,
            // which was counted then.
            (None, StartTlsSeen::NotTried) => return,
        };
        self.count(planned, &outcome);
    }

    fn count(&self, planned: &PlannedHost, outcome: &SessionResult) {
        if let SessionResult::Failure(detail) = outcome {
            crate::metrics::tls_failure(&detail.result_type);
        }
        // RFC 8460 §5.3: the sessions that carry our own reports are not reported on.
        if self.job.envelope.tls_report {
            return;
        }
        if let Some(counter) = &self.deliverer.tls_reports {
            counter.record(
                &tlsrpt::policies(self.plan, planned, self.requirement),
                outcome,
            );
        }
    }

    fn report_raw(&self, mx_host: &str, result_type: ResultType, detail: &str) {
        let mode = match self.requirement {
            TlsRequirement::StsEnforce(_) => "enforce",
            TlsRequirement::StsTesting(_) => "testing",
            TlsRequirement::Opportunistic => return,
        };
        let (Some(policies), Some(policy)) = (&self.deliverer.policies, self.requirement.sts())
        else {
            return;
        };
        tracing::info!(
            "{}: MTA-STS {mode} policy {} failure at {mx_host}: {}: {detail}",
            policy.domain,
            policy.id,
            result_type.as_str()
        );
        policies.record_failure(FailureRecord {
            domain: policy.domain.clone(),
            policy_id: policy.id.clone(),
            mode: mode.to_string(),
            mx_host: mx_host.to_string(),
            result_type: result_type.as_str().to_string(),
            detail: detail.to_string(),
            at: SystemTime::now(),
        });
    }

    /// The transaction over a session, fresh or from the pool; afterwards the session goes
    /// back to the pool or is closed. `Err` when a pooled session turned out dead before it
    /// carried anything: the caller tries another (nothing is counted as an attempt).
    async fn transact(&self, mut pooled: Pooled) -> Result<Vec<Attempt>, Stale> {
        let reused = pooled.uses > 0;
        let session = &mut pooled.session;
        let tx = Transaction {
            job: self.job,
            relay: &session.relay,
            extensions: session.extensions,
            data_timeout: self.deliverer.config.delivery.data_timeout,
            convert_8bit: self.deliverer.config.delivery.mime_output_conversion,
            reused,
            body_started: AtomicBool::new(false),
        };
        let (replies, end) = match &mut session.connection {
            Connection::Plain(client) => tx.run(client, pooled.reset).await,
            Connection::Tls(client) => tx.run(client.as_mut(), pooled.reset).await,
        };
        if end == End::Stale {
            tracing::info!(
                "{}: reused session no longer usable ({}); trying a new one",
                session.relay,
                replies
                    .first()
                    .map_or(String::new(), |(_, o)| o.reply.to_string())
            );
            return Err(Stale);
        }
        pooled.uses += 1;
        let attempts = self.attempts(&pooled, replies);
        match end {
            End::Open { reset } => {
                pooled.reset = reset;
                if let Some(pooled) = self.deliverer.pool.put(pooled) {
                    pool::close(pooled.session).await;
                }
            }
            _ => pool::close(pooled.session).await,
        }
        Ok(attempts)
    }

    /// One attempt per recipient from a session's replies.
    fn attempts(&self, pooled: &Pooled, replies: Vec<(usize, Outcome)>) -> Vec<Attempt> {
        let session = &pooled.session;
        let dsn_passed_on = session.extensions.has(smtp_proto::EXT_DSN);
        replies
            .into_iter()
            .map(|(rcpt, outcome)| Attempt {
                rcpt,
                reply: outcome.reply,
                remote_reply: outcome.remote,
                relay: Some(session.relay.clone()),
                tls: session.tls.clone(),
                policy: self.policy.clone(),
                dsn_passed_on,
                conn_use: pooled.uses,
            })
            .collect()
    }
}

/// A pooled session that was dead when taken.
pub(crate) struct Stale;
