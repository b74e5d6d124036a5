//! TLS-RPT (RFC 8460) result types: how a failed TLS negotiation with an MX host is reported.
//! A leaf of delivery: failures, attempts and the cache's failure records all name them.

use rustls::CertificateError;

/// RFC 8460 §4.3: the result types a sender reports for a failed TLS negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    /// RFC 8460 §4.3.2: DNSSEC validation of the DANE records failed.
    DnssecInvalid,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::DnssecInvalid => "dnssec-invalid",
        }
    }

    /// The result type of a certificate the PKIX check refused.
    pub(crate) fn of_certificate(e: &rustls::Error) -> ResultType {
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
