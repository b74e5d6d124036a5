//! The `_smtp._tls.<domain>` TXT record (RFC 8460 §3): where a domain wants its TLS reports.
//!
//! A domain that wants to hear how senders fared with TLS towards its MX hosts publishes, at
//! `_smtp._tls.<domain>`, one TXT record such as
//! `v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://reports.example.com/v1`. Each `rua` URI
//! is a place to send the daily report: `mailto:` by mail (§5.3), `https:` by POST (§5.4).
//! This module picks that record out of the name's TXT records and turns it into a
//! [`TlsRptRecord`], or says, in words fit for an INFO log line, why there is none. Reports are
//! a courtesy: whatever goes wrong here only means no report is sent, never a delivery change.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The version field every TLS-RPT record starts with (RFC 8460 §3: `%s"v=TLSRPTv1"`, so
/// case-sensitive).
const VERSION: &str = "v=TLSRPTv1";

/// The name of the field that lists the report destinations (RFC 8460 §3: `%s"rua="`).
const RUA: &str = "rua=";

/// How much of a hostile or broken record an error message quotes: enough to recognise it in a
/// log line, not a 64 KiB TXT record.
const EXCERPT_CHARS: usize = 80;

/// RFC 5321 §4.5.3.1.1 and §4.5.3.1.2: the longest local part and domain of an address.
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;

/// One place a report goes (RFC 8460 §3, `rua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:`: the address to mail the report to, %-escapes decoded and any `?query` (RFC 6068
    /// header fields) dropped: the report's own headers are ours to choose (§5.3).
    Mailto(String),
    /// `https:`: the URL to POST the report to, exactly as published.
    Https(String),
}

impl fmt::Display for Rua {
    /// The URI form, re-escaped where RFC 8460 §3 and RFC 6068 require it, so that it parses
    /// back to the same [`Rua`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rua::Mailto(address) => write!(f, "mailto:{}", escape_address(address)),
            Rua::Https(url) => f.write_str(url),
        }
    }
}

/// A valid TLS-RPT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// The usable destinations, in the order published; never empty. URIs of other schemes are
    /// left out (RFC 8460 §3 defines only `mailto:` and `https:`).
    pub rua: Vec<Rua>,
}

/// Why a domain gets no TLS report: the words are meant for an operator reading an INFO line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no v=TLSRPTv1 record")]
    None,
    #[error("{0} v=TLSRPTv1 records (exactly one may be published)")]
    Several(usize),
    #[error("record does not begin with \"v=TLSRPTv1;\": {0:?}")]
    Version(String),
    #[error("no rua= field")]
    MissingRua,
    #[error("more than one rua= field")]
    DuplicateRua,
    #[error("field {0:?} is neither rua=URIs nor name=value")]
    BadField(String),
    #[error("whitespace after the last field {0:?} (allowed only before a ;)")]
    TrailingSpace(String),
    #[error("rua= lists no URI")]
    EmptyRua,
    #[error("rua: {0:?} is not a URI")]
    NotUri(String),
    #[error("rua: {0:?} has a literal {1:?}, which must be %-escaped")]
    Unescaped(String, char),
    #[error("rua: {0:?} is not a usable mailto: address")]
    BadMailto(String),
    #[error("rua: {0:?} is not an https: URL with a host")]
    BadHttps(String),
    #[error("rua: no mailto: or https: URI in {0:?}")]
    NoUsableUri(String),
}

/// The text of one TXT record: its character-strings joined without spaces (RFC 8460 §3: a
/// record split into several strings is read as if they were concatenated). Bytes that are not
/// UTF-8 become U+FFFD, which no valid record contains, so they fail parsing instead of
/// vanishing.
pub fn txt_text(strings: &[&[u8]]) -> String {
    strings
        .iter()
        .map(|s| String::from_utf8_lossy(s))
        .collect::<String>()
}

/// Picks the TLS-RPT record out of all TXT records at `_smtp._tls.<domain>` (each element one
/// record, its strings already joined by [`txt_text`]) and parses it.
pub fn select(records: &[String]) -> Result<TlsRptRecord, RecordError> {
    // RFC 8460 §3: records that do not begin with "v=TLSRPTv1;" are discarded; if the number of
    // resulting records is not one, the domain does not implement TLS-RPT.
    let tlsrpt: Vec<&String> = records.iter().filter(|r| is_tlsrpt(r)).collect();
    match tlsrpt.as_slice() {
        [] => Err(RecordError::None),
        [one] => parse(one),
        many => Err(RecordError::Several(many.len())),
    }
}

/// True when the record begins with `v=TLSRPTv1` and its first delimiter (RFC 8460 §3:
/// `field-delim = *WSP ";" *WSP`), so `v=TLSRPTv1 ;` counts and `v=TLSRPTv10;` does not.
fn is_tlsrpt(text: &str) -> bool {
    text.strip_prefix(VERSION)
        .is_some_and(|rest| rest.trim_start_matches(is_wsp).starts_with(';'))
}

/// Parses the text of one TLS-RPT record (RFC 8460 §3):
///
/// `tlsrpt-record = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]`
pub fn parse(text: &str) -> Result<TlsRptRecord, RecordError> {
    let rest = text
        .strip_prefix(VERSION)
        .ok_or_else(|| RecordError::Version(excerpt(text)))?;
    let mut pieces = rest.split(';');
    // Before the first ";" only the whitespace of a field-delim may follow the version.
    if !pieces.next().unwrap_or_default().chars().all(is_wsp) {
        return Err(RecordError::Version(excerpt(text)));
    }
    let mut rua = None;
    for field in fields(pieces.collect())? {
        match classify(field)? {
            Field::Rua(_) if rua.is_some() => return Err(RecordError::DuplicateRua),
            Field::Rua(value) => rua = Some(value),
            // RFC 8460 §3: unknown fields of a syntactically valid record are ignored.
            Field::Extension => {}
        }
    }
    let rua = parse_rua(rua.ok_or(RecordError::MissingRua)?)?;
    Ok(TlsRptRecord { rua })
}

/// The fields of a record, given the pieces between its `;`s after the version. The whitespace
/// around each `;` belongs to the delimiter (`*WSP ";" *WSP`); after the last field there may be
/// one more delimiter, but no bare whitespace.
fn fields(pieces: Vec<&str>) -> Result<Vec<&str>, RecordError> {
    let last = pieces.len().saturating_sub(1);
    let mut fields = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.into_iter().enumerate() {
        let field = piece.trim_start_matches(is_wsp);
        if i < last {
            let field = field.trim_end_matches(is_wsp);
            if field.is_empty() {
                return Err(RecordError::BadField(String::new()));
            }
            fields.push(field);
        } else if field.is_empty() {
            // The optional trailing delimiter.
        } else if field.ends_with(is_wsp) {
            return Err(RecordError::TrailingSpace(excerpt(field)));
        } else {
            fields.push(field);
        }
    }
    Ok(fields)
}

/// One field of the record.
enum Field<'a> {
    /// `rua=`, with the text after the `=`.
    Rua(&'a str),
    /// `tlsrpt-extension`, which a sender ignores.
    Extension,
}

/// Tells `rua=` from an extension field, or rejects the field. A field named exactly `rua` is
/// always the rua field: the ABNF would also let a malformed `rua=` pass as an extension, which
/// would hide the publisher's mistake behind a "no rua" error or, beside a second `rua=`, not
/// show it at all.
fn classify(field: &str) -> Result<Field<'_>, RecordError> {
    if let Some(value) = field.strip_prefix(RUA) {
        return Ok(Field::Rua(value));
    }
    match field.split_once('=') {
        Some((name, value)) if valid_ext_name(name) && valid_ext_value(value) => {
            Ok(Field::Extension)
        }
        _ => Err(RecordError::BadField(excerpt(field))),
    }
}

/// RFC 8460 §3: `tlsrpt-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`.
fn valid_ext_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// RFC 8460 §3: `tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)`: printable ASCII but `;`
/// and `=`.
fn valid_ext_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e))
}

/// The value of `rua=` (RFC 8460 §3: `tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)`) as the usable
/// destinations. A malformed URI fails the record; a well-formed one of another scheme is
/// skipped, since it may be meant for a later sender.
fn parse_rua(value: &str) -> Result<Vec<Rua>, RecordError> {
    if value.is_empty() {
        return Err(RecordError::EmptyRua);
    }
    let pieces: Vec<&str> = value.split(',').collect();
    let last = pieces.len().saturating_sub(1);
    let mut rua = Vec::new();
    for (i, piece) in pieces.into_iter().enumerate() {
        // The whitespace around a "," belongs to the separator, not to the URIs.
        let uri = if i > 0 {
            piece.trim_start_matches(is_wsp)
        } else {
            piece
        };
        let uri = if i < last {
            uri.trim_end_matches(is_wsp)
        } else {
            uri
        };
        if let Some(usable) = parse_uri(uri)? {
            rua.push(usable);
        }
    }
    if rua.is_empty() {
        return Err(RecordError::NoUsableUri(excerpt(value)));
    }
    Ok(rua)
}

/// One `tlsrpt-uri`: `None` for a well-formed URI of a scheme TLS-RPT does not define.
fn parse_uri(uri: &str) -> Result<Option<Rua>, RecordError> {
    let (scheme, rest) = check_uri(uri)?;
    // RFC 3986 §3.1: schemes are case-insensitive.
    if scheme.eq_ignore_ascii_case("mailto") {
        mailto_address(rest)
            .map(|address| Some(Rua::Mailto(address)))
            .ok_or_else(|| RecordError::BadMailto(excerpt(uri)))
    } else if scheme.eq_ignore_ascii_case("https") {
        if https_has_host(rest) {
            Ok(Some(Rua::Https(uri.to_string())))
        } else {
            Err(RecordError::BadHttps(excerpt(uri)))
        }
    } else {
        Ok(None)
    }
}

/// Checks the generic URI syntax (RFC 3986 §3: `scheme ":" hier-part ["?" query] ["#" fragment]`,
/// by character class) and splits off the scheme. RFC 8460 §3 also requires `,`, `!` and `;` to
/// be %-escaped; `,` and `;` cannot reach here unescaped, `!` can.
fn check_uri(uri: &str) -> Result<(&str, &str), RecordError> {
    let not_uri = || RecordError::NotUri(excerpt(uri));
    let (scheme, rest) = uri.split_once(':').ok_or_else(not_uri)?;
    let mut scheme_bytes = scheme.bytes();
    let scheme_ok = scheme_bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme_bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || rest.matches('#').count() > 1 || !valid_escapes(rest) {
        return Err(not_uri());
    }
    if rest.contains('!') {
        return Err(RecordError::Unescaped(excerpt(uri), '!'));
    }
    if !rest.bytes().all(is_uri_byte) {
        return Err(not_uri());
    }
    Ok((scheme, rest))
}

/// RFC 3986 §2: the characters a URI may hold after its scheme: unreserved, sub-delims, the
/// gen-delims, and `%` (its escapes are checked apart).
fn is_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?#[]%".contains(&b)
}

/// True when every `%` starts a `%HH` escape (RFC 3986 §2.1).
fn valid_escapes(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// The address of a `mailto:` URI (RFC 6068 §2), given what follows `mailto:`: the part before
/// any `?` header fields, %-decoded, if it is one deliverable address. RFC 6068 allows several
/// addresses separated by commas, but RFC 8460 §3 makes every comma an escaped one, so a decoded
/// comma outside a quoted local part is a malformed address, not a second recipient.
fn mailto_address(rest: &str) -> Option<String> {
    let encoded = rest.split(['?', '#']).next().unwrap_or_default();
    let address = percent_decode(encoded)?;
    valid_address(&address).then_some(address)
}

/// Decodes `%HH` escapes; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An address the report mail can go to: RFC 5321 §4.1.2's `Mailbox` (with RFC 6531's UTF-8),
/// so that it can be written into `RCPT TO:<...>` as it is.
fn valid_address(address: &str) -> bool {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            local.len() <= MAX_LOCAL_PART
                && domain.len() <= MAX_DOMAIN
                && valid_local_part(local)
                && (valid_domain(domain) || valid_address_literal(domain))
        }
        None => false,
    }
}

/// RFC 5321 §4.1.2: `Local-part = Dot-string / Quoted-string`.
fn valid_local_part(local: &str) -> bool {
    if let Some(inner) = local
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        return valid_quoted(inner);
    }
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// RFC 5321 §4.1.2: `atext`, plus RFC 6531's UTF-8.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_text(c)
}

/// RFC 6531 §3.3's `UTF8-non-ascii`, less the characters that are blanks or controls (U+0085,
/// U+2003, …), which would be as misleading in an address as their ASCII kin.
fn is_utf8_text(c: char) -> bool {
    !c.is_ascii() && !c.is_control() && !c.is_whitespace()
}

/// RFC 5321 §4.1.2: the inside of a `Quoted-string`: `qtextSMTP` (printable ASCII but `"` and
/// `\`) or `\` followed by printable ASCII. Narrower than the RFC on purpose: no space, `<` or
/// `>`, even quoted, so the address cannot be misread where it is written into `RCPT TO:<...>`
/// or a header; a report address has no use for them.
fn valid_quoted(inner: &str) -> bool {
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let ok = match c {
            '\\' => chars.next().is_some_and(is_quotable),
            '"' => false,
            other => is_quotable(other),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// What a quoted local part may hold here: visible ASCII but the angle brackets, or UTF-8.
fn is_quotable(c: char) -> bool {
    match c {
        '<' | '>' => false,
        '!'..='~' => true,
        other => is_utf8_text(other),
    }
}

/// RFC 5321 §4.1.2: `Domain = sub-domain *("." sub-domain)`, with RFC 6531's U-labels.
fn valid_domain(domain: &str) -> bool {
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || is_utf8_text(c))
    })
}

/// RFC 5321 §4.1.3: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn valid_address_literal(domain: &str) -> bool {
    let Some(inner) = domain
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    else {
        return false;
    };
    match inner.strip_prefix("IPv6:") {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => inner.parse::<Ipv4Addr>().is_ok(),
    }
}

/// True when what follows `https:` names a host (RFC 3986 §3.2: `"//" authority`, `authority =
/// [userinfo "@"] host [":" port]`), as an HTTP client needs to POST to it.
fn https_has_host(rest: &str) -> bool {
    let Some(after) = rest.strip_prefix("//") else {
        return false;
    };
    let authority = after.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_userinfo, host_port)| host_port);
    let (host, port) = split_port(host_port);
    let port_ok = port.is_none_or(|p| p.is_empty() || p.parse::<u16>().is_ok());
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => !host.is_empty() && !host.contains(['[', ']', ':']),
    };
    port_ok && host_ok
}

/// Splits `host[:port]`, minding the colons of an IPv6 literal `[..]`.
fn split_port(host_port: &str) -> (&str, Option<&str>) {
    let after_literal = host_port.rfind(']').map_or(0, |i| i + 1);
    match host_port
        .get(after_literal..)
        .and_then(|tail| tail.find(':'))
    {
        Some(colon) => {
            let at = after_literal + colon;
            (
                host_port.get(..at).unwrap_or_default(),
                host_port.get(at + 1..),
            )
        }
        None => (host_port, None),
    }
}

/// The address as the path of a `mailto:` URI: every character a URI path may not hold
/// unescaped, and those RFC 8460 §3 forbids (`,` `!` `;`), %-escaped; of the `@`s only the one
/// before the domain stays literal (RFC 6068 §2).
fn escape_address(address: &str) -> String {
    let separator = address.rfind('@');
    let mut out = String::with_capacity(address.len());
    for (i, c) in address.char_indices() {
        let literal = c.is_ascii_alphanumeric()
            || "-._~$&'()*+=".contains(c)
            || (c == '@' && Some(i) == separator);
        if literal {
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// RFC 5234 `WSP`: space or horizontal tab.
fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The start of `text`, for an error message.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailto(address: &str) -> Rua {
        Rua::Mailto(address.to_string())
    }

    fn https(url: &str) -> Rua {
        Rua::Https(url.to_string())
    }

    #[track_caller]
    fn good(text: &str, rua: &[Rua]) {
        assert_eq!(
            parse(text),
            Ok(TlsRptRecord { rua: rua.to_vec() }),
            "{text:?}"
        );
    }

    #[track_caller]
    fn bad(text: &str, error: RecordError) {
        assert_eq!(parse(text), Err(error), "{text:?}");
    }

    fn select_strs(records: &[&str]) -> Result<TlsRptRecord, RecordError> {
        let owned: Vec<String> = records.iter().map(|s| s.to_string()).collect();
        select(&owned)
    }

    #[test]
    fn rfc_examples() {
        // RFC 8460 §3.1 and §3.2.
        good(
            "v=TLSRPTv1;rua=mailto:reports@example.com",
            &[mailto("reports@example.com")],
        );
        good(
            "v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt",
            &[https("https://reporting.example.com/v1/tlsrpt")],
        );
    }

    #[test]
    fn whitespace_around_delimiters() {
        let r = [mailto("a@example.com")];
        for text in [
            "v=TLSRPTv1;rua=mailto:a@example.com",
            "v=TLSRPTv1 ;rua=mailto:a@example.com",
            "v=TLSRPTv1; rua=mailto:a@example.com",
            "v=TLSRPTv1  ;  rua=mailto:a@example.com",
            "v=TLSRPTv1\t;\trua=mailto:a@example.com",
            "v=TLSRPTv1 \t; \t rua=mailto:a@example.com",
        ] {
            good(text, &r);
        }
    }

    #[test]
    fn trailing_delimiter() {
        let r = [mailto("a@example.com")];
        for text in [
            "v=TLSRPTv1;rua=mailto:a@example.com;",
            "v=TLSRPTv1; rua=mailto:a@example.com ;",
            "v=TLSRPTv1; rua=mailto:a@example.com; ",
            "v=TLSRPTv1; rua=mailto:a@example.com \t;\t ",
        ] {
            good(text, &r);
        }
    }

    #[test]
    fn several_uris() {
        let two = [mailto("a@example.com"), mailto("b@example.net")];
        for text in [
            "v=TLSRPTv1; rua=mailto:a@example.com,mailto:b@example.net",
            "v=TLSRPTv1; rua=mailto:a@example.com, mailto:b@example.net",
            "v=TLSRPTv1; rua=mailto:a@example.com ,mailto:b@example.net",
            "v=TLSRPTv1; rua=mailto:a@example.com \t,\t mailto:b@example.net ;",
        ] {
            good(text, &two);
        }
        good(
            "v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://r.example.com/v1?x=1#f",
            &[
                mailto("tlsrpt@example.com"),
                https("https://r.example.com/v1?x=1#f"),
            ],
        );
        good(
            "v=TLSRPTv1; rua=https://a.example/, mailto:b@example.net, https://[2001:db8::1]:8443/r",
            &[
                https("https://a.example/"),
                mailto("b@example.net"),
                https("https://[2001:db8::1]:8443/r"),
            ],
        );
    }

    #[test]
    fn mailto_escapes_and_query() {
        let cases = [
            ("mailto:a%21b@example.com", "a!b@example.com"),
            ("mailto:%22a%2Cb%22@example.com", "\"a,b\"@example.com"),
            (
                "mailto:%22a%3Bb%40c%22@example.com",
                "\"a;b@c\"@example.com",
            ),
            ("mailto:tls%2brpt@example.com", "tls+rpt@example.com"),
            ("mailto:r%C3%A9@example.com", "ré@example.com"),
            (
                "mailto:reports@example.com?subject=TLS%20report",
                "reports@example.com",
            ),
            ("mailto:reports@example.com?", "reports@example.com"),
            ("MAILTO:reports@example.com", "reports@example.com"),
            ("mailto:reports@[192.0.2.1]", "reports@[192.0.2.1]"),
            (
                "mailto:reports@[IPv6:2001:db8::1]",
                "reports@[IPv6:2001:db8::1]",
            ),
        ];
        for (uri, address) in cases {
            good(&format!("v=TLSRPTv1; rua={uri}"), &[mailto(address)]);
        }
    }

    #[test]
    fn https_as_given() {
        for url in [
            "https://reporting.example.com/v1/tlsrpt",
            "HTTPS://Reporting.Example.com",
            "https://r.example:443/x%20y",
            "https://user:pw@r.example/",
            "https://192.0.2.1/r",
        ] {
            good(&format!("v=TLSRPTv1; rua={url}"), &[https(url)]);
        }
    }

    #[test]
    fn other_schemes_are_skipped() {
        good(
            "v=TLSRPTv1; rua=http://r.example/,mailto:a@example.com,urn:x:y",
            &[mailto("a@example.com")],
        );
        bad(
            "v=TLSRPTv1; rua=http://r.example/",
            RecordError::NoUsableUri("http://r.example/".into()),
        );
        bad(
            "v=TLSRPTv1; rua=ftp://r.example/, tel:+1-555",
            RecordError::NoUsableUri("ftp://r.example/, tel:+1-555".into()),
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let r = [mailto("a@example.com")];
        for text in [
            "v=TLSRPTv1; ext=1; rua=mailto:a@example.com",
            "v=TLSRPTv1; rua=mailto:a@example.com; ruf=mailto:b@example.com",
            "v=TLSRPTv1; x_y-z.w=any:thing/<>; rua=mailto:a@example.com; 9=9;",
            // `v` again, and `rua` in another case, are extensions (field names are %s).
            "v=TLSRPTv1; v=TLSRPTv2; rua=mailto:a@example.com",
            "v=TLSRPTv1; RUA=mailto:b@example.com; rua=mailto:a@example.com",
        ] {
            good(text, &r);
        }
        let name32 = format!("a{}", "b".repeat(31));
        good(
            &format!("v=TLSRPTv1; {name32}=1; rua=mailto:a@example.com"),
            &r,
        );
    }

    #[test]
    fn bad_versions() {
        for text in [
            "v=TLSRPTv2; rua=mailto:a@example.com",
            "v=tlsrptv1; rua=mailto:a@example.com",
            "V=TLSRPTv1; rua=mailto:a@example.com",
            "v=TLSRPTv10; rua=mailto:a@example.com",
            "v=TLSRPTv1rua=mailto:a@example.com",
            "v=TLSRPTv1 rua=mailto:a@example.com",
            " v=TLSRPTv1; rua=mailto:a@example.com",
            "v = TLSRPTv1; rua=mailto:a@example.com",
            "rua=mailto:a@example.com; v=TLSRPTv1",
            "",
        ] {
            bad(text, RecordError::Version(text.to_string()));
        }
    }

    #[test]
    fn missing_empty_or_duplicate_rua() {
        bad("v=TLSRPTv1", RecordError::MissingRua);
        bad("v=TLSRPTv1;", RecordError::MissingRua);
        bad("v=TLSRPTv1 ; ", RecordError::MissingRua);
        bad(
            "v=TLSRPTv1; ruf=mailto:a@example.com",
            RecordError::MissingRua,
        );
        bad(
            "v=TLSRPTv1; RUA=mailto:a@example.com",
            RecordError::MissingRua,
        );
        bad("v=TLSRPTv1; rua=", RecordError::EmptyRua);
        bad("v=TLSRPTv1; rua=;", RecordError::EmptyRua);
        bad(
            "v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com",
            RecordError::DuplicateRua,
        );
        bad(
            "v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:a@example.com",
            RecordError::DuplicateRua,
        );
        // A malformed second rua is still a second rua, not an extension.
        bad(
            "v=TLSRPTv1; rua=mailto:a@example.com; rua=garbage",
            RecordError::DuplicateRua,
        );
    }

    #[test]
    fn bad_fields() {
        let cases = [
            ("v=TLSRPTv1;; rua=mailto:a@example.com", ""),
            ("v=TLSRPTv1; rua=mailto:a@example.com;;", ""),
            ("v=TLSRPTv1; rua=mailto:a@example.com; ; ", ""),
            (
                "v=TLSRPTv1; rua =mailto:a@example.com",
                "rua =mailto:a@example.com",
            ),
            ("v=TLSRPTv1; rua=mailto:a@example.com; garbage", "garbage"),
            ("v=TLSRPTv1; rua=mailto:a@example.com; ext=", "ext="),
            ("v=TLSRPTv1; rua=mailto:a@example.com; =x", "=x"),
            ("v=TLSRPTv1; rua=mailto:a@example.com; a=b=c", "a=b=c"),
            ("v=TLSRPTv1; rua=mailto:a@example.com; a=b c", "a=b c"),
            ("v=TLSRPTv1; rua=mailto:a@example.com; _a=b", "_a=b"),
            ("v=TLSRPTv1; rua=mailto:a@example.com; a=é", "a=é"),
        ];
        for (text, field) in cases {
            bad(text, RecordError::BadField(field.to_string()));
        }
        let name33 = format!("a{}", "b".repeat(32));
        bad(
            &format!("v=TLSRPTv1; rua=mailto:a@example.com; {name33}=1"),
            RecordError::BadField(format!("{name33}=1")),
        );
    }

    #[test]
    fn whitespace_after_last_field() {
        bad(
            "v=TLSRPTv1; rua=mailto:a@example.com ",
            RecordError::TrailingSpace("rua=mailto:a@example.com ".into()),
        );
        bad(
            "v=TLSRPTv1; rua=mailto:a@example.com; ext=1\t",
            RecordError::TrailingSpace("ext=1\t".into()),
        );
    }

    #[test]
    fn malformed_uris() {
        let not_uri = [
            ("rua=reports@example.com", "reports@example.com"),
            ("rua= mailto:a@example.com", " mailto:a@example.com"),
            ("rua=mailto:a@example.com,,mailto:b@example.com", ""),
            ("rua=mailto:a@example.com,", ""),
            ("rua=mailto:a b@example.com", "mailto:a b@example.com"),
            ("rua=mailto:a%zz@example.com", "mailto:a%zz@example.com"),
            ("rua=mailto:a@example.com%2", "mailto:a@example.com%2"),
            ("rua=1mailto:a@example.com", "1mailto:a@example.com"),
            ("rua=:a@example.com", ":a@example.com"),
            ("rua=mailto:a\"b@example.com", "mailto:a\"b@example.com"),
            ("rua=https://r.example/#a#b", "https://r.example/#a#b"),
            ("rua=mailto:ré@example.com", "mailto:ré@example.com"),
        ];
        for (field, uri) in not_uri {
            bad(
                &format!("v=TLSRPTv1; {field}"),
                RecordError::NotUri(uri.to_string()),
            );
        }
        bad(
            "v=TLSRPTv1; rua=mailto:a!b@example.com",
            RecordError::Unescaped("mailto:a!b@example.com".into(), '!'),
        );
    }

    #[test]
    fn unusable_mailto() {
        for uri in [
            "mailto:",
            "mailto:?subject=x",
            "mailto:nobody",
            "mailto:@example.com",
            "mailto:a@",
            "mailto:a@example..com",
            "mailto:a@-example.com",
            "mailto:a.@example.com",
            "mailto:a%0D%0A@example.com",
            "mailto:a%20b@example.com",
            "mailto:%3Ca%3E@example.com",
            "mailto:a@example.com%2Cb@example.net",
            "mailto:a%40b@example.com",
            "mailto:a%FF@example.com",
            "mailto:a@[192.0.2.300]",
            "mailto:a@[IPv6:zz]",
            "mailto:%22a%22b%22@example.com",
            "mailto:%22a%20b%22@example.com",
            "mailto:%22a%5C%20b%22@example.com",
            "mailto:%22a%3Cb%22@example.com",
            "mailto:%22a%E2%80%83b%22@example.com",
            "mailto:a%E2%80%83b@example.com",
            "mailto:a%C2%85b@example.com",
            "mailto:a@exa%E2%80%83mple.com",
        ] {
            bad(
                &format!("v=TLSRPTv1; rua={uri}"),
                RecordError::BadMailto(uri.to_string()),
            );
        }
        let long_local = format!("mailto:{}@example.com", "a".repeat(65));
        bad(
            &format!("v=TLSRPTv1; rua={long_local}"),
            RecordError::BadMailto(excerpt(&long_local)),
        );
    }

    #[test]
    fn unusable_https() {
        for uri in [
            "https:r.example/path",
            "https:/r.example/path",
            "https://",
            "https:///path",
            "https://user@/path",
            "https://r.example:99999/",
            "https://r.example:x/",
            "https://[zz]/",
            "https://[2001:db8::1/",
            "https://a:b:c/",
        ] {
            bad(
                &format!("v=TLSRPTv1; rua={uri}"),
                RecordError::BadHttps(uri.to_string()),
            );
        }
    }

    #[test]
    fn select_counts_only_tlsrpt_records() {
        let one = Ok(TlsRptRecord {
            rua: vec![mailto("a@example.com")],
        });
        assert_eq!(select_strs(&["v=TLSRPTv1;rua=mailto:a@example.com"]), one);
        assert_eq!(
            select_strs(&[
                "v=spf1 -all",
                "v=TLSRPTv2; rua=mailto:b@example.com",
                "v=TLSRPTv1 ; rua=mailto:a@example.com",
                "google-site-verification=x",
            ]),
            one
        );
        // Without a ";" after the version the record is not a v=TLSRPTv1 record at all.
        assert_eq!(
            select_strs(&[
                "v=TLSRPTv1",
                "v=TLSRPTv1 rua=mailto:b@example.com",
                "v=TLSRPTv10; rua=mailto:b@example.com",
                "v=TLSRPTv1; rua=mailto:a@example.com",
            ]),
            one
        );
        assert_eq!(select_strs(&[]), Err(RecordError::None));
        assert_eq!(
            select_strs(&["v=spf1 -all", "v=tlsrptv1; rua=mailto:a@example.com"]),
            Err(RecordError::None)
        );
        assert_eq!(
            select_strs(&[
                "v=TLSRPTv1; rua=mailto:a@example.com",
                "v=TLSRPTv1; rua=mailto:a@example.com",
            ]),
            Err(RecordError::Several(2))
        );
        assert_eq!(
            select_strs(&[
                "v=TLSRPTv1; rua=mailto:a@example.com",
                "v=TLSRPTv1;",
                "v=TLSRPTv1\t; garbage",
            ]),
            Err(RecordError::Several(3))
        );
        // The one record counted is then parsed, and its errors are reported.
        assert_eq!(
            select_strs(&["v=TLSRPTv1; ext=1"]),
            Err(RecordError::MissingRua)
        );
    }

    #[test]
    fn txt_strings_are_joined_without_spaces() {
        assert_eq!(
            txt_text(&[b"v=TLSRPTv1; rua=mailto:a@exa", b"mple.com"]),
            "v=TLSRPTv1; rua=mailto:a@example.com"
        );
        assert_eq!(txt_text(&[]), "");
        assert_eq!(txt_text(&[b"v=TLSRPTv1;", b"", b"x"]), "v=TLSRPTv1;x");
        let lossy = txt_text(&[b"v=TLSRPTv1; rua=mailto:a\xff@example.com"]);
        assert_eq!(lossy, "v=TLSRPTv1; rua=mailto:a\u{fffd}@example.com");
        assert!(parse(&lossy).is_err());
    }

    #[test]
    fn display_gives_a_uri_that_parses_back() {
        for rua in [
            mailto("reports@example.com"),
            mailto("a!b@example.com"),
            mailto("\"a,b;c@d\"@example.com"),
            mailto("\"a\\\"b\"@example.com"),
            mailto("ré+x@exämple.com"),
            mailto("a@[IPv6:2001:db8::1]"),
            https("https://r.example/v1?a=b"),
        ] {
            let uri = rua.to_string();
            good(&format!("v=TLSRPTv1;rua={uri}"), std::slice::from_ref(&rua));
        }
        assert_eq!(
            mailto("reports@example.com").to_string(),
            "mailto:reports@example.com"
        );
        assert_eq!(
            mailto("a!b@example.com").to_string(),
            "mailto:a%21b@example.com"
        );
        assert_eq!(
            https("https://r.example/v1").to_string(),
            "https://r.example/v1"
        );
    }

    #[test]
    fn error_messages_read_as_log_lines() {
        assert_eq!(RecordError::None.to_string(), "no v=TLSRPTv1 record");
        assert_eq!(
            RecordError::Several(2).to_string(),
            "2 v=TLSRPTv1 records (exactly one may be published)"
        );
        assert_eq!(
            RecordError::NotUri("reports@example.com".into()).to_string(),
            "rua: \"reports@example.com\" is not a URI"
        );
        let long = format!("v=TLSRPTv1; rua={}", "x".repeat(10_000));
        let message = parse(&long).map(|_| ()).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn garbage_never_panics() {
        let fixed = [
            "v=TLSRPTv1;rua=mailto:%",
            "v=TLSRPTv1;rua=mailto:%e",
            "v=TLSRPTv1;rua=mailto:a@b%C3",
            "v=TLSRPTv1;rua=https://[",
            "v=TLSRPTv1;rua=https://]",
            "v=TLSRPTv1;rua=https://[::1]x",
            "v=TLSRPTv1;rua=https://@",
            "v=TLSRPTv1;rua=mailto:\"",
            "v=TLSRPTv1;rua=mailto:%22%5C%22@x",
            "v=TLSRPTv1;rua=é,ü,,;;;==",
            "v=TLSRPTv1\u{0}; rua=mailto:a@b",
            "v=TLSRPTv1;\u{feff}rua=mailto:a@b",
        ];
        for text in fixed {
            let _ = parse(text);
            let _ = select(&[text.to_string()]);
        }
        // A deterministic stream of records built from the pieces the parser cares about, so
        // that some parse and their Display must parse back to the same record.
        let tokens = [
            "mailto:",
            "https://",
            "http://",
            "a",
            "b.example",
            "@",
            "%2C",
            "%21",
            "%22",
            "%40",
            "%5C",
            "%C3%A9",
            "%",
            "%F",
            ",",
            ", ",
            ";",
            "; ",
            " ",
            "\t",
            "[",
            "]",
            "::1",
            ":",
            "/",
            "?",
            "#",
            "=",
            "ext=1",
            "rua=",
            "\"",
            "\\",
            "é",
            ".",
            "-",
            "!",
            "\u{0}",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let starts = ["mailto:a", "https://b.example", ""];
            let mut text = format!("v=TLSRPTv1;rua={}", starts[next() % starts.len()]);
            for _ in 0..next() % 10 {
                text.push_str(tokens[next() % tokens.len()]);
            }
            if let Ok(record) = parse(&text) {
                accepted += 1;
                assert!(!record.rua.is_empty());
                let again = record
                    .rua
                    .iter()
                    .map(Rua::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                assert_eq!(
                    parse(&format!("v=TLSRPTv1;rua={again}")),
                    Ok(record),
                    "{text:?}"
                );
            }
        }
        assert!(accepted > 500, "only {accepted} generated records parsed");
    }
}
