//! DNSSEC-validated look-ups for DANE (RFC 4033, 4034, 4035; NSEC3 denial: RFC 5155).
//!
//! DANE (RFC 7672) may only use DNS data whose authenticity was proven: a chain of signatures
//! from a trust anchor down to the answer. A validating resolver sorts every answer into one of
//! four states (RFC 4033 §5, RFC 4035 §4.3):
//! - **secure**: the chain of DNSKEY and DS records from a trust anchor reaches the answer and
//!   every signature checks out;
//! - **insecure**: the resolver proved that no such chain exists — a signed parent says, with a
//!   signed NSEC/NSEC3 record, that the zone has no DS record (RFC 4035 §5.2, RFC 5155 §8.6);
//! - **bogus**: a chain should exist but does not hold (a bad or expired signature, a missing
//!   key, a denial that proves nothing): an attack or a broken zone;
//! - **indeterminate**: the resolver could not tell.
//!
//! Negative answers are validated too: a secure NXDOMAIN or NODATA carries NSEC3 records that
//! prove the name (or the type) absent (RFC 5155 §8.4–8.6).
//!
//! [`DnssecResolver`] is the in-process validator of `[dns] dnssec = "validate"`: hickory's
//! resolver, asking the configured name servers, checking each answer from the trust anchors of
//! `[dns] trust_anchor_file` (or, without one, the IANA root keys built into hickory). Its
//! [`DnssecResolver::lookup`] returns the records with their [`Security`], or a
//! [`DnssecFailure`] that keeps apart what the DANE rules treat differently: bogus data and
//! temporary failures (RFC 7672 §2.1.1: a TLSA lookup error makes the host unusable for now)
//! from proven (or unproven) absence.
//!
//! The `trust-ad` mode ([`trust_ad`]) instead asks a local validating resolver (unbound, the
//! Postfix model) and trusts the AD bit of its replies (RFC 4035 §3.2.3, RFC 6840 §5.7):
//! SERVFAIL there is what a bogus answer looks like, so it is a lookup error too.
//!
//! [`SecureResolver`] is the one the delivery uses: either mode behind one `lookup`.

pub mod anchors;
mod answer_cache;
mod keyset;
mod opt_out;
mod trust_ad;
mod validate;

pub use anchors::{
    load_trust_anchors, parse_trust_anchors, trust_anchors, TrustAnchor, TrustAnchorError,
};
pub use trust_ad::AdResolver;
pub use validate::DnssecResolver;

use crate::config::{DnsConfig, DnssecMode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use std::fmt;

/// How far an answer's authenticity is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Validated from a trust anchor (RFC 4033 §5: "secure").
    Secure,
    /// Provably outside any chain of trust, e.g. an unsigned zone under a signed parent with no
    /// DS for it (RFC 4035 §4.3: "insecure"). Usable as plain DNS; never for DANE.
    Insecure,
}

/// Records together with how far they can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secured<T> {
    /// The weakest link of everything the answer depends on (a CNAME chain included).
    pub status: Security,
    /// The records of the type asked for (CNAMEs on the way are left out).
    pub records: T,
    /// Where the records are: the name asked for, or the end of its CNAME chain (RFC 7672
    /// §2.2.2 uses it as the TLSA base domain of a CNAME'd MX host).
    pub owner: Name,
}

/// Why a validated look-up produced no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnssecFailure {
    /// The answer should validate but does not (RFC 4035 §4.3 "bogus"), or its state could not
    /// be established ("indeterminate"). RFC 7672 §2.1.1 treats both as a lookup error. The
    /// text is for logs.
    Bogus(String),
    /// No usable answer for now: SERVFAIL, REFUSED, a timeout, a network error. Text for logs.
    TempFail(String),
    /// The name does not exist; `secure` when NSEC3/NSEC records proved it (RFC 5155 §8.4).
    NxDomain { secure: bool },
    /// The name exists without records of this type; `secure` when proven (RFC 5155 §8.5).
    NoData { secure: bool },
}

/// Why the validating resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DnssecSetupError {
    #[error(transparent)]
    TrustAnchors(#[from] TrustAnchorError),
    #[error("DNS resolver: {0}")]
    Resolver(String),
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::Secure => "secure",
            Security::Insecure => "insecure",
        })
    }
}

impl fmt::Display for DnssecFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proven = |secure: &bool| if *secure { "secure" } else { "insecure" };
        match self {
            DnssecFailure::Bogus(why) => write!(f, "bogus: {why}"),
            DnssecFailure::TempFail(why) => write!(f, "lookup failed: {why}"),
            DnssecFailure::NxDomain { secure } => write!(f, "NXDOMAIN ({})", proven(secure)),
            DnssecFailure::NoData { secure } => write!(f, "no records ({})", proven(secure)),
        }
    }
}

impl DnssecFailure {
    /// A failure that says nothing about the data: bogus, or no answer. On the DANE path it
    /// makes a host unusable for now, never DANE-free (RFC 7672 §2.1.1).
    pub fn is_error(&self) -> bool {
        matches!(self, DnssecFailure::Bogus(_) | DnssecFailure::TempFail(_))
    }
}

/// The DNSSEC-aware resolver of `[dns] dnssec`: in-process validation or a trusted AD bit.
#[derive(Clone)]
pub enum SecureResolver {
    /// Boxed: hickory's resolver is large, and this sits in the deliverer once.
    Validate(Box<DnssecResolver>),
    TrustAd(AdResolver),
}

impl SecureResolver {
    /// The resolver `[dns]` asks for; `None` with `dnssec = "off"` (no DANE).
    pub fn from_config(config: &DnsConfig) -> Result<Option<SecureResolver>, DnssecSetupError> {
        Ok(match config.dnssec {
            DnssecMode::Off => None,
            DnssecMode::Validate => Some(SecureResolver::Validate(Box::new(
                DnssecResolver::from_config(config)?,
            ))),
            DnssecMode::TrustAd => Some(SecureResolver::TrustAd(AdResolver::from_config(config)?)),
        })
    }

    /// The same resolver keeping `trust-ad` answers up to `max_ttl` (the policy service's;
    /// [`answer_cache`]). In-process validation keeps hickory's own cache either way.
    pub fn with_answer_cache(self, capacity: usize, max_ttl: std::time::Duration) -> Self {
        match self {
            SecureResolver::TrustAd(r) => {
                SecureResolver::TrustAd(r.with_answer_cache(capacity, max_ttl))
            }
            validate => validate,
        }
    }

    /// The records of type `rtype` at `name` (absolute: no search domains) with their
    /// security, or why there are none.
    pub async fn lookup(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Secured<Vec<RData>>, DnssecFailure> {
        let mut name = name.clone();
        name.set_fqdn(true);
        let answer = match self {
            SecureResolver::Validate(r) => r.lookup(&name, rtype).await,
            SecureResolver::TrustAd(r) => r.lookup(&name, rtype).await,
        };
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(DnssecFailure::NxDomain { .. }) => "nxdomain",
            Err(DnssecFailure::NoData { .. }) => "nodata",
            Err(DnssecFailure::TempFail(_)) => "tempfail",
            Err(DnssecFailure::Bogus(_)) => "bogus",
        };
        crate::metrics::dns_lookup(&rtype.to_string(), outcome);
        answer
    }

    /// `validate` or `trust-ad`, for logs.
    pub fn mode(&self) -> &'static str {
        match self {
            SecureResolver::Validate(_) => "validate",
            SecureResolver::TrustAd(_) => "trust-ad",
        }
    }
}
