//! Writing header-style fields safely: the text in a DSN comes partly from peers (a remote
//! server's reply, the addresses a client gave), so every value is stripped of line breaks and
//! control characters, capped in length and folded before it is written (RFC 5322 §2.2.3,
//! §2.1.1). Also the small byte-level helpers the report needs: CRLF line ends, the header
//! section of a message, RFC 5322 dates.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest value written into any one field, in bytes. RFC 5322 §2.1.1 caps a line at 998
/// octets; a value this long still fits on one line after any field name we use, even when it
/// holds no whitespace to fold at.
pub(super) const MAX_FIELD_VALUE: usize = 900;

/// Where folding starts: RFC 5322 §2.1.1 asks for lines of at most 78 characters.
const FOLD_AT: usize = 78;

/// Which characters may stay in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Charset {
    /// `message/delivery-status` is 7-bit (RFC 3464 §2.1): anything else becomes `?`.
    Ascii,
    /// `message/global-delivery-status` may carry UTF-8 (RFC 6533 §3).
    Utf8,
}

/// One line of text from untrusted input: CR, LF, other controls and runs of whitespace
/// become one space; at most `max` bytes are kept (cut on a character boundary, marked `...`).
pub(super) fn clean(text: &str, charset: Charset, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 3));
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        let c = if charset == Charset::Ascii && !c.is_ascii() {
            '?'
        } else {
            c
        };
        let needed = c.len_utf8() + usize::from(pending_space);
        if out.len() + needed > max {
            out.push_str("...");
            return out;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// Appends `Name: value` CRLF, the value cleaned and capped, folded at spaces so that lines stay
/// near 78 characters (continuation lines start with a space, RFC 5322 §2.2.3).
pub(super) fn push_field(out: &mut String, name: &str, value: &str, charset: Charset) {
    let value = clean(value, charset, MAX_FIELD_VALUE);
    out.push_str(name);
    out.push(':');
    let mut column = name.len() + 1;
    let mut first = true;
    for word in value.split(' ') {
        if !first && column + 1 + word.len() > FOLD_AT {
            out.push_str("\r\n");
            column = 0;
        }
        out.push(' ');
        out.push_str(word);
        column += 1 + word.len();
        first = false;
    }
    out.push_str("\r\n");
}

/// The date in RFC 5322 §3.3 form, in UTC (`Tue, 1 Jul 2003 10:52:37 +0000`).
pub(super) fn rfc5322_date(when: SystemTime) -> String {
    let secs = when
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    mail_builder::headers::date::Date::new(i64::try_from(secs).unwrap_or(i64::MAX)).to_rfc822()
}

/// The message with every line ending made CRLF (a bare LF or CR becomes CRLF). The queue
/// stores CRLF already; this only guards the DSN against a message that slipped through with
/// bare line ends, which would otherwise corrupt the MIME structure around it.
pub(super) fn to_crlf(message: &[u8]) -> Cow<'_, [u8]> {
    let bare = message.iter().enumerate().any(|(i, &b)| match b {
        b'\n' => i == 0 || message[i - 1] != b'\r',
        b'\r' => message.get(i + 1) != Some(&b'\n'),
        _ => false,
    });
    if !bare {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// The header section of a CRLF message: everything before the first empty line (RFC 5322
/// §2.1), ending with its last CRLF. A message without a body is all header section.
pub(super) fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

/// The first `max` bytes of `text`, cut after a CRLF so no line is split.
pub(super) fn cut_at_line(text: &[u8], max: usize) -> &[u8] {
    if text.len() <= max {
        return text;
    }
    let head = &text[..max];
    match head.windows(2).rposition(|w| w == b"\r\n") {
        Some(end) => &head[..end + 2],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_line_breaks_and_controls() {
        let c = clean("a\r\nInjected: yes\tb\x00c", Charset::Ascii, 100);
        assert_eq!(c, "a Injected: yes b c");
        assert_eq!(clean("  lead  trail  ", Charset::Ascii, 100), "lead trail");
        assert_eq!(clean("caf\u{e9}", Charset::Ascii, 100), "caf?");
        assert_eq!(clean("caf\u{e9}", Charset::Utf8, 100), "caf\u{e9}");
    }

    #[test]
    fn clean_caps_length_on_a_char_boundary() {
        let c = clean(&"\u{e9}".repeat(100), Charset::Utf8, 11);
        assert_eq!(c, format!("{}...", "\u{e9}".repeat(5)));
    }

    #[test]
    fn fields_fold_and_never_carry_bare_line_breaks() {
        let mut out = String::new();
        let long = "word ".repeat(60);
        push_field(
            &mut out,
            "Diagnostic-Code",
            &format!("smtp; 550 {long}\r\nX: y"),
            Charset::Ascii,
        );
        for line in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= 78, "{line:?}");
            assert!(!line.contains('\r') && !line.contains('\n'));
        }
        // Every line after the first is a continuation line.
        assert!(out
            .split("\r\n")
            .skip(1)
            .all(|l| l.is_empty() || l.starts_with(' ')));
        assert!(!out.contains("\r\nX:"));
    }

    #[test]
    fn crlf_normalisation() {
        assert!(matches!(to_crlf(b"a\r\nb\r\n"), Cow::Borrowed(_)));
        assert_eq!(&*to_crlf(b"a\nb\rc\r\n"), b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn header_section_and_cuts() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"");
        assert_eq!(cut_at_line(b"ab\r\ncd\r\nef\r\n", 9), b"ab\r\ncd\r\n");
        assert_eq!(cut_at_line(b"abcdef", 3), b"");
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_057_056_757);
        assert_eq!(rfc5322_date(t), "Tue, 1 Jul 2003 10:52:37 +0000");
    }
}
