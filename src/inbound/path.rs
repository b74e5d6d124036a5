//! Reverse- and forward-paths (RFC 5321 §4.1.2): `<local-part@domain>` in MAIL FROM and
//! RCPT TO, `<>` for the null sender, with UTF-8 allowed where SMTPUTF8 (RFC 6531 §3.3) allows it.
//! The session decides whether UTF-8 was declared; this module only checks the shape.

/// Why a path was refused; the session turns it into a 501 with the right enhanced code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub &'static str);

/// Splits `<path> params…` into the path (without brackets, source route dropped) and the
/// parameter text after it.
pub fn split_path(text: &str) -> Result<(String, &str), PathError> {
    let text = text.trim_start();
    let Some(inner) = text.strip_prefix('<') else {
        return Err(PathError("path must be enclosed in <>"));
    };
    let end = closing_bracket(inner).ok_or(PathError("missing closing >"))?;
    let path = &inner[..end];
    let rest = &inner[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(PathError("junk after path"));
    }
    Ok((strip_source_route(path)?.to_string(), rest.trim()))
}

/// The index of the `>` that closes the path, skipping quoted strings of the local part.
fn closing_bracket(inner: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// RFC 5321 §4.1.2 and Appendix C: a source route `@a,@b:` must be accepted and ignored.
fn strip_source_route(path: &str) -> Result<&str, PathError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let (route, mailbox) = path.split_once(':').ok_or(PathError("bad source route"))?;
    let ok = route
        .split(',')
        .all(|hop| hop.strip_prefix('@').is_some_and(valid_domain));
    if ok {
        Ok(mailbox)
    } else {
        Err(PathError("bad source route"))
    }
}

/// Checks `local-part@domain`. Not a full RFC 5321 grammar: it rejects what could confuse a
/// later hop (spaces, controls, brackets, missing parts) and lets ordinary oddities pass.
pub fn check_mailbox(mailbox: &str) -> Result<(), PathError> {
    let at = mailbox.rfind('@').ok_or(PathError("domain missing"))?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    if !valid_local_part(local) {
        return Err(PathError("bad local part"));
    }
    if !valid_domain(domain) {
        return Err(PathError("bad domain"));
    }
    // RFC 5321 §4.5.3.1.2: 255 octets of domain, a DNS limit. The 64 octets of local part
    // (§4.5.3.1.1) are not enforced: §4.5.3.1 asks for no limits where possible, Postfix
    // relays longer ones, and VERP and SRS senders produce them; the 2048-octet command
    // line bounds them.
    if domain.len() > 255 {
        return Err(PathError("address too long"));
    }
    Ok(())
}

fn valid_local_part(local: &str) -> bool {
    if let Some(q) = local.strip_prefix('"') {
        let Some(body) = q.strip_suffix('"') else {
            return false;
        };
        let mut escaped = false;
        for c in body.chars() {
            if c.is_control() {
                return false;
            }
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return false,
                _ => {}
            }
        }
        return !escaped;
    }
    // Dot-string: atoms of atext (RFC 5322 §3.2.3), UTF-8 allowed (RFC 6531 §3.3).
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// A domain name or an address literal `[192.0.2.1]` / `[IPv6:2001:db8::1]`.
pub fn valid_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                literal[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || c == '-'
                        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(text: &str, path: &str, rest: &str) {
        let (p, r) = split_path(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        assert_eq!((p.as_str(), r), (path, rest), "{text:?}");
        if !p.is_empty() {
            check_mailbox(&p).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        }
    }

    fn bad(text: &str) {
        let result = split_path(text).and_then(|(p, _)| check_mailbox(&p));
        assert!(result.is_err(), "{text:?} should be refused");
    }

    #[test]
    fn paths() {
        good("<>", "", "");
        good("<a@example.org>", "a@example.org", "");
        good(
            "<a@example.org> SIZE=10 BODY=8BITMIME",
            "a@example.org",
            "SIZE=10 BODY=8BITMIME",
        );
        good(" <a@example.org>", "a@example.org", "");
        good(
            "<@relay.example,@b.example:a@example.org>",
            "a@example.org",
            "",
        );
        good("<\"a b>c\"@example.org>", "\"a b>c\"@example.org", "");
        good("<a@[192.0.2.1]>", "a@[192.0.2.1]", "");
        good("<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", "");
        good("<jöran@bücher.example>", "jöran@bücher.example", "");
        good("<a+tag@example.org.>", "a+tag@example.org.", "");
        let verp = format!("<{}@example.org>", "v".repeat(100));
        good(&verp, &verp[1..verp.len() - 1], "");
    }

    #[test]
    fn bad_paths() {
        bad("a@example.org");
        bad("<a@example.org");
        bad("<a@example.org>junk");
        bad("<a@>");
        bad("<@example.org>");
        bad("<a>");
        bad("<a b@example.org>");
        bad("<a..b@example.org>");
        bad("<a@exa mple.org>");
        bad("<a@-x.org>");
        bad("<a@[300.1.1.1]>");
        bad("<@x:a@b>junk");
        bad("<\"unterminated@example.org>");
        bad(&format!("<a@{}.org>", "x.".repeat(130)));
    }
}
