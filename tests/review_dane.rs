//! Review of DANE (RFC 7672), REQUIRETLS (RFC 8689) and TLS-Required handling: each test is one
//! finding and fails against the code as reviewed.

mod lab;

use lab::ca::{CertOptions, Issued, LabCa};
use lab::dane::{tlsa_for, tlsa_for_ca, DaneScene, SENDER};
use lab::dns::Zone;
use lab::https::PolicyServer;
use lab::relay::{DeliveryLine, Relay};
use lab::smtp::{Behaviour, SmtpServer};
use lab::sts::policy;
use lab::submit::{message, submit, ClientTls, Submission};
use lab::RELAY_NAME;
use lab::{Lab, WAIT};

const BOB: &str = "bob@dane.test";

/// The first delivery line for `rcpt` logged after `mark`, whatever its status.
async fn first_line(relay: &Relay, rcpt: &str) -> DeliveryLine {
    let line = relay
        .wait_for_log(
            |l| DeliveryLine::parse(l).is_some_and(|d| d.to == rcpt),
            WAIT,
        )
        .await;
    DeliveryLine::parse(&line).expect("a delivery line")
}

fn mail_commands(mx: &SmtpServer) -> usize {
    mx.transcript()
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("C: MAIL FROM"))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Finding 1: a secure CNAME whose target is in an unsigned zone.
//
// RFC 7672 §2.2.2 (and Dukhovni's summary of it): when the MX host's address records come
// through a CNAME chain whose first link is secure but which is not secure end to end, the
// TLSA records are still looked up, at the original MX host name (the expanded name is only
// tried when the whole chain is secure). mxguard treats the whole answer as insecure and
// drops DANE for the host: a TLSA RRset published (and signed) at the MX host name is ignored
// and the mail goes out with unauthenticated opportunistic TLS.

#[tokio::test]
async fn secure_cname_to_an_unsigned_target_still_uses_tlsa_at_the_mx_name() {
    let s = DaneScene::new().await;
    let mx_name = "mx.dane.test";
    let target = "host.unsigned.test";
    let served = s.lab().ca.issue_with(&[mx_name], CertOptions::default());
    let published = s.lab().ca.issue_with(&[mx_name], CertOptions::default());
    let mx = s.tls_mx(10, &served).await;
    let zone = Zone::new("dane.test")
        .mx(10, mx_name)
        .cname(mx_name, target)
        .signed();
    // A DANE-EE record at the (signed) MX host name that the server's key does not match.
    s.publish(s.with_tlsa(zone, mx_name, (3, 1, 1), &tlsa_for(&published, 1, 1)));
    s.publish(Zone::new("unsigned.test").a(target, s.lab().ip(10)));
    let relay = s.relay("").await;

    relay
        .submit(&s.mail(BOB, "secure cname, unsigned target"))
        .await;
    let d = first_line(&relay, BOB).await;
    assert_eq!(
        d.status, "deferred",
        "DANE applies at {mx_name}: {}",
        d.line
    );
    assert_eq!(d.field("policy"), Some("dane"), "{}", d.line);
    assert_eq!(d.field("dsn"), Some("4.7.5"), "{}", d.line);
    assert!(mx.messages().is_empty(), "nothing may be sent");
}

// ---------------------------------------------------------------------------------------------
// Finding 2: REQUIRETLS bounces permanently while the qualifying host is only unreachable.
//
// The preferred MX host is DANE-authenticated (and would take REQUIRETLS) but refuses
// connections for now; the backup host, in an unsigned zone, can never qualify. The skip of
// the backup is a permanent 550 5.7.30 ranked `Tls`, above the `Connect` failure of the good
// host, so the recipient bounces on the first attempt. The good host has not refused
// anything: RFC 8689 §4.2.1 only forbids delivery to unqualified hosts; a temporarily
// unreachable qualified host is a reason to retry (RFC 5321 §4.5.4.1), not to bounce.

async fn tls_mx_with_requiretls(lab: &Lab, n: u8, issued: &Issued) -> SmtpServer {
    lab.mx(
        n,
        Behaviour::plain()
            .starttls(&issued.chain_pem, &issued.key_pem)
            .extensions(|e| e.requiretls = true),
    )
    .await
}

#[tokio::test]
async fn requiretls_defers_while_the_only_qualifying_host_is_unreachable() {
    let s = DaneScene::new().await;
    let lab = s.lab();
    // mx10.dane.test: DANE-EE record for a key; nothing listens at lab host 10 yet.
    let good = lab
        .ca
        .issue_with(&["mx10.dane.test"], CertOptions::default());
    // mx20.backup.test: unsigned zone, STARTTLS and REQUIRETLS, never authenticated.
    let backup_cert = lab
        .ca
        .issue_with(&["mx20.backup.test"], CertOptions::default());
    let backup = tls_mx_with_requiretls(lab, 20, &backup_cert).await;
    let zone = Zone::new("dane.test")
        .mx(10, "mx10.dane.test")
        .a("mx10.dane.test", lab.ip(10))
        .mx(20, "mx20.backup.test")
        .signed();
    s.publish(s.with_tlsa(zone, "mx10.dane.test", (3, 1, 1), &tlsa_for(&good, 1, 1)));
    s.publish(Zone::new("backup.test").a("mx20.backup.test", lab.ip(20)));
    let relay = s.relay(&lab.tls_listener_toml()).await;

    let mut data = Vec::new();
    data.extend(message(
        SENDER,
        BOB,
        "requiretls, good host down",
        "secret\n",
    ));
    let sub = Submission::new(SENDER, data)
        .rcpt(BOB)
        .param("REQUIRETLS")
        .starttls(ClientTls::trusting(&lab.ca.cert_der(), RELAY_NAME));
    let t = submit(relay.addr(), &sub).await;
    assert!(t.queue_id().is_some(), "not queued: {t:#?}");

    let d = first_line(&relay, BOB).await;
    assert_eq!(
        d.status, "deferred",
        "the DANE host may take the mail once it is back: {}",
        d.line
    );
    assert!(
        d.field("dsn").is_some_and(|c| c.starts_with("4.")),
        "{}",
        d.line
    );
    assert!(backup.messages().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Finding 3: `TLS-Required: No` is not recognised when folded.
//
// RFC 8689 §5 gives the field as "TLS-Required:" [FWS] "No" CRLF: folding white space before
// the value is allowed, so "TLS-Required:\r\n No" is the same field. mxguard splits the header
// section on CRLF and never unfolds (src/delivery/local.rs `says_tls_not_required`), so the
// folded field is ignored and the sender's request is not honoured.

#[tokio::test]
async fn a_folded_tls_required_no_header_is_honoured() {
    let s = DaneScene::new().await;
    let served = s
        .lab()
        .ca
        .issue_with(&["mx10.dane.test"], CertOptions::default());
    let published = s
        .lab()
        .ca
        .issue_with(&["mx10.dane.test"], CertOptions::default());
    let mx = s.tls_mx(10, &served).await;
    let zone = s.zone("dane.test", &[(10, 10)]).signed();
    s.publish(s.with_tlsa(
        zone,
        "mx10.dane.test",
        (3, 1, 1),
        &tlsa_for(&published, 1, 1),
    ));
    let relay = s.relay("").await;

    let mut data = b"TLS-Required:\r\n No\r\n".to_vec();
    data.extend(message(SENDER, BOB, "folded tls-required", "anyway\n"));
    relay.submit(&Submission::new(SENDER, data).rcpt(BOB)).await;
    let d = first_line(&relay, BOB).await;
    assert_eq!(d.status, "sent", "{}", d.line);
    assert_eq!(d.field("policy"), Some("tls-required-no"), "{}", d.line);
    mx.next_message(WAIT).await;
}

// ---------------------------------------------------------------------------------------------
// Finding 4: TLSA records with nothing usable switch an enforced MTA-STS policy off.
//
// DESIGN.md: "A domain whose MX hosts have *usable* TLSA is DANE-protected, and DANE takes
// precedence over MTA-STS." RFC 8461 §2 only forbids letting MTA-STS override a *failing DANE
// validation*; with no usable record (RFC 7672 §2.2) there is no DANE authentication at all,
// only "TLS mandatory". Yet `requirement.rs` `published_plan` maps `EncryptOnly` to
// `HostPlan::Encrypt` and never consults the enforced policy: a host the policy does not
// list (or one with a certificate that is not PKIX-valid) gets the mail over unauthenticated
// TLS. Publishing PKIX-EE "1 1 1" records by mistake is common, and silently drops the
// domain's MTA-STS protection to "any certificate".

#[tokio::test]
async fn unusable_tlsa_records_do_not_set_an_enforced_mta_sts_policy_aside() {
    let s = DaneScene::new().await;
    let https = PolicyServer::start(s.lab(), 80).await;
    let private = LabCa::new();
    // A certificate from a CA the relay does not trust: not PKIX-valid.
    let issued = private.issue_with(&["mx10.dane.test"], CertOptions::default());
    let mx = s.tls_mx(10, &issued).await;
    let zone = s.zone("dane.test", &[(10, 10)]);
    let zone = https.announce(zone, "dane.test", "1").signed();
    // Only PKIX usages: nothing usable for SMTP.
    let zone = s.with_tlsa(zone, "mx10.dane.test", (1, 1, 1), &tlsa_for(&issued, 1, 1));
    s.publish(s.with_tlsa(
        zone,
        "mx10.dane.test",
        (0, 0, 1),
        &tlsa_for_ca(&private, 0, 1),
    ));
    https.publish(
        &s.lab().ca,
        "dane.test",
        &policy("enforce", &["mx.elsewhere.test"]),
    );
    let relay = s
        .relay(&format!("[mta_sts]\nhttps_port = {}\n", https.port()))
        .await;

    relay
        .submit(&s.mail(BOB, "pkix-only tlsa under enforce"))
        .await;
    let d = first_line(&relay, BOB).await;
    assert_ne!(
        d.status, "sent",
        "the enforced policy does not list the host, and its certificate is not PKIX-valid: {}",
        d.line
    );
    assert!(mx.messages().is_empty(), "nothing may be sent");
    assert_eq!(mail_commands(&mx), 0, "{:#?}", mx.transcript());
}
