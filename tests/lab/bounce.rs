//! Reading what comes back: a delivery status notification (RFC 3464) as a test receives it at
//! the sender domain's lab MX. RFC 3462/6522: a `multipart/report; report-type=delivery-status`
//! with a human-readable part, a `message/delivery-status` part (per-message fields, a blank
//! line, then per-recipient field groups) and optionally the returned message or its headers.

use crate::lab::smtp::ReceivedMessage;
use mail_parser::{MessageParser, MimeHeaders};

/// `Name: value` fields of one group of a delivery-status body, in order; folded lines joined.
#[derive(Clone, Debug, Default)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The first value of field `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Like [`Fields::get`], panicking with all fields when missing.
    pub fn must(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| panic!("no {name} field in {:#?}", self.0))
    }
}

/// A parsed DSN.
#[derive(Clone, Debug)]
pub struct Bounce {
    /// The SMTP envelope it came with (MAIL FROM must be the null sender).
    pub envelope: ReceivedMessage,
    pub from: String,
    pub to: String,
    pub subject: String,
    /// `multipart/report`, from the top-level Content-Type.
    pub content_type: String,
    /// The `report-type` parameter.
    pub report_type: Option<String>,
    /// The first text/plain part: the explanation for people.
    pub human: String,
    pub per_message: Fields,
    pub per_recipient: Vec<Fields>,
    /// The third part's type (`message/rfc822`, `text/rfc822-headers`, …) and content.
    pub returned: Option<(String, Vec<u8>)>,
}

impl Bounce {
    pub fn parse(m: &ReceivedMessage) -> Bounce {
        let msg = MessageParser::default()
            .parse(&m.data)
            .expect("bounce parses as a message");
        let text = |a: Option<&mail_parser::Address>| {
            a.and_then(|a| a.first())
                .and_then(|a| a.address())
                .unwrap_or("")
                .to_string()
        };
        let ct = msg.content_type();
        let full_type = |ct: &mail_parser::ContentType| {
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase()
        };
        let mut bounce = Bounce {
            envelope: m.clone(),
            from: text(msg.from()),
            to: text(msg.to()),
            subject: msg.subject().unwrap_or("").to_string(),
            content_type: ct.map(full_type).unwrap_or_default(),
            report_type: ct
                .and_then(|c| c.attribute("report-type"))
                .map(str::to_string),
            human: String::new(),
            per_message: Fields::default(),
            per_recipient: Vec::new(),
            returned: None,
        };
        // The report's direct parts: part 0 is the multipart itself.
        let children = match &msg.parts[0].body {
            mail_parser::PartType::Multipart(ids) => ids.clone(),
            _ => Vec::new(),
        };
        for id in children {
            let part = &msg.parts[id as usize];
            let ty = part.content_type().map(full_type).unwrap_or_default();
            match ty.as_str() {
                "text/plain" if bounce.human.is_empty() => {
                    bounce.human = part.text_contents().unwrap_or("").to_string();
                }
                "message/delivery-status" | "message/global-delivery-status" => {
                    let mut groups = field_groups(&String::from_utf8_lossy(part.contents()));
                    if !groups.is_empty() {
                        bounce.per_message = groups.remove(0);
                    }
                    bounce.per_recipient = groups;
                }
                _ if bounce.returned.is_none() && !bounce.per_message.0.is_empty() => {
                    bounce.returned = Some((ty, part.contents().to_vec()));
                }
                _ => {}
            }
        }
        bounce
    }

    /// The per-recipient group whose Final-Recipient names `address`.
    pub fn recipient(&self, address: &str) -> &Fields {
        self.per_recipient
            .iter()
            .find(|f| {
                f.get("Final-Recipient").is_some_and(|v| {
                    v.rsplit(';')
                        .next()
                        .is_some_and(|a| a.trim().eq_ignore_ascii_case(address))
                })
            })
            .unwrap_or_else(|| panic!("no recipient {address} in {:#?}", self.per_recipient))
    }
}

/// Splits an RFC 3464 body into groups separated by blank lines, unfolding continuation lines.
pub fn field_groups(body: &str) -> Vec<Fields> {
    let mut groups = Vec::new();
    let mut current = Fields::default();
    for line in body.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.trim().is_empty() {
            if !current.0.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.0.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            current.0.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !current.0.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_folding() {
        let g = field_groups(
            "Reporting-MTA: dns; relay.lab.test\r\nArrival-Date: x\r\n\r\n\
             Final-Recipient: rfc822; bob@example.test\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n \
             user unknown\r\n\r\n",
        );
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].get("reporting-mta"), Some("dns; relay.lab.test"));
        assert_eq!(
            g[1].get("Diagnostic-Code"),
            Some("smtp; 550 5.1.1 user unknown")
        );
    }
}
