//! Static next hops, written as Postfix writes them in a transport map: `[host]:port` means "this
//! host, no MX lookup"; `host:port` or `host` means "the MX hosts of host".

use crate::config::RouteConfig;

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

/// The static next hop for `domain`: a route naming the domain (case-insensitive) wins over
/// a `*` route; `None` means "deliver to the domain's MX hosts". Routes are validated when the
/// configuration loads; one that does not parse here is ignored.
pub fn route_for(routes: &[RouteConfig], domain: &str) -> Option<NextHop> {
    let domain = domain.trim_end_matches('.');
    let exact = routes
        .iter()
        .find(|r| r.domain.trim_end_matches('.').eq_ignore_ascii_case(domain));
    let route = exact.or_else(|| routes.iter().find(|r| r.domain == "*"))?;
    NextHop::parse(&route.next_hop).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str, next_hop: &str) -> RouteConfig {
        RouteConfig {
            domain: domain.into(),
            next_hop: next_hop.into(),
        }
    }

    #[test]
    fn route_selection() {
        let routes = vec![
            route("*", "[192.0.2.1]"),
            route("Example.NET", "[192.0.2.2]:2525"),
            route("other.test", "relay.other.test"),
        ];
        assert_eq!(route_for(&routes, "example.net").unwrap().host, "192.0.2.2");
        assert_eq!(route_for(&routes, "EXAMPLE.net").unwrap().port, Some(2525));
        let other = route_for(&routes, "other.test").unwrap();
        assert!(!other.no_mx);
        assert_eq!(
            route_for(&routes, "elsewhere.test").unwrap().host,
            "192.0.2.1"
        );
        assert_eq!(route_for(&routes[1..], "elsewhere.test"), None);
        assert_eq!(route_for(&[], "example.net"), None);
    }

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
