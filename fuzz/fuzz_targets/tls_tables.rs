//! The TLS policy tables (`[delivery] tls_policy_file`, `sender_tls_policy_file`):
//! `mxguard::tls_policy::DestinationTable::parse` and `SenderTable::parse` (the `Table` trait;
//! `Table::load` reads the file with `read_to_string`, so non-UTF-8 inputs are skipped), and
//! their look-ups.
//!
//! Checked: every `key level` line of a table that parsed is found again by looking up its
//! key (a destination `.parent` key by looking up `x.parent`, a sender `@domain` key, one
//! whose only `@` is the first character, by looking up `x@domain`): a table never holds an
//! entry that no message can reach.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::tls_policy::{DestinationTable, SenderTable, Table, TlsLevel};

/// The `key level` lines of the text, split as `Table::parse` splits them.
fn entries(text: &str) -> Vec<(&str, TlsLevel)> {
    text.lines()
        .filter_map(|line| {
            let content = line.split('#').next().unwrap_or_default();
            let mut fields = content.split_whitespace();
            let key = fields.next()?;
            let level = fields.next()?.parse().ok()?;
            Some((key, level))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let words: Vec<&str> = text.split_whitespace().take(32).collect();

    match DestinationTable::parse(text) {
        Ok(table) => {
            for (key, _level) in entries(text) {
                let probe = match key.strip_prefix('.') {
                    Some(parent) => format!("x.{parent}"),
                    None => key.to_string(),
                };
                assert!(
                    table.lookup(&probe).is_some(),
                    "destination key {key:?} not found by looking up {probe:?}"
                );
            }
            for level in TlsLevel::ALL {
                let _ = table.uses(level);
            }
            for w in &words {
                let _ = table.lookup(w);
            }
        }
        Err((line, reason)) => {
            assert!(
                line >= 1 && line <= text.lines().count(),
                "line {line}: {reason}"
            );
        }
    }

    match SenderTable::parse(text) {
        Ok(table) => {
            for (key, _level) in entries(text) {
                // As `SenderTable` splits keys: at the last `@`; an empty local part is a
                // domain entry (`@legal.example.org`), anything else one address.
                let probe = match key.rsplit_once('@') {
                    Some(("", domain)) => format!("x@{domain}"),
                    _ => key.to_string(),
                };
                assert!(
                    table.lookup(&probe).is_some(),
                    "sender key {key:?} not found by looking up {probe:?}"
                );
            }
            for w in &words {
                let _ = table.lookup(w);
            }
        }
        Err((line, reason)) => {
            assert!(
                line >= 1 && line <= text.lines().count(),
                "line {line}: {reason}"
            );
        }
    }
});
