//! TLSA records (RFC 6698 §2, names from RFC 7218) and which of them SMTP may use (RFC 7672 §3.1).
//!
//! A TLSA record is four fields: a *certificate usage* (how to apply the data), a *selector*
//! (which part of a certificate to look at), a *matching type* (compare exactly, or by a
//! SHA-2 digest) and the *certificate association data*. For SMTP only the two DANE usages
//! count: DANE-TA(2) names a trust anchor of the server's chain, DANE-EE(3) names the server's
//! own certificate or key. Anything else is "unusable" and is ignored; a secure RRset made only
//! of unusable records still means "TLS is mandatory, but cannot be authenticated"
//! (RFC 7672 §2.2), which is why [`classify`] keeps that case apart.

use std::fmt;

/// One TLSA record as found in DNS, fields as numbers so that unknown values survive to
/// be reported (and ignored) rather than rejected at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE (RFC 7218 §2.1).
    pub usage: u8,
    /// Selector: 0 the whole certificate, 1 its SubjectPublicKeyInfo (RFC 7218 §2.2).
    pub selector: u8,
    /// Matching type: 0 exact bytes, 1 SHA2-256, 2 SHA2-512 (RFC 7218 §2.3).
    pub matching: u8,
    /// Certificate association data: the certificate/SPKI itself or its digest.
    pub data: Vec<u8>,
}

/// Certificate usage (RFC 6698 §2.1.1, names from RFC 7218 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    PkixTa,
    PkixEe,
    DaneTa,
    DaneEe,
}

/// Selector (RFC 6698 §2.1.2, RFC 7218 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The full DER certificate.
    Cert,
    /// The DER SubjectPublicKeyInfo of the certificate.
    Spki,
}

/// Matching type (RFC 6698 §2.1.3, RFC 7218 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Matching {
    /// The data is the selected content itself.
    Full,
    /// The data is the SHA-256 digest of the selected content.
    Sha256,
    /// The data is the SHA-512 digest of the selected content.
    Sha512,
}

/// Why a record cannot be used to authenticate an SMTP server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) are not for SMTP.
    #[error("certificate usage {0} (PKIX) is not used for SMTP")]
    PkixUsage(u8),
    #[error("unknown certificate usage {0}")]
    UnknownUsage(u8),
    #[error("unknown selector {0}")]
    UnknownSelector(u8),
    #[error("unknown matching type {0}")]
    UnknownMatching(u8),
    #[error("{matching} data is {got} bytes, expected {expected}")]
    DigestLength {
        matching: Matching,
        expected: usize,
        got: usize,
    },
    #[error("empty certificate association data")]
    EmptyData,
}

/// The parameters of a record that passed [`Tlsa::usability`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    pub usage: Usage,
    pub selector: Selector,
    pub matching: Matching,
}

/// A secure TLSA RRset, sorted by what the client may do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaSet {
    /// At least one usable record: the server must authenticate against these (and only these).
    Usable(Vec<Tlsa>),
    /// RFC 7672 §2.2: the RRset exists (and is secure) but nothing in it is usable. TLS is still
    /// mandatory, but without authentication; the caller decides what that means for delivery.
    NoneUsable,
}

/// Sorts a DNSSEC-validated TLSA RRset (RFC 7672 §2.2, §3.1). The caller has already told
/// "no secure RRset" apart from this; an empty slice is treated as "none usable".
pub fn classify(records: &[Tlsa]) -> TlsaSet {
    let usable: Vec<Tlsa> = records
        .iter()
        .filter(|r| r.usability().is_ok())
        .cloned()
        .collect();
    if usable.is_empty() {
        TlsaSet::NoneUsable
    } else {
        TlsaSet::Usable(usable)
    }
}

impl Usage {
    pub fn from_u8(v: u8) -> Option<Usage> {
        match v {
            0 => Some(Usage::PkixTa),
            1 => Some(Usage::PkixEe),
            2 => Some(Usage::DaneTa),
            3 => Some(Usage::DaneEe),
            _ => None,
        }
    }
}

impl Selector {
    pub fn from_u8(v: u8) -> Option<Selector> {
        match v {
            0 => Some(Selector::Cert),
            1 => Some(Selector::Spki),
            _ => None,
        }
    }
}

impl Matching {
    pub fn from_u8(v: u8) -> Option<Matching> {
        match v {
            0 => Some(Matching::Full),
            1 => Some(Matching::Sha256),
            2 => Some(Matching::Sha512),
            _ => None,
        }
    }

    /// The length a digest of this type must have; `None` for full content.
    fn digest_len(self) -> Option<usize> {
        match self {
            Matching::Full => None,
            Matching::Sha256 => Some(32),
            Matching::Sha512 => Some(64),
        }
    }

    /// What a record of this matching type would carry for `content`.
    fn apply(self, content: &[u8]) -> Vec<u8> {
        match self {
            Matching::Full => content.to_vec(),
            Matching::Sha256 => {
                crate::crypto::digest::digest(&crate::crypto::digest::SHA256, content)
                    .as_ref()
                    .to_vec()
            }
            Matching::Sha512 => {
                crate::crypto::digest::digest(&crate::crypto::digest::SHA512, content)
                    .as_ref()
                    .to_vec()
            }
        }
    }
}

impl Tlsa {
    /// Whether SMTP may use this record, and its parameters if so (RFC 7672 §3.1).
    pub fn usability(&self) -> Result<Params, Unusable> {
        let usage = match Usage::from_u8(self.usage) {
            // RFC 7672 §3.1.3: PKIX usages are not supported for SMTP; treat as unusable.
            Some(Usage::PkixTa | Usage::PkixEe) => return Err(Unusable::PkixUsage(self.usage)),
            Some(u) => u,
            None => return Err(Unusable::UnknownUsage(self.usage)),
        };
        let selector =
            Selector::from_u8(self.selector).ok_or(Unusable::UnknownSelector(self.selector))?;
        let matching =
            Matching::from_u8(self.matching).ok_or(Unusable::UnknownMatching(self.matching))?;
        // RFC 7671 §5.1 / RFC 6698 §2.1.3: a digest of the wrong length can never match;
        // treating it as unusable keeps a malformed record from looking like a real mismatch.
        match matching.digest_len() {
            Some(expected) if self.data.len() != expected => {
                return Err(Unusable::DigestLength {
                    matching,
                    expected,
                    got: self.data.len(),
                })
            }
            None if self.data.is_empty() => return Err(Unusable::EmptyData),
            _ => {}
        }
        Ok(Params {
            usage,
            selector,
            matching,
        })
    }

    /// Whether this record's data matches a certificate, given the certificate's DER and the
    /// DER of its SubjectPublicKeyInfo (`None` when the certificate could not be parsed, so
    /// only selector Cert(0) can match). Unusable records match nothing.
    pub(crate) fn matches(&self, cert_der: &[u8], spki_der: Option<&[u8]>) -> bool {
        let Ok(params) = self.usability() else {
            return false;
        };
        let content = match (params.selector, spki_der) {
            (Selector::Cert, _) => cert_der,
            (Selector::Spki, Some(spki)) => spki,
            (Selector::Spki, None) => return false,
        };
        params.matching.apply(content) == self.data
    }

    /// The record for `content` with these parameters: how a server operator would compute
    /// it. Useful for tests and for telling an operator what record their certificate needs.
    pub fn for_content(usage: u8, selector: u8, matching: u8, content: &[u8]) -> Tlsa {
        let data = match Matching::from_u8(matching) {
            Some(m) => m.apply(content),
            None => content.to_vec(),
        };
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Usage::PkixTa => "PKIX-TA(0)",
            Usage::PkixEe => "PKIX-EE(1)",
            Usage::DaneTa => "DANE-TA(2)",
            Usage::DaneEe => "DANE-EE(3)",
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Selector::Cert => "Cert(0)",
            Selector::Spki => "SPKI(1)",
        })
    }
}

impl fmt::Display for Matching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Matching::Full => "Full(0)",
            Matching::Sha256 => "SHA2-256(1)",
            Matching::Sha512 => "SHA2-512(2)",
        })
    }
}

/// The RFC 7218 presentation, e.g. `DANE-EE(3) SPKI(1) SHA2-256(1) 8d02…`; full data is
/// shown by length only, since a whole certificate does not belong in a log line.
impl fmt::Display for Tlsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Usage::from_u8(self.usage) {
            Some(u) => write!(f, "{u}")?,
            None => write!(f, "{}", self.usage)?,
        }
        match Selector::from_u8(self.selector) {
            Some(s) => write!(f, " {s}")?,
            None => write!(f, " {}", self.selector)?,
        }
        match Matching::from_u8(self.matching) {
            Some(m) => write!(f, " {m}")?,
            None => write!(f, " {}", self.matching)?,
        }
        if self.matching == 0 {
            write!(f, " [{} bytes]", self.data.len())
        } else {
            f.write_str(" ")?;
            for b in &self.data {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(usage: u8, selector: u8, matching: u8, len: usize) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: vec![0xab; len],
        }
    }

    fn usable(r: Tlsa) {
        assert!(r.usability().is_ok(), "{r} should be usable");
    }

    fn unusable(r: Tlsa, why: Unusable) {
        assert_eq!(r.usability(), Err(why), "{r}");
    }

    #[test]
    fn dane_usages_with_known_parameters_are_usable() {
        for usage in [2, 3] {
            for selector in [0, 1] {
                usable(rec(usage, selector, 0, 100));
                usable(rec(usage, selector, 1, 32));
                usable(rec(usage, selector, 2, 64));
            }
        }
    }

    #[test]
    fn pkix_and_unknown_values_are_unusable() {
        unusable(rec(0, 0, 1, 32), Unusable::PkixUsage(0));
        unusable(rec(1, 1, 1, 32), Unusable::PkixUsage(1));
        unusable(rec(4, 1, 1, 32), Unusable::UnknownUsage(4));
        unusable(rec(255, 1, 1, 32), Unusable::UnknownUsage(255));
        unusable(rec(3, 2, 1, 32), Unusable::UnknownSelector(2));
        unusable(rec(3, 1, 3, 32), Unusable::UnknownMatching(3));
    }

    #[test]
    fn wrong_digest_lengths_are_unusable() {
        let short = Unusable::DigestLength {
            matching: Matching::Sha256,
            expected: 32,
            got: 31,
        };
        unusable(rec(3, 1, 1, 31), short);
        let swapped = Unusable::DigestLength {
            matching: Matching::Sha512,
            expected: 64,
            got: 32,
        };
        unusable(rec(3, 1, 2, 32), swapped);
        unusable(rec(2, 0, 1, 64), {
            Unusable::DigestLength {
                matching: Matching::Sha256,
                expected: 32,
                got: 64,
            }
        });
        unusable(rec(3, 0, 0, 0), Unusable::EmptyData);
    }

    #[test]
    fn classify_keeps_only_usable_records() {
        let set = [rec(1, 1, 1, 32), rec(3, 1, 1, 32), rec(3, 1, 1, 5)];
        assert_eq!(classify(&set), TlsaSet::Usable(vec![rec(3, 1, 1, 32)]));
    }

    #[test]
    fn classify_pkix_only_rrset_as_none_usable() {
        // RFC 7672 §2.2: TLS stays mandatory, authentication is impossible.
        let set = [rec(0, 0, 1, 32), rec(1, 1, 2, 64)];
        assert_eq!(classify(&set), TlsaSet::NoneUsable);
        assert_eq!(classify(&[rec(3, 1, 1, 20)]), TlsaSet::NoneUsable);
        assert_eq!(classify(&[]), TlsaSet::NoneUsable);
    }

    #[test]
    fn digests_are_sha2_of_the_content() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let r = Tlsa::for_content(3, 1, 1, b"abc");
        assert_eq!(
            r.to_string(),
            "DANE-EE(3) SPKI(1) SHA2-256(1) \
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(r.matches(b"cert", Some(b"abc")));
        assert!(!r.matches(b"abc", Some(b"other")));
        assert!(!r.matches(b"abc", None));
        assert_eq!(Tlsa::for_content(3, 0, 2, b"abc").data.len(), 64);
        assert_eq!(
            Tlsa::for_content(2, 0, 0, b"abc").to_string(),
            "DANE-TA(2) Cert(0) Full(0) [3 bytes]"
        );
    }
}
