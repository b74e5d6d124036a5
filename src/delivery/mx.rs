//! MX resolution (RFC 5321 §5.1, RFC 7505): which hosts receive mail for a domain, in which
//! order, and the statuses Postfix gives when DNS says no.
//!
//! A domain's MX records list its mail hosts with a preference; lower is tried first, and hosts
//! of equal preference are tried in random order to spread the load. A domain without MX
//! records receives mail at its own address (the "implicit MX"). A domain whose only MX is
//! `0 .` (the null MX) declares that it accepts no mail at all.

use super::attempt::{Failure, Rank};
use super::dns::{self, LookupError};
use crate::reply::{EnhancedCode, Reply};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;
use rand::Rng;
use std::net::IpAddr;

/// One MX record: its preference and its exchange host (no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MxHost {
    pub preference: u16,
    pub name: String,
}

/// What a domain's MX RRset says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MxAnswer {
    /// Hosts to try, in the order of [`order_hosts`].
    Hosts(Vec<MxHost>),
    /// RFC 7505 §3: a single MX whose exchange is the root, `0 .`: no mail accepted.
    NullMx,
}

/// Classifies an MX answer. RFC 7505 §3: a null MX must be the only MX; one mixed with real
/// hosts is unusable as a target and skipped, and the real hosts are used.
pub(crate) fn classify(records: Vec<(u16, Name)>) -> MxAnswer {
    if records.len() == 1 && records.iter().all(|(_, name)| name.is_root()) {
        return MxAnswer::NullMx;
    }
    MxAnswer::Hosts(
        records
            .into_iter()
            .filter(|(_, name)| !name.is_root())
            .map(|(preference, name)| MxHost {
                preference,
                name: host_name(&name),
            })
            .collect(),
    )
}

/// At most this many MX hosts of a domain are considered, the most preferred: a domain that
/// publishes hundreds must not cost hundreds of address and TLSA look-ups per attempt (only
/// [`super::MAX_ADDRESSES`] addresses are tried anyway).
pub(crate) const MAX_MX_HOSTS: usize = 20;

/// RFC 5321 §5.1: lowest preference first; "if there are multiple destinations with the same
/// preference … the SMTP client SHOULD randomize them to spread the load". Cut to
/// [`MAX_MX_HOSTS`].
pub(crate) fn order_hosts(mut hosts: Vec<MxHost>, rng: &mut impl Rng) -> Vec<MxHost> {
    hosts.shuffle(rng);
    // A stable sort keeps the random order within each preference.
    hosts.sort_by_key(|h| h.preference);
    if hosts.len() > MAX_MX_HOSTS {
        tracing::info!(
            "{} MX hosts; considering the {MAX_MX_HOSTS} most preferred",
            hosts.len()
        );
        hosts.truncate(MAX_MX_HOSTS);
    }
    hosts
}

/// A DNS name as mail logs show it: ASCII, without the root's trailing dot.
pub(crate) fn host_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_string()
}

/// The hosts to try for `domain`: its MX hosts in order, or the domain itself when it has no
/// MX (RFC 5321 §5.1 implicit MX); a null MX or a missing domain is a permanent failure.
pub(crate) async fn mx_hosts(
    resolver: &TokioResolver,
    domain: &str,
) -> Result<Vec<String>, Failure> {
    let name = dns::fqdn(domain).map_err(|e| lookup_failure(domain, RecordType::MX, &e))?;
    let records = match dns::lookup(resolver, &name, RecordType::MX).await {
        Ok(records) => records,
        // RFC 5321 §5.1: "If an empty list of MXs is returned, the address is treated as if
        // it was associated with an implicit MX RR, with a preference of 0, pointing to that host."
        Err(LookupError::NoData) => return Ok(vec![domain.to_string()]),
        Err(e) => return Err(lookup_failure(domain, RecordType::MX, &e)),
    };
    let records = records
        .into_iter()
        .filter_map(|r| match r {
            RData::MX(mx) => Some((mx.preference, mx.exchange)),
            _ => None,
        })
        .collect();
    match classify(records) {
        MxAnswer::NullMx => Err(null_mx(domain)),
        MxAnswer::Hosts(hosts) if hosts.is_empty() => Ok(vec![domain.to_string()]),
        MxAnswer::Hosts(hosts) => Ok(order_hosts(hosts, &mut rand::thread_rng())
            .into_iter()
            .map(|h| h.name)
            .collect()),
    }
}

/// The addresses of one host: an IP literal as is, a name through A and AAAA.
pub(crate) async fn host_addresses(
    resolver: &TokioResolver,
    host: &str,
) -> Result<Vec<IpAddr>, Failure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let name = dns::fqdn(host).map_err(|e| lookup_failure(host, RecordType::A, &e))?;
    dns::lookup_addresses(resolver, &name)
        .await
        .map_err(|(rtype, e)| host_failure(host, rtype, &e))
}

/// RFC 7505 §4.1: a null MX fails at once with 5.1.10; Postfix's wording.
pub(crate) fn null_mx(domain: &str) -> Failure {
    Failure::new(
        Reply::new(
            550,
            EnhancedCode::new(5, 1, 10),
            format!("Domain {domain} does not accept mail (nullMX)"),
        ),
        None,
        Rank::DnsNotFound,
    )
}

/// The failure for the recipient domain's own MX lookup: NXDOMAIN is permanent (5.1.2, bad
/// destination system), anything else temporary (4.4.3, directory server failure).
fn lookup_failure(name: &str, rtype: RecordType, e: &LookupError) -> Failure {
    let prefix =
        format!("Host or domain name not found. Name service error for name={name} type={rtype}");
    match e {
        LookupError::NxDomain | LookupError::NoData => Failure::new(
            Reply::new(
                550,
                EnhancedCode::new(5, 1, 2),
                format!("{prefix}: Host not found"),
            ),
            None,
            Rank::DnsNotFound,
        ),
        LookupError::Temporary(why) => {
            tracing::debug!("lookup {name} {rtype}: {why}");
            temporary(&prefix)
        }
    }
}

/// The failure for one MX host without an address: 5.4.4 (unable to route) when DNS says it
/// has none, 4.4.3 when DNS did not answer.
fn host_failure(host: &str, rtype: RecordType, e: &LookupError) -> Failure {
    let prefix =
        format!("Host or domain name not found. Name service error for name={host} type={rtype}");
    let text = match e {
        LookupError::NxDomain => format!("{prefix}: Host not found"),
        LookupError::NoData => format!("{prefix}: Host found but no data record of requested type"),
        LookupError::Temporary(why) => {
            tracing::debug!("lookup {host} {rtype}: {why}");
            return temporary(&prefix);
        }
    };
    Failure::new(
        Reply::new(550, EnhancedCode::new(5, 4, 4), text),
        None,
        Rank::DnsNotFound,
    )
}

fn temporary(prefix: &str) -> Failure {
    Failure::new(
        Reply::new(
            451,
            EnhancedCode::new(4, 4, 3),
            format!("{prefix}: Host not found, try again"),
        ),
        None,
        Rank::DnsTemporary,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn mx(preference: u16, n: &str) -> MxHost {
        MxHost {
            preference,
            name: n.into(),
        }
    }

    #[test]
    fn null_mx_is_a_single_root_exchange() {
        assert_eq!(classify(vec![(0, Name::root())]), MxAnswer::NullMx);
        assert_eq!(classify(vec![(0, name("."))]), MxAnswer::NullMx);
        // Mixed with a real host: the root entry is skipped, the host used.
        assert_eq!(
            classify(vec![(0, Name::root()), (10, name("mx.example.net."))]),
            MxAnswer::Hosts(vec![mx(10, "mx.example.net")])
        );
        assert_eq!(classify(vec![]), MxAnswer::Hosts(vec![]));
    }

    #[test]
    fn preference_order_and_shuffle_among_equals() {
        let hosts = vec![
            mx(20, "c"),
            mx(10, "a1"),
            mx(30, "d"),
            mx(10, "a2"),
            mx(20, "c2"),
        ];
        let mut seen_first = std::collections::HashSet::new();
        for seed in 0..64 {
            let ordered = order_hosts(hosts.clone(), &mut StdRng::seed_from_u64(seed));
            let prefs: Vec<u16> = ordered.iter().map(|h| h.preference).collect();
            assert_eq!(prefs, vec![10, 10, 20, 20, 30]);
            assert_eq!(ordered[4].name, "d");
            seen_first.insert(ordered[0].name.clone());
        }
        // Both hosts of preference 10 come first sometimes.
        assert_eq!(seen_first.len(), 2, "{seen_first:?}");
    }

    #[test]
    fn hundreds_of_mx_hosts_are_cut_to_the_most_preferred() {
        let mut hosts: Vec<MxHost> = (0..300).map(|i| mx(100 + i, &format!("h{i}"))).collect();
        hosts.push(mx(5, "best"));
        let ordered = order_hosts(hosts, &mut StdRng::seed_from_u64(1));
        assert_eq!(ordered.len(), MAX_MX_HOSTS);
        assert_eq!(ordered[0].name, "best");
        assert!(ordered
            .iter()
            .skip(1)
            .all(|h| h.preference < 100 + MAX_MX_HOSTS as u16));
    }

    #[test]
    fn null_mx_status() {
        let f = null_mx("example.net");
        assert_eq!(
            f.reply.to_string(),
            "550 5.1.10 Domain example.net does not accept mail (nullMX)"
        );
        assert!(f.relay.is_none());
    }

    #[test]
    fn lookup_statuses() {
        let f = lookup_failure("nx.test", RecordType::MX, &LookupError::NxDomain);
        assert_eq!(
            f.reply.to_string(),
            "550 5.1.2 Host or domain name not found. Name service error for name=nx.test type=MX: Host not found"
        );
        let f = lookup_failure(
            "t.test",
            RecordType::MX,
            &LookupError::Temporary("x".into()),
        );
        assert_eq!(
            f.reply.to_string(),
            "451 4.4.3 Host or domain name not found. Name service error for name=t.test type=MX: Host not found, try again"
        );
        let f = host_failure("mx.t.test", RecordType::A, &LookupError::NoData);
        assert_eq!(f.reply.status().to_string(), "5.4.4");
    }
}
