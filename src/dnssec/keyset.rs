//! From a trust anchor to the zone's whole key set, checked here.
//!
//! hickory's validator (hickory-net 0.26) trusts a DNSKEY RRset below the root only if every
//! key in it is an anchor; otherwise it first fetches the zone's DS RRset from the parent and
//! gives up when that cannot be proven, before it ever tries the anchored key. A zone signed
//! the usual way, a KSK (anchored) signing the DNSKEY RRset and a ZSK signing the rest, so came
//! out bogus whenever the anchor was not at the root.
//!
//! The cure, without patching hickory: for each anchored zone, fetch its DNSKEY RRset with its
//! RRSIGs, check that an anchored key signed it (RFC 4035 §5.3, the anchor standing in for the
//! DS of §5.2), and hand hickory every key of the verified RRset as an anchor of that zone.
//! The set is good until the RRset's TTL or its signature runs out, then fetched again; that
//! follows a rollover in which the anchored KSK signs a new ZSK (RFC 6781 §4.1.1).

use super::anchors::{Anchor, DsAnchor, TrustAnchor};
use hickory_resolver::proto::dnssec::rdata::{DNSSECRData, DNSKEY, RRSIG};
use hickory_resolver::proto::dnssec::{PublicKey, Verifier};
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A key set is fetched again at the latest after this, even with long TTLs.
const MAX_VALIDITY: Duration = Duration::from_secs(86_400);
/// ... and at the earliest after this, even with tiny TTLs.
const MIN_VALIDITY: Duration = Duration::from_secs(30);

/// What one zone's anchors vouch for: the keys, and how long that holds.
#[derive(Debug, Clone)]
pub(crate) struct ZoneKeys {
    pub keys: Vec<TrustAnchor>,
    pub valid_for: Duration,
}

/// The anchors of the file, one entry per zone.
pub(crate) fn by_zone(anchors: &[Anchor]) -> Vec<(Name, Vec<Anchor>)> {
    let mut zones: Vec<(Name, Vec<Anchor>)> = Vec::new();
    for a in anchors {
        let zone = a.zone();
        match zones.iter_mut().find(|(z, _)| z == zone) {
            Some((_, list)) => list.push(a.clone()),
            None => zones.push((zone.clone(), vec![a.clone()])),
        }
    }
    zones
}

/// Fetches `zone`'s DNSKEY RRset from `servers` (CD set: we judge it) and verifies it against
/// the zone's `anchors`. The first server that answers decides.
pub(crate) async fn fetch(
    servers: &[SocketAddr],
    timeout: Duration,
    zone: &Name,
    anchors: &[Anchor],
) -> Result<ZoneKeys, String> {
    let mut failures = Vec::new();
    for &server in servers {
        match super::trust_ad::ask_server(server, zone, RecordType::DNSKEY, timeout, true).await {
            Ok(message) => return verify(&message, zone, anchors, unix_now()),
            Err(why) => failures.push(format!("{server}: {why}")),
        }
    }
    Err(format!("DNSKEY of {zone}: {}", failures.join("; ")))
}

/// The checks of [`fetch`] on an answer, at time `now` (seconds since the epoch).
pub(crate) fn verify(
    message: &Message,
    zone: &Name,
    anchors: &[Anchor],
    now: u32,
) -> Result<ZoneKeys, String> {
    if message.metadata.response_code != ResponseCode::NoError {
        return Err(format!(
            "DNSKEY of {zone}: {}",
            message.metadata.response_code
        ));
    }
    let rrset: Vec<&Record> = message
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::DNSKEY && &r.name == zone)
        .collect();
    let keys: Vec<&DNSKEY> = rrset.iter().filter_map(|r| dnskey(r)).collect();
    if keys.is_empty() {
        return Err(format!("{zone} has no DNSKEY RRset"));
    }
    let anchored: Vec<&DNSKEY> = keys
        .iter()
        .copied()
        // A key that says it is revoked (RFC 5011 §2.1) vouches for nothing.
        .filter(|k| !k.revoke() && anchors.iter().any(|a| vouches_for(a, zone, k)))
        .collect();
    if anchored.is_empty() {
        let wanted: Vec<String> = anchors.iter().map(describe).collect();
        return Err(format!(
            "no DNSKEY of {zone} matches its trust anchor ({}): have the zone's keys changed?",
            wanted.join(", ")
        ));
    }
    let ttl = rrset.iter().map(|r| r.ttl).min().unwrap_or(0);
    let mut problems = Vec::new();
    for rrsig in message.answers.iter().filter_map(rrsig) {
        let input = rrsig.input();
        if input.type_covered != RecordType::DNSKEY || &input.signer_name != zone {
            continue;
        }
        let Some(key) = anchored.iter().find(|k| {
            k.calculate_key_tag().ok() == Some(input.key_tag)
                && k.public_key().algorithm() == input.algorithm
        }) else {
            continue;
        };
        let (inception, expiration) = (input.sig_inception.get(), input.sig_expiration.get());
        // RFC 4034 §3.1.5: serial-number arithmetic (RFC 1982) for the validity period.
        if (now.wrapping_sub(inception) as i32) < 0 || (expiration.wrapping_sub(now) as i32) < 0 {
            problems.push(format!(
                "RRSIG by key {} is outside its validity period",
                input.key_tag
            ));
            continue;
        }
        match key.verify_rrsig(zone, DNSClass::IN, rrsig, rrset.iter().copied()) {
            Ok(()) => {
                let left = expiration.wrapping_sub(now);
                let valid_for =
                    Duration::from_secs(u64::from(ttl.min(left))).clamp(MIN_VALIDITY, MAX_VALIDITY);
                return Ok(ZoneKeys {
                    keys: keys
                        .iter()
                        .map(|k| TrustAnchor {
                            zone: zone.clone(),
                            flags: k.flags(),
                            key: k.public_key().clone(),
                        })
                        .collect(),
                    valid_for,
                });
            }
            Err(e) => problems.push(format!("RRSIG by key {}: {e}", input.key_tag)),
        }
    }
    if problems.is_empty() {
        problems.push("no RRSIG by an anchored key".into());
    }
    Err(format!(
        "the DNSKEY RRset of {zone} is not signed by its trust anchor: {}",
        problems.join("; ")
    ))
}

/// Whether `anchor` names `key`: the same public key and algorithm (a DNSKEY anchor), or the
/// DS digest of the key (RFC 4034 §5.1.4).
fn vouches_for(anchor: &Anchor, zone: &Name, key: &DNSKEY) -> bool {
    match anchor {
        Anchor::Key(a) => {
            a.key.algorithm() == key.public_key().algorithm()
                && a.key.public_bytes() == key.public_key().public_bytes()
        }
        Anchor::Ds(DsAnchor { ds, .. }) => ds.covers(zone, key).unwrap_or(false),
    }
}

/// `DS with key tag N` / `DNSKEY with key tag N`, for error messages.
fn describe(anchor: &Anchor) -> String {
    match anchor {
        Anchor::Ds(d) => format!("DS with key tag {}", d.ds.key_tag()),
        Anchor::Key(k) => {
            let key = DNSKEY::with_flags(k.flags, k.key.clone());
            match key.calculate_key_tag() {
                Ok(tag) => format!("DNSKEY with key tag {tag}"),
                Err(_) => "DNSKEY".into(),
            }
        }
    }
}

fn dnskey(record: &Record) -> Option<&DNSKEY> {
    match &record.data {
        RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k),
        _ => None,
    }
}

fn rrsig(record: &Record) -> Option<&RRSIG> {
    match &record.data {
        RData::DNSSEC(DNSSECRData::RRSIG(s)) => Some(s),
        _ => None,
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}
