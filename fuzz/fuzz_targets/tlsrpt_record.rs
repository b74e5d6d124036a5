//! The `_smtp._tls.<domain>` TXT records (RFC 8460 §3), as DNS hands them to mxguard:
//! `mxguard::report::record::txt_text` joins each record's strings, and
//! `mxguard::report::record::select` picks and parses the TLS-RPT record.
//!
//! Input: records separated by LF; within a record, the byte 0x00 separates its character
//! strings (a TXT record may be split into several).
//!
//! Checked: an accepted record has at least one destination; a mailto address holds no
//! whitespace, control character or angle bracket (it goes into `RCPT TO:<...>` as it is); an
//! https URL starts with `https://`; and each destination written back as a URI (`Display`)
//! parses to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::report::record::{parse, select, txt_text, Rua, TlsRptRecord};

fuzz_target!(|data: &[u8]| {
    let records: Vec<String> = data
        .split(|&b| b == b'\n')
        .map(|record| {
            let strings: Vec<&[u8]> = record.split(|&b| b == 0).collect();
            txt_text(&strings)
        })
        .collect();
    if let Ok(record) = select(&records) {
        check(&record);
    }
    // Each record alone too (one TXT record at the name).
    for text in &records {
        if let Ok(record) = parse(text) {
            check(&record);
        }
    }
});

fn check(record: &TlsRptRecord) {
    assert!(!record.rua.is_empty(), "accepted a record without rua");
    for rua in &record.rua {
        match rua {
            Rua::Mailto(address) => assert!(
                !address
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>'),
                "accepted mailto address {address:?}"
            ),
            Rua::Https(url) => assert!(
                url.get(..8)
                    .is_some_and(|s| s.eq_ignore_ascii_case("https://")),
                "accepted https URL {url:?}"
            ),
        }
    }
    let uris: Vec<String> = record.rua.iter().map(Rua::to_string).collect();
    let again = parse(&format!("v=TLSRPTv1;rua={}", uris.join(",")));
    assert_eq!(
        again.as_ref(),
        Ok(record),
        "Display does not parse back: {uris:?}"
    );
}
