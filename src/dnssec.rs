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
//! from proven (or unproven) absence. The `trust-ad` mode — a local validating resolver whose AD
//! bit is trusted — is not built yet.
//!
//! **The trust-anchor file** holds one DNSKEY per line in zone-file presentation form (the form
//! unbound's `trust-anchor-file` and BIND's key files use), without parentheses:
//!
//! ```text
//! ; comments start with a semicolon; blank lines are ignored
//! .            IN DNSKEY 257 3 8  AwEAAaz/tAm8yTn4Mfeh…
//! example.org. 3600 IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0d…
//! ```
//!
//! That is: owner name, an optional TTL and class (`IN`, in either order), `DNSKEY`, flags,
//! protocol, algorithm and the base64 public key (which may be split by spaces). The key must be
//! a zone key (flag 256, RFC 4034 §2.1.1), not revoked (flag 128, RFC 5011 §2.1), protocol 3
//! (RFC 4034 §2.1.2), of an algorithm the validator implements (RSA/SHA-256 and SHA-512, ECDSA
//! P-256 and P-384, Ed25519).

use crate::config::DnsConfig;
use base64::Engine as _;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Algorithm, Proof, PublicKeyBuf, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    #[error("trust anchor file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trust anchor file {}, line {line}: {reason}", path.display())]
    TrustAnchor {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("trust anchor file {}: no DNSKEY lines", path.display())]
    NoTrustAnchors { path: PathBuf },
    #[error("DNS resolver: {0}")]
    Resolver(String),
}

/// One trust anchor: a DNSKEY trusted for a zone without proof from above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    /// The zone the key belongs to (the root `.` for the IANA keys).
    pub zone: Name,
    /// The DNSKEY flags (257 for a key-signing key, 256 for a zone-signing key).
    pub flags: u16,
    /// The public key and its algorithm.
    pub key: PublicKeyBuf,
}

/// A resolver that validates every answer (RFC 4035 §5) from configured trust anchors.
#[derive(Clone)]
pub struct DnssecResolver {
    resolver: TokioResolver,
}

impl DnssecResolver {
    /// The validating resolver of `[dns]`: its `nameservers` (or `/etc/resolv.conf`),
    /// `timeout` and `cache_size`, and the anchors of `trust_anchor_file` (or hickory's built-in
    /// IANA root keys when no file is configured).
    pub fn from_config(config: &DnsConfig) -> Result<DnssecResolver, DnssecSetupError> {
        let anchors = match &config.trust_anchor_file {
            Some(path) => trust_anchors(&load_trust_anchors(path)?),
            None => TrustAnchors::default(),
        };
        DnssecResolver::with_anchors(config, anchors)
    }

    /// The same, with the trust anchors given.
    pub fn with_anchors(
        config: &DnsConfig,
        anchors: TrustAnchors,
    ) -> Result<DnssecResolver, DnssecSetupError> {
        let setup = |e: NetError| DnssecSetupError::Resolver(e.to_string());
        let builder = crate::delivery::dns::resolver_builder(config).map_err(setup)?;
        let resolver = builder
            .with_trust_anchor(Arc::new(anchors))
            .build()
            .map_err(setup)?;
        Ok(DnssecResolver { resolver })
    }

    /// The validated records of type `rtype` at `name` (made absolute: no search domains).
    /// CNAMEs are followed by the resolver; the answer is only as secure as its whole chain.
    pub async fn lookup(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Secured<Vec<RData>>, DnssecFailure> {
        let mut name = name.clone();
        name.set_fqdn(true);
        match self.resolver.lookup(name, rtype).await {
            Ok(answer) => classify_answer(rtype, answer.answers()),
            Err(e) => Err(classify_error(&e)),
        }
    }
}

/// Sorts a validated positive answer: every record but the RRSIGs carries hickory's proof.
/// Any bogus or indeterminate record spoils the answer (RFC 4035 §5.5, RFC 7672 §2.1.1);
/// otherwise it is secure only if every record is (RFC 4035 §4.3).
pub(crate) fn classify_answer(
    rtype: RecordType,
    answers: &[Record],
) -> Result<Secured<Vec<RData>>, DnssecFailure> {
    let status = chain_status(answers)?;
    let records: Vec<RData> = answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.clone())
        .collect();
    if records.is_empty() {
        return Err(DnssecFailure::NoData {
            secure: status == Security::Secure,
        });
    }
    Ok(Secured { status, records })
}

/// The security of a set of records: the weakest proof among them, RRSIGs aside (only the RRSIG
/// that validated an RRset carries its proof).
fn chain_status(records: &[Record]) -> Result<Security, DnssecFailure> {
    let mut status = None;
    for record in records
        .iter()
        .filter(|r| r.record_type() != RecordType::RRSIG)
    {
        match record.proof {
            Proof::Secure => {
                status.get_or_insert(Security::Secure);
            }
            Proof::Insecure => status = Some(Security::Insecure),
            Proof::Bogus => {
                return Err(DnssecFailure::Bogus(format!(
                    "{} {} is bogus",
                    record.name,
                    record.record_type()
                )))
            }
            Proof::Indeterminate => {
                return Err(DnssecFailure::Bogus(format!(
                    "{} {} is indeterminate",
                    record.name,
                    record.record_type()
                )))
            }
        }
    }
    // An empty set proves nothing.
    Ok(status.unwrap_or(Security::Insecure))
}

/// Sorts a failed look-up. hickory reports bogus data as `DnssecBogus` (or an NSEC error with a
/// bogus proof), a validated negative answer as `NoRecordsFound` with its denial records (and
/// their proofs) among the authorities, and an unprovable denial as an NSEC error.
pub(crate) fn classify_error(err: &NetError) -> DnssecFailure {
    match err {
        NetError::Dns(DnsError::DnssecBogus) => {
            DnssecFailure::Bogus("DNSSEC validation failed".into())
        }
        NetError::Dns(DnsError::NoRecordsFound(nr)) => {
            // The denial (SOA, NSEC3 and their signatures) is as good as its weakest record; a
            // bogus one must not pass for an insecure denial.
            let authorities = nr.authorities.as_deref().unwrap_or_default();
            match chain_status(authorities) {
                Err(bogus) => bogus,
                Ok(status) => negative(
                    nr.response_code,
                    !authorities.is_empty() && status == Security::Secure,
                ),
            }
        }
        NetError::Dns(DnsError::Nsec {
            response, proof, ..
        }) => match proof {
            Proof::Secure | Proof::Insecure => negative(response.response_code, false),
            Proof::Bogus | Proof::Indeterminate => {
                DnssecFailure::Bogus(format!("denial of existence is {proof}"))
            }
        },
        NetError::Dns(DnsError::ResponseCode(code)) => DnssecFailure::TempFail(code.to_string()),
        other => DnssecFailure::TempFail(other.to_string()),
    }
}

/// A negative answer by its response code (RFC 2308 §2): NXDOMAIN, NODATA, or anything else
/// (which is no answer at all).
fn negative(code: ResponseCode, secure: bool) -> DnssecFailure {
    match code {
        ResponseCode::NXDomain => DnssecFailure::NxDomain { secure },
        ResponseCode::NoError => DnssecFailure::NoData { secure },
        other => DnssecFailure::TempFail(other.to_string()),
    }
}

/// Reads and parses a trust-anchor file (format in the module documentation).
pub fn load_trust_anchors(path: &Path) -> Result<Vec<TrustAnchor>, DnssecSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnssecSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let anchors =
        parse_trust_anchors(&text).map_err(|(line, reason)| DnssecSetupError::TrustAnchor {
            path: path.to_path_buf(),
            line,
            reason,
        })?;
    if anchors.is_empty() {
        return Err(DnssecSetupError::NoTrustAnchors {
            path: path.to_path_buf(),
        });
    }
    Ok(anchors)
}

/// The anchors in hickory's form: each key trusted for its own zone only.
pub fn trust_anchors(anchors: &[TrustAnchor]) -> TrustAnchors {
    let mut set = TrustAnchors::empty();
    for anchor in anchors {
        set.insert_with_name(&anchor.key, LowerName::new(&anchor.zone));
    }
    set
}

/// Parses trust-anchor text; an error carries the 1-based line number and the reason.
pub fn parse_trust_anchors(text: &str) -> Result<Vec<TrustAnchor>, (usize, String)> {
    let mut anchors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split(';').next().unwrap_or_default();
        if content.trim().is_empty() {
            continue;
        }
        anchors.push(parse_dnskey_line(content).map_err(|reason| (index + 1, reason))?);
    }
    Ok(anchors)
}

/// One `owner [ttl] [IN] DNSKEY flags protocol algorithm key…` line.
fn parse_dnskey_line(line: &str) -> Result<TrustAnchor, String> {
    if line.contains('(') || line.contains(')') {
        return Err("records spread over lines with parentheses are not supported".into());
    }
    let mut tokens = line.split_whitespace();
    let owner = tokens.next().ok_or("empty line")?;
    let mut zone = Name::from_ascii(owner).map_err(|e| format!("owner {owner:?}: {e}"))?;
    zone.set_fqdn(true);
    // An optional TTL and class, in either order (RFC 1035 §5.1), then the type.
    loop {
        match tokens.next() {
            Some(t) if t.eq_ignore_ascii_case("DNSKEY") => break,
            Some(t) if t.eq_ignore_ascii_case("IN") || t.bytes().all(|b| b.is_ascii_digit()) => {}
            Some(t) => return Err(format!("expected DNSKEY, found {t:?}")),
            None => return Err("no DNSKEY record on this line".into()),
        }
    }
    let flags: u16 = number(tokens.next(), "flags")?;
    let protocol: u8 = number(tokens.next(), "protocol")?;
    let algorithm: u8 = number(tokens.next(), "algorithm")?;
    let key_text: String = tokens.collect();
    // RFC 4034 §2.1.1: only a key with the Zone Key bit may verify zone data.
    if flags & 0x0100 == 0 {
        return Err(format!(
            "flags {flags}: not a zone key (the 256 bit is unset)"
        ));
    }
    // RFC 5011 §2.1: a revoked key must not be used as an anchor.
    if flags & 0x0080 != 0 {
        return Err(format!("flags {flags}: the key is revoked"));
    }
    // RFC 4034 §2.1.2: the protocol field must be 3.
    if protocol != 3 {
        return Err(format!("protocol {protocol}: must be 3"));
    }
    let algorithm = Algorithm::from_u8(algorithm);
    if !algorithm.is_supported() {
        return Err(format!(
            "algorithm {algorithm}: not supported by the validator"
        ));
    }
    if key_text.is_empty() {
        return Err("no public key".into());
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_text.as_bytes())
        .map_err(|e| format!("public key is not base64: {e}"))?;
    check_key_length(algorithm, key.len())?;
    Ok(TrustAnchor {
        zone,
        flags,
        key: PublicKeyBuf::new(key, algorithm),
    })
}

fn number<T: std::str::FromStr>(token: Option<&str>, field: &str) -> Result<T, String> {
    let token = token.ok_or_else(|| format!("missing {field}"))?;
    token
        .parse()
        .map_err(|_| format!("{field} {token:?} is not a number in range"))
}

/// Public key sizes of the fixed-size algorithms (RFC 6605 §4, RFC 8080 §3); RSA keys vary.
fn check_key_length(algorithm: Algorithm, len: usize) -> Result<(), String> {
    let expected = match algorithm {
        Algorithm::ECDSAP256SHA256 => Some(64),
        Algorithm::ECDSAP384SHA384 => Some(96),
        Algorithm::ED25519 => Some(32),
        _ => None,
    };
    match expected {
        Some(n) if n != len => Err(format!(
            "public key of {len} bytes; algorithm {algorithm} needs {n}"
        )),
        _ if len == 0 => Err("empty public key".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::rdata::{A, CNAME, SOA};

    const P256: &str =
        "mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==";

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn record(owner: &str, rdata: RData, proof: Proof) -> Record {
        let mut r = Record::from_rdata(name(owner), 60, rdata);
        r.proof = proof;
        r
    }

    fn a(owner: &str, proof: Proof) -> Record {
        record(owner, RData::A(A::new(192, 0, 2, 1)), proof)
    }

    fn good(text: &str) -> TrustAnchor {
        let mut anchors = parse_trust_anchors(text).unwrap();
        assert_eq!(anchors.len(), 1, "{text}");
        anchors.remove(0)
    }

    fn bad(text: &str, reason: &str) {
        let (line, why) = parse_trust_anchors(text).unwrap_err();
        assert_eq!(line, text.lines().count(), "{text}");
        assert!(why.contains(reason), "{text}: {why}");
    }

    #[test]
    fn trust_anchor_lines() {
        let t = good(&format!("example.test. IN DNSKEY 257 3 13 {P256}"));
        assert_eq!(t.zone, name("example.test."));
        assert_eq!(t.flags, 257);
        use hickory_resolver::proto::dnssec::PublicKey;
        assert_eq!(t.key.algorithm(), Algorithm::ECDSAP256SHA256);
        assert_eq!(t.key.public_bytes().len(), 64);
        // TTL and class in either order, a relative owner, a key split by spaces, a comment.
        let (head, tail) = P256.split_at(20);
        let t = good(&format!(
            "example.test 3600 in dnskey 256 3 13 {head} {tail} ; zsk"
        ));
        assert_eq!(t.zone, name("example.test."));
        good(&format!("test. IN 60 DNSKEY 257 3 13 {P256}"));
        let root = good(&format!(". DNSKEY 257 3 13 {P256}"));
        assert!(root.zone.is_root());
        // Comments and blank lines only: no anchors (the file loader rejects that).
        assert!(parse_trust_anchors("; nothing\n\n   \n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn trust_anchor_errors_name_the_line() {
        bad(
            &format!("; ok\nexample.test. IN DS 1 13 2 {P256}"),
            "expected DNSKEY",
        );
        bad("\nexample.test. IN DNSKEY 257 3 13", "no public key");
        bad(&format!("x. DNSKEY 1 3 13 {P256}"), "not a zone key");
        bad(&format!("x. DNSKEY 385 3 13 {P256}"), "revoked");
        bad(&format!("x. DNSKEY 257 4 13 {P256}"), "protocol 4");
        bad(&format!("x. DNSKEY 257 3 99 {P256}"), "not supported");
        bad("x. DNSKEY 257 3 13 !!!", "not base64");
        bad("x. DNSKEY 257 3 13 AAAA", "needs 64");
        bad(&format!("x. DNSKEY 70000 3 13 {P256}"), "flags");
        bad(&format!("x. DNSKEY 257 3 13 ( {P256} )"), "parentheses");
        bad("x. IN", "no DNSKEY");
    }

    #[test]
    fn trust_anchor_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("mxguard-ta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("anchors");
        std::fs::write(&path, "; header\nexample.test. IN DNSKEY 257 3 13 AAAA\n").unwrap();
        let err = load_trust_anchors(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 2"), "{err}");
        std::fs::write(&path, "; nothing\n").unwrap();
        assert!(matches!(
            load_trust_anchors(&path),
            Err(DnssecSetupError::NoTrustAnchors { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            load_trust_anchors(&path),
            Err(DnssecSetupError::Read { .. })
        ));
    }

    #[test]
    fn anchors_are_trusted_for_their_own_zone() {
        let anchors = parse_trust_anchors(&format!("test. IN DNSKEY 257 3 13 {P256}")).unwrap();
        let set = trust_anchors(&anchors);
        let key = &anchors[0].key;
        assert!(set.contains_with_name(key, &LowerName::new(&name("test."))));
        assert!(!set.contains_with_name(key, &LowerName::new(&name("other.test."))));
        assert!(set.is_empty(), "no root keys");
    }

    #[test]
    fn positive_answers_take_the_weakest_proof() {
        let rrsig_free = |proof| vec![a("mx.example.test.", proof)];
        let secure = classify_answer(RecordType::A, &rrsig_free(Proof::Secure)).unwrap();
        assert_eq!(secure.status, Security::Secure);
        assert_eq!(secure.records, vec![RData::A(A::new(192, 0, 2, 1))]);
        let insecure = classify_answer(RecordType::A, &rrsig_free(Proof::Insecure)).unwrap();
        assert_eq!(insecure.status, Security::Insecure);
        assert!(matches!(
            classify_answer(RecordType::A, &rrsig_free(Proof::Bogus)),
            Err(DnssecFailure::Bogus(_))
        ));
        assert!(matches!(
            classify_answer(RecordType::A, &rrsig_free(Proof::Indeterminate)),
            Err(DnssecFailure::Bogus(_))
        ));
        // A secure CNAME into an insecure zone: insecure; the CNAME itself is not returned.
        let cname = record(
            "alias.example.test.",
            RData::CNAME(CNAME(name("mx.other.test."))),
            Proof::Secure,
        );
        let chain = vec![cname.clone(), a("mx.other.test.", Proof::Insecure)];
        let answer = classify_answer(RecordType::A, &chain).unwrap();
        assert_eq!(answer.status, Security::Insecure);
        assert_eq!(answer.records.len(), 1);
        // Only a CNAME and no record of the type: NODATA.
        assert_eq!(
            classify_answer(RecordType::A, &[cname]),
            Err(DnssecFailure::NoData { secure: true })
        );
    }

    fn no_records(code: ResponseCode, authorities: Vec<Record>) -> NetError {
        let mut nr = NoRecords::new(Query::query(name("x.example.test."), RecordType::A), code);
        nr.authorities = Some(authorities.into());
        NetError::Dns(DnsError::NoRecordsFound(nr))
    }

    fn soa(proof: Proof) -> Record {
        let soa = SOA::new(
            name("ns.example.test."),
            name("h.example.test."),
            1,
            1,
            1,
            1,
            1,
        );
        record("example.test.", RData::SOA(soa), proof)
    }

    #[test]
    fn negative_answers_are_secure_only_when_proven() {
        assert_eq!(
            classify_error(&no_records(
                ResponseCode::NXDomain,
                vec![soa(Proof::Secure)]
            )),
            DnssecFailure::NxDomain { secure: true }
        );
        assert_eq!(
            classify_error(&no_records(ResponseCode::NoError, vec![soa(Proof::Secure)])),
            DnssecFailure::NoData { secure: true }
        );
        assert_eq!(
            classify_error(&no_records(
                ResponseCode::NoError,
                vec![soa(Proof::Secure), a("x.example.test.", Proof::Insecure)]
            )),
            DnssecFailure::NoData { secure: false }
        );
        assert_eq!(
            classify_error(&no_records(ResponseCode::NXDomain, vec![])),
            DnssecFailure::NxDomain { secure: false }
        );
        assert!(matches!(
            classify_error(&no_records(
                ResponseCode::NXDomain,
                vec![soa(Proof::Secure), a("x.example.test.", Proof::Bogus)]
            )),
            DnssecFailure::Bogus(_)
        ));
    }

    #[test]
    fn failures_to_answer_are_temporary_and_bogus_is_bogus() {
        assert!(matches!(
            classify_error(&NetError::Dns(DnsError::DnssecBogus)),
            DnssecFailure::Bogus(_)
        ));
        assert_eq!(
            classify_error(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            DnssecFailure::TempFail(ResponseCode::ServFail.to_string())
        );
        assert!(matches!(
            classify_error(&NetError::Timeout),
            DnssecFailure::TempFail(_)
        ));
        assert!(matches!(
            classify_error(&no_records(ResponseCode::Refused, vec![])),
            DnssecFailure::TempFail(_)
        ));
    }
}
