//! Building one DSN message (RFC 3464, inside RFC 6522's `multipart/report`).
//!
//! A DSN has three parts: a text a person can read, a `message/delivery-status` part a program
//! can read (one block of per-message fields, then one block per recipient), and the original
//! message or its header section. It travels from the null sender to the original envelope
//! sender, so that it can never cause another DSN (RFC 5321 §4.5.5).

use super::fields::{
    clean, cut_at_line, header_section, push_field, rfc5322_date, to_crlf, Charset, MAX_FIELD_VALUE,
};
use crate::envelope::{BodyType, Envelope, Notify, Recipient, Ret};
use crate::queue_id::QueueId;
use crate::reply::Reply;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest original message returned whole. A bigger one comes back as its header section
/// only: a bounce should not double the load of a large message on the sender's mailbox, and
/// many receivers would refuse a DSN that big anyway.
pub const MAX_RETURNED_MESSAGE: usize = 1024 * 1024;

/// RFC 3464 §2.3.3: what happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Delivery failed and will not be tried again.
    Failed,
    /// Not delivered yet; still being retried.
    Delayed,
    /// Delivered to a server that confirmed it (the sender asked with NOTIFY=SUCCESS).
    Delivered,
    /// Handed to a server that does not send DSNs itself, so no further report will come.
    Relayed,
}

impl Action {
    /// The field value RFC 3464 §2.3.3 defines.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to say about one recipient.
#[derive(Debug, Clone)]
pub struct RecipientReport<'a> {
    /// The recipient as queued, with its ORCPT.
    pub rcpt: &'a Recipient,
    pub action: Action,
    /// The status and its explanation. When `reply_from_remote` is set, this is the reply
    /// `remote_mta` gave and appears as `Diagnostic-Code: smtp; …`; otherwise it is mxguard's
    /// own verdict (no MX, policy failure, lost connection, expiry) and appears as
    /// `X-Mxguard; …`.
    pub reply: &'a Reply,
    /// The host name of the server the session was held with, if one was reached.
    pub remote_mta: Option<&'a str>,
    /// `reply` is what `remote_mta` sent, not a text mxguard wrote during the session.
    pub reply_from_remote: bool,
    pub last_attempt: Option<SystemTime>,
    /// For `Delayed`: when the queue will give up.
    pub will_retry_until: Option<SystemTime>,
}

/// Everything a DSN about one queued message says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our host name (`config.hostname`): Reporting-MTA and the From address.
    pub reporting_mta: &'a str,
    pub queue_id: &'a QueueId,
    pub original: &'a Envelope,
    /// The original message as queued, with CRLF line ends.
    pub message: &'a [u8],
    pub recipients: Vec<RecipientReport<'a>>,
    /// The sender's side (its table entry or its listener) demanded more TLS than the
    /// automatic level: the DSN, which may travel without TLS, never returns the body.
    pub confidential: bool,
}

/// Builds the DSN for `report`: the envelope to queue it under and the message. `None` when no
/// DSN may be sent: the original came from the null sender (RFC 5321 §4.5.5, RFC 3464 §1: a
/// DSN is never sent about a DSN), or there is nobody to report on.
pub fn build(report: &Report) -> Option<(Envelope, Vec<u8>)> {
    if report.original.is_null_sender() || report.recipients.is_empty() {
        return None;
    }
    let host = host_name(report.reporting_mta);
    let charset = if needs_utf8(report) {
        Charset::Utf8
    } else {
        Charset::Ascii
    };
    let message = to_crlf(report.message);
    let returned = Returned::choose(report, &message);

    let text = MimePart::new(
        ContentType::new("text/plain").attribute("charset", "utf-8"),
        BodyPart::Text(human_text(report, &host, &returned).into()),
    )
    .header("Content-Description", Raw::new("Notification"));
    let status = MimePart::new(
        ContentType::new(match charset {
            Charset::Ascii => "message/delivery-status",
            Charset::Utf8 => "message/global-delivery-status",
        }),
        BodyPart::Binary(delivery_status(report, &host, charset).into_bytes().into()),
    )
    .header("Content-Description", Raw::new("Delivery report"))
    // mail-builder would base64 a part it does not know as text; RFC 3464 §2.1 wants it 7bit.
    .transfer_encoding(match charset {
        Charset::Ascii => "7bit",
        Charset::Utf8 => "8bit",
    });
    let original = returned.part(report.original.smtputf8 || charset == Charset::Utf8);

    let sender = clean(&report.original.mail_from, Charset::Utf8, MAX_FIELD_VALUE);
    let subject = match overall(&report.recipients) {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        Action::Delivered | Action::Relayed => "Successful Mail Delivery Report",
    };
    let bytes = MessageBuilder::new()
        .from(Address::new_address(
            Some("Mail Delivery System"),
            format!("MAILER-DAEMON@{host}"),
        ))
        .to(Address::new_address(None::<&str>, sender))
        .subject(subject)
        .date(Date::now())
        .message_id(MessageId::new(message_id(report.queue_id, &host)))
        // RFC 3834 §5: a DSN is an automatic response; auto-responders must not answer it.
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            BodyPart::Multipart(vec![text, status, original]),
        ))
        .write_to_vec()
        .ok()?;

    let mut envelope = Envelope::new("");
    envelope.recipients.push(Recipient {
        address: report.original.mail_from.clone(),
        orcpt: None,
        // A DSN about a DSN is never wanted (RFC 3461 §5.2.7 would not send one anyway).
        notify: Some(Notify {
            never: true,
            ..Notify::default()
        }),
    });
    envelope.body = if bytes.is_ascii() {
        BodyType::SevenBit
    } else {
        BodyType::EightBitMime
    };
    // RFC 6531: a UTF-8 address in the envelope or the header needs SMTPUTF8.
    envelope.smtputf8 = charset == Charset::Utf8;
    // RFC 8689 §5 lets the DSN of a REQUIRETLS message travel without REQUIRETLS as long as it
    // does not carry the body, which `Returned::choose` ensures.
    envelope.requiretls = false;
    Some((envelope, bytes))
}

/// The action the Subject speaks of when recipients differ: a failure matters most.
fn overall(recipients: &[RecipientReport]) -> Action {
    let has = |a: Action| recipients.iter().any(|r| r.action == a);
    [Action::Failed, Action::Delayed, Action::Delivered]
        .into_iter()
        .find(|&a| has(a))
        .unwrap_or(Action::Relayed)
}

/// Does any address or the ENVID need UTF-8 (RFC 6533: then the report is `global`)?
fn needs_utf8(report: &Report) -> bool {
    let o = report.original;
    !o.mail_from.is_ascii()
        || o.envid.as_deref().is_some_and(|e| !e.is_ascii())
        || report.recipients.iter().any(|r| {
            !r.rcpt.address.is_ascii() || r.rcpt.orcpt.as_ref().is_some_and(|(_, a)| !a.is_ascii())
        })
}

/// Our host name as it may appear in `dns;` fields and the From address.
fn host_name(configured: &str) -> String {
    let name: String = configured
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(253)
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// `QUEUEID.N.TIME@host`: unique because queue ids are, and `N` tells apart several DSNs about
/// one message (a delay warning, then the bounce).
fn message_id(queue_id: &QueueId, host: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{queue_id}.{n}.{secs:X}.dsn@{host}")
}

/// How much of the original message goes back, and why the body stays behind.
enum Returned<'m> {
    Full(&'m [u8]),
    Headers(&'m [u8], Omitted),
}

#[derive(Clone, Copy)]
enum Omitted {
    /// RET=HDRS (RFC 3461 §4.3).
    AskedForHeaders,
    /// RFC 8689 §5: the DSN of a REQUIRETLS message may travel without TLS, so never the body.
    RequireTls,
    /// The same care for a message a sender or listener level forced onto TLS.
    Confidential,
    /// Larger than [`MAX_RETURNED_MESSAGE`].
    TooLarge,
    /// RFC 3461 §4.3: RET=FULL concerns failures; delay and success reports return headers.
    NotAFailure,
}

impl<'m> Returned<'m> {
    fn choose(report: &Report, message: &'m [u8]) -> Returned<'m> {
        let headers = cut_at_line(header_section(message), MAX_RETURNED_MESSAGE);
        let omitted = if report.original.requiretls {
            Some(Omitted::RequireTls)
        } else if report.confidential {
            Some(Omitted::Confidential)
        } else if report.original.ret == Some(Ret::Headers) {
            Some(Omitted::AskedForHeaders)
        } else if !report.recipients.iter().any(|r| r.action == Action::Failed) {
            Some(Omitted::NotAFailure)
        } else if message.len() > MAX_RETURNED_MESSAGE {
            Some(Omitted::TooLarge)
        } else {
            // RET=FULL, or no RET at all: like Postfix, return the whole message.
            None
        };
        match omitted {
            Some(why) => Returned::Headers(headers, why),
            None => Returned::Full(message),
        }
    }

    /// The third part of the report. `global` selects RFC 6533's types for a message whose
    /// header section may hold UTF-8.
    fn part(&self, global: bool) -> MimePart<'m> {
        let (content, global_type, ascii_type, description) = match *self {
            Returned::Full(m) => (m, "message/global", "message/rfc822", "Undelivered Message"),
            Returned::Headers(h, _) => (
                h,
                "message/global-headers",
                "text/rfc822-headers",
                "Message Headers",
            ),
        };
        let eight_bit = !content.is_ascii();
        let content_type = if global && eight_bit {
            global_type
        } else {
            ascii_type
        };
        MimePart::new(
            ContentType::new(content_type),
            BodyPart::Binary(content.into()),
        )
        .header("Content-Description", Raw::new(description))
        // RFC 2046 §5.2.1: message/* is never base64 or quoted-printable; pass it as is.
        .transfer_encoding(if eight_bit { "8bit" } else { "7bit" })
    }
}

/// The `message/delivery-status` body: per-message fields, then a block per recipient, each
/// block preceded by an empty line (RFC 3464 §2.1).
fn delivery_status(report: &Report, host: &str, cs: Charset) -> String {
    let mut out = String::with_capacity(512 + 512 * report.recipients.len());
    // RFC 3464 §2.2: per-message fields.
    push_field(&mut out, "Reporting-MTA", &format!("dns; {host}"), cs);
    push_field(
        &mut out,
        "X-Mxguard-Queue-ID",
        &report.queue_id.as_str(),
        cs,
    );
    if let Some(envid) = &report.original.envid {
        // RFC 3464 §2.2.1: the ENVID as the client gave it (decoded from xtext).
        push_field(&mut out, "Original-Envelope-Id", envid, cs);
    }
    push_field(
        &mut out,
        "Arrival-Date",
        &rfc5322_date(report.original.arrival),
        cs,
    );

    for r in &report.recipients {
        out.push_str("\r\n");
        // RFC 3464 §2.3.1: only when the client gave ORCPT, with its own address type.
        if let Some((addr_type, addr)) = &r.rcpt.orcpt {
            let value = format!("{}; {addr}", address_type(addr_type));
            push_field(&mut out, "Original-Recipient", &value, cs);
        }
        // RFC 3464 §2.3.2, RFC 6533 §3: "utf-8" for an internationalised address.
        let final_type = if r.rcpt.address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        let value = format!("{final_type}; {}", r.rcpt.address);
        push_field(&mut out, "Final-Recipient", &value, cs);
        push_field(&mut out, "Action", r.action.as_str(), cs);
        push_field(&mut out, "Status", &r.reply.status().to_string(), cs);
        if let Some(mta) = r.remote_mta {
            push_field(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", host_name(mta)),
                cs,
            );
        }
        // RFC 3464 §2.3.6: `smtp;` is the reply exactly as the remote server gave it (on one
        // line); a text mxguard wrote, even about a reached host, has its own type.
        let diagnostic = match r.remote_mta {
            Some(_) if r.reply_from_remote => format!("smtp; {}", r.reply),
            _ => format!("X-Mxguard; {}", r.reply),
        };
        push_field(&mut out, "Diagnostic-Code", &diagnostic, cs);
        if let Some(t) = r.last_attempt {
            push_field(&mut out, "Last-Attempt-Date", &rfc5322_date(t), cs);
        }
        if r.action == Action::Delayed {
            if let Some(t) = r.will_retry_until {
                push_field(&mut out, "Will-Retry-Until", &rfc5322_date(t), cs);
            }
        }
    }
    out
}

/// An address type is an atom (RFC 3464 §2.1.2); anything else falls back to rfc822.
fn address_type(given: &str) -> &str {
    let ok = !given.is_empty()
        && given.len() <= 64
        && given.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        given
    } else {
        "rfc822"
    }
}

/// The part for people: which recipients, what happened, what the remote server said, and for
/// delays until when we keep trying. Written in the spirit of Postfix's notices so users and
/// helpdesks recognise it.
fn human_text(report: &Report, host: &str, returned: &Returned) -> String {
    let mut t = String::with_capacity(1024);
    t.push_str(&format!("This is the mail relay at host {host}.\r\n"));
    for action in [
        Action::Failed,
        Action::Delayed,
        Action::Delivered,
        Action::Relayed,
    ] {
        let group: Vec<&RecipientReport> = report
            .recipients
            .iter()
            .filter(|r| r.action == action)
            .collect();
        if group.is_empty() {
            continue;
        }
        t.push_str("\r\n");
        t.push_str(match action {
            Action::Failed => {
                "Your message could not be delivered to the recipients below. This is a\r\n\
                 permanent failure: the relay has given up on them. If the reason can be\r\n\
                 fixed, the message must be sent again.\r\n"
            }
            Action::Delayed => {
                "Your message has not been delivered yet to the recipients below. This is\r\n\
                 only a warning: the relay keeps trying, and you do not need to send the\r\n\
                 message again.\r\n"
            }
            Action::Delivered => "Your message was delivered to the recipients below.\r\n",
            Action::Relayed => {
                "Your message was passed on to the recipients below, to a system that will\r\n\
                 not confirm the final delivery.\r\n"
            }
        });
        for r in group {
            t.push_str("\r\n");
            t.push_str(&recipient_line(r));
        }
    }
    t.push_str("\r\n");
    t.push_str(match returned {
        Returned::Full(_) => "The original message is attached.\r\n",
        Returned::Headers(_, why) => match why {
            Omitted::AskedForHeaders => {
                "Only the header section of the original message is attached, as the\r\n\
                 sender asked (RET=HDRS).\r\n"
            }
            Omitted::RequireTls => {
                "Only the header section of the original message is attached: the message\r\n\
                 required TLS (REQUIRETLS), and this report might travel without it.\r\n"
            }
            Omitted::Confidential => {
                "Only the header section of the original message is attached: the message\r\n\
                 was to leave only over TLS, and this report might travel without it.\r\n"
            }
            Omitted::TooLarge => {
                "Only the header section of the original message is attached: the message\r\n\
                 is too large to be returned whole.\r\n"
            }
            Omitted::NotAFailure => "The header section of the original message is attached.\r\n",
        },
    });
    t
}

/// `<bob@example.net>: host mx1.example.net said: 550 5.1.1 No such user`, one paragraph.
fn recipient_line(r: &RecipientReport) -> String {
    let mut line = format!(
        "<{}>",
        clean(&r.rcpt.address, Charset::Utf8, MAX_FIELD_VALUE)
    );
    if let Some((_, orig)) = &r.rcpt.orcpt {
        if !orig.eq_ignore_ascii_case(&r.rcpt.address) {
            let orig = clean(orig, Charset::Utf8, MAX_FIELD_VALUE);
            line.push_str(&format!(" (originally <{orig}>)"));
        }
    }
    let reply = clean(&r.reply.to_string(), Charset::Utf8, MAX_FIELD_VALUE);
    match r.remote_mta {
        Some(mta) if r.reply_from_remote => {
            line.push_str(&format!(": host {} said: {reply}", host_name(mta)))
        }
        _ => line.push_str(&format!(": {reply}")),
    }
    if r.action == Action::Delayed {
        if let Some(until) = r.will_retry_until {
            line.push_str(&format!(
                " (the relay will keep trying until {})",
                rfc5322_date(until)
            ));
        }
    }
    wrap(&line, 76)
}

/// Wraps a paragraph at spaces into CRLF lines of about `width` characters.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut column = 0;
    for word in text.split(' ') {
        if column > 0 && column + 1 + word.chars().count() > width {
            out.push_str("\r\n    ");
            column = 4;
        } else if column > 0 {
            out.push(' ');
            column += 1;
        }
        out.push_str(word);
        column += word.chars().count();
    }
    out.push_str("\r\n");
    out
}
