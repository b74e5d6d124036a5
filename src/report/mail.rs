//! A TLS-RPT report as a mail message (RFC 8460 §5.3).
//!
//! A report sent to a `mailto:` address is a `multipart/report; report-type="tlsrpt"` message
//! with two parts: a few words for a human (`text/plain`) and the gzip'd JSON report as an
//! `application/tlsrpt+gzip` attachment named as §5.1 says. Two header fields of its own,
//! `TLS-Report-Domain` (the policy domain) and `TLS-Report-Submitter` (us), let the receiver
//! sort reports without opening them, and the subject follows §5.3's
//! `Report Domain: … Submitter: … Report-ID: <…>` form.
//!
//! RFC 8460 §3 makes the receiver discard report mail without a valid DKIM signature of the
//! reporting domain, and forbids the `l=` tag. [`DkimKey`] is that signing key (RSA or
//! Ed25519, from a PEM file); [`dkim_dns_record`] is the TXT record the operator publishes for
//! it, with the `tlsrpt` service type §3 asks for (`s=email:tlsrpt`).
//!
//! Everything here is pure: [`build`] turns a [`ReportMail`] into bytes; queueing is the
//! caller's business.

use mail_auth::common::crypto::{DkimKey as SigningKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};
use std::path::Path;

/// The media type of a gzip'd report (RFC 8460 §6.5).
pub const GZIP_MEDIA_TYPE: &str = "application/tlsrpt+gzip";

/// The header fields the signature covers. RFC 8460 §5.3 wants the two `TLS-Report-*` fields
/// signed; the rest is what makes the message what it is (RFC 6376 §5.4.1's list, plus the
/// MIME fields, so that nobody can re-type the attachment).
pub const SIGNED_HEADERS: [&str; 9] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "TLS-Report-Domain",
    "TLS-Report-Submitter",
    "MIME-Version",
    "Content-Type",
];

/// The DKIM key that signs report mail, with the selector and domain it is published under.
pub struct DkimKey {
    signer: DkimSigner<SigningKey, Done>,
    selector: String,
    domain: String,
    /// `k=` of the DNS record: `rsa` or `ed25519`.
    kind: &'static str,
    /// `p=` of the DNS record, before base64: the SubjectPublicKeyInfo for RSA (what
    /// `openssl rsa -pubout` prints, which every verifier reads), the bare 32-byte key for
    /// Ed25519 (RFC 8463 §4.2).
    public_key: Vec<u8>,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DkimKey({} s={} d={})",
            self.kind, self.selector, self.domain
        )
    }
}

impl DkimKey {
    /// Reads an unencrypted PEM private key: RSA as PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8
    /// (`PRIVATE KEY`), or Ed25519 as PKCS#8. Errors name the file and what is wrong with it.
    pub fn load(path: &Path, selector: &str, domain: &str) -> Result<DkimKey, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("DKIM key file {}: {e}", path.display()))?;
        DkimKey::from_pem(&pem, selector, domain)
            .map_err(|e| format!("DKIM key file {}: {e}", path.display()))
    }

    /// [`DkimKey::load`] on the file's contents.
    pub fn from_pem(pem: &[u8], selector: &str, domain: &str) -> Result<DkimKey, String> {
        let selector = dkim_selector(selector)?;
        let domain = domain_name(domain, "DKIM domain")?;
        let (key, kind, public_key) = signing_key(pem)?;
        // RFC 8460 §3: no `l=` (mail-auth writes none unless asked); RFC 6376 §3.4: relaxed
        // header and body canonicalization survive the re-folding relays do.
        let signer = DkimSigner::from_key(key)
            .domain(domain.clone())
            .selector(selector.clone())
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .body_length(false);
        Ok(DkimKey {
            signer,
            selector,
            domain,
            kind,
            public_key,
        })
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `<selector>._domainkey.<domain>`: where [`dkim_dns_record`] is published.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// `message` with a `DKIM-Signature` field in front.
    fn sign(&self, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let signature = self
            .signer
            .sign(&message)
            .map_err(|e| format!("DKIM signing failed: {e}"))?;
        let mut signed = signature.to_header().into_bytes();
        signed.extend_from_slice(&message);
        Ok(signed)
    }
}

/// The TXT record text to publish at [`DkimKey::dns_name`]:
/// `v=DKIM1; k=rsa; s=email:tlsrpt; p=…`. RFC 8460 §3: the record SHOULD list the
/// `tlsrpt` service, and receivers SHOULD ignore report signatures whose record does not.
/// `email` is listed too: RFC 6376 §3.6.1 has a plain mail verifier (DMARC at the
/// receiving MX) ignore a record without it, and a report whose signature no longer counts
/// for DMARC could be refused before it reaches the report processor. A record
/// longer than 255 characters (any RSA key) goes into DNS as several strings of one TXT
/// record, which verifiers join.
pub fn dkim_dns_record(key: &DkimKey) -> String {
    use base64::Engine as _;
    format!(
        "v=DKIM1; k={}; s=email:tlsrpt; p={}",
        key.kind,
        base64::engine::general_purpose::STANDARD.encode(&key.public_key)
    )
}

/// One report, as mail to its addresses. Every text must be header-safe; [`build`] says which
/// is not.
#[derive(Debug, Clone, Copy)]
pub struct ReportMail<'a> {
    /// Our reporting address (`From`).
    pub from: &'a str,
    /// The `mailto:` addresses of the policy domain's `rua` (`To`).
    pub to: &'a [String],
    /// The domain the report is about (`TLS-Report-Domain`, the subject).
    pub policy_domain: &'a str,
    /// Our domain as the reporting organisation (`TLS-Report-Submitter`, the subject).
    pub submitter: &'a str,
    /// The report's `report-id` (RFC 8460 §4.4); the subject shows it as a msg-id.
    pub report_id: &'a str,
    /// The attachment's name (RFC 8460 §5.1).
    pub file_name: &'a str,
    /// The gzip'd JSON report, attached as it is.
    pub gzip: &'a [u8],
    /// Our host name: the right side of the `Message-ID`.
    pub hostname: &'a str,
    /// The `text/plain` part.
    pub human_text: &'a str,
}

/// The whole RFC 5322 message (CRLF line ends), DKIM-signed with `dkim` when given.
pub fn build(mail: &ReportMail, dkim: Option<&DkimKey>) -> Result<Vec<u8>, String> {
    let fields = Fields::check(mail)?;
    let message = assemble(mail, &fields)?;
    match dkim {
        Some(key) => key.sign(message),
        None => Ok(message),
    }
}

/// The header values of a [`ReportMail`], checked: nothing a peer put into a domain name or
/// an address can end a header line or start a new field.
struct Fields {
    from: String,
    to: Vec<String>,
    policy_domain: String,
    submitter: String,
    /// With its angle brackets.
    report_id: String,
    file_name: String,
    message_id: String,
}

impl Fields {
    fn check(mail: &ReportMail) -> Result<Fields, String> {
        if mail.to.is_empty() {
            return Err("report mail: no recipient".into());
        }
        let submitter = domain_name(mail.submitter, "submitter")?;
        let hostname = domain_name(mail.hostname, "host name")?;
        Ok(Fields {
            from: address(mail.from, "From")?,
            to: mail
                .to
                .iter()
                .map(|a| address(a, "To"))
                .collect::<Result<_, _>>()?,
            policy_domain: domain_name(mail.policy_domain, "policy domain")?,
            report_id: report_msg_id(mail.report_id, &submitter)?,
            file_name: file_name(mail.file_name)?,
            message_id: message_id(&hostname),
            submitter,
        })
    }
}

/// The unsigned message, by mail-builder (which base64s the binary part and folds lines).
fn assemble(mail: &ReportMail, f: &Fields) -> Result<Vec<u8>, String> {
    let text = MimePart::new(
        ContentType::new("text/plain").attribute("charset", "utf-8"),
        BodyPart::Text(to_crlf(mail.human_text).into()),
    );
    // RFC 8460 §5.3: the report is the `application/tlsrpt+gzip` part, found by media type
    // and file name; `name=` is for older clients that look only at Content-Type.
    let report = MimePart::new(
        ContentType::new(GZIP_MEDIA_TYPE).attribute("name", f.file_name.as_str()),
        BodyPart::Binary(mail.gzip.into()),
    )
    .attachment(f.file_name.as_str());
    let to: Vec<Address> =
        f.to.iter()
            .map(|a| Address::new_address(None::<&str>, a.as_str()))
            .collect();
    MessageBuilder::new()
        .from(Address::new_address(None::<&str>, f.from.as_str()))
        .to(Address::new_list(to))
        // RFC 8460 §5.3: `Report Domain: <policy domain> Submitter: <us> Report-ID: <msg-id>`,
        // as plain text: mail-builder's `Text` would make RFC 2047 encoded-words of it.
        .header(
            "Subject",
            Raw::new(format!(
                "Report Domain: {} Submitter: {} Report-ID: {}",
                f.policy_domain, f.submitter, f.report_id
            )),
        )
        .date(Date::now())
        .message_id(MessageId::new(f.message_id.as_str()))
        .header("TLS-Report-Domain", Raw::new(f.policy_domain.as_str()))
        .header("TLS-Report-Submitter", Raw::new(f.submitter.as_str()))
        // RFC 3834 §5: machine-made; auto-responders must not answer it.
        .header("Auto-Submitted", Raw::new("auto-generated"))
        // RFC 8460 §5.3: a report must not be stopped by the TLS failures it reports; RFC
        // 8689 §5 asks every relay on the way to deliver it without TLS policy.
        .header("TLS-Required", Raw::new("No"))
        .header("MIME-Version", Raw::new("1.0"))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
            BodyPart::Multipart(vec![text, report]),
        ))
        .write_to_vec()
        .map_err(|e| format!("building the report mail: {e}"))
}

// ---- header values ---------------------------------------------------------------------------

/// A domain name fit for a header: A-labels (RFC 8460 §5.1 wants them in names), letters,
/// digits, hyphens, dots; no trailing dot.
fn domain_name(name: &str, what: &str) -> Result<String, String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let ascii = idna::domain_to_ascii(trimmed)
        .map_err(|_| format!("{what} {name:?} is not a valid domain name"))?;
    let plausible = !ascii.is_empty()
        && ascii.len() <= 253
        && ascii.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if plausible {
        Ok(ascii)
    } else {
        Err(format!("{what} {name:?} is not a valid domain name"))
    }
}

/// A DKIM selector (RFC 6376 §3.1): dot-separated labels of letters, digits and hyphens
/// (underscores allowed, as DNS owners may have them).
fn dkim_selector(selector: &str) -> Result<String, String> {
    let ok = !selector.is_empty()
        && selector.len() <= 63
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(selector.to_ascii_lowercase())
    } else {
        Err(format!("DKIM selector {selector:?} is not a DNS label"))
    }
}

/// A plain `local@domain` address, ASCII (the report's envelope does not ask for SMTPUTF8),
/// without anything that would need quoting or could break the header.
fn address(addr: &str, what: &str) -> Result<String, String> {
    let bad = || format!("{what} address {addr:?} is not a plain local@domain address");
    let (local, domain) = addr.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:@\"".contains(&b));
    if !local_ok {
        return Err(bad());
    }
    let domain = domain_name(domain, what).map_err(|_| bad())?;
    Ok(format!("{local}@{domain}"))
}

/// The subject's Report-ID as RFC 5322's `msg-id`, as RFC 8460 §5.3's ABNF has it. A
/// report-id already of the `left@right` form (RFC 8460 §4.4 suggests one) is used as it is;
/// another gets `@<submitter>` added.
fn report_msg_id(report_id: &str, submitter: &str) -> Result<String, String> {
    let id = report_id.trim_start_matches('<').trim_end_matches('>');
    // 250: room for the subject's other words within RFC 5322 §2.1.1's 998 octets a line.
    if id.is_empty()
        || id.len() > 250
        || !id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
    {
        return Err(format!("report-id {report_id:?} cannot appear in a header"));
    }
    if id.contains('@') {
        Ok(format!("<{id}>"))
    } else {
        Ok(format!("<{id}@{submitter}>"))
    }
}

/// RFC 8460 §5.1 names are domains, `!`, digits and dots: anything else is refused rather
/// than quoted.
fn file_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"\\;/".contains(&b));
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!("report file name {name:?} is not plain ASCII"))
    }
}

/// A fresh `Message-ID` (without brackets): random, so that the same report mailed again (a
/// new period's retry, another address) is never taken for a duplicate by its id.
fn message_id(hostname: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("tlsrpt.{secs}.{:016x}@{hostname}", rand::random::<u64>())
}

/// Text with every line ending as CRLF (RFC 5322 §2.3), whatever the caller wrote.
fn to_crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        match line.strip_suffix('\n') {
            Some(body) => {
                out.push_str(body.strip_suffix('\r').unwrap_or(body));
                out.push_str("\r\n");
            }
            None => out.push_str(line),
        }
    }
    out
}

// ---- keys ------------------------------------------------------------------------------------

/// The signing key in `pem`, its `k=` name and its `p=` bytes.
fn signing_key(pem: &[u8]) -> Result<(SigningKey, &'static str, Vec<u8>), String> {
    match private_key(pem)? {
        PrivateKey::Rsa(der) => {
            let key = RsaKey::<Sha256>::from_key_der(der)
                .map_err(|e| format!("RSA key not usable ({e}); DKIM needs 2048 to 8192 bits"))?;
            let spki = rsa_spki(&key.public_key());
            Ok((SigningKey::Rsa(key), "rsa", spki))
        }
        PrivateKey::Ed25519(der) => {
            let der = der.secret_pkcs8_der();
            // PKCS#8 v2 carries the public key and is checked against it; v1 (what
            // `openssl genpkey` writes) has none to check.
            let key = Ed25519Key::from_pkcs8_der(der)
                .or_else(|_| Ed25519Key::from_pkcs8_maybe_unchecked_der(der))
                .map_err(|e| format!("Ed25519 key not usable: {e}"))?;
            let public_key = key.public_key();
            Ok((SigningKey::Ed25519(key), "ed25519", public_key))
        }
    }
}

/// The private key in a PEM file, by algorithm.
enum PrivateKey {
    Rsa(PrivateKeyDer<'static>),
    Ed25519(PrivatePkcs8KeyDer<'static>),
}

/// `rsaEncryption` (RFC 8017 App. C), `id-Ed25519` (RFC 8410 §3), `id-ecPublicKey`
/// (RFC 5480 §2.1.1), `id-Ed448`: the OIDs' DER contents.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];

/// The first private key in `pem`, or what is there instead.
fn private_key(pem: &[u8]) -> Result<PrivateKey, String> {
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| format!("not readable as PEM: {e}"))?;
        match kind {
            SectionKind::RsaPrivateKey => {
                return Ok(PrivateKey::Rsa(PrivateKeyDer::Pkcs1(
                    PrivatePkcs1KeyDer::from(der),
                )))
            }
            SectionKind::PrivateKey => return pkcs8_key(der),
            SectionKind::EcPrivateKey => {
                return Err("an EC key: DKIM signs with RSA or Ed25519 only".into())
            }
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(pem);
    Err(if text.contains("ENCRYPTED PRIVATE KEY") {
        "the key is encrypted; give it unencrypted (openssl pkey -in KEY -out PLAIN)".into()
    } else if text.contains("OPENSSH PRIVATE KEY") {
        "an OpenSSH key; convert it to PKCS#8 (ssh-keygen -p -m PKCS8 -f KEY)".into()
    } else {
        "no private key in it (expected PEM \"RSA PRIVATE KEY\" or \"PRIVATE KEY\")".into()
    })
}

/// A PKCS#8 key (RFC 5208 §5), sorted by the algorithm it names.
fn pkcs8_key(der: Vec<u8>) -> Result<PrivateKey, String> {
    let algorithm = der::pkcs8_algorithm(&der).ok_or("PKCS#8 key not readable (bad DER)")?;
    match algorithm {
        OID_RSA => Ok(PrivateKey::Rsa(PrivateKeyDer::Pkcs8(der.into()))),
        OID_ED25519 => Ok(PrivateKey::Ed25519(der.into())),
        OID_EC => Err("an EC key: DKIM signs with RSA or Ed25519 only".into()),
        OID_ED448 => Err("an Ed448 key: DKIM signs with RSA or Ed25519 only".into()),
        _ => Err("a PKCS#8 key of an unknown algorithm: DKIM signs with RSA or Ed25519".into()),
    }
}

/// The SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) of a PKCS#1 `RSAPublicKey`.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    let mut algorithm = der::tlv(0x06, OID_RSA);
    algorithm.extend_from_slice(&[0x05, 0x00]); // parameters: NULL (RFC 8017 App. C)
    let mut bits = vec![0u8]; // no unused bits
    bits.extend_from_slice(rsa_public_key);
    let mut body = der::tlv(0x30, &algorithm);
    body.extend(der::tlv(0x03, &bits));
    der::tlv(0x30, &body)
}

/// Just enough DER (X.690) to name a PKCS#8 key's algorithm and to write an SPKI.
mod der {
    /// Splits one TLV off `input`: `(tag, contents, rest)`.
    pub fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// `PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier { OID, … }, … }` → the OID.
    pub fn pkcs8_algorithm(der: &[u8]) -> Option<&[u8]> {
        let (0x30, info, _) = read(der)? else {
            return None;
        };
        let (0x02, _version, rest) = read(info)? else {
            return None;
        };
        let (0x30, algorithm, _) = read(rest)? else {
            return None;
        };
        let (0x06, oid, _) = read(algorithm)? else {
            return None;
        };
        Some(oid)
    }

    /// `tag`, the definite length of `contents`, `contents`.
    pub fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let len = contents.len();
        let mut out = vec![tag];
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(contents);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, Txt};
    use mail_parser::{MessageParser, MimeHeaders};
    use std::collections::HashMap;
    use std::sync::Mutex;

    const POLICY_DOMAIN: &str = "example.test";
    const SUBMITTER: &str = "sender.test";
    const REPORT_ID: &str = "1700000000-1700086400.0badcafe@sender.test";
    const FILE_NAME: &str = "sender.test!example.test!1700000000!1700086399!0badcafe.json.gz";
    const HUMAN: &str = "This is an aggregate TLS report (RFC 8460).\nSee the attachment.\n";

    /// What a [`ReportMail`] borrows.
    struct Owned {
        to: Vec<String>,
        gzip: Vec<u8>,
    }

    impl Owned {
        fn new() -> Owned {
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(br#"{"organization-name":"Sender","report-id":"x"}"#)
                .unwrap();
            Owned {
                to: vec![
                    "tlsrpt@example.test".to_string(),
                    "other@reports.example.test".to_string(),
                ],
                gzip: gz.finish().unwrap(),
            }
        }

        fn mail(&self) -> ReportMail<'_> {
            ReportMail {
                from: "tlsrpt-noreply@sender.test",
                to: &self.to,
                policy_domain: POLICY_DOMAIN,
                submitter: SUBMITTER,
                report_id: REPORT_ID,
                file_name: FILE_NAME,
                gzip: &self.gzip,
                hostname: "relay.sender.test",
                human_text: HUMAN,
            }
        }
    }

    fn parse(bytes: &[u8]) -> mail_parser::Message<'_> {
        MessageParser::default().parse(bytes).expect("parses")
    }

    fn header(bytes: &[u8], name: &str) -> String {
        let message = parse(bytes);
        let raw = message
            .header_raw(name)
            .unwrap_or_else(|| panic!("no {name}"));
        raw.replace("\r\n", "").trim().to_string()
    }

    // ---- keys, made fresh for each test ------------------------------------------------------

    fn pkcs8_pem(alg: &'static rcgen::SignatureAlgorithm) -> String {
        rcgen::KeyPair::generate_for(alg)
            .expect("generate key")
            .serialize_pem()
    }

    fn rsa_pkcs8_pem() -> String {
        pkcs8_pem(&rcgen::PKCS_RSA_SHA256)
    }

    /// The same RSA key as PKCS#1: PKCS#8's `privateKey` OCTET STRING holds the
    /// `RSAPrivateKey` (RFC 5208 §5).
    fn rsa_pkcs1_pem() -> String {
        use base64::Engine as _;
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(rsa_pkcs8_pem().as_bytes()).unwrap();
        let (_, info, _) = der::read(pkcs8.secret_pkcs8_der()).unwrap();
        let (_, _, rest) = der::read(info).unwrap(); // version
        let (_, _, rest) = der::read(rest).unwrap(); // algorithm
        let (tag, pkcs1, _) = der::read(rest).unwrap();
        assert_eq!(tag, 0x04);
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs1);
        let mut pem = "-----BEGIN RSA PRIVATE KEY-----\n".to_string();
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END RSA PRIVATE KEY-----\n");
        pem
    }

    fn ed25519_pem() -> String {
        pkcs8_pem(&rcgen::PKCS_ED25519)
    }

    fn key(pem: &str) -> DkimKey {
        DkimKey::from_pem(pem.as_bytes(), "tlsrpt", SUBMITTER).expect("usable key")
    }

    // ---- verification with mail-auth, the key given as its TXT record -----------------------

    /// A TXT cache holding one DKIM record, so mail-auth's verifier never asks DNS.
    struct Records(Mutex<HashMap<Box<str>, Txt>>);

    impl mail_auth::ResolverCache<Box<str>, Txt> for Records {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().get(name).cloned()
        }

        fn remove<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().remove(name)
        }

        fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
            self.0.lock().unwrap().insert(key, value);
        }
    }

    /// A resolver with no name servers: any look-up that misses the cache fails.
    fn no_dns() -> MessageAuthenticator {
        use hickory_resolver::config::ResolverConfig;
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        MessageAuthenticator(
            hickory_resolver::TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![]),
                TokioRuntimeProvider::default(),
            )
            .build()
            .unwrap(),
        )
    }

    /// mail-auth's verdict on `message`'s DKIM signature, with `key`'s published record.
    async fn verify(message: &[u8], key: &DkimKey) -> DkimResult {
        let record = DomainKey::parse(dkim_dns_record(key).as_bytes()).expect("record parses");
        let records = Records(Mutex::new(HashMap::new()));
        records.0.lock().unwrap().insert(
            format!("{}.", key.dns_name()).into_boxed_str(),
            Txt::from(record),
        );
        let parsed = AuthenticatedMessage::parse(message).expect("message parses");
        let outputs = no_dns()
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(&records))
            .await;
        assert_eq!(outputs.len(), 1, "one signature");
        outputs[0].result().clone()
    }

    /// The tags of the message's DKIM-Signature.
    fn signature_tags(message: &[u8]) -> HashMap<String, String> {
        header(message, "DKIM-Signature")
            .split(';')
            .filter_map(|tag| tag.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.split_whitespace().collect()))
            .collect()
    }

    /// Signs with `pem`, then checks what RFC 8460 §3 and §5.3 ask of the signature, and that
    /// the verifier tells a good signature from a broken one.
    async fn signs_and_verifies(pem: &str, algorithm: &str) {
        let key = key(pem);
        let owned = Owned::new();
        let signed = build(&owned.mail(), Some(&key)).unwrap();
        assert!(signed.starts_with(b"DKIM-Signature: "));

        let tags = signature_tags(&signed);
        assert_eq!(tags["a"], algorithm);
        assert_eq!(tags["d"], SUBMITTER);
        assert_eq!(tags["s"], "tlsrpt");
        assert_eq!(tags["c"], "relaxed/relaxed");
        assert!(!tags.contains_key("l"), "RFC 8460 §3: no l= tag: {tags:?}");
        let signed_headers: Vec<String> = tags["h"]
            .split(':')
            .map(|h| h.to_ascii_lowercase())
            .collect();
        for name in SIGNED_HEADERS {
            assert!(
                signed_headers.contains(&name.to_ascii_lowercase()),
                "{name} not in h={}",
                tags["h"]
            );
        }

        assert_eq!(verify(&signed, &key).await, DkimResult::Pass);

        // A changed byte of the body (inside the base64 of the report) must break it.
        let mut tampered = signed.clone();
        let body_at = find(&tampered, b"\r\n\r\n") + 4;
        let attachment_at = body_at + find(&tampered[body_at..], b"base64\r\n\r\n") + 10;
        tampered[attachment_at] = if tampered[attachment_at] == b'A' {
            b'B'
        } else {
            b'A'
        };
        // (mail-auth calls a body hash mismatch "neutral", RFC 6376 §6.1.3 a PERMFAIL.)
        let result = verify(&tampered, &key).await;
        assert_eq!(
            result,
            DkimResult::Neutral(mail_auth::Error::Dkim(
                mail_auth::dkim::DkimError::FailedBodyHashMatch
            )),
            "tampered body"
        );

        // So must another policy domain in a signed header.
        let text = String::from_utf8(signed.clone()).unwrap();
        let forged = text.replacen(
            "TLS-Report-Domain: example.test",
            "TLS-Report-Domain: victim.test",
            1,
        );
        assert_ne!(forged, text);
        let result = verify(forged.as_bytes(), &key).await;
        assert!(
            matches!(result, DkimResult::Fail(_)),
            "tampered header: {result:?}"
        );

        // And a key that is not the signer's.
        let other = DkimKey::from_pem(ed25519_pem().as_bytes(), "tlsrpt", SUBMITTER).unwrap();
        let result = verify(&signed, &other).await;
        assert!(
            matches!(result, DkimResult::Fail(_)),
            "another key: {result:?}"
        );
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
    }

    // ---- the message ------------------------------------------------------------------------

    #[test]
    fn header_fields_follow_rfc_8460() {
        let owned = Owned::new();
        let bytes = build(&owned.mail(), None).unwrap();
        let message = parse(&bytes);
        assert_eq!(
            message.subject(),
            Some(
                "Report Domain: example.test Submitter: sender.test \
                 Report-ID: <1700000000-1700086400.0badcafe@sender.test>"
            )
        );
        let raw_subject = message.header_raw("Subject").unwrap();
        assert!(!raw_subject.contains("=?"), "not encoded: {raw_subject:?}");
        assert_eq!(header(&bytes, "TLS-Report-Domain"), POLICY_DOMAIN);
        assert_eq!(header(&bytes, "TLS-Report-Submitter"), SUBMITTER);
        assert_eq!(header(&bytes, "MIME-Version"), "1.0");
        assert_eq!(header(&bytes, "Auto-Submitted"), "auto-generated");
        assert_eq!(
            message.from().and_then(|a| a.first()?.address()),
            Some("tlsrpt-noreply@sender.test")
        );
        let to: Vec<&str> = message
            .to()
            .unwrap()
            .iter()
            .filter_map(|a| a.address())
            .collect();
        assert_eq!(to, ["tlsrpt@example.test", "other@reports.example.test"]);
        assert!(message.date().is_some());
        let id = message.message_id().unwrap();
        assert!(id.ends_with("@relay.sender.test"), "{id}");
        assert!(!bytes.starts_with(b"DKIM-Signature"));
        assert!(!header_names(&bytes).contains(&"dkim-signature".to_string()));
    }

    #[test]
    fn is_a_multipart_report_of_type_tlsrpt_with_the_gzip_attached() {
        let owned = Owned::new();
        let bytes = build(&owned.mail(), None).unwrap();
        let message = parse(&bytes);
        let ct = message.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));

        assert_eq!(
            message.body_text(0).unwrap(),
            HUMAN.replace('\n', "\r\n"),
            "the human-readable part comes first"
        );
        assert_eq!(message.attachment_count(), 1);
        let report = message.attachment(0).unwrap();
        let ct = report.content_type().unwrap();
        assert_eq!(
            (ct.ctype(), ct.subtype()),
            ("application", Some("tlsrpt+gzip"))
        );
        assert_eq!(ct.attribute("name"), Some(FILE_NAME));
        let disposition = report.content_disposition().unwrap();
        assert!(disposition.is_attachment());
        assert_eq!(disposition.attribute("filename"), Some(FILE_NAME));
        assert_eq!(report.attachment_name(), Some(FILE_NAME));
        assert_eq!(report.content_transfer_encoding(), Some("base64"));
        assert_eq!(report.contents(), owned.gzip.as_slice());
    }

    #[test]
    fn every_line_ends_in_crlf_and_is_short() {
        let owned = Owned::new();
        let key = key(&ed25519_pem());
        for bytes in [
            build(&owned.mail(), None).unwrap(),
            build(&owned.mail(), Some(&key)).unwrap(),
        ] {
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(bytes[i - 1], b'\r', "bare LF at {i}");
                }
            }
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.ends_with("\r\n"));
            // RFC 5322 §2.1.1: 998 at most; 78 but for mail-auth's DKIM-Signature line.
            for line in text.split("\r\n") {
                let limit = if line.starts_with("DKIM-Signature:") {
                    998
                } else {
                    78
                };
                assert!(line.len() <= limit, "{line:?}");
            }
        }
    }

    #[test]
    fn message_ids_are_fresh_each_time() {
        let owned = Owned::new();
        let a = build(&owned.mail(), None).unwrap();
        let b = build(&owned.mail(), None).unwrap();
        assert_ne!(header(&a, "Message-ID"), header(&b, "Message-ID"));
    }

    #[test]
    fn report_id_without_at_gets_the_submitter() {
        let owned = Owned::new();
        let mail = ReportMail {
            report_id: "2026-03-01_example.test",
            ..owned.mail()
        };
        let bytes = build(&mail, None).unwrap();
        assert!(parse(&bytes)
            .subject()
            .unwrap()
            .ends_with("Report-ID: <2026-03-01_example.test@sender.test>"));
    }

    #[test]
    fn an_idn_policy_domain_appears_as_its_a_label() {
        let owned = Owned::new();
        let mail = ReportMail {
            policy_domain: "bücher.test",
            ..owned.mail()
        };
        let bytes = build(&mail, None).unwrap();
        assert_eq!(header(&bytes, "TLS-Report-Domain"), "xn--bcher-kva.test");
    }

    #[test]
    fn values_that_would_break_the_header_are_refused() {
        let owned = Owned::new();
        let base = owned.mail();
        let injected = vec!["x@y.test\r\nBcc: victim@z.test".to_string()];
        for (mail, expect) in [
            (
                ReportMail {
                    policy_domain: "example.test\r\nBcc: victim@z.test",
                    ..base
                },
                "policy domain",
            ),
            (
                ReportMail {
                    submitter: "sender test",
                    ..base
                },
                "submitter",
            ),
            (
                ReportMail {
                    from: "<x>@sender.test",
                    ..base
                },
                "From address",
            ),
            (
                ReportMail {
                    to: &injected,
                    ..base
                },
                "To address",
            ),
            (ReportMail { to: &[], ..base }, "no recipient"),
            (
                ReportMail {
                    report_id: "a b@c",
                    ..base
                },
                "report-id",
            ),
            (
                ReportMail {
                    file_name: "a\"b.json.gz",
                    ..base
                },
                "file name",
            ),
        ] {
            let error = build(&mail, None).unwrap_err();
            assert!(error.contains(expect), "{expect}: {error}");
        }
    }

    // ---- DKIM -------------------------------------------------------------------------------

    #[tokio::test]
    async fn rsa_pkcs8_key_signs_verifiably() {
        signs_and_verifies(&rsa_pkcs8_pem(), "rsa-sha256").await;
    }

    #[tokio::test]
    async fn rsa_pkcs1_key_signs_verifiably() {
        signs_and_verifies(&rsa_pkcs1_pem(), "rsa-sha256").await;
    }

    #[tokio::test]
    async fn ed25519_key_signs_verifiably() {
        signs_and_verifies(&ed25519_pem(), "ed25519-sha256").await;
    }

    /// `openssl genpkey -algorithm ed25519` writes PKCS#8 v1, without the public key.
    #[tokio::test]
    async fn openssl_style_ed25519_key_signs_verifiably() {
        const V1: &str = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEIJv4S3QWCqVye6qYbj3HZW+JoaQdV/aeirEgxIn1sJP9\n\
            -----END PRIVATE KEY-----\n";
        signs_and_verifies(V1, "ed25519-sha256").await;
    }

    #[test]
    fn dns_records_publish_the_public_key() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;

        let rsa = key(&rsa_pkcs8_pem());
        assert_eq!(rsa.dns_name(), "tlsrpt._domainkey.sender.test");
        let record = dkim_dns_record(&rsa);
        let p = record
            .strip_prefix("v=DKIM1; k=rsa; s=email:tlsrpt; p=")
            .unwrap_or_else(|| panic!("{record}"));
        let spki = b64.decode(p).unwrap();
        // SubjectPublicKeyInfo with rsaEncryption, as `openssl rsa -pubout` writes it.
        assert_eq!(der::read(&spki).unwrap().2, b"");
        assert!(find(&spki, OID_RSA) < 10);
        assert!(spki.len() > 270, "a 2048-bit key: {}", spki.len());

        let ed = key(&ed25519_pem());
        let record = dkim_dns_record(&ed);
        let p = record
            .strip_prefix("v=DKIM1; k=ed25519; s=email:tlsrpt; p=")
            .unwrap_or_else(|| panic!("{record}"));
        assert_eq!(
            b64.decode(p).unwrap().len(),
            32,
            "RFC 8463 §4.2: the bare key"
        );
    }

    #[test]
    fn unusable_keys_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = DkimKey::load(&missing, "tlsrpt", SUBMITTER).unwrap_err();
        assert!(error.contains("missing.pem"), "{error}");

        for (pem, expect) in [
            ("not a key\n".to_string(), "no private key"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
                    .to_string(),
                "encrypted",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
                    .to_string(),
                "OpenSSH",
            ),
            (pkcs8_pem(&rcgen::PKCS_ECDSA_P256_SHA256), "an EC key"),
            (
                "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n".to_string(),
                "PKCS#8",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMAMCAQA=\n-----END RSA PRIVATE KEY-----\n"
                    .to_string(),
                "RSA key not usable",
            ),
        ] {
            let path = dir.path().join("key.pem");
            std::fs::write(&path, &pem).unwrap();
            let error = DkimKey::load(&path, "tlsrpt", SUBMITTER).unwrap_err();
            assert!(error.contains("key.pem"), "{error}");
            assert!(error.contains(expect), "{expect}: {error}");
        }

        let pem = ed25519_pem();
        for (selector, domain, expect) in [
            ("bad selector", SUBMITTER, "selector"),
            ("", SUBMITTER, "selector"),
            ("tlsrpt", "not a domain", "DKIM domain"),
        ] {
            let error = DkimKey::from_pem(pem.as_bytes(), selector, domain).unwrap_err();
            assert!(error.contains(expect), "{expect}: {error}");
        }
    }

    /// Prints a signed sample for eyes:
    /// `cargo test --lib report::mail::tests::sample -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sample() {
        let owned = Owned::new();
        let key = key(&ed25519_pem());
        let bytes = build(&owned.mail(), Some(&key)).unwrap();
        println!(
            "{}\n{}",
            String::from_utf8_lossy(&bytes),
            dkim_dns_record(&key)
        );
    }

    fn header_names(bytes: &[u8]) -> Vec<String> {
        parse(bytes)
            .headers()
            .iter()
            .map(|h| h.name().to_ascii_lowercase())
            .collect()
    }
}
