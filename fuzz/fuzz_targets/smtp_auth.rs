//! SMTP AUTH (RFC 4954): the client's base64 responses, decoded by
//! `mxguard::inbound::auth::Exchange::{start, respond}` (the private `decode` and `plain`
//! behind them), and the users file, `mxguard::inbound::auth::Users::parse`.
//!
//! The first input line is an `AUTH mechanism [initial-response]` command line, parsed by the
//! real command parser; if it is not one, its first byte picks PLAIN or LOGIN and the rest of
//! the line is the initial response. Each further line answers the last challenge, converted
//! to text as the session does (`String::from_utf8(bytes).unwrap_or_default()`).
//! `Users::verify` is not called: argon2 is deliberately slow, and its parameters come from
//! the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::inbound::auth::{Exchange, Step, Users};
use mxguard::inbound::command::{parse, Command};

/// Lines as the session reads them: split at LF, a CR before it dropped.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fuzz_target!(|data: &[u8]| {
    let mut input = lines(data);
    let first = input.next().unwrap_or_default();
    let (mechanism, initial) = match parse(first) {
        Ok(Command::Auth { mechanism, initial }) => (mechanism, initial),
        _ => {
            let mechanism = match first.first() {
                Some(b) if b % 2 == 0 => "PLAIN",
                _ => "LOGIN",
            };
            let rest = first.get(1..).unwrap_or_default();
            let initial = (!rest.is_empty()).then(|| String::from_utf8_lossy(rest).into_owned());
            (mechanism.to_string(), initial)
        }
    };
    if let Some((mut exchange, mut step)) = Exchange::start(&mechanism, initial.as_deref()) {
        let mut rounds = 0;
        loop {
            match step {
                Step::Challenge(challenge) => {
                    // The challenge goes out as `334 <challenge>`: one line of base64.
                    assert!(!challenge.contains(['\r', '\n']), "{challenge:?}");
                    rounds += 1;
                    assert!(rounds <= 3, "an exchange of more than three challenges");
                    let Some(line) = input.next() else {
                        break;
                    };
                    let line = String::from_utf8(line.to_vec()).unwrap_or_default();
                    step = exchange.respond(&line);
                }
                Step::Credentials { user, password } => {
                    let _ = (user, password);
                    break;
                }
                Step::Failed(reply) => {
                    assert!(reply.code >= 500, "{reply:?}");
                    assert!(!reply.text.contains(['\r', '\n']), "{reply:?}");
                    break;
                }
            }
        }
    } else {
        assert!(
            mechanism != "PLAIN" && mechanism != "LOGIN",
            "{mechanism} refused"
        );
    }

    // The users file (`Users::load` reads it with `read_to_string`: UTF-8 or nothing).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Users::parse(text) {
        Ok(_) => {}
        Err((line, message)) => {
            assert!(line >= 1 && line <= text.lines().count(), "line {line}");
            let _ = message;
        }
    }
});
