//! The MTA-STS policy file (RFC 8461 §3.2), fetched over HTTPS from the domain's web server:
//! `policy_cache::sts::policy::Policy::parse`, `MxPattern::parse` and the MX matching
//! (`Policy::matching`, `MxPattern::matches`, `normalize_name`).
//!
//! The HTTPS fetch hands `Policy::parse` text; bytes that are not UTF-8 are skipped here.
//! The same input also goes to `MxPattern::parse` whole and line by line.
//!
//! Checked, for every accepted `mx` pattern:
//! - parsing the stored (normalized) pattern again gives the same pattern;
//! - the host name the pattern names (or, for `*.parent`, `x.parent`) matches it, and
//!   `Policy::matching` finds a pattern for it: a policy can never lock out its own MX;
//! - `max_age` is within RFC 8461's limit, and `enforce`/`testing` have at least one mx.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_cache::sts::policy::{normalize_name, Mode, MxPattern, Policy, MAX_AGE_LIMIT};

fn check_pattern(p: &MxPattern) {
    let again =
        MxPattern::parse(&p.0).unwrap_or_else(|e| panic!("{p:?} does not parse again: {e}"));
    assert_eq!(&again, p, "normalization is not idempotent");
    let host = match p.0.strip_prefix("*.") {
        Some(parent) => format!("x.{parent}"),
        None => p.0.clone(),
    };
    // `x.parent` may be too long a name to be one; only names that are names must match.
    if normalize_name(&host).is_some() {
        assert!(p.matches(&host), "{p:?} does not match {host:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse(text) {
        assert!(policy.max_age <= MAX_AGE_LIMIT);
        assert!(policy.mode == Mode::None || !policy.mx.is_empty());
        for p in &policy.mx {
            check_pattern(p);
            let host = match p.0.strip_prefix("*.") {
                Some(parent) => format!("x.{parent}"),
                None => p.0.clone(),
            };
            if normalize_name(&host).is_some() {
                assert!(policy.matching(&host).is_some(), "{host:?} unmatched");
            }
        }
    }
    for value in std::iter::once(text).chain(text.lines()) {
        if let Ok(p) = MxPattern::parse(value) {
            check_pattern(&p);
        }
        let _ = normalize_name(value);
    }
});
