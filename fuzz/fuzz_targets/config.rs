//! The configuration file: `mxguard::config::Config::from_toml` (TOML, serde, and `validate`
//! with its own value parsers: durations, name server addresses, TLS protocol lists, cipher
//! suite and group names, next hops, …), plus `mxguard::tls::settings::Protocols::parse` on
//! the input, whole and line by line, and `mxguard::config::parse_duration`.
//!
//! `validate` opens the files the configuration names (certificates, tables, trust anchors):
//! for a fuzzed path that fails, as wanted. So that a mutated path can never make it read a
//! device or a huge file (`/dev/zero`, `/dev/stdin`, a fuzzer binary), inputs naming anything
//! that exists and is not a regular file of at most 1 MiB are skipped, after TOML decoding
//! (the check walks the parsed document's strings, so escapes cannot hide a path).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::config::{parse_duration, Config};
use mxguard::tls::settings::Protocols;

/// True when a string of the document could name a file `validate` must not read.
fn risky(value: &toml::Value) -> bool {
    match value {
        toml::Value::String(s) => match std::fs::metadata(s) {
            Ok(m) => !m.is_file() || m.len() > 1 << 20,
            Err(_) => false,
        },
        toml::Value::Array(items) => items.iter().any(risky),
        toml::Value::Table(table) => table.values().any(risky),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for expr in std::iter::once(text).chain(text.lines()) {
        if let Ok(p) = Protocols::parse(expr) {
            assert!(p.tls12 || p.tls13, "{expr:?} allows no protocol");
            assert!(!p.versions().is_empty());
            let _ = p.describe();
        }
        let _ = parse_duration(expr);
    }
    // A document that does not parse as TOML fails in from_toml without touching files.
    if let Ok(doc) = text.parse::<toml::Table>() {
        if doc.values().any(risky) {
            return;
        }
    }
    match Config::from_toml(text) {
        Ok(config) => {
            assert!(!config.listeners.is_empty());
            assert!(!config.hostname.is_empty());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
