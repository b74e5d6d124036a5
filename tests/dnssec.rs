//! The validating resolver (src/dnssec.rs) against the lab's signed zones (tests/lab/dnssec.rs):
//! secure answers and secure denials (NSEC3, RFC 5155) in signed zones, insecure answers from
//! unsigned zones, bogus data, and failures to answer — each with its security status
//! (RFC 4033 §5, RFC 4035 §4.3).
//!
//! The lab's chain of trust starts at a signed `test.` root whose key is the one trust anchor
//! (`DnsServer::sign_root`); `names_outside_every_anchored_zone_are_insecure` anchors one zone
//! alone.

mod lab;

use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::rdata::{A, MX, TLSA};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use lab::dns::dnssec::{write_trust_anchor_file, ZoneKey};
use lab::dns::Zone;
use lab::Lab;
use mxguard::config::DnsConfig;
use mxguard::dnssec::{DnssecFailure, DnssecResolver, Security};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

const TLSA_DIGEST: [u8; 32] = [0x5a; 32];

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// A lab whose DNS has a signed `test.` root.
async fn signed_lab() -> Lab {
    let lab = Lab::new().await;
    lab.dns.sign_root();
    lab
}

/// The relay's validating resolver, configured as an operator would: name server and trust
/// anchor file.
fn resolver_with(server: SocketAddr, anchors: PathBuf) -> DnssecResolver {
    let config = DnsConfig {
        nameservers: vec![server],
        trust_anchor_file: Some(anchors),
        timeout: Duration::from_secs(5),
        ..DnsConfig::default()
    };
    DnssecResolver::from_config(&config).unwrap()
}

/// The validating resolver anchored at the lab's signed root.
fn resolver(lab: &Lab) -> DnssecResolver {
    resolver_with(lab.dns.addr(), lab.dns.write_trust_anchor(lab.dir()))
}

/// `example.test`, signed: MX to `mx.example.test` at 127.X.Y.2, its TLSA, a CNAME to it.
fn example_zone(lab: &Lab) -> Zone {
    Zone::new("example.test")
        .signed()
        .mx(10, "mx.example.test")
        .a("mx.example.test", lab.ip(2))
        .tlsa("_25._tcp.mx.example.test", 3, 1, 1, &TLSA_DIGEST)
        .cname("alias.example.test", "mx.example.test")
}

/// `other.test`, unsigned.
fn other_zone(lab: &Lab) -> Zone {
    Zone::new("other.test")
        .mx(10, "mx.other.test")
        .a("mx.other.test", lab.ip(3))
}

async fn secure(r: &DnssecResolver, owner: &str, rtype: RecordType) -> Vec<RData> {
    let answer = r.lookup(&name(owner), rtype).await;
    let answer = answer.unwrap_or_else(|e| panic!("{owner} {rtype}: {e:?}"));
    assert_eq!(answer.status, Security::Secure, "{owner} {rtype}");
    answer.records
}

async fn insecure(r: &DnssecResolver, owner: &str, rtype: RecordType) -> Vec<RData> {
    let answer = r.lookup(&name(owner), rtype).await;
    let answer = answer.unwrap_or_else(|e| panic!("{owner} {rtype}: {e:?}"));
    assert_eq!(answer.status, Security::Insecure, "{owner} {rtype}");
    answer.records
}

async fn fails(r: &DnssecResolver, owner: &str, rtype: RecordType) -> DnssecFailure {
    match r.lookup(&name(owner), rtype).await {
        Ok(answer) => panic!("{owner} {rtype}: expected a failure, got {answer:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn signed_zone_answers_are_secure() {
    let lab = signed_lab().await;
    lab.zone(example_zone(&lab));
    let r = resolver(&lab);

    let mx = secure(&r, "example.test.", RecordType::MX).await;
    assert_eq!(mx, vec![RData::MX(MX::new(10, name("mx.example.test.")))]);
    let a = secure(&r, "mx.example.test.", RecordType::A).await;
    assert_eq!(a, vec![RData::A(A(lab.ip(2)))]);
    let tlsa = secure(&r, "_25._tcp.mx.example.test.", RecordType::TLSA).await;
    assert_eq!(
        tlsa,
        vec![RData::TLSA(TLSA::new(
            CertUsage::DaneEe,
            Selector::Spki,
            Matching::Sha256,
            TLSA_DIGEST.to_vec()
        ))]
    );
}

/// A DS trust anchor (the form of the IANA root anchor, RFC 4034 §5): the validator fetches the
/// anchored zone's DNSKEY RRset, trusts the key whose digest matches, and validates as with a
/// DNSKEY anchor. A DS that matches no key gives temporary failures, never insecure answers.
#[tokio::test]
async fn ds_trust_anchors_work_like_keys() {
    let lab = signed_lab().await;
    lab.zone(example_zone(&lab));
    let file = write_trust_anchor_file(lab.dir(), &[lab.dns.ds_trust_anchor()]);
    let r = resolver_with(lab.dns.addr(), file);
    let a = secure(&r, "mx.example.test.", RecordType::A).await;
    assert_eq!(a, vec![RData::A(A(lab.ip(2)))]);

    let stranger = ZoneKey::generate().ds_trust_anchor(&name("test."));
    let other = lab.dir().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let file = write_trust_anchor_file(&other, &[stranger]);
    let r = resolver_with(lab.dns.addr(), file);
    let failure = fails(&r, "mx.example.test.", RecordType::A).await;
    assert!(
        matches!(&failure, DnssecFailure::TempFail(why) if why.contains("matches its trust anchor (DS with key tag")),
        "{failure:?}"
    );
}

/// NSEC3 proves a name absent (also two labels below a missing name, which plain NSEC from
/// hickory-server gets wrong) and a type absent at an existing name.
#[tokio::test]
async fn signed_zone_denials_are_secure() {
    let lab = signed_lab().await;
    lab.zone(example_zone(&lab));
    let r = resolver(&lab);

    let nx = DnssecFailure::NxDomain { secure: true };
    assert_eq!(fails(&r, "nosuch.example.test.", RecordType::A).await, nx);
    assert_eq!(
        fails(&r, "_25._tcp.nosuch.example.test.", RecordType::TLSA).await,
        nx
    );
    // Names that exist without the type asked: NODATA, proven.
    let nodata = DnssecFailure::NoData { secure: true };
    assert_eq!(
        fails(&r, "mx.example.test.", RecordType::TLSA).await,
        nodata
    );
    assert_eq!(fails(&r, "mx.example.test.", RecordType::MX).await, nodata);
    // `_tcp.mx.example.test` is an empty non-terminal: it exists, with no records.
    assert_eq!(
        fails(&r, "_tcp.mx.example.test.", RecordType::TLSA).await,
        nodata
    );
    // Under the lab root but in no lab zone: the signed root denies it.
    assert_eq!(fails(&r, "elsewhere.test.", RecordType::MX).await, nx);
}

/// An unsigned zone under the signed root: the root's NSEC3 proves "NS but no DS" for it, so its
/// answers and its denials are insecure, not bogus — mail to it is plain DNS, not DANE.
#[tokio::test]
async fn unsigned_zone_answers_are_insecure() {
    let lab = signed_lab().await;
    lab.zone(example_zone(&lab)).zone(other_zone(&lab));
    let r = resolver(&lab);

    let mx = insecure(&r, "other.test.", RecordType::MX).await;
    assert_eq!(mx, vec![RData::MX(MX::new(10, name("mx.other.test.")))]);
    insecure(&r, "mx.other.test.", RecordType::A).await;
    assert_eq!(
        fails(&r, "_25._tcp.mx.other.test.", RecordType::TLSA).await,
        DnssecFailure::NxDomain { secure: false }
    );
    assert_eq!(
        fails(&r, "mx.other.test.", RecordType::TLSA).await,
        DnssecFailure::NoData { secure: false }
    );
    // The signed zone next to it is unaffected.
    secure(&r, "example.test.", RecordType::MX).await;
}

/// A CNAME inside a signed zone: the chain and its target are secure, and only the target's
/// records are returned. A secure CNAME into an unsigned zone is only as good as its target.
#[tokio::test]
async fn cname_chains_are_as_secure_as_their_weakest_link() {
    let lab = signed_lab().await;
    lab.zone(example_zone(&lab).cname("away.example.test", "mx.other.test"))
        .zone(other_zone(&lab));
    let r = resolver(&lab);

    let a = secure(&r, "alias.example.test.", RecordType::A).await;
    assert_eq!(a, vec![RData::A(A(lab.ip(2)))]);
    let a = insecure(&r, "away.example.test.", RecordType::A).await;
    assert_eq!(a, vec![RData::A(A(lab.ip(3)))]);
}

/// Data changed after signing (here, the MX host's address) fails validation: bogus, never
/// returned; the rest of the zone still validates.
#[tokio::test]
async fn tampered_data_is_bogus() {
    let lab = signed_lab().await;
    lab.zone(
        example_zone(&lab)
            .tamper("mx.example.test", RData::A(A(Ipv4Addr::new(192, 0, 2, 66))))
            .tamper(
                "_25._tcp.mx.example.test",
                RData::TLSA(TLSA::new(
                    CertUsage::DaneEe,
                    Selector::Spki,
                    Matching::Sha256,
                    vec![0; 32],
                )),
            ),
    );
    let r = resolver(&lab);

    assert!(matches!(
        fails(&r, "mx.example.test.", RecordType::A).await,
        DnssecFailure::Bogus(_)
    ));
    assert!(matches!(
        fails(&r, "_25._tcp.mx.example.test.", RecordType::TLSA).await,
        DnssecFailure::Bogus(_)
    ));
    secure(&r, "example.test.", RecordType::MX).await;
}

/// A validator holding a different key for the root than the one the zone is signed with:
/// every answer from the signed tree is bogus.
#[tokio::test]
async fn wrong_trust_anchor_makes_signed_answers_bogus() {
    let lab = signed_lab().await;
    lab.zone(example_zone(&lab));
    let stranger = ZoneKey::generate().trust_anchor(&name("test."));
    let r = resolver_with(
        lab.dns.addr(),
        write_trust_anchor_file(lab.dir(), &[stranger]),
    );
    assert!(matches!(
        fails(&r, "example.test.", RecordType::MX).await,
        DnssecFailure::Bogus(_)
    ));
}

/// SERVFAIL from the authority and a name server that never answers are temporary failures,
/// not bogus and not a denial.
#[tokio::test]
async fn no_answer_is_a_temporary_failure() {
    let lab = signed_lab().await;
    lab.zone(example_zone(&lab));
    lab.dns.servfail("example.test");
    let r = resolver(&lab);
    assert!(matches!(
        fails(&r, "_25._tcp.mx.example.test.", RecordType::TLSA).await,
        DnssecFailure::TempFail(_)
    ));
    lab.dns.heal("example.test");
    secure(&r, "_25._tcp.mx.example.test.", RecordType::TLSA).await;

    // A UDP socket that reads nothing, and no TCP listener on its port.
    let silent = std::net::UdpSocket::bind((lab.ip(54), 0)).unwrap();
    let config = DnsConfig {
        nameservers: vec![silent.local_addr().unwrap()],
        trust_anchor_file: Some(lab.dns.write_trust_anchor(lab.dir())),
        timeout: Duration::from_millis(300),
        ..DnsConfig::default()
    };
    let r = DnssecResolver::from_config(&config).unwrap();
    assert!(matches!(
        fails(&r, "example.test.", RecordType::MX).await,
        DnssecFailure::TempFail(_)
    ));
}

/// One trust anchor per signed zone and no signed parent: the anchored zones validate, and a
/// zone outside every anchor is insecure, not bogus (RFC 4035 §4.3: no anchor says that part
/// of the tree is signed), as unbound has it. An operator who anchors a private zone still
/// reaches everyone else; tests/interop/private_anchors.sh compares the verdicts with unbound.
#[tokio::test]
async fn names_outside_every_anchored_zone_are_insecure() {
    let lab = Lab::new().await;
    let zone = example_zone(&lab);
    let anchors = write_trust_anchor_file(lab.dir(), &[zone.trust_anchor()]);
    lab.zone(zone).zone(other_zone(&lab));
    let r = resolver_with(lab.dns.addr(), anchors);

    secure(&r, "mx.example.test.", RecordType::A).await;
    assert_eq!(
        fails(&r, "nosuch.example.test.", RecordType::A).await,
        DnssecFailure::NxDomain { secure: true }
    );
    let outside = r
        .lookup(&name("mx.other.test."), RecordType::A)
        .await
        .expect("an answer");
    assert_eq!(outside.status, Security::Insecure);
    assert_eq!(outside.records, vec![RData::A(A(lab.ip(3)))]);
    assert_eq!(
        fails(&r, "nosuch.other.test.", RecordType::A).await,
        DnssecFailure::NxDomain { secure: false }
    );
}
