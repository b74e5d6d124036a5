//! DSNs other than bounces: RFC 3461 "delayed" warnings after `queue.delay_warning`, and
//! "relayed" reports for NOTIFY=SUCCESS recipients handed to a server that does not speak DSN
//! (RFC 3461 §5.2.2).

mod lab;

use lab::bounce::Bounce;
use lab::smtp::{Behaviour, SmtpServer};
use lab::submit::{message, submit_ok, Submission};
use lab::{Lab, WAIT};
use std::time::Duration;

const SENDER: &str = "alice@origin.test";
const BOB: &str = "bob@dest.test";

/// A lab with the sender's domain (where DSNs arrive) and a destination domain.
async fn lab_with(dest: Behaviour) -> (Lab, SmtpServer, SmtpServer) {
    let lab = Lab::new().await;
    let origin = lab
        .domain_with_mx("origin.test", 2, Behaviour::plain())
        .await;
    let dest = lab.domain_with_mx("dest.test", 3, dest).await;
    (lab, origin, dest)
}

fn mail() -> Vec<u8> {
    message(SENDER, BOB, "notify test", "hello\n")
}

#[tokio::test]
async fn delay_warning_is_sent_once_and_delivery_continues() {
    let (lab, origin, dest) =
        lab_with(Behaviour::plain().rcpt(BOB, "451 4.2.0 <bob@dest.test>: try later")).await;
    let config = lab.relay_config().toml("[queue]\ndelay_warning = \"2s\"\n");
    let relay = lab.start_relay(config).await;
    let id = submit_ok(relay.addr(), &Submission::new(SENDER, mail()).rcpt(BOB)).await;

    let warning = Bounce::parse(&origin.next_message(WAIT).await);
    assert_eq!(warning.to, SENDER);
    let r = warning.recipient(BOB);
    assert_eq!(r.must("Action"), "delayed");
    assert_eq!(r.must("Status"), "4.2.0");
    assert!(r.get("Will-Retry-Until").is_some(), "{r:?}");
    assert!(r.must("Diagnostic-Code").contains("try later"), "{r:?}");

    // The message stays queued: once the MX accepts, it is delivered, and no second warning
    // was sent meanwhile.
    relay
        .wait_for_log(|l| l.contains(&id) && l.contains("status=deferred"), WAIT)
        .await;
    dest.set(|b| b.rcpt_replies.clear());
    relay.wait_for_delivery(0, BOB, "sent", WAIT).await;
    assert!(
        origin
            .try_next_message(Duration::from_secs(2))
            .await
            .is_none(),
        "only one delay warning per recipient"
    );
}

#[tokio::test]
async fn no_delay_warning_when_disabled_or_notify_excludes_delay() {
    let (lab, origin, _dest) =
        lab_with(Behaviour::plain().rcpt_default("451 4.2.0 try later")).await;
    // delay_warning is set, but the sender asked for failure reports only.
    let config = lab.relay_config().toml("[queue]\ndelay_warning = \"1s\"\n");
    let relay = lab.start_relay(config).await;
    submit_ok(
        relay.addr(),
        &Submission::new(SENDER, mail()).rcpt_with(BOB, &["NOTIFY=FAILURE"]),
    )
    .await;
    relay.wait_for_delivery(0, BOB, "deferred", WAIT).await;
    // Two more deferrals, well past the 1 s warning time.
    let mark = relay.log_mark();
    relay.wait_for_delivery(mark, BOB, "deferred", WAIT).await;
    assert!(
        origin
            .try_next_message(Duration::from_secs(2))
            .await
            .is_none(),
        "NOTIFY=FAILURE: no delay warning"
    );
}

#[tokio::test]
async fn success_to_a_non_dsn_server_gets_a_relayed_report() {
    let (lab, origin, _dest) = lab_with(Behaviour::plain().extensions(|e| e.dsn = false)).await;
    let relay = lab.relay().await;
    submit_ok(
        relay.addr(),
        &Submission::new(SENDER, mail()).rcpt_with(BOB, &["NOTIFY=SUCCESS,FAILURE"]),
    )
    .await;
    relay.wait_for_delivery(0, BOB, "sent", WAIT).await;
    let report = Bounce::parse(&origin.next_message(WAIT).await);
    let r = report.recipient(BOB);
    assert_eq!(r.must("Action"), "relayed");
    assert_eq!(r.must("Status"), "2.0.0");
}

#[tokio::test]
async fn success_to_a_dsn_server_is_left_to_it() {
    let (lab, origin, dest) = lab_with(Behaviour::plain()).await;
    let relay = lab.relay().await;
    submit_ok(
        relay.addr(),
        &Submission::new(SENDER, mail()).rcpt_with(BOB, &["NOTIFY=SUCCESS"]),
    )
    .await;
    let got = dest.next_message(WAIT).await;
    assert_eq!(got.rcpts[0].param("NOTIFY"), Some("SUCCESS"), "passed on");
    relay.wait_for_delivery(0, BOB, "sent", WAIT).await;
    assert!(
        origin
            .try_next_message(Duration::from_secs(2))
            .await
            .is_none(),
        "the DSN-capable next hop reports success, not us"
    );
}
