//! The delivery status filter file (`[delivery] status_filter`, Postfix pcre_table syntax):
//! `mxguard::dsn::status_filter::StatusFilter::parse`, then `StatusFilter::apply` / `filter`
//! / `lookup` on status lines, as the queue runs every failed delivery's reply through it.
//!
//! Input: the table text, a NUL byte, then status lines `CODE text` (a 3-digit code, or 451
//! when the line does not start with one; the text as a remote server could send it, so any
//! bytes, read lossily). Without a NUL the whole input is the table and a few real statuses
//! are filtered. The table must be UTF-8 (`StatusFilter::load` reads it with
//! `read_to_string`); other inputs are skipped.
//!
//! Checked: a success is never filtered; a replaced reply is a failure whose reply code's
//! class is its enhanced code's class; `filter` agrees with `apply`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::dsn::status_filter::{Filtered, StatusFilter};
use mxguard::reply::Reply;

const STATUSES: &[&str] = &[
    "451 4.7.5 Server certificate not verified",
    "451 4.7.0 TLS is required, but host mx.example.net refused to start TLS: 454 4.7.0 no",
    "451 4.7.4 TLS is required, but was not offered by host mx.example.net",
    "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
    "421 Service not available",
    "250 2.0.0 Ok: queued as 4Bk9",
];

fn reply_of(line: &str) -> Reply {
    let digits = line
        .as_bytes()
        .iter()
        .take(3)
        .filter(|b| b.is_ascii_digit())
        .count();
    match (digits, line.get(..3).and_then(|c| c.parse::<u16>().ok())) {
        (3, Some(code)) => Reply::from_remote(code, line[3..].trim_start()),
        _ => Reply::from_remote(451, line),
    }
}

fn run(filter: &StatusFilter, reply: Reply) {
    let outcome = filter.apply(&reply);
    match &outcome {
        Filtered::Unchanged => {}
        Filtered::Replaced { line, reply: new } => {
            assert!(!reply.is_positive(), "a success was filtered: {reply:?}");
            assert!(*line >= 1);
            let e = new.enhanced.expect("replaced without an enhanced code");
            assert!(matches!(e.class, 4 | 5), "{new:?}");
            assert_eq!(u16::from(e.class), new.code / 100, "{new:?}");
            assert!(!new.is_positive());
        }
        Filtered::Ignored { line, .. } => {
            assert!(!reply.is_positive(), "a success was filtered: {reply:?}");
            assert!(*line >= 1);
        }
    }
    let filtered = filter.filter(reply.clone());
    match outcome {
        Filtered::Replaced { reply: new, .. } => assert_eq!(filtered, new),
        _ => assert_eq!(filtered, reply),
    }
    let _ = filter.lookup(&reply.text);
}

fuzz_target!(|data: &[u8]| {
    let (table, statuses) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(table) = std::str::from_utf8(table) else {
        return;
    };
    let filter = match StatusFilter::parse(table) {
        Ok(f) => f,
        Err((line, error)) => {
            assert!(line >= 1 && line <= table.lines().count(), "line {line}");
            let _ = error.to_string();
            return;
        }
    };
    assert!(filter.len() <= table.lines().count());
    match statuses {
        Some(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            for line in text.split('\n').take(16) {
                run(&filter, reply_of(line.strip_suffix('\r').unwrap_or(line)));
            }
            // The whole tail as one reply text (multi-line replies are joined with LF).
            run(&filter, Reply::from_remote(451, &text));
        }
        None => {
            for line in STATUSES {
                run(&filter, reply_of(line));
            }
        }
    }
});
