//! DANE for SMTP (RFC 7672, building on RFC 6698, RFC 7671 and the names of RFC 7218).
//!
//! In plain words: a mail domain whose DNS is signed (DNSSEC) can publish, next to each MX
//! host, TLSA records at `_25._tcp.<mxhost>` saying which certificate or key that host's TLS
//! must present. Because the answer is DNSSEC-validated, an attacker who strips STARTTLS or
//! presents their own certificate is caught: a sender that sees usable TLSA records must use
//! TLS and must authenticate the server against those records, with no CA in the loop
//! (RFC 7672 §2.2). This is why DANE, where present, takes precedence over MTA-STS.
//!
//! Only two kinds of record count for SMTP (RFC 7672 §3.1):
//! - DANE-EE(3): "the server's own certificate (or public key) is this one". Only the leaf is
//!   compared; its names and dates are deliberately ignored (RFC 7672 §3.1.1).
//! - DANE-TA(2): "the server's chain leads to this trust anchor". The chain is validated as
//!   usual with that anchor as the only root, dates included, and the leaf must carry the MX
//!   host name or another reference name (RFC 7672 §3.1.2, §3.2).
//!
//! PKIX-TA(0)/PKIX-EE(1), unknown parameters and malformed digests are unusable. A secure
//! RRset with nothing usable still makes TLS mandatory, but unauthenticated (RFC 7672 §2.2).
//!
//! This module is pure: DNS lookups and the DNSSEC status of the answers live elsewhere.
//! - [`tlsa`]: records, their RFC 7218 names, and [`classify`] into usable or not;
//! - [`verify`]: [`DaneCheck`], matching a presented chain against usable records;
//! - [`verifier`]: [`DaneVerifier`], the same as a rustls `ServerCertVerifier`.

pub mod tlsa;
pub mod verifier;
pub mod verify;

#[cfg(test)]
mod testpki;

pub use tlsa::{classify, Matching, Selector, Tlsa, TlsaSet, Unusable, Usage};
pub use verifier::{DaneMismatch, DaneVerifier, VerdictSlot};
pub use verify::{certificate_text, DaneCheck, DaneVerdict, MatchedBy, ReferenceNames};
