//! What a receiving server recorded of a message it accepted.

/// The TLS facts of a session, as the server saw them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3` / `TLSv1_2` (rustls's names).
    pub version: String,
    pub cipher: String,
    /// The server name the client sent (SNI), if any.
    pub sni: Option<String>,
}

/// One RCPT command the server accepted.
#[derive(Clone, Debug)]
pub struct Rcpt {
    pub address: String,
    /// ESMTP parameters as given, e.g. `NOTIFY=FAILURE`, `ORCPT=rfc822;bob@example.test`.
    pub params: Vec<String>,
}

impl Rcpt {
    /// The value of parameter `name` (case-insensitive keyword), if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.params, name)
    }
}

/// A message the server accepted with a 2xx after DATA.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub helo: String,
    /// The reverse-path without angle brackets; empty for `<>`.
    pub mail_from: String,
    /// ESMTP parameters of MAIL, e.g. `BODY=8BITMIME`, `RET=HDRS`, `ENVID=…`.
    pub mail_params: Vec<String>,
    /// The recipients accepted in this transaction.
    pub rcpts: Vec<Rcpt>,
    /// The message content: dot-unstuffed, ending with the CRLF before the final `.`.
    pub data: Vec<u8>,
    /// The data as the wire carried it, dot-stuffing and the final `.CRLF` included.
    pub raw_data: Vec<u8>,
    pub tls: Option<TlsInfo>,
}

impl ReceivedMessage {
    pub fn mail_param(&self, name: &str) -> Option<&str> {
        param(&self.mail_params, name)
    }

    pub fn rcpt_addresses(&self) -> Vec<&str> {
        self.rcpts.iter().map(|r| r.address.as_str()).collect()
    }

    pub fn data_text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Parses the content as an RFC 5322 message.
    pub fn parse(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("received data parses as a message")
    }
}

fn param<'a>(params: &'a [String], name: &str) -> Option<&'a str> {
    params.iter().find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p.as_str(), ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}
