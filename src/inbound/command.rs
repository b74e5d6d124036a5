//! SMTP commands (RFC 5321 §4.1.1): one line from the client becomes a [`Command`] or the
//! reply that refuses it. Parsing knows nothing of the session's state.

use super::params::{parse_mail_params, parse_rcpt_params, MailParams, RcptParams};
use super::path::{check_mailbox, split_path};
use crate::reply::{EnhancedCode, Reply};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `from` is empty for the null reverse-path `<>`.
    Mail {
        from: String,
        params: MailParams,
    },
    Rcpt {
        to: String,
        params: RcptParams,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// RFC 4954 §4: `AUTH mechanism [initial-response]`; the mechanism upper-cased.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// A command we know but do not offer (EXPN, BDAT, …): 502.
    NotImplemented,
}

fn syntax(usage: &str) -> Reply {
    Reply::new(501, EnhancedCode::new(5, 5, 4), format!("Syntax: {usage}"))
}

pub fn unrecognized() -> Reply {
    Reply::new(
        500,
        EnhancedCode::new(5, 5, 2),
        "Error: command not recognized",
    )
}

/// Parses one command line, without its line end.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    // Commands are text: binary garbage or control characters are nothing we understand, and
    // must never reach a log line or a header.
    let line = std::str::from_utf8(line).map_err(|_| unrecognized())?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(unrecognized());
    }
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, args) = match line.split_once(' ') {
        Some((v, a)) => (v, a.trim()),
        None => (line, ""),
    };
    let no_args = |command: Command, usage: &str| {
        if args.is_empty() {
            Ok(command)
        } else {
            Err(syntax(usage))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => hello(args, "EHLO hostname").map(Command::Ehlo),
        "HELO" => hello(args, "HELO hostname").map(Command::Helo),
        "MAIL" => mail(args),
        "RCPT" => rcpt(args),
        "DATA" => no_args(Command::Data, "DATA"),
        "RSET" => no_args(Command::Rset, "RSET"),
        "QUIT" => no_args(Command::Quit, "QUIT"),
        "STARTTLS" => no_args(Command::StartTls, "STARTTLS"),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if args.is_empty() => Err(syntax("VRFY address")),
        "VRFY" => Ok(Command::Vrfy),
        "AUTH" => auth(args),
        "EXPN" | "BDAT" | "TURN" | "ETRN" | "ATRN" => Ok(Command::NotImplemented),
        _ => Err(unrecognized()),
    }
}

fn hello(args: &str, usage: &str) -> Result<String, Reply> {
    if args.is_empty() {
        Err(syntax(usage))
    } else {
        Ok(args.to_string())
    }
}

/// Strips `keyword:` (case-insensitive); RFC 5321 has no space after the colon, but many
/// clients send one and every MTA accepts it.
fn after_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| &args[keyword.len()..])
}

/// The `501 5.1.x` reply for a MAIL or RCPT path that does not parse.
fn bad_address(detail: u16, role: &'static str) -> impl Fn(super::path::PathError) -> Reply + Copy {
    move |e| {
        Reply::new(
            501,
            EnhancedCode::new(5, 1, detail),
            format!("Bad {role} address syntax: {}", e.0),
        )
    }
}

fn mail(args: &str) -> Result<Command, Reply> {
    let rest = after_keyword(args, "FROM:").ok_or_else(|| syntax("MAIL FROM:<address>"))?;
    // RFC 3463 §3.2: X.1.7 is a bad sender address syntax.
    let bad_sender = bad_address(7, "sender");
    let (from, params) = split_path(rest).map_err(bad_sender)?;
    if !from.is_empty() {
        check_mailbox(&from).map_err(bad_sender)?;
    }
    let params = parse_mail_params(params)?;
    Ok(Command::Mail { from, params })
}

fn rcpt(args: &str) -> Result<Command, Reply> {
    let rest = after_keyword(args, "TO:").ok_or_else(|| syntax("RCPT TO:<address>"))?;
    // RFC 3463 §3.2: X.1.3 is a bad destination address syntax.
    let bad_recipient = bad_address(3, "recipient");
    let (to, params) = split_path(rest).map_err(bad_recipient)?;
    // A relay has no local mailboxes, so even `<postmaster>` needs a domain here.
    check_mailbox(&to).map_err(bad_recipient)?;
    let params = parse_rcpt_params(params)?;
    Ok(Command::Rcpt { to, params })
}

fn auth(args: &str) -> Result<Command, Reply> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or_else(|| syntax("AUTH mechanism"))?
        .to_ascii_uppercase();
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(syntax("AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth { mechanism, initial })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(line: &str) -> Command {
        parse(line.as_bytes()).unwrap_or_else(|r| panic!("{line:?}: {r}"))
    }

    fn bad(line: &[u8], code: &str) {
        let r = parse(line).expect_err(&String::from_utf8_lossy(line));
        assert!(r.to_string().starts_with(code), "{line:?}: {r}");
    }

    #[test]
    fn commands() {
        assert_eq!(
            good("ehlo client.example"),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(good("HELO x"), Command::Helo("x".into()));
        assert_eq!(good("DATA"), Command::Data);
        assert_eq!(good("data "), Command::Data);
        assert_eq!(good("NOOP anything"), Command::Noop);
        assert_eq!(good("VRFY bob"), Command::Vrfy);
        assert_eq!(good("EXPN list"), Command::NotImplemented);
        assert_eq!(
            good("AUTH plain AGJvYgBzZWNyZXQ="),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGJvYgBzZWNyZXQ=".into())
            }
        );
    }

    #[test]
    fn mail_and_rcpt() {
        let Command::Mail { from, params } = good("MAIL FROM:<a@example.org> SIZE=5") else {
            panic!()
        };
        assert_eq!((from.as_str(), params.size), ("a@example.org", Some(5)));
        assert!(matches!(good("mail from: <>"), Command::Mail { from, .. } if from.is_empty()));
        let Command::Rcpt { to, params } = good("RCPT TO:<b@example.net> NOTIFY=NEVER") else {
            panic!()
        };
        assert_eq!(to, "b@example.net");
        assert!(params.notify.is_some_and(|n| n.never));
    }

    #[test]
    fn refusals() {
        bad(b"FROB", "500 5.5.2");
        bad(b"\xff\xfe\x00garbage", "500 5.5.2");
        bad(b"NOOP \x01", "500 5.5.2");
        bad(b"EHLO", "501 5.5.4");
        bad(b"DATA now", "501 5.5.4");
        bad(b"STARTTLS x", "501 5.5.4");
        bad(b"MAIL <a@b.example>", "501 5.5.4");
        bad(b"MAIL FROM:a@b.example", "501 5.1.7");
        bad(b"RCPT TO:<>", "501 5.1.3");
        bad(b"RCPT TO:<postmaster>", "501 5.1.3");
        bad(b"RCPT TO:<a@b.example> FOO", "555 5.5.4");
        bad(b"VRFY", "501 5.5.4");
        bad(b"AUTH", "501 5.5.4");
    }
}
