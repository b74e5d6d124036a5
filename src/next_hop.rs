//! Static next hops, written as Postfix writes them in a transport map: `[host]:port` means "this
//! host, no MX lookup"; `host:port` or `host` means "the MX hosts of host".

/// Where a static route sends mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// A host name or IP address literal (without brackets).
    pub host: String,
    /// `None`: the configured SMTP port.
    pub port: Option<u16>,
    /// True for `[host]`: deliver to the host itself, skipping MX lookup.
    pub no_mx: bool,
}

impl NextHop {
    pub fn parse(text: &str) -> Result<NextHop, String> {
        let text = text.trim();
        let bad = || format!("bad next hop {text:?}: expected [host]:port, host:port or host");
        let (host, no_mx, rest) = if let Some(inner) = text.strip_prefix('[') {
            let close = inner.find(']').ok_or_else(bad)?;
            (&inner[..close], true, &inner[close + 1..])
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, false, &text[h.len()..][..p.len() + 1]),
                _ => (text, false, ""),
            }
        };
        let port = match rest {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|&p| p != 0)
                    .ok_or_else(bad)?,
            ),
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(NextHop {
            host: host.to_string(),
            port,
            no_mx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let h = NextHop::parse("[192.0.2.25]:2525").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.no_mx),
            ("192.0.2.25", Some(2525), true)
        );
        let h = NextHop::parse("[::1]").unwrap();
        assert_eq!((h.host.as_str(), h.port, h.no_mx), ("::1", None, true));
        let h = NextHop::parse("mail.example.net:26").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.no_mx),
            ("mail.example.net", Some(26), false)
        );
        let h = NextHop::parse("example.net").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.no_mx),
            ("example.net", None, false)
        );
        for bad in ["", "[x", "[x]:", "[x]:0", "[x]:99999", "a b", "[]:25"] {
            assert!(NextHop::parse(bad).is_err(), "{bad}");
        }
    }
}
