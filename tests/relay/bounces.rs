//! Permanent failures become delivery status notifications (RFC 3464) to the envelope sender,
//! honouring the DSN parameters of RFC 3461 (RET, ENVID, ORCPT, NOTIFY); the null sender never
//! gets one (RFC 5321 §4.5.5).

use crate::lab::dns::Zone;
use crate::lab::relay::Relay;
use crate::lab::smtp::Behaviour;
use crate::lab::submit::{message, Submission};
use crate::lab::WAIT;
use crate::support::{World, BOB, SENDER};

const BODY_MARK: &str = "unique-body-line-7f3a";

/// A message from [`SENDER`] to [`BOB`] whose body holds [`BODY_MARK`]; no recipients yet.
fn marked_mail() -> Submission {
    let body = format!("first line\n{BODY_MARK}\n");
    Submission::new(SENDER, message(SENDER, BOB, "dsn test", &body))
}

/// An MX that refuses every recipient, permanently.
fn no_such_user() -> Behaviour {
    Behaviour::plain().rcpt_default("550 5.1.1 no such user")
}

/// The relay bounces `to` with `status` without connecting anywhere (`relay=none`), and the
/// DSN reports it as failed with that status.
async fn bounced_without_a_connection(w: &World, relay: &Relay, to: &str, status: &str) {
    let d = relay.delivery(to, "bounced").await;
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert_eq!(d.field("dsn"), Some(status), "{}", d.line);
    let b = w.bounce().await;
    let r = b.recipient(to);
    assert_eq!(r.must("Action"), "failed");
    assert_eq!(r.must("Status"), status);
}

/// RCPT 550 → a complete RFC 3464 report: every required field, ENVID and ORCPT echoed,
/// RET=HDRS honoured.
#[tokio::test]
async fn rcpt_550_bounces_with_a_complete_report() {
    let rejection = "550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown";
    let (w, mx, relay) = World::with_example_mx(Behaviour::plain().rcpt(BOB, rejection)).await;

    let s = marked_mail()
        .param("RET=HDRS")
        .param("ENVID=lab+2Benvid-1")
        .rcpt_with(BOB, &["ORCPT=rfc822;Bob@Example.test"]);
    let id = relay.submit(&s).await;

    let d = relay.delivery(BOB, "bounced").await;
    assert_eq!(d.id, id);
    assert_eq!(d.field("dsn"), Some("5.1.1"), "{}", d.line);
    assert_eq!(d.reply, rejection, "{}", d.line);

    let b = w.bounce().await;
    assert_eq!(b.content_type, "multipart/report");
    assert_eq!(b.report_type.as_deref(), Some("delivery-status"));
    assert_eq!(b.to, SENDER);
    assert!(!b.human.is_empty(), "a human-readable first part");

    let pm = &b.per_message;
    assert!(
        pm.must("Reporting-MTA").contains("relay.lab.test"),
        "{pm:?}"
    );
    assert!(pm.get("Arrival-Date").is_some(), "{pm:?}");
    assert_eq!(
        pm.get("Original-Envelope-Id"),
        Some("lab+envid-1"),
        "ENVID decoded from xtext: {pm:?}"
    );

    assert_eq!(b.per_recipient.len(), 1);
    let r = b.recipient(BOB);
    assert_eq!(r.must("Action"), "failed");
    assert_eq!(r.must("Status"), "5.1.1");
    assert_eq!(
        r.must("Original-Recipient").replace(' ', ""),
        "rfc822;Bob@Example.test"
    );
    let diag = r.must("Diagnostic-Code");
    assert!(diag.starts_with("smtp;"), "{diag}");
    assert!(diag.contains("550 5.1.1"), "{diag}");
    assert!(r.must("Remote-MTA").contains("mx.example.test"), "{r:?}");

    let (ty, returned) = b.returned.clone().expect("RET=HDRS returns the headers");
    let returned = String::from_utf8_lossy(&returned);
    assert_eq!(ty, "text/rfc822-headers");
    assert!(returned.contains("Subject: dsn test"), "{returned}");
    assert!(
        !returned.contains(BODY_MARK),
        "RET=HDRS: no body\n{returned}"
    );
    assert!(mx.messages().is_empty());
}

/// RET=FULL returns the whole message as message/rfc822.
#[tokio::test]
async fn ret_full_returns_the_whole_message() {
    let (w, _mx, relay) = World::with_example_mx(no_such_user()).await;
    let s = marked_mail().param("RET=FULL").rcpt(BOB);
    relay.submit(&s).await;

    let b = w.bounce().await;
    let (ty, returned) = b.returned.clone().expect("RET=FULL returns the message");
    assert_eq!(ty, "message/rfc822");
    let returned = String::from_utf8_lossy(&returned);
    assert!(returned.contains("Subject: dsn test"), "{returned}");
    assert!(
        returned.contains(BODY_MARK),
        "RET=FULL: the body too\n{returned}"
    );
    assert!(b.per_message.get("Original-Envelope-Id").is_none());
    assert!(
        b.recipient(BOB).get("Original-Recipient").is_none(),
        "no ORCPT given"
    );
}

/// RFC 7505: a null MX is a permanent 5.1.10 failure, decided without any connection.
#[tokio::test]
async fn null_mx_bounces_with_5_1_10() {
    let w = World::new().await;
    w.lab.zone(Zone::new("nullmx.test").null_mx());
    let relay = w.lab.relay().await;
    let to = "bob@nullmx.test";
    relay.submit(&w.mail(to, "null mx")).await;
    bounced_without_a_connection(&w, &relay, to, "5.1.10").await;
}

/// A recipient domain that does not exist (NXDOMAIN from its authority): 5.1.2, bounced.
#[tokio::test]
async fn nxdomain_bounces_with_5_1_2() {
    let w = World::new().await;
    w.lab.zone(Zone::new("example.test")); // exists, but has no "gone.example.test"
    let relay = w.lab.relay().await;
    let to = "bob@gone.example.test";
    relay.submit(&w.mail(to, "nxdomain")).await;
    bounced_without_a_connection(&w, &relay, to, "5.1.2").await;
}

/// One recipient accepted, one refused: the first is delivered, the bounce names only the
/// second.
#[tokio::test]
async fn mixed_recipients_bounce_only_the_refused_one() {
    let carol = "carol@example.test";
    let refuse_carol = Behaviour::plain().rcpt(carol, "550 5.1.1 <carol@example.test>: unknown");
    let (w, mx, relay) = World::with_example_mx(refuse_carol).await;
    let s = marked_mail().rcpt(BOB).rcpt(carol);
    relay.submit(&s).await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(m.rcpt_addresses(), vec![BOB]);
    relay.delivery(BOB, "sent").await;
    relay.delivery(carol, "bounced").await;
    let b = w.bounce().await;
    assert_eq!(b.per_recipient.len(), 1, "{:?}", b.per_recipient);
    assert_eq!(b.recipient(carol).must("Status"), "5.1.1");
}

/// RFC 5321 §4.5.5: a message from the null sender that fails is not bounced. (The only
/// negative wait in the suite: after the failure is logged, nothing may arrive for a while.)
#[tokio::test]
async fn a_failed_message_from_the_null_sender_is_not_bounced() {
    let (w, _mx, relay) = World::with_example_mx(no_such_user()).await;
    let s = Submission::new(
        "",
        message("MAILER-DAEMON@sender.test", BOB, "a bounce", "x\n"),
    )
    .rcpt(BOB);
    relay.submit(&s).await;

    let d = relay.delivery(BOB, "bounced").await;
    w.no_bounce_arrives("no DSN for a null-sender message")
        .await;
    let others: Vec<_> = relay
        .deliveries()
        .into_iter()
        .filter(|x| x.id != d.id)
        .collect();
    assert!(others.is_empty(), "no further deliveries: {others:?}");
}

/// NOTIFY=NEVER: the failure is logged but the sender asked for no DSN (RFC 3461 §4.1).
#[tokio::test]
async fn notify_never_suppresses_the_bounce() {
    let (w, _mx, relay) = World::with_example_mx(no_such_user()).await;
    relay
        .submit(&marked_mail().rcpt_with(BOB, &["NOTIFY=NEVER"]))
        .await;
    relay.delivery(BOB, "bounced").await;
    w.no_bounce_arrives("NOTIFY=NEVER: no DSN").await;
}
