//! The stub resolver delivery uses (hickory-resolver), and how its answers are classified.
//!
//! Mail routing needs to tell three negative answers apart (RFC 5321 §5.1, RFC 2308):
//! the name does not exist (NXDOMAIN: permanent), the name exists without records of the asked
//! type (NODATA: for MX, fall back to the implicit MX), and no answer for now (SERVFAIL,
//! REFUSED, timeout: temporary, retry later). [`LookupError`] keeps exactly that distinction.

use crate::config::DnsConfig;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{ResolverBuilder, TokioResolver};
use std::net::IpAddr;

/// Builds the resolver: the configured name servers (UDP, TCP on truncation or error), or the
/// system's `/etc/resolv.conf`. The hosts file is never consulted for mail routing.
pub(crate) fn build_resolver(config: &DnsConfig) -> Result<TokioResolver, NetError> {
    resolver_builder(config)?.build()
}

/// The resolver's settings from `[dns]`, before building: the DNSSEC-validating resolver
/// (`crate::dnssec`) adds its trust anchors to the same settings.
pub(crate) fn resolver_builder(
    config: &DnsConfig,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, NetError> {
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = config.timeout;
    opts.attempts = 2;
    opts.cache_size = config.cache_size;
    opts.try_tcp_on_error = true;
    Ok(builder)
}

/// Why a lookup produced no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LookupError {
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// NOERROR with an empty answer: the name exists, but has no record of this type.
    NoData,
    /// SERVFAIL, REFUSED, a timeout, a network error: try again later. The text is for logs.
    Temporary(String),
}

impl LookupError {
    fn from_net(err: &NetError) -> LookupError {
        match err {
            NetError::Dns(DnsError::NoRecordsFound(nr)) => match nr.response_code {
                ResponseCode::NXDomain => LookupError::NxDomain,
                ResponseCode::NoError => LookupError::NoData,
                other => LookupError::Temporary(other.to_string()),
            },
            other => LookupError::Temporary(other.to_string()),
        }
    }
}

/// A domain name made absolute, so the resolver never appends search domains to it.
pub(crate) fn fqdn(name: &str) -> Result<Name, LookupError> {
    let mut name = Name::from_utf8(name).map_err(|e| LookupError::Temporary(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name)
}

/// The records of one type at `name`, with CNAME chains followed by the resolver; records of
/// other types (the CNAMEs themselves) are dropped.
pub(crate) async fn lookup(
    resolver: &TokioResolver,
    name: &Name,
    rtype: RecordType,
) -> Result<Vec<RData>, LookupError> {
    let answer = lookup_uncounted(resolver, name, rtype).await;
    let outcome = match &answer {
        Ok(_) => "ok",
        Err(LookupError::NxDomain) => "nxdomain",
        Err(LookupError::NoData) => "nodata",
        Err(LookupError::Temporary(_)) => "tempfail",
    };
    crate::metrics::dns_lookup(&rtype.to_string(), outcome);
    answer
}

async fn lookup_uncounted(
    resolver: &TokioResolver,
    name: &Name,
    rtype: RecordType,
) -> Result<Vec<RData>, LookupError> {
    match resolver.lookup(name.clone(), rtype).await {
        Ok(answer) => {
            let records: Vec<RData> = answer
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype)
                .map(|r| r.data.clone())
                .collect();
            if records.is_empty() {
                Err(LookupError::NoData)
            } else {
                Ok(records)
            }
        }
        Err(e) => match LookupError::from_net(&e) {
            LookupError::NoData => match unfinished_cname_chain(&e) {
                Some(stopped_at) => Err(check_cname_chain(resolver, stopped_at).await),
                None => Err(LookupError::NoData),
            },
            other => Err(other),
        },
    }
}

/// Where the resolver stopped following CNAMEs, when a "no records" answer may be its own
/// making rather than the server's. hickory follows a CNAME chain for at most 8 queries; when
/// the chain loops (a → b → a) or runs longer, it gives up with an empty NOERROR of its own,
/// which reads as NODATA: the query it stopped at, no SOA, no authority section. A server's
/// NODATA carries the zone's SOA (RFC 2308 §3: authoritative servers MUST include it), so an
/// ordinary NODATA costs nothing more; one without (RFC 2308 §2.2 type 3, rare) gets the
/// check of [`check_cname_chain`].
fn unfinished_cname_chain(err: &NetError) -> Option<&Name> {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NoError
                && nr.soa.is_none()
                && nr.authorities.is_none() =>
        {
            Some(nr.query.name())
        }
        _ => None,
    }
}

/// The verdict on a NODATA without SOA that ended at `stopped_at`. If that name is itself a
/// CNAME, the chain was never finished: a loop or an over-long chain. That is not "no such
/// record" but "no answer for now": recursive resolvers report it as SERVFAIL (unbound and BIND
/// give up after a bounded number of restarts), and it is a misconfiguration its owner may be
/// fixing right now, so the mail must be retried, not bounced. A name that is no CNAME really
/// has no records of the type: NODATA, as before.
async fn check_cname_chain(resolver: &TokioResolver, stopped_at: &Name) -> LookupError {
    match resolver.lookup(stopped_at.clone(), RecordType::CNAME).await {
        Ok(answer)
            if answer
                .answers()
                .iter()
                .any(|r| r.record_type() == RecordType::CNAME) =>
        {
            LookupError::Temporary(format!(
                "CNAME chain at {stopped_at} loops or is too long to follow"
            ))
        }
        Ok(_) => LookupError::NoData,
        Err(e) => match LookupError::from_net(&e) {
            LookupError::Temporary(why) => LookupError::Temporary(why),
            LookupError::NxDomain | LookupError::NoData => LookupError::NoData,
        },
    }
}

/// The addresses of a host: A then AAAA, both asked at once. One family failing for now does
/// not hide the other's addresses; the host is unusable only when neither gives any.
pub(crate) async fn lookup_addresses(
    resolver: &TokioResolver,
    name: &Name,
) -> Result<Vec<IpAddr>, (RecordType, LookupError)> {
    let (v4, v6) = tokio::join!(
        lookup(resolver, name, RecordType::A),
        lookup(resolver, name, RecordType::AAAA)
    );
    merge_addresses(v4, v6)
}

/// Combines the A and AAAA outcomes: addresses if any; else the temporary failure if either
/// was one (so the message is retried); else the A record's permanent reason.
pub(crate) fn merge_addresses(
    v4: Result<Vec<RData>, LookupError>,
    v6: Result<Vec<RData>, LookupError>,
) -> Result<Vec<IpAddr>, (RecordType, LookupError)> {
    let mut addrs = Vec::new();
    for records in [&v4, &v6].into_iter().flatten() {
        addrs.extend(records.iter().filter_map(|r| match r {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        }));
    }
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    match (v4, v6) {
        (Err(e @ LookupError::Temporary(_)), _) => Err((RecordType::A, e)),
        (_, Err(e @ LookupError::Temporary(_))) => Err((RecordType::AAAA, e)),
        (Err(e), _) => Err((RecordType::A, e)),
        (Ok(_), _) => Err((RecordType::A, LookupError::NoData)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{A, AAAA};

    #[test]
    fn addresses_from_either_family() {
        let a = Ok(vec![RData::A(A::new(192, 0, 2, 1))]);
        let aaaa = Err(LookupError::Temporary("timeout".into()));
        assert_eq!(
            merge_addresses(a, aaaa).unwrap(),
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        let aaaa = Ok(vec![RData::AAAA(AAAA::new(
            0x2001, 0xdb8, 0, 0, 0, 0, 0, 1,
        ))]);
        assert_eq!(
            merge_addresses(Err(LookupError::NoData), aaaa).unwrap(),
            vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn only_a_nodata_without_soa_is_checked_for_an_unfinished_cname_chain() {
        use hickory_resolver::net::NoRecords;
        use hickory_resolver::proto::op::Query;
        use hickory_resolver::proto::rr::rdata::SOA;
        use hickory_resolver::proto::rr::Record;
        let name = Name::from_ascii("b.loop.test.").unwrap();
        let query = Query::query(name.clone(), RecordType::A);
        // What hickory makes when it gives up on a chain: the query it stopped at, nothing else.
        let given_up = NetError::from(NoRecords::new(query.clone(), ResponseCode::NoError));
        assert_eq!(unfinished_cname_chain(&given_up), Some(&name));
        // A server's NODATA, with the zone's SOA.
        let mut nodata = NoRecords::new(query.clone(), ResponseCode::NoError);
        let soa = SOA::new(name.clone(), name.clone(), 1, 2, 3, 4, 5);
        nodata.soa = Some(Box::new(Record::from_rdata(name.clone(), 5, soa)));
        assert_eq!(unfinished_cname_chain(&NetError::from(nodata)), None);
        let nx = NetError::from(NoRecords::new(query, ResponseCode::NXDomain));
        assert_eq!(unfinished_cname_chain(&nx), None);
    }

    #[test]
    fn temporary_beats_permanent_when_nothing_resolves() {
        let r = merge_addresses(
            Err(LookupError::NxDomain),
            Err(LookupError::Temporary("servfail".into())),
        );
        assert!(matches!(
            r,
            Err((RecordType::AAAA, LookupError::Temporary(_)))
        ));
        let r = merge_addresses(Err(LookupError::NxDomain), Err(LookupError::NxDomain));
        assert_eq!(r, Err((RecordType::A, LookupError::NxDomain)));
    }
}
