//! REQUIRETLS (RFC 8689) end to end: mail submitted over STARTTLS with `MAIL FROM:<…>
//! REQUIRETLS` leaves only over TLS to an MX host that DANE or an enforced MTA-STS policy
//! authenticates and that advertises REQUIRETLS, and the option travels on (§4.2.1). Anything
//! less bounces at once with 5.7.30, and the DSN carries the original's header section only
//! (§5). `TLS-Required: No` cannot undo REQUIRETLS (§4.1). Each test checks the MX hosts, the
//! delivery log line (`status`, `dsn`, `policy`, `tls`) and, for bounces, the DSN.

mod lab;

use lab::bounce::Bounce;
use lab::ca::{CertOptions, Issued};
use lab::dane::{dane_ee, DaneScene};
use lab::dns::Zone;
use lab::relay::{assert_facts, assert_never_deferred, assert_relayed_by, DeliveryLine, Relay};
use lab::smtp::{assert_nothing_sent, Behaviour, ReceivedMessage, SmtpServer};
use lab::sts::{policy, StsScene, SENDER};
use lab::submit::{message, submit, ClientTls, Submission};
use lab::RELAY_NAME;
use lab::{Lab, WAIT};
use std::time::Duration;

/// The relay's name, in the certificate of its STARTTLS listener.
/// A line of every test message's body: it must never come back in a DSN.
const SECRET: &str = "The launch code is 0000, do not forward.";

// ---------------------------------------------------------------------------------------------
// Set-up

/// A message from [`SENDER`] to `rcpt`, submitted over STARTTLS with REQUIRETLS; with
/// `tls_required_no`, it also carries `TLS-Required: No`.
fn requiretls_mail(lab: &Lab, rcpt: &str, subject: &str, tls_required_no: bool) -> Submission {
    let mut data = Vec::new();
    if tls_required_no {
        data.extend_from_slice(b"TLS-Required: No\r\n");
    }
    data.extend(message(SENDER, rcpt, subject, &format!("{SECRET}\n")));
    Submission::new(SENDER, data)
        .rcpt(rcpt)
        .param("REQUIRETLS")
        .starttls(ClientTls::trusting(&lab.ca.cert_der(), RELAY_NAME))
}

/// Submits `s` (asserting the relay offered REQUIRETLS inside TLS and queued the message) and
/// waits for the delivery line of its recipient with `status`.
async fn send(relay: &Relay, s: &Submission, status: &str) -> DeliveryLine {
    let mark = relay.log_mark();
    let t = submit(relay.addr(), s).await;
    let ehlo_in_tls = t
        .replies
        .iter()
        .filter(|(c, _)| c.starts_with("EHLO"))
        .nth(1)
        .map(|(_, r)| r.as_str())
        .unwrap_or_else(|| panic!("no EHLO inside TLS: {t:#?}"));
    assert!(ehlo_in_tls.contains("REQUIRETLS"), "{ehlo_in_tls}");
    assert!(t.queue_id().is_some(), "not queued: {t:#?}");
    relay
        .wait_for_delivery(mark, &s.rcpts[0].0, status, WAIT)
        .await
}

/// [`send`]s a plain [`requiretls_mail`] (no `TLS-Required: No`) to `rcpt`.
async fn send_requiretls(
    relay: &Relay,
    lab: &Lab,
    rcpt: &str,
    subject: &str,
    status: &str,
) -> DeliveryLine {
    send(relay, &requiretls_mail(lab, rcpt, subject, false), status).await
}

/// A good lab-CA certificate for `names`.
fn good_cert(lab: &Lab, names: &[&str]) -> Issued {
    lab.ca.issue_with(names, CertOptions::default())
}

/// An MX host at `127.X.Y.n` offering STARTTLS with `issued`, advertising REQUIRETLS (after
/// TLS) when `requiretls`.
async fn tls_mx(lab: &Lab, n: u8, issued: &Issued, requiretls: bool) -> SmtpServer {
    lab.mx(
        n,
        Behaviour::plain()
            .starttls(&issued.chain_pem, &issued.key_pem)
            .extensions(|e| e.requiretls = requiretls),
    )
    .await
}

/// An MX host `mx{n}.{domain}` at `127.X.Y.n`: STARTTLS with a good lab-CA certificate for that
/// name (and `more_names`), REQUIRETLS advertised when `requiretls`.
async fn good_tls_mx(
    lab: &Lab,
    domain: &str,
    n: u8,
    more_names: &[&str],
    requiretls: bool,
) -> (SmtpServer, Issued) {
    let host = format!("mx{n}.{domain}");
    let names: Vec<&str> = std::iter::once(host.as_str())
        .chain(more_names.iter().copied())
        .collect();
    let issued = good_cert(lab, &names);
    (tls_mx(lab, n, &issued, requiretls).await, issued)
}

/// A DANE scene with `dane.test` signed, MX `mx10.dane.test` (lab host 10) offering STARTTLS
/// with a certificate its DANE-EE record matches.
async fn dane_scene(requiretls: bool) -> (DaneScene, SmtpServer) {
    let s = DaneScene::new().await;
    let (mx, issued) = good_tls_mx(s.lab(), "dane.test", 10, &[], requiretls).await;
    s.publish_signed("dane.test", 10, &[dane_ee(&issued)]);
    (s, mx)
}

/// An MTA-STS scene with `example.test` under a policy in `mode` listing its one MX host
/// `mx10.example.test`, which offers STARTTLS with a good lab-CA certificate.
async fn sts_scene(mode: &str, requiretls: bool) -> (StsScene, SmtpServer) {
    let s = StsScene::new().await;
    let (mx, _) = good_tls_mx(s.lab(), "example.test", 10, &[], requiretls).await;
    s.publish_example(&[(10, 10)], "1", &policy(mode, &["mx10.example.test"]));
    (s, mx)
}

/// The same under an `enforce` policy.
async fn sts_enforce_scene(requiretls: bool) -> (StsScene, SmtpServer) {
    sts_scene("enforce", requiretls).await
}

/// `plain.test`, publishing nothing, with MX `mx.plain.test` at lab host `n`: STARTTLS with a
/// good lab-CA certificate and REQUIRETLS advertised, so only the missing authentication
/// stands in the way.
async fn opportunistic_domain(lab: &Lab, n: u8) -> SmtpServer {
    lab.zone(
        Zone::new("plain.test")
            .mx(10, "mx.plain.test")
            .a("mx.plain.test", lab.ip(n)),
    );
    tls_mx(lab, n, &good_cert(lab, &["mx.plain.test"]), true).await
}

// ---------------------------------------------------------------------------------------------
// Assertions

/// A REQUIRETLS bounce (RFC 8689 §5): Status 5.7.30 for `rcpt` with `diagnostic`, the
/// original's header section returned but never its body, and the DSN itself sent without
/// REQUIRETLS (the sender's MX is plaintext-only).
#[track_caller]
fn assert_requiretls_dsn(bounce: &Bounce, rcpt: &str, diagnostic: &str) {
    let r = bounce.recipient(rcpt);
    assert_eq!(r.must("Action"), "failed");
    assert_eq!(r.must("Status"), "5.7.30");
    let code = r.must("Diagnostic-Code");
    assert!(code.contains("5.7.30"), "{code}");
    assert!(code.contains(diagnostic), "want {diagnostic:?} in {code}");
    let (kind, returned) = bounce.returned.as_ref().expect("a third part");
    assert_eq!(kind, "text/rfc822-headers", "headers only");
    let returned = String::from_utf8_lossy(returned);
    assert!(returned.contains("Subject: "), "{returned}");
    let whole = String::from_utf8_lossy(&bounce.envelope.data);
    assert!(
        !whole.contains(SECRET),
        "the DSN must not carry the original body:\n{whole}"
    );
    assert!(
        bounce.envelope.mail_param("REQUIRETLS").is_none(),
        "{:?}",
        bounce.envelope.mail_params
    );
    assert!(
        bounce.envelope.tls.is_none(),
        "delivered to the plaintext sender MX"
    );
}

/// `rcpt` bounced on the first attempt for REQUIRETLS (`tls=none, policy=requiretls,
/// dsn=5.7.30`), with no deferral before.
#[track_caller]
fn assert_requiretls_bounced(relay: &Relay, d: &DeliveryLine, rcpt: &str) {
    assert_facts(d, "none", "requiretls", "5.7.30");
    assert_never_deferred(relay, rcpt);
}

/// The delivery line says sent over verified TLS for REQUIRETLS, and `mx` received the message
/// with REQUIRETLS on its MAIL FROM (RFC 8689 §4.2.1); returns it.
async fn assert_delivered_with_requiretls(d: &DeliveryLine, mx: &SmtpServer) -> ReceivedMessage {
    assert_facts(d, "verified", "requiretls", "2.0.0");
    let m = mx.next_message(WAIT).await;
    assert!(
        m.mail_params.iter().any(|p| p == "REQUIRETLS"),
        "REQUIRETLS passed on: {:?}",
        m.mail_params
    );
    m
}

// ---------------------------------------------------------------------------------------------
// Success

/// RFC 8689 §4.2.1: a DANE-authenticated MX that advertises REQUIRETLS gets the message over
/// verified TLS, with REQUIRETLS on its MAIL FROM.
#[tokio::test]
async fn requiretls_goes_to_a_dane_authenticated_mx_that_advertises_it() {
    let (s, mx) = dane_scene(true).await;
    let relay = s.relay(&s.lab().tls_listener_toml()).await;

    let d = send_requiretls(&relay, s.lab(), "bob@dane.test", "dane", "sent").await;
    let m = assert_delivered_with_requiretls(&d, &mx).await;
    assert!(m.tls.is_some());
    assert!(m.data_text().contains(SECRET));
}

/// The same through an enforced MTA-STS policy and a certificate valid for the MX name.
#[tokio::test]
async fn requiretls_goes_to_an_mta_sts_enforced_mx_that_advertises_it() {
    let (s, mx) = sts_enforce_scene(true).await;
    let relay = s.relay(&s.lab().tls_listener_toml()).await;

    let d = send_requiretls(&relay, s.lab(), "bob@example.test", "sts", "sent").await;
    let m = assert_delivered_with_requiretls(&d, &mx).await;
    assert!(m.tls.is_some());
}

// ---------------------------------------------------------------------------------------------
// Failure: 5.7.30 at once

/// A destination with neither DANE nor MTA-STS (opportunistic TLS only): its MX is never
/// contacted, though it offers TLS and REQUIRETLS; the message bounces at once (550 5.7.30),
/// and the DSN returns the header section only even though the sender asked for RET=FULL.
#[tokio::test]
async fn requiretls_to_an_unauthenticated_destination_bounces_at_once() {
    let s = StsScene::new().await;
    let mx = opportunistic_domain(s.lab(), 3).await;
    let relay = s.relay(&s.lab().tls_listener_toml()).await;

    let rcpt = "bob@plain.test";
    // RET=FULL asks for the whole message back; RFC 8689 §5 overrides it.
    let mail = requiretls_mail(s.lab(), rcpt, "opportunistic", false).param("RET=FULL");
    let d = send(&relay, &mail, "bounced").await;
    assert_requiretls_bounced(&relay, &d, rcpt);
    assert_eq!(
        d.reply,
        "550 5.7.30 REQUIRETLS support required: mx.plain.test not authenticated by DANE or an \
         enforced MTA-STS policy"
    );
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert_eq!(mx.connections(), 0, "never contacted");
    assert_requiretls_dsn(&s.bounce().await, rcpt, "REQUIRETLS support required");
}

/// An MTA-STS policy in `testing` mode authenticates nothing: 5.7.30 at once.
#[tokio::test]
async fn requiretls_under_an_mta_sts_testing_policy_bounces_at_once() {
    let (s, mx) = sts_scene("testing", true).await;
    let relay = s.relay(&s.lab().tls_listener_toml()).await;

    let rcpt = "bob@example.test";
    let d = send_requiretls(&relay, s.lab(), rcpt, "testing", "bounced").await;
    assert_requiretls_bounced(&relay, &d, rcpt);
    assert!(
        d.reply.starts_with(
            "550 5.7.30 REQUIRETLS support required: mx10.example.test not authenticated"
        ),
        "{}",
        d.line
    );
    assert_eq!(mx.connections(), 0, "never contacted");
    assert_requiretls_dsn(&s.bounce().await, rcpt, "REQUIRETLS support required");
}

/// A DANE-authenticated MX that does not advertise REQUIRETLS: the session ends with QUIT
/// before MAIL, and the message bounces at once with 5.7.30 naming the host.
#[tokio::test]
async fn requiretls_to_a_dane_mx_without_requiretls_bounces_at_once() {
    let (s, mx) = dane_scene(false).await;
    let relay = s.relay(&s.lab().tls_listener_toml()).await;

    let rcpt = "bob@dane.test";
    let d = send_requiretls(&relay, s.lab(), rcpt, "no requiretls", "bounced").await;
    // The session got as far as verified TLS: the line says so.
    assert_facts(&d, "verified", "requiretls", "5.7.30");
    assert_never_deferred(&relay, rcpt);
    assert_eq!(
        d.reply,
        format!(
            "550 5.7.30 REQUIRETLS support required: mx10.dane.test[{}] did not advertise \
             REQUIRETLS",
            s.lab().ip(10)
        )
    );
    assert_nothing_sent(&mx);
    let transcript = mx.transcript();
    assert!(
        transcript
            .iter()
            .any(|l| l.starts_with("-- TLS established")),
        "TLS first: {transcript:#?}"
    );
    assert!(
        transcript.iter().any(|l| l == "C: QUIT"),
        "then QUIT: {transcript:#?}"
    );
    assert_requiretls_dsn(&s.bounce().await, rcpt, "did not advertise REQUIRETLS");
}

/// The same for an MX host an enforced MTA-STS policy authenticates.
#[tokio::test]
async fn requiretls_to_an_mta_sts_mx_without_requiretls_bounces_at_once() {
    let (s, mx) = sts_enforce_scene(false).await;
    let relay = s.relay(&s.lab().tls_listener_toml()).await;

    let rcpt = "bob@example.test";
    let d = send_requiretls(&relay, s.lab(), rcpt, "no requiretls", "bounced").await;
    assert_facts(&d, "verified", "requiretls", "5.7.30");
    assert_never_deferred(&relay, rcpt);
    assert!(
        d.reply.ends_with("did not advertise REQUIRETLS")
            && d.reply
                .starts_with("550 5.7.30 REQUIRETLS support required: mx10.example.test["),
        "{}",
        d.line
    );
    assert_nothing_sent(&mx);
    assert_requiretls_dsn(&s.bounce().await, rcpt, "did not advertise REQUIRETLS");
}

/// RFC 8689 §4.2.1: an MX host that does not advertise REQUIRETLS is passed over for the next
/// one that does: the first DANE-authenticated host gets QUIT, the second the message.
#[tokio::test]
async fn requiretls_passes_over_an_mx_without_it_to_the_next_one() {
    let s = DaneScene::new().await;
    let lab = s.lab();
    let (without, first) = good_tls_mx(lab, "dane.test", 10, &[], false).await;
    let (with, second) = good_tls_mx(lab, "dane.test", 20, &[], true).await;
    s.publish_signed_hosts(
        "dane.test",
        &[(10, 10, dane_ee(&first)), (20, 20, dane_ee(&second))],
    );
    let relay = s.relay(&lab.tls_listener_toml()).await;

    let d = send_requiretls(&relay, lab, "bob@dane.test", "fallback", "sent").await;
    assert_relayed_by(&d, "mx20.dane.test");
    assert_nothing_sent(&without);
    assert!(without.connections() > 0, "the first host was tried");
    assert_delivered_with_requiretls(&d, &with).await;
}

/// A plaintext-only MX under an enforced policy is a TLS failure (Postfix's 4.7.4, deferred
/// and retried), not a REQUIRETLS one: what the relay does today. Nothing is sent.
#[tokio::test]
async fn requiretls_to_a_plaintext_mx_under_enforce_is_a_tls_failure() {
    let s = StsScene::new().await;
    let mx = s.lab().mx(10, Behaviour::plain()).await;
    s.publish_enforce_example();
    let relay = s.relay(&s.lab().tls_listener_toml()).await;

    let rcpt = "bob@example.test";
    let d = send_requiretls(&relay, s.lab(), rcpt, "plaintext", "deferred").await;
    assert_facts(&d, "none", "requiretls", "4.7.4");
    assert_eq!(
        d.reply,
        s.lab().not_offered("451 4.7.4", "mx10.example.test", 10)
    );
    assert_nothing_sent(&mx);
    assert!(
        s.sender_mx()
            .try_next_message(Duration::from_secs(1))
            .await
            .is_none(),
        "a deferred recipient gets no DSN"
    );
}

// ---------------------------------------------------------------------------------------------
// REQUIRETLS and TLS-Required: No

/// RFC 8689 §4.1: with REQUIRETLS, `TLS-Required: No` is ignored. Under an enforced MTA-STS
/// policy the message is delivered as REQUIRETLS demands (had the header won, the policy would
/// have been set aside and the host refused); to an opportunistic destination it bounces with
/// 5.7.30 instead of going out as the header asks.
#[tokio::test]
async fn requiretls_wins_over_tls_required_no() {
    let (s, mx) = sts_enforce_scene(true).await;
    let plain = opportunistic_domain(s.lab(), 3).await;
    let relay = s.relay(&s.lab().tls_listener_toml()).await;

    let enforced = requiretls_mail(s.lab(), "bob@example.test", "both, enforced", true);
    let d = send(&relay, &enforced, "sent").await;
    assert_delivered_with_requiretls(&d, &mx).await;

    let rcpt = "carol@plain.test";
    let opportunistic = requiretls_mail(s.lab(), rcpt, "both, opportunistic", true);
    let d = send(&relay, &opportunistic, "bounced").await;
    assert_facts(&d, "none", "requiretls", "5.7.30");
    assert_eq!(plain.connections(), 0, "never contacted");
    assert_requiretls_dsn(&s.bounce().await, rcpt, "REQUIRETLS support required");
}

/// A local `secure` level on an MTA-STS enforce domain raises the check (a certificate for the
/// domain too), it does not take the MTA-STS authentication away: an MX host with a
/// certificate for both its own name and the domain, advertising REQUIRETLS, gets the message.
#[tokio::test]
async fn requiretls_with_a_secure_level_on_an_mta_sts_domain_is_delivered() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let (mx, _) = good_tls_mx(lab, "example.test", 10, &["example.test"], true).await;
    s.publish_enforce_example();
    let table = lab.dir().join("tls_policy");
    std::fs::write(&table, "example.test secure\n").expect("write the table");
    let extra = format!(
        "{}[delivery]\ntls_policy_file = {:?}\n",
        lab.tls_listener_toml(),
        table.to_string_lossy()
    );
    let relay = s.relay(&extra).await;

    let d = send_requiretls(&relay, lab, "bob@example.test", "secure", "sent").await;
    assert_delivered_with_requiretls(&d, &mx).await;
}

/// Connection reuse keeps REQUIRETLS in the session's requirement: a session that carried
/// ordinary mail to a DANE MX without REQUIRETLS is never taken by a REQUIRETLS message, which
/// opens its own, finds REQUIRETLS not advertised, and bounces.
#[tokio::test]
async fn a_requiretls_message_never_takes_a_session_opened_for_ordinary_mail() {
    let (s, mx) = dane_scene(false).await;
    let relay = s.relay(&s.lab().tls_listener_toml()).await;
    let d = s.send(&relay, "carol@dane.test", "ordinary", "sent").await;
    assert_facts(&d, "verified", "dane", "2.0.0");
    mx.next_message(WAIT).await;
    assert_eq!(mx.connections(), 1);

    let rcpt = "bob@dane.test";
    let d = send_requiretls(&relay, s.lab(), rcpt, "requiretls", "bounced").await;
    assert_facts(&d, "verified", "requiretls", "5.7.30");
    assert_eq!(mx.connections(), 2, "a session of its own");
    assert_eq!(mx.messages().len(), 1, "nothing more arrives");
}
