//! Local TLS security levels end to end (Postfix's `smtp_tls_security_level` names): the real
//! relay in the lab with a destination table (`[delivery] tls_policy_file`), a sender table
//! (`[delivery] sender_tls_policy_file`) and a listener `min_level`, each a floor under what
//! the destination publishes, the strictest of them winning, and the `TLS-Required: No` header
//! (RFC 8689 §4.1). Each test checks what the MX hosts received (or did not), the delivery log
//! line (`status`, `dsn`, `policy`, `tls`) and, for bounces, the DSN at the sender's MX.

mod lab;

use lab::bounce::Bounce;
use lab::ca::CertOptions;
use lab::dane::DaneScene;
use lab::dns::Zone;
use lab::relay::{
    assert_facts, assert_never_deferred, assert_not_verified, assert_relayed_by,
    assert_reply_starts_with, shipped_status_filter, DeliveryLine, Relay,
};
use lab::smtp::{assert_nothing_sent, mail_commands, Behaviour, SmtpServer};
use lab::sts::{StsScene, SENDER};
use lab::submit::{message, submit_ok, Submission};
use lab::{Lab, WAIT};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lab host octet of the second listener (`[[listener]] min_level`); no MX uses it.
const SECOND_LISTENER_HOST: u8 = 7;
/// Another sender of `sender.test`, without a sender-table entry unless a test gives it one.
const BOB_SENDER: &str = "bob@sender.test";

// ---------------------------------------------------------------------------------------------
// Set-up

/// What a test adds to the relay's configuration: the tables (written into the lab
/// directory), the shipped status filter, a second listener with a `min_level`.
#[derive(Default)]
struct Levels<'a> {
    /// The destination table's text.
    destinations: Option<&'a str>,
    /// The sender table's text.
    senders: Option<&'a str>,
    /// `[delivery] status_filter` = deploy/status_filter.
    status_filter: bool,
    /// `min_level` of a second listener at [`second_listener`].
    second_listener: Option<&'a str>,
}

impl<'a> Levels<'a> {
    /// A destination table with `text`, nothing else.
    fn destinations(text: &'a str) -> Self {
        Levels {
            destinations: Some(text),
            ..Default::default()
        }
    }

    /// A sender table with `text`, nothing else.
    fn senders(text: &'a str) -> Self {
        Levels {
            senders: Some(text),
            ..Default::default()
        }
    }

    /// The same with the shipped status filter.
    fn with_status_filter(self) -> Self {
        Levels {
            status_filter: true,
            ..self
        }
    }

    /// The TOML snippet for a scene's `relay(extra_toml)`.
    fn toml(&self, lab: &Lab) -> String {
        let mut t = String::new();
        if let Some(level) = self.second_listener {
            t.push_str(&format!(
                "[[listener]]\naddress = \"{}\"\n[[listener]]\naddress = \"{}\"\nmin_level = \"{level}\"\n",
                lab.relay_addr(),
                second_listener(lab)
            ));
        }
        t.push_str("[delivery]\n");
        if let Some(text) = self.destinations {
            let path = write_table(lab.dir(), "tls_policy", text);
            t.push_str(&format!("tls_policy_file = {:?}\n", path.to_string_lossy()));
        }
        if let Some(text) = self.senders {
            let path = write_table(lab.dir(), "sender_tls_policy", text);
            t.push_str(&format!(
                "sender_tls_policy_file = {:?}\n",
                path.to_string_lossy()
            ));
        }
        if self.status_filter {
            let filter = shipped_status_filter();
            t.push_str(&format!("status_filter = {:?}\n", filter.to_string_lossy()));
        }
        t
    }
}

fn write_table(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a TLS policy table");
    path
}

/// Where the second listener (with its `min_level`) accepts mail.
fn second_listener(lab: &Lab) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab.ip(SECOND_LISTENER_HOST)), lab.port())
}

/// An MX host at `127.X.Y.n` offering STARTTLS with a lab-CA certificate for `names`, good or
/// broken as `options` say.
async fn tls_mx(lab: &Lab, n: u8, names: &[&str], options: CertOptions) -> SmtpServer {
    let issued = lab.ca.issue_with(names, options);
    lab.mx(
        n,
        Behaviour::plain().starttls(&issued.chain_pem, &issued.key_pem),
    )
    .await
}

/// `domain` (its own zone) with one MX host `mx.<domain>` at `127.X.Y.n`, offering STARTTLS with
/// a lab-CA certificate for that name, good or broken as `options` say.
async fn tls_domain(lab: &Lab, domain: &str, n: u8, options: CertOptions) -> SmtpServer {
    let mx = format!("mx.{domain}");
    lab.zone(Zone::new(domain).mx(10, &mx).a(&mx, lab.ip(n)));
    tls_mx(lab, n, &[&mx], options).await
}

/// An MTA-STS scene (no policy published) with `example.test`, whose one MX host
/// `mx.example.test` (lab host 3) offers no STARTTLS.
async fn plaintext_example_scene() -> (StsScene, SmtpServer) {
    let s = StsScene::new().await;
    let mx = s
        .lab()
        .domain_with_mx("example.test", 3, Behaviour::plain())
        .await;
    (s, mx)
}

/// A message from `from` to `rcpt`, with a body the tests can look for.
fn mail(from: &str, rcpt: &str, subject: &str) -> Submission {
    Submission::new(
        from,
        message(from, rcpt, subject, "Hello from the TLS levels lab.\n"),
    )
    .rcpt(rcpt)
}

/// The same with a `TLS-Required: No` header field (RFC 8689 §4.1).
fn mail_tls_not_required(from: &str, rcpt: &str, subject: &str) -> Submission {
    let mut data = b"TLS-Required: No\r\n".to_vec();
    data.extend(message(from, rcpt, subject, "Deliver me anyway.\n"));
    Submission::new(from, data).rcpt(rcpt)
}

/// Submits `s` at `addr` and waits for the delivery line of its first recipient with `status`.
async fn send_at(relay: &Relay, addr: SocketAddr, s: &Submission, status: &str) -> DeliveryLine {
    let mark = relay.log_mark();
    submit_ok(addr, s).await;
    relay
        .wait_for_delivery(mark, &s.rcpts[0].0, status, WAIT)
        .await
}

/// Submits `s` on the first listener; see [`send_at`].
async fn send(relay: &Relay, s: &Submission, status: &str) -> DeliveryLine {
    send_at(relay, relay.addr(), s, status).await
}

/// Submits a [`mail`] from `from` to `rcpt` on the first listener; see [`send_at`].
async fn send_mail(
    relay: &Relay,
    from: &str,
    rcpt: &str,
    subject: &str,
    status: &str,
) -> DeliveryLine {
    send(relay, &mail(from, rcpt, subject), status).await
}

// ---------------------------------------------------------------------------------------------
// Assertions

/// The relay said STARTTLS to `mx`.
fn said_starttls(mx: &SmtpServer) -> bool {
    mx.transcript()
        .iter()
        .any(|l| l.eq_ignore_ascii_case("C: STARTTLS"))
}

/// The DSN for `rcpt` says failed, `status`, and a diagnostic containing `diagnostic`.
#[track_caller]
fn assert_dsn(bounce: &Bounce, rcpt: &str, status: &str, diagnostic: &str) {
    let r = bounce.recipient(rcpt);
    assert_eq!(r.must("Action"), "failed");
    assert_eq!(r.must("Status"), status);
    let code = r.must("Diagnostic-Code");
    assert!(code.contains(diagnostic), "want {diagnostic:?} in {code}");
}

/// `rcpt`'s mail to the plaintext-only `mx.example.test` (lab host 3) under a level of
/// `encrypt`, with the status filter: bounced on the first attempt as 5.7.4, in Postfix's words.
#[track_caller]
fn assert_encrypt_bounced(lab: &Lab, relay: &Relay, d: &DeliveryLine, rcpt: &str) {
    assert_facts(d, "none", "local:encrypt", "5.7.4");
    assert_eq!(d.reply, lab.not_offered("551 5.7.4", "mx.example.test", 3));
    assert_never_deferred(relay, rcpt);
}

// ---------------------------------------------------------------------------------------------
// encrypt (destination table)

/// `example.test encrypt` and an MX without STARTTLS: deferred with Postfix's 4.7.4, the
/// policy named `local:encrypt`, and not a byte of the message in plaintext.
#[tokio::test]
async fn encrypt_defers_when_the_mx_offers_no_starttls() {
    let (s, mx) = plaintext_example_scene().await;
    let lab = s.lab();
    let relay = s
        .relay(&Levels::destinations("example.test encrypt\n").toml(lab))
        .await;

    let d = send_mail(&relay, SENDER, "bob@example.test", "encrypt", "deferred").await;
    assert_facts(&d, "none", "local:encrypt", "4.7.4");
    assert_eq!(d.reply, lab.not_offered("451 4.7.4", "mx.example.test", 3));
    assert_relayed_by(&d, "mx.example.test");
    assert_nothing_sent(&mx);
}

/// The same with the shipped status filter: rule 2 bounces it at once as 5.7.4, and the DSN
/// says so in Postfix's words.
#[tokio::test]
async fn encrypt_with_the_status_filter_bounces_at_once() {
    let (s, mx) = plaintext_example_scene().await;
    let lab = s.lab();
    let levels = Levels::destinations("example.test encrypt\n").with_status_filter();
    let relay = s.relay(&levels.toml(lab)).await;

    let rcpt = "bob@example.test";
    let d = send_mail(&relay, SENDER, rcpt, "encrypt", "bounced").await;
    assert_encrypt_bounced(lab, &relay, &d, rcpt);
    assert_nothing_sent(&mx);
    assert_dsn(
        &s.bounce().await,
        rcpt,
        "5.7.4",
        "TLS is required, but was not offered by host mx.example.test",
    );
}

// ---------------------------------------------------------------------------------------------
// verify and secure

/// `.example.test verify` covers `sub.example.test` (and `bad.example.test`) but not
/// `example.test` itself. Verified TLS to a host with a lab-CA certificate for its name; a
/// certificate for another name is refused with 4.7.5 "Server certificate not verified".
#[tokio::test]
async fn verify_covers_the_subdomains_of_a_dot_entry() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let (sub_mx, bad_mx) = ("mx.sub.example.test", "mx.bad.example.test");
    lab.zone(
        Zone::new("example.test")
            .mx(10, "mx.example.test")
            .a("mx.example.test", lab.ip(3))
            .mx_at("sub.example.test", 10, sub_mx)
            .a(sub_mx, lab.ip(4))
            .mx_at("bad.example.test", 10, bad_mx)
            .a(bad_mx, lab.ip(5)),
    );
    let plain = lab.mx(3, Behaviour::plain()).await;
    let good = tls_mx(lab, 4, &[sub_mx], CertOptions::default()).await;
    let bad = tls_mx(lab, 5, &[bad_mx], CertOptions::wrong_name()).await;
    let levels = Levels::destinations("# subdomains only\n.example.test verify\n");
    let relay = s.relay(&levels.toml(lab)).await;

    let d = send_mail(&relay, SENDER, "bob@sub.example.test", "sub", "sent").await;
    assert_facts(&d, "verified", "local:verify", "2.0.0");
    let m = good.next_message(WAIT).await;
    let tls = m.tls.expect("delivered over TLS");
    assert_eq!(tls.sni.as_deref(), Some(sub_mx), "SNI is the MX host name");

    let d = send_mail(&relay, SENDER, "bob@example.test", "parent", "sent").await;
    assert_facts(&d, "none", "none", "2.0.0");
    assert!(plain.next_message(WAIT).await.tls.is_none());

    let d = send_mail(&relay, SENDER, "bob@bad.example.test", "bad", "deferred").await;
    assert_not_verified(&d, "local:verify", "");
    assert_nothing_sent(&bad);
}

/// `secure` wants a certificate for the next-hop domain (or a subdomain), never only for the
/// MX host name that DNS alone vouches for: `example.test` (MX `mx10.other.test`, a
/// certificate for `example.test`) gets its mail; `partner.test` (MX `mx11.other.test`, a
/// certificate for exactly that MX name) does not.
#[tokio::test]
async fn secure_wants_a_certificate_for_the_domain_not_the_mx_host() {
    let s = StsScene::new().await;
    let lab = s.lab();
    lab.zone(
        Zone::new("other.test")
            .a("mx10.other.test", lab.ip(10))
            .a("mx11.other.test", lab.ip(11)),
    );
    lab.zone(Zone::new("example.test").mx(10, "mx10.other.test"));
    lab.zone(Zone::new("partner.test").mx(10, "mx11.other.test"));
    let for_domain = tls_mx(lab, 10, &["example.test"], CertOptions::default()).await;
    let for_host = tls_mx(lab, 11, &["mx11.other.test"], CertOptions::default()).await;
    let levels = Levels::destinations("example.test secure\npartner.test secure\n");
    let relay = s.relay(&levels.toml(lab)).await;

    let d = send_mail(&relay, SENDER, "bob@example.test", "domain", "sent").await;
    assert_facts(&d, "verified", "local:secure", "2.0.0");
    assert_relayed_by(&d, "mx10.other.test");
    assert!(for_domain.next_message(WAIT).await.tls.is_some());

    let d = send_mail(&relay, SENDER, "bob@partner.test", "host", "deferred").await;
    assert_not_verified(&d, "local:secure", "");
    assert_nothing_sent(&for_host);
}

// ---------------------------------------------------------------------------------------------
// none: a floor, never a ceiling

/// `none` for a domain that publishes nothing: no STARTTLS at all, though the MX offers it.
#[tokio::test]
async fn none_turns_starttls_off_where_nothing_is_published() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let mx = tls_domain(lab, "example.test", 3, CertOptions::default()).await;
    let relay = s
        .relay(&Levels::destinations("example.test none\n").toml(lab))
        .await;

    let d = send_mail(&relay, SENDER, "bob@example.test", "none", "sent").await;
    assert_facts(&d, "none", "local:none", "2.0.0");
    let m = mx.next_message(WAIT).await;
    assert!(m.tls.is_none(), "delivered in plaintext");
    let transcript = mx.transcript();
    assert!(
        transcript.iter().any(|l| l == "S: 250-STARTTLS"),
        "the MX offered STARTTLS: {transcript:#?}"
    );
    assert!(!said_starttls(&mx), "not used: {transcript:#?}");
}

/// `none` for a domain under an enforced MTA-STS policy does not weaken it: verified TLS.
#[tokio::test]
async fn none_does_not_weaken_an_enforced_mta_sts_policy() {
    let s = StsScene::new().await;
    let mx = s.tls_mx(10, &["mx10.example.test"]).await;
    s.publish_enforce_example();
    let relay = s
        .relay(&Levels::destinations("example.test none\n").toml(s.lab()))
        .await;

    let d = send_mail(&relay, SENDER, "bob@example.test", "sts", "sent").await;
    assert_facts(&d, "verified", "mta-sts", "2.0.0");
    assert!(mx.next_message(WAIT).await.tls.is_some());
    assert!(said_starttls(&mx));
}

/// `none` for a DANE domain does not weaken DANE: verified by its TLSA record.
#[tokio::test]
async fn none_does_not_weaken_dane() {
    let s = DaneScene::new().await;
    let mx = s.dane_ee_domain("dane.test", 10).await;
    let relay = s
        .relay(&Levels::destinations("dane.test none\n").toml(s.lab()))
        .await;

    let d = send(&relay, &s.mail("bob@dane.test", "dane"), "sent").await;
    assert_facts(&d, "verified", "dane", "2.0.0");
    assert!(mx.next_message(WAIT).await.tls.is_some());
}

// ---------------------------------------------------------------------------------------------
// dane-only

/// A DANE scene with `nodane.test` (unsigned, MX `mx10.nodane.test` with a good lab-CA
/// certificate) and `dane.test` (signed, MX `mx11.dane.test` with a matching DANE-EE record).
async fn dane_only_scene() -> (DaneScene, SmtpServer, SmtpServer) {
    let s = DaneScene::new().await;
    s.publish(s.zone("nodane.test", &[(10, 10)]));
    let nodane = tls_mx(s.lab(), 10, &["mx10.nodane.test"], CertOptions::default()).await;
    let dane = s.dane_ee_domain("dane.test", 11).await;
    (s, nodane, dane)
}

/// `dane-only`: a domain without DANE is deferred with 4.7.5 "DANE is required…" and its MX
/// is never contacted; a DANE domain with a matching TLSA record gets its mail (`policy=dane`).
#[tokio::test]
async fn dane_only_refuses_a_domain_without_dane() {
    let (s, nodane, dane) = dane_only_scene().await;
    let levels = Levels::destinations("nodane.test dane-only\ndane.test dane-only\n");
    let relay = s.relay(&levels.toml(s.lab())).await;

    let d = send(&relay, &s.mail("bob@nodane.test", "no dane"), "deferred").await;
    assert_facts(&d, "none", "local:dane-only", "4.7.5");
    assert_eq!(
        d.reply,
        "451 4.7.5 DANE is required, but host mx10.nodane.test has no usable TLSA records"
    );
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert_eq!(
        nodane.connections(),
        0,
        "a host DANE does not cover is not tried"
    );

    let d = send(&relay, &s.mail("bob@dane.test", "dane"), "sent").await;
    assert_facts(&d, "verified", "dane", "2.0.0");
    assert!(dane.next_message(WAIT).await.tls.is_some());
}

/// With the shipped status filter, rule 3 turns the `dane-only` 4.7.5 into a bounce at once.
#[tokio::test]
async fn dane_only_with_the_status_filter_bounces() {
    let (s, nodane, _dane) = dane_only_scene().await;
    let levels = Levels::destinations("nodane.test dane-only\n").with_status_filter();
    let relay = s.relay(&levels.toml(s.lab())).await;

    let rcpt = "bob@nodane.test";
    let d = send(&relay, &s.mail(rcpt, "no dane"), "bounced").await;
    assert_facts(&d, "none", "local:dane-only", "5.7.5");
    assert_eq!(
        d.reply,
        "551 5.7.5 DANE is required, but host mx10.nodane.test has no usable TLSA records"
    );
    assert_never_deferred(&relay, rcpt);
    assert_eq!(nodane.connections(), 0);
    assert_dsn(&s.bounce().await, rcpt, "5.7.5", "DANE is required");
}

// ---------------------------------------------------------------------------------------------
// The sender table

/// `alice@sender.test encrypt`: alice's mail to a plaintext-only MX bounces (with the status
/// filter) and its DSN — from the null sender, which no sender entry covers — reaches the
/// plaintext sender MX; bob@sender.test's mail to the same MX goes out in plaintext.
#[tokio::test]
async fn the_sender_table_forces_encryption_for_one_sender() {
    let (s, mx) = plaintext_example_scene().await;
    let lab = s.lab();
    let levels = Levels::senders("alice@sender.test encrypt\n").with_status_filter();
    let relay = s.relay(&levels.toml(lab)).await;

    let d = send_mail(&relay, BOB_SENDER, "carol@example.test", "bob", "sent").await;
    assert_facts(&d, "none", "none", "2.0.0");
    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_from, BOB_SENDER);
    assert!(m.tls.is_none());

    let rcpt = "dave@example.test";
    let d = send_mail(&relay, SENDER, rcpt, "alice", "bounced").await;
    assert_encrypt_bounced(lab, &relay, &d, rcpt);
    assert_eq!(mail_commands(&mx), 1, "only bob's message reached the MX");
    let bounce = s.bounce().await;
    assert_eq!(bounce.to, SENDER);
    assert_dsn(
        &bounce,
        rcpt,
        "5.7.4",
        "TLS is required, but was not offered",
    );
}

/// `@sender.test verify` covers every sender of the domain, but an address's own entry comes
/// first (`alice@sender.test encrypt`), and other domains' senders have no level. The MX
/// offers STARTTLS with a certificate for another name: encrypted, never verified.
#[tokio::test]
async fn sender_domain_entries_and_the_address_first() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let mx = tls_domain(lab, "example.test", 3, CertOptions::wrong_name()).await;
    let levels = Levels::senders("@sender.test verify\nalice@sender.test encrypt\n");
    let relay = s.relay(&levels.toml(lab)).await;

    let carol = "carol@sender.test";
    let d = send_mail(&relay, carol, "bob@example.test", "carol", "deferred").await;
    assert_not_verified(&d, "local:verify", "");
    assert_eq!(mail_commands(&mx), 0);

    let d = send_mail(&relay, SENDER, "dave@example.test", "alice", "sent").await;
    assert_facts(&d, "unverified", "local:encrypt", "2.0.0");
    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_from, SENDER);
    assert!(m.tls.is_some());

    let erin = "erin@elsewhere.test";
    let d = send_mail(&relay, erin, "frank@example.test", "other domain", "sent").await;
    assert_facts(&d, "unverified", "none", "2.0.0");
    assert_eq!(mx.next_message(WAIT).await.mail_from, erin);
}

// ---------------------------------------------------------------------------------------------
// Reloading the tables

/// Replaces `path`'s content with `text` in place, without changing its modification time:
/// only SIGHUP can make the relay notice.
fn rewrite_keeping_mtime(path: &Path, text: &str) {
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime of the table");
    // In place (same inode) and dated like the old one: the watcher sees no change at all.
    std::fs::write(path, text).expect("rewrite the table");
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(mtime))
        .expect("date the new table like the old one");
}

/// SIGHUP rereads the sender table: alice, delivered in plaintext before, is refused after
/// `alice@sender.test encrypt` is added (the file's modification time unchanged, so it was the
/// signal). A rewrite that does not parse leaves the previous table in force, and says so.
#[tokio::test]
async fn sighup_rereads_the_sender_table_and_a_broken_one_is_not_taken() {
    let (s, mx) = plaintext_example_scene().await;
    let lab = s.lab();
    let mut relay = s
        .relay(&Levels::senders("bob@sender.test encrypt\n").toml(lab))
        .await;
    let table = lab.dir().join("sender_tls_policy");

    let d = send_mail(&relay, SENDER, "r1@example.test", "before", "sent").await;
    assert_facts(&d, "none", "none", "2.0.0");
    assert!(mx.next_message(WAIT).await.tls.is_none());

    rewrite_keeping_mtime(
        &table,
        "bob@sender.test encrypt\nalice@sender.test encrypt\n",
    );
    // Two watcher ticks: the unchanged modification time alone reloads nothing.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let d = send_mail(&relay, SENDER, "r2@example.test", "no tick", "sent").await;
    assert_facts(&d, "none", "none", "2.0.0");
    mx.next_message(WAIT).await;

    let mark = relay.log_mark();
    relay.hangup();
    relay
        .wait_for_log_since(mark, |l| l.contains("SIGHUP: rereading"), WAIT)
        .await;
    relay
        .wait_for_log_since(
            mark,
            |l| l.contains("TLS policy table") && l.contains("sender_tls_policy reloaded"),
            WAIT,
        )
        .await;
    let d = send_mail(&relay, SENDER, "r3@example.test", "after", "deferred").await;
    assert_facts(&d, "none", "local:encrypt", "4.7.4");
    assert_eq!(mail_commands(&mx), 2, "nothing more reached the MX");

    // A broken table: were it taken even in part, alice would be `may` again.
    rewrite_keeping_mtime(&table, "alice@sender.test may\nbob@sender.test fortress\n");
    let mark = relay.log_mark();
    relay.hangup();
    let line = relay
        .wait_for_log_since(mark, |l| l.contains("not reloaded"), WAIT)
        .await;
    assert!(line.contains("line 2"), "the bad line is named: {line}");
    let d = send_mail(&relay, SENDER, "r4@example.test", "broken", "deferred").await;
    assert_facts(&d, "none", "local:encrypt", "4.7.4");
    assert_eq!(mail_commands(&mx), 2);
    assert!(relay.is_running(), "SIGHUP does not end the relay");
}

/// Without a signal, a changed file is reread within a few seconds (checked every 2 s).
#[tokio::test]
async fn a_changed_sender_table_is_reread_without_a_signal() {
    let (s, mx) = plaintext_example_scene().await;
    let lab = s.lab();
    let relay = s.relay(&Levels::senders("# nobody yet\n").toml(lab)).await;
    let table = lab.dir().join("sender_tls_policy");

    let d = send_mail(&relay, SENDER, "r1@example.test", "before", "sent").await;
    assert_facts(&d, "none", "none", "2.0.0");
    mx.next_message(WAIT).await;

    let mark = relay.log_mark();
    std::fs::write(&table, "alice@sender.test encrypt\n").expect("rewrite the table");
    relay
        .wait_for_log_since(mark, |l| l.contains("sender_tls_policy reloaded"), WAIT)
        .await;
    let d = send_mail(&relay, SENDER, "r2@example.test", "after", "deferred").await;
    assert_facts(&d, "none", "local:encrypt", "4.7.4");
    assert_eq!(mail_commands(&mx), 1);
}

// ---------------------------------------------------------------------------------------------
// The listener's min_level

/// A second listener with `min_level = "encrypt"` (Postfix's "forceenc" transport): its mail
/// to a plaintext-only MX bounces (status filter) while the DSN itself still reaches the
/// plaintext sender MX; the same mail on the first listener goes out in plaintext.
#[tokio::test]
async fn a_listener_min_level_forces_encryption_for_its_mail() {
    let (s, mx) = plaintext_example_scene().await;
    let lab = s.lab();
    let levels = Levels {
        second_listener: Some("encrypt"),
        status_filter: true,
        ..Default::default()
    };
    let relay = s.relay(&levels.toml(lab)).await;

    let rcpt = "bob@example.test";
    let forceenc = mail(SENDER, rcpt, "forceenc");
    let d = send_at(&relay, second_listener(lab), &forceenc, "bounced").await;
    assert_encrypt_bounced(lab, &relay, &d, rcpt);
    assert_nothing_sent(&mx);
    assert_dsn(
        &s.bounce().await,
        rcpt,
        "5.7.4",
        "TLS is required, but was not offered",
    );

    let d = send_mail(&relay, SENDER, "carol@example.test", "plain", "sent").await;
    assert_facts(&d, "none", "none", "2.0.0");
    assert!(mx.next_message(WAIT).await.tls.is_none());
}

// ---------------------------------------------------------------------------------------------
// The strictest wins

/// Destination `encrypt` + sender `verify` → verify; destination `verify` + listener
/// `encrypt` → verify. Both MX hosts offer TLS with a certificate for another name, so
/// `encrypt` alone delivers (the control) and `verify` refuses with 4.7.5.
#[tokio::test]
async fn the_strictest_level_wins() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let enc = tls_domain(lab, "enc.test", 3, CertOptions::wrong_name()).await;
    let ver = tls_domain(lab, "ver.test", 4, CertOptions::wrong_name()).await;
    let levels = Levels {
        destinations: Some("enc.test encrypt\nver.test verify\n"),
        senders: Some("alice@sender.test verify\n"),
        second_listener: Some("encrypt"),
        ..Default::default()
    };
    let relay = s.relay(&levels.toml(lab)).await;

    // The control: encrypt alone takes the unverifiable certificate.
    let d = send_mail(&relay, BOB_SENDER, "a@enc.test", "encrypt", "sent").await;
    assert_facts(&d, "unverified", "local:encrypt", "2.0.0");
    enc.next_message(WAIT).await;

    // Destination encrypt, sender verify.
    let d = send_mail(&relay, SENDER, "b@enc.test", "sender verify", "deferred").await;
    assert_not_verified(&d, "local:verify", "");

    // Destination verify, listener encrypt.
    let second = second_listener(lab);
    let dest_verify = mail(BOB_SENDER, "c@ver.test", "dest verify");
    let d = send_at(&relay, second, &dest_verify, "deferred").await;
    assert_not_verified(&d, "local:verify", "");
    assert_nothing_sent(&ver);

    // Destination encrypt, listener encrypt: still encrypt only.
    let both_encrypt = mail(BOB_SENDER, "d@enc.test", "both encrypt");
    let d = send_at(&relay, second, &both_encrypt, "sent").await;
    assert_facts(&d, "unverified", "local:encrypt", "2.0.0");
    assert_eq!(
        enc.messages().len(),
        2,
        "only the two encrypt-only messages"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS-Required: No (RFC 8689 §4.1)

/// `TLS-Required: No` sets an enforced MTA-STS policy aside: the MX's certificate for another
/// name is taken (`tls=unverified, policy=tls-required-no`). From a sender whose sender-table
/// entry is `encrypt`, or on a listener with `min_level = "encrypt"`, the header is ignored
/// and the policy holds (4.7.5).
#[tokio::test]
async fn tls_required_no_sets_a_policy_aside_unless_the_sender_is_bound() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let mx = tls_mx(lab, 10, &["mx10.example.test"], CertOptions::wrong_name()).await;
    s.publish_enforce_example();
    let levels = Levels {
        senders: Some("alice@sender.test encrypt\n"),
        second_listener: Some("encrypt"),
        ..Default::default()
    };
    let relay = s.relay(&levels.toml(lab)).await;

    let anyway = mail_tls_not_required(BOB_SENDER, "r1@example.test", "anyway");
    let d = send(&relay, &anyway, "sent").await;
    assert_facts(&d, "unverified", "tls-required-no", "2.0.0");
    let m = mx.next_message(WAIT).await;
    assert!(m.tls.is_some(), "still encrypted where offered");
    assert!(
        m.data_text().contains("TLS-Required: No\r\n"),
        "the header travels on"
    );

    let sender_bound = mail_tls_not_required(SENDER, "r2@example.test", "sender bound");
    let d = send(&relay, &sender_bound, "deferred").await;
    assert_not_verified(&d, "mta-sts", "");
    relay
        .wait_for_log(
            |l| l.contains("TLS-Required: No ignored for sender <alice@sender.test>"),
            WAIT,
        )
        .await;

    let listener_bound = mail_tls_not_required(BOB_SENDER, "r3@example.test", "listener bound");
    let d = send_at(&relay, second_listener(lab), &listener_bound, "deferred").await;
    assert_facts(&d, "none", "mta-sts", "4.7.5");
    assert_eq!(
        mx.messages().len(),
        1,
        "only the first message was delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// Levels meeting published policies

/// `secure` is a floor: under an enforced MTA-STS policy the certificate must still be valid
/// for the MX host name (RFC 8461 §4.2), whatever else `secure` accepts. A certificate only for
/// the domain `example.test` satisfies `secure` but not the policy: nothing may be sent.
#[tokio::test]
async fn secure_does_not_weaken_an_enforced_mta_sts_policy() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let mx = tls_mx(lab, 10, &["example.test"], CertOptions::default()).await;
    s.publish_enforce_example();
    let relay = s
        .relay(&Levels::destinations("example.test secure\n").toml(lab))
        .await;

    let d = send_mail(&relay, SENDER, "bob@example.test", "secure+sts", "deferred").await;
    assert_eq!(d.field("dsn"), Some("4.7.5"), "{}", d.line);
    assert_eq!(d.field("tls"), Some("none"), "{}", d.line);
    // Either names what demanded the check; both demand it here.
    assert!(
        matches!(d.field("policy"), Some("mta-sts" | "local:secure")),
        "{}",
        d.line
    );
    assert_reply_starts_with(&d, "451 4.7.5 Server certificate not verified");
    assert_nothing_sent(&mx);
}

/// `TLS-Required: No` sets DANE aside for the message, but a `dane-only` destination entry is
/// the operator's floor: the DANE domain must still be reached through DANE, not refused with
/// "has no usable TLSA records" about a host that has them.
#[tokio::test]
async fn tls_required_no_does_not_make_a_dane_only_domain_undeliverable() {
    let (s, _nodane, dane) = dane_only_scene().await;
    let relay = s
        .relay(&Levels::destinations("dane.test dane-only\n").toml(s.lab()))
        .await;

    let header = mail_tls_not_required(lab::dane::SENDER, "bob@dane.test", "header");
    let d = send(&relay, &header, "sent").await;
    assert_eq!(d.field("tls"), Some("verified"), "{}", d.line);
    assert_eq!(d.field("dsn"), Some("2.0.0"), "{}", d.line);
    // DANE authenticated the host; the log may name DANE or the header it overrode.
    assert!(
        matches!(d.field("policy"), Some("dane" | "tls-required-no")),
        "{}",
        d.line
    );
    assert!(dane.next_message(WAIT).await.tls.is_some());
}
