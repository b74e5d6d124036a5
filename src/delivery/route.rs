//! Static routes: which configured next hop, if any, a recipient domain goes to (like a
//! Postfix transport map lookup).

use crate::config::RouteConfig;
use crate::next_hop::NextHop;

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
}
