//! The message as sent after DATA (RFC 5321 §4.5.2 transparency, §4.1.1.4 end of data).
//!
//! The end of the message is a line holding a single ".", so every line of the message that
//! begins with "." gets one more "." in front; the receiver removes it again.

/// The bytes to send after `354`: the message with each line that starts with "." stuffed,
/// a CRLF added if the message does not end with one, then the end-of-data line `.\r\n`.
///
/// A "line start" is the first byte and every byte after LF. The stored message has CRLF line
/// ends; a stray bare LF is treated as a line end too, so that no `\n.\r\n` can ever reach the
/// receiver unstuffed (SMTP smuggling).
pub(crate) fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let dots = message
        .split(|&b| b == b'\n')
        .filter(|line| line.first() == Some(&b'.'))
        .count();
    let mut out = Vec::with_capacity(message.len() + dots + 5);
    let mut at_line_start = true;
    for &b in message {
        // RFC 5321 §4.5.2: "If the first character is a period, one additional period is
        // inserted at the beginning of the line."
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        // RFC 5321 §4.1.1.4: the data ends with "<CRLF>.<CRLF>"; the last line needs its CRLF.
        if message.ends_with(b"\r") {
            out.push(b'\n');
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Does the message header section hold any non-ASCII byte? (RFC 6531 §3.4: such a message
/// needs SMTPUTF8 from the next hop.)
pub(crate) fn headers_need_utf8(message: &[u8]) -> bool {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    !message[..end].is_ascii()
}

/// The header section, unfolded (RFC 5322 §2.2.3: a line that starts with white space
/// continues the field before it), as text; its fields are separated by CRLF.
pub(crate) fn unfolded_header(message: &[u8]) -> String {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    String::from_utf8_lossy(&message[..end])
        .replace("\r\n ", " ")
        .replace("\r\n\t", "\t")
}

/// The value of the first header field called `name` (any case), trimmed.
pub fn header_field(message: &[u8], name: &str) -> Option<String> {
    unfolded_header(message).split("\r\n").find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field
            .trim_end()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(m: &str) -> String {
        String::from_utf8(dot_stuff(m.as_bytes())).unwrap()
    }

    #[test]
    fn header_fields_are_found_unfolded_in_the_header_only() {
        let m = b"From: a@b\r\nmessage-id:\r\n  <x.1@example.org>\r\nSubject: s\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(
            header_field(m, "Message-ID").as_deref(),
            Some("<x.1@example.org>")
        );
        assert_eq!(header_field(m, "subject").as_deref(), Some("s"));
        assert_eq!(header_field(m, "To"), None);
        assert_eq!(header_field(b"Subject: only\r\n", "To"), None);
    }

    #[test]
    fn leading_dots_are_doubled() {
        assert_eq!(
            stuffed("A: b\r\n\r\n.hidden\r\n"),
            "A: b\r\n\r\n..hidden\r\n.\r\n"
        );
        assert_eq!(stuffed(".first\r\n"), "..first\r\n.\r\n");
        assert_eq!(stuffed("x\r\n..\r\n"), "x\r\n...\r\n.\r\n");
        assert_eq!(stuffed("a.b\r\n"), "a.b\r\n.\r\n");
    }

    #[test]
    fn a_line_that_is_just_a_dot_does_not_end_the_data() {
        assert_eq!(
            stuffed("A: b\r\n\r\n.\r\nafter\r\n"),
            "A: b\r\n\r\n..\r\nafter\r\n.\r\n"
        );
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(stuffed("A: b\r\n\r\nlast"), "A: b\r\n\r\nlast\r\n.\r\n");
        assert_eq!(stuffed("A: b\r\n\r\n."), "A: b\r\n\r\n..\r\n.\r\n");
        assert_eq!(stuffed("A: b\r"), "A: b\r\n.\r\n");
        assert_eq!(stuffed(""), ".\r\n");
    }

    #[test]
    fn bare_lf_dot_is_stuffed_too() {
        assert_eq!(
            stuffed("a\n.\r\nMAIL FROM:<>\r\n"),
            "a\n..\r\nMAIL FROM:<>\r\n.\r\n"
        );
    }

    #[test]
    fn utf8_headers() {
        assert!(headers_need_utf8(
            "Subject: caf\u{e9}\r\n\r\nbody".as_bytes()
        ));
        assert!(!headers_need_utf8(
            "Subject: cafe\r\n\r\nbod\u{e9}".as_bytes()
        ));
    }
}
