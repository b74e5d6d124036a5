//! TLS-RPT (RFC 8460) result types: how a failed TLS negotiation with an MX host is reported.
//! A leaf of delivery: failures, attempts and the cache's failure records all name them.
//! The table (README, "TLS-RPT"):
//!
//! | what failed | result type | failure-reason-code |
//! |---|---|---|
//! | STARTTLS not offered / refused | `starttls-not-supported` | — / `starttls-refused` |
//! | certificate not valid for the MX name | `certificate-host-mismatch` | — |
//! | certificate expired or not yet valid | `certificate-expired` | — |
//! | certificate from an unknown issuer | `certificate-not-trusted` | — |
//! | certificate matches no TLSA record | `tlsa-invalid` | — |
//! | TLSA or address look-up bogus / failed | `dnssec-invalid` | — |
//! | `dane-only` and no usable TLSA | `dane-required` | — |
//! | MX host matches no `mx` of the policy | `validation-failure` | `mx-not-authorized` |
//! | other handshake failure | `validation-failure` | `tls-handshake-failure` |

use super::attempt::Relay;
use super::plan::{DeliveryPlan, PlannedHost};
use super::requirement::{HostPlan, TlsRequirement};
use crate::report::counts::{normalize_domain, FailureDetail, Policy, PolicyKind, SessionResult};
use policy_cache::dane::Tlsa;
use policy_cache::ActivePolicy;
use rustls::CertificateError;
use std::net::IpAddr;

/// RFC 8460 §4.3: the result types a sender reports for a failed TLS negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    /// RFC 8460 §4.3.2: no TLSA record of the RRset matched.
    TlsaInvalid,
    /// RFC 8460 §4.3.2: DNSSEC validation of the DANE records failed.
    DnssecInvalid,
    /// RFC 8460 §4.3.2: DANE is required here and the host has no usable TLSA record.
    DaneRequired,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
        }
    }

    /// The result type of a certificate the PKIX check refused.
    pub(crate) fn of_certificate(e: &rustls::Error) -> ResultType {
        if policy_cache::dane::DaneMismatch::find(e).is_some() {
            return ResultType::TlsaInvalid;
        }
        let rustls::Error::InvalidCertificate(e) = e else {
            return ResultType::ValidationFailure;
        };
        match e {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ResultType::CertificateHostMismatch
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => ResultType::CertificateExpired,
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::Revoked => ResultType::CertificateNotTrusted,
            _ => ResultType::ValidationFailure,
        }
    }
}

/// The TLS-RPT policies a session with `planned` (a host of `plan`) counts under: the TLSA
/// base domain and the recipient domain for a DANE host (RFC 8460 §1.1; the recipient domain
/// is reported to only if it publishes a record of its own), the recipient domain for an
/// MTA-STS host, and `no-policy-found` for the rest (opportunistic or local levels).
pub(crate) fn policies(
    plan: &DeliveryPlan,
    planned: &PlannedHost,
    requirement: &TlsRequirement,
) -> Vec<Policy> {
    if let HostPlan::Dane(auth) = &planned.plan {
        let strings: Vec<String> = auth.records.iter().map(tlsa_presentation).collect();
        let mx = vec![planned.name.clone()];
        let base = Policy::new(PolicyKind::Tlsa, &auth.sni, strings.clone(), mx.clone());
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

/// `3 1 1 0C72AC70…`: a TLSA record in DNS presentation form (RFC 6698 §2.2), as the
/// RFC 8460 §4.4 example writes `policy-string`.
fn tlsa_presentation(t: &Tlsa) -> String {
    let hex: String = t.data.iter().map(|b| format!("{b:02X}")).collect();
    format!("{} {} {} {hex}", t.usage, t.selector, t.matching)
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
