//! Inbound SMTP command lines, as a client sends them to mxguard's server.
//!
//! Calls `mxguard::inbound::command::parse` on every line of the input (and on the whole
//! input as one line), `parse_mail_params` / `parse_rcpt_params` on the raw text (what follows
//! `MAIL FROM:<…>` / `RCPT TO:<…>`), the path helpers, and builds the `Received:` header from
//! the HELO name and recipient a session would have accepted.
//!
//! Besides "never panics", it checks two properties a peer must not be able to break:
//! - a refusal's reply text is one line (no CR or LF a client could inject into our reply);
//! - the `Received:` header built from client text stays one header field: every line break
//!   is CRLF followed by a tab.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::inbound::command::{parse, Command};
use mxguard::inbound::params::{parse_mail_params, parse_rcpt_params};
use mxguard::inbound::path::{check_mailbox, split_path, valid_domain};
use mxguard::inbound::received::Trace;
use mxguard::reply::Reply;

fn check_refusal(reply: &Reply) {
    assert!(
        !reply.text.contains(['\r', '\n']),
        "reply text carries a line break: {reply:?}"
    );
    assert!(
        (400..600).contains(&reply.code),
        "refusal with a non-failure code: {reply:?}"
    );
    let wire = reply.to_wire();
    assert!(wire.ends_with("\r\n"));
    assert_eq!(wire.matches("\r\n").count(), 1, "one-line reply: {wire:?}");
}

/// Every line break of the header is CRLF, followed by a tab unless it ends the header.
fn check_header(header: &str) {
    assert!(header.starts_with("Received: "), "{header:?}");
    assert!(header.ends_with("\r\n"), "{header:?}");
    let body = header[..header.len() - 2].as_bytes();
    for (i, &b) in body.iter().enumerate() {
        let ok = match b {
            b'\r' => body.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && body[i - 1] == b'\r' && body.get(i + 1) == Some(&b'\t'),
            _ => true,
        };
        assert!(ok, "header line break not CRLF + fold at {i}: {header:?}");
    }
}

fn received(helo: &str, recipient: &str, utf8: bool) {
    let recipients = [recipient];
    let trace = Trace {
        helo,
        client_name: None,
        client_ip: std::net::IpAddr::from([192, 0, 2, 1]),
        by: "relay.example.org",
        id: "0123456789ABCDEF0",
        esmtp: true,
        tls: None,
        authenticated: false,
        smtputf8: utf8,
        recipients: &recipients,
    };
    check_header(&trace.header(time::OffsetDateTime::UNIX_EPOCH));
}

fn one_line(line: &[u8], helo: &mut Option<String>) {
    match parse(line) {
        Ok(Command::Ehlo(name)) | Ok(Command::Helo(name)) => {
            assert!(!name.is_empty());
            assert!(!name.chars().any(|c| c.is_control() && c != '\t'));
            *helo = Some(name);
        }
        Ok(Command::Mail { from, params: _ }) => {
            if !from.is_empty() {
                assert!(check_mailbox(&from).is_ok(), "accepted sender {from:?}");
            }
        }
        Ok(Command::Rcpt { to, params: _ }) => {
            assert!(check_mailbox(&to).is_ok(), "accepted recipient {to:?}");
            let name = helo.as_deref().unwrap_or("client.example");
            received(name, &to, false);
            received(name, &to, true);
        }
        Ok(Command::Auth { mechanism, initial }) => {
            assert!(!mechanism.is_empty());
            assert!(!mechanism.contains(' '));
            assert!(!initial.is_some_and(|i| i.is_empty() || i.contains(' ')));
        }
        Ok(_) => {}
        Err(reply) => check_refusal(&reply),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut helo = None;
    // The session hands `parse` one line without its line end.
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        one_line(line, &mut helo);
    }
    // The whole input as one (possibly odd) line: control bytes, CRs, invalid UTF-8.
    one_line(data, &mut helo);

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The parameter parsers on their own, fed what follows the path.
    if let Err(r) = parse_mail_params(text) {
        check_refusal(&r);
    }
    if let Err(r) = parse_rcpt_params(text) {
        check_refusal(&r);
    }
    if let Ok((path, rest)) = split_path(text) {
        assert!(text.len() >= path.len() + rest.len());
        let _ = check_mailbox(&path);
    }
    let _ = valid_domain(text);
    // Arbitrary client text as HELO name and recipient of the Received: header.
    received(text, text, false);
    received(text, text, true);
});
