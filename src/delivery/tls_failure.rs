//! Why one MX host could not be used under a TLS requirement (today: an MTA-STS policy,
//! RFC 8461 §4), mapped in one place to the reply it becomes (DESIGN.md's status table,
//! Postfix's wording) and to its TLS-RPT result type (RFC 8460 §4.3).
//!
//! Every reply made here is transient (451, 4.7.x): a later status filter turns the 4.7.x
//! it chooses into 5.7.x bounces.

use super::attempt::{Failure, Rank, Relay};
pub(crate) use super::tls_report::ResultType;
use crate::reply::{EnhancedCode, Reply};

/// A host that failed the TLS requirement, before or during STARTTLS.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TlsFailure {
    /// RFC 8461 §4.1: the MX host matches none of the policy's `mx` patterns.
    NotAuthorized { host: String, domain: String },
    /// The server's EHLO reply did not list STARTTLS.
    NotOffered,
    /// The server answered STARTTLS with this (4xx/5xx) reply.
    Refused(Reply),
    /// The handshake failed for a reason other than the certificate.
    Handshake(String),
    /// The certificate is not PKIX-valid for the MX host name, or does not match the host's
    /// TLSA records (a rustls error carrying a `DaneMismatch`).
    Certificate(rustls::Error),
    /// RFC 7672 §2.1.1: the DNSSEC lookups for the host's TLSA records (or its addresses)
    /// failed or were bogus; the host is unusable for now.
    TlsaLookup {
        host: String,
        port: u16,
        reason: String,
    },
    /// A local `dane-only` level, and DANE does not authenticate the host.
    /// `dnssec_off`: no DANE lookup is possible here (`dns.dnssec = "off"`).
    DaneRequired { host: String, dnssec_off: bool },
    /// RFC 8689 §4.2.1: a REQUIRETLS message, and the host is not authenticated by DANE or an
    /// enforced MTA-STS policy, or did not advertise REQUIRETLS.
    RequireTls { host: String, reason: String },
}

impl TlsFailure {
    pub fn result_type(&self) -> ResultType {
        match self {
            TlsFailure::NotAuthorized { .. } | TlsFailure::Handshake(_) => {
                ResultType::ValidationFailure
            }
            TlsFailure::NotOffered | TlsFailure::Refused(_) => ResultType::StarttlsNotSupported,
            TlsFailure::Certificate(e) => ResultType::of_certificate(e),
            TlsFailure::TlsaLookup { .. } => ResultType::DnssecInvalid,
            TlsFailure::DaneRequired { .. } => ResultType::DaneRequired,
            TlsFailure::RequireTls { .. } => ResultType::ValidationFailure,
        }
    }

    /// RFC 8460 §4.4 `failure-reason-code`: our precise reason, where the result type alone
    /// is vague. Our own words (never a peer's text), so equal failures sum in one entry.
    pub fn reason_code(&self) -> Option<String> {
        match self {
            TlsFailure::NotAuthorized { .. } => Some("mx-not-authorized".into()),
            TlsFailure::Refused(r) => Some(format!("starttls-refused: {}", r.code)),
            TlsFailure::Handshake(e) => Some(format!("tls-handshake-failure: {e}")),
            TlsFailure::Certificate(e) => Some(certificate_reason(e)),
            TlsFailure::RequireTls { .. } => Some("requiretls-not-supported".into()),
            TlsFailure::NotOffered
            | TlsFailure::TlsaLookup { .. }
            | TlsFailure::DaneRequired { .. } => None,
        }
    }

    /// The reply for a recipient when this is the failure reported (DESIGN.md's table).
    /// `relay` is the session's host and address (none for `NotAuthorized`: never dialled).
    pub fn reply(&self, relay: Option<&Relay>) -> Reply {
        let host_ip = relay.map_or_else(|| "-".to_string(), Relay::host_ip);
        match self {
            TlsFailure::NotAuthorized { host, domain } => Reply::new(
                451,
                EnhancedCode::new(4, 7, 5),
                format!("MX host {host} not authorized by MTA-STS policy for {domain}"),
            ),
            TlsFailure::NotOffered => Reply::new(
                451,
                EnhancedCode::new(4, 7, 4),
                format!("TLS is required, but was not offered by host {host_ip}"),
            ),
            TlsFailure::Refused(r) => {
                // The reply's own status, kept transient: the filter decides about bouncing.
                let s = r.status();
                Reply::new(
                    451,
                    EnhancedCode::new(4, s.subject, s.detail),
                    format!("TLS is required, but host {host_ip} refused to start TLS: {r}"),
                )
            }
            TlsFailure::Handshake(_) => Reply::new(
                451,
                EnhancedCode::new(4, 7, 5),
                "Cannot start TLS: handshake failure",
            ),
            TlsFailure::Certificate(e) => Reply::new(
                451,
                EnhancedCode::new(4, 7, 5),
                format!("Server certificate not verified: {}", certificate_reason(e)),
            ),
            // Postfix's wording, but 4.7.0: a DNS outage says nothing about the destination's
            // TLS, so no status filter rule for 4.7.5 may turn it into a bounce (DESIGN.md).
            TlsFailure::TlsaLookup { host, port, .. } => Reply::new(
                451,
                EnhancedCode::new(4, 7, 0),
                format!("TLSA lookup error for {host}:{port}"),
            ),
            // Our own set-up: 4.7.0, never a verdict on the destination (DESIGN.md).
            TlsFailure::DaneRequired {
                host,
                dnssec_off: true,
            } => Reply::new(
                451,
                EnhancedCode::new(4, 7, 0),
                format!("DANE is required for host {host}, but DNSSEC is off here (dns.dnssec)"),
            ),
            TlsFailure::DaneRequired {
                host,
                dnssec_off: false,
            } => Reply::new(
                451,
                EnhancedCode::new(4, 7, 5),
                format!("DANE is required, but host {host} has no usable TLSA records"),
            ),
            // RFC 8689 §5: permanent; no later attempt makes the destination qualify.
            TlsFailure::RequireTls { host, reason } => Reply::new(
                550,
                EnhancedCode::new(5, 7, 30),
                format!("REQUIRETLS support required: {host} {reason}"),
            ),
        }
    }

    /// What a failure report (TLS-RPT) and the log say about it.
    pub fn detail(&self) -> String {
        match self {
            TlsFailure::NotAuthorized { host, .. } => {
                format!("MX host {host} matches no mx pattern of the policy")
            }
            TlsFailure::NotOffered => "STARTTLS not offered".to_string(),
            TlsFailure::Refused(r) => format!("STARTTLS refused: {r}"),
            TlsFailure::Handshake(e) => format!("TLS handshake failed: {e}"),
            TlsFailure::Certificate(e) => certificate_reason(e),
            TlsFailure::TlsaLookup { reason, .. } => format!("TLSA lookup error: {reason}"),
            TlsFailure::DaneRequired { .. } => "no usable TLSA records (dane-only)".to_string(),
            TlsFailure::RequireTls { reason, .. } => format!("REQUIRETLS: {reason}"),
        }
    }

    /// The failure this becomes for the recipients, with its rank among others.
    pub fn into_failure(self, relay: Option<Relay>) -> Failure {
        // A host left out by the policy says least about why delivery failed: any failure
        // at an authorized host is reported in preference.
        let rank = match self {
            TlsFailure::NotAuthorized { .. } => Rank::PolicyMx,
            TlsFailure::TlsaLookup { .. } => Rank::Undetermined,
            // A host refused before dialling (dane-only, REQUIRETLS) says least: any failure at a
            // host that qualified, even a refused connection, is reported in preference, and
            // keeps the recipient waiting for that host.
            TlsFailure::DaneRequired { .. } | TlsFailure::RequireTls { .. } if relay.is_none() => {
                Rank::PolicyMx
            }
            _ => Rank::Tls,
        };
        let mut failure = Failure::new(self.reply(relay.as_ref()), relay, rank);
        failure.result_type = Some(self.result_type());
        failure
    }
}

/// rustls's description of a refused certificate, without its generic prefix.
fn certificate_reason(e: &rustls::Error) -> String {
    if let Some(dane) = policy_cache::dane::DaneMismatch::find(e) {
        return dane.to_string();
    }
    match e {
        rustls::Error::InvalidCertificate(c) => policy_cache::dane::certificate_text(c),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError;

    fn relay() -> Relay {
        Relay {
            host: "mx1.example.net".into(),
            addr: "192.0.2.25:25".parse().unwrap(),
        }
    }

    #[test]
    fn replies_keep_postfix_wording() {
        let r = relay();
        assert_eq!(
            TlsFailure::NotOffered.reply(Some(&r)).to_string(),
            "451 4.7.4 TLS is required, but was not offered by host mx1.example.net[192.0.2.25]"
        );
        let refused = Reply::from_remote(454, "4.7.0 TLS not available");
        assert_eq!(
            TlsFailure::Refused(refused).reply(Some(&r)).to_string(),
            "451 4.7.0 TLS is required, but host mx1.example.net[192.0.2.25] refused to start \
             TLS: 454 4.7.0 TLS not available"
        );
        let refused = Reply::from_remote(554, "5.7.3 no");
        assert_eq!(
            TlsFailure::Refused(refused).reply(Some(&r)).status(),
            EnhancedCode::new(4, 7, 3)
        );
        assert_eq!(
            TlsFailure::Handshake("x".into())
                .reply(Some(&r))
                .to_string(),
            "451 4.7.5 Cannot start TLS: handshake failure"
        );
        let f = TlsFailure::NotAuthorized {
            host: "mx.evil.test".into(),
            domain: "example.net".into(),
        };
        assert_eq!(
            f.reply(None).to_string(),
            "451 4.7.5 MX host mx.evil.test not authorized by MTA-STS policy for example.net"
        );
    }

    #[test]
    fn certificate_failures_map_to_rfc8460_result_types() {
        let cert = |e| TlsFailure::Certificate(rustls::Error::InvalidCertificate(e));
        let f = cert(CertificateError::NotValidForName);
        assert_eq!(f.result_type().as_str(), "certificate-host-mismatch");
        assert!(f
            .reply(Some(&relay()))
            .to_string()
            .starts_with("451 4.7.5 Server certificate not verified: "));
        assert_eq!(
            cert(CertificateError::Expired).result_type().as_str(),
            "certificate-expired"
        );
        assert_eq!(
            cert(CertificateError::UnknownIssuer).result_type().as_str(),
            "certificate-not-trusted"
        );
        assert_eq!(
            cert(CertificateError::BadEncoding).result_type().as_str(),
            "validation-failure"
        );
        assert_eq!(
            TlsFailure::NotOffered.result_type().as_str(),
            "starttls-not-supported"
        );
        let dane = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(policy_cache::dane::DaneMismatch(
                "no TLSA record matches".into(),
            )),
        )));
        assert_eq!(
            TlsFailure::Certificate(dane).result_type().as_str(),
            "tlsa-invalid"
        );
        let required = TlsFailure::DaneRequired {
            host: "mx".into(),
            dnssec_off: false,
        };
        assert_eq!(required.result_type().as_str(), "dane-required");
        let na = TlsFailure::NotAuthorized {
            host: "mx".into(),
            domain: "example.net".into(),
        };
        assert_eq!(na.result_type().as_str(), "validation-failure");
        assert_eq!(na.reason_code().as_deref(), Some("mx-not-authorized"));
    }

    #[test]
    fn unauthorized_hosts_rank_below_everything_else() {
        let na = TlsFailure::NotAuthorized {
            host: "a".into(),
            domain: "b".into(),
        }
        .into_failure(None);
        assert!(na.rank < Rank::DnsNotFound);
        assert!(na.result_type.is_some());
        let tls = TlsFailure::NotOffered.into_failure(Some(relay()));
        assert_eq!(tls.rank, Rank::Tls);
    }
}
