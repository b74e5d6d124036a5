//! The SMTP envelope of an accepted message, with the DSN parameters of RFC 3461 that must
//! travel with it (RET, ENVID on MAIL; NOTIFY, ORCPT on RCPT) so bounces can honour them.

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// RFC 3461 §4.3: how much of the original message a failure DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Headers,
}

/// RFC 6152 / RFC 3030: the body type declared on MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// RFC 3461 §4.1: which events the sender wants a DSN for. `None` on the recipient means the
/// client gave no NOTIFY, and the default (failure, and delay at our discretion) applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path as given in RCPT TO, without angle brackets.
    pub address: String,
    /// RFC 3461 §4.2 ORCPT: `(addr-type, decoded address)`, e.g. `("rfc822", "bob@example.net")`.
    pub orcpt: Option<(String, String)>,
    pub notify: Option<Notify>,
}

impl Recipient {
    pub fn new(address: impl Into<String>) -> Self {
        Recipient {
            address: address.into(),
            orcpt: None,
            notify: None,
        }
    }

    /// Lower-cased domain part, the unit MX resolution and policy work on.
    pub fn domain(&self) -> String {
        domain_of(&self.address)
    }

    /// Does the sender want a failure DSN for this recipient? (RFC 3461 §4.1: default yes.)
    pub fn wants_failure_dsn(&self) -> bool {
        self.notify.is_none_or(|n| n.failure && !n.never)
    }

    /// Does the sender want a delay DSN? Without NOTIFY, we send delay warnings when configured.
    pub fn wants_delay_dsn(&self) -> bool {
        self.notify.is_none_or(|n| n.delay && !n.never)
    }

    pub fn wants_success_dsn(&self) -> bool {
        self.notify.is_some_and(|n| n.success && !n.never)
    }
}

/// The domain part of an address, lower-cased; empty when there is none.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// Facts about the client that handed us the message, for `Received:` and the logs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    pub helo: String,
    pub addr: String,
    /// TLS protocol and cipher if the session was encrypted, e.g. `TLSv1.3 TLS_AES_128_GCM_SHA256`.
    pub tls: Option<String>,
    pub auth_user: Option<String>,
    /// The listener the message came in on (its configured address), for per-listener policy.
    pub listener: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse-path without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    pub ret: Option<Ret>,
    /// RFC 3461 §4.4 ENVID, decoded from xtext.
    pub envid: Option<String>,
    pub body: BodyType,
    pub smtputf8: bool,
    /// RFC 8689 REQUIRETLS was given on MAIL FROM.
    #[serde(default)]
    pub requiretls: bool,
    /// The `min_level` of the listener the message came in on.
    #[serde(default)]
    pub min_tls_level: Option<crate::tls_policy::TlsLevel>,
    /// A TLS report of ours (RFC 8460 §5.3): delivered as if it said `TLS-Required: No`, so
    /// that the TLS failures it reports cannot stop it, and its sessions are not counted.
    #[serde(default)]
    pub tls_report: bool,
    /// When the message was accepted (the DSN's Arrival-Date).
    pub arrival: SystemTime,
    pub client: ClientInfo,
}

impl Envelope {
    pub fn new(mail_from: impl Into<String>) -> Self {
        Envelope {
            mail_from: mail_from.into(),
            recipients: Vec::new(),
            ret: None,
            envid: None,
            body: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            min_tls_level: None,
            tls_report: false,
            arrival: SystemTime::now(),
            client: ClientInfo::default(),
        }
    }

    /// A bounce is never sent for a message from the null sender (RFC 5321 §4.5.5).
    pub fn is_null_sender(&self) -> bool {
        self.mail_from.is_empty()
    }
}

/// RFC 3461 §4: xtext encoding of ENVID and ORCPT values: `+XX` for `+`, `=`, and any byte
/// outside `!`..`~`.
pub fn xtext_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes xtext; `None` on a malformed `+XX` sequence.
pub fn xtext_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_round_trip() {
        let raw = "a+b=c d\u{e9}";
        let enc = xtext_encode(raw);
        assert_eq!(enc, "a+2Bb+3Dc+20d+C3+A9");
        assert_eq!(xtext_decode(&enc).as_deref(), Some(raw));
        assert_eq!(xtext_decode("bad+zz"), None);
        assert_eq!(xtext_decode("cut+4"), None);
    }

    #[test]
    fn notify_defaults() {
        let mut r = Recipient::new("Bob@Example.NET");
        assert_eq!(r.domain(), "example.net");
        assert!(r.wants_failure_dsn());
        r.notify = Some(Notify {
            never: true,
            ..Default::default()
        });
        assert!(!r.wants_failure_dsn());
        assert!(!r.wants_delay_dsn());
    }
}
