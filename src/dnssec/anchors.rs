//! The trust anchors of `[dns] trust_anchor_file` for in-process validation.
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

use base64::Engine as _;
use hickory_resolver::proto::dnssec::{Algorithm, PublicKeyBuf, TrustAnchors};
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
    #[error("trust anchor file {}: no DNSKEY lines", path.display())]
    NoTrustAnchors { path: PathBuf },
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
pub fn load_trust_anchors(path: &Path) -> Result<Vec<TrustAnchor>, TrustAnchorError> {
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

    const P256: &str =
        "mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==";

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
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
        let anchors = parse_trust_anchors(&format!("test. IN DNSKEY 257 3 13 {P256}")).unwrap();
        let set = trust_anchors(&anchors);
        let key = &anchors[0].key;
        assert!(set.contains_with_name(key, &LowerName::new(&name("test."))));
        assert!(!set.contains_with_name(key, &LowerName::new(&name("other.test."))));
        assert!(set.is_empty(), "no root keys");
    }
}
