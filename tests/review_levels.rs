//! Review findings on local TLS levels, REQUIRETLS and the tables (tests that fail today).

mod lab;

use lab::bounce::Bounce;
use lab::dane::DaneScene;
use lab::relay::{shipped_status_filter, DeliveryLine};
use lab::smtp::Behaviour;
use lab::sts::{StsScene, SENDER};
use lab::submit::{message, submit_ok, Submission};
use lab::WAIT;
use mxguard::tls_policy::{DestinationTable, ReloadingTable, SenderTable, Table, TlsLevel};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

// ---------------------------------------------------------------------------------------------
// IDN: a table key can only be an A-label, but the domain looked up may be a U-label.

/// Mail for `bob@bücher.test` (SMTPUTF8) is routed by its A-label `xn--bcher-kva.test` (the
/// resolver converts), but the destination table is looked up with the raw U-label: the
/// operator's `encrypt` entry, which must be written as the A-label (a U-label key is refused
/// at parse), never applies, and the mail goes out with no floor at all.
#[test]
fn a_destination_entry_applies_to_the_u_label_form_of_its_domain() {
    let t = DestinationTable::parse("xn--bcher-kva.test encrypt\n.xn--bcher-kva.test verify\n")
        .expect("A-label keys parse");
    assert_eq!(t.lookup("xn--bcher-kva.test"), Some(TlsLevel::Encrypt));
    assert_eq!(
        t.lookup("bücher.test"),
        Some(TlsLevel::Encrypt),
        "the U-label form of the same domain gets the same floor"
    );
    assert_eq!(t.lookup("mx.bücher.test"), Some(TlsLevel::Verify));
    assert_eq!(t.lookup("BÜCHER.test"), Some(TlsLevel::Encrypt));
}

/// The same for the sender table: `@xn--bcher-kva.test encrypt` must cover a sender written
/// `alice@bücher.test` (SMTPUTF8 MAIL FROM).
#[test]
fn a_sender_domain_entry_applies_to_the_u_label_form_of_its_domain() {
    let t = SenderTable::parse("@xn--bcher-kva.test encrypt\n").expect("parses");
    assert_eq!(
        t.lookup("alice@xn--bcher-kva.test"),
        Some(TlsLevel::Encrypt)
    );
    assert_eq!(
        t.lookup("alice@bücher.test"),
        Some(TlsLevel::Encrypt),
        "the U-label form of the sender domain gets the same floor"
    );
}

// ---------------------------------------------------------------------------------------------
// Reloading: a table being rewritten in place is taken half-written.

/// The 2-s watcher reloads on any modification time change and accepts whatever parses. A
/// table regenerated in place (`gen-table > sender_tls_policy`, `cp`, an editor writing in
/// place) is, for as long as the writer runs, empty or cut after a complete line: it parses,
/// so it replaces the table in force, and the forced senders lose their floor until the write
/// finishes (their mail meanwhile goes out in plaintext). Postfix never sees a half-built
/// table (postmap builds aside and renames). A reload should take only a file that was
/// replaced whole (new inode, i.e. renamed into place) or has been stable for a while, and
/// SIGHUP for in-place edits.
#[test]
fn a_table_rewritten_in_place_is_not_taken_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sender_tls_policy");
    std::fs::write(
        &path,
        "alice@example.org encrypt\nbob@example.org encrypt\n",
    )
    .unwrap();
    let table = ReloadingTable::<SenderTable>::open(&path).unwrap();
    assert_eq!(
        table.current().lookup("bob@example.org"),
        Some(TlsLevel::Encrypt)
    );

    // A generator starts rewriting the file in place: truncated, the first line written.
    let mut writer = std::fs::File::create(&path).unwrap();
    writer.write_all(b"alice@example.org encrypt\n").unwrap();
    writer.flush().unwrap();
    // The watcher ticks while the writer is still at work.
    table.reload_if_changed();
    assert_eq!(
        table.current().lookup("bob@example.org"),
        Some(TlsLevel::Encrypt),
        "bob lost his floor to a half-written table"
    );
    writer.write_all(b"bob@example.org encrypt\n").unwrap();
}

// ---------------------------------------------------------------------------------------------
// dane-only with [dns] dnssec = "off": our own set-up, bounced as the destination's fault.

/// With `dnssec = "off"` no TLSA record is ever looked up, so a `dane-only` entry can never be
/// met. Today the destination, which does publish a matching DANE-EE record, is told
/// "DANE is required, but host … has no usable TLSA records" with 4.7.5, which the shipped
/// status filter turns into a 5.7.5 bounce at once. DESIGN.md: a fault of our own set-up must
/// stay transient whatever the filter says (and never claim a verdict about the destination).
/// The fix: `check-config` (and start-up) refuses a `dane-only` entry with DNSSEC off; a table
/// that gains one while the daemon runs defers with 4.7.0 "DNSSEC is off here", which no
/// status filter rule hardens.
#[tokio::test]
async fn dane_only_with_dnssec_off_is_not_bounced_as_the_destinations_fault() {
    let s = DaneScene::new().await;
    let _mx = s.dane_ee_domain("dane.test", 11).await;
    let table = s.lab().dir().join("tls_policy");
    std::fs::write(&table, "dane.test dane-only\n").unwrap();
    let toml = format!(
        "[dns]\ndnssec = \"off\"\n[delivery]\ntls_policy_file = {:?}\n",
        table.to_string_lossy()
    );
    let refused = mxguard::config::Config::from_toml(&toml)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("delivery.tls_policy_file") && refused.contains("dane-only needs DNSSEC"),
        "{refused}"
    );

    // Started with a harmless table, which then gains the entry (written aside, renamed).
    std::fs::write(&table, "# nothing yet\n").unwrap();
    let extra = format!(
        "dnssec = \"off\"\n[delivery]\ntls_policy_file = {:?}\nstatus_filter = {:?}\n",
        table.to_string_lossy(),
        shipped_status_filter().to_string_lossy()
    );
    let relay = s.relay(&extra).await;
    let mark = relay.log_mark();
    let aside = s.lab().dir().join("tls_policy.new");
    std::fs::write(&aside, "dane.test dane-only\n").unwrap();
    std::fs::rename(&aside, &table).unwrap();
    relay
        .wait_for_log_since(mark, |l| l.contains("tls_policy reloaded"), WAIT)
        .await;

    let rcpt = "bob@dane.test";
    let mark = relay.log_mark();
    submit_ok(relay.addr(), &s.mail(rcpt, "dane-only, dnssec off")).await;
    let line = relay
        .wait_for_log_since(
            mark,
            |l| DeliveryLine::parse(l).is_some_and(|d| d.to.eq_ignore_ascii_case(rcpt)),
            WAIT,
        )
        .await;
    let d = DeliveryLine::parse(&line).unwrap();
    assert_eq!(d.status, "deferred", "{}", d.line);
    assert!(
        d.reply
            .starts_with("451 4.7.0 DANE is required for host mx11.dane.test, but DNSSEC is off"),
        "{}",
        d.line
    );
}

// ---------------------------------------------------------------------------------------------
// The DSN of a forced-encryption message carries its body in plaintext.

/// A message accepted on a `min_level = "encrypt"` listener (the forceenc recipe) must never
/// travel unencrypted. When it bounces, the DSN (null sender, no `min_tls_level`, RET absent
/// so the whole message is returned) carries the full original body to the sender's MX over
/// plaintext. RFC 8689 §5 solves the same problem for REQUIRETLS by returning headers only;
/// the same should hold for a message under a sender or listener level (or the DSN should
/// inherit the level).
#[tokio::test]
async fn the_dsn_of_a_forced_encryption_message_does_not_leak_its_body_in_plaintext() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let _mx = lab
        .domain_with_mx("example.test", 3, Behaviour::plain())
        .await;
    let second = SocketAddr::new(IpAddr::V4(lab.ip(7)), lab.port());
    let extra = format!(
        "[[listener]]\naddress = \"{}\"\n[[listener]]\naddress = \"{}\"\nmin_level = \"encrypt\"\n\
         [delivery]\nstatus_filter = {:?}\n",
        lab.relay_addr(),
        second,
        shipped_status_filter().to_string_lossy()
    );
    let relay = s.relay(&extra).await;
    let rcpt = "bob@example.test";
    let secret = "The merger closes on Friday.";
    let submission = Submission::new(
        SENDER,
        message(SENDER, rcpt, "confidential", &format!("{secret}\n")),
    )
    .rcpt(rcpt);
    let mark = relay.log_mark();
    submit_ok(second, &submission).await;
    relay.wait_for_delivery(mark, rcpt, "bounced", WAIT).await;

    let bounce: Bounce = s.bounce().await;
    let in_plaintext = bounce.envelope.tls.is_none();
    let carries_body = bounce.envelope.data_text().contains(secret);
    assert!(
        !(in_plaintext && carries_body),
        "the forced-encryption message's body went out in plaintext inside its DSN"
    );
}
