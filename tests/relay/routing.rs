//! Where mail goes: MX resolution (RFC 5321 §5.1), fallback between MX hosts, implicit MX,
//! static routes, opportunistic STARTTLS (RFC 3207), and the delivery log line that records it
//! (DESIGN.md, "The delivery log line").

use crate::lab::dns::Zone;
use crate::lab::relay::DeliveryLine;
use crate::lab::smtp::Behaviour;
use crate::lab::WAIT;
use crate::support::{World, BOB};

/// The delivery line names `mx2.example.test` as the host that took the mail.
fn assert_relayed_by_mx2(d: &DeliveryLine) {
    assert!(
        d.field("relay").unwrap().starts_with("mx2.example.test["),
        "{}",
        d.line
    );
}

/// `example.test` with two MX hosts: `mx1.example.test` (preference 10) at the lab host `mx1`
/// and `mx2.example.test` (preference 20) at the lab host `mx2`.
fn two_mx_hosts(w: &World, mx1: u8, mx2: u8) -> Zone {
    Zone::new("example.test")
        .mx(10, "mx1.example.test")
        .mx(20, "mx2.example.test")
        .a("mx1.example.test", w.lab.ip(mx1))
        .a("mx2.example.test", w.lab.ip(mx2))
}

/// The basic path, and the log line's contract: `ID: to=<…>, relay=host[ip]:port, delay=…,
/// tls=…, …, dsn=2.0.0, status=sent (250 …)`, with the remote reply last.
#[tokio::test]
async fn delivers_to_the_mx_and_logs_the_delivery_line() {
    let (w, mx, relay) = World::with_example_mx(Behaviour::plain()).await;

    let id = relay.submit(&w.mail(BOB, "basic")).await;
    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_from, crate::support::SENDER);
    assert_eq!(m.rcpt_addresses(), vec![BOB]);
    assert!(m.tls.is_none());

    let d = relay.delivery(BOB, "sent").await;
    assert_eq!(
        d.id, id,
        "the log line starts with the queue id: {}",
        d.line
    );
    assert_eq!(
        d.field("relay"),
        Some(format!("mx.example.test[{}]:{}", w.lab.ip(3), w.lab.port()).as_str()),
        "{}",
        d.line
    );
    let delay: f64 = d
        .field("delay")
        .expect("delay=")
        .parse()
        .expect("delay is a number");
    assert!((0.0..60.0).contains(&delay), "{}", d.line);
    assert_eq!(d.field("tls"), Some("none"), "{}", d.line);
    assert_eq!(d.field("policy"), Some("none"), "{}", d.line);
    assert_eq!(d.field("dsn"), Some("2.0.0"), "{}", d.line);
    let keys: Vec<&str> = d.fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(&keys[..3], ["relay", "delay", "tls"], "{}", d.line);
    assert_eq!(
        keys.last(),
        Some(&"dsn"),
        "dsn= comes just before status=: {}",
        d.line
    );
    assert!(
        d.reply.starts_with("250 2.0.0 Ok: queued"),
        "the remote reply: {}",
        d.line
    );
    assert!(
        d.line.ends_with(')'),
        "the remote reply is last: {}",
        d.line
    );
}

/// RFC 5321 §5.1: the lowest preference first; a less preferred host is not touched when the
/// first one takes the mail.
#[tokio::test]
async fn tries_the_most_preferred_mx_first() {
    let w = World::new().await;
    w.lab.zone(
        Zone::new("example.test")
            .mx(20, "mx2.example.test")
            .mx(10, "mx1.example.test")
            .a("mx1.example.test", w.lab.ip(3))
            .a("mx2.example.test", w.lab.ip(4)),
    );
    let mx1 = w.lab.mx(3, Behaviour::plain()).await;
    let mx2 = w.lab.mx(4, Behaviour::plain()).await;
    let relay = w.lab.relay().await;

    w.deliver(&relay, "preference", &mx1).await;
    assert_eq!(
        mx2.connections(),
        0,
        "the preference-20 MX must not be contacted"
    );
}

/// RFC 5321 §5.1: when the preferred MX refuses the connection, the next one is tried in the
/// same attempt.
#[tokio::test]
async fn falls_back_when_the_first_mx_refuses_connections() {
    let w = World::new().await;
    w.lab.zone(two_mx_hosts(&w, 9, 4)); // nothing listens on the lab host 9
    let mx2 = w.lab.mx(4, Behaviour::plain()).await;
    let relay = w.lab.relay().await;

    let (_, d) = w.deliver(&relay, "fallback", &mx2).await;
    assert_relayed_by_mx2(&d);
}

/// A 4xx greeting is a temporary refusal of that host only: the next MX takes the mail.
#[tokio::test]
async fn falls_back_when_the_first_mx_greets_with_4xx() {
    let w = World::new().await;
    w.lab.zone(two_mx_hosts(&w, 3, 4));
    let mx1 = w
        .lab
        .mx(3, Behaviour::plain().greeting("421 4.3.2 mx1 is busy"))
        .await;
    let mx2 = w.lab.mx(4, Behaviour::plain()).await;
    let relay = w.lab.relay().await;

    let (_, d) = w.deliver(&relay, "busy first", &mx2).await;
    assert!(mx1.connections() >= 1, "the preferred MX was tried first");
    assert_relayed_by_mx2(&d);
}

/// RFC 5321 §5.1: no MX records → the domain's own address is the single, implicit MX.
#[tokio::test]
async fn uses_the_domains_address_when_there_is_no_mx() {
    let w = World::new().await;
    w.lab
        .zone(Zone::new("example.test").a("example.test", w.lab.ip(3)));
    let mx = w.lab.mx(3, Behaviour::plain()).await;
    let relay = w.lab.relay().await;

    let (_, d) = w.deliver(&relay, "implicit mx", &mx).await;
    assert_eq!(
        d.field("relay"),
        Some(format!("example.test[{}]:{}", w.lab.ip(3), w.lab.port()).as_str()),
        "{}",
        d.line
    );
}

/// A `[host]:port` route skips the MX lookup entirely (Postfix transport-map semantics).
#[tokio::test]
async fn a_static_route_bypasses_the_mx() {
    let w = World::new().await;
    let mx = w.example_mx(Behaviour::plain()).await;
    let hop = w.lab.smtp_elsewhere(7, Behaviour::plain()).await;
    let next_hop = format!("[{}]:{}", hop.addr().ip(), hop.addr().port());
    let relay = w
        .lab
        .start_relay(w.lab.relay_config().route("example.test", &next_hop))
        .await;

    let (m, d) = w.deliver(&relay, "routed", &hop).await;
    assert_eq!(m.rcpt_addresses(), vec![BOB]);
    assert!(
        d.field("relay").unwrap().ends_with(&format!(
            "[{}]:{}",
            hop.addr().ip(),
            hop.addr().port()
        )),
        "{}",
        d.line
    );
    assert_eq!(mx.connections(), 0, "the domain's MX must not be used");
    assert!(
        !w.lab.dns.queries().iter().any(|q| q == "example.test. MX"),
        "no MX lookup for a [host] route: {:?}",
        w.lab.dns.queries()
    );
}

/// RFC 3207 opportunistic TLS: STARTTLS offered → used; with no policy asking for
/// authentication the log says `tls=unverified`, with the protocol version and cipher.
#[tokio::test]
async fn uses_starttls_opportunistically() {
    let w = World::new().await;
    let (cert, key) = w.lab.ca.issue(&["mx.example.test"]);
    let behaviour = Behaviour::plain().starttls(&cert, &key);
    let mx = w.example_mx(behaviour).await;
    let relay = w.lab.relay().await;

    let (m, d) = w.deliver(&relay, "tls", &mx).await;
    let tls = m.tls.expect("the message came over TLS");
    assert!(
        tls.version == "TLSv1_3" || tls.version == "TLSv1_2",
        "{tls:?}"
    );
    assert_eq!(d.field("tls"), Some("unverified"), "{}", d.line);
    let version = d
        .field("tls_version")
        .expect("tls_version= when TLS was used");
    assert_eq!(version, tls.version.replace('_', "."), "{}", d.line);
    assert!(
        d.field("cipher").is_some_and(|c| !c.is_empty()),
        "{}",
        d.line
    );
}

/// RFC 5321 §5.1 covers IPv6: an MX host with only an AAAA record is reached over IPv6.
#[tokio::test]
async fn reaches_an_mx_host_over_ipv6() {
    let w = World::new().await;
    w.lab.zone(
        Zone::new("example.test")
            .mx(10, "mx6.example.test")
            .aaaa("mx6.example.test", std::net::Ipv6Addr::LOCALHOST),
    );
    let mx = w.lab.mx_v6(Behaviour::plain()).await;
    let relay = w.lab.relay().await;

    let (_, d) = w.deliver(&relay, "ipv6", &mx).await;
    assert_eq!(
        d.field("relay"),
        Some(format!("mx6.example.test[::1]:{}", w.lab.port()).as_str()),
        "{}",
        d.line
    );
}
