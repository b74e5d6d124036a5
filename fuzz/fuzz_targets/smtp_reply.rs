//! SMTP replies from MX hosts. mxguard reads them through mail-send, which parses them with
//! smtp-proto: `smtp_proto::response::parser::ResponseReceiver::parse` (every reply) and
//! `smtp_proto::EhloResponse::parse` (the EHLO reply, with the extension mask mxguard keeps).
//! This target drives both exactly as mail-send 0.7's `SmtpClient::read_many` and
//! `read_ehlo` do, on reads cut where the fuzzer says, then hands each reply to mxguard's own
//! reply handling: `mxguard::reply::Reply::from_remote` (the enhanced-code prefix parser,
//! `EnhancedCode::parse_prefix`), its severity/status, `Display` (log and Diagnostic-Code
//! form) and `to_wire`.
//!
//! Input: two bytes seeding the read sizes, one byte for the number of pipelined replies
//! expected (1-4), then the bytes the server sends.
//!
//! Checked: a parsed enhanced code is one RFC 3463 allows; the one-line `Display` form of a
//! remote reply never carries CR or LF into a log line or a DSN.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::reply::{EnhancedCode, Reply};
use smtp_proto::response::parser::{ResponseReceiver, MAX_RESPONSE_LENGTH};
use smtp_proto::{EhloResponse, Error, Response};

/// Cuts `stream` into reads of at most 1024 bytes (mail-send's buffer), sizes from `seed`.
fn reads(stream: &[u8], mut seed: u32) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    seed |= 1;
    while !rest.is_empty() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = match seed % 4 {
            0 => 1024,
            1 => (seed >> 8) as usize % 8 + 1,
            _ => (seed >> 8) as usize % 200 + 1,
        }
        .min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// mail-send's `read_many(num)`.
fn read_many(reads: &[&[u8]], num: usize) -> Option<Vec<Response<String>>> {
    let mut responses = Vec::with_capacity(num);
    let mut parser = ResponseReceiver::default();
    for buf in reads {
        let mut iter = buf.iter();
        loop {
            match parser.parse(&mut iter) {
                Ok(reply) => {
                    responses.push(reply);
                    if responses.len() != num {
                        parser.reset();
                    } else {
                        return Some(responses);
                    }
                }
                Err(Error::NeedsMoreData { .. }) => break,
                Err(_) => return None,
            }
        }
    }
    None
}

enum Ehlo {
    Ok(EhloResponse<String>),
    Unexpected(Response<String>),
    Unparseable,
}

/// mail-send's `read_ehlo`.
fn read_ehlo(reads: &[&[u8]]) -> Ehlo {
    let mut buf_concat: Vec<u8> = Vec::new();
    for buf in reads {
        let br = buf.len();
        let mut iter = if buf_concat.is_empty() {
            buf.iter()
        } else if br + buf_concat.len() < MAX_RESPONSE_LENGTH {
            buf_concat.extend_from_slice(buf);
            buf_concat.iter()
        } else {
            return Ehlo::Unparseable;
        };
        match EhloResponse::parse(&mut iter) {
            Ok(reply) => return Ehlo::Ok(reply),
            Err(Error::NeedsMoreData { .. }) => {
                if buf_concat.is_empty() {
                    buf_concat = buf.to_vec();
                }
            }
            Err(Error::InvalidResponse { code }) => {
                match ResponseReceiver::from_code(code).parse(&mut iter) {
                    Ok(response) => return Ehlo::Unexpected(response),
                    Err(Error::NeedsMoreData { .. }) => {
                        if buf_concat.is_empty() {
                            buf_concat = buf.to_vec();
                        }
                    }
                    Err(_) => return Ehlo::Unparseable,
                }
            }
            Err(_) => return Ehlo::Unparseable,
        }
    }
    Ehlo::Unparseable
}

fn check_code(e: &EnhancedCode) {
    assert!(matches!(e.class, 2 | 4 | 5), "{e:?}");
    assert!(e.subject <= 999 && e.detail <= 999, "{e:?}");
}

/// What mxguard does with a reply the server sent (`session::remote_reply` falls back to
/// `Reply::from_remote` when smtp-proto found no enhanced code).
fn handle(r: &Response<String>) {
    let reply = Reply::from_remote(r.code, r.message.trim_end());
    if let Some(e) = &reply.enhanced {
        check_code(e);
    }
    check_code(&reply.status());
    let _ = (reply.severity(), reply.is_positive(), reply.is_permanent());
    let shown = reply.to_string();
    assert!(
        !shown.contains(['\r', '\n']),
        "log form with a line break: {shown:?}"
    );
    let _ = reply.to_wire();
    if let Some((e, rest)) = EnhancedCode::parse_prefix(&r.message) {
        check_code(&e);
        assert!(r.message.ends_with(rest));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let seed = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let num = usize::from(data[2] % 4) + 1;
    let stream = &data[3..];
    let reads = reads(stream, seed);

    if let Some(responses) = read_many(&reads, num) {
        assert_eq!(responses.len(), num);
        for r in &responses {
            handle(r);
        }
    }
    match read_ehlo(&reads) {
        Ehlo::Ok(ehlo) => {
            // session.rs: the loop check, and the extension mask and SIZE it keeps.
            let _ = ehlo.hostname.eq_ignore_ascii_case("relay.example.org");
            let _ = (ehlo.capabilities & smtp_proto::EXT_START_TLS, ehlo.size);
        }
        Ehlo::Unexpected(r) => handle(&r),
        Ehlo::Unparseable => {}
    }
    // The text alone, as any reply's text.
    if let Ok(text) = std::str::from_utf8(stream) {
        let _ = EnhancedCode::parse_prefix(text);
        handle(&Response {
            code: 451,
            esc: [0; 3],
            message: text.to_string(),
        });
    }
});
