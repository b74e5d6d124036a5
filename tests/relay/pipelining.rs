//! RFC 2920 PIPELINING on the way out: to a server that advertises it, MAIL FROM, the RCPTs and
//! DATA go as one group, and every recipient still gets exactly its own reply; to one that
//! does not, one command at a time. The lab MX notes whether the client's next command had
//! already arrived while it held back its MAIL reply.

use crate::lab::smtp::{Behaviour, ReceivedMessage, SmtpServer};
use crate::lab::WAIT;
use crate::support::{World, BOB};
use std::time::Duration;

const CAROL: &str = "carol@example.test";
const DAVE: &str = "dave@example.test";

/// How long the MX waits for a pipelined command before answering MAIL.
const PROBE: Duration = Duration::from_millis(500);

fn addresses(m: &ReceivedMessage) -> Vec<&str> {
    m.rcpts.iter().map(|r| r.address.as_str()).collect()
}

fn pipelined(mx: &SmtpServer) -> bool {
    mx.transcript()
        .iter()
        .any(|l| l == "-- pipelined after MAIL")
}

/// MAIL, RCPTs and DATA in one group; a refused recipient among accepted ones keeps its own
/// reply (bounced), the others are delivered in the same transaction.
#[tokio::test]
async fn commands_are_grouped_and_each_recipient_keeps_its_reply() {
    let refusal = "550 5.1.1 <carol@example.test>: no such user";
    let behaviour = Behaviour::plain()
        .probe_pipelining(PROBE)
        .rcpt(CAROL, refusal);
    let (w, mx, relay) = World::with_example_mx(behaviour).await;
    let id = relay
        .submit(&w.mail(BOB, "pipelined").rcpt(CAROL).rcpt(DAVE))
        .await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(addresses(&m), vec![BOB, DAVE]);
    assert_eq!(relay.delivery(BOB, "sent").await.id, id);
    assert_eq!(relay.delivery(DAVE, "sent").await.id, id);
    let c = relay.delivery(CAROL, "bounced").await;
    assert_eq!(c.reply, refusal, "{}", c.line);
    assert!(
        pipelined(&mx),
        "RCPT sent before MAIL's reply: {:#?}",
        mx.transcript()
    );
    assert_eq!(w.bounce().await.recipient(CAROL).must("Status"), "5.1.1");
}

/// Without PIPELINING in the EHLO reply, the client waits for every reply.
#[tokio::test]
async fn without_pipelining_one_command_at_a_time() {
    let mut behaviour = Behaviour::plain().probe_pipelining(PROBE);
    behaviour.extensions.pipelining = false;
    let (w, mx, relay) = World::with_example_mx(behaviour).await;
    relay.submit(&w.mail(BOB, "one by one").rcpt(CAROL)).await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(addresses(&m), vec![BOB, CAROL]);
    relay.delivery(BOB, "sent").await;
    assert!(!pipelined(&mx), "{:#?}", mx.transcript());
}

/// A refused MAIL in a group applies to every recipient (not the DATA refusal that follows).
#[tokio::test]
async fn a_refused_mail_in_a_group_defers_every_recipient_with_its_reply() {
    let refusal = "451 4.3.2 sender temporarily refused";
    let behaviour = Behaviour::plain().mail(refusal);
    let (w, mx, relay) = World::with_example_mx(behaviour).await;
    relay.submit(&w.mail(BOB, "mail refused").rcpt(CAROL)).await;

    for rcpt in [BOB, CAROL] {
        let d = relay.delivery(rcpt, "deferred").await;
        assert_eq!(d.reply, refusal, "{}", d.line);
    }
    assert!(mx.messages().is_empty());
    assert!(
        mx.transcript().iter().any(|l| l == "C: DATA"),
        "DATA went with the group: {:#?}",
        mx.transcript()
    );
}

/// Every recipient refused: the server answers the grouped DATA with an error, nothing is
/// sent, and each recipient bounces with its own RCPT reply.
#[tokio::test]
async fn every_recipient_refused_sends_no_message() {
    let refusal = "550 5.1.1 no such user";
    let behaviour = Behaviour::plain().rcpt_default(refusal);
    let (w, mx, relay) = World::with_example_mx(behaviour).await;
    relay.submit(&w.mail(BOB, "nobody").rcpt(CAROL)).await;

    for rcpt in [BOB, CAROL] {
        let d = relay.delivery(rcpt, "bounced").await;
        assert_eq!(d.reply, refusal, "{}", d.line);
    }
    assert!(mx.messages().is_empty());
    w.bounce().await;
}
