//! The lab's DNSSEC (RFC 4033, 4034, 4035; NSEC3 per RFC 5155): zone keys, the records that tie
//! a signed zone to its parent (DS) or to a validator (trust anchor), and how a signed zone is
//! served.
//!
//! A signed lab zone is signed online by hickory-server when the zone handler is built: every
//! RRset gets an RRSIG from the zone's one ECDSA P-256 key (algorithm 13, RFC 6605), which is
//! published as the zone's DNSKEY with flags 257 (zone key, secure entry point). Denial of
//! existence uses NSEC3 (RFC 5155) with SHA-1, no salt and no extra iterations, as RFC 9276 asks;
//! plain NSEC is not used because hickory-server then leaves out the wildcard proof of an
//! NXDOMAIN two labels below a missing name, which validators rightly call bogus. With NSEC3,
//! hickory-server 0.26.3 errs the other way: it adds the query name's NSEC3 to *positive*
//! answers, and hickory's validator then calls every answer bogus ("nsec3 type map covers A").
//! [`PositiveWithoutNsec3`] takes those records out of the responses the lab sends.
//!
//! **How a validator reaches the lab's zones.** Lab zones (`example.test`, `other.test`, …) have
//! no parent on the real Internet, so the chain of trust must start in the lab. Two ways work for
//! signed zones, and only one for unsigned ones (see tests/dnssec.rs, which proves both):
//! - a trust anchor per signed zone ([`ZoneKey::trust_anchor`]): answers from that zone validate
//!   as secure; but an answer from an *unsigned* zone comes back bogus, because the validator
//!   (hickory, as RFC 4035 §4.3 asks) must prove the zone insecure — a secure "no DS here" from
//!   a signed parent — and no such parent exists;
//! - a signed lab root `test.` ([`super::DnsServer::sign_root`]), whose key is the one trust
//!   anchor: it delegates to each lab zone, with a DS record for a signed zone and none for an
//!   unsigned one, so signed zones validate as secure, unsigned zones as insecure (a secure
//!   NSEC3 proof that the delegation has NS but no DS, RFC 5155 §8.6), and tampered ones as bogus.
//!
//! The trust-anchor file the relay reads (`[dns] trust_anchor_file`) holds zone-file lines:
//! `test. IN DNSKEY 257 3 13 <base64 public key>`.

use hickory_server::dnssec::NxProofKind;
use hickory_server::net::NetError;
use hickory_server::proto::dnssec::crypto::EcdsaSigningKey;
use hickory_server::proto::dnssec::rdata::{DNSSECRData, DNSKEY, DS};
use hickory_server::proto::dnssec::{
    Algorithm, DigestType, DnssecSigner, Nsec3HashAlgorithm, SigningKey,
};
use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::server::{ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use rustls::pki_types::PrivatePkcs8KeyDer;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long the lab's signatures are valid from the moment the zone is (re)built.
pub const SIGNATURE_VALIDITY: Duration = Duration::from_secs(7 * 86400);

/// The denial-of-existence proofs of every signed lab zone: NSEC3, SHA-1, empty salt, no extra
/// iterations, no opt-out (RFC 5155 §3, RFC 9276 §3.1).
pub fn nsec3() -> NxProofKind {
    NxProofKind::Nsec3 {
        algorithm: Nsec3HashAlgorithm::SHA1,
        salt: Arc::new([]),
        iterations: 0,
        opt_out: false,
    }
}

/// A zone's signing key: ECDSA P-256 with SHA-256 (RFC 6605), used both as key-signing and
/// zone-signing key (a "combined signing key"). Cloning shares the key.
#[derive(Clone)]
pub struct ZoneKey {
    /// PKCS#8 private key; a [`DnssecSigner`] is made from it each time the zone is built.
    pkcs8: Arc<Vec<u8>>,
    /// The public half, as published at the zone apex.
    dnskey: DNSKEY,
}

impl fmt::Debug for ZoneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneKey({})", self.dnskey)
    }
}

impl ZoneKey {
    /// A fresh random key.
    pub fn generate() -> ZoneKey {
        let pkcs8 = EcdsaSigningKey::generate_pkcs8(Algorithm::ECDSAP256SHA256)
            .expect("generate an ECDSA P-256 key");
        let key = EcdsaSigningKey::from_pkcs8(&pkcs8, Algorithm::ECDSAP256SHA256)
            .expect("read back the generated key");
        let public = key.to_public_key().expect("public half of the zone key");
        ZoneKey {
            pkcs8: Arc::new(pkcs8.secret_pkcs8_der().to_vec()),
            dnskey: DNSKEY::from_key(&public),
        }
    }

    /// The DNSKEY record data (flags 257, protocol 3, algorithm 13).
    pub fn dnskey(&self) -> &DNSKEY {
        &self.dnskey
    }

    /// The DS record data a parent publishes for this key at `owner` (SHA-256 digest,
    /// RFC 4034 §5, RFC 4509).
    pub fn ds(&self, owner: &Name) -> DS {
        DS::from_key(self.dnskey.public_key(), owner, DigestType::SHA256).expect("DS digest")
    }

    /// The DS as record data ready for a parent zone.
    pub fn ds_rdata(&self, owner: &Name) -> RData {
        RData::DNSSEC(DNSSECRData::DS(self.ds(owner)))
    }

    /// The trust-anchor line for this key at `owner`, in the format of the relay's
    /// `trust_anchor_file`: `example.test. IN DNSKEY 257 3 13 <base64>`.
    pub fn trust_anchor(&self, owner: &Name) -> String {
        format!("{owner} IN DNSKEY {}", self.dnskey)
    }

    /// The same anchor as a DS line (`example.test. IN DS <tag> 13 2 <hex>`), the form of the
    /// IANA root anchor.
    pub fn ds_trust_anchor(&self, owner: &Name) -> String {
        format!("{owner} IN DS {}", self.ds(owner))
    }

    /// A signer for the zone `origin`, for hickory-server's online signing.
    pub(super) fn signer(&self, origin: &Name) -> DnssecSigner {
        let der = PrivatePkcs8KeyDer::from(self.pkcs8.as_slice());
        let key = EcdsaSigningKey::from_pkcs8(&der, Algorithm::ECDSAP256SHA256)
            .expect("zone key from PKCS#8");
        DnssecSigner::new(
            self.dnskey.clone(),
            Box::new(key),
            origin.clone(),
            SIGNATURE_VALIDITY,
        )
    }
}

/// Writes `lines` (trust-anchor lines, see [`ZoneKey::trust_anchor`]) to `dir/trust-anchors`
/// with a comment header, and returns the path for `[dns] trust_anchor_file`.
pub fn write_trust_anchor_file(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("trust-anchors");
    let mut text = String::from("; mxguard lab trust anchors (one DNSKEY or DS per line)\n");
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Wraps a response handler to take out what hickory-server 0.26.3 wrongly adds to a positive
/// answer from an NSEC3-signed zone: the NSEC3 record matching the query name. An NSEC3 proof
/// belongs only in a denial or beside a wildcard expansion (RFC 5155 §7.2); a validator that
/// finds one claiming the answered type is absent must call the answer bogus (hickory's does).
/// The response is encoded, decoded, trimmed and sent on through the wrapped handler.
#[derive(Clone)]
pub(super) struct PositiveWithoutNsec3<R>(pub(super) R);

impl<R: ResponseHandler> PositiveWithoutNsec3<R> {
    async fn send<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::new();
        response.destructive_emit(&mut BinEncoder::new(&mut bytes))?;
        let mut message = Message::from_vec(&bytes)?;
        // A wildcard expansion shows as an RRSIG with fewer labels than its owner (RFC 4035
        // §5.3.4); only then is an NSEC3 needed beside the answer.
        let wildcard = message.answers.iter().any(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(sig)) => sig.input().num_labels < r.name.num_labels(),
            _ => false,
        });
        if message.metadata.response_code == ResponseCode::NoError
            && !message.answers.is_empty()
            && !wildcard
        {
            message
                .authorities
                .retain(|r| !is_nsec3_or_its_signature(r));
        }
        // The question section follows the 12-byte header (RFC 1035 §4.1).
        let queries = Queries::read(&mut BinDecoder::new(&bytes[12..]), message.queries.len())?;
        let trimmed = MessageResponseBuilder::new(&queries, message.edns.as_ref()).build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            std::iter::empty(),
            message.additionals.iter(),
        );
        self.0.send_response(trimmed).await
    }
}

fn is_nsec3_or_its_signature(record: &Record) -> bool {
    match &record.data {
        RData::DNSSEC(DNSSECRData::NSEC3(_)) => true,
        RData::DNSSEC(DNSSECRData::RRSIG(sig)) => sig.input().type_covered == RecordType::NSEC3,
        _ => false,
    }
}

// The trait is declared with `#[async_trait]`; this is its expansion, written out so the lab
// needs no extra dependency.
impl<R: ResponseHandler> ResponseHandler for PositiveWithoutNsec3<R> {
    fn send_response<'a, 'life0, 'life1, 'async_trait>(
        &'life0 mut self,
        response: MessageResponse<
            'life1,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a + 'async_trait,
            impl Iterator<Item = &'a Record> + Send + 'a + 'async_trait,
            impl Iterator<Item = &'a Record> + Send + 'a + 'async_trait,
            impl Iterator<Item = &'a Record> + Send + 'a + 'async_trait,
        >,
    ) -> Pin<Box<dyn Future<Output = Result<ResponseInfo, NetError>> + Send + 'async_trait>>
    where
        'a: 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.send(response))
    }
}
