//! Counting sessions for TLS-RPT (RFC 8460): which policies a session with a planned host
//! counts under, and a failed session's details. Delivery calls these; the counts themselves
//! live in `crate::report::counts`.

use super::attempt::Relay;
use super::plan::{DeliveryPlan, PlannedHost};
use super::requirement::{HostPlan, TlsRequirement};
use super::tls_failure::TlsFailure;
use super::tls_report::ResultType;
use crate::report::counts::{normalize_domain, FailureDetail, Policy, PolicyKind, SessionResult};
use policy_cache::ActivePolicy;
use std::net::IpAddr;

/// The TLS-RPT policies a session with `planned` (a host of `plan`) counts under: the TLSA
/// base domain and the recipient domain for a DANE host (RFC 8460 §1.1; the recipient domain
/// is reported to only if it publishes a record of its own), the recipient domain for an
/// MTA-STS host, and `no-policy-found` for the rest (opportunistic or local levels).
pub(crate) fn policies(
    plan: &DeliveryPlan,
    planned: &PlannedHost,
    requirement: &TlsRequirement,
) -> Vec<Policy> {
    let dane = match &planned.plan {
        HostPlan::Dane(auth) => Some((
            auth.sni.as_str(),
            auth.records.iter().map(super::dane::presentation).collect(),
        )),
        // DANE governed the host but gave no usable records: a bogus or failed TLSA look-up
        // (`dnssec-invalid`), or `dane-only` without TLSA (`dane-required`).
        HostPlan::Skip(TlsFailure::TlsaLookup { .. } | TlsFailure::DaneRequired { .. }) => {
            Some((planned.name.as_str(), Vec::new()))
        }
        _ => None,
    };
    if let Some((base, strings)) = dane {
        let mx = vec![planned.name.clone()];
        let base = Policy::new(PolicyKind::Tlsa, base, strings.clone(), mx.clone());
        let recipient = Policy::new(PolicyKind::Tlsa, &plan.domain, strings, mx);
        return if base.domain == recipient.domain {
            vec![base]
        } else {
            vec![base, recipient]
        };
    }
    match (&planned.sts, requirement.sts()) {
        (Some(_), Some(active)) => vec![sts_policy(active)],
        _ => vec![Policy::none(&plan.domain)],
    }
}

/// An MTA-STS policy as TLS-RPT shows it: its lines (`policy-string`) and `mx` patterns.
pub(crate) fn sts_policy(active: &ActivePolicy) -> Policy {
    let p = &active.policy;
    let mut lines = vec![
        "version: STSv1".to_string(),
        format!("mode: {}", p.mode.as_str()),
    ];
    lines.extend(p.mx.iter().map(|m| format!("mx: {}", m.0)));
    lines.push(format!("max_age: {}", p.max_age));
    let mx = p.mx.iter().map(|m| m.0.clone()).collect();
    Policy::new(PolicyKind::Sts, &active.domain, lines, mx)
}

/// A failed session's details (RFC 8460 §4.4 failure-details).
pub(crate) fn failure_detail(
    result_type: ResultType,
    reason_code: Option<&str>,
    relay: Option<&Relay>,
    mx_host: &str,
    peer: &PeerFacts,
    additional: Option<String>,
) -> SessionResult {
    SessionResult::Failure(FailureDetail {
        result_type: result_type.as_str().to_string(),
        sending_ip: peer.local_ip,
        mx_host: Some(normalize_domain(mx_host)),
        helo: peer.helo.clone(),
        receiving_ip: relay.map(|r| r.addr.ip()),
        additional,
        reason_code: reason_code.map(str::to_string),
    })
}

/// What a session learnt of its two ends, for failure details.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerFacts {
    /// Our address on the connection.
    pub local_ip: Option<IpAddr>,
    /// The name the server gave in its EHLO reply.
    pub helo: Option<String>,
}
