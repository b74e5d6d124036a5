//! Connection reuse: after a transaction the session stays open for the next message to the
//! same MX host, but only for a message whose plan for that host demands exactly the
//! requirement the session was opened and verified under. The scene: one lab MX host with
//! STARTTLS (a lab-CA certificate for two names) at one IP, named `mx1.shared.test` and
//! `mx2.shared.test`; `a.test` (MX mx1, no policy: opportunistic), `b.test` (MX mx1) and
//! `c.test` (MX mx2) both at the local level `verify`.

use crate::lab::dns::Zone;
use crate::lab::relay::{DeliveryLine, Relay};
use crate::lab::smtp::{Behaviour, SmtpServer};
use crate::support::World;
use std::time::Duration;

const MX1: &str = "mx1.shared.test";
const MX2: &str = "mx2.shared.test";

struct Scene {
    w: World,
    mx: SmtpServer,
    behaviour: Behaviour,
}

impl Scene {
    async fn new() -> Scene {
        let w = World::new().await;
        let ip = w.lab.ip(3);
        w.lab.zone(Zone::new("shared.test").a(MX1, ip).a(MX2, ip));
        for (domain, mx) in [("a.test", MX1), ("b.test", MX1), ("c.test", MX2)] {
            w.lab.zone(Zone::new(domain).mx(10, mx));
        }
        let (cert, key) = w.lab.ca.issue(&[MX1, MX2]);
        let behaviour = Behaviour::plain().starttls(&cert, &key);
        let mx = w.lab.mx(3, behaviour.clone()).await;
        Scene { w, mx, behaviour }
    }

    /// The relay with the destination table (`b.test` and `c.test` at `verify`) and `extra`.
    async fn relay(&self, extra: &str) -> Relay {
        let table = self.w.lab.dir().join("tls_policy");
        std::fs::write(&table, "b.test verify\nc.test verify\n").unwrap();
        let config = self.w.lab.relay_config().toml(&format!(
            "[delivery]\ntls_policy_file = {:?}\n{extra}",
            table.to_string_lossy()
        ));
        self.w.lab.start_relay(config).await
    }

    /// Sends one message to `to` and waits until it is sent; returns its delivery line.
    async fn send(&self, relay: &Relay, to: &str) -> DeliveryLine {
        relay.submit(&self.w.mail(to, "reuse")).await;
        self.mx.next_message(crate::lab::WAIT).await;
        relay.delivery(to, "sent").await
    }
}

fn conn_use(d: &DeliveryLine) -> u32 {
    d.field("conn_use")
        .unwrap_or_else(|| panic!("no conn_use: {}", d.line))
        .parse()
        .unwrap()
}

/// Messages one after the other to one destination go over one session, each its own
/// transaction, counted by `conn_use`; after a completed transaction no RSET is needed.
#[tokio::test]
async fn messages_to_one_destination_share_a_session() {
    let s = Scene::new().await;
    let relay = s.relay("").await;
    for n in 1..=4 {
        let d = s.send(&relay, &format!("user{n}@a.test")).await;
        assert_eq!(conn_use(&d), n, "{}", d.line);
        assert_eq!(d.field("tls"), Some("unverified"), "{}", d.line);
    }
    assert_eq!(s.mx.connections(), 1, "{:#?}", s.mx.transcript());
    let transcript = s.mx.transcript();
    assert_eq!(
        transcript.iter().filter(|l| *l == "C: STARTTLS").count(),
        1,
        "one TLS handshake"
    );
    assert!(
        !transcript.iter().any(|l| l == "C: RSET"),
        "{transcript:#?}"
    );
}

/// A session opened for an opportunistic domain never carries mail for a domain that demands
/// verified TLS on the same host and IP, and the reverse; each goes on with its own session.
#[tokio::test]
async fn a_session_is_reused_only_under_the_same_requirement() {
    let s = Scene::new().await;
    let relay = s.relay("").await;
    let a1 = s.send(&relay, "one@a.test").await;
    let b1 = s.send(&relay, "one@b.test").await;
    assert_eq!(
        (conn_use(&a1), conn_use(&b1)),
        (1, 1),
        "{}\n{}",
        a1.line,
        b1.line
    );
    assert_eq!(b1.field("tls"), Some("verified"), "{}", b1.line);
    assert_eq!(b1.field("policy"), Some("local:verify"), "{}", b1.line);
    assert_eq!(s.mx.connections(), 2);
    let a2 = s.send(&relay, "two@a.test").await;
    let b2 = s.send(&relay, "two@b.test").await;
    assert_eq!(
        (conn_use(&a2), conn_use(&b2)),
        (2, 2),
        "{}\n{}",
        a2.line,
        b2.line
    );
    assert_eq!(a2.field("tls"), Some("unverified"), "{}", a2.line);
    assert_eq!(b2.field("tls"), Some("verified"), "{}", b2.line);
    assert_eq!(s.mx.connections(), 2, "each went on with its own session");
}

/// A session verified for MX name mx1 is not used for a domain whose MX is mx2, though both
/// names are on the same IP and in the same certificate.
#[tokio::test]
async fn a_session_for_one_mx_name_is_not_used_for_another_on_the_same_ip() {
    let s = Scene::new().await;
    let relay = s.relay("").await;
    let b = s.send(&relay, "one@b.test").await;
    let c = s.send(&relay, "one@c.test").await;
    assert!(b.line.contains(&format!("relay={MX1}[")), "{}", b.line);
    assert!(c.line.contains(&format!("relay={MX2}[")), "{}", c.line);
    assert_eq!(conn_use(&c), 1, "{}", c.line);
    assert_eq!(s.mx.connections(), 2);
}

/// A pooled session the server has closed meanwhile is replaced by a new one; the message is
/// sent, and no failed attempt is logged for it.
#[tokio::test]
async fn a_dead_pooled_session_is_replaced_without_a_failed_attempt() {
    let s = Scene::new().await;
    let relay = s.relay("").await;
    s.send(&relay, "one@a.test").await;
    // The server is "restarted": its open sessions close.
    s.mx.set_behaviour(s.behaviour.clone());
    s.mx.wait_for_transcript(
        |l| l == "-- closed: the server's script was replaced",
        crate::lab::WAIT,
    )
    .await;
    let d = s.send(&relay, "two@a.test").await;
    assert_eq!(conn_use(&d), 1, "{}", d.line);
    assert_eq!(s.mx.connections(), 2);
    let log = relay.log_lines();
    assert!(
        !log.iter()
            .any(|l| l.contains("to=<two@a.test>") && l.contains("status=deferred")),
        "no failed attempt: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("reused session no longer usable")),
        "{log:#?}"
    );
}

/// `connection_reuse_count_limit`: a session carries at most that many transactions.
#[tokio::test]
async fn a_session_carries_at_most_the_reuse_count_limit() {
    let s = Scene::new().await;
    let relay = s.relay("connection_reuse_count_limit = 2").await;
    let mut uses = Vec::new();
    for n in 1..=5 {
        uses.push(conn_use(&s.send(&relay, &format!("user{n}@a.test")).await));
    }
    assert_eq!(uses, [1, 2, 1, 2, 1]);
    assert_eq!(s.mx.connections(), 3);
}

/// `connection_cache_time_limit`: an idle session is closed (QUIT) after that long, and the
/// next message opens a new one.
#[tokio::test]
async fn an_idle_session_is_closed_after_the_cache_time_limit() {
    let s = Scene::new().await;
    let relay = s.relay("connection_cache_time_limit = \"1s\"").await;
    s.send(&relay, "one@a.test").await;
    s.mx.wait_for_transcript(|l| l == "C: QUIT", Duration::from_secs(5))
        .await;
    let d = s.send(&relay, "two@a.test").await;
    assert_eq!(conn_use(&d), 1, "{}", d.line);
    assert_eq!(s.mx.connections(), 2);
}

/// `connection_reuse = false`: one session per message, QUIT after each.
#[tokio::test]
async fn without_reuse_every_message_has_its_own_session() {
    let s = Scene::new().await;
    let relay = s.relay("connection_reuse = false").await;
    for n in 1..=3 {
        let d = s.send(&relay, &format!("user{n}@a.test")).await;
        assert_eq!(conn_use(&d), 1, "{}", d.line);
    }
    assert_eq!(s.mx.connections(), 3);
}
