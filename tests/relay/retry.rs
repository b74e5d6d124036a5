//! Temporary failures are retried (with the lab's short backoff) and survive a restart; a
//! message that outlives `queue.max_lifetime` bounces as expired.

use crate::lab::relay::Relay;
use crate::lab::smtp::{Behaviour, SmtpServer};
use crate::lab::WAIT;
use crate::support::{World, BOB};

/// An MX that defers every recipient.
fn try_again_later() -> Behaviour {
    Behaviour::plain().rcpt_default("451 4.3.0 try again later")
}

/// Submits a message to [`BOB`] and waits until the relay has deferred it; the queue id.
async fn submit_deferred(w: &World, relay: &Relay, subject: &str) -> String {
    let id = relay.submit(&w.mail(BOB, subject)).await;
    relay.delivery(BOB, "deferred").await;
    id
}

/// With the relay stopped, lets `mx` accept again, starts the next relay process and checks
/// that it delivers message `id`.
async fn next_process_delivers(relay: &mut Relay, mx: &SmtpServer, id: &str) {
    mx.set(|b| b.rcpt_default = None);
    let mark = relay.log_mark();
    relay.start_again().await;
    mx.next_message(WAIT).await;
    let d = relay.wait_for_delivery(mark, BOB, "sent", WAIT).await;
    assert_eq!(d.id, id, "the same queued message");
}

/// A SERVFAIL from the recipient domain's DNS is temporary: deferred with relay=none and a
/// 4.x.x status, then delivered once the DNS answers again.
#[tokio::test]
async fn servfail_defers_and_delivers_once_dns_recovers() {
    let w = World::new().await;
    let mx = w.example_mx(Behaviour::plain()).await;
    w.lab.dns.servfail("example.test");
    let relay = w.lab.relay().await;
    let id = relay.submit(&w.mail(BOB, "servfail")).await;

    let d = relay.delivery(BOB, "deferred").await;
    assert_eq!(d.id, id);
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert!(d.field("dsn").unwrap().starts_with("4."), "{}", d.line);
    assert_eq!(mx.connections(), 0);

    w.lab.dns.heal("example.test");
    mx.next_message(WAIT).await;
    let d = relay.delivery(BOB, "sent").await;
    assert_eq!(d.id, id);
    w.no_bounce_yet("no bounce for a temporary failure");
}

/// A domain no name server answers for (REFUSED) is a resolver problem, not a missing
/// domain: deferred, never bounced.
#[tokio::test]
async fn a_refused_lookup_is_temporary() {
    let w = World::new().await;
    let relay = w.lab.relay().await;
    let to = "bob@unserved.test";
    relay.submit(&w.mail(to, "refused")).await;
    let d = relay.delivery(to, "deferred").await;
    assert!(d.field("dsn").unwrap().starts_with("4."), "{}", d.line);

    // And once the zone is served, it is delivered.
    let mx = w
        .lab
        .domain_with_mx("unserved.test", 3, Behaviour::plain())
        .await;
    mx.next_message(WAIT).await;
    relay.delivery(to, "sent").await;
}

/// RCPT 4xx: deferred with the remote reply, delivered on a later attempt.
#[tokio::test]
async fn rcpt_4xx_is_retried_until_accepted() {
    let busy = "450 4.2.0 <bob@example.test>: mailbox busy";
    let (w, mx, relay) = World::with_example_mx(Behaviour::plain().rcpt(BOB, busy)).await;
    let id = relay.submit(&w.mail(BOB, "retry")).await;

    let d = relay.delivery(BOB, "deferred").await;
    assert_eq!(d.field("dsn"), Some("4.2.0"), "{}", d.line);
    assert_eq!(d.reply, busy, "{}", d.line);

    mx.set(|b| b.rcpt_replies.clear());
    let m = mx.next_message(WAIT).await;
    assert_eq!(m.rcpt_addresses(), vec![BOB]);
    assert_eq!(relay.delivery(BOB, "sent").await.id, id);
    w.no_bounce_yet("no bounce for a temporary failure");
}

/// A connection lost in the middle of DATA is a temporary failure; the retry delivers the
/// message once (the receiver never acknowledged the first copy).
#[tokio::test]
async fn a_connection_dropped_mid_data_is_retried() {
    let (w, mx, relay) = World::with_example_mx(Behaviour::plain().drop_mid_data()).await;
    submit_deferred(&w, &relay, "dropped").await;
    mx.set(|b| b.drop_mid_data = false);
    mx.next_message(WAIT).await;
    relay.delivery(BOB, "sent").await;
    assert_eq!(mx.messages().len(), 1);
}

/// `queue.max_lifetime`: a recipient still deferred after it is bounced, logged as
/// `status=expired`, with a failure DSN.
#[tokio::test]
async fn a_message_past_max_lifetime_expires_and_bounces() {
    let w = World::new().await;
    let _mx = w.example_mx(try_again_later()).await;
    let relay = w
        .lab
        .start_relay(w.lab.relay_config().max_lifetime("3s"))
        .await;
    submit_deferred(&w, &relay, "expiring").await;
    let d = relay.delivery(BOB, "expired").await;
    assert!(
        d.field("dsn").unwrap().starts_with("4."),
        "the last status stays 4.x.x: {}",
        d.line
    );
    let b = w.bounce().await;
    let r = b.recipient(BOB);
    assert_eq!(r.must("Action"), "failed");
    assert!(
        r.must("Status").starts_with("4.") || r.must("Status") == "5.4.7",
        "{r:?}"
    );
    assert!(
        r.get("Diagnostic-Code").is_some_and(|c| c.contains("451")),
        "the last remote reply is reported: {r:?}"
    );
}

/// The spool outlives the process: a deferred message is delivered by the next relay process
/// (SIGTERM, fix the MX, start again).
#[tokio::test]
async fn a_restarted_relay_resumes_a_deferred_message() {
    let (w, mx, mut relay) = World::with_example_mx(try_again_later()).await;
    let id = submit_deferred(&w, &relay, "restart").await;

    let status = relay.stop().await.expect("was running");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    next_process_delivers(&mut relay, &mx, &id).await;
}

/// After SIGKILL (a crash) an accepted message is still delivered by the next process.
#[tokio::test]
async fn an_accepted_message_survives_a_crash() {
    let (w, mx, mut relay) = World::with_example_mx(try_again_later()).await;
    let id = submit_deferred(&w, &relay, "crash").await;

    relay.kill();
    next_process_delivers(&mut relay, &mx, &id).await;
}
