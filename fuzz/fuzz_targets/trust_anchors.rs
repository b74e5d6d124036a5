//! The DNSSEC trust-anchor file (`[dns] trust_anchor_file`):
//! `mxguard::dnssec::anchors::parse_trust_anchors` (owner names, DNSKEY and DS fields, base64
//! keys, hex digests), then what the validator does with the result: `keys`, `ds_anchors`
//! and `trust_anchors` (hickory's anchor set). `load_trust_anchors` reads the file with
//! `read_to_string`, so non-UTF-8 inputs are skipped.
//!
//! Checked: an accepted DNSKEY anchor is a zone key, not revoked, with a key; its zone is
//! fully qualified; an error names a line of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::dnssec::anchors::{ds_anchors, keys, parse_trust_anchors, trust_anchors, Anchor};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let anchors = match parse_trust_anchors(text) {
        Ok(a) => a,
        Err((line, reason)) => {
            assert!(
                line >= 1 && line <= text.lines().count(),
                "line {line}: {reason}"
            );
            return;
        }
    };
    for a in &anchors {
        assert!(a.zone().is_fqdn(), "{a:?}");
        let _ = a.zone().to_string();
        if let Anchor::Key(k) = a {
            assert!(k.flags & 0x0100 != 0 && k.flags & 0x0080 == 0, "{k:?}");
        }
    }
    let key_anchors = keys(&anchors);
    let ds = ds_anchors(&anchors);
    assert_eq!(key_anchors.len() + ds.len(), anchors.len());
    let _ = trust_anchors(&key_anchors);
});
