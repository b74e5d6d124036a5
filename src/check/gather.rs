//! Gathering the facts: MX resolution, DNSSEC status, addresses and TLSA records, DANE's plan,
//! each with the code and configuration delivery uses; then each host's policy and probes.

use super::checker::{hex, Checker};
use super::{
    probe, sts, verdict, DaneReport, DaneState, Dnssec, EffectivePolicy, HostReport, MxEntry,
    MxKind, MxReport, PolicyKind, Report, Rrset, Settings, TlsaRecord, TlsaReport, TypedRrset,
};
use crate::config::DnssecMode;
use crate::delivery::dane::{self, DanePlan, HostDane};
use crate::delivery::dns::{self, LookupError};
use crate::delivery::local::LocalRequirement;
use crate::delivery::mx::{self, MxAnswer};
use crate::delivery::plan::{self, DeliveryPlan};
use crate::delivery::requirement::{self, TlsRequirement};
use crate::dnssec::{DnssecFailure, Secured, Security};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use policy_cache::dane::Tlsa;
use std::net::IpAddr;

/// What the domain-wide look-ups decided, shared by every host's report.
struct Domain<'a> {
    name: &'a str,
    port: u16,
    dane: DanePlan,
    requirement: TlsRequirement,
    /// The destination table's minimum for the domain; no sender or listener level, and
    /// neither REQUIRETLS nor `TLS-Required: No` (those belong to a message).
    local: LocalRequirement,
    /// The plan delivery would follow (the same function computes it).
    plan: DeliveryPlan,
    /// Why no MTA-STS policy sets the requirement (when none does).
    no_sts: String,
    /// The MX RRset's DNSSEC status, for "why no DANE".
    mx_dnssec: Rrset,
    preferences: Vec<(String, u16)>,
    connect: bool,
}

impl<'a> Checker<'a> {
    /// The whole report for `domain` (normalized: lower case, no trailing dot).
    pub async fn check(&self, domain: &str, connect: bool) -> Report {
        let port = self.config.delivery.smtp_port;
        let route = crate::delivery::route_for(&self.config.routes, domain).map(|hop| {
            let port = hop.port.unwrap_or(port);
            match hop.no_mx {
                true => format!("[{}]:{port}", hop.host),
                false => format!("{}:{port} (its MX hosts)", hop.host),
            }
        });
        let (mut mx, resolved) = self.mx(domain).await;
        let mut delivery_error = resolved.as_ref().err().cloned();
        let mut hosts = resolved.unwrap_or_default();
        let literal = crate::delivery::address_literal(domain).is_some();
        let dane = match &self.secure {
            // As delivery: an address literal is used as is, without DANE or MTA-STS.
            Some(dns) if !hosts.is_empty() && !literal => {
                match dane::plan(dns, domain, &hosts, port).await {
                    Ok(plan) => {
                        if let Some(secure_hosts) = &plan.hosts {
                            hosts = secure_hosts.clone();
                        }
                        plan
                    }
                    Err(failure) => {
                        delivery_error = Some(failure.reply.to_string());
                        DanePlan::none()
                    }
                }
            }
            _ => DanePlan::none(),
        };
        let (mut mta_sts, lookup) = self.mta_sts(domain).await;
        let (requirement, no_sts) = if self.config.mta_sts.enabled {
            let no_sts = sts::no_sts_reason(&lookup);
            match requirement::requirement(lookup, domain) {
                Ok(r) => (r, no_sts),
                // As delivery: with every host under DANE, MTA-STS is not consulted.
                Err(_) if dane.covers_all() => (TlsRequirement::Opportunistic, no_sts),
                Err(failure) => {
                    delivery_error.get_or_insert(failure.reply.to_string());
                    (TlsRequirement::Opportunistic, no_sts)
                }
            }
        } else {
            let why = "MTA-STS is disabled (mta_sts.enabled = false)".to_string();
            (TlsRequirement::Opportunistic, why)
        };
        let preferences = std::mem::take(&mut mx.preferences);
        // The null sender has no sender level: only the destination table counts.
        let local = LocalRequirement {
            floor: self.tls_policies.floor("", None, domain),
            dnssec_off: self.secure.is_none(),
            ..LocalRequirement::default()
        };
        let plan = plan::plan(&plan::Facts {
            domain,
            hosts: &hosts,
            port,
            dane: &dane,
            requirement: &requirement,
            local: &local,
        });
        let ctx = Domain {
            name: domain,
            port,
            dane,
            requirement,
            local,
            plan,
            no_sts,
            mx_dnssec: mx.report.dnssec.clone(),
            preferences,
            connect,
        };
        mx.report.hosts = hosts
            .iter()
            .map(|h| MxEntry {
                name: h.clone(),
                preference: ctx.preference(h),
            })
            .collect();
        let mut host_reports =
            futures::future::join_all(hosts.iter().map(|h| self.host(&ctx, h))).await;
        mta_sts.authorized = sts::authorizations(&mta_sts, &hosts);
        let overridden = match (&route, literal) {
            (Some(route), _) => Some(format!(
                "mail for {domain} goes to the static route {route}: DANE and MTA-STS are not \
                 applied to static routes"
            )),
            (None, true) => Some(format!(
                "{domain} is an address literal: the host itself, without MX, DANE or MTA-STS"
            )),
            (None, false) => None,
        };
        if let Some(why) = &overridden {
            for host in &mut host_reports {
                host.policy = EffectivePolicy::new(PolicyKind::None, why.clone());
            }
        }
        let policy = verdict::domain_policy(&verdict::DomainFacts {
            domain,
            hosts: &host_reports,
            requirement: &ctx.requirement,
            no_dane: &ctx.no_dane_reason(),
            no_sts: &ctx.no_sts,
            delivery_error: delivery_error.as_deref(),
            overridden: overridden.as_deref(),
        });
        Report {
            domain: domain.to_string(),
            settings: self.settings(connect, &ctx.local),
            route,
            mx: mx.report,
            hosts: host_reports,
            mta_sts,
            policy,
            delivery_error,
        }
    }

    fn settings(&self, connect: bool, local: &LocalRequirement) -> Settings {
        Settings {
            dnssec: match self.config.dns.dnssec {
                DnssecMode::Validate => "validate",
                DnssecMode::TrustAd => "trust-ad",
                DnssecMode::Off => "off",
            }
            .to_string(),
            nameservers: self
                .config
                .dns
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect(),
            smtp_port: self.config.delivery.smtp_port,
            mta_sts_enabled: self.config.mta_sts.enabled,
            local_level: local.floor.map(|f| f.level.to_string()),
            connect,
        }
    }

    /// The MX RRset: its DNSSEC status, what it says, and the hosts delivery would try (or
    /// delivery's failure text).
    async fn mx(&self, domain: &str) -> (MxFacts, Result<Vec<String>, String>) {
        if let Some(ip) = crate::delivery::address_literal(domain) {
            let facts = MxFacts::new(MxKind::AddressLiteral, unchecked("no MX lookup"));
            return (facts, Ok(vec![ip.to_string()]));
        }
        let Ok(name) = dns::fqdn(domain) else {
            let facts = MxFacts::new(MxKind::Failed, unchecked("not a DNS name"));
            return (facts, Err(format!("{domain} is not a DNS name")));
        };
        let dnssec = match &self.secure {
            Some(secure) => rrset(&secure.lookup(&name, RecordType::MX).await),
            None => unchecked("dns.dnssec = off"),
        };
        let mut preferences = Vec::new();
        let kind = match dns::lookup(&self.resolver, &name, RecordType::MX).await {
            Ok(records) => match mx::classify(mx_records(records)) {
                MxAnswer::NullMx => MxKind::NullMx,
                MxAnswer::Hosts(h) if h.is_empty() => MxKind::Implicit,
                MxAnswer::Hosts(h) => {
                    preferences = h.into_iter().map(|h| (h.name, h.preference)).collect();
                    MxKind::Mx
                }
            },
            Err(LookupError::NoData) => MxKind::Implicit,
            Err(LookupError::NxDomain) => MxKind::NotFound,
            Err(LookupError::Temporary(_)) => MxKind::Failed,
        };
        let resolved = mx::mx_hosts(&self.resolver, domain)
            .await
            .map_err(|f| f.reply.to_string());
        let mut facts = MxFacts::new(kind, dnssec);
        facts.report.error = resolved.as_ref().err().cloned();
        facts.preferences = preferences;
        (facts, resolved)
    }

    /// One MX host: addresses, DNSSEC, TLSA, DANE, the effective policy, and the probes.
    async fn host(&self, ctx: &Domain<'_>, host: &str) -> HostReport {
        let (addresses, address_error) = match mx::host_addresses(&self.resolver, host).await {
            Ok(addrs) => (addrs, None),
            Err(failure) => (Vec::new(), Some(failure.reply.to_string())),
        };
        let address_dnssec = self.address_dnssec(host).await;
        let dane = ctx
            .dane
            .verdicts
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| HostDane::NotApplicable(ctx.no_dane_reason()));
        let tlsa = self.tlsa(&dane, host, ctx.port).await;
        let (plan, applied) = match ctx.plan.host(host) {
            Some(planned) => (planned.plan.clone(), planned.policy.clone()),
            // Unreachable: the plan holds every host reported on.
            None => ctx
                .local
                .plan_host(&ctx.requirement, &ctx.dane, host, ctx.name, ctx.port),
        };
        let (published, _) = ctx
            .requirement
            .published_plan(&ctx.dane, host, ctx.name, ctx.port);
        let policy = verdict::host_policy(&verdict::HostFacts {
            host,
            domain: ctx.name,
            plan: &plan,
            published: &published,
            applied: &applied.name,
            dane: &dane,
            requirement: &ctx.requirement,
            no_sts: &ctx.no_sts,
        });
        let probes = match ctx.connect {
            true => {
                let auth = match &dane {
                    HostDane::Authenticate(auth) => Some(auth),
                    _ => None,
                };
                let probes = addresses
                    .iter()
                    .map(|ip| probe::probe(self, host, *ip, &plan, auth));
                futures::future::join_all(probes).await
            }
            false => Vec::new(),
        };
        HostReport {
            name: host.to_string(),
            preference: ctx.preference(host),
            addresses,
            address_error,
            address_dnssec,
            tlsa,
            dane: dane_report(&dane),
            sts_pattern: ctx
                .requirement
                .sts()
                .and_then(|p| p.policy.matching(host).map(|m| m.0.clone())),
            policy,
            probes,
        }
    }

    /// The DNSSEC status of the host's A and AAAA RRsets.
    async fn address_dnssec(&self, host: &str) -> Vec<TypedRrset> {
        let (Some(secure), Ok(name)) = (&self.secure, dns::fqdn(host)) else {
            return Vec::new();
        };
        if host.parse::<IpAddr>().is_ok() {
            return Vec::new();
        }
        let mut statuses = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            statuses.push(TypedRrset {
                rtype: rtype.to_string(),
                rrset: rrset(&secure.lookup(&name, rtype).await),
            });
        }
        statuses
    }

    /// Every TLSA record where DANE looked for the host's (or would look, `_PORT._tcp.host`).
    async fn tlsa(&self, dane: &HostDane, host: &str, port: u16) -> Option<TlsaReport> {
        if host.parse::<IpAddr>().is_ok() {
            return None;
        }
        let name = match dane {
            HostDane::Authenticate(auth) => auth.tlsa_name.clone(),
            HostDane::EncryptOnly { tlsa_name } | HostDane::LookupError { tlsa_name, .. } => {
                tlsa_name.clone()
            }
            HostDane::NotApplicable(_) => format!("_{port}._tcp.{host}"),
        };
        let query = dns::fqdn(&name).ok()?;
        let (dnssec, records) = match &self.secure {
            Some(secure) => {
                let answer = secure.lookup(&query, RecordType::TLSA).await;
                let records = answer
                    .as_ref()
                    .map(|a| a.records.clone())
                    .unwrap_or_default();
                (rrset(&answer), records)
            }
            None => match dns::lookup(&self.resolver, &query, RecordType::TLSA).await {
                Ok(records) => (unchecked(&count(records.len())), records),
                Err(e) => (unchecked(&lookup_text(&e)), Vec::new()),
            },
        };
        Some(TlsaReport {
            name,
            dnssec,
            records: records.into_iter().filter_map(tlsa_record).collect(),
        })
    }
}

/// The MX facts before DANE may reorder the hosts.
struct MxFacts {
    report: MxReport,
    preferences: Vec<(String, u16)>,
}

impl MxFacts {
    fn new(kind: MxKind, dnssec: Rrset) -> MxFacts {
        MxFacts {
            report: MxReport {
                kind,
                dnssec,
                hosts: Vec::new(),
                error: None,
            },
            preferences: Vec::new(),
        }
    }
}

impl Domain<'_> {
    fn preference(&self, host: &str) -> Option<u16> {
        self.preferences
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .map(|(_, p)| *p)
    }

    /// Why DANE does not apply to a host the plan has no verdict on.
    fn no_dane_reason(&self) -> String {
        if self.dane.mx_secure {
            return "no DANE verdict for this host".to_string();
        }
        match self.mx_dnssec.status {
            Dnssec::Unchecked => format!("no DNSSEC ({})", self.mx_dnssec.detail),
            Dnssec::Secure => "MX RRset secure, but DANE was not evaluated".to_string(),
            status => format!("MX RRset not secure ({})", status_word(status)),
        }
    }
}

fn status_word(status: Dnssec) -> &'static str {
    match status {
        Dnssec::Secure => "secure",
        Dnssec::Insecure => "insecure",
        Dnssec::Bogus => "bogus",
        Dnssec::Failed => "failed",
        Dnssec::Unchecked => "unchecked",
    }
}

fn dane_report(dane: &HostDane) -> DaneReport {
    let state = match dane {
        HostDane::Authenticate(_) => DaneState::Authenticate,
        HostDane::EncryptOnly { .. } => DaneState::EncryptOnly,
        HostDane::LookupError { .. } => DaneState::LookupError,
        HostDane::NotApplicable(_) => DaneState::NotApplicable,
    };
    DaneReport {
        state,
        text: dane.to_string(),
    }
}

fn mx_records(records: Vec<RData>) -> Vec<(u16, Name)> {
    records
        .into_iter()
        .filter_map(|r| match r {
            RData::MX(mx) => Some((mx.preference, mx.exchange)),
            _ => None,
        })
        .collect()
}

fn tlsa_record(record: RData) -> Option<TlsaRecord> {
    let RData::TLSA(t) = record else {
        return None;
    };
    let tlsa = Tlsa {
        usage: t.cert_usage.into(),
        selector: t.selector.into(),
        matching: t.matching.into(),
        data: t.cert_data,
    };
    let usability = tlsa.usability();
    Some(TlsaRecord {
        usage: tlsa.usage,
        selector: tlsa.selector,
        matching: tlsa.matching,
        data: hex(&tlsa.data),
        text: tlsa.to_string(),
        usable: usability.is_ok(),
        unusable_reason: usability.err().map(|e| e.to_string()),
    })
}

/// The status of a validated look-up.
fn rrset(answer: &Result<Secured<Vec<RData>>, DnssecFailure>) -> Rrset {
    let proven = |secure: bool| match secure {
        true => Dnssec::Secure,
        false => Dnssec::Insecure,
    };
    let (status, detail) = match answer {
        Ok(a) => {
            let status = match a.status {
                Security::Secure => Dnssec::Secure,
                Security::Insecure => Dnssec::Insecure,
            };
            (status, count(a.records.len()))
        }
        Err(DnssecFailure::NoData { secure }) => (proven(*secure), "no records".to_string()),
        Err(DnssecFailure::NxDomain { secure }) => (proven(*secure), "NXDOMAIN".to_string()),
        Err(DnssecFailure::Bogus(why)) => (Dnssec::Bogus, why.clone()),
        Err(DnssecFailure::TempFail(why)) => (Dnssec::Failed, why.clone()),
    };
    Rrset { status, detail }
}

fn unchecked(detail: &str) -> Rrset {
    Rrset {
        status: Dnssec::Unchecked,
        detail: detail.to_string(),
    }
}

fn count(n: usize) -> String {
    match n {
        1 => "1 record".to_string(),
        n => format!("{n} records"),
    }
}

fn lookup_text(e: &LookupError) -> String {
    match e {
        LookupError::NxDomain => "NXDOMAIN".to_string(),
        LookupError::NoData => "no records".to_string(),
        LookupError::Temporary(why) => format!("lookup failed: {why}"),
    }
}
