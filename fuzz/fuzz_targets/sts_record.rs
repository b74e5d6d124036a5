//! The `_mta-sts.<domain>` TXT records (RFC 8461 §3.1), as DNS hands them to mxguard:
//! `policy_cache::sts::record::txt_text` joins each record's strings, and
//! `policy_cache::sts::record::parse_records` picks and parses the STS record.
//!
//! Input: records separated by LF; within a record, the byte 0x00 separates its character
//! strings (a TXT record may be split into several).
//!
//! Checked: an accepted id is 1-32 ASCII letters and digits.
#![no_main]

use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::RData;
use libfuzzer_sys::fuzz_target;
use policy_cache::sts::record::{parse_records, txt_text};

fuzz_target!(|data: &[u8]| {
    let records: Vec<String> = data
        .split(|&b| b == b'\n')
        .filter_map(|record| {
            let strings: Vec<&[u8]> = record.split(|&b| b == 0).collect();
            txt_text(&RData::TXT(TXT::from_bytes(strings)))
        })
        .collect();
    if let Ok(record) = parse_records(&records) {
        assert!(
            (1..=32).contains(&record.id.len())
                && record.id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "accepted id {:?}",
            record.id
        );
    }
    // Each record alone too (one TXT record at the name).
    for r in &records {
        let _ = parse_records(std::slice::from_ref(r));
    }
});
