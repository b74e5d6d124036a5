//! 8-bit to 7-bit MIME conversion (RFC 6152 §3, RFC 2045 §6.7), for a message received with
//! `BODY=8BITMIME` that goes to a server which does not advertise 8BITMIME.
//!
//! RFC 6152 §3 leaves the sender two choices: convert the message to 7-bit MIME, or return it
//! as undeliverable. Like Postfix (`disable_mime_output_conversion = no`), mxguard converts:
//! every leaf body part that holds 8-bit octets is re-encoded as quoted-printable and its
//! `Content-Transfer-Encoding` says so (one is added where the part had none);
//! `multipart/*` bodies are walked part by part along their boundary (RFC 2046 §5.1.1) and
//! `message/rfc822` bodies as the message they hold (RFC 2046 §5.2.1), their own
//! `Content-Transfer-Encoding: 8bit` becoming `7bit` once nothing 8-bit is left inside.
//! Parts already encoded (quoted-printable, base64) keep their encoding.
//!
//! Postfix re-encodes whatever is *labelled* 8bit or binary; mxguard goes by the octets
//! instead, so a part labelled 7bit (or not labelled at all) that holds 8-bit octets is
//! converted too, and a part that holds none is left as it is. A message without any 8-bit
//! octet comes back unchanged, borrowed.
//!
//! Header fields are never touched, 8-bit or not (Postfix leaves them alone too: an RFC 2047
//! encoding would need a charset nobody declared). Such a message still carries 8-bit octets
//! in its header; that is the sender's affair, as it is with Postfix.
//!
//! Malformed MIME is never a reason to fail: a missing close delimiter ends the last part at
//! the end of the message, a line that is no header field ends a header section, a
//! `Content-Type` that does not parse means `text/plain` (RFC 2045 §5.2), and past
//! [`MAX_DEPTH`] nested entities the rest is encoded as one leaf. Raw 8-bit octets found where
//! they cannot be (inside a quoted-printable or base64 part, a preamble or an epilogue) are
//! made 7-bit in the way that keeps what a decoder sees. So the body that leaves is 7-bit
//! whatever arrived; only header fields can still hold 8-bit octets.
//!
//! The input is the stored message: CRLF line ends, not dot-stuffed.

use std::borrow::Cow;

/// Entities nested deeper than this are encoded as one leaf (Postfix's `mime_nesting_limit`).
const MAX_DEPTH: usize = 100;

/// RFC 2045 §6.7 rule 5: encoded lines are at most 76 characters, the soft break's `=`
/// included.
const MAX_LINE: usize = 76;

const CRLF: &[u8] = b"\r\n";

/// The message with every 8-bit body part re-encoded as quoted-printable; `Borrowed` when
/// nothing had to change (no 8-bit octet, or 8-bit octets only in header fields).
pub(crate) fn to_seven_bit(message: &[u8]) -> Cow<'_, [u8]> {
    if message.is_ascii() {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 2);
    convert(message, Context::top(), &mut out);
    if out == message {
        Cow::Borrowed(message)
    } else {
        Cow::Owned(out)
    }
}

/// Where an entity stands in the message.
#[derive(Clone, Copy)]
struct Context {
    /// Entities above this one.
    depth: usize,
    /// A part of a `multipart/digest`: without Content-Type it is `message/rfc822`
    /// (RFC 2046 §5.1.5).
    in_digest: bool,
}

impl Context {
    fn top() -> Context {
        Context {
            depth: 0,
            in_digest: false,
        }
    }

    fn child(self, in_digest: bool) -> Context {
        Context {
            depth: self.depth + 1,
            in_digest,
        }
    }
}

/// One MIME entity (RFC 2045 §2.4), converted into `out`.
fn convert(input: &[u8], cx: Context, out: &mut Vec<u8>) {
    let entity = Entity::parse(input);
    if entity.body.is_ascii() {
        out.extend_from_slice(input);
        return;
    }
    let encoding = entity.encoding();
    let media = entity.media(cx.in_digest);
    match (encoding, media) {
        (Encoding::QuotedPrintable, _) => {
            entity.write_header(out, None, cx);
            escape_8bit(entity.body, out);
        }
        (Encoding::Base64, _) => {
            entity.write_header(out, None, cx);
            scrub_base64(entity.body, out);
        }
        (_, Media::Multipart { boundary, digest }) if cx.depth < MAX_DEPTH => {
            let mut body = Vec::with_capacity(entity.body.len());
            multipart(entity.body, &boundary, cx.child(digest), &mut body);
            entity.write_composite(out, encoding, body, cx);
        }
        (_, Media::Rfc822) if cx.depth < MAX_DEPTH => {
            let mut body = Vec::with_capacity(entity.body.len());
            convert(entity.body, cx.child(false), &mut body);
            entity.write_composite(out, encoding, body, cx);
        }
        _ => {
            entity.write_header(out, Some(b"quoted-printable"), cx);
            encode_quoted_printable(entity.body, out);
        }
    }
}

/// RFC 2045 §6.1 mechanisms, as far as conversion cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// No Content-Transfer-Encoding field: 7bit (RFC 2045 §6.1).
    Absent,
    SevenBit,
    EightBit,
    Binary,
    QuotedPrintable,
    Base64,
    /// An x-token or a value that does not parse (RFC 2045 §6.4: unrecognized).
    Other,
}

impl Encoding {
    fn parse(value: &[u8]) -> Encoding {
        let Some(token) = Lexer::new(value).token() else {
            return Encoding::Other;
        };
        match token.to_ascii_lowercase().as_slice() {
            b"7bit" => Encoding::SevenBit,
            b"8bit" => Encoding::EightBit,
            b"binary" => Encoding::Binary,
            b"quoted-printable" => Encoding::QuotedPrintable,
            b"base64" => Encoding::Base64,
            _ => Encoding::Other,
        }
    }
}

/// What a Content-Type makes of a body (RFC 2046).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Media {
    /// `multipart/*` with a boundary (RFC 2046 §5.1).
    Multipart {
        boundary: Vec<u8>,
        digest: bool,
    },
    /// `message/rfc822`: a whole message (RFC 2046 §5.2.1). Other `message/*` types are
    /// leaves: `message/global` may be encoded (RFC 6532 §3.5); `partial` and
    /// `external-body` hold nothing 8-bit when well-formed.
    Rfc822,
    Leaf,
}

/// One header field as it stands: name, colon, value, folding and line end.
struct Field<'a> {
    raw: &'a [u8],
    name: &'a [u8],
}

impl Field<'_> {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The unfolded value (RFC 5322 §2.2.3), after the colon.
    fn value(&self) -> Vec<u8> {
        let colon = self
            .raw
            .iter()
            .position(|&b| b == b':')
            .map_or(self.raw.len(), |i| i + 1);
        self.raw[colon..]
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect()
    }
}

/// A header section and the body after it.
struct Entity<'a> {
    fields: Vec<Field<'a>>,
    /// The empty line that ends the header section; empty when the input ended or when a
    /// line that is no header field ended the section (malformed, but seen).
    separator: &'a [u8],
    body: &'a [u8],
}

impl<'a> Entity<'a> {
    /// Splits `input` into header fields and body. Like Postfix's MIME parser, the header
    /// section ends at the empty line or at the first line that is neither a header field
    /// nor the continuation of one; that line starts the body.
    fn parse(input: &'a [u8]) -> Entity<'a> {
        let mut fields: Vec<Field<'a>> = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = input[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len(), |i| pos + i + 1);
            let line = &input[pos..end];
            let content = line.strip_suffix(b"\n").unwrap_or(line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if content.is_empty() && !line.is_empty() && line != b"\r" {
                return Entity {
                    fields,
                    separator: line,
                    body: &input[end..],
                };
            }
            match fields.last_mut() {
                // RFC 5322 §2.2.3: a line starting with white space continues the field.
                Some(field) if line[0] == b' ' || line[0] == b'\t' => {
                    field.raw = &input[pos - field.raw.len()..end];
                }
                _ => match field_name(content) {
                    Some(name) => fields.push(Field { raw: line, name }),
                    None => break,
                },
            }
            pos = end;
        }
        Entity {
            fields,
            separator: b"",
            body: &input[pos..],
        }
    }

    /// The last Content-Transfer-Encoding field decides, as in Postfix.
    fn encoding(&self) -> Encoding {
        self.fields
            .iter()
            .rev()
            .find(|f| f.is("content-transfer-encoding"))
            .map_or(Encoding::Absent, |f| Encoding::parse(&f.value()))
    }

    fn media(&self, in_digest: bool) -> Media {
        let Some(field) = self.fields.iter().rev().find(|f| f.is("content-type")) else {
            return if in_digest {
                Media::Rfc822
            } else {
                Media::Leaf
            };
        };
        // RFC 2045 §5.2: a Content-Type that does not parse means text/plain.
        let Some(ct) = ContentType::parse(&field.value()) else {
            return Media::Leaf;
        };
        match (ct.kind.as_slice(), ct.subtype.as_slice(), ct.boundary) {
            (b"multipart", subtype, Some(boundary)) if !boundary.is_empty() => Media::Multipart {
                boundary,
                digest: subtype == b"digest",
            },
            (b"message", b"rfc822", _) => Media::Rfc822,
            _ => Media::Leaf,
        }
    }

    /// Writes the header section, with `encoding` (if any) as the one Content-Transfer-Encoding
    /// field: in place of the first one there was, else added at the end. A top-level entity
    /// whose header changes and that has no MIME-Version gets one (RFC 2045 §4), so that the
    /// new field is read as MIME.
    fn write_header(&self, out: &mut Vec<u8>, encoding: Option<&[u8]>, cx: Context) {
        let Some(encoding) = encoding else {
            for field in &self.fields {
                out.extend_from_slice(field.raw);
            }
            out.extend_from_slice(self.separator);
            return;
        };
        let cte_field = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"Content-Transfer-Encoding: ");
            out.extend_from_slice(encoding);
            out.extend_from_slice(CRLF);
        };
        let mut replaced = false;
        for field in &self.fields {
            if !field.is("content-transfer-encoding") {
                out.extend_from_slice(field.raw);
            } else if !replaced {
                cte_field(out);
                replaced = true;
            }
        }
        if cx.depth == 0 && !self.fields.iter().any(|f| f.is("mime-version")) {
            out.extend_from_slice(b"MIME-Version: 1.0\r\n");
        }
        if !replaced {
            cte_field(out);
        }
        if self.separator.is_empty() {
            // The body began without an empty line; now that the header changed, give it one.
            out.extend_from_slice(CRLF);
        } else {
            out.extend_from_slice(self.separator);
        }
    }

    /// A multipart or message entity with its converted `body`. RFC 2045 §6.4: a composite
    /// entity's encoding names the domain of what it holds, so 8bit (or binary, or a
    /// misspelling) becomes 7bit once nothing 8-bit is left inside.
    fn write_composite(&self, out: &mut Vec<u8>, encoding: Encoding, body: Vec<u8>, cx: Context) {
        let relabel = matches!(
            encoding,
            Encoding::EightBit | Encoding::Binary | Encoding::Other
        ) && body.is_ascii();
        self.write_header(out, relabel.then_some(b"7bit".as_slice()), cx);
        out.extend_from_slice(&body);
    }
}

/// The name of a header field line (RFC 5322 §2.2: printable US-ASCII but colon, then a
/// colon; white space before the colon is the obsolete form of §4.5.3, still seen).
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    let name = match name.iter().rposition(|&b| b != b' ' && b != b'\t') {
        Some(last) => &name[..=last],
        None => return None,
    };
    name.iter()
        .all(|&b| (33..=126).contains(&b))
        .then_some(name)
}

/// The parts of a Content-Type value (RFC 2045 §5.1) that conversion needs.
struct ContentType {
    /// Lower case.
    kind: Vec<u8>,
    /// Lower case.
    subtype: Vec<u8>,
    boundary: Option<Vec<u8>>,
}

impl ContentType {
    fn parse(value: &[u8]) -> Option<ContentType> {
        let mut lexer = Lexer::new(value);
        let kind = lexer.token()?.to_ascii_lowercase();
        if !lexer.punct(b'/') {
            return None;
        }
        let subtype = lexer.token()?.to_ascii_lowercase();
        let mut boundary = None;
        // Parameters as far as they parse; the first boundary counts.
        while lexer.punct(b';') {
            let Some(name) = lexer.token() else { break };
            if !lexer.punct(b'=') {
                break;
            }
            let Some(value) = lexer.value() else { break };
            if boundary.is_none() && name.eq_ignore_ascii_case(b"boundary") {
                boundary = Some(value);
            }
        }
        Some(ContentType {
            kind,
            subtype,
            boundary,
        })
    }
}

/// Tokens of a structured MIME header value (RFC 2045 §5.1 tokens and tspecials, RFC 5322
/// comments and quoted strings).
struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8]) -> Lexer<'a> {
        Lexer { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// White space and (nested) comments.
    fn skip_cfws(&mut self) {
        let mut comment = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'(' => comment += 1,
                b')' if comment > 0 => comment -= 1,
                b'\\' if comment > 0 => self.pos += 1,
                b' ' | b'\t' => {}
                _ if comment > 0 => {}
                _ => return,
            }
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<&'a [u8]> {
        self.skip_cfws();
        let start = self.pos;
        while self.peek().is_some_and(is_token_byte) {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.s[start..self.pos])
    }

    /// The tspecial `c`, consumed if it comes next.
    fn punct(&mut self, c: u8) -> bool {
        self.skip_cfws();
        let next = self.peek() == Some(c);
        if next {
            self.pos += 1;
        }
        next
    }

    /// A parameter value: a token or a quoted string (without its quotes and escapes).
    fn value(&mut self) -> Option<Vec<u8>> {
        self.skip_cfws();
        if self.peek() != Some(b'"') {
            return self.token().map(<[u8]>::to_vec);
        }
        self.pos += 1;
        let mut value = Vec::new();
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'"' => return Some(value),
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        value.push(escaped);
                        self.pos += 1;
                    }
                }
                _ => value.push(b),
            }
        }
        None
    }
}

/// RFC 2045 §5.1: a token is US-ASCII without SPACE, CTLs and tspecials.
fn is_token_byte(b: u8) -> bool {
    b > b' ' && b < 127 && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

/// A delimiter line of a multipart body (RFC 2046 §5.1.1).
struct Delimiter {
    /// Where the line starts.
    start: usize,
    /// After its CRLF (or at the end of the body).
    end: usize,
    /// The close delimiter, `--boundary--`.
    close: bool,
}

/// Is `line` (without its CRLF) `--boundary` or `--boundary--`, with the transport padding
/// (white space) RFC 2046 §5.1.1 allows after it? `Some(true)` for the close delimiter.
fn delimiter(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (close, padding) = match rest.strip_prefix(b"--") {
        Some(padding) => (true, padding),
        None => (false, rest),
    };
    padding
        .iter()
        .all(|&b| b == b' ' || b == b'\t')
        .then_some(close)
}

/// The delimiter lines of `body`, up to the close delimiter.
fn delimiters(body: &[u8], boundary: &[u8]) -> Vec<Delimiter> {
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let (content_end, end) = match find_crlf(&body[pos..]) {
            Some(i) => (pos + i, pos + i + 2),
            None => (body.len(), body.len()),
        };
        if let Some(close) = delimiter(&body[pos..content_end], boundary) {
            found.push(Delimiter {
                start: pos,
                end,
                close,
            });
            if close {
                break;
            }
        }
        pos = end;
    }
    found
}

/// A multipart body: preamble, parts, epilogue (RFC 2046 §5.1.1). The CRLF before a
/// delimiter line belongs to the delimiter, not to the part before it.
fn multipart(body: &[u8], boundary: &[u8], cx: Context, out: &mut Vec<u8>) {
    let found = delimiters(body, boundary);
    let Some(first) = found.first() else {
        // No part at all: the whole body is preamble.
        outside_parts(body, out);
        return;
    };
    let (preamble, crlf) = split_final_crlf(&body[..first.start]);
    outside_parts(preamble, out);
    out.extend_from_slice(crlf);
    for (i, d) in found.iter().enumerate() {
        out.extend_from_slice(&body[d.start..d.end]);
        if d.close {
            outside_parts(&body[d.end..], out);
            return;
        }
        match found.get(i + 1) {
            Some(next) => {
                let (part, crlf) = split_final_crlf(&body[d.end..next.start]);
                convert(part, cx, out);
                out.extend_from_slice(crlf);
            }
            // No close delimiter: the last part runs to the end of the body.
            None => convert(&body[d.end..], cx, out),
        }
    }
}

/// `text` without its final CRLF, and that CRLF (empty if there is none).
fn split_final_crlf(text: &[u8]) -> (&[u8], &[u8]) {
    match text.strip_suffix(CRLF) {
        Some(rest) => (rest, CRLF),
        None => (text, b""),
    }
}

fn find_crlf(text: &[u8]) -> Option<usize> {
    text.windows(2).position(|w| w == CRLF)
}

/// The lines of `text` split at CRLF: each line without its line end, and whether a CRLF
/// ended it (the last line may have none).
fn lines(text: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        match find_crlf(r) {
            Some(i) => {
                rest = Some(&r[i + 2..]);
                Some((&r[..i], true))
            }
            None => {
                rest = None;
                (!r.is_empty()).then_some((r, false))
            }
        }
    })
}

/// A preamble or epilogue (RFC 2046 §5.1.1: text for readers without MIME, which MIME
/// readers ignore). It has no encoding of its own to declare, so only its lines that hold
/// 8-bit octets are written quoted-printable; the others stay as they are.
fn outside_parts(text: &[u8], out: &mut Vec<u8>) {
    for (line, crlf) in lines(text) {
        if line.is_ascii() {
            out.extend_from_slice(line);
        } else {
            encode_line(line, out);
        }
        if crlf {
            out.extend_from_slice(CRLF);
        }
    }
}

/// RFC 2045 §6.7: quoted-printable, line by line. CRLF stays the hard line break; a bare CR
/// or LF is encoded like any control character, so nothing is lost.
fn encode_quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    for (line, crlf) in lines(body) {
        encode_line(line, out);
        if crlf {
            out.extend_from_slice(CRLF);
        }
    }
}

/// One line of text (without its line end) as quoted-printable lines of at most
/// [`MAX_LINE`] characters, joined by soft line breaks.
fn encode_line(line: &[u8], out: &mut Vec<u8>) {
    let mut width = 0;
    for (i, &b) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        let mut literal = match b {
            // RFC 2045 §6.7 rule 3: white space at the end of an encoded line is encoded,
            // because transports may strip it.
            b' ' | b'\t' => !last,
            // Rule 2: printable US-ASCII but "=" stands for itself.
            b'=' => false,
            33..=126 => true,
            // Rule 1: everything else as =XX.
            _ => false,
        };
        let needed = if literal { 1 } else { 3 };
        // Rule 5: the last piece of a line may use all 76 characters; any other needs
        // room for the "=" of a soft line break.
        let room = if last { MAX_LINE } else { MAX_LINE - 1 };
        if width + needed > room {
            out.extend_from_slice(b"=\r\n");
            width = 0;
        }
        // After a soft break, a line starting "--" could be read as a boundary delimiter
        // of an enclosing multipart (RFC 2046 §5.1.1); "=2D" can never be.
        if width == 0 && i > 0 && b == b'-' {
            literal = false;
        }
        if literal {
            out.push(b);
            width += 1;
        } else {
            push_hex(b, out);
            width += 3;
        }
    }
}

fn push_hex(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(b'=');
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0x0f)]);
}

/// A quoted-printable body holding raw 8-bit octets (not allowed by RFC 2045 §6.7, yet seen):
/// each becomes its =XX, which decodes to the same octet.
fn escape_8bit(body: &[u8], out: &mut Vec<u8>) {
    for &b in body {
        if b.is_ascii() {
            out.push(b);
        } else {
            push_hex(b, out);
        }
    }
}

/// A base64 body holding raw 8-bit octets: RFC 2045 §6.8 has decoders ignore characters
/// outside the base64 alphabet, so each becomes "?", also outside it (deleting them
/// instead could turn a line into a boundary delimiter).
fn scrub_base64(body: &[u8], out: &mut Vec<u8>) {
    out.extend(body.iter().map(|&b| if b.is_ascii() { b } else { b'?' }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conversion of `message`, as a string (it must be 7-bit apart from headers).
    fn converted(message: &[u8]) -> String {
        let out = to_seven_bit(message);
        assert!(matches!(out, Cow::Owned(_)), "expected a conversion");
        String::from_utf8(out.into_owned()).expect("converted message is 7-bit")
    }

    /// RFC 2045 §6.7 decoding, strict enough to catch a malformed encoding.
    fn decode_qp(text: &str) -> Vec<u8> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' {
                if b[i + 1..].starts_with(b"\r\n") {
                    i += 3;
                    continue;
                }
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).expect("=XX"));
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    /// The body of a converted single-part message.
    fn body_of(message: &str) -> &str {
        message.split_once("\r\n\r\n").expect("a header section").1
    }

    /// Every line of `text` fits RFC 2045 §6.7 rule 5 and no line ends in white space.
    fn assert_well_formed_qp(text: &str) {
        for line in text.split("\r\n") {
            assert!(line.len() <= MAX_LINE, "line of {}: {line:?}", line.len());
            assert!(
                !line.ends_with([' ', '\t']),
                "trailing white space: {line:?}"
            );
        }
    }

    const GRUSS: &str = "Grüße aus Köln, café = 5 €";

    #[test]
    fn a_single_text_part_becomes_quoted_printable() {
        let msg = format!(
            "From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\nSubject: x\r\n\r\n{GRUSS}\r\nsecond line\r\n"
        );
        let out = converted(msg.as_bytes());
        assert_eq!(
            out,
            "From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\nSubject: x\r\n\r\n\
             Gr=C3=BC=C3=9Fe aus K=C3=B6ln, caf=C3=A9 =3D 5 =E2=82=AC\r\nsecond line\r\n"
        );
        assert_eq!(
            decode_qp(body_of(&out)),
            format!("{GRUSS}\r\nsecond line\r\n").as_bytes()
        );
    }

    #[test]
    fn without_content_type_the_message_is_text_plain_and_gets_mime_headers() {
        let msg = format!("Subject: x\r\n\r\n{GRUSS}\r\n");
        let out = converted(msg.as_bytes());
        assert_eq!(
            out,
            "Subject: x\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\
             \r\nGr=C3=BC=C3=9Fe aus K=C3=B6ln, caf=C3=A9 =3D 5 =E2=82=AC\r\n"
        );
    }

    #[test]
    fn a_part_without_transfer_encoding_gets_one_and_other_parts_stay() {
        let msg = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
             preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{GRUSS}\r\n\
             --b1\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n--b1--\r\nepilogue\r\n"
        );
        let out = converted(msg.as_bytes());
        assert_eq!(
            out,
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
             preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\n\
             Gr=C3=BC=C3=9Fe aus K=C3=B6ln, caf=C3=A9 =3D 5 =E2=82=AC\r\n\
             --b1\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n--b1--\r\nepilogue\r\n"
        );
    }

    #[test]
    fn multipart_with_an_8bit_part_and_a_base64_part() {
        let b64 = "SGVsbG8sIHdvcmxkIQ==\r\nAAECAwQFBgcICQ==";
        let msg = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n\
             --XYZ\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\
             \r\n{GRUSS}\r\n--XYZ\r\nContent-Type: application/octet-stream\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--XYZ--\r\n"
        );
        let out = converted(msg.as_bytes());
        // The multipart's own label names its (now 7-bit) domain.
        assert!(
            out.starts_with(
                "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\
                 Content-Transfer-Encoding: 7bit\r\n\r\n--XYZ\r\n"
            ),
            "{out}"
        );
        assert!(out.contains(
            "Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe aus K=C3=B6ln"
        ));
        assert!(
            out.ends_with(&format!(
                "--XYZ\r\nContent-Type: application/octet-stream\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--XYZ--\r\n"
            )),
            "{out}"
        );
        let parsed = mail_parser::MessageParser::default()
            .parse(out.as_bytes())
            .unwrap();
        assert_eq!(parsed.body_text(0).unwrap(), GRUSS);
        assert_eq!(
            parsed.attachment(0).unwrap().contents(),
            b"Hello, world!\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09"
        );
    }

    #[test]
    fn nested_multipart() {
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=outer\r\n\r\n\
             --outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n\
             --inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\
             \r\n{GRUSS}\r\n--inner\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n<p>{GRUSS}</p>\r\n--inner--\r\n\
             --outer\r\nContent-Type: text/plain\r\n\r\nascii\r\n--outer--\r\n"
        );
        let out = converted(msg.as_bytes());
        assert_eq!(out.matches("quoted-printable").count(), 2, "{out}");
        assert!(out.contains("\r\n\r\n<p>Gr=C3=BC=C3=9Fe"), "{out}");
        let parsed = mail_parser::MessageParser::default()
            .parse(out.as_bytes())
            .unwrap();
        assert_eq!(parsed.body_text(0).unwrap(), GRUSS);
        assert_eq!(parsed.body_html(0).unwrap(), format!("<p>{GRUSS}</p>"));
        assert!(out.ends_with("--outer\r\nContent-Type: text/plain\r\n\r\nascii\r\n--outer--\r\n"));
    }

    #[test]
    fn a_message_rfc822_part_is_converted_inside() {
        let inner = format!(
            "From: c@d.test\r\nSubject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{GRUSS}\r\n"
        );
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\
             \r\nsee attached\r\n--b\r\nContent-Type: message/rfc822\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{inner}--b--\r\n"
        );
        let out = converted(msg.as_bytes());
        assert!(
            out.contains(
                "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\
                 From: c@d.test\r\nSubject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe"
            ),
            "{out}"
        );
        // The nested message has a MIME-Version of its own to care about; none is added there.
        assert_eq!(out.matches("MIME-Version").count(), 0, "{out}");
        assert!(out.ends_with("=E2=82=AC\r\n--b--\r\n"), "{out}");
    }

    #[test]
    fn a_digest_part_without_content_type_is_a_message() {
        let msg = "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n\
                   Subject: one\r\nContent-Type: text/plain\r\n\r\nna\u{ef}ve\r\n--d--\r\n";
        let out = converted(msg.as_bytes());
        assert!(
            out.contains(
                "--d\r\n\r\nSubject: one\r\nContent-Type: text/plain\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n--d--"
            ),
            "{out}"
        );
    }

    #[test]
    fn long_lines_are_wrapped_with_soft_breaks() {
        let long = "ä".repeat(100) + &"x".repeat(200) + " end";
        let msg = format!("Content-Transfer-Encoding: 8bit\r\n\r\n{long}\r\nshort\r\n");
        let out = converted(msg.as_bytes());
        let body = body_of(&out);
        assert_well_formed_qp(body);
        assert!(body.lines().count() > 8, "{body}");
        assert_eq!(decode_qp(body), format!("{long}\r\nshort\r\n").as_bytes());
        // A soft break never splits an =XX: each "=" is a soft break or starts one whole.
        for line in body.split("\r\n") {
            let b = line.as_bytes();
            for (i, _) in b.iter().enumerate().filter(|(_, &c)| c == b'=') {
                let soft = i + 1 == b.len();
                let escape = b
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                assert!(soft || escape, "{line:?}");
            }
        }
    }

    #[test]
    fn lines_fill_exactly_76_characters() {
        // 76 printable characters fit on one line; 77 do not.
        let line76 = "é".to_string() + &"a".repeat(70);
        assert_eq!(line76.len() + 4, 76); // "=C3=A9" replaces two octets
        let msg = format!("\r\n{line76}\r\n{line76}b\r\n");
        let body = body_of(&converted(msg.as_bytes())).to_string();
        let lines: Vec<&str> = body.split("\r\n").collect();
        assert_eq!(lines[0].len(), 76, "{body}");
        assert_eq!(lines[1].len(), 76, "{body}");
        assert!(lines[1].ends_with('='), "{body}");
        assert_eq!(lines[2], "ab");
        assert_eq!(
            decode_qp(&body),
            format!("{line76}\r\n{line76}b\r\n").as_bytes()
        );
    }

    #[test]
    fn the_equals_sign_itself_is_encoded() {
        let out = converted("\r\na=b \u{fc} =3D\r\n".as_bytes());
        assert_eq!(body_of(&out), "a=3Db =C3=BC =3D3D\r\n");
        assert_eq!(decode_qp(body_of(&out)), "a=b ü =3D\r\n".as_bytes());
    }

    #[test]
    fn trailing_white_space_is_encoded() {
        let out = converted("\r\nfin de l\u{ed}nea   \r\ntab\t\r\n \r\nno end \u{e9} ".as_bytes());
        let body = body_of(&out);
        assert_eq!(
            body,
            "fin de l=C3=ADnea  =20\r\ntab=09\r\n=20\r\nno end =C3=A9=20"
        );
        assert_well_formed_qp(body);
    }

    #[test]
    fn crlf_stays_the_line_break_and_bare_cr_lf_are_encoded() {
        let out = converted(b"\r\n\xe9\r\n\r\na\nb\rc\r\n");
        assert_eq!(body_of(&out), "=E9\r\n\r\na=0Ab=0Dc\r\n");
    }

    #[test]
    fn a_soft_break_never_starts_a_line_that_looks_like_a_boundary() {
        // 50 escapes fill two encoded lines of 75; the third would start with "--bound".
        let line = "é".repeat(25) + "--bound";
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=bound\r\n\r\n--bound\r\n\r\n{line}\r\n--bound--\r\n"
        );
        let out = converted(msg.as_bytes());
        assert!(out.contains("=\r\n=2D-bound\r\n--bound--"), "{out}");
        let parsed = mail_parser::MessageParser::default()
            .parse(out.as_bytes())
            .unwrap();
        assert_eq!(parsed.parts.len(), 2, "{out}");
    }

    #[test]
    fn a_message_without_8bit_octets_is_borrowed() {
        let msg = b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\
                    Content-Transfer-Encoding: 8bit\r\n\r\nonly ascii, though 8bit\r\n";
        assert!(matches!(to_seven_bit(msg), Cow::Borrowed(m) if m == msg));
        assert!(matches!(to_seven_bit(b""), Cow::Borrowed(b"")));
    }

    #[test]
    fn header_fields_are_never_touched() {
        // 8-bit octets only in header fields (top level and in a part): nothing to convert.
        let msg = "Subject: Grüße\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                   --b\r\nContent-Description: café\r\n\r\nascii\r\n--b--\r\n";
        assert!(matches!(to_seven_bit(msg.as_bytes()), Cow::Borrowed(_)));
        // With an 8-bit body as well, the body is converted and the header stays 8-bit.
        let msg = "Subject: Grüße\r\n\r\nGrüße\r\n";
        let out = to_seven_bit(msg.as_bytes());
        assert_eq!(
            out.as_ref(),
            "Subject: Grüße\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\
             \r\nGr=C3=BC=C3=9Fe\r\n"
                .as_bytes()
        );
    }

    #[test]
    fn encoded_parts_keep_their_encoding_and_stray_octets_are_made_7bit() {
        let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n\
                    --b\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\nd=C3=A9j\xc3\xa0 vu=\r\n!\r\n\
                    --b\r\nContent-Transfer-Encoding: base64 (comment)\r\n\r\nSGVs\xffbG8=\r\n--b--\r\n";
        let out = converted(msg);
        assert!(
            out.contains(
                "Quoted-Printable\r\n\r\nd=C3=A9j=C3=A0 vu=\r\n!\r\n--b\r\n\
                 Content-Transfer-Encoding: base64 (comment)\r\n\r\nSGVs?bG8=\r\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn a_preamble_and_an_epilogue_with_8bit_octets_are_encoded_line_by_line() {
        let msg = "Content-Type: multipart/mixed; boundary=b\r\n\r\nVorwort für  \r\nascii \r\n\
                   --b\r\n\r\nx\r\n--b--\r\nNachwort \u{e4}\r\n";
        let out = converted(msg.as_bytes());
        assert_eq!(
            body_of(&out),
            "Vorwort f=C3=BCr =20\r\nascii \r\n--b\r\n\r\nx\r\n--b--\r\nNachwort =C3=A4\r\n"
        );
    }

    #[test]
    fn a_missing_close_delimiter_ends_the_last_part_at_the_end() {
        let msg = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
                   Content-Type: text/plain; charset=utf-8\r\n\r\nüber\r\nalles\r\n";
        let out = converted(msg.as_bytes());
        assert!(
            out.ends_with(
                "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=BCber\r\nalles\r\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn garbage_headers_end_the_header_section_and_the_rest_is_body() {
        // A part whose "header" is not one, an entity whose section ends without an empty
        // line, a Content-Type that does not parse, a multipart without boundary.
        let cases: [&[u8]; 6] = [
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\xe9t\xe9: no header\r\nbody\r\n--b--\r\n",
            b"Subject: x\r\nnot a header line \xe9\r\nmore\r\n",
            b"Content-Type: ;;;/\xff\r\n\r\n\xff\xfe\r\n",
            b"Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\n\xe9\r\n--b--\r\n",
            b" leading continuation \xe9\r\n\r\n\xe9",
            b"\xe9\xe9\xe9",
        ];
        for msg in cases {
            let out = to_seven_bit(msg);
            assert!(matches!(out, Cow::Owned(_)), "{msg:?}");
            let body_start = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |i| i + 4);
            let body = std::str::from_utf8(&out[body_start..]).expect("a 7-bit body");
            assert_well_formed_qp(body);
        }
        let out = converted(b"Subject: x\r\nnot a header line \xe9\r\nmore\r\n");
        assert_eq!(
            out,
            "Subject: x\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\
             \r\nnot a header line =E9\r\nmore\r\n"
        );
    }

    #[test]
    fn deep_nesting_is_bounded_and_still_7bit() {
        let mut msg = String::new();
        for i in 0..(MAX_DEPTH + 50) {
            msg.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
            ));
        }
        msg.push_str("\r\nÜbermaß\r\n");
        let out = converted(msg.as_bytes());
        assert!(out.contains("=C3=9Cberma=C3=9F"), "{out}");
    }

    #[test]
    fn arbitrary_input_never_panics_and_leaves_no_8bit_body() {
        // A small deterministic generator of messy messages built from MIME-ish pieces.
        let pieces: [&[u8]; 16] = [
            b"Content-Type: multipart/mixed; boundary=q\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"Content-Transfer-Encoding: 8bit\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            b"\r\n",
            b"--q\r\n",
            b"--q--\r\n",
            b"\xc3\xa9\xff text \r\n",
            b" folded\r\n",
            b"=",
            b"\r",
            b"\n",
            b"-",
            b"x: y\r\n",
            b"\xe9",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut msg = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = 1 + seed % 40;
            let mut s = seed;
            for _ in 0..n {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                msg.extend_from_slice(pieces[(s >> 60) as usize]);
            }
            let out = to_seven_bit(&msg);
            // Whatever 8-bit octets remain sit in header fields, which stay as they were:
            // every line that still holds one is a line of the input.
            for line in out.split(|&b| b == b'\n').filter(|l| !l.is_ascii()) {
                assert!(
                    msg.windows(line.len()).any(|w| w == line),
                    "8-bit line {line:?} made up from {msg:?}"
                );
            }
            let again = to_seven_bit(&out);
            assert_eq!(again.as_ref(), out.as_ref(), "not idempotent for {msg:?}");
        }
    }
}
