//! The DATA phase: `mxguard::inbound::data::DataDecoder` (dot-unstuffing, line ends, size
//! limit) and the `TLS-Required:` header check of the stored message,
//! `mxguard::delivery::local::says_tls_not_required`.
//!
//! Input: two bytes of size limit (little endian; 0xFFFF means the default 10240000), two
//! bytes seeding the chunk sizes, then the stream the client sends after `354`.
//!
//! Checked:
//! - the result does not depend on how the stream is cut into reads (one piece, the fuzzer's
//!   chunks, byte by byte): same end offset, same message;
//! - `Done(n)` points inside the read that completed `<CR><LF>.<CR><LF>`;
//! - a stored message fits the limit, and every LF in it is part of a CRLF;
//! - dot-stuffing the stored message again (RFC 5321 §4.5.2, as the delivery side sends it)
//!   and decoding that gives the same message back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::delivery::local::says_tls_not_required;
use mxguard::inbound::data::{DataDecoder, Decoded, Feed};

/// Feeds `stream` in the given pieces until the data ends; the absolute end offset (if the
/// end-of-data line came) and the result.
fn decode(limit: u64, stream: &[u8], sizes: &mut dyn FnMut() -> usize) -> (Option<usize>, Decoded) {
    let mut decoder = DataDecoder::new(limit);
    let mut at = 0;
    let mut end = None;
    while at < stream.len() {
        let n = sizes().clamp(1, stream.len() - at);
        let piece = &stream[at..at + n];
        match decoder.feed(piece) {
            Feed::NeedMore => {}
            Feed::Done(k) => {
                assert!(
                    k >= 1 && k <= piece.len(),
                    "Done({k}) for a read of {}",
                    piece.len()
                );
                end = Some(at + k);
                break;
            }
        }
        at += n;
    }
    (end, decoder.finish())
}

/// RFC 5321 §4.5.2 transparency, plus the end-of-data line: what a client (or our delivery
/// side) sends for a stored, CRLF-normalized message.
fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = out.ends_with(b"\r\n");
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let limit = match u16::from_le_bytes([data[0], data[1]]) {
        0xFFFF => 10_240_000,
        n => u64::from(n),
    };
    let mut seed = u32::from(u16::from_le_bytes([data[2], data[3]])) | 1;
    let stream = &data[4..];

    let whole = decode(limit, stream, &mut || usize::MAX);
    let mut xorshift = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed % 23) as usize + 1
    };
    let chunked = decode(limit, stream, &mut xorshift);
    let bytewise = decode(limit, stream, &mut || 1);
    assert_eq!(whole, chunked, "one read vs chunks");
    assert_eq!(whole, bytewise, "one read vs byte by byte");

    let (end, result) = whole;
    if let Decoded::Message(message) = &result {
        assert!(message.len() as u64 <= limit, "stored beyond the limit");
        for (i, &b) in message.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && message[i - 1] == b'\r', "bare LF stored at {i}");
            }
        }
        if end.is_some() {
            // A completed message ends with its last line's CRLF (or is empty).
            assert!(message.is_empty() || message.ends_with(b"\r\n"));
            let again = stuff(message);
            let (end2, result2) = decode(u64::MAX, &again, &mut || usize::MAX);
            assert_eq!(end2, Some(again.len()), "re-stuffed message did not end");
            assert_eq!(result2, Decoded::Message(message.clone()), "round trip");
        }
        let _ = says_tls_not_required(message);
    }
    let _ = says_tls_not_required(stream);
});
