//! Netstrings (D. J. Bernstein, <https://cr.yp.to/proto/netstrings.txt>), the framing of the
//! socketmap protocol: `LENGTH:PAYLOAD,` with LENGTH in decimal ASCII, so `12:hello world!,`.
//!
//! The decoder works on what has been read so far and never trusts the length a peer sends: a
//! length over the limit is refused as soon as its digits say so, before any payload is
//! buffered.

use std::ops::Range;

/// Why a stream is no longer a sequence of netstrings. The connection cannot be read further:
/// where the next frame starts is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("netstring length is not a decimal number")]
    BadLength,
    /// The length as sent (its first 20 digits), and the limit.
    #[error("request of {0} bytes is longer than the {1} allowed")]
    TooLong(String, usize),
    #[error("netstring does not end with ','")]
    BadTerminator,
}

/// One complete netstring found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the payload is in the buffer.
    pub payload: Range<usize>,
    /// How many bytes the whole netstring took (length, `:`, payload, `,`).
    pub len: usize,
}

/// Decimal digits a length may have: enough for any payload `max` allows, and a bound on how
/// much of a hostile length is read before it is refused.
fn max_digits(max: usize) -> usize {
    max.max(1).to_string().len()
}

/// The netstring at the start of `buf`: `Ok(None)` while it is incomplete (read more), an
/// error when `buf` cannot start with a netstring whose payload is at most `max` bytes.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    let too_long = || {
        let shown = String::from_utf8_lossy(&buf[..digits.min(20)]).into_owned();
        FrameError::TooLong(shown, max)
    };
    if digits > max_digits(max) {
        return Err(too_long());
    }
    let Some(&after) = buf.get(digits) else {
        // Only digits so far; they may already say too much.
        return match length(&buf[..digits]) {
            Some(n) if n > max as u64 => Err(too_long()),
            _ => Ok(None),
        };
    };
    if after != b':' || digits == 0 {
        return Err(FrameError::BadLength);
    }
    let n = length(&buf[..digits]).ok_or(FrameError::BadLength)?;
    if n > max as u64 {
        return Err(too_long());
    }
    // `n <= max`, a usize: no truncation.
    let start = digits + 1;
    let end = start + n as usize;
    match buf.get(end) {
        None => Ok(None),
        Some(b',') => Ok(Some(Frame {
            payload: start..end,
            len: end + 1,
        })),
        Some(_) => Err(FrameError::BadTerminator),
    }
}

fn length(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `payload` as a netstring.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn good(input: &str, payload: &str, rest: &str) {
        let frame = decode(input.as_bytes(), MAX)
            .unwrap_or_else(|e| panic!("{input:?}: {e}"))
            .unwrap_or_else(|| panic!("{input:?}: incomplete"));
        assert_eq!(&input[frame.payload.clone()], payload, "{input:?}");
        assert_eq!(&input[frame.len..], rest, "{input:?}");
    }

    fn partial(input: &str) {
        assert_eq!(decode(input.as_bytes(), MAX), Ok(None), "{input:?}");
    }

    fn bad(input: &str, error: FrameError) {
        assert_eq!(decode(input.as_bytes(), MAX), Err(error), "{input:?}");
    }

    #[test]
    fn vectors() {
        good("12:hello world!,", "hello world!", "");
        good("0:,", "", "");
        good(
            "19:postfix example.com,9:postfix a,",
            "postfix example.com",
            "9:postfix a,",
        );
        good("5:a,b,c,", "a,b,c", "");
        partial("");
        partial("2");
        partial("20:");
        partial("19:postfix example.com");
        partial("1024");
        bad(":abc,", FrameError::BadLength);
        bad("x:abc,", FrameError::BadLength);
        bad("3 :abc,", FrameError::BadLength);
        bad("3:abcd,", FrameError::BadTerminator);
        bad("3:abc;", FrameError::BadTerminator);
        let too_long = |digits: &str| FrameError::TooLong(digits.into(), MAX);
        bad("1025:", too_long("1025"));
        bad("1025", too_long("1025"));
        bad("99999", too_long("99999"));
        bad(&"9".repeat(100), too_long(&"9".repeat(20)));
    }

    #[test]
    fn round_trip() {
        for payload in ["", "OK dane-only", "NOTFOUND ", &"x".repeat(MAX)] {
            let wire = encode(payload.as_bytes());
            let frame = decode(&wire, MAX).unwrap().unwrap();
            assert_eq!(&wire[frame.payload], payload.as_bytes());
            assert_eq!(frame.len, wire.len());
        }
        assert_eq!(encode(b"NOTFOUND "), b"9:NOTFOUND ,");
    }
}
