//! Delivery against the lab: real DNS (hickory-server) and scripted SMTP servers on loopback.
//! Each test drives `Deliverer::deliver` directly, without the relay process.

mod lab;

use lab::dns::Zone;
use lab::smtp::{Behaviour, SmtpServer};
use lab::Lab;
use mxguard::config::{Config, RouteConfig};
use mxguard::delivery::{Attempt, Deliverer, Job, TlsState};
use mxguard::envelope::{BodyType, Envelope, Notify, Recipient, Ret};
use mxguard::queue::QueueId;
use std::sync::Arc;
use std::time::Duration;

const MESSAGE: &[u8] = b"From: a@sender.test\r\nSubject: hi\r\n\r\nHello.\r\n";

fn envelope(rcpts: &[&str]) -> Envelope {
    let mut env = Envelope::new("alice@sender.test");
    env.recipients = rcpts.iter().map(|r| Recipient::new(*r)).collect();
    env
}

/// One delivery attempt for every recipient of `env` (all in `domain`).
async fn deliver_with(
    config: Config,
    env: &Envelope,
    message: &[u8],
    domain: &str,
) -> Vec<Attempt> {
    let deliverer = Deliverer::new(Arc::new(config), None).expect("deliverer");
    let id = QueueId::generate();
    let recipients: Vec<usize> = (0..env.recipients.len()).collect();
    let job = Job {
        queue_id: &id,
        envelope: env,
        message,
        domain,
        recipients: &recipients,
    };
    let attempts = deliverer.deliver(&job).await;
    assert_eq!(
        attempts.len(),
        recipients.len(),
        "one attempt per recipient"
    );
    for a in &attempts {
        eprintln!(
            "{}",
            a.log_line(
                &id,
                &env.recipients[a.rcpt].address,
                Duration::ZERO,
                status(a)
            )
        );
    }
    attempts
}

async fn deliver(lab: &Lab, rcpts: &[&str], domain: &str) -> Vec<Attempt> {
    deliver_with(lab.delivery_config(), &envelope(rcpts), MESSAGE, domain).await
}

fn status(a: &Attempt) -> mxguard::delivery::Status {
    use mxguard::delivery::Status;
    match a.reply.code / 100 {
        2 => Status::Sent,
        4 => Status::Deferred,
        _ => Status::Bounced,
    }
}

fn relay_host(a: &Attempt) -> &str {
    a.relay.as_ref().map_or("none", |r| r.host.as_str())
}

/// `example.test` with MX hosts `mxN.example.test` → `127.x.y.N`, for each `(preference, N)`.
fn zone_with_mx(lab: &Lab, hosts: &[(u16, u8)]) -> Zone {
    let mut zone = Zone::new("example.test");
    for &(preference, n) in hosts {
        let host = format!("mx{n}.example.test");
        zone = zone.mx(preference, &host).a(&host, lab.ip(n));
    }
    zone
}

async fn received_one(server: &SmtpServer) -> lab::smtp::ReceivedMessage {
    server.next_message(Duration::from_secs(5)).await
}

#[tokio::test]
async fn lowest_preference_first_and_next_mx_when_refused() {
    let lab = Lab::new().await;
    // mx10 has nobody listening: connection refused.
    lab.zone(zone_with_mx(&lab, &[(30, 30), (10, 10), (20, 20)]));
    let mx20 = lab.mx(20, Behaviour::plain()).await;
    let mx30 = lab.mx(30, Behaviour::plain()).await;

    let attempts = deliver(&lab, &["bob@example.test"], "example.test").await;
    assert_eq!(attempts[0].reply.code, 250, "{:?}", attempts[0]);
    assert_eq!(relay_host(&attempts[0]), "mx20.example.test");
    assert_eq!(
        received_one(&mx20).await.rcpt_addresses(),
        vec!["bob@example.test"]
    );
    assert_eq!(mx30.connections(), 0, "a less preferred MX is not tried");
}

#[tokio::test]
async fn next_mx_after_a_4xx_greeting() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10), (20, 20)]));
    let mx10 = lab
        .mx(
            10,
            Behaviour::plain().greeting("450 4.3.2 busy, come back later"),
        )
        .await;
    let mx20 = lab.mx(20, Behaviour::plain()).await;

    let attempts = deliver(&lab, &["bob@example.test"], "example.test").await;
    assert_eq!(attempts[0].reply.code, 250, "{:?}", attempts[0]);
    assert_eq!(relay_host(&attempts[0]), "mx20.example.test");
    assert_eq!(mx10.connections(), 1);
    received_one(&mx20).await;
}

#[tokio::test]
async fn when_every_host_fails_a_reply_beats_a_refused_connection() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10), (20, 20)]));
    // mx10 answers 421; mx20 refuses connections.
    let _mx10 = lab
        .mx(10, Behaviour::plain().greeting("421 4.3.2 too busy"))
        .await;

    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.to_string(), "421 4.3.2 too busy");
    assert_eq!(relay_host(a), "mx10.example.test");

    // Only refused connections: 4.4.1 with Postfix's wording, relay=none.
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.status().to_string(), "4.4.1");
    let expected = format!(
        "connect to mx10.example.test[{}]:{}: Connection refused",
        lab.ip(10),
        lab.port()
    );
    assert_eq!(a.reply.text, expected);
    assert!(a.relay.is_none());
}

#[tokio::test]
async fn implicit_mx_is_the_domain_itself() {
    let lab = Lab::new().await;
    lab.zone(Zone::new("example.test").a("example.test", lab.ip(7)));
    let server = lab.mx(7, Behaviour::plain()).await;

    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.code, 250, "{a:?}");
    assert_eq!(relay_host(a), "example.test");
    received_one(&server).await;
}

#[tokio::test]
async fn null_mx_bounces_at_once() {
    let lab = Lab::new().await;
    lab.zone(
        Zone::new("example.test")
            .null_mx()
            .a("example.test", lab.ip(7)),
    );
    let server = lab.mx(7, Behaviour::plain()).await;

    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(
        a.reply.to_string(),
        "550 5.1.10 Domain example.test does not accept mail (nullMX)"
    );
    assert!(a.relay.is_none());
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn nxdomain_is_permanent() {
    let lab = Lab::new().await;
    lab.zone(Zone::new("example.test"));

    let a = &deliver(&lab, &["bob@nowhere.example.test"], "nowhere.example.test").await[0];
    assert_eq!(a.reply.code, 550, "{a:?}");
    assert_eq!(a.reply.status().to_string(), "5.1.2");
    assert!(a
        .reply
        .text
        .contains("name=nowhere.example.test type=MX: Host not found"));
}

#[tokio::test]
async fn dns_failures_are_temporary() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    lab.dns.servfail("example.test");
    // SERVFAIL.
    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.status().to_string(), "4.4.3", "{a:?}");
    assert!(a.reply.text.ends_with("Host not found, try again"), "{a:?}");
    // REFUSED: no zone for the name at all.
    let a = &deliver(&lab, &["bob@unserved.test"], "unserved.test").await[0];
    assert_eq!(a.reply.status().to_string(), "4.4.3", "{a:?}");

    // No name server answering at all: a timeout.
    let mut c = lab.delivery_config();
    c.dns.nameservers = vec![std::net::SocketAddr::new(lab.ip(99).into(), 9)];
    c.dns.timeout = Duration::from_millis(300);
    let a = &deliver_with(c, &envelope(&["bob@example.test"]), MESSAGE, "example.test").await[0];
    assert_eq!(a.reply.status().to_string(), "4.4.3", "{a:?}");
}

#[tokio::test]
async fn mx_hosts_without_address() {
    let lab = Lab::new().await;
    // Both MX hosts are NXDOMAIN: nothing can be done, ever.
    lab.zone(
        Zone::new("example.test")
            .mx(10, "gone1.example.test")
            .mx(20, "gone2.example.test"),
    );
    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.status().to_string(), "5.4.4", "{a:?}");

    // One host without address is skipped, the next used.
    let zone = zone_with_mx(&lab, &[(20, 20)]).mx(10, "gone.example.test");
    lab.zone(zone);
    let server = lab.mx(20, Behaviour::plain()).await;
    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.code, 250, "{a:?}");
    received_one(&server).await;
}

#[tokio::test]
async fn each_recipient_gets_its_own_reply() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    let server = lab
        .mx(
            10,
            Behaviour::plain()
                .rcpt("later@example.test", "450 4.2.1 mailbox busy")
                .rcpt(
                    "nobody@example.test",
                    "550 5.1.1 <nobody@example.test>: user unknown",
                ),
        )
        .await;

    let attempts = deliver(
        &lab,
        &[
            "ok@example.test",
            "later@example.test",
            "nobody@example.test",
            "ok2@example.test",
        ],
        "example.test",
    )
    .await;
    let replies: Vec<String> = attempts.iter().map(|a| a.reply.to_string()).collect();
    assert_eq!(replies[1], "450 4.2.1 mailbox busy");
    assert_eq!(replies[2], "550 5.1.1 <nobody@example.test>: user unknown");
    assert_eq!(attempts[0].reply.code, 250);
    assert_eq!(
        attempts[0].reply, attempts[3].reply,
        "the end-of-data reply for all accepted"
    );
    assert_eq!(
        attempts.iter().map(|a| a.rcpt).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let m = received_one(&server).await;
    assert_eq!(
        m.rcpt_addresses(),
        vec!["ok@example.test", "ok2@example.test"]
    );
    assert_eq!(
        server.connections(),
        1,
        "one connection for the whole domain"
    );
}

#[tokio::test]
async fn recipients_over_the_servers_limit_go_in_further_transactions() {
    // RFC 5321 §4.5.3.1.10: 452 "too many recipients" after some were accepted; the rest
    // follow in new transactions on the same session.
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    let mx = lab.mx(10, Behaviour::plain().rcpt_limit(2)).await;
    let rcpts = [
        "r1@example.test",
        "r2@example.test",
        "r3@example.test",
        "r4@example.test",
        "r5@example.test",
    ];

    let attempts = deliver(&lab, &rcpts, "example.test").await;
    for a in &attempts {
        assert_eq!(a.reply.code, 250, "{a:?}");
        assert!(a.remote_reply);
    }
    assert_eq!(mx.connections(), 1, "one session");
    let messages = mx.messages();
    let per_transaction: Vec<Vec<&str>> = messages.iter().map(|m| m.rcpt_addresses()).collect();
    assert_eq!(
        per_transaction,
        vec![
            vec!["r1@example.test", "r2@example.test"],
            vec!["r3@example.test", "r4@example.test"],
            vec!["r5@example.test"],
        ]
    );
}

/// One command at a time (no PIPELINING offered), DATA is not sent when every recipient was
/// refused; a pipelining client sends it in its group and sees it refused (tests/relay/pipelining.rs).
#[tokio::test]
async fn no_data_when_every_recipient_is_refused_and_mail_refusal_applies_to_all() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    let mut behaviour = Behaviour::plain().rcpt_default("550 5.1.1 no");
    behaviour.extensions.pipelining = false;
    let server = lab.mx(10, behaviour).await;
    let attempts = deliver(&lab, &["a@example.test", "b@example.test"], "example.test").await;
    assert!(attempts
        .iter()
        .all(|a| a.reply.to_string() == "550 5.1.1 no"));
    assert!(
        !server.transcript().iter().any(|l| l == "C: DATA"),
        "{:?}",
        server.transcript()
    );

    server.set(|b| {
        b.rcpt_default = None;
        b.mail_reply = Some("451 4.7.1 greylisted".into());
    });
    let attempts = deliver(&lab, &["a@example.test", "b@example.test"], "example.test").await;
    assert!(attempts
        .iter()
        .all(|a| a.reply.to_string() == "451 4.7.1 greylisted"));
}

#[tokio::test]
async fn starttls_when_offered_any_certificate() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    // Self-signed, for another name: opportunistic TLS takes it anyway.
    let cert = rcgen::generate_simple_self_signed(vec!["other.invalid".to_string()]).unwrap();
    let behaviour =
        Behaviour::plain().starttls(&cert.cert.pem(), &cert.signing_key.serialize_pem());
    let server = lab.mx(10, behaviour).await;

    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.code, 250, "{a:?}");
    assert_eq!(a.tls.state, TlsState::Unverified);
    assert_eq!(a.tls.version.as_deref(), Some("TLSv1.3"));
    assert!(a.tls.cipher.is_some());
    let m = received_one(&server).await;
    let tls = m.tls.expect("delivered over TLS");
    assert_eq!(
        tls.sni.as_deref(),
        Some("mx10.example.test"),
        "SNI is the MX host name"
    );
    // RFC 3207 §4.2: EHLO again after the handshake.
    let ehlos = server
        .transcript()
        .iter()
        .filter(|l| l.starts_with("C: EHLO"))
        .count();
    assert_eq!(ehlos, 2);
}

/// A server whose certificate does not match the key it signs with: the handshake fails
/// (opportunistic TLS still checks the handshake signature).
#[derive(Debug)]
struct MismatchedKey(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for MismatchedKey {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn broken_tls_config() -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(policy_cache::crypto::provider());
    let shown = rcgen::generate_simple_self_signed(vec!["mx10.example.test".to_string()]).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(other.serialize_der().into());
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![shown.cert.der().clone()], signing);
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(MismatchedKey(Arc::new(certified))));
    Arc::new(config)
}

#[tokio::test]
async fn failed_handshake_is_retried_in_plaintext() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    let server = lab
        .mx(10, Behaviour::plain().tls_config(broken_tls_config()))
        .await;

    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.code, 250, "{a:?}");
    assert_eq!(a.tls.state, TlsState::None);
    assert_eq!(
        server.connections(),
        2,
        "one TLS try, one plaintext session"
    );
    let m = received_one(&server).await;
    assert!(m.tls.is_none());
    let starttls = server
        .transcript()
        .iter()
        .filter(|l| l.as_str() == "C: STARTTLS")
        .count();
    assert_eq!(starttls, 1, "no STARTTLS in the plaintext retry");
}

#[tokio::test]
async fn static_route_bypasses_mx() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    let mx = lab.mx(10, Behaviour::plain()).await;
    let hop = lab.smtp_elsewhere(40, Behaviour::plain()).await;
    let mut c = lab.delivery_config();
    c.routes = vec![RouteConfig {
        domain: "Example.TEST".into(),
        next_hop: format!("[{}]:{}", hop.addr().ip(), hop.addr().port()),
    }];

    let a = &deliver_with(c, &envelope(&["bob@example.test"]), MESSAGE, "example.test").await[0];
    assert_eq!(a.reply.code, 250, "{a:?}");
    assert_eq!(a.relay.as_ref().map(|r| r.addr), Some(hop.addr()));
    received_one(&hop).await;
    assert_eq!(mx.connections(), 0);
    assert!(lab.dns.queries().is_empty(), "{:?}", lab.dns.queries());
}

#[tokio::test]
async fn message_is_dot_stuffed_on_the_wire() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    let server = lab.mx(10, Behaviour::plain()).await;
    let message = b"Subject: dots\r\n\r\n.leading\r\n.\r\nmiddle\r\n..two\r\nno final CRLF";

    let env = envelope(&["bob@example.test"]);
    let a = &deliver_with(lab.delivery_config(), &env, message, "example.test").await[0];
    assert_eq!(a.reply.code, 250, "{a:?}");
    let m = received_one(&server).await;
    assert_eq!(
        m.raw_data,
        b"Subject: dots\r\n\r\n..leading\r\n..\r\nmiddle\r\n...two\r\nno final CRLF\r\n.\r\n"
    );
    assert_eq!(
        m.data,
        b"Subject: dots\r\n\r\n.leading\r\n.\r\nmiddle\r\n..two\r\nno final CRLF\r\n"
    );
}

#[tokio::test]
async fn esmtp_parameters_follow_the_server() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10), (20, 20)]));
    let server = lab.mx(10, Behaviour::plain()).await;
    let mut env = envelope(&["bob@example.test"]);
    env.body = BodyType::EightBitMime;
    env.ret = Some(Ret::Headers);
    env.envid = Some("env id".into());
    env.recipients[0].notify = Some(Notify {
        failure: true,
        delay: true,
        ..Default::default()
    });
    env.recipients[0].orcpt = Some(("rfc822".into(), "bob+x@example.test".into()));

    deliver_with(lab.delivery_config(), &env, MESSAGE, "example.test").await;
    let m = received_one(&server).await;
    assert_eq!(
        m.mail_param("SIZE"),
        Some(MESSAGE.len().to_string().as_str())
    );
    assert_eq!(m.mail_param("BODY"), Some("8BITMIME"));
    assert_eq!(m.mail_param("RET"), Some("HDRS"));
    assert_eq!(m.mail_param("ENVID"), Some("env+20id"));
    assert_eq!(m.rcpts[0].param("NOTIFY"), Some("FAILURE,DELAY"));
    assert_eq!(
        m.rcpts[0].param("ORCPT"),
        Some("rfc822;bob+2Bx@example.test")
    );

    // A server without extensions gets none of them.
    server.set(|b| *b = Behaviour::plain().no_extensions());
    deliver_with(lab.delivery_config(), &env, MESSAGE, "example.test").await;
    let m = received_one(&server).await;
    assert!(m.mail_params.is_empty(), "{:?}", m.mail_params);
    assert!(m.rcpts[0].params.is_empty());

    // SMTPUTF8 needed but not offered: bounce 5.6.7, nothing sent.
    let mut env = envelope(&["j\u{f6}rg@example.test"]);
    env.smtputf8 = true;
    let a = &deliver_with(lab.delivery_config(), &env, MESSAGE, "example.test").await[0];
    assert_eq!(a.reply.status().to_string(), "5.6.7", "{a:?}");
}

#[tokio::test]
async fn lost_connection_mid_data_is_temporary() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10)]));
    let _server = lab.mx(10, Behaviour::plain().drop_mid_data()).await;

    let a = &deliver(&lab, &["bob@example.test"], "example.test").await[0];
    assert_eq!(a.reply.status().to_string(), "4.4.2", "{a:?}");
    assert!(
        a.reply
            .text
            .starts_with("lost connection with mx10.example.test["),
        "{a:?}"
    );
    assert!(!a.remote_reply, "our text, not the server's: {a:?}");
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_next_mx_is_used() {
    let lab = Lab::new().await;
    lab.zone(zone_with_mx(&lab, &[(10, 10), (20, 20)]));
    let _slow = lab
        .mx(10, Behaviour::plain().slow(Duration::from_secs(5)))
        .await;
    let next = lab.mx(20, Behaviour::plain()).await;
    let mut c = lab.delivery_config();
    c.delivery.command_timeout = Duration::from_millis(500);

    let a = &deliver_with(c, &envelope(&["bob@example.test"]), MESSAGE, "example.test").await[0];
    assert_eq!(a.reply.code, 250, "{a:?}");
    assert_eq!(relay_host(a), "mx20.example.test");
    received_one(&next).await;
}
