//! DANE for SMTP (RFC 7672 §2): which MX hosts of a domain must be authenticated by their
//! TLSA records, decided from DNSSEC-validated answers before any connection.
//!
//! The chain of proof (RFC 7672 §2.2):
//! 1. the domain's MX RRset must be secure (an implicit MX counts when its denial is secure);
//!    otherwise DANE does not apply to the domain at all;
//! 2. for each MX host, its address records must be secure; a host whose name is a secure
//!    CNAME is looked up under its final name first, then its original name (§2.2.2);
//! 3. the TLSA RRset at `_PORT._tcp.<host>` must be secure: with usable records the host is
//!    authenticated by them; with none usable, TLS is mandatory but unauthenticated; a
//!    secure denial means no DANE for that host.
//!
//! Any bogus or failed answer on this path (§2.1.1) makes the host unusable for now: it is
//! skipped and, if no other host takes the mail, the recipient is deferred. It is never a
//! reason to fall back to less security, since a forged or blocked answer would then be an
//! attacker's way to strip DANE. A bogus MX RRset defers the whole domain.
//!
//! DANE beats MTA-STS (RFC 8461 §2): a host with TLSA records is judged by DANE only; the
//! domain's MTA-STS policy (or opportunistic TLS) applies to its hosts without.

use super::attempt::{Failure, Rank};
use super::mx;
use crate::dnssec::{DnssecFailure, SecureResolver, Secured, Security};
use crate::reply::{EnhancedCode, Reply};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use policy_cache::dane::{classify, ReferenceNames, Tlsa, TlsaSet};
use std::fmt;

/// What DANE says about one MX host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostDane {
    /// DANE does not apply to this host; the text says why (for logs and `mxguard check`).
    NotApplicable(String),
    /// Usable TLSA records: STARTTLS is mandatory and the certificate must match them.
    Authenticate(DaneAuth),
    /// A secure TLSA RRset with nothing usable (RFC 7672 §2.2): TLS mandatory, unauthenticated.
    EncryptOnly { tlsa_name: String },
    /// A lookup on the DANE path failed or was bogus: the host is unusable for now.
    LookupError { tlsa_name: String, reason: String },
}

/// The inputs of a DANE-authenticated handshake with one host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DaneAuth {
    /// Where the records were found (`_25._tcp.mx.example.net`).
    pub tlsa_name: String,
    /// The usable records, in DNS order.
    pub records: Vec<Tlsa>,
    /// The names a DANE-TA(2) leaf may carry: the MX host name and, after a secure CNAME,
    /// the TLSA base domain (RFC 7672 §3.2.2).
    pub names: ReferenceNames,
    /// The TLSA base domain, sent as SNI (RFC 7672 §8.1).
    pub sni: String,
}

impl DaneAuth {
    /// Names the records a session is verified against, for the compliance record: the
    /// SHA-256 (lower-case hex) of their presentation forms (`3 1 1 ABCD…`), sorted, each
    /// ended by a newline. The same RRset in any DNS order gives the same digest.
    pub fn rrset_digest(&self) -> String {
        let mut lines: Vec<String> = self
            .records
            .iter()
            .map(|r| presentation(r) + "\n")
            .collect();
        lines.sort();
        let digest = policy_cache::crypto::digest::digest(
            &policy_cache::crypto::digest::SHA256,
            lines.concat().as_bytes(),
        );
        data_encoding::HEXLOWER.encode(digest.as_ref())
    }
}

/// `3 1 1 0C72AC70…`: a TLSA record in DNS presentation form (RFC 6698 §2.2), as the
/// RFC 8460 §4.4 example writes `policy-string`.
pub(crate) fn presentation(t: &Tlsa) -> String {
    format!(
        "{} {} {} {}",
        t.usage,
        t.selector,
        t.matching,
        data_encoding::HEXUPPER.encode(&t.data)
    )
}

/// DANE's verdict on a domain: its MX RRset's security and each host's state.
#[derive(Debug, Clone, Default)]
pub(crate) struct DanePlan {
    /// The MX RRset (or implicit MX) was secure; without it nothing below applies.
    pub mx_secure: bool,
    /// The hosts in the order to try them, when a secure MX RRset named them; `None` keeps
    /// the order MX resolution found.
    pub hosts: Option<Vec<String>>,
    /// Every host DANE looked at, with its verdict.
    pub verdicts: Vec<(String, HostDane)>,
}

impl DanePlan {
    /// DANE has nothing to say about the domain.
    pub fn none() -> DanePlan {
        DanePlan::default()
    }

    /// Logs every answer the DANE path used for `domain`, with its DNSSEC status, for the
    /// operator (delivery does, once per attempt; the policy service, answering Postfix many
    /// times a second, leaves it to its debug log).
    pub fn log_verdicts(&self, domain: &str) {
        for (host, verdict) in &self.verdicts {
            tracing::info!("{domain}: MX RRset secure; MX host {host}: DANE {verdict}");
        }
    }

    /// DANE's verdict on `host`, when DANE applies to it (records, no usable record, or a
    /// lookup error); `None` leaves the host to the domain's other policy.
    pub fn host(&self, host: &str) -> Option<&HostDane> {
        self.verdicts
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .map(|(_, v)| v)
            .filter(|v| !matches!(v, HostDane::NotApplicable(_)))
    }

    /// Some host of the domain is under DANE: the log says `policy=dane` when no host could
    /// be used.
    pub fn applies(&self) -> bool {
        self.verdicts
            .iter()
            .any(|(_, v)| !matches!(v, HostDane::NotApplicable(_)))
    }

    /// Every host of the domain is authenticated by DANE (or waits for its TLSA lookup): no
    /// other policy is needed to deliver. Hosts with only unusable TLSA records do not count:
    /// an MTA-STS policy still applies to them.
    pub fn covers_all(&self) -> bool {
        !self.verdicts.is_empty()
            && self
                .verdicts
                .iter()
                .all(|(_, v)| matches!(v, HostDane::Authenticate(_) | HostDane::LookupError { .. }))
    }
}

/// DANE's plan for `domain`, whose MX resolution gave `hosts`, reached at `port`. A failure
/// when the MX RRset itself is bogus or could not be validated.
pub(crate) async fn plan(
    dns: &SecureResolver,
    domain: &str,
    hosts: &[String],
    port: u16,
) -> Result<DanePlan, Failure> {
    let Ok(name) = absolute(domain) else {
        return Ok(DanePlan::none());
    };
    let secure_hosts = match dns.lookup(&name, RecordType::MX).await {
        Ok(answer) if answer.status == Security::Secure => Some(mx_hosts(answer, domain)),
        Ok(_) => None,
        // RFC 7672 §2.2.1: no MX records, but a secure denial: the implicit MX is the domain.
        Err(DnssecFailure::NoData { secure: true }) => Some(vec![domain.to_string()]),
        Err(e) if e.is_error() => return Err(mx_lookup_error(domain, &e)),
        Err(_) => None,
    };
    let Some(secure_hosts) = secure_hosts else {
        tracing::debug!("{domain}: MX RRset not secure: no DANE");
        return Ok(DanePlan::none());
    };
    let mut verdicts = Vec::with_capacity(secure_hosts.len());
    for host in &secure_hosts {
        verdicts.push((host.clone(), host_dane(dns, host, port).await));
    }
    // The hosts resolution found are replaced by the secure answer's: a forged insecure
    // answer must not add a host DANE never saw.
    let hosts = (secure_hosts.as_slice() != hosts).then_some(secure_hosts);
    Ok(DanePlan {
        mx_secure: true,
        hosts,
        verdicts,
    })
}

/// The hosts of a secure MX answer, ordered as for delivery; a null MX leaves none (MX
/// resolution has already failed such a domain).
fn mx_hosts(answer: Secured<Vec<RData>>, domain: &str) -> Vec<String> {
    let records = answer
        .records
        .into_iter()
        .filter_map(|r| match r {
            RData::MX(mx) => Some((mx.preference, mx.exchange)),
            _ => None,
        })
        .collect();
    match mx::classify(records) {
        mx::MxAnswer::NullMx => Vec::new(),
        mx::MxAnswer::Hosts(h) if h.is_empty() => vec![domain.to_string()],
        mx::MxAnswer::Hosts(h) => mx::order_hosts(h, &mut rand::thread_rng())
            .into_iter()
            .map(|h| h.name)
            .collect(),
    }
}

/// RFC 7672 §2.2.2: the DANE state of one MX host.
pub(crate) async fn host_dane(dns: &SecureResolver, host: &str, port: u16) -> HostDane {
    let Ok(name) = absolute(host) else {
        return HostDane::NotApplicable("not a host name".into());
    };
    let lookup_error = |reason| HostDane::LookupError {
        tlsa_name: tlsa_name(&name, port),
        reason,
    };
    let owner = match secure_address(dns, &name).await {
        Ok(Some(owner)) => owner,
        // RFC 7672 §2.2.2: a host whose own name is a secure CNAME into an unsigned zone is
        // still in a signed zone: its TLSA records are at the original name.
        Ok(None) => match secure_cname(dns, &name).await {
            Ok(true) => name.clone(),
            Ok(false) => return HostDane::NotApplicable("address records not secure".into()),
            Err(reason) => return lookup_error(reason),
        },
        Err(reason) => return lookup_error(reason),
    };
    // A secure CNAME: the expanded name first, then the original (RFC 7672 §2.2.2).
    let mut bases = vec![owner.clone()];
    if owner != name {
        bases.push(name.clone());
    }
    for base in bases {
        let tlsa_name = tlsa_name(&base, port);
        let Ok(query) = Name::from_ascii(&tlsa_name) else {
            return HostDane::NotApplicable(format!("{tlsa_name} is not a DNS name"));
        };
        match dns.lookup(&query, RecordType::TLSA).await {
            Ok(answer) if answer.status == Security::Secure => {
                return from_tlsa(answer.records, host, &base, tlsa_name)
            }
            Ok(_) => return HostDane::NotApplicable(format!("{tlsa_name} TLSA not secure")),
            Err(
                DnssecFailure::NoData { secure: true } | DnssecFailure::NxDomain { secure: true },
            ) => continue,
            Err(e) if e.is_error() => {
                return HostDane::LookupError {
                    tlsa_name,
                    reason: e.to_string(),
                }
            }
            Err(e) => return HostDane::NotApplicable(format!("{tlsa_name}: {e}")),
        }
    }
    HostDane::NotApplicable("no TLSA records".into())
}

/// The final name of `host`'s address records when they are secure; `None` when insecure or
/// absent; the reason when a lookup failed.
async fn secure_address(dns: &SecureResolver, host: &Name) -> Result<Option<Name>, String> {
    for rtype in [RecordType::A, RecordType::AAAA] {
        match dns.lookup(host, rtype).await {
            Ok(answer) if answer.status == Security::Secure => return Ok(Some(answer.owner)),
            Ok(_) => return Ok(None),
            Err(e) if e.is_error() => return Err(format!("{host} {rtype}: {e}")),
            Err(_) => {}
        }
    }
    Ok(None)
}

/// Whether `host` itself is a secure CNAME (the first link of its chain is signed).
async fn secure_cname(dns: &SecureResolver, host: &Name) -> Result<bool, String> {
    match dns.lookup(host, RecordType::CNAME).await {
        Ok(answer) => Ok(answer.status == Security::Secure),
        Err(e) if e.is_error() => Err(format!("{host} CNAME: {e}")),
        Err(_) => Ok(false),
    }
}

/// A secure TLSA RRset at `tlsa_name`, found for MX host `host` under base name `base`.
fn from_tlsa(records: Vec<RData>, host: &str, base: &Name, tlsa_name: String) -> HostDane {
    let records: Vec<Tlsa> = records
        .into_iter()
        .filter_map(|r| match r {
            RData::TLSA(t) => Some(Tlsa {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data,
            }),
            _ => None,
        })
        .collect();
    match classify(&records) {
        TlsaSet::NoneUsable => HostDane::EncryptOnly { tlsa_name },
        TlsaSet::Usable(records) => {
            let base = mx::host_name(base);
            HostDane::Authenticate(DaneAuth {
                tlsa_name,
                records,
                names: ReferenceNames::new(host).with(&base),
                sni: base,
            })
        }
    }
}

/// `_PORT._tcp.host`, without the trailing dot.
fn tlsa_name(base: &Name, port: u16) -> String {
    format!("_{port}._tcp.{}", mx::host_name(base))
}

fn absolute(name: &str) -> Result<Name, ()> {
    let mut name = Name::from_ascii(name).map_err(|_| ())?;
    name.set_fqdn(true);
    Ok(name)
}

/// A bogus or failed MX lookup on the DANE path: the whole domain waits (4.7.0, never
/// 4.7.5: it says nothing about the destination's TLS, DESIGN.md).
fn mx_lookup_error(domain: &str, e: &DnssecFailure) -> Failure {
    tracing::info!("{domain}: DNSSEC lookup of the MX RRset failed: {e}");
    Failure::new(
        Reply::new(
            451,
            EnhancedCode::new(4, 7, 0),
            format!("DNSSEC lookup error for {domain} MX: {e}"),
        ),
        None,
        Rank::DnsTemporary,
    )
}

impl fmt::Display for HostDane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostDane::NotApplicable(why) => write!(f, "not applicable ({why})"),
            HostDane::Authenticate(auth) => {
                write!(
                    f,
                    "{} usable TLSA record(s) at {}",
                    auth.records.len(),
                    auth.tlsa_name
                )
            }
            HostDane::EncryptOnly { tlsa_name } => {
                write!(
                    f,
                    "no usable TLSA record at {tlsa_name}: TLS without authentication"
                )
            }
            HostDane::LookupError { tlsa_name, reason } => {
                write!(f, "TLSA lookup error for {tlsa_name}: {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(records: &[(u8, &[u8])]) -> DaneAuth {
        DaneAuth {
            tlsa_name: "_25._tcp.mx.example.net".into(),
            records: records
                .iter()
                .map(|&(usage, data)| Tlsa {
                    usage,
                    selector: 1,
                    matching: 1,
                    data: data.to_vec(),
                })
                .collect(),
            names: ReferenceNames::new("mx.example.net"),
            sni: "mx.example.net".into(),
        }
    }

    #[test]
    fn the_rrset_digest_ignores_order_and_sees_every_byte() {
        let one = auth(&[(3, &[0xab; 32]), (2, &[0x01; 32])]);
        let other_order = auth(&[(2, &[0x01; 32]), (3, &[0xab; 32])]);
        assert_eq!(one.rrset_digest(), other_order.rrset_digest());
        let changed = auth(&[(3, &[0xab; 32]), (2, &[0x02; 32])]);
        assert_ne!(one.rrset_digest(), changed.rrset_digest());
        // SHA-256 of "3 1 1 AB…AB\n", lower-case hex.
        let single = auth(&[(3, &[0xab; 32])]);
        let text = format!("3 1 1 {}\n", "AB".repeat(32));
        let expect = policy_cache::crypto::digest::digest(
            &policy_cache::crypto::digest::SHA256,
            text.as_bytes(),
        );
        assert_eq!(
            single.rrset_digest(),
            data_encoding::HEXLOWER.encode(expect.as_ref())
        );
    }
}
