//! `[dns] dnssec = "trust-ad"`: a local validating resolver does the DNSSEC work and mxguard
//! trusts the AD bit of its replies (RFC 4035 §3.2.3, RFC 6840 §5.7) — Postfix's
//! `smtp_dns_support_level = dnssec` model, with unbound (or another validator) on the host.
//!
//! Each query goes to the configured name servers in order (UDP, again over TCP when the reply
//! is truncated, RFC 7766), with RD set, the EDNS DO bit (RFC 3225) and the AD bit set in the
//! query itself (RFC 6840 §5.7), and nothing else from the hickory resolver: its high-level
//! look-ups never show the AD bit. The reply header's AD bit says whether the resolver
//! validated every RRset of the answer (or of the denial) from its trust anchors.
//!
//! The AD bit is only as trustworthy as the path from the resolver: anyone on that path can
//! set it (RFC 4033 §7, RFC 4035 §4.9.3). So it is trusted only from loopback addresses unless
//! `dns.trust_ad_remote` says otherwise. A validating resolver answers SERVFAIL for bogus data
//! (RFC 4035 §5.5), so SERVFAIL is a lookup error, never "no DNSSEC".

use super::answer_cache::AnswerCache;
use super::{DnssecFailure, DnssecSetupError, Secured, Security};
use crate::config::DnsConfig;
use futures::StreamExt;
use hickory_net::client::Client;
use hickory_net::runtime::RuntimeProvider;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsExchangeBackground, DnsHandle, DnsRequestSender};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, DnsResponse, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asks the configured (loopback) validating resolvers, reading the AD bit; with
/// [`AdResolver::with_answer_cache`], keeps their answers a short time ([`AnswerCache`], shared
/// by the clones).
#[derive(Clone)]
pub struct AdResolver {
    servers: Arc<[SocketAddr]>,
    timeout: Duration,
    cache: Option<Arc<AnswerCache>>,
}

impl AdResolver {
    /// The resolvers of `[dns] nameservers`, or those of `/etc/resolv.conf` (port 53); all must
    /// be loopback unless `dns.trust_ad_remote` is set.
    pub fn from_config(config: &DnsConfig) -> Result<AdResolver, DnssecSetupError> {
        let servers = name_servers(config)?;
        crate::config::trust_ad_servers_allowed(&servers, config.trust_ad_remote)
            .map_err(DnssecSetupError::Resolver)?;
        Ok(AdResolver {
            servers: servers.into(),
            timeout: config.timeout,
            cache: None,
        })
    }

    /// The same resolver, keeping up to `capacity` answers for their TTLs, at most `max_ttl`.
    pub fn with_answer_cache(self, capacity: usize, max_ttl: Duration) -> AdResolver {
        AdResolver {
            cache: Some(Arc::new(AnswerCache::new(capacity, max_ttl))),
            ..self
        }
    }

    /// The records of type `rtype` at `name` (made absolute), with the resolver's verdict:
    /// from the answer cache (when there is one) while an earlier answer lasts, else asked. A
    /// timeout or network error moves on to the next name server; an answer (SERVFAIL too) is
    /// final.
    pub async fn lookup(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Secured<Vec<RData>>, DnssecFailure> {
        if let Some(answer) = self
            .cache
            .as_ref()
            .and_then(|c| c.get(name, rtype, Instant::now()))
        {
            return answer;
        }
        let mut failures = Vec::new();
        for &server in self.servers.iter() {
            match self.ask(server, name, rtype).await {
                Ok(response) => {
                    let answer = classify(rtype, &response);
                    if let Some(cache) = &self.cache {
                        cache.put(name, rtype, &response, &answer, Instant::now());
                    }
                    return answer;
                }
                Err(why) => {
                    tracing::debug!(%server, %name, %rtype, "trust-ad query failed: {why}");
                    failures.push(format!("{server}: {why}"));
                }
            }
        }
        Err(DnssecFailure::TempFail(failures.join("; ")))
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Message, String> {
        ask_server(server, name, rtype, self.timeout, false).await
    }
}

/// The servers of `[dns] nameservers`, or those of `/etc/resolv.conf` (port 53).
pub(crate) fn name_servers(config: &DnsConfig) -> Result<Vec<SocketAddr>, DnssecSetupError> {
    let servers: Vec<SocketAddr> = if config.nameservers.is_empty() {
        let (system, _) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| DnssecSetupError::Resolver(format!("/etc/resolv.conf: {e}")))?;
        system
            .name_servers()
            .iter()
            .map(|ns| SocketAddr::new(ns.ip, 53))
            .collect()
    } else {
        config.nameservers.clone()
    };
    if servers.is_empty() {
        return Err(DnssecSetupError::Resolver("no name servers".into()));
    }
    Ok(servers)
}

/// One query to one server: UDP, then TCP when the reply is truncated. With `cd` (RFC 4035
/// §3.2.2) a validating server hands over the data without judging it, for us to check.
pub(crate) async fn ask_server(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
    cd: bool,
) -> Result<Message, String> {
    let provider = TokioRuntimeProvider::default();
    let udp = UdpClientStream::builder(server, provider.clone())
        .with_timeout(Some(timeout))
        .build();
    let response = exchange(Client::from_sender(udp), query(name, rtype, cd), timeout).await?;
    if !response.metadata.truncation {
        return Ok(response.into_message());
    }
    let (connect, handle) = TcpClientStream::new(server, None, Some(timeout), provider);
    let tcp = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| format!("TCP: {e}"))?;
    let client = Client::with_timeout(tcp, handle, timeout);
    let response = exchange(client, query(name, rtype, cd), timeout).await?;
    Ok(response.into_message())
}

/// The query: RD, AD (RFC 6840 §5.7) and EDNS with DO (RFC 3225); CD as asked.
fn query(name: &Name, rtype: RecordType, cd: bool) -> DnsRequest {
    let mut options = DnsRequestOptions::default();
    options.use_edns = true;
    options.edns_set_dnssec_ok = true;
    options.recursion_desired = true;
    let mut request = DnsRequest::from_query(Query::query(name.clone(), rtype), options);
    request.metadata.authentic_data = true;
    request.metadata.checking_disabled = cd;
    request
}

/// Sends one request and drives the client's background I/O in this task (nothing spawned,
/// so nothing outlives the look-up), all within `timeout`.
async fn exchange<S: DnsRequestSender>(
    (client, background): (
        Client<TokioRuntimeProvider>,
        DnsExchangeBackground<S, <TokioRuntimeProvider as RuntimeProvider>::Timer>,
    ),
    request: DnsRequest,
    timeout: Duration,
) -> Result<DnsResponse, String> {
    let work = async move {
        let mut responses = client.send(request);
        drop(client);
        tokio::pin!(background);
        let first = tokio::select! {
            biased;
            r = responses.next() => r,
            () = &mut background => responses.next().await,
        };
        match first {
            Some(Ok(response)) => Ok(response),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no response".to_string()),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Sorts a reply by its response code and AD bit. Records of other types (the CNAMEs of a
/// chain the resolver followed, RRSIGs) are left out; the owner is that of the records found.
pub(crate) fn classify(
    rtype: RecordType,
    response: &Message,
) -> Result<Secured<Vec<RData>>, DnssecFailure> {
    let secure = response.metadata.authentic_data;
    match response.metadata.response_code {
        ResponseCode::NoError => {
            let found: Vec<_> = response
                .answers
                .iter()
                .filter(|r| r.record_type() == rtype)
                .collect();
            let Some(first) = found.first() else {
                return Err(DnssecFailure::NoData { secure });
            };
            Ok(Secured {
                status: if secure {
                    Security::Secure
                } else {
                    Security::Insecure
                },
                owner: first.name.clone(),
                records: found.iter().map(|r| r.data.clone()).collect(),
            })
        }
        ResponseCode::NXDomain => Err(DnssecFailure::NxDomain { secure }),
        ResponseCode::ServFail => Err(DnssecFailure::TempFail(
            "SERVFAIL (bogus or unreachable): a validating resolver answers SERVFAIL when \
             DNSSEC validation fails"
                .into(),
        )),
        other => Err(DnssecFailure::TempFail(format!(
            "resolver answered {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use hickory_proto::op::{Edns, OpCode};
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    use hickory_proto::rr::Record;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn a(owner: &str, last: u8) -> Record {
        Record::from_rdata(
            name(owner),
            300,
            RData::A(A(Ipv4Addr::new(127, 0, 0, last))),
        )
    }

    fn reply(code: ResponseCode, ad: bool, answers: Vec<Record>) -> Message {
        let mut m = Message::response(7, OpCode::Query);
        m.metadata.response_code = code;
        m.metadata.authentic_data = ad;
        m.answers = answers;
        m
    }

    #[test]
    fn answers_keep_the_asked_type_and_the_ad_verdict() {
        let cname = Record::from_rdata(
            name("mx.example.test."),
            300,
            RData::CNAME(CNAME(name("host.example.net."))),
        );
        let answers = vec![cname, a("host.example.net.", 2), a("host.example.net.", 3)];
        let got = classify(
            RecordType::A,
            &reply(ResponseCode::NoError, true, answers.clone()),
        );
        let want = Secured {
            status: Security::Secure,
            records: vec![answers[1].data.clone(), answers[2].data.clone()],
            owner: name("host.example.net."),
        };
        assert_eq!(got, Ok(want.clone()));
        let got = classify(RecordType::A, &reply(ResponseCode::NoError, false, answers));
        let insecure = Secured {
            status: Security::Insecure,
            ..want
        };
        assert_eq!(got, Ok(insecure));
    }

    #[test]
    fn negative_answers_and_failures() {
        let cname = Record::from_rdata(name("a.test."), 300, RData::CNAME(CNAME(name("b.test."))));
        for ad in [true, false] {
            let nodata = reply(ResponseCode::NoError, ad, vec![cname.clone()]);
            assert_eq!(
                classify(RecordType::TLSA, &nodata),
                Err(DnssecFailure::NoData { secure: ad })
            );
            let nx = reply(ResponseCode::NXDomain, ad, vec![]);
            assert_eq!(
                classify(RecordType::TLSA, &nx),
                Err(DnssecFailure::NxDomain { secure: ad })
            );
        }
        let servfail = classify(RecordType::A, &reply(ResponseCode::ServFail, false, vec![]));
        assert!(
            matches!(&servfail, Err(DnssecFailure::TempFail(t)) if t.contains("SERVFAIL (bogus")),
            "{servfail:?}"
        );
        let refused = classify(RecordType::A, &reply(ResponseCode::Refused, false, vec![]));
        assert!(matches!(refused, Err(DnssecFailure::TempFail(_))));
    }

    #[test]
    fn the_ad_bit_is_trusted_only_from_loopback() {
        let local: Vec<SocketAddr> = vec![
            "127.0.0.1:53".parse().unwrap(),
            "[::1]:5353".parse().unwrap(),
        ];
        assert_eq!(
            crate::config::trust_ad_servers_allowed(&local, false),
            Ok(())
        );
        let remote: Vec<SocketAddr> = vec![
            "127.0.0.1:53".parse().unwrap(),
            "192.0.2.1:53".parse().unwrap(),
        ];
        let e = crate::config::trust_ad_servers_allowed(&remote, false).unwrap_err();
        assert!(
            e.contains("192.0.2.1:53") && e.contains("dns.trust_ad_remote"),
            "{e}"
        );
        assert!(e.contains("the path to a remote one can be forged"), "{e}");
        assert_eq!(
            crate::config::trust_ad_servers_allowed(&remote, true),
            Ok(())
        );

        let toml = "[dns]\ndnssec = \"trust-ad\"\nnameservers = [\"192.0.2.1:53\"]\n";
        let e = Config::from_toml(toml).err().unwrap().to_string();
        assert!(
            e.starts_with("dns.nameservers") && e.contains("dns.trust_ad_remote"),
            "{e}"
        );
        let c = Config::from_toml(&format!("{toml}trust_ad_remote = true\n")).unwrap();
        assert!(AdResolver::from_config(&c.dns).is_ok());
        let mut dns = c.dns;
        dns.trust_ad_remote = false;
        let e = AdResolver::from_config(&dns).err().unwrap().to_string();
        assert!(e.contains("dns.trust_ad_remote"), "{e}");
    }

    /// The reply of the test resolver: per name, its verdict. `big.test.` is truncated over UDP.
    fn answer(query: &Message, over_tcp: bool) -> Message {
        let mut m = Message::response(query.metadata.id, OpCode::Query);
        m.queries = query.queries.clone();
        m.metadata.recursion_available = true;
        m.edns = Some(Edns::new());
        let asked_right = query.metadata.recursion_desired
            && query.metadata.authentic_data
            && query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let qname = query.queries[0].name().to_ascii();
        match qname.as_str() {
            _ if !asked_right => m.metadata.response_code = ResponseCode::Refused,
            "big.test." if !over_tcp => m.metadata.truncation = true,
            "secure.test." | "big.test." => {
                m.metadata.authentic_data = true;
                m.answers.push(a(&qname, 2));
            }
            "plain.test." => m.answers.push(a(&qname, 3)),
            "bogus.test." => m.metadata.response_code = ResponseCode::ServFail,
            "denied.test." => {
                m.metadata.authentic_data = true;
                m.metadata.response_code = ResponseCode::NXDomain;
                let soa = SOA::new(name("ns.test."), name("root.test."), 1, 60, 60, 60, 30);
                m.authorities
                    .push(Record::from_rdata(name("test."), 300, RData::SOA(soa)));
            }
            _ => {
                m.metadata.authentic_data = true;
                m.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        m
    }

    /// A loopback resolver on one port, UDP and TCP, answering with [`answer`].
    async fn test_resolver() -> SocketAddr {
        counting_resolver().await.0
    }

    /// [`test_resolver`], with the number of queries it has been sent.
    async fn counting_resolver() -> (SocketAddr, Arc<AtomicUsize>) {
        let queries = Arc::new(AtomicUsize::new(0));
        let (udp_count, tcp_count) = (queries.clone(), queries.clone());
        let (udp, tcp) = loop {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tcp.local_addr().unwrap();
            if let Ok(udp) = tokio::net::UdpSocket::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
                udp_count.fetch_add(1, Ordering::SeqCst);
                let query = Message::from_vec(&buf[..len]).unwrap();
                let bytes = answer(&query, false).to_vec().unwrap();
                udp.send_to(&bytes, peer).await.unwrap();
            }
        });
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = tcp.accept().await {
                tcp_count.fetch_add(1, Ordering::SeqCst);
                let len = conn.read_u16().await.unwrap() as usize;
                let mut buf = vec![0u8; len];
                conn.read_exact(&mut buf).await.unwrap();
                let bytes = answer(&Message::from_vec(&buf).unwrap(), true)
                    .to_vec()
                    .unwrap();
                conn.write_u16(bytes.len() as u16).await.unwrap();
                conn.write_all(&bytes).await.unwrap();
            }
        });
        (addr, queries)
    }

    #[tokio::test]
    async fn reads_the_ad_bit_of_a_loopback_resolver() {
        let addr = test_resolver().await;
        let config = DnsConfig {
            nameservers: vec![addr],
            timeout: Duration::from_secs(5),
            ..DnsConfig::default()
        };
        let r = AdResolver::from_config(&config).unwrap();
        let got = r.lookup(&name("secure.test"), RecordType::A).await.unwrap();
        assert_eq!(got.status, Security::Secure);
        assert_eq!(got.owner, name("secure.test."));
        assert_eq!(got.records, vec![RData::A(A(Ipv4Addr::new(127, 0, 0, 2)))]);
        let got = r.lookup(&name("plain.test."), RecordType::A).await.unwrap();
        assert_eq!(got.status, Security::Insecure);
        // Truncated over UDP: asked again over TCP.
        let got = r.lookup(&name("big.test."), RecordType::A).await.unwrap();
        assert_eq!(got.status, Security::Secure);
        let got = r.lookup(&name("gone.test."), RecordType::A).await;
        assert_eq!(got, Err(DnssecFailure::NxDomain { secure: true }));
        let got = r.lookup(&name("bogus.test."), RecordType::A).await;
        assert!(matches!(got, Err(DnssecFailure::TempFail(_))), "{got:?}");
    }

    #[tokio::test]
    async fn answers_are_kept_for_their_ttl_and_failures_asked_again() {
        let (addr, queries) = counting_resolver().await;
        let config = DnsConfig {
            nameservers: vec![addr],
            timeout: Duration::from_secs(5),
            ..DnsConfig::default()
        };
        // Without a cache (delivery's resolver), every look-up asks.
        let plain = AdResolver::from_config(&config).unwrap();
        let asked = || queries.load(Ordering::SeqCst);
        plain
            .lookup(&name("secure.test."), RecordType::A)
            .await
            .ok();
        plain
            .lookup(&name("secure.test."), RecordType::A)
            .await
            .ok();
        assert_eq!(asked(), 2);
        queries.store(0, Ordering::SeqCst);
        let r = AdResolver::from_config(&config)
            .unwrap()
            .with_answer_cache(100, Duration::from_secs(5));
        let first = r.lookup(&name("secure.test."), RecordType::A).await;
        // A clone shares the cache (the policy service's look-ups each hold one).
        let again = r.clone().lookup(&name("SECURE.test."), RecordType::A).await;
        assert_eq!(first, again);
        assert_eq!(asked(), 1, "the second look-up is answered from the cache");
        r.lookup(&name("secure.test."), RecordType::AAAA).await.ok();
        assert_eq!(asked(), 2, "another type is another question");
        // A denial with a SOA record is kept (RFC 2308), one without is not.
        for _ in 0..2 {
            let got = r.lookup(&name("denied.test."), RecordType::A).await;
            assert_eq!(got, Err(DnssecFailure::NxDomain { secure: true }));
        }
        assert_eq!(asked(), 3);
        for _ in 0..2 {
            r.lookup(&name("gone.test."), RecordType::A).await.ok();
        }
        assert_eq!(asked(), 5);
        // SERVFAIL (bogus data, to a validating resolver) is asked again every time.
        for _ in 0..2 {
            let got = r.lookup(&name("bogus.test."), RecordType::A).await;
            assert!(matches!(got, Err(DnssecFailure::TempFail(_))), "{got:?}");
        }
        assert_eq!(asked(), 7);
    }

    #[tokio::test]
    async fn a_silent_server_is_skipped_within_the_timeout() {
        // A bound socket that never answers, then the real resolver.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = DnsConfig {
            nameservers: vec![silent.local_addr().unwrap(), test_resolver().await],
            timeout: Duration::from_millis(300),
            ..DnsConfig::default()
        };
        let r = AdResolver::from_config(&config).unwrap();
        let started = std::time::Instant::now();
        let got = r
            .lookup(&name("secure.test."), RecordType::A)
            .await
            .unwrap();
        assert_eq!(got.status, Security::Secure);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
