//! Checking a server's certificate chain against its usable TLSA records (RFC 7672 §3,
//! RFC 7671 §5).
//!
//! Two ways to match, tried in this order:
//! - DANE-EE(3): the record names the server's own certificate or public key. The leaf
//!   either matches or not; names, dates and issuers do not matter (RFC 7672 §3.1.1).
//! - DANE-TA(2): the record names a trust anchor — a CA certificate in the presented chain,
//!   or (with SPKI(1) Full(0)) a bare CA public key that need not be in the chain. The leaf
//!   must then chain to that anchor with valid dates and carry one of the reference names
//!   (RFC 7672 §3.1.2, §3.2): ordinary PKIX validation with the TLSA record as the only root.

use std::fmt;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, Der, ServerName, TrustAnchor, UnixTime};
use webpki::EndEntityCert;
use x509_parser::asn1_rs::{Any, FromDer, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::tlsa::{Matching, Selector, Tlsa, Usage};

/// The names a DANE-TA(2) server certificate must carry one of (RFC 7672 §3.2.2): the MX
/// host name (the TLSA base domain), and optionally the next-hop domain it was reached from
/// after secure CNAME expansion (RFC 7672 §2.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceNames {
    /// Normalised (lower case, no trailing dot); the MX host first.
    names: Vec<String>,
}

impl ReferenceNames {
    pub fn new(mx_host: &str) -> ReferenceNames {
        ReferenceNames {
            names: vec![normalise(mx_host)],
        }
    }

    /// Adds another acceptable name (ignored if already present).
    pub fn with(mut self, name: &str) -> ReferenceNames {
        let name = normalise(name);
        if !self.names.contains(&name) {
            self.names.push(name);
        }
        self
    }

    pub fn mx_host(&self) -> &str {
        self.names.first().map(String::as_str).unwrap_or_default()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
}

impl fmt::Display for ReferenceNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names.join(" or "))
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The outcome of checking one server's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneVerdict {
    /// The server is authenticated.
    Matched { usage: Usage, via: MatchedBy },
    /// It is not; the text says why, in words fit for a log line or a bounce's diagnostic.
    Mismatch(String),
}

/// Which record authenticated the server, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedBy {
    pub record: Tlsa,
    /// Position in the presented chain of the certificate that matched (0 is the leaf);
    /// `None` when a DANE-TA(2) SPKI(1) Full(0) key signed the chain without being in it.
    pub depth: Option<usize>,
    /// For DANE-TA(2), the reference name the leaf was valid for.
    pub name: Option<String>,
}

impl fmt::Display for DaneVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaneVerdict::Matched { via, .. } => {
                write!(f, "matched {}", via.record)?;
                match via.depth {
                    Some(d) => write!(f, " at depth {d}")?,
                    None => f.write_str(" (trust anchor key not in chain)")?,
                }
                if let Some(name) = &via.name {
                    write!(f, " for {name}")?;
                }
                Ok(())
            }
            DaneVerdict::Mismatch(why) => f.write_str(why),
        }
    }
}

/// The inputs of a DANE check that do not change per connection: the usable TLSA records of
/// one MX host and the names its certificate may carry.
#[derive(Debug, Clone)]
pub struct DaneCheck {
    /// Only usable records are kept (RFC 7672 §3.1); order is DNS order.
    records: Vec<Tlsa>,
    names: ReferenceNames,
    /// Signature algorithms for DANE-TA chain validation (the ring provider's).
    algorithms: WebPkiSupportedAlgorithms,
}

/// A certificate of the presented chain, with the parts TLSA records select.
struct Presented<'a> {
    der: &'a [u8],
    /// `None` when x509-parser cannot read the certificate.
    parsed: Option<X509Certificate<'a>>,
}

impl<'a> Presented<'a> {
    fn new(der: &'a [u8]) -> Presented<'a> {
        Presented {
            der,
            parsed: X509Certificate::from_der(der).ok().map(|(_, cert)| cert),
        }
    }

    fn spki(&self) -> Option<&'a [u8]> {
        self.parsed
            .as_ref()
            .map(|c| c.tbs_certificate.subject_pki.raw)
    }

    fn matches(&self, record: &Tlsa) -> bool {
        record.matches(self.der, self.spki())
    }
}

/// A trust anchor derived from a DANE-TA(2) record, with where it came from.
struct Candidate<'a> {
    record: &'a Tlsa,
    depth: Option<usize>,
    anchor: TrustAnchor<'a>,
}

impl DaneCheck {
    /// `records` may be a whole RRset: unusable records are dropped here (RFC 7672 §3.1).
    pub fn new(records: Vec<Tlsa>, names: ReferenceNames) -> DaneCheck {
        DaneCheck {
            records: records
                .into_iter()
                .filter(|r| r.usability().is_ok())
                .collect(),
            names,
            algorithms: crate::crypto::provider().signature_verification_algorithms,
        }
    }

    pub fn records(&self) -> &[Tlsa] {
        &self.records
    }

    pub fn names(&self) -> &ReferenceNames {
        &self.names
    }

    /// Checks a chain as the server sent it (leaf first) at time `now`.
    pub fn verify(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> DaneVerdict {
        if chain.is_empty() {
            return DaneVerdict::Mismatch("server sent no certificate".into());
        }
        let presented: Vec<Presented<'_>> = chain.iter().map(|c| Presented::new(c)).collect();
        if let Some(matched) = self.match_end_entity(&presented) {
            return matched;
        }
        self.match_trust_anchor(chain, &presented, now)
    }

    fn with_usage(&self, usage: Usage) -> impl Iterator<Item = &Tlsa> {
        self.records
            .iter()
            .filter(move |r| Usage::from_u8(r.usage) == Some(usage))
    }

    /// RFC 7672 §3.1.1: DANE-EE(3) matches the leaf alone; its names and validity dates are
    /// not checked, and neither is its issuer.
    fn match_end_entity(&self, presented: &[Presented<'_>]) -> Option<DaneVerdict> {
        let leaf = presented.first()?;
        let record = self.with_usage(Usage::DaneEe).find(|r| leaf.matches(r))?;
        Some(DaneVerdict::Matched {
            usage: Usage::DaneEe,
            via: MatchedBy {
                record: record.clone(),
                depth: Some(0),
                name: None,
            },
        })
    }

    /// RFC 7672 §3.1.2: DANE-TA(2) makes the matched certificate or key the one trust anchor
    /// of an otherwise ordinary chain validation, names and dates included.
    fn match_trust_anchor(
        &self,
        chain: &[CertificateDer<'_>],
        presented: &[Presented<'_>],
        now: UnixTime,
    ) -> DaneVerdict {
        let candidates = self.trust_anchor_candidates(chain, presented);
        if candidates.is_empty() {
            return DaneVerdict::Mismatch("no TLSA record matched the certificate chain".into());
        }
        let leaf = match EndEntityCert::try_from(&chain[0]) {
            Ok(leaf) => leaf,
            Err(e) => return DaneVerdict::Mismatch(format!("server certificate unreadable: {e}")),
        };
        let intermediates = &chain[1..];
        // A bare key is tried under several names, and "wrong anchor" from one attempt says
        // less than "expired" from another: keep the most telling failure.
        let mut failure: Option<ChainFailure> = None;
        for candidate in &candidates {
            let verified = leaf.verify_for_usage(
                self.algorithms.all,
                std::slice::from_ref(&candidate.anchor),
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            );
            let this = match verified {
                Ok(_) => match candidate
                    .depth
                    .and_then(|d| anchor_out_of_date(presented, d, now))
                {
                    Some(stale) => ChainFailure::unacceptable(stale),
                    None => return self.name_verdict(&leaf, presented, candidate),
                },
                Err(e) => chain_error(&e, presented, now),
            };
            if failure.as_ref().is_none_or(|f| this.kind > f.kind) {
                failure = Some(this);
            }
        }
        DaneVerdict::Mismatch(failure.map_or_else(
            || "certificate chain does not lead to the TLSA trust anchor".to_string(),
            |f| f.why,
        ))
    }

    /// RFC 7672 §3.2.2: under DANE-TA the leaf must also carry a reference name.
    fn name_verdict(
        &self,
        leaf: &EndEntityCert<'_>,
        presented: &[Presented<'_>],
        candidate: &Candidate<'_>,
    ) -> DaneVerdict {
        match self.valid_name(leaf, presented) {
            Some(name) => DaneVerdict::Matched {
                usage: Usage::DaneTa,
                via: MatchedBy {
                    record: candidate.record.clone(),
                    depth: candidate.depth,
                    name: Some(name),
                },
            },
            None => DaneVerdict::Mismatch(format!("certificate not valid for name {}", self.names)),
        }
    }

    /// Every trust anchor a DANE-TA(2) record designates in this chain.
    fn trust_anchor_candidates<'a>(
        &'a self,
        chain: &'a [CertificateDer<'a>],
        presented: &[Presented<'a>],
    ) -> Vec<Candidate<'a>> {
        let mut candidates = Vec::new();
        // RFC 7671 §5.2.2: the anchor is an issuer in the chain, so the search starts above
        // the leaf; a server whose own certificate is the whole story publishes DANE-EE(3).
        for (depth, cert) in chain.iter().enumerate().skip(1) {
            let Some(view) = presented.get(depth) else {
                continue;
            };
            for record in self.with_usage(Usage::DaneTa).filter(|r| view.matches(r)) {
                if let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) {
                    candidates.push(Candidate {
                        record,
                        depth: Some(depth),
                        anchor,
                    });
                }
            }
        }
        // RFC 7671 §5.2.3 / RFC 7672 §3.1.2: DANE-TA(2) SPKI(1) Full(0) publishes the anchor's
        // whole public key, so the server may leave the anchor certificate out. Its name is
        // then unknown: pair the key with each issuer name the chain mentions, and let the
        // signature check decide.
        let issuers = issuer_names(chain);
        for record in self.with_usage(Usage::DaneTa).filter(|r| {
            Selector::from_u8(r.selector) == Some(Selector::Spki)
                && Matching::from_u8(r.matching) == Some(Matching::Full)
        }) {
            // A key the server did send is no bare anchor: in an issuer's certificate it was
            // matched above (dates included), and the leaf's own key anchors nothing (above).
            if presented
                .iter()
                .any(|p| p.spki() == Some(record.data.as_slice()))
            {
                continue;
            }
            let Some(spki) = sequence_contents(&record.data) else {
                continue;
            };
            for subject in &issuers {
                candidates.push(Candidate {
                    record,
                    depth: None,
                    anchor: TrustAnchor {
                        subject: Der::from(subject.clone()),
                        subject_public_key_info: Der::from_slice(spki),
                        name_constraints: None,
                    },
                });
            }
        }
        candidates
    }

    /// The first reference name the leaf is valid for (RFC 7672 §3.2.3).
    fn valid_name(&self, leaf: &EndEntityCert<'_>, presented: &[Presented<'_>]) -> Option<String> {
        for name in self.names.iter() {
            let Ok(server_name) = ServerName::try_from(name) else {
                continue;
            };
            if leaf.verify_is_valid_for_subject_name(&server_name).is_ok() {
                return Some(name.to_string());
            }
        }
        // RFC 7672 §3.2.3 / RFC 6125 §6.4.4: with no DNS-ID subjectAltName at all, the
        // subject's common name stands in for it (webpki itself never looks at the CN).
        let leaf = presented.first()?.parsed.as_ref()?;
        if has_dns_san(leaf) {
            return None;
        }
        let common_names: Vec<String> = leaf
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(normalise)
            .collect();
        self.names
            .iter()
            .find(|name| common_names.iter().any(|cn| name_matches(cn, name)))
            .map(str::to_string)
    }
}

/// Distinct issuer names (DER contents, no outer SEQUENCE) of the chain's certificates.
fn issuer_names(chain: &[CertificateDer<'_>]) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for cert in chain {
        if let Ok(parsed) = EndEntityCert::try_from(cert) {
            let issuer = parsed.issuer().to_vec();
            if !names.contains(&issuer) {
                names.push(issuer);
            }
        }
    }
    names
}

/// The contents of a DER SEQUENCE with nothing after it: how webpki's `TrustAnchor` holds a
/// SubjectPublicKeyInfo.
fn sequence_contents(der: &[u8]) -> Option<&[u8]> {
    match Any::from_der(der) {
        Ok((rest, any)) if rest.is_empty() && any.tag() == Tag::Sequence => Some(any.data),
        _ => None,
    }
}

fn has_dns_san(cert: &X509Certificate<'_>) -> bool {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .any(|g| matches!(g, GeneralName::DNSName(_))),
        Ok(None) => false,
        // A malformed extension: do not fall back to the CN.
        Err(_) => true,
    }
}

/// RFC 7672 §3.2.3: a presented name matches a reference name exactly, or as a wildcard
/// `*.rest` whose `*` stands for exactly one whole leftmost label.
fn name_matches(presented: &str, reference: &str) -> bool {
    if presented == reference {
        return true;
    }
    match (presented.strip_prefix("*."), reference.split_once('.')) {
        (Some(rest), Some((label, ref_rest))) => {
            !label.is_empty() && !rest.is_empty() && rest == ref_rest
        }
        _ => false,
    }
}

/// How much a failed DANE-TA attempt tells the operator, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FailureKind {
    /// This anchor is not the one the chain leads to.
    WrongAnchor,
    /// The chain does lead to the anchor but is unacceptable (dates, constraints, …).
    Unacceptable,
}

struct ChainFailure {
    kind: FailureKind,
    why: String,
}

impl ChainFailure {
    fn unacceptable(why: String) -> ChainFailure {
        ChainFailure {
            kind: FailureKind::Unacceptable,
            why,
        }
    }
}

/// Words for a failed DANE-TA chain validation; for dates, says which certificate.
fn chain_error(e: &webpki::Error, presented: &[Presented<'_>], now: UnixTime) -> ChainFailure {
    let why = match e {
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            return ChainFailure {
                kind: FailureKind::WrongAnchor,
                why: "certificate chain does not lead to the TLSA trust anchor".to_string(),
            };
        }
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            let what = if matches!(e, webpki::Error::CertExpired { .. }) {
                "certificate expired"
            } else {
                "certificate not yet valid"
            };
            match out_of_date(presented, now) {
                Some((depth, subject)) => format!("{what} (depth {depth}: {subject})"),
                None => what.to_string(),
            }
        }
        other => match budget_text(other) {
            Some(text) => text.to_string(),
            None => format!("certificate chain invalid under the TLSA trust anchor: {other}"),
        },
    };
    ChainFailure::unacceptable(why)
}

/// Words for the limits that stop webpki's path building on a chain made to be expensive
/// (hundreds of look-alike issuers, say); rustls has no error of its own for them and
/// passes them on as webpki's debug names.
fn budget_text(e: &webpki::Error) -> Option<&'static str> {
    match e {
        webpki::Error::MaximumSignatureChecksExceeded => {
            Some("certificate chain too costly to verify (too many signature checks)")
        }
        webpki::Error::MaximumPathBuildCallsExceeded => {
            Some("certificate chain too costly to verify (too many candidate paths)")
        }
        webpki::Error::MaximumPathDepthExceeded => {
            Some("certificate chain too long (too many intermediates)")
        }
        _ => None,
    }
}

/// A refused certificate in words for the log line and the DSN: rustls's text, except for
/// the webpki errors it wraps undescribed.
pub fn certificate_text(e: &rustls::CertificateError) -> String {
    if let rustls::CertificateError::Other(other) = e {
        if let Some(text) = other
            .0
            .downcast_ref::<webpki::Error>()
            .and_then(budget_text)
        {
            return text.to_string();
        }
    }
    e.to_string()
}

/// DESIGN (DANE-TA: "check names … and dates"): when the anchor is a certificate the server
/// presented, its own validity counts too, as it does in OpenSSL's DANE (Postfix). Unlike a
/// root store, the anchor here is the server operator's, and an expired one is a fault there.
/// A bare DANE-TA(2) SPKI(1) Full(0) key has no dates.
fn anchor_out_of_date(presented: &[Presented<'_>], depth: usize, now: UnixTime) -> Option<String> {
    let cert = presented.get(depth)?.parsed.as_ref()?;
    let now = i64::try_from(now.as_secs()).ok()?;
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        Some(format!(
            "trust anchor certificate expired (depth {depth}: {})",
            cert.subject()
        ))
    } else if now < validity.not_before.timestamp() {
        Some(format!(
            "trust anchor certificate not yet valid (depth {depth}: {})",
            cert.subject()
        ))
    } else {
        None
    }
}

/// The first presented certificate whose validity period excludes `now`.
fn out_of_date(presented: &[Presented<'_>], now: UnixTime) -> Option<(usize, String)> {
    let now = i64::try_from(now.as_secs()).ok()?;
    presented.iter().enumerate().find_map(|(depth, p)| {
        let cert = p.parsed.as_ref()?;
        let validity = cert.validity();
        let outside = now < validity.not_before.timestamp() || now > validity.not_after.timestamp();
        outside.then(|| (depth, cert.subject().to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dane::testpki::*;

    fn ee(selector: u8, matching: u8, cert: &CertificateDer<'_>) -> Tlsa {
        record(3, selector, matching, cert)
    }

    fn ta(selector: u8, matching: u8, cert: &CertificateDer<'_>) -> Tlsa {
        record(2, selector, matching, cert)
    }

    fn check(records: Vec<Tlsa>, chain: &[CertificateDer<'static>]) -> DaneVerdict {
        DaneCheck::new(records, ReferenceNames::new(MX)).verify(chain, now())
    }

    fn matched(verdict: DaneVerdict, usage: Usage, depth: Option<usize>) {
        match verdict {
            DaneVerdict::Matched { usage: u, via } => {
                assert_eq!(u, usage);
                assert_eq!(via.depth, depth);
            }
            DaneVerdict::Mismatch(why) => panic!("expected a match, got: {why}"),
        }
    }

    fn mismatch(verdict: DaneVerdict, reason: &str) {
        match verdict {
            DaneVerdict::Mismatch(why) => assert!(why.contains(reason), "{why:?} vs {reason:?}"),
            m => panic!("expected a mismatch ({reason}), got {m}"),
        }
    }

    #[test]
    fn dane_ee_matches_leaf_by_cert_and_spki_with_each_matching_type() {
        let pki = Pki::new();
        let chain = pki.chain();
        for selector in [0, 1] {
            for matching in [0, 1, 2] {
                matched(
                    check(vec![ee(selector, matching, &pki.leaf)], &chain),
                    Usage::DaneEe,
                    Some(0),
                );
            }
        }
    }

    #[test]
    fn dane_ee_ignores_names_dates_and_issuer() {
        // RFC 7672 §3.1.1: an expired, self-signed certificate for another name still passes.
        let pki = Pki::new();
        let stale = self_signed("other.example.test", Dates::Expired);
        for selector in [0, 1] {
            for matching in [0, 1, 2] {
                matched(
                    check(
                        vec![ee(selector, matching, &stale)],
                        std::slice::from_ref(&stale),
                    ),
                    Usage::DaneEe,
                    Some(0),
                );
            }
        }
        // …and does not care what else the server sends after its leaf.
        let mut chain = vec![stale.clone()];
        chain.extend(pki.chain().into_iter().skip(1));
        matched(
            check(vec![ee(1, 1, &stale)], &chain),
            Usage::DaneEe,
            Some(0),
        );
    }

    #[test]
    fn dane_ee_mismatch() {
        let pki = Pki::new();
        let other = self_signed(MX, Dates::Valid);
        for selector in [0, 1] {
            for matching in [0, 1, 2] {
                mismatch(
                    check(vec![ee(selector, matching, &other)], &pki.chain()),
                    "no TLSA record matched the certificate chain",
                );
            }
        }
        // DANE-EE names the leaf only: the issuer's digest under usage 3 is no match.
        mismatch(
            check(vec![ee(0, 1, &pki.intermediate)], &pki.chain()),
            "no TLSA record matched",
        );
    }

    #[test]
    fn dane_ta_matches_private_intermediate_with_each_selector_and_matching_type() {
        let pki = Pki::new();
        let chain = pki.chain();
        for selector in [0, 1] {
            for matching in [0, 1, 2] {
                matched(
                    check(vec![ta(selector, matching, &pki.intermediate)], &chain),
                    Usage::DaneTa,
                    Some(1),
                );
            }
        }
    }

    #[test]
    fn dane_ta_matches_root_in_chain() {
        let pki = Pki::new();
        let mut chain = pki.chain();
        chain.push(pki.root.clone());
        matched(
            check(vec![ta(0, 1, &pki.root)], &chain),
            Usage::DaneTa,
            Some(2),
        );
    }

    #[test]
    fn dane_ta_full_spki_need_not_be_in_chain() {
        // RFC 7671 §5.2.3: 2 1 0 carries the whole key; the server may omit the anchor.
        let pki = Pki::new();
        let leaf_only = vec![pki.leaf.clone()];
        matched(
            check(vec![ta(1, 0, &pki.intermediate)], &leaf_only),
            Usage::DaneTa,
            None,
        );
        // A root key two levels up, with only leaf and intermediate sent.
        matched(
            check(vec![ta(1, 0, &pki.root)], &pki.chain()),
            Usage::DaneTa,
            None,
        );
        // A digest cannot stand in for a missing anchor certificate.
        mismatch(
            check(vec![ta(1, 1, &pki.intermediate)], &leaf_only),
            "no TLSA record matched",
        );
    }

    #[test]
    fn dane_ta_reports_which_record_matched() {
        let pki = Pki::new();
        let wanted = ta(1, 1, &pki.intermediate);
        let records = vec![ta(1, 1, &pki.unrelated_ca), wanted.clone()];
        let names = ReferenceNames::new("MX.Example.Test.");
        match DaneCheck::new(records, names).verify(&pki.chain(), now()) {
            DaneVerdict::Matched { usage, via } => {
                assert_eq!(usage, Usage::DaneTa);
                assert_eq!(via.record, wanted);
                assert_eq!(via.name.as_deref(), Some(MX));
            }
            m => panic!("{m}"),
        }
    }

    #[test]
    fn dane_ta_wrong_leaf_name_is_mismatch() {
        let pki = Pki::with_leaf_name("other.example.test");
        mismatch(
            check(vec![ta(0, 1, &pki.intermediate)], &pki.chain()),
            "certificate not valid for name mx.example.test",
        );
    }

    #[test]
    fn dane_ta_accepts_extra_reference_name() {
        // RFC 7672 §2.2.3: after secure CNAME expansion the original name also counts.
        let pki = Pki::with_leaf_name("smtp.example.test");
        let names = ReferenceNames::new(MX).with("smtp.example.test");
        let verdict = DaneCheck::new(vec![ta(0, 1, &pki.intermediate)], names.clone())
            .verify(&pki.chain(), now());
        match verdict {
            DaneVerdict::Matched { via, .. } => {
                assert_eq!(via.name.as_deref(), Some("smtp.example.test"))
            }
            m => panic!("{m}"),
        }
        assert_eq!(names.to_string(), "mx.example.test or smtp.example.test");
    }

    #[test]
    fn dane_ta_wildcard_covers_one_label() {
        let pki = Pki::with_leaf_name("*.example.test");
        matched(
            check(vec![ta(0, 1, &pki.intermediate)], &pki.chain()),
            Usage::DaneTa,
            Some(1),
        );
        let deeper = DaneCheck::new(
            vec![ta(0, 1, &pki.intermediate)],
            ReferenceNames::new("a.mx.example.test"),
        );
        mismatch(deeper.verify(&pki.chain(), now()), "not valid for name");
    }

    #[test]
    fn dane_ta_falls_back_to_common_name_without_dns_san() {
        let pki = Pki::with_leaf_cn_only(MX);
        matched(
            check(vec![ta(0, 1, &pki.intermediate)], &pki.chain()),
            Usage::DaneTa,
            Some(1),
        );
        let other = Pki::with_leaf_cn_only("other.example.test");
        mismatch(
            check(vec![ta(0, 1, &other.intermediate)], &other.chain()),
            "not valid for name",
        );
    }

    #[test]
    fn dane_ta_unrelated_ca_is_mismatch() {
        let pki = Pki::new();
        for (selector, matching) in [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)] {
            mismatch(
                check(
                    vec![ta(selector, matching, &pki.unrelated_ca)],
                    &pki.chain(),
                ),
                "no TLSA record matched the certificate chain",
            );
        }
        // The unrelated CA sent along in the chain is found, but does not sign the leaf.
        let mut chain = pki.chain();
        chain.push(pki.unrelated_ca.clone());
        mismatch(
            check(vec![ta(0, 1, &pki.unrelated_ca)], &chain),
            "certificate chain does not lead to the TLSA trust anchor",
        );
        // Its bare key, likewise.
        mismatch(
            check(vec![ta(1, 0, &pki.unrelated_ca)], &pki.chain()),
            "certificate chain does not lead to the TLSA trust anchor",
        );
    }

    #[test]
    fn dane_ta_expired_intermediate_is_mismatch() {
        let pki = Pki::with_intermediate_dates(Dates::Expired);
        let mut chain = pki.chain();
        chain.push(pki.root.clone());
        mismatch(
            check(vec![ta(0, 1, &pki.root)], &chain),
            "certificate expired (depth 1",
        );
    }

    #[test]
    fn dane_ta_expired_anchor_certificate_is_mismatch() {
        let pki = Pki::with_intermediate_dates(Dates::Expired);
        for (selector, matching) in [(0, 0), (0, 1), (1, 0), (1, 2)] {
            mismatch(
                check(
                    vec![ta(selector, matching, &pki.intermediate)],
                    &pki.chain(),
                ),
                "trust anchor certificate expired (depth 1: CN=Test Intermediate CA)",
            );
        }
        // The bare key, its certificate not sent: a key has no dates.
        matched(
            check(
                vec![ta(1, 0, &pki.intermediate)],
                std::slice::from_ref(&pki.leaf),
            ),
            Usage::DaneTa,
            None,
        );
    }

    #[test]
    fn dane_ta_expired_leaf_is_mismatch() {
        let pki = Pki::with_leaf_dates(Dates::Expired);
        mismatch(
            check(vec![ta(1, 2, &pki.intermediate)], &pki.chain()),
            "certificate expired (depth 0",
        );
        let future = Pki::with_leaf_dates(Dates::Future);
        mismatch(
            check(vec![ta(1, 2, &future.intermediate)], &future.chain()),
            "certificate not yet valid",
        );
    }

    #[test]
    fn dane_ta_does_not_match_the_leaf_itself() {
        // A self-signed leaf is authenticated by DANE-EE(3), never as its own trust anchor.
        let leaf = self_signed(MX, Dates::Valid);
        for (selector, matching) in [(0, 1), (1, 0), (1, 1)] {
            mismatch(
                check(
                    vec![ta(selector, matching, &leaf)],
                    std::slice::from_ref(&leaf),
                ),
                "no TLSA record matched the certificate chain",
            );
        }
    }

    #[test]
    fn ee_is_preferred_and_ta_failure_does_not_hide_an_ee_match() {
        let pki = Pki::with_leaf_name("other.example.test");
        let records = vec![ta(0, 1, &pki.intermediate), ee(1, 1, &pki.leaf)];
        matched(check(records, &pki.chain()), Usage::DaneEe, Some(0));
    }

    #[test]
    fn unusable_records_never_match() {
        let pki = Pki::new();
        // PKIX-EE(1) with the leaf's exact digest: ignored for SMTP (RFC 7672 §3.1.3).
        let pkix = record(1, 1, 1, &pki.leaf);
        let check = DaneCheck::new(vec![pkix], ReferenceNames::new(MX));
        assert!(check.records().is_empty());
        mismatch(check.verify(&pki.chain(), now()), "no TLSA record matched");
    }

    #[test]
    fn empty_chain_is_mismatch() {
        let pki = Pki::new();
        mismatch(
            check(vec![ee(1, 1, &pki.leaf)], &[]),
            "server sent no certificate",
        );
    }

    #[test]
    fn verdict_display_names_the_record() {
        let pki = Pki::new();
        let verdict = check(vec![ta(1, 1, &pki.intermediate)], &pki.chain());
        let text = verdict.to_string();
        assert!(
            text.starts_with("matched DANE-TA(2) SPKI(1) SHA2-256(1) "),
            "{text}"
        );
        assert!(text.ends_with(" at depth 1 for mx.example.test"), "{text}");
    }

    #[test]
    fn wildcard_rule() {
        assert!(name_matches("*.example.test", "mx.example.test"));
        assert!(!name_matches("*.example.test", "example.test"));
        assert!(!name_matches("*.example.test", "a.b.example.test"));
        assert!(!name_matches("m*.example.test", "mx.example.test"));
        assert!(name_matches("mx.example.test", "mx.example.test"));
    }
}
