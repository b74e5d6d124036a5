//! Hostile DNS, against the real binary: hundreds of MX records and a name server that never
//! answers. Each gets a precise deferral in bounded time,
//! and the look-ups it costs stay bounded.

mod lab;

use lab::dns::Zone;
use lab::relay::DeliveryLine;
use lab::smtp::Behaviour;
use lab::submit::{message, Submission};
use lab::{Lab, WAIT};
use std::time::{Duration, Instant};

const SENDER: &str = "alice@sender.test";

fn mail(to: &str) -> Submission {
    Submission::new(SENDER, message(SENDER, to, "hostile dns", "Hi.\n")).rcpt(to)
}

async fn deferred(relay: &lab::relay::Relay, to: &str) -> (DeliveryLine, Duration) {
    let mark = relay.log_mark();
    let start = Instant::now();
    relay.submit(&mail(to)).await;
    let d = relay.wait_for_delivery(mark, to, "deferred", WAIT).await;
    (d, start.elapsed())
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
