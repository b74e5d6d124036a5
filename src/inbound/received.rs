//! The `Received:` trace header (RFC 5321 §4.4) we prepend to every accepted message, in
//! Postfix's layout, with the protocol keyword of RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) or
//! RFC 6531 §3.7.3 (UTF8SMTP…), the queue id, and the TLS version and cipher as a comment.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// What the header says about one transaction.
#[derive(Debug, Clone)]
pub struct Trace<'a> {
    /// The HELO/EHLO argument.
    pub helo: &'a str,
    /// The client's verified host name, when known.
    pub client_name: Option<&'a str>,
    pub client_ip: std::net::IpAddr,
    /// Our host name.
    pub by: &'a str,
    /// The queue id the message will be stored under.
    pub id: &'a str,
    pub esmtp: bool,
    /// What the TLS session negotiated.
    pub tls: Option<&'a crate::tls::Negotiated>,
    pub authenticated: bool,
    pub smtputf8: bool,
    /// RFC 5321 §4.4 `for`: only with a single recipient, so one message does not list the
    /// others' addresses to each of them.
    pub recipients: &'a [&'a str],
}

/// RFC 5322 §3.3 date-time, in UTC (the local offset cannot be read safely in a threaded
/// process).
const DATE: &[FormatItem<'static>] = format_description!(
    "[weekday repr:short], [day padding:none] [month repr:short] [year] [hour]:[minute]:[second] +0000"
);

/// Header text must stay one printable line per fold: anything a client sent that is not
/// printable (or not ASCII, unless SMTPUTF8 allows it) is replaced.
fn clean(text: &str, utf8: bool) -> String {
    text.chars()
        .map(|c| {
            let ok = if c.is_ascii() {
                c.is_ascii_graphic()
            } else {
                utf8 && !c.is_control()
            };
            if ok {
                c
            } else {
                '?'
            }
        })
        .collect()
}

impl Trace<'_> {
    /// RFC 3848 / RFC 6531 §3.7.3 `with` keyword.
    pub fn protocol(&self) -> String {
        let base = match (self.smtputf8, self.esmtp) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        let tls = if self.tls.is_some() { "S" } else { "" };
        let auth = if self.authenticated { "A" } else { "" };
        format!("{base}{tls}{auth}")
    }

    pub fn header(&self, now: OffsetDateTime) -> String {
        let utf8 = self.smtputf8;
        let ip = self.client_ip.to_canonical();
        let literal = match ip {
            std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        let name = self
            .client_name
            .map(|n| clean(n, false))
            .unwrap_or_else(|| format!("[{literal}]"));
        let mut h = format!(
            "Received: from {} ({name} [{literal}])\r\n",
            clean(self.helo, utf8)
        );
        if let Some(n) = self.tls {
            // Postfix's wording, key exchange included: which mail was protected how.
            let kx =
                n.kx.as_ref()
                    .map_or(String::new(), |k| format!(" key-exchange {k}"));
            h.push_str(&format!(
                "\t(using {} with cipher {}{kx})\r\n",
                n.version, n.cipher
            ));
        }
        h.push_str(&format!(
            "\tby {} (mxguard) with {} id {}",
            self.by,
            self.protocol(),
            self.id
        ));
        if let [only] = self.recipients {
            h.push_str(&format!("\r\n\tfor <{}>", clean(only, utf8)));
        }
        let date = now.format(DATE).unwrap_or_default();
        h.push_str(&format!("; {date}\r\n"));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiated(version: &str, cipher: &str) -> crate::tls::Negotiated {
        crate::tls::Negotiated {
            version: version.into(),
            cipher: cipher.into(),
            kx: Some("X25519MLKEM768".into()),
        }
    }

    fn trace<'a>(recipients: &'a [&'a str]) -> Trace<'a> {
        Trace {
            helo: "client.example",
            client_name: None,
            client_ip: "192.0.2.1".parse().unwrap(),
            by: "relay.example",
            id: "0123456789ABCDEF0",
            esmtp: true,
            tls: None,
            authenticated: false,
            smtputf8: false,
            recipients,
        }
    }

    #[test]
    fn layout() {
        let now = time::macros::datetime!(2024-11-05 09:03:07 UTC);
        let h = trace(&["bob@example.net"]).header(now);
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.1] [192.0.2.1])\r\n\
             \tby relay.example (mxguard) with ESMTP id 0123456789ABCDEF0\r\n\
             \tfor <bob@example.net>; Tue, 5 Nov 2024 09:03:07 +0000\r\n"
        );
        let mut t = trace(&["a@x", "b@y"]);
        let tls = negotiated("TLSv1.3", "TLS13_AES_256_GCM_SHA384");
        t.tls = Some(&tls);
        t.authenticated = true;
        t.helo = "evil\u{7f}(x)";
        let h = t.header(now);
        assert!(
            h.contains(
                "\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384 key-exchange \
                 X25519MLKEM768)\r\n"
            ),
            "{h}"
        );
        assert!(h.contains("with ESMTPSA id 0123456789ABCDEF0; Tue"), "{h}");
        assert!(!h.contains("for <"), "{h}");
        assert!(h.starts_with("Received: from evil?(x) "), "{h}");
    }

    #[test]
    fn protocols() {
        let mut t = trace(&[]);
        assert_eq!(t.protocol(), "ESMTP");
        t.esmtp = false;
        assert_eq!(t.protocol(), "SMTP");
        t.smtputf8 = true;
        let tls = negotiated("TLSv1.2", "x");
        t.tls = Some(&tls);
        assert_eq!(t.protocol(), "UTF8SMTPS");
        t.authenticated = true;
        assert_eq!(t.protocol(), "UTF8SMTPSA");
    }
}
