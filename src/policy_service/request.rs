//! One socketmap request (socketmap_table(5)): `NAME <space> KEY`, where NAME is the map name
//! of `socketmap:inet:HOST:PORT:NAME` and KEY what Postfix looks up.
//!
//! For `smtp_tls_policy_maps` the key is the next-hop destination (Postfix
//! `smtp_tls_policy.c`, `tls_policy_lookup`): the recipient domain (`example.com`); then, while
//! nothing is found, its parent domains with a leading dot (`.example.com`, `.com`); or, for a
//! next hop given explicitly in a transport or `relayhost`, the verbatim `[host]:port`, `[host]`
//! or `host:port`, looked up once. Only the first kind names a mail domain with MX hosts,
//! MTA-STS and DANE of its own. The others are answered `NOTFOUND`:
//! - a parent-domain key must not get the domain's own policy: `.example.com` is asked for
//!   `mail.example.com` after `mail.example.com` itself found nothing, and MTA-STS and DANE
//!   are published per domain, never for subdomains;
//! - an explicit next hop is the operator's choice of host, not a domain's MX hosts (as
//!   mxguard's own `[[route]]`s, which get no MTA-STS or DANE either);
//! - an address, a single label (`localhost`), or anything DNS cannot carry is no mail domain.

use policy_cache::sts::policy::normalize_name;

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The policy of a mail domain: lower case, IDNA A-labels, no trailing dot.
    Domain(String),
    /// A key that names no mail domain of its own; the text says what it is (for the log).
    NotADomain(&'static str),
}

/// Why a well-framed request is not a socketmap request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("request is not `NAME KEY`")]
    NoName,
}

/// Parses the payload of one request netstring.
pub fn parse(payload: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(payload).map_err(|_| RequestError::NotUtf8)?;
    let (name, key) = text.split_once(' ').ok_or(RequestError::NoName)?;
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        return Err(RequestError::NoName);
    }
    Ok(classify(key))
}

/// What kind of key `key` is (see the module documentation).
pub fn classify(key: &str) -> Request {
    let key = key.strip_suffix('.').unwrap_or(key);
    if key.is_empty() {
        return Request::NotADomain("an empty key");
    }
    if key.starts_with('.') {
        return Request::NotADomain("a parent-domain key");
    }
    if key.starts_with('[') || key.contains(':') {
        return Request::NotADomain("an explicit next hop");
    }
    if key.parse::<std::net::IpAddr>().is_ok() {
        return Request::NotADomain("an address");
    }
    if key.contains('/') {
        return Request::NotADomain("a path");
    }
    match normalize_name(key) {
        Some(domain) if domain.contains('.') => Request::Domain(domain),
        Some(_) => Request::NotADomain("a single label"),
        None => Request::NotADomain("not a domain name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(key: &str, want: &str) {
        assert_eq!(classify(key), Request::Domain(want.into()), "{key:?}");
    }

    fn not_a_domain(key: &str) {
        assert!(
            matches!(classify(key), Request::NotADomain(_)),
            "{key:?} is no mail domain: {:?}",
            classify(key)
        );
    }

    #[test]
    fn domains_are_lower_case_a_labels() {
        domain("example.com", "example.com");
        domain("Example.COM", "example.com");
        domain("example.com.", "example.com");
        domain("mail.sub.example.com", "mail.sub.example.com");
        domain("bücher.example", "xn--bcher-kva.example");
        domain("BÜCHER.example", "xn--bcher-kva.example");
        domain("xn--bcher-kva.example", "xn--bcher-kva.example");
        domain("a-b.example", "a-b.example");
    }

    #[test]
    fn what_postfix_asks_that_is_no_mail_domain() {
        // Parent-domain probes (tls_policy_lookup after a NOTFOUND).
        not_a_domain(".example.com");
        not_a_domain(".com");
        // Explicit next hops from transport(5) or relayhost.
        not_a_domain("[mx.example.com]:25");
        not_a_domain("[mx.example.com]");
        not_a_domain("mx.example.com:587");
        not_a_domain("[192.0.2.1]");
        not_a_domain("[ipv6:2001:db8::1]:25");
        // Addresses, local names, paths, junk.
        not_a_domain("192.0.2.1");
        not_a_domain("2001:db8::1");
        not_a_domain("localhost");
        not_a_domain("/var/run/socket");
        not_a_domain("");
        not_a_domain(".");
        not_a_domain("exa mple.com");
        not_a_domain("under_score.example");
        not_a_domain("-bad.example");
        not_a_domain("a..b");
        not_a_domain(&format!("{}.example", "a".repeat(64)));
        not_a_domain(&format!("{}example", "a.".repeat(130)));
        not_a_domain("example.com\r\n");
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse(b"postfix example.com"),
            Ok(Request::Domain("example.com".into()))
        );
        // The map name is not checked: postfix-mta-sts-resolver answers any name too.
        assert_eq!(
            parse(b"other Example.com"),
            Ok(Request::Domain("example.com".into()))
        );
        assert!(matches!(
            parse(b"postfix .example.com"),
            Ok(Request::NotADomain(_))
        ));
        assert_eq!(parse(b"postfix"), Err(RequestError::NoName));
        assert_eq!(parse(b" example.com"), Err(RequestError::NoName));
        assert_eq!(parse(b"post\x01fix example.com"), Err(RequestError::NoName));
        assert_eq!(parse(b"postfix \xff\xfe"), Err(RequestError::NotUtf8));
        assert_eq!(parse(b""), Err(RequestError::NoName));
    }
}
