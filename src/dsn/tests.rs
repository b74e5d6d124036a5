//! DSNs built here are read back with mail-parser, the way a mail client or a bounce processor
//! would read them, and each field RFC 3464 defines is checked.

use super::*;
use crate::envelope::{Envelope, Notify, Recipient, Ret};
use crate::queue_id::QueueId;
use crate::reply::{EnhancedCode, Reply};
use mail_parser::{DateTime, MessageParser, MimeHeaders, PartType};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BODY_MARKER: &str = "The secret body line.";

fn original_message() -> Vec<u8> {
    format!(
        "From: Alice <alice@local.test>\r\nTo: bob@example.net\r\nSubject: Lunch\r\n\
         Message-ID: <lunch.1@local.test>\r\n\r\n{BODY_MARKER}\r\nSecond line.\r\n"
    )
    .into_bytes()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// One recipient's outcome, as the queue would describe it.
struct Outcome {
    rcpt: Recipient,
    action: Action,
    reply: Reply,
    remote_mta: Option<&'static str>,
    reply_from_remote: bool,
    last_attempt: Option<SystemTime>,
    will_retry_until: Option<SystemTime>,
}

fn failed(address: &str, code: u16, text: &str) -> Outcome {
    Outcome {
        rcpt: Recipient::new(address),
        action: Action::Failed,
        reply: Reply::from_remote(code, text),
        remote_mta: Some("mx1.example.net"),
        reply_from_remote: true,
        last_attempt: Some(at(1_700_000_100)),
        will_retry_until: None,
    }
}

fn delayed(address: &str) -> Outcome {
    Outcome {
        action: Action::Delayed,
        will_retry_until: Some(at(1_700_432_000)),
        ..failed(address, 451, "4.3.0 Try again later")
    }
}

/// The message and envelope a report is about; the default is a plain failure case.
struct Scenario {
    envelope: Envelope,
    message: Vec<u8>,
    outcomes: Vec<Outcome>,
}

impl Default for Scenario {
    fn default() -> Self {
        let mut envelope = Envelope::new("alice@local.test");
        envelope.recipients.push(Recipient::new("bob@example.net"));
        envelope.arrival = at(1_700_000_000);
        Scenario {
            envelope,
            message: original_message(),
            outcomes: vec![failed(
                "bob@example.net",
                550,
                "5.1.1 <bob@example.net>: user unknown",
            )],
        }
    }
}

impl Scenario {
    /// The default message and envelope, with these outcomes.
    fn with_outcomes(outcomes: Vec<Outcome>) -> Scenario {
        Scenario {
            outcomes,
            ..Default::default()
        }
    }

    /// The default failure, for a message submitted with `RET=ret`.
    fn with_ret(ret: Ret) -> Scenario {
        let mut s = Scenario::default();
        s.envelope.ret = Some(ret);
        s
    }

    /// The default failure, with an ENVID and an ORCPT to echo.
    fn with_envid_and_orcpt() -> Scenario {
        let mut s = Scenario::default();
        s.envelope.envid = Some("QQ314159".into());
        s.outcomes[0].rcpt.orcpt = Some(("rfc822".into(), "Bob@Example.NET".into()));
        s
    }
}

/// A built DSN: its envelope, its bytes, and accessors that read it back with mail-parser.
struct Dsn {
    envelope: Envelope,
    raw: Vec<u8>,
}

impl Scenario {
    fn build(&self) -> Option<Dsn> {
        let id = QueueId::parse("0123456789ABC0001").expect("valid id");
        let report = Report {
            reporting_mta: "relay.local.test",
            queue_id: &id,
            original: &self.envelope,
            message: &self.message,
            confidential: false,
            recipients: self
                .outcomes
                .iter()
                .map(|o| RecipientReport {
                    rcpt: &o.rcpt,
                    action: o.action,
                    reply: &o.reply,
                    remote_mta: o.remote_mta,
                    reply_from_remote: o.reply_from_remote,
                    last_attempt: o.last_attempt,
                    will_retry_until: o.will_retry_until,
                })
                .collect(),
        };
        build(&report).map(|(envelope, raw)| Dsn { envelope, raw })
    }

    fn dsn(&self) -> Dsn {
        self.build().expect("a DSN")
    }
}

/// The fields of one block of a delivery-status part, unfolded.
struct Block(Vec<(String, String)>);

impl Block {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn field(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.0))
    }
}

impl Dsn {
    fn parsed(&self) -> mail_parser::Message<'_> {
        MessageParser::default()
            .parse(&self.raw)
            .expect("DSN parses")
    }

    fn part_of_type(&self, ctype: &str) -> Option<(Vec<u8>, String)> {
        let msg = self.parsed();
        msg.parts.iter().find_map(|p| {
            let ct = p.content_type()?;
            let full = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
            (full == ctype).then(|| {
                let cte = p
                    .headers
                    .iter()
                    .find(|h| h.name().eq_ignore_ascii_case("Content-Transfer-Encoding"))
                    .and_then(|h| h.value().as_text().map(str::to_string))
                    .unwrap_or_default();
                let body = match &p.body {
                    PartType::Message(m) => m.raw_message().to_vec(),
                    _ => p.contents().to_vec(),
                };
                (body, cte)
            })
        })
    }

    /// The delivery-status part split into blocks, each parsed as a header section by
    /// mail-parser (RFC 3464 §2.1: the fields have header syntax).
    fn blocks(&self) -> Vec<Block> {
        let (body, cte) = self
            .part_of_type("message/delivery-status")
            .or_else(|| self.part_of_type("message/global-delivery-status"))
            .expect("a delivery-status part");
        assert!(cte == "7bit" || cte == "8bit", "transfer encoding {cte:?}");
        let text = String::from_utf8(body).expect("utf-8");
        text.split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .map(|b| {
                let block = format!("{}\r\n\r\n", b.trim_end());
                let parsed = MessageParser::default()
                    .parse_headers(block.as_bytes())
                    .expect("block parses");
                Block(
                    parsed
                        .headers_raw()
                        .map(|(n, v)| (n.to_string(), v.replace("\r\n", "").trim().to_string()))
                        .collect(),
                )
            })
            .collect()
    }

    fn text(&self) -> String {
        self.parsed()
            .body_text(0)
            .expect("a text part")
            .into_owned()
    }

    fn header(&self, name: &str) -> String {
        self.parsed()
            .header_raw(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .replace("\r\n", "")
            .trim()
            .to_string()
    }

    /// The returned original: `(content type, bytes)`.
    fn returned(&self) -> (&'static str, Vec<u8>) {
        for t in [
            "message/rfc822",
            "text/rfc822-headers",
            "message/global",
            "message/global-headers",
        ] {
            if let Some((body, _)) = self.part_of_type(t) {
                return (t, body);
            }
        }
        panic!("no returned message part")
    }

    fn returns_body(&self) -> bool {
        let (_, body) = self.returned();
        String::from_utf8_lossy(&body).contains(BODY_MARKER)
    }
}

fn date_secs(value: &str) -> i64 {
    DateTime::parse_rfc822(value)
        .unwrap_or_else(|| panic!("bad date {value:?}"))
        .to_timestamp()
}

/// Prints a sample for eyes: `cargo test --lib dsn::tests::sample -- --nocapture --ignored`.
#[test]
#[ignore]
fn sample() {
    let mut s = Scenario::with_envid_and_orcpt();
    s.outcomes.push(delayed("dave@example.org"));
    println!("{}", String::from_utf8_lossy(&s.dsn().raw));
}

#[test]
fn failure_dsn_has_every_rfc3464_field() {
    let dsn = Scenario::with_envid_and_orcpt().dsn();

    let msg = dsn.parsed();
    assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
    let from = msg.from().and_then(|a| a.first()).expect("From");
    assert_eq!(from.address(), Some("MAILER-DAEMON@relay.local.test"));
    assert_eq!(from.name(), Some("Mail Delivery System"));
    let to = msg.to().and_then(|a| a.first()).expect("To");
    assert_eq!(to.address(), Some("alice@local.test"));
    assert!(msg
        .message_id()
        .is_some_and(|id| id.ends_with("@relay.local.test")));
    assert!(msg.date().is_some());
    assert_eq!(dsn.header("Auto-Submitted"), "auto-replied");
    let ct = msg.content_type().expect("Content-Type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

    let blocks = dsn.blocks();
    assert_eq!(blocks.len(), 2, "per-message block and one recipient block");
    let m = &blocks[0];
    assert_eq!(m.field("Reporting-MTA"), "dns; relay.local.test");
    assert_eq!(m.field("X-Mxguard-Queue-ID"), "0123456789ABC0001");
    assert_eq!(m.field("Original-Envelope-Id"), "QQ314159");
    assert_eq!(date_secs(m.field("Arrival-Date")), 1_700_000_000);

    let r = &blocks[1];
    assert_eq!(r.field("Original-Recipient"), "rfc822; Bob@Example.NET");
    assert_eq!(r.field("Final-Recipient"), "rfc822; bob@example.net");
    assert_eq!(r.field("Action"), "failed");
    assert_eq!(r.field("Status"), "5.1.1");
    assert_eq!(r.field("Remote-MTA"), "dns; mx1.example.net");
    assert_eq!(
        r.field("Diagnostic-Code"),
        "smtp; 550 5.1.1 <bob@example.net>: user unknown"
    );
    assert_eq!(date_secs(r.field("Last-Attempt-Date")), 1_700_000_100);
    assert_eq!(r.get("Will-Retry-Until"), None);

    let text = dsn.text();
    assert!(text.contains("<bob@example.net>"), "{text}");
    assert!(
        text.contains("host mx1.example.net said: 550 5.1.1"),
        "{text}"
    );
}

#[test]
fn dsn_envelope_is_null_sender_to_original_sender_never_notify() {
    let dsn = Scenario::default().dsn();
    let e = &dsn.envelope;
    assert!(e.is_null_sender());
    assert_eq!(e.recipients.len(), 1);
    assert_eq!(e.recipients[0].address, "alice@local.test");
    assert_eq!(
        e.recipients[0].notify,
        Some(Notify {
            never: true,
            ..Notify::default()
        })
    );
    assert!(!e.recipients[0].wants_failure_dsn());
    assert!(e.arrival.elapsed().unwrap_or_default() < Duration::from_secs(60));
    assert!(!e.requiretls && !e.smtputf8);
}

#[test]
fn null_sender_never_gets_a_dsn() {
    let mut s = Scenario::default();
    s.envelope.mail_from = String::new();
    assert!(s.build().is_none());
}

#[test]
fn no_recipients_no_dsn() {
    assert!(Scenario::with_outcomes(vec![]).build().is_none());
}

#[test]
fn ret_full_returns_the_whole_message() {
    let dsn = Scenario::with_ret(Ret::Full).dsn();
    let (ctype, body) = dsn.returned();
    assert_eq!(ctype, "message/rfc822");
    assert_eq!(body, original_message(), "returned byte for byte");
    // mail-parser sees it as a nested message.
    let msg = dsn.parsed();
    let nested = msg
        .parts
        .iter()
        .find_map(|p| p.message())
        .expect("nested message");
    assert_eq!(nested.subject(), Some("Lunch"));
}

#[test]
fn no_ret_returns_the_whole_message_like_postfix() {
    assert!(Scenario::default().dsn().returns_body());
}

#[test]
fn ret_hdrs_returns_the_header_section_only() {
    let dsn = Scenario::with_ret(Ret::Headers).dsn();
    let (ctype, body) = dsn.returned();
    assert_eq!(ctype, "text/rfc822-headers");
    let body = String::from_utf8(body).expect("ascii");
    assert!(body.contains("Subject: Lunch"), "{body}");
    assert!(!dsn.returns_body());
    assert!(!String::from_utf8_lossy(&dsn.raw).contains(BODY_MARKER));
}

#[test]
fn requiretls_message_never_returns_its_body() {
    let mut s = Scenario::with_ret(Ret::Full);
    s.envelope.requiretls = true;
    let dsn = s.dsn();
    assert_eq!(dsn.returned().0, "text/rfc822-headers");
    assert!(!String::from_utf8_lossy(&dsn.raw).contains(BODY_MARKER));
    assert!(!dsn.envelope.requiretls);
}

#[test]
fn oversized_message_returns_headers_only() {
    let line = "x".repeat(998);
    let mut big = original_message();
    while big.len() <= MAX_RETURNED_MESSAGE {
        big.extend_from_slice(line.as_bytes());
        big.extend_from_slice(b"\r\n");
    }
    let s = Scenario {
        message: big,
        ..Default::default()
    };
    let dsn = s.dsn();
    assert_eq!(dsn.returned().0, "text/rfc822-headers");
    assert!(dsn.raw.len() < 16 * 1024);
}

#[test]
fn several_recipients_in_one_dsn() {
    let mut s = Scenario::default();
    s.outcomes
        .push(failed("carol@example.net", 552, "5.2.2 mailbox full"));
    s.outcomes.push(delayed("dave@example.org"));
    let dsn = s.dsn();
    assert_eq!(
        dsn.parsed().subject(),
        Some("Undelivered Mail Returned to Sender")
    );
    let blocks = dsn.blocks();
    assert_eq!(blocks.len(), 4);
    let finals: Vec<&str> = blocks[1..]
        .iter()
        .map(|b| b.field("Final-Recipient"))
        .collect();
    assert_eq!(
        finals,
        [
            "rfc822; bob@example.net",
            "rfc822; carol@example.net",
            "rfc822; dave@example.org"
        ]
    );
    assert_eq!(blocks[2].field("Status"), "5.2.2");
    assert_eq!(blocks[3].field("Action"), "delayed");
    assert_eq!(blocks[3].field("Status"), "4.3.0");
    assert_eq!(
        date_secs(blocks[3].field("Will-Retry-Until")),
        1_700_432_000
    );
    assert!(blocks[1..3]
        .iter()
        .all(|b| b.get("Will-Retry-Until").is_none()));
    let text = dsn.text();
    for who in [
        "<bob@example.net>",
        "<carol@example.net>",
        "<dave@example.org>",
    ] {
        assert!(text.contains(who), "{text}");
    }
}

#[test]
fn delay_warning() {
    let dsn = Scenario::with_outcomes(vec![delayed("bob@example.net")]).dsn();
    assert_eq!(
        dsn.parsed().subject(),
        Some("Delayed Mail (still being retried)")
    );
    let r = &dsn.blocks()[1];
    assert_eq!(r.field("Action"), "delayed");
    assert_eq!(
        r.field("Diagnostic-Code"),
        "smtp; 451 4.3.0 Try again later"
    );
    assert_eq!(date_secs(r.field("Will-Retry-Until")), 1_700_432_000);
    // RFC 3461 §4.3: only failures return the full message.
    assert!(!dsn.returns_body());
    let text = dsn.text().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains("keep trying until Sun, 19 Nov 2023 22:13:20 +0000"),
        "{text}"
    );
}

#[test]
fn success_report() {
    let ok = Outcome {
        action: Action::Delivered,
        ..failed("bob@example.net", 250, "2.0.0 Ok: queued as 4F2A")
    };
    let relayed = Outcome {
        action: Action::Relayed,
        ..failed("carol@example.net", 250, "2.0.0 Ok")
    };
    let dsn = Scenario::with_outcomes(vec![ok, relayed]).dsn();
    assert_eq!(
        dsn.parsed().subject(),
        Some("Successful Mail Delivery Report")
    );
    let blocks = dsn.blocks();
    assert_eq!(blocks[1].field("Action"), "delivered");
    assert_eq!(blocks[1].field("Status"), "2.0.0");
    assert_eq!(blocks[2].field("Action"), "relayed");
    assert!(!dsn.returns_body());
}

#[test]
fn our_own_verdict_has_no_remote_mta() {
    let mut o = failed("bob@nullmx.example", 550, "");
    o.reply = Reply::new(
        550,
        EnhancedCode::new(5, 1, 10),
        "Domain nullmx.example does not accept mail (null MX)",
    );
    o.remote_mta = None;
    let dsn = Scenario::with_outcomes(vec![o]).dsn();
    let r = &dsn.blocks()[1];
    assert_eq!(r.get("Remote-MTA"), None);
    assert_eq!(r.field("Status"), "5.1.10");
    assert!(r
        .field("Diagnostic-Code")
        .starts_with("X-Mxguard; 550 5.1.10 Domain"));
}

#[test]
fn our_own_text_about_a_reached_host_is_not_an_smtp_diagnostic() {
    // RFC 3464 §2.3.6: `smtp;` is for what the server said; mxguard wrote this one.
    let mut o = failed("bob@example.net", 451, "");
    o.action = Action::Delayed;
    o.reply = Reply::new(
        451,
        EnhancedCode::new(4, 4, 2),
        "lost connection with mx1.example.net[192.0.2.25] while sending RCPT TO",
    );
    o.reply_from_remote = false;
    let dsn = Scenario::with_outcomes(vec![o]).dsn();
    let r = &dsn.blocks()[1];
    assert_eq!(r.field("Remote-MTA"), "dns; mx1.example.net");
    assert_eq!(
        r.field("Diagnostic-Code"),
        "X-Mxguard; 451 4.4.2 lost connection with mx1.example.net[192.0.2.25] while \
         sending RCPT TO"
    );
}

#[test]
fn line_breaks_in_a_remote_reply_cannot_inject_fields() {
    let o = failed(
        "bob@example.net",
        550,
        "5.7.1 rejected\r\nX-Injected: yes\r\n\r\nAction: delivered\nStatus: 2.0.0\r\n",
    );
    let dsn = Scenario::with_outcomes(vec![o]).dsn();
    let blocks = dsn.blocks();
    assert_eq!(blocks.len(), 2, "no extra block was opened");
    let r = &blocks[1];
    assert_eq!(r.get("X-Injected"), None);
    assert_eq!(r.field("Action"), "failed");
    assert_eq!(r.field("Status"), "5.7.1");
    assert_eq!(
        r.field("Diagnostic-Code"),
        "smtp; 550 5.7.1 rejected X-Injected: yes Action: delivered Status: 2.0.0"
    );
    assert!(dsn.parsed().header_raw("X-Injected").is_none());
}

#[test]
fn very_long_replies_are_capped_and_lines_stay_short() {
    let reply = format!("5.7.1 {}", "z".repeat(5000));
    let dsn = Scenario::with_outcomes(vec![failed("bob@example.net", 550, &reply)]).dsn();
    let diag = dsn.blocks()[1].field("Diagnostic-Code").to_string();
    assert!(diag.len() < 1000, "{}", diag.len());
    assert!(diag.ends_with("..."));
    // RFC 5322 §2.1.1: no line longer than 998 characters anywhere in the DSN.
    assert!(dsn.raw.split(|&b| b == b'\n').all(|l| l.len() <= 1000));
}

#[test]
fn every_line_ends_in_crlf_even_for_a_bare_lf_original() {
    let s = Scenario {
        message: b"Subject: bare\n\nline one\nline two\n".to_vec(),
        ..Default::default()
    };
    let dsn = s.dsn();
    let raw = &dsn.raw;
    assert!(raw
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'\n' || (i > 0 && raw[i - 1] == b'\r')));
    let (_, body) = dsn.returned();
    assert_eq!(body, b"Subject: bare\r\n\r\nline one\r\nline two\r\n");
}

#[test]
fn internationalised_addresses_use_the_global_report() {
    let mut s = Scenario::default();
    s.envelope.mail_from = "j\u{f6}rg@local.test".into();
    s.envelope.smtputf8 = true;
    s.outcomes = vec![failed("b\u{f6}b@example.net", 550, "5.1.1 unknown")];
    let dsn = s.dsn();
    assert!(dsn.envelope.smtputf8);
    assert_eq!(dsn.envelope.recipients[0].address, "j\u{f6}rg@local.test");
    let r = &dsn.blocks()[1];
    assert_eq!(r.field("Final-Recipient"), "utf-8; b\u{f6}b@example.net");
}
