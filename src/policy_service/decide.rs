//! The look-ups behind one answer, in delivery's order and with delivery's code (the steps of
//! `Deliverer::attempt` for a domain's own MX hosts): MX resolution (RFC 5321 §5.1, RFC 7505),
//! DANE's plan from DNSSEC-validated answers (RFC 7672 §2.2), the MTA-STS policy from the
//! daemon's own cache (RFC 8461 §5.1), the destination table's minimum, then the pure plan
//! (`delivery::plan`) and its answer ([`super::answer`]). No policy rule lives here.

use super::answer::{self, Answer, Decision};
use crate::config::Config;
use crate::delivery::dane::{self, DanePlan};
use crate::delivery::local::LocalRequirement;
use crate::delivery::requirement::{self, TlsRequirement};
use crate::delivery::{dns, mx, plan};
use crate::dnssec::SecureResolver;
use crate::tls_policy::TlsPolicies;
use hickory_resolver::TokioResolver;
use policy_cache::PolicyCache;
use std::sync::Arc;

/// Decides domains with the daemon's resolvers, cache and tables.
pub(crate) struct Decider {
    /// Plain look-ups (MX, addresses), as delivery's.
    resolver: TokioResolver,
    /// DNSSEC for DANE (`dns.dnssec`); `None` when it is off: no DANE answer then.
    secure: Option<SecureResolver>,
    /// The daemon's MTA-STS cache, shared with delivery; `None` with `mta_sts.enabled = false`.
    policies: Option<Arc<PolicyCache>>,
    /// The destination table (`delivery.tls_policy_file`), reloaded by the daemon.
    tables: Arc<TlsPolicies>,
    /// `delivery.smtp_port`: where the TLSA records are looked up (`_PORT._tcp.host`).
    port: u16,
    /// `policy_service.strict_testing`: a `testing` policy is answered as `enforce`.
    strict_testing: bool,
    /// `policy_service.require_sni`.
    require_sni: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideSetupError {
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("DNSSEC: {0}")]
    Dnssec(#[from] crate::dnssec::DnssecSetupError),
}

impl Decider {
    pub fn new(
        config: &Config,
        policies: Option<Arc<PolicyCache>>,
        tables: Arc<TlsPolicies>,
    ) -> Result<Decider, DecideSetupError> {
        let resolver = dns::build_resolver(&config.dns)
            .map_err(|e| DecideSetupError::Resolver(e.to_string()))?;
        Ok(Decider {
            resolver,
            secure: SecureResolver::from_config(&config.dns)?.map(|r| {
                let capacity = usize::try_from(config.dns.cache_size).unwrap_or(usize::MAX);
                r.with_answer_cache(capacity, super::DNSSEC_ANSWER_TIME)
            }),
            policies,
            tables,
            port: config.delivery.smtp_port,
            strict_testing: config.policy_service.strict_testing,
            require_sni: config.policy_service.require_sni,
        })
    }

    /// mxguard's answer for mail domain `domain` (lower case, A-labels). The MTA-STS look-up
    /// depends only on the domain, so it runs beside the MX and DANE look-ups; the results
    /// are combined exactly as delivery combines them.
    pub async fn decide(&self, domain: &str) -> Answer {
        let (hosts, sts) = tokio::join!(self.hosts(domain), self.requirement(domain));
        let (hosts, dane) = match hosts {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let requirement = match sts {
            Ok(r) => r,
            // As delivery: with every host under DANE, MTA-STS is not consulted.
            Err(_) if dane.covers_all() => TlsRequirement::Opportunistic,
            // RFC 8461 §5: a failed lookup is not the absence of a policy.
            Err(why) => return Answer::Temp(why),
        };
        // A destination-table level for the domain; no sender, listener, REQUIRETLS or
        // `TLS-Required: No`: those belong to a message, which Postfix does not show us.
        let local = LocalRequirement {
            floor: self.tables.floor("", None, domain),
            dnssec_off: self.secure.is_none(),
            ..LocalRequirement::default()
        };
        let plan = plan::plan(&plan::Facts {
            domain,
            hosts: &hosts,
            port: self.port,
            dane: &dane,
            requirement: &requirement,
            local: &local,
        });
        answer::answer(&Decision {
            plan: &plan,
            dane: &dane,
            requirement: &requirement,
            require_sni: self.require_sni,
        })
    }

    /// The hosts to plan for and DANE's verdict on them, or the answer when there is nothing
    /// to plan: `NOTFOUND` for NXDOMAIN or a null MX (RFC 7505; no mail goes there, and Postfix
    /// finds the same in its own MX look-up), `TEMP` for a failed MX look-up or a bogus or
    /// unverifiable MX RRset (delivery waits too, 4.7.0).
    async fn hosts(&self, domain: &str) -> Result<(Vec<String>, DanePlan), Answer> {
        let hosts = match mx::mx_hosts(&self.resolver, domain).await {
            Ok(hosts) => hosts,
            Err(failure) if failure.reply.code >= 500 => return Err(Answer::NotFound),
            Err(failure) => return Err(Answer::Temp(failure.reply.text)),
        };
        let dane = match &self.secure {
            Some(dns) => dane::plan(dns, domain, &hosts, self.port)
                .await
                .map_err(|failure| Answer::Temp(failure.reply.text))?,
            None => DanePlan::none(),
        };
        // A secure MX RRset decides the hosts: an insecure answer cannot add one.
        let hosts = dane.hosts.clone().unwrap_or(hosts);
        Ok((hosts, dane))
    }

    /// The MTA-STS requirement from the daemon's cache (no fetch when a policy is cached and
    /// its TXT id unchanged); with `strict_testing`, testing counts as enforce.
    async fn requirement(&self, domain: &str) -> Result<TlsRequirement, String> {
        let Some(policies) = &self.policies else {
            return Ok(TlsRequirement::Opportunistic);
        };
        let requirement = requirement::requirement(policies.lookup(domain).await, domain)
            .map_err(|failure| failure.reply.text)?;
        Ok(match requirement {
            TlsRequirement::StsTesting(policy) if self.strict_testing => {
                TlsRequirement::StsEnforce(policy)
            }
            other => other,
        })
    }
}
