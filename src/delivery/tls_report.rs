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

use rustls::CertificateError;

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
