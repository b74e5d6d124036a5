//! Acceptance review: delivery edge cases an operator's suite exercises (RFC 5321 §5.1 address
//! literals and mail loops, MX records pointing at CNAMEs, MX names in odd case), driven
//! through `Deliverer::deliver` against the lab, without the relay process.

mod lab;

use lab::dns::Zone;
use lab::smtp::Behaviour;
use lab::Lab;
use mxguard::config::Config;
use mxguard::delivery::{Attempt, Deliverer, Job};
use mxguard::envelope::{Envelope, Recipient};
use mxguard::queue::QueueId;
use std::sync::Arc;
use std::time::Duration;

const MESSAGE: &[u8] = b"From: a@sender.test\r\nSubject: hi\r\n\r\nHello.\r\n";

/// One attempt for `rcpts`, all of `domain` (as the scheduler computes it: lower case).
async fn deliver(config: Config, rcpts: &[&str], domain: &str) -> Vec<Attempt> {
    let mut env = Envelope::new("alice@sender.test");
    env.recipients = rcpts.iter().map(|r| Recipient::new(*r)).collect();
    let deliverer = Deliverer::new(Arc::new(config), None).expect("deliverer");
    let id = QueueId::generate();
    let recipients: Vec<usize> = (0..rcpts.len()).collect();
    let job = Job {
        queue_id: &id,
        envelope: &env,
        message: MESSAGE,
        domain,
        recipients: &recipients,
    };
    let attempts = deliverer.deliver(&job).await;
    assert_eq!(attempts.len(), rcpts.len());
    for a in &attempts {
        eprintln!("attempt: {:?} via {:?}", a.reply, a.relay);
    }
    attempts
}

/// RFC 5321 §5.1: "If the domain is an address literal, … the address literal is used
/// directly": `bob@[127.x.y.3]` goes to that address, with no MX lookup. (Postfix delivers
/// such mail; the relay used to defer it for ever as a DNS failure.)
#[tokio::test]
async fn review_address_literal_recipient_is_delivered_to_that_address() {
    let lab = Lab::new().await;
    let mx = lab.mx(3, Behaviour::plain()).await;
    let literal = format!("[{}]", lab.ip(3));
    let rcpt = format!("bob@{literal}");

    let attempts = deliver(lab.delivery_config(), &[&rcpt], &literal).await;
    assert_eq!(attempts[0].reply.code, 250, "{:?}", attempts[0]);
    let relay = attempts[0].relay.as_ref().expect("a session was held");
    assert_eq!(relay.addr.ip(), std::net::IpAddr::V4(lab.ip(3)));
    let m = mx.next_message(Duration::from_secs(5)).await;
    assert_eq!(m.rcpt_addresses(), vec![rcpt.as_str()]);
    assert!(
        !lab.dns.queries().iter().any(|q| q.contains('[')),
        "an address literal is never looked up in DNS: {:?}",
        lab.dns.queries()
    );
}

/// The IPv6 form, `[IPv6:::1]` (RFC 5321 §4.1.3).
#[tokio::test]
async fn review_ipv6_address_literal_recipient_is_delivered() {
    let lab = Lab::new().await;
    let mx = lab.mx_v6(Behaviour::plain()).await;
    let rcpt = "bob@[IPv6:::1]";

    // The scheduler passes the lower-cased domain.
    let attempts = deliver(lab.delivery_config(), &[rcpt], "[ipv6:::1]").await;
    assert_eq!(attempts[0].reply.code, 250, "{:?}", attempts[0]);
    let m = mx.next_message(Duration::from_secs(5)).await;
    assert_eq!(m.rcpt_addresses(), vec![rcpt]);
}

/// RFC 5321 §5.1 / Postfix: an MX host that greets us with our own host name is ourselves;
/// delivering there loops. Postfix: `550 5.4.6 mail for D loops back to myself` when it is the
/// best MX. The lab's servers answer EHLO as `mx.lab.test`; a relay of that name talks to
/// itself.
#[tokio::test]
async fn review_mx_that_is_ourselves_bounces_with_5_4_6() {
    let lab = Lab::new().await;
    let mx = lab
        .domain_with_mx("example.test", 3, Behaviour::plain())
        .await;
    let mut c = lab.delivery_config();
    c.hostname = "MX.lab.test".into();

    let attempts = deliver(c, &["bob@example.test"], "example.test").await;
    let a = &attempts[0];
    assert_eq!(a.reply.code, 550, "{a:?}");
    assert_eq!(a.reply.status().to_string(), "5.4.6", "{a:?}");
    assert!(a.reply.text.contains("loops back to myself"), "{a:?}");
    assert!(mx.messages().is_empty(), "nothing delivered to ourselves");
}

/// A looping host that is not the best MX only defers (Postfix: 4.4.6), so that a backup
/// listing us does not bounce mail while the primary is down.
#[tokio::test]
async fn review_loop_at_a_backup_mx_defers_with_4_4_6() {
    let lab = Lab::new().await;
    // mx10 (preference 10) refuses connections; mx20 is "us".
    lab.zone(
        Zone::new("example.test")
            .mx(10, "mx10.example.test")
            .mx(20, "mx20.example.test")
            .a("mx10.example.test", lab.ip(10))
            .a("mx20.example.test", lab.ip(20)),
    );
    let mx20 = lab.mx(20, Behaviour::plain()).await;
    let mut c = lab.delivery_config();
    c.hostname = "mx.lab.test".into();

    let attempts = deliver(c, &["bob@example.test"], "example.test").await;
    let a = &attempts[0];
    assert_eq!(a.reply.code / 100, 4, "{a:?}");
    assert!(mx20.messages().is_empty());
}

/// An MX record whose exchange is a CNAME (RFC 2181 §10.3 forbids it, but it is common and
/// every MTA follows it), and an MX name in capitals with a trailing dot.
#[tokio::test]
async fn review_mx_pointing_at_a_cname_and_odd_case() {
    let lab = Lab::new().await;
    lab.zone(
        Zone::new("example.test")
            .mx(10, "ALIAS.Example.TEST.")
            .cname("alias.example.test", "mx.example.test")
            .a("mx.example.test", lab.ip(3)),
    );
    let mx = lab.mx(3, Behaviour::plain()).await;
    let attempts = deliver(lab.delivery_config(), &["bob@example.test"], "example.test").await;
    assert_eq!(attempts[0].reply.code, 250, "{:?}", attempts[0]);
    mx.next_message(Duration::from_secs(5)).await;
}
