//! Local TLS security levels: the operator's minimums, named as Postfix names them
//! (`smtp_tls_security_level`, `smtp_tls_policy_maps`), on top of what destinations publish.
//!
//! Three sources set a minimum for a message's delivery, and the strictest wins:
//! - the destination table (`delivery.tls_policy_file`, like `smtp_tls_policy_maps`):
//!   `example.net encrypt`, `.example.net verify` for its subdomains;
//! - the sender table (`delivery.sender_tls_policy_file`, the "forceenc" recipe):
//!   `alice@example.org encrypt`, `@legal.example.org verify`;
//! - the listener the message came in on (`[[listener]] min_level`), stored with the message.
//!
//! A level is a floor, never a ceiling: it never weakens what the destination publishes (DANE,
//! an enforced MTA-STS policy). `dane`, `mta-sts` and `may` are therefore all the automatic
//! behaviour (DANE if usable, else MTA-STS if published, else opportunistic TLS); `none` only
//! turns STARTTLS off for a destination that publishes nothing.

mod table;

pub use table::{DestinationTable, ReloadingTable, SenderTable, Table, TableError};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The destination and sender tables of `[delivery]`, each reread when its file changes.
#[derive(Default)]
pub struct TlsPolicies {
    destinations: Option<ReloadingTable<DestinationTable>>,
    senders: Option<ReloadingTable<SenderTable>>,
}

/// The local minimum for one message to one domain, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// The strictest of the three sources.
    pub level: TlsLevel,
    /// The strictest of the sender's and the listener's levels alone: what a
    /// `TLS-Required: No` header may not undercut (RFC 8689 §4.1 leaves the choice to us; the
    /// operator's per-sender promise wins).
    pub sender_side: Option<TlsLevel>,
}

impl TlsPolicies {
    /// Reads the tables (`[delivery] tls_policy_file` and `sender_tls_policy_file`); an
    /// error stops start-up.
    pub fn open(
        destinations: Option<&std::path::Path>,
        senders: Option<&std::path::Path>,
    ) -> Result<TlsPolicies, TableError> {
        Ok(TlsPolicies {
            destinations: destinations.map(ReloadingTable::open).transpose()?,
            senders: senders.map(ReloadingTable::open).transpose()?,
        })
    }

    /// The floor for a message from `sender`, accepted on a listener with `listener_level`,
    /// to `domain`; `None` when no source sets one.
    pub fn floor(
        &self,
        sender: &str,
        listener_level: Option<TlsLevel>,
        domain: &str,
    ) -> Option<Floor> {
        let sender_level = self
            .senders
            .as_ref()
            .and_then(|t| t.current().lookup(sender));
        let destination = self
            .destinations
            .as_ref()
            .and_then(|t| t.current().lookup(domain));
        let sender_side = TlsLevel::strictest([sender_level, listener_level]);
        let level = TlsLevel::strictest([destination, sender_side])?;
        Some(Floor { level, sender_side })
    }

    /// Rereads the tables whose files changed; called periodically.
    pub fn reload_if_changed(&self) {
        if let Some(t) = &self.destinations {
            t.reload_if_changed();
        }
        if let Some(t) = &self.senders {
            t.reload_if_changed();
        }
    }

    /// Rereads every table (SIGHUP).
    pub fn reload(&self) {
        if let Some(t) = &self.destinations {
            t.reload();
        }
        if let Some(t) = &self.senders {
            t.reload();
        }
    }
}

/// A TLS security level (Postfix's names, plus `mta-sts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsLevel {
    /// No TLS (only where nothing is published).
    None,
    /// Opportunistic TLS; the automatic behaviour.
    May,
    /// DANE when usable, else as `may` (the automatic behaviour).
    Dane,
    /// Enforce MTA-STS when published, else as `may` (the automatic behaviour).
    MtaSts,
    /// TLS mandatory, the server not authenticated.
    Encrypt,
    /// TLS mandatory, the certificate PKIX-valid for the MX host name (or DANE-authenticated).
    Verify,
    /// TLS mandatory, the certificate PKIX-valid for the next-hop domain or a subdomain of it,
    /// never for a name only DNS vouches for (or DANE-authenticated).
    Secure,
    /// DANE mandatory: hosts without usable TLSA records are not used.
    DaneOnly,
}

impl TlsLevel {
    pub const ALL: [TlsLevel; 8] = [
        TlsLevel::None,
        TlsLevel::May,
        TlsLevel::Dane,
        TlsLevel::MtaSts,
        TlsLevel::Encrypt,
        TlsLevel::Verify,
        TlsLevel::Secure,
        TlsLevel::DaneOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::May => "may",
            TlsLevel::Dane => "dane",
            TlsLevel::MtaSts => "mta-sts",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Verify => "verify",
            TlsLevel::Secure => "secure",
            TlsLevel::DaneOnly => "dane-only",
        }
    }

    /// How much the level demands, for "the strictest wins": the automatic levels tie.
    fn rank(self) -> u8 {
        match self {
            TlsLevel::None => 0,
            TlsLevel::May | TlsLevel::Dane | TlsLevel::MtaSts => 1,
            TlsLevel::Encrypt => 2,
            TlsLevel::Verify => 3,
            TlsLevel::Secure => 4,
            TlsLevel::DaneOnly => 5,
        }
    }

    /// The level makes TLS mandatory (`encrypt` and above).
    pub fn requires_encryption(self) -> bool {
        self.rank() >= TlsLevel::Encrypt.rank()
    }

    /// The level demands more than the automatic behaviour (or, for `none`, less).
    pub fn is_automatic(self) -> bool {
        self.rank() == 1
    }

    /// The stricter of two levels; on a tie, `self`.
    pub fn stricter(self, other: TlsLevel) -> TlsLevel {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// The strictest of several minimums; `None` when none is set.
    pub fn strictest(levels: impl IntoIterator<Item = Option<TlsLevel>>) -> Option<TlsLevel> {
        levels.into_iter().flatten().reduce(|a, b| a.stricter(b))
    }
}

impl fmt::Display for TlsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TlsLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<TlsLevel, String> {
        TlsLevel::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = TlsLevel::ALL.iter().map(|l| l.as_str()).collect();
                format!("unknown TLS level {s:?} (one of {})", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for level in TlsLevel::ALL {
            assert_eq!(level.as_str().parse::<TlsLevel>(), Ok(level));
            let toml = format!("l = {:?}", level.as_str());
            #[derive(Deserialize)]
            struct T {
                l: TlsLevel,
            }
            let t: T = toml::from_str(&toml).unwrap();
            assert_eq!(t.l, level);
        }
        assert!("fortress"
            .parse::<TlsLevel>()
            .unwrap_err()
            .contains("dane-only"));
    }

    #[test]
    fn the_strictest_wins() {
        use TlsLevel::*;
        assert_eq!(
            TlsLevel::strictest([Some(May), Some(Encrypt), Option::None]),
            Some(Encrypt)
        );
        assert_eq!(
            TlsLevel::strictest([Some(Verify), Some(Encrypt)]),
            Some(Verify)
        );
        assert_eq!(
            TlsLevel::strictest([Some(Secure), Some(Verify)]),
            Some(Secure)
        );
        assert_eq!(
            TlsLevel::strictest([Some(Encrypt), Some(DaneOnly)]),
            Some(DaneOnly)
        );
        assert_eq!(TlsLevel::strictest([Some(None), Some(May)]), Some(May));
        assert_eq!(
            TlsLevel::strictest([Option::None, Option::None]),
            Option::None
        );
        // The automatic levels tie: the first one set is kept.
        assert_eq!(Dane.stricter(MtaSts), Dane);
        assert!(May.is_automatic() && Dane.is_automatic() && MtaSts.is_automatic());
        assert!(!None.is_automatic() && !Encrypt.is_automatic());
    }
}
