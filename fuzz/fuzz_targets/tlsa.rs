//! DANE (RFC 7672): TLSA records as DNS delivers them and the certificate chain an MX host
//! presents, both from peers.
//!
//! - TLSA rdata bytes are decoded by hickory (`RData::read` for type TLSA), turned into
//!   `policy_cache::dane::Tlsa` as `src/delivery/dane.rs` does, then sorted by
//!   `policy_cache::dane::classify` / `Tlsa::usability` and shown (`Display`, the log form);
//! - the chain goes to `policy_cache::dane::DaneCheck::verify` (x509-parser, webpki, the
//!   DANE-EE and DANE-TA matchers, the bare-key anchor path).
//!
//! Input: `flags`, `n`, then `n` TLSA rdata items and the MX host name (1-byte length), then
//! the certificates (leaf first), each with a 2-byte big-endian length (a short tail is taken
//! as it is). The flags add records made from the presented certificates, so that the
//! matchers and the chain validation see mutated certificates that match:
//! bit 0 `3 0 1 sha256(leaf)`, bit 1 `2 0 1 sha256(chain[1])`, bit 2 `2 0 0 <last cert>`,
//! bit 3 `3 1 1 sha256(leaf SPKI)`, bit 4 `2 1 0 <chain[1] SPKI>` with chain[1] left out (a
//! bare trust-anchor key), bit 5 `3 0 0 <leaf>`; bits 6-7 pick the time of the check.
//!
//! Checked: `classify` keeps exactly the usable records; a DANE-EE record made from the leaf
//! always authenticates it (RFC 7672 §3.1.1: nothing else is checked); a DANE-TA match names
//! one of the reference names; a verdict's record is one of the check's records.
#![no_main]

use hickory_proto::rr::{RData, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, Restrict};
use libfuzzer_sys::fuzz_target;
use policy_cache::dane::{classify, DaneCheck, DaneVerdict, ReferenceNames, Tlsa, TlsaSet, Usage};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::time::Duration;
use x509_parser::asn1_rs::FromDer;
use x509_parser::certificate::X509Certificate;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn item(&mut self) -> &'a [u8] {
        let n = u16::from_be_bytes([self.byte(), self.byte()]);
        self.take(n.into())
    }
}

/// TLSA rdata as the resolver decodes it, then as `delivery::dane::from_tlsa` converts it.
fn tlsa_from_rdata(rdata: &[u8]) -> Option<Tlsa> {
    let len = u16::try_from(rdata.len()).ok()?;
    let mut decoder = BinDecoder::new(rdata);
    match RData::read(&mut decoder, RecordType::TLSA, Restrict::new(len)) {
        Ok(RData::TLSA(t)) => Some(Tlsa {
            usage: t.cert_usage.into(),
            selector: t.selector.into(),
            matching: t.matching.into(),
            data: t.cert_data,
        }),
        _ => None,
    }
}

fn spki(der: &[u8]) -> Option<&[u8]> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.tbs_certificate.subject_pki.raw)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.byte();
    let count = input.byte() % 8;
    let mut records: Vec<Tlsa> = (0..count)
        .filter_map(|_| tlsa_from_rdata(input.item()))
        .collect();
    let name_len = input.byte();
    let name = String::from_utf8_lossy(input.take(name_len.into())).into_owned();
    let mx_host = if name.is_empty() {
        "mx.example.org".to_string()
    } else {
        name
    };
    let mut certs: Vec<&[u8]> = Vec::new();
    while !input.0.is_empty() && certs.len() < 4 {
        certs.push(input.item());
    }

    for r in &records {
        let _ = r.to_string();
        if let Err(e) = r.usability() {
            let _ = e.to_string();
        }
    }
    match classify(&records) {
        TlsaSet::Usable(usable) => {
            assert!(!usable.is_empty());
            assert!(usable.iter().all(|r| r.usability().is_ok()));
            assert_eq!(
                usable.len(),
                records.iter().filter(|r| r.usability().is_ok()).count()
            );
        }
        TlsaSet::NoneUsable => assert!(records.iter().all(|r| r.usability().is_err())),
    }

    // Records derived from the presented certificates.
    let leaf = certs.first().copied();
    let mut ee_from_leaf = false;
    if let Some(leaf) = leaf {
        if flags & 0x01 != 0 {
            records.push(Tlsa::for_content(3, 0, 1, leaf));
            ee_from_leaf = true;
        }
        if flags & 0x08 != 0 {
            if let Some(key) = spki(leaf) {
                records.push(Tlsa::for_content(3, 1, 1, key));
                ee_from_leaf = true;
            }
        }
        if flags & 0x20 != 0 && !leaf.is_empty() {
            records.push(Tlsa::for_content(3, 0, 0, leaf));
            ee_from_leaf = true;
        }
    }
    if let Some(issuer) = certs.get(1).copied() {
        if flags & 0x02 != 0 {
            records.push(Tlsa::for_content(2, 0, 1, issuer));
        }
        if flags & 0x10 != 0 {
            if let Some(key) = spki(issuer) {
                records.push(Tlsa::for_content(2, 1, 0, key));
                certs.remove(1);
            }
        }
    }
    if flags & 0x04 != 0 {
        if let Some(last) = certs.last().filter(|c| !c.is_empty()) {
            records.push(Tlsa::for_content(2, 0, 0, last));
        }
    }

    let now = match flags >> 6 {
        0 | 1 => 1_800_000_000, // 2027-01-15
        2 => 4_000_000_000,     // 2096: everything has expired
        _ => 0,                 // 1970: nothing is valid yet
    };
    let names = ReferenceNames::new(&mx_host).with("example.org");
    let check = DaneCheck::new(records, names.clone());
    let chain: Vec<CertificateDer<'_>> = certs.iter().map(|c| CertificateDer::from(*c)).collect();
    let verdict = check.verify(&chain, UnixTime::since_unix_epoch(Duration::from_secs(now)));
    let _ = verdict.to_string();
    match &verdict {
        DaneVerdict::Matched { usage, via } => {
            assert!(check.records().contains(&via.record), "{verdict:?}");
            match usage {
                Usage::DaneEe => {
                    assert_eq!(via.record.usage, 3);
                    assert_eq!(via.depth, Some(0));
                }
                Usage::DaneTa => {
                    assert_eq!(via.record.usage, 2);
                    let name = via.name.as_deref().expect("DANE-TA match without a name");
                    assert!(
                        names.iter().any(|n| n == name),
                        "{name:?} not a reference name"
                    );
                }
                other => panic!("matched by {other:?}"),
            }
        }
        DaneVerdict::Mismatch(why) => {
            assert!(
                !(ee_from_leaf && !chain.is_empty()),
                "a DANE-EE record made from the leaf did not match: {why}"
            );
        }
    }
});
