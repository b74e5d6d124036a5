//! Permanent failures become delivery status notifications (RFC 3464) to the envelope sender,
//! honouring the DSN parameters of RFC 3461 (RET, ENVID, ORCPT, NOTIFY); the null sender never
//! gets one (RFC 5321 §4.5.5).

use crate::lab::dns::Zone;
use crate::lab::smtp::Behaviour;
use crate::lab::submit::{message, submit_ok, Submission};
use crate::lab::WAIT;
use crate::support::{World, BOB, SENDER};
use std::time::Duration;

const BODY_MARK: &str = "unique-body-line-7f3a";

fn mail_with_body(to: &str) -> Vec<u8> {
    message(
        SENDER,
        to,
        "dsn test",
        &format!("first line\n{BODY_MARK}\n"),
    )
}

/// RCPT 550 → a complete RFC 3464 report: every required field, ENVID and ORCPT echoed,
/// RET=HDRS honoured.
#[tokio::test]
async fn rcpt_550_bounces_with_a_complete_report() {
    let w = World::new().await;
    let rejection = "550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown";
    let mx = w
        .lab
        .domain_with_mx("example.test", 3, Behaviour::plain().rcpt(BOB, rejection))
        .await;
    let relay = w.lab.relay().await;

    let s = Submission::new(SENDER, mail_with_body(BOB))
        .param("RET=HDRS")
        .param("ENVID=lab+2Benvid-1")
        .rcpt_with(BOB, &["ORCPT=rfc822;Bob@Example.test"]);
    let id = submit_ok(relay.addr(), &s).await;

    let d = relay.wait_for_delivery(0, BOB, "bounced", WAIT).await;
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
    let w = World::new().await;
    let _mx = w
        .lab
        .domain_with_mx(
            "example.test",
            3,
            Behaviour::plain().rcpt_default("550 5.1.1 no such user"),
        )
        .await;
    let relay = w.lab.relay().await;
    let s = Submission::new(SENDER, mail_with_body(BOB))
        .param("RET=FULL")
        .rcpt(BOB);
    submit_ok(relay.addr(), &s).await;

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
    submit_ok(relay.addr(), &w.mail(to, "null mx")).await;

    let d = relay.wait_for_delivery(0, to, "bounced", WAIT).await;
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert_eq!(d.field("dsn"), Some("5.1.10"), "{}", d.line);
    let b = w.bounce().await;
    let r = b.recipient(to);
    assert_eq!(r.must("Action"), "failed");
    assert_eq!(r.must("Status"), "5.1.10");
}

/// A recipient domain that does not exist (NXDOMAIN from its authority): 5.1.2, bounced.
#[tokio::test]
async fn nxdomain_bounces_with_5_1_2() {
    let w = World::new().await;
    w.lab.zone(Zone::new("example.test")); // exists, but has no "gone.example.test"
    let relay = w.lab.relay().await;
    let to = "bob@gone.example.test";
    submit_ok(relay.addr(), &w.mail(to, "nxdomain")).await;

    let d = relay.wait_for_delivery(0, to, "bounced", WAIT).await;
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert_eq!(d.field("dsn"), Some("5.1.2"), "{}", d.line);
    let b = w.bounce().await;
    assert_eq!(b.recipient(to).must("Status"), "5.1.2");
    assert_eq!(b.recipient(to).must("Action"), "failed");
}

/// One recipient accepted, one refused: the first is delivered, the bounce names only the
/// second.
#[tokio::test]
async fn mixed_recipients_bounce_only_the_refused_one() {
    let w = World::new().await;
    let carol = "carol@example.test";
    let mx = w
        .lab
        .domain_with_mx(
            "example.test",
            3,
            Behaviour::plain().rcpt(carol, "550 5.1.1 <carol@example.test>: unknown"),
        )
        .await;
    let relay = w.lab.relay().await;
    let s = Submission::new(SENDER, mail_with_body(BOB))
        .rcpt(BOB)
        .rcpt(carol);
    submit_ok(relay.addr(), &s).await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(m.rcpt_addresses(), vec![BOB]);
    relay.wait_for_delivery(0, BOB, "sent", WAIT).await;
    relay.wait_for_delivery(0, carol, "bounced", WAIT).await;
    let b = w.bounce().await;
    assert_eq!(b.per_recipient.len(), 1, "{:?}", b.per_recipient);
    assert_eq!(b.recipient(carol).must("Status"), "5.1.1");
}

/// RFC 5321 §4.5.5: a message from the null sender that fails is not bounced. (The only
/// negative wait in the suite: after the failure is logged, nothing may arrive for a while.)
#[tokio::test]
async fn a_failed_message_from_the_null_sender_is_not_bounced() {
    let w = World::new().await;
    let _mx = w
        .lab
        .domain_with_mx(
            "example.test",
            3,
            Behaviour::plain().rcpt_default("550 5.1.1 no such user"),
        )
        .await;
    let relay = w.lab.relay().await;
    let s = Submission::new(
        "",
        message("MAILER-DAEMON@sender.test", BOB, "a bounce", "x\n"),
    )
    .rcpt(BOB);
    submit_ok(relay.addr(), &s).await;

    let d = relay.wait_for_delivery(0, BOB, "bounced", WAIT).await;
    assert!(
        w.sender_mx
            .try_next_message(Duration::from_secs(3))
            .await
            .is_none(),
        "no DSN for a null-sender message"
    );
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
    let w = World::new().await;
    let _mx = w
        .lab
        .domain_with_mx(
            "example.test",
            3,
            Behaviour::plain().rcpt_default("550 5.1.1 no such user"),
        )
        .await;
    let relay = w.lab.relay().await;
    let s = Submission::new(SENDER, mail_with_body(BOB)).rcpt_with(BOB, &["NOTIFY=NEVER"]);
    submit_ok(relay.addr(), &s).await;
    relay.wait_for_delivery(0, BOB, "bounced", WAIT).await;
    assert!(
        w.sender_mx
            .try_next_message(Duration::from_secs(3))
            .await
            .is_none(),
        "NOTIFY=NEVER: no DSN"
    );
}
