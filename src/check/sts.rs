//! MTA-STS as delivery would find it with nothing cached (RFC 8461 §3, §5.1): the
//! `_mta-sts` TXT record and the policy fetched now through the daemon's fetcher settings,
//! never read from or written into the daemon's cache.

use super::checker::Checker;
use super::{Authorization, FetchState, StsPolicy, StsReport, TxtReport, TxtStatus};
use crate::delivery::dns::{self, LookupError};
use hickory_resolver::proto::rr::RecordType;
use policy_cache::sts::fetch::POLICY_PATH;
use policy_cache::sts::record::{parse_records, RecordError};
use policy_cache::{ActivePolicy, Mode, Policy, StsLookup};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

impl Checker<'_> {
    /// The `_mta-sts` TXT record and, when it is valid, the policy fetched now (never from or
    /// into the daemon's cache); with the lookup delivery would get with nothing cached.
    pub(super) async fn mta_sts(&self, domain: &str) -> (StsReport, StsLookup) {
        let txt_name = format!("_mta-sts.{domain}");
        let https_port = self.config.mta_sts.https_port;
        let port = match https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        let mut report = StsReport {
            enabled: self.config.mta_sts.enabled,
            txt: TxtReport {
                name: txt_name.clone(),
                status: TxtStatus::Absent,
                records: Vec::new(),
                id: None,
                error: None,
            },
            policy_url: format!("https://mta-sts.{domain}{port}{POLICY_PATH}"),
            fetch: FetchState::Skipped,
            policy: None,
            fetch_error: None,
            authorized: Vec::new(),
        };
        if crate::delivery::address_literal(domain).is_some() {
            report.txt.error = Some("an address literal has no MTA-STS policy".into());
            let reason = "an address literal has no MTA-STS policy".to_string();
            return (
                report,
                StsLookup::NoPolicy {
                    reason,
                    fetch_failure: None,
                },
            );
        }
        let answer = match dns::fqdn(&txt_name) {
            Ok(name) => dns::lookup(&self.resolver, &name, RecordType::TXT).await,
            Err(e) => Err(e),
        };
        let record = match answer {
            Ok(records) => {
                report.txt.records = records
                    .iter()
                    .filter_map(policy_cache::sts::record::txt_text)
                    .collect();
                match parse_records(&report.txt.records) {
                    Ok(record) => {
                        report.txt.status = TxtStatus::Record;
                        report.txt.id = Some(record.id.clone());
                        Some(record)
                    }
                    Err(RecordError::None) => None,
                    Err(e) => {
                        report.txt.status = TxtStatus::Invalid;
                        report.txt.error = Some(e.to_string());
                        None
                    }
                }
            }
            Err(LookupError::NoData | LookupError::NxDomain) => None,
            Err(LookupError::Temporary(why)) => {
                report.txt.status = TxtStatus::Failed;
                report.txt.error = Some(why.clone());
                // RFC 8461 §5: a DNS failure is not the absence of a policy.
                let reason = format!("TXT lookup failed: {why}");
                return (report, StsLookup::TempFail { reason });
            }
        };
        let Some(record) = record else {
            let reason = match &report.txt.error {
                Some(e) => format!("invalid MTA-STS TXT record: {e}"),
                None => "no MTA-STS TXT record".to_string(),
            };
            return (
                report,
                StsLookup::NoPolicy {
                    reason,
                    fetch_failure: None,
                },
            );
        };
        let fetched = match self.fetcher.fetch(domain).await {
            Ok(text) => Policy::parse(&text).map_err(|e| format!("invalid policy: {e}")),
            Err(e) => Err(e.to_string()),
        };
        match fetched {
            Ok(policy) => {
                report.fetch = FetchState::Fetched;
                report.policy = Some(StsPolicy {
                    mode: policy.mode.as_str().to_string(),
                    mx: policy.mx.iter().map(|p| p.0.clone()).collect(),
                    max_age: policy.max_age,
                });
                let now = SystemTime::now();
                let max_age = Duration::from_secs(u64::from(policy.max_age));
                let active = ActivePolicy {
                    domain: domain.to_string(),
                    id: record.id,
                    policy,
                    fetched_at: now,
                    expires_at: now.checked_add(max_age).unwrap_or(now),
                };
                (report, StsLookup::Policy(Arc::new(active)))
            }
            Err(error) => {
                report.fetch = FetchState::Failed;
                report.fetch_error = Some(error.clone());
                // RFC 8461 §3.3: with nothing cached, as though the domain had no MTA-STS (the
                // cache's own words).
                let reason =
                    format!("policy fetch failed ({error}); delivering as without MTA-STS");
                (
                    report,
                    StsLookup::NoPolicy {
                        reason,
                        fetch_failure: None,
                    },
                )
            }
        }
    }
}

/// Why no MTA-STS policy sets the requirement, from the lookup.
pub(super) fn no_sts_reason(lookup: &StsLookup) -> String {
    match lookup {
        StsLookup::NoPolicy { reason, .. } | StsLookup::TempFail { reason } => reason.clone(),
        StsLookup::Policy(p) if p.policy.mode == Mode::None => {
            format!("policy {} has mode none (as without a policy)", p.id)
        }
        StsLookup::Policy(p) => format!("policy {} applies", p.id),
    }
}

pub(super) fn authorizations(sts: &StsReport, hosts: &[String]) -> Vec<Authorization> {
    let Some(policy) = &sts.policy else {
        return Vec::new();
    };
    let policy = Policy {
        mode: Mode::None,
        mx: policy
            .mx
            .iter()
            .map(|m| policy_cache::MxPattern(m.clone()))
            .collect(),
        max_age: policy.max_age,
    };
    hosts
        .iter()
        .map(|h| Authorization {
            host: h.clone(),
            pattern: policy.matching(h).map(|p| p.0.clone()),
        })
        .collect()
}
