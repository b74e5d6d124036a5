//! Relay access: who may hand us mail for other domains. mxguard delivers to the whole
//! Internet, so anyone it accepts mail from is relaying; an open relay is the one thing it must
//! never be. Allowed: clients in `access.mynetworks` (Postfix's `permit_mynetworks`) and clients
//! that authenticated (RFC 4954, Postfix's `permit_sasl_authenticated`). Everyone else gets
//! `554 5.7.1 <addr>: Relay access denied` at RCPT, in Postfix's words.

use crate::reply::{EnhancedCode, Reply};
use ipnet::IpNet;
use std::net::IpAddr;

/// True when `ip` lies in one of `networks`. An IPv4 client seen on a dual-stack socket
/// arrives as `::ffff:a.b.c.d`; it is matched as the IPv4 address it is (and also as given, so
/// a network written in mapped form still matches).
pub fn in_networks(ip: IpAddr, networks: &[IpNet]) -> bool {
    let canonical = ip.to_canonical();
    networks
        .iter()
        .any(|net| net.contains(&canonical) || net.contains(&ip))
}

/// The relay decision for one recipient.
pub fn check_relay(
    ip: IpAddr,
    networks: &[IpNet],
    authenticated: bool,
    recipient: &str,
) -> Result<(), Reply> {
    if authenticated || in_networks(ip, networks) {
        Ok(())
    } else {
        Err(Reply::new(
            554,
            EnhancedCode::new(5, 7, 1),
            format!("<{recipient}>: Relay access denied"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_v4_v6_and_mapped() {
        let n = nets(&["192.0.2.0/24", "2001:db8::/32"]);
        assert!(in_networks(ip("192.0.2.7"), &n));
        assert!(in_networks(ip("::ffff:192.0.2.7"), &n));
        assert!(in_networks(ip("2001:db8::25"), &n));
        assert!(!in_networks(ip("198.51.100.1"), &n));
        assert!(!in_networks(ip("::ffff:198.51.100.1"), &n));
        assert!(!in_networks(ip("2001:db9::1"), &n));
        assert!(in_networks(
            ip("::ffff:10.1.2.3"),
            &nets(&["::ffff:10.0.0.0/104"])
        ));
    }

    #[test]
    fn relay_decision() {
        let n = nets(&["127.0.0.0/8"]);
        assert!(check_relay(ip("127.0.0.1"), &n, false, "a@b").is_ok());
        assert!(check_relay(ip("192.0.2.1"), &n, true, "a@b").is_ok());
        let r = check_relay(ip("192.0.2.1"), &n, false, "a@b.example").unwrap_err();
        assert_eq!(
            r.to_string(),
            "554 5.7.1 <a@b.example>: Relay access denied"
        );
        assert!(check_relay(ip("192.0.2.1"), &[], false, "a@b").is_err());
    }
}
