//! Delivery under MTA-STS (RFC 8461 §4, §5), end to end: the real relay binary in the lab, with
//! `_mta-sts` TXT records in the lab DNS, policies on the lab HTTPS host, and MX hosts that offer
//! STARTTLS with lab-CA certificates (or do not). Each test is one rule of the RFC, checked on
//! what the MX hosts received and on the relay's delivery log line.

mod lab;

use lab::dns::Zone;
use lab::relay::{DeliveryLine, Relay};
use lab::smtp::{Behaviour, SmtpServer};
use lab::sts::{policy, StsScene, BOB};
use lab::WAIT;
use std::time::Duration;

/// How long a test waits to be sure something did not happen.
const QUIET: Duration = Duration::from_secs(2);

fn field<'a>(d: &'a DeliveryLine, key: &str) -> &'a str {
    d.field(key)
        .unwrap_or_else(|| panic!("no {key}= in {}", d.line))
}

#[track_caller]
fn assert_reply_starts_with(d: &DeliveryLine, prefix: &str) {
    assert!(d.reply.starts_with(prefix), "{}", d.line);
}

/// Waits for a relay log line that contains each of `parts`.
async fn wait_for_log_with(relay: &Relay, parts: &[&str]) -> String {
    relay
        .wait_for_log(|l| parts.iter().all(|part| l.contains(part)), WAIT)
        .await
}

/// Asserts the TLS-required failure reached no MAIL FROM: nothing was sent in plaintext.
fn assert_no_transaction(mx: &SmtpServer) {
    assert!(mx.messages().is_empty(), "nothing may be delivered");
    assert!(
        !mx.transcript()
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("C: MAIL FROM")),
        "no transaction may start: {:#?}",
        mx.transcript()
    );
}

/// RFC 8461 §4.2, §5: a matching MX host with a certificate PKIX-valid for its name gets the
/// mail over TLS; the log says `tls=verified, policy=mta-sts` with the policy id and pattern.
#[tokio::test]
async fn enforce_delivers_over_verified_tls() {
    let s = StsScene::new().await;
    let mx = s.tls_mx(10, &["mx10.example.test"]).await;
    s.publish_example(
        &[(10, 10)],
        "20261123",
        &policy("enforce", &["*.example.test"]),
    );
    let relay = s.relay("").await;

    relay.submit(&s.mail(&[BOB], "verified")).await;
    let m = mx.next_message(WAIT).await;
    let tls = m.tls.expect("delivered over TLS");
    assert_eq!(
        tls.sni.as_deref(),
        Some("mx10.example.test"),
        "SNI is the MX name"
    );

    let d = relay.delivery(BOB, "sent").await;
    assert_eq!(field(&d, "tls"), "verified");
    assert_eq!(field(&d, "policy"), "mta-sts");
    assert_eq!(field(&d, "sts_id"), "20261123");
    assert_eq!(field(&d, "sts_mx"), "*.example.test");
    assert!(
        d.line
            .contains("policy=mta-sts, sts_id=20261123, sts_mx=*.example.test, "),
        "the sts fields follow policy=: {}",
        d.line
    );
}

/// RFC 8461 §4.1: an MX host matching no pattern is never contacted; a less preferred
/// matching one takes the mail.
#[tokio::test]
async fn enforce_skips_an_mx_outside_the_policy() {
    let s = StsScene::new().await;
    let outsider = s.tls_mx(10, &["mx10.example.test"]).await;
    let listed = s.tls_mx(20, &["mx20.example.test"]).await;
    s.publish_example(
        &[(10, 10), (20, 20)],
        "1",
        &policy("enforce", &["mx20.example.test"]),
    );
    let relay = s.relay("").await;

    relay.submit(&s.mail(&[BOB], "skip")).await;
    listed.next_message(WAIT).await;
    let d = relay.delivery(BOB, "sent").await;
    assert!(
        field(&d, "relay").starts_with("mx20.example.test["),
        "{}",
        d.line
    );
    assert_eq!(field(&d, "tls"), "verified");
    assert_eq!(field(&d, "sts_mx"), "mx20.example.test");
    assert_eq!(
        outsider.connections(),
        0,
        "the unlisted MX gets no connection"
    );
    wait_for_log_with(&relay, &["skipping MX host mx10.example.test"]).await;
}

/// RFC 8461 §5: under enforce, no STARTTLS means no delivery (Postfix's wording, 4.7.4), and
/// never a plaintext fallback.
#[tokio::test]
async fn enforce_without_starttls_defers() {
    let s = StsScene::new().await;
    let mx = s.lab().mx(10, Behaviour::plain()).await;
    s.publish_enforce_example();
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "no starttls", "deferred").await;
    assert_eq!(field(&d, "dsn"), "4.7.4", "{}", d.line);
    assert_eq!(
        d.reply,
        format!(
            "451 4.7.4 TLS is required, but was not offered by host mx10.example.test[{}]",
            s.lab().ip(10)
        )
    );
    assert_eq!(field(&d, "policy"), "mta-sts");
    assert_eq!(field(&d, "sts_mx"), "mx10.example.test");
    assert_no_transaction(&mx);
    wait_for_log_with(
        &relay,
        &["MTA-STS enforce policy 1 failure at mx10.example.test: starttls-not-supported"],
    )
    .await;
}

/// RFC 8461 §5: a refused STARTTLS is no better than a missing one; the reply keeps the
/// server's status and words (Postfix's wording).
#[tokio::test]
async fn enforce_with_starttls_refused_defers() {
    let s = StsScene::new().await;
    let (cert, key) = s.lab().ca.issue(&["mx10.example.test"]);
    let mut behaviour = Behaviour::plain().starttls(&cert, &key);
    behaviour.starttls_reply = Some("454 4.7.0 TLS not available".into());
    let mx = s.lab().mx(10, behaviour).await;
    s.publish_enforce_example();
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "refused", "deferred").await;
    assert_eq!(
        d.reply,
        format!(
            "451 4.7.0 TLS is required, but host mx10.example.test[{}] refused to start TLS: \
             454 4.7.0 TLS not available",
            s.lab().ip(10)
        )
    );
    assert_no_transaction(&mx);
}

/// RFC 8461 §4.2: the certificate must be valid for the MX host name dialled; one for another
/// name fails verification (4.7.5), and the mail stays queued.
#[tokio::test]
async fn enforce_with_a_wrong_name_certificate_defers() {
    let s = StsScene::new().await;
    let mx = s.tls_mx(10, &["other.example.test"]).await;
    s.publish_enforce_example();
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "wrong name", "deferred").await;
    assert_eq!(field(&d, "dsn"), "4.7.5", "{}", d.line);
    assert_reply_starts_with(&d, "451 4.7.5 Server certificate not verified");
    assert_eq!(field(&d, "tls"), "none");
    assert_no_transaction(&mx);
    wait_for_log_with(
        &relay,
        &["failure at mx10.example.test: certificate-host-mismatch"],
    )
    .await;
}

/// RFC 8461 §4.1: when no MX host matches the policy, nothing is contacted and the recipient
/// gets "not authorized" (4.7.5), naming the most preferred MX host.
#[tokio::test]
async fn enforce_with_no_authorized_mx_defers() {
    let s = StsScene::new().await;
    let mx10 = s.tls_mx(10, &["mx10.example.test"]).await;
    let mx20 = s.tls_mx(20, &["mx20.example.test"]).await;
    s.publish_example(
        &[(10, 10), (20, 20)],
        "1",
        &policy("enforce", &["mx.elsewhere.test"]),
    );
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "unauthorized", "deferred").await;
    assert_eq!(
        d.reply,
        "451 4.7.5 MX host mx10.example.test not authorized by MTA-STS policy for example.test"
    );
    assert_eq!(field(&d, "relay"), "none");
    assert_eq!(field(&d, "sts_id"), "1");
    assert_eq!(field(&d, "sts_mx"), "-");
    assert_eq!(mx10.connections() + mx20.connections(), 0);
}

/// RFC 8461 §5.1: before failing for an enforced policy, the sender checks for an updated
/// one. The policy file changes to `testing` under the same TXT id, so only the re-check
/// (not the lookup) can see it: the retry fails under the cached policy, re-fetches, finds
/// the new mode and delivers at once.
#[tokio::test]
async fn a_changed_policy_is_picked_up_before_failing() {
    let s = StsScene::new().await;
    let mx = s.lab().mx(10, Behaviour::plain()).await;
    s.publish_enforce_example();
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "re-check", "deferred").await;
    assert_eq!(field(&d, "dsn"), "4.7.4", "{}", d.line);
    assert_no_transaction(&mx);
    let fetched = s.https().requests("mta-sts.example.test");

    s.republish("example.test", &policy("testing", &["mx10.example.test"]));
    let mark = relay.log_mark();
    let m = mx.next_message(WAIT).await;
    assert!(m.tls.is_none(), "testing mode delivers in plaintext");
    let d = relay.wait_for_delivery(mark, BOB, "sent", WAIT).await;
    assert_eq!(field(&d, "policy"), "mta-sts-testing");
    assert_eq!(field(&d, "tls"), "none");
    relay
        .wait_for_log_since(
            mark,
            |l| l.contains("MTA-STS re-check before failing") && l.contains("trying again"),
            WAIT,
        )
        .await;
    assert!(
        s.https().requests("mta-sts.example.test") > fetched,
        "the re-check fetched the policy again"
    );
    let deferred_since = relay
        .deliveries()
        .iter()
        .filter(|d| d.status == "deferred")
        .count();
    assert_eq!(deferred_since, 1, "the retry was not deferred first");
}

/// RFC 8461 §5: a testing policy does not change delivery (plaintext to an MX without
/// STARTTLS), but the failure is reported.
#[tokio::test]
async fn testing_delivers_in_plaintext_and_records_the_failure() {
    let s = StsScene::new().await;
    let mx = s.lab().mx(10, Behaviour::plain()).await;
    s.publish_example(&[(10, 10)], "7", &policy("testing", &["mx10.example.test"]));
    let relay = s.relay("").await;

    relay.submit(&s.mail(&[BOB], "testing")).await;
    let m = mx.next_message(WAIT).await;
    assert!(m.tls.is_none());
    let d = relay.delivery(BOB, "sent").await;
    assert_eq!(field(&d, "tls"), "none");
    assert_eq!(field(&d, "policy"), "mta-sts-testing");
    assert_eq!(field(&d, "sts_id"), "7");
    assert_eq!(field(&d, "sts_mx"), "mx10.example.test");
    wait_for_log_with(
        &relay,
        &[
            "MTA-STS testing policy 7 failure at mx10.example.test",
            "starttls-not-supported",
        ],
    )
    .await;
}

/// A testing policy with a certificate for another name: delivered over (unverified) TLS,
/// the mismatch reported.
#[tokio::test]
async fn testing_reports_a_certificate_mismatch_but_delivers() {
    let s = StsScene::new().await;
    let mx = s.tls_mx(10, &["other.example.test"]).await;
    s.publish_example(&[(10, 10)], "1", &policy("testing", &["mx10.example.test"]));
    let relay = s.relay("").await;

    relay.submit(&s.mail(&[BOB], "testing tls")).await;
    assert!(mx.next_message(WAIT).await.tls.is_some());
    let d = relay.delivery(BOB, "sent").await;
    assert_eq!(field(&d, "tls"), "unverified");
    assert_eq!(field(&d, "policy"), "mta-sts-testing");
    wait_for_log_with(
        &relay,
        &["failure at mx10.example.test: certificate-host-mismatch"],
    )
    .await;
}

/// One SMTP server is the MX of three domains with different policies, all in one message:
/// each job judges the host under its own domain's policy, at the same time, and no verdict
/// crosses over. `a.test` (enforce, MX name `mx.a.test` not in the certificate) is deferred;
/// `b.test` (policy mode none) is delivered over unverified TLS; `c.test` (enforce, MX name
/// `mx.b.test`, which the certificate names) is delivered over verified TLS.
#[tokio::test]
async fn one_mx_host_judged_per_domain() {
    let s = StsScene::new().await;
    let mx = s.tls_mx(10, &["mx.b.test"]).await;
    let ip = s.lab().ip(10);
    s.publish(
        Zone::new("a.test").mx(10, "mx.a.test").a("mx.a.test", ip),
        "a.test",
        "a1",
        &policy("enforce", &["mx.a.test"]),
    );
    s.publish(
        Zone::new("b.test").mx(10, "mx.b.test").a("mx.b.test", ip),
        "b.test",
        "b1",
        &policy("none", &["mx.b.test"]),
    );
    s.publish(
        Zone::new("c.test").mx(10, "mx.b.test"),
        "c.test",
        "c1",
        &policy("enforce", &["mx.b.test"]),
    );
    let relay = s.relay("").await;

    let (a, b, c) = ("bob@a.test", "bob@b.test", "bob@c.test");
    relay.submit(&s.mail(&[a, b, c], "shared mx")).await;
    let da = relay.delivery(a, "deferred").await;
    let db = relay.delivery(b, "sent").await;
    let dc = relay.delivery(c, "sent").await;

    assert_reply_starts_with(&da, "451 4.7.5 Server certificate not verified");
    assert_eq!(field(&da, "policy"), "mta-sts");
    assert_eq!(field(&db, "tls"), "unverified");
    assert_eq!(field(&db, "policy"), "none");
    assert!(db.field("sts_id").is_none(), "{}", db.line);
    assert_eq!(field(&dc, "tls"), "verified");
    assert_eq!(field(&dc, "sts_id"), "c1");

    let mut delivered: Vec<String> = Vec::new();
    for _ in 0..2 {
        let m = mx.next_message(WAIT).await;
        delivered.extend(m.rcpt_addresses().iter().map(|r| r.to_string()));
    }
    delivered.sort();
    assert_eq!(delivered, vec![b.to_string(), c.to_string()]);
    assert!(
        mx.try_next_message(QUIET).await.is_none(),
        "a.test's mail stays queued"
    );
}

/// RFC 8461 §5: a TXT lookup that fails with nothing cached is no "no policy": the mail waits
/// (4.4.3), and no MX host is contacted.
#[tokio::test]
async fn a_failed_policy_lookup_defers() {
    let s = StsScene::new().await;
    let mx = s.tls_mx(10, &["mx10.example.test"]).await;
    s.publish_enforce_example();
    s.lab().dns.servfail("_mta-sts.example.test");
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "servfail", "deferred").await;
    assert_eq!(field(&d, "dsn"), "4.4.3", "{}", d.line);
    assert_reply_starts_with(
        &d,
        "451 4.4.3 MTA-STS policy lookup failed for example.test",
    );
    assert_eq!(field(&d, "relay"), "none");
    assert_eq!(mx.connections(), 0);

    // Once DNS answers again, the policy is fetched and the mail goes out, verified.
    s.lab().dns.heal("_mta-sts.example.test");
    mx.next_message(WAIT).await;
    let d = relay.delivery(BOB, "sent").await;
    assert_eq!(field(&d, "tls"), "verified");
}
