//! Hostile DNS, against the real binary (issue #15): hundreds of MX records, a name server that
//! never answers, truncated answers (TC) with and without TCP behind them, answers too large for
//! a datagram, undecodable answers and answers under a wrong message ID, hundreds of TLSA
//! records, CNAME chains and loops. Each ends in a precise outcome (delivered, or deferred with
//! the exact reply, never bounced for what DNS may yet fix) in bounded time, and the look-ups it
//! costs stay bounded.
//!
//! The misbehaving name servers are [`lab::rawdns::RawDns`] in front of the lab's DNS; answers
//! that are merely large come from the lab's DNS itself, which truncates UDP answers that do not
//! fit the client's datagram size, as any server does.

mod lab;

use lab::ca::CertOptions;
use lab::dane::{dane_ee, DaneScene, Record};
use lab::dns::Zone;
use lab::rawdns::{RawDns, Tcp, Udp};
use lab::relay::{assert_facts, assert_relayed_by, DeliveryLine, Relay};
use lab::smtp::{assert_nothing_sent, Behaviour};
use lab::submit::{message, Submission};
use lab::{Lab, WAIT};
use rand::RngCore;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const SENDER: &str = "alice@sender.test";

fn mail(to: &str) -> Submission {
    Submission::new(SENDER, message(SENDER, to, "hostile dns", "Hi.\n")).rcpt(to)
}

async fn deferred(relay: &lab::relay::Relay, to: &str) -> (DeliveryLine, Duration) {
    outcome(relay, to, "deferred").await
}

async fn sent(relay: &lab::relay::Relay, to: &str) -> (DeliveryLine, Duration) {
    outcome(relay, to, "sent").await
}

/// Submits a message to `to`; its first delivery line with `status`, and how long that took.
async fn outcome(relay: &lab::relay::Relay, to: &str, status: &str) -> (DeliveryLine, Duration) {
    let mark = relay.log_mark();
    let start = Instant::now();
    relay.submit(&mail(to)).await;
    let d = relay.wait_for_delivery(mark, to, status, WAIT).await;
    (d, start.elapsed())
}

/// The reply for a look-up that got no answer for now (mx.rs: Postfix's wording, 4.4.3).
fn try_again(name: &str, rtype: &str) -> String {
    format!(
        "451 4.4.3 Host or domain name not found. Name service error for name={name} \
         type={rtype}: Host not found, try again"
    )
}

/// The lab relay (`dnssec = "trust-ad"`, so every answer is also asked for over the AD path)
/// with `ns` as its one name server and `dns.timeout` = `timeout`.
async fn relay_via(lab: &Lab, ns: SocketAddr, timeout: &str) -> Relay {
    let mut config = lab.relay_config();
    config.nameserver = ns;
    lab.start_relay(config.toml(&format!("[dns]\ntimeout = \"{timeout}\"\n")))
        .await
}

/// A raw responder on `127.X.Y.55` in front of the lab's DNS.
async fn raw_dns(lab: &Lab, udp: Udp, tcp: Tcp) -> RawDns {
    RawDns::start(IpAddr::V4(lab.ip(55)), lab.dns.addr(), udp, tcp).await
}

/// Waits until `rcpt` has at least `n` delivery lines from log line `mark` on; returns them.
async fn deliveries_of(relay: &Relay, mark: usize, rcpt: &str, n: usize) -> Vec<DeliveryLine> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines: Vec<DeliveryLine> = relay.log_lines()[mark..]
            .iter()
            .filter_map(|l| DeliveryLine::parse(l))
            .filter(|d| d.to == rcpt)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{n} delivery lines for {rcpt} within {WAIT:?}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[track_caller]
fn assert_asked(queries: &[String], query: &str, how: &str) {
    assert!(
        queries.iter().any(|q| q == query),
        "{query} was not asked {how}: {queries:#?}"
    );
}

/// 300 MX hosts, none of which answers SMTP: only the 20 most preferred are looked up (their
/// addresses), only 10 addresses tried; the mail is deferred quickly.
#[tokio::test]
async fn hundreds_of_mx_records_cost_a_bounded_number_of_lookups() {
    let lab = Lab::new().await;
    let mut zone = Zone::new("many.test");
    for i in 0..300u16 {
        let host = format!("mx{i}.many.test");
        zone = zone.mx(10 + i, &host).a(&host, lab.ip(200)); // nothing listens there
    }
    lab.zone(zone);
    let relay = lab.relay().await;
    let (d, took) = deferred(&relay, "bob@many.test").await;
    assert!(d.reply.starts_with("4"), "{}", d.line);
    assert!(took < Duration::from_secs(15), "{took:?}");
    let address_lookups = lab
        .dns
        .queries()
        .iter()
        .filter(|q| q.contains(".many.test") && (q.contains(" A") || q.contains("AAAA")))
        .count();
    assert!(
        address_lookups <= 2 * 20,
        "{address_lookups} address look-ups for one attempt"
    );
    relay
        .wait_for_log(
            |l| l.contains("300 MX hosts; considering the 20 most preferred"),
            WAIT,
        )
        .await;
}

/// A name server that never answers: the MX look-up times out within `dns.timeout`, and the
/// mail is deferred as a temporary DNS failure (4.4.3), never bounced.
#[tokio::test]
async fn a_silent_name_server_defers_within_the_dns_timeout() {
    let lab = Lab::new().await;
    let _sender = lab
        .domain_with_mx("sender.test", 2, Behaviour::plain())
        .await;
    // A UDP and TCP socket that read and never answer.
    let silent = std::net::UdpSocket::bind((lab.ip(54), 0)).expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let _tcp = std::net::TcpListener::bind((lab.ip(54), port)).expect("bind tcp");
    let config = lab.relay_config().toml(&format!(
        "[dns]\nnameservers = [\"{}:{port}\"]\ntimeout = \"2s\"\ndnssec = \"off\"\n",
        lab.ip(54)
    ));
    let relay = lab.start_relay(config).await;
    let (d, took) = deferred(&relay, "bob@quiet.test").await;
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert!(d.reply.starts_with("451 4.4.3"), "{}", d.line);
    assert!(took < Duration::from_secs(15), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Truncated answers (RFC 1035 §4.2.1, RFC 7766 §5)

/// A name server whose every UDP answer has TC set, first with no records, then with only the
/// first record of the answer, while TCP on the same port answers in full: the relay asks
/// again over TCP, on both of its DNS paths (the resolver and the AD-bit client), and delivers.
#[tokio::test]
async fn truncated_udp_answers_are_asked_again_over_tcp() {
    let lab = Lab::new().await;
    let mx = lab.domain_with_mx("tc.test", 10, Behaviour::plain()).await;
    let mx_partial = lab
        .domain_with_mx("tc-partial.test", 11, Behaviour::plain())
        .await;
    let raw = raw_dns(&lab, Udp::Truncated, Tcp::Forward).await;
    let relay = relay_via(&lab, raw.addr(), "2s").await;

    let (d, took) = sent(&relay, "bob@tc.test").await;
    assert_relayed_by(&d, "mx.tc.test");
    assert_eq!(
        mx.next_message(WAIT).await.rcpt_addresses(),
        ["bob@tc.test"]
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    for q in ["tc.test. MX", "mx.tc.test. A"] {
        assert_asked(&raw.queries(false), q, "over UDP");
        assert_asked(&raw.queries(true), q, "again over TCP");
    }
    // The MX look-up went both ways over TCP: the resolver's, and the AD-bit client's.
    let seen = raw.seen();
    for ad in [false, true] {
        assert!(
            seen.iter()
                .any(|s| s.tcp && s.ad == ad && s.query == "tc.test. MX"),
            "no MX query over TCP with AD={ad}: {seen:#?}"
        );
    }

    raw.set_udp(Udp::TruncatedPartial);
    let (d, took) = sent(&relay, "bob@tc-partial.test").await;
    assert_relayed_by(&d, "mx.tc-partial.test");
    assert_eq!(
        mx_partial.next_message(WAIT).await.rcpt_addresses(),
        ["bob@tc-partial.test"]
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    for q in ["tc-partial.test. MX", "mx.tc-partial.test. A"] {
        assert_asked(&raw.queries(true), q, "again over TCP");
    }
}

/// TC on UDP and no TCP behind it (`tcp`: refused, or accepted and closed at once): no answer
/// can be had, so the mail is deferred as a temporary DNS failure, at once rather than after
/// the timeout, and nothing is sent.
async fn truncated_without_tcp_defers(tcp: Tcp) {
    let lab = Lab::new().await;
    let mx = lab.domain_with_mx("tc.test", 10, Behaviour::plain()).await;
    let raw = raw_dns(&lab, Udp::Truncated, tcp).await;
    let relay = relay_via(&lab, raw.addr(), "2s").await;

    let (d, took) = deferred(&relay, "bob@tc.test").await;
    assert_eq!(d.reply, try_again("tc.test", "MX"), "{}", d.line);
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_asked(&raw.queries(false), "tc.test. MX", "over UDP");
    if tcp == Tcp::Close {
        assert!(raw.tcp_connections() > 0, "the relay tried TCP");
    }
    assert_nothing_sent(&mx);
}

#[tokio::test]
async fn truncated_udp_and_tcp_refused_defers_4_4_3() {
    truncated_without_tcp_defers(Tcp::Refuse).await;
}

#[tokio::test]
async fn truncated_udp_and_tcp_closed_defers_4_4_3() {
    truncated_without_tcp_defers(Tcp::Close).await;
}

// ---------------------------------------------------------------------------------------------
// Oversized answers

/// Answers larger than any datagram the relay accepts: 101 MX records with long names (and
/// their addresses as additional data), and 100 A records for one MX host. The lab's server
/// truncates them over UDP; the relay gets them whole over TCP and delivers to the most
/// preferred host, at its first address.
#[tokio::test]
async fn oversized_answers_come_over_tcp() {
    let lab = Lab::new().await;
    let big = lab.mx(10, Behaviour::plain()).await;
    let mut zone = Zone::new("big.test")
        .mx(10, "mx.big.test")
        .a("mx.big.test", lab.ip(10));
    for i in 0..100u16 {
        let host = format!("backup-{i:03}-a-long-label-to-fill-the-datagram-quickly.big.test");
        zone = zone.mx(20 + i, &host).a(&host, lab.ip(200)); // nothing listens there
    }
    lab.zone(zone);
    let wide = lab.mx(11, Behaviour::plain()).await;
    // The address that answers first (and lowest), then 99 where nothing listens.
    let mut zone = Zone::new("wide.test")
        .mx(10, "mx.wide.test")
        .a("mx.wide.test", lab.ip(11));
    for n in 100..199u8 {
        zone = zone.a("mx.wide.test", lab.ip(n));
    }
    lab.zone(zone);
    let relay = lab.relay().await;

    let (d, took) = sent(&relay, "bob@big.test").await;
    assert_relayed_by(&d, "mx.big.test");
    assert_eq!(
        big.next_message(WAIT).await.rcpt_addresses(),
        ["bob@big.test"]
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (d, took) = sent(&relay, "bob@wide.test").await;
    assert_eq!(
        d.field("relay"),
        Some(format!("mx.wide.test[{}]:{}", lab.ip(11), lab.port()).as_str()),
        "{}",
        d.line
    );
    assert_eq!(
        wide.next_message(WAIT).await.rcpt_addresses(),
        ["bob@wide.test"]
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let tcp = lab.dns.tcp_queries();
    assert_asked(&tcp, "big.test. MX", "over TCP");
    assert_asked(&tcp, "mx.wide.test. A", "over TCP");
}

// ---------------------------------------------------------------------------------------------
// Undecodable answers, wrong message IDs

/// UDP answers that carry the query's ID but cannot be decoded: no panic, no hang; the mail is
/// deferred as a temporary DNS failure, and delivered on a retry once the server answers
/// properly.
#[tokio::test]
async fn undecodable_udp_answers_defer_until_the_server_is_fixed() {
    let lab = Lab::new().await;
    let mx = lab
        .domain_with_mx("junk.test", 10, Behaviour::plain())
        .await;
    let raw = raw_dns(&lab, Udp::Undecodable, Tcp::Forward).await;
    let mut relay = relay_via(&lab, raw.addr(), "1s").await;

    let mark = relay.log_mark();
    let (d, took) = deferred(&relay, "bob@junk.test").await;
    assert_eq!(d.reply, try_again("junk.test", "MX"), "{}", d.line);
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(relay.is_running(), "the relay survives undecodable answers");
    assert_nothing_sent(&mx);

    raw.set_udp(Udp::Forward);
    let d = relay
        .wait_for_delivery(mark, "bob@junk.test", "sent", WAIT)
        .await;
    assert_relayed_by(&d, "mx.junk.test");
    assert_eq!(
        mx.next_message(WAIT).await.rcpt_addresses(),
        ["bob@junk.test"]
    );
}

/// UDP answers under a wrong message ID, then random bytes: both are ignored as a resolver
/// must (RFC 5452 §4.3), so the look-up times out and the mail is deferred 4.4.3 within a few
/// `dns.timeout`s; the relay keeps running.
#[tokio::test]
async fn wrong_id_and_random_udp_answers_are_ignored_until_the_timeout() {
    let lab = Lab::new().await;
    let _mx = lab
        .domain_with_mx("spoof.test", 10, Behaviour::plain())
        .await;
    let _mx2 = lab
        .domain_with_mx("noise.test", 11, Behaviour::plain())
        .await;
    let raw = raw_dns(&lab, Udp::WrongId, Tcp::Forward).await;
    let mut relay = relay_via(&lab, raw.addr(), "1s").await;

    let (d, took) = deferred(&relay, "bob@spoof.test").await;
    assert_eq!(d.reply, try_again("spoof.test", "MX"), "{}", d.line);
    assert!(took < Duration::from_secs(8), "{took:?}");

    raw.set_udp(Udp::Random);
    let (d, took) = deferred(&relay, "bob@noise.test").await;
    assert_eq!(d.reply, try_again("noise.test", "MX"), "{}", d.line);
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(relay.is_running(), "the relay survives noise");
}

// ---------------------------------------------------------------------------------------------
// Hundreds of TLSA records (RFC 7672 §2.2, RFC 6698 §2.1)

/// The MX host of the signed `dane.test` in these tests (lab host 10).
const DANE_MX: &str = "mx10.dane.test";

/// 300 DANE-EE(3) SPKI(1) SHA2-256(1) records with random data for [`DANE_MX`], and, when
/// `matching`, one more that matches its certificate in the middle of them: the signed RRset is
/// far larger than a datagram (about 14 KB), so it comes over TCP. Returns the scene, the MX
/// host and the relay, validating in-process.
async fn tlsa_flood(matching: bool) -> (DaneScene, lab::smtp::SmtpServer, Relay) {
    let s = DaneScene::new().await;
    let issued = s.lab().ca.issue_with(&[DANE_MX], CertOptions::default());
    let mx = s.tls_mx(10, &issued).await;
    let mut records: Vec<Record> = (0..300)
        .map(|_| {
            let mut data = vec![0u8; 32];
            rand::thread_rng().fill_bytes(&mut data);
            ((3, 1, 1), data)
        })
        .collect();
    if matching {
        records.insert(150, dane_ee(&issued));
    }
    s.publish_signed("dane.test", 10, &records);
    let relay = s.relay("").await;
    (s, mx, relay)
}

/// The TLSA RRset of [`DANE_MX`] was fetched over TCP.
#[track_caller]
fn assert_tlsa_over_tcp(s: &DaneScene) {
    let owner = format!("{}. TLSA", s.tlsa_owner(DANE_MX));
    assert_asked(&s.lab().dns.tcp_queries(), &owner, "over TCP");
}

#[tokio::test]
async fn hundreds_of_tlsa_records_with_one_match_deliver_under_dane() {
    let (s, mx, relay) = tlsa_flood(true).await;
    let start = Instant::now();
    let d = s.send(&relay, "bob@dane.test", "tlsa flood", "sent").await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_facts(&d, "verified", "dane", "2.0.0");
    assert_relayed_by(&d, DANE_MX);
    assert_eq!(
        mx.next_message(WAIT).await.rcpt_addresses(),
        ["bob@dane.test"]
    );
    assert_tlsa_over_tcp(&s);
}

#[tokio::test]
async fn hundreds_of_tlsa_records_none_matching_defer_4_7_5() {
    let (s, mx, relay) = tlsa_flood(false).await;
    let start = Instant::now();
    let d = s
        .send(&relay, "bob@dane.test", "tlsa flood", "deferred")
        .await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        d.reply,
        "451 4.7.5 Server certificate not verified: DANE authentication failed: no TLSA record \
         matched the certificate chain",
        "{}",
        d.line
    );
    assert_facts(&d, "none", "dane", "4.7.5");
    assert_nothing_sent(&mx);
    assert_tlsa_over_tcp(&s);
}

// ---------------------------------------------------------------------------------------------
// CNAME chains and loops (RFC 1034 §3.6.2, RFC 5321 §5.1)

/// `domain` with MX host `mx.<domain>`, which is the start of a chain of `cnames` CNAME records,
/// each hop in a zone of its own (`h1.<label>-1.test`, …), so that the relay's resolver follows
/// every hop itself; the last name has the A record `target`.
fn publish_cname_chain(lab: &Lab, domain: &str, cnames: usize, target: Ipv4Addr) {
    let label = domain.trim_end_matches(".test");
    let zone_of = |i: usize| format!("{label}-{i}.test");
    let hop = |i: usize| format!("h{i}.{}", zone_of(i));
    let mx = format!("mx.{domain}");
    lab.zone(Zone::new(domain).mx(10, &mx).cname(&mx, &hop(1)));
    for i in 1..cnames {
        lab.zone(Zone::new(&zone_of(i)).cname(&hop(i), &hop(i + 1)));
    }
    lab.zone(Zone::new(&zone_of(cnames)).a(&hop(cnames), target));
}

/// Chains that end are followed: the MX host a chain of five CNAMEs (each in another zone)
/// away from its address; and a recipient domain that is itself a CNAME (to a domain with MX
/// records; RFC 5321 §5.1: "the resulting domain is processed as if it were the initial
/// domain").
#[tokio::test]
async fn cname_chains_that_end_are_followed() {
    let lab = Lab::new().await;
    let five = lab.mx(10, Behaviour::plain()).await;
    publish_cname_chain(&lab, "five.test", 5, lab.ip(10));
    let real = lab
        .domain_with_mx("real.test", 11, Behaviour::plain())
        .await;
    lab.zone(Zone::new("alias.test").cname("mail.alias.test", "real.test"));
    let relay = lab.relay().await;

    let (d, took) = sent(&relay, "bob@five.test").await;
    assert_relayed_by(&d, "mx.five.test");
    assert_eq!(
        five.next_message(WAIT).await.rcpt_addresses(),
        ["bob@five.test"]
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    for i in 1..=5 {
        assert_asked(&lab.dns.queries(), &format!("h{i}.five-{i}.test. A"), "");
    }

    // An ordinary NODATA (the AAAA of an MX host with only an A record) carries its zone's
    // SOA: it costs no look-up beyond itself.
    assert_asked(&lab.dns.queries(), "h5.five-5.test. AAAA", "");
    assert!(
        !lab.dns.queries().iter().any(|q| q.ends_with(" CNAME")),
        "{:#?}",
        lab.dns.queries()
    );

    let (d, took) = sent(&relay, "bob@mail.alias.test").await;
    assert_relayed_by(&d, "mx.real.test");
    assert_eq!(
        real.next_message(WAIT).await.rcpt_addresses(),
        ["bob@mail.alias.test"]
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// CNAMEs that never end: an MX host in a loop within its zone (a → b → a), one in a loop
/// across two zones, one at the head of a chain of 20 CNAMEs (longer than any resolver
/// follows; its end has an address where an MX listens), and a recipient domain that is itself
/// in a loop. A resolver gives up on such a name (recursive ones say SERVFAIL); it is a
/// misconfiguration that its owner may be fixing, so each recipient is deferred with 4.4.3,
/// again on the retry, and never bounced.
#[tokio::test]
async fn cname_loops_and_overlong_chains_defer_never_bounce() {
    let lab = Lab::new().await;
    let _sender = lab
        .domain_with_mx("sender.test", 2, Behaviour::plain())
        .await;
    let end_of_chain = lab.mx(12, Behaviour::plain()).await;
    lab.zone(
        Zone::new("loop.test")
            .mx(10, "mx.loop.test")
            .cname("mx.loop.test", "b.loop.test")
            .cname("b.loop.test", "mx.loop.test")
            .cname("self.loop.test", "self2.loop.test")
            .cname("self2.loop.test", "self.loop.test"),
    );
    lab.zone(
        Zone::new("loop2.test")
            .mx(10, "mx.loop2.test")
            .cname("mx.loop2.test", "x.loop3.test"),
    );
    lab.zone(Zone::new("loop3.test").cname("x.loop3.test", "mx.loop2.test"));
    publish_cname_chain(&lab, "long.test", 20, lab.ip(12));
    let relay = lab.relay().await;

    let cases = [
        ("bob@loop.test", try_again("mx.loop.test", "A")),
        ("bob@loop2.test", try_again("mx.loop2.test", "A")),
        ("bob@long.test", try_again("mx.long.test", "A")),
        ("bob@self.loop.test", try_again("self.loop.test", "MX")),
    ];
    let start = Instant::now();
    let mark = relay.log_mark();
    for (rcpt, _) in &cases {
        relay.submit(&mail(rcpt)).await;
    }
    for (rcpt, reply) in &cases {
        let first = relay.wait_for_delivery(mark, rcpt, "deferred", WAIT).await;
        assert_eq!(&first.reply, reply, "{}", first.line);
        assert_eq!(first.field("relay"), Some("none"), "{}", first.line);
    }
    // The retry (backoff 1 s) meets the same loops, with the same replies.
    for (rcpt, reply) in &cases {
        let lines = deliveries_of(&relay, mark, rcpt, 2).await;
        assert!(lines.iter().all(|d| &d.reply == reply), "{lines:#?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let bounced: Vec<String> = relay
        .deliveries()
        .into_iter()
        .filter(|d| d.status != "deferred")
        .map(|d| d.line)
        .collect();
    assert!(bounced.is_empty(), "only deferrals: {bounced:#?}");
    assert_nothing_sent(&end_of_chain);
}

/// The same loops when DNSSEC is validated in-process (`dns.dnssec = "validate"`, a signed
/// lab root and signed zones): the MX host's address look-up meets the loop through the
/// validating resolver, and the mail is deferred, never bounced.
#[tokio::test]
async fn cname_loops_defer_when_dnssec_is_validated_too() {
    let s = DaneScene::new().await;
    s.publish(
        Zone::new("vloop.test")
            .mx(10, "mx.vloop.test")
            .cname("mx.vloop.test", "b.vloop.test")
            .cname("b.vloop.test", "mx.vloop.test")
            .signed(),
    );
    let relay = s.relay("").await;
    let rcpt = "bob@vloop.test";
    let mark = relay.log_mark();
    relay.submit(&mail(rcpt)).await;
    let first = relay.wait_for_delivery(mark, rcpt, "deferred", WAIT).await;
    assert!(first.reply.starts_with("451 4.4.3"), "{}", first.line);
    let lines = deliveries_of(&relay, mark, rcpt, 2).await;
    assert!(lines.iter().all(|d| d.status == "deferred"), "{lines:#?}");
}
