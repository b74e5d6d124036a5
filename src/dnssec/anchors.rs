//! The trust anchors of `[dns] trust_anchor_file` for in-process validation.
//!
//! **The trust-anchor file** holds one DNSKEY or DS record per line in zone-file presentation
//! form (the form of unbound's `trust-anchor-file`, BIND's key files and `ldns-key2ds` or
//! `dnssec-dsfromkey` output), without parentheses:
//!
//! ```text
//! ; comments start with a semicolon; blank lines are ignored
//! .            IN DS     20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
//! example.org. 3600 IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0d…
//! ```
//!
//! A DNSKEY line is: owner name, an optional TTL and class (`IN`, in either order), `DNSKEY`,
//! flags, protocol, algorithm and the base64 public key (which may be split by spaces). The key
//! must be a zone key (flag 256, RFC 4034 §2.1.1), not revoked (flag 128, RFC 5011 §2.1),
//! protocol 3 (RFC 4034 §2.1.2), of an algorithm the validator implements (RSA/SHA-256 and
//! SHA-512, ECDSA P-256 and P-384, Ed25519).
//!
//! A DS line is: owner, optional TTL and class, `DS`, key tag, algorithm, digest type (1 SHA-1,
//! 2 SHA-256, 4 SHA-384) and the hex digest (which may be split by spaces). A DS anchor names a
//! key rather than holding it: the validator fetches the zone's DNSKEY RRset and trusts the
//! keys whose digest matches (RFC 4034 §5), as unbound does.

use base64::Engine as _;
use hickory_resolver::proto::dnssec::rdata::DS;
use hickory_resolver::proto::dnssec::{Algorithm, DigestType, PublicKeyBuf, TrustAnchors};
use hickory_resolver::proto::rr::{LowerName, Name};
use std::path::Path;
use std::path::PathBuf;

/// Why the trust-anchor file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustAnchorError {
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
    #[error("trust anchor file {}: no DNSKEY or DS lines", path.display())]
    NoTrustAnchors { path: PathBuf },
}

/// A DS trust anchor: the digest of a zone's key (RFC 4034 §5), the form of the IANA root
/// anchor; the key itself comes from the zone's DNSKEY RRset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsAnchor {
    pub zone: Name,
    pub ds: DS,
}

/// One line of the trust-anchor file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    Key(TrustAnchor),
    Ds(DsAnchor),
}

impl Anchor {
    /// The zone the anchor is for.
    pub fn zone(&self) -> &Name {
        match self {
            Anchor::Key(k) => &k.zone,
            Anchor::Ds(d) => &d.zone,
        }
    }
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

/// Reads and parses a trust-anchor file (format in the module documentation).
pub fn load_trust_anchors(path: &Path) -> Result<Vec<Anchor>, TrustAnchorError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrustAnchorError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let anchors =
        parse_trust_anchors(&text).map_err(|(line, reason)| TrustAnchorError::TrustAnchor {
            path: path.to_path_buf(),
            line,
            reason,
        })?;
    if anchors.is_empty() {
        return Err(TrustAnchorError::NoTrustAnchors {
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
pub fn parse_trust_anchors(text: &str) -> Result<Vec<Anchor>, (usize, String)> {
    let mut anchors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split(';').next().unwrap_or_default();
        if content.trim().is_empty() {
            continue;
        }
        anchors.push(parse_line(content).map_err(|reason| (index + 1, reason))?);
    }
    Ok(anchors)
}

/// The DNSKEY anchors among `anchors`.
pub fn keys(anchors: &[Anchor]) -> Vec<TrustAnchor> {
    anchors
        .iter()
        .filter_map(|a| match a {
            Anchor::Key(k) => Some(k.clone()),
            Anchor::Ds(_) => None,
        })
        .collect()
}

/// The DS anchors among `anchors`.
pub fn ds_anchors(anchors: &[Anchor]) -> Vec<DsAnchor> {
    anchors
        .iter()
        .filter_map(|a| match a {
            Anchor::Ds(d) => Some(d.clone()),
            Anchor::Key(_) => None,
        })
        .collect()
}

/// One `owner [ttl] [IN] DNSKEY|DS …` line.
fn parse_line(line: &str) -> Result<Anchor, String> {
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
            Some(t) if t.eq_ignore_ascii_case("DNSKEY") => {
                return parse_dnskey(zone, tokens).map(Anchor::Key)
            }
            Some(t) if t.eq_ignore_ascii_case("DS") => {
                return parse_ds(zone, tokens).map(Anchor::Ds)
            }
            Some(t) if t.eq_ignore_ascii_case("IN") || t.bytes().all(|b| b.is_ascii_digit()) => {}
            Some(t) => return Err(format!("expected DNSKEY or DS, found {t:?}")),
            None => return Err("no DNSKEY or DS record on this line".into()),
        }
    }
}

/// `key-tag algorithm digest-type digest…` (RFC 4034 §5.3).
fn parse_ds<'a>(zone: Name, mut tokens: impl Iterator<Item = &'a str>) -> Result<DsAnchor, String> {
    let key_tag: u16 = number(tokens.next(), "key tag")?;
    let algorithm = Algorithm::from_u8(number(tokens.next(), "algorithm")?);
    if !algorithm.is_supported() {
        return Err(format!(
            "algorithm {algorithm}: not supported by the validator"
        ));
    }
    let digest_type: u8 = number(tokens.next(), "digest type")?;
    let length = match digest_type {
        1 => 20,
        2 => 32,
        4 => 48,
        other => {
            return Err(format!(
                "digest type {other}: not SHA-1, SHA-256 or SHA-384"
            ))
        }
    };
    let hex: String = tokens.collect();
    let digest = decode_hex(&hex).ok_or_else(|| format!("digest {hex:?} is not hex"))?;
    if digest.len() != length {
        return Err(format!(
            "digest of {} bytes; digest type {digest_type} needs {length}",
            digest.len()
        ));
    }
    Ok(DsAnchor {
        zone,
        ds: DS::new(key_tag, algorithm, DigestType::from(digest_type), digest),
    })
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `flags protocol algorithm key…` (RFC 4034 §2.2).
fn parse_dnskey<'a>(
    zone: Name,
    mut tokens: impl Iterator<Item = &'a str>,
) -> Result<TrustAnchor, String> {
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

    const P256: &str =
        "mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==";

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn good(text: &str) -> TrustAnchor {
        let mut anchors = parse_trust_anchors(text).unwrap();
        assert_eq!(anchors.len(), 1, "{text}");
        match anchors.remove(0) {
            Anchor::Key(k) => k,
            Anchor::Ds(d) => panic!("a DS anchor: {d:?}"),
        }
    }

    const ROOT_DS: &str =
        ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D";

    #[test]
    fn ds_lines() {
        let anchors = parse_trust_anchors(&format!("{ROOT_DS}\n")).unwrap();
        let Anchor::Ds(ds) = &anchors[0] else {
            panic!("not a DS anchor")
        };
        assert!(ds.zone.is_root());
        assert_eq!(ds.ds.key_tag(), 20326);
        assert_eq!(ds.ds.digest().len(), 32);
        // The digest may be split, and the TTL and class come in either order.
        let split = "test. 3600 IN DS 1 13 2 E06D44B80B8F1D39A95C0B0D7C65D084 58E880409BBC683457104237C7F8EC8D";
        assert!(matches!(
            parse_trust_anchors(split).unwrap()[0],
            Anchor::Ds(_)
        ));
        bad(". IN DS 20326 8 2 E06D44", "needs 32");
        bad(". IN DS 20326 8 3 E06D44", "digest type 3");
        bad(". IN DS 20326 8 2 XYZ0", "not hex");
        bad(". IN DS 20326 1 2 E06D", "not supported");
        assert_eq!(ds_anchors(&anchors).len(), 1);
        assert!(keys(&anchors).is_empty());
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
            &format!("; ok\nexample.test. IN TXT 1 13 2 {P256}"),
            "expected DNSKEY or DS",
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
            Err(TrustAnchorError::NoTrustAnchors { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            load_trust_anchors(&path),
            Err(TrustAnchorError::Read { .. })
        ));
    }

    #[test]
    fn anchors_are_trusted_for_their_own_zone() {
        let anchors =
            keys(&parse_trust_anchors(&format!("test. IN DNSKEY 257 3 13 {P256}")).unwrap());
        let set = trust_anchors(&anchors);
        let key = &anchors[0].key;
        assert!(set.contains_with_name(key, &LowerName::new(&name("test."))));
        assert!(!set.contains_with_name(key, &LowerName::new(&name("other.test."))));
        assert!(set.is_empty(), "no root keys");
    }
}
