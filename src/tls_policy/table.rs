//! The destination and sender tables: one `key level` pair per line, Postfix's table style.
//!
//! ```text
//! # destination table (delivery.tls_policy_file), like smtp_tls_policy_maps
//! example.net        encrypt     # exactly example.net
//! .example.net       verify      # every subdomain of example.net
//!
//! # sender table (delivery.sender_tls_policy_file), the "forceenc" recipe
//! alice@example.org  encrypt     # one envelope sender
//! @legal.example.org verify      # every sender of that domain
//! ```
//!
//! Keys are compared without regard to case; `#` starts a comment; a bad line stops start-up
//! (or, on reload, keeps the previous table) with its line number. The most specific key wins:
//! an exact domain before `.parent` entries (nearest parent first); an address before its
//! `@domain`.

use super::TlsLevel;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Why a table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}, line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Levels by recipient domain.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DestinationTable {
    entries: HashMap<String, TlsLevel>,
}

impl DestinationTable {
    /// Some entry asks for `level`.
    pub fn uses(&self, level: TlsLevel) -> bool {
        self.entries.values().any(|l| *l == level)
    }

    /// The level for `domain`: its own entry, else the nearest `.parent` entry.
    pub fn lookup(&self, domain: &str) -> Option<TlsLevel> {
        let domain = a_labels(domain);
        if let Some(level) = self.entries.get(&domain) {
            return Some(*level);
        }
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(level) = self.entries.get(&format!(".{parent}")) {
                return Some(*level);
            }
            rest = parent;
        }
        None
    }
}

/// Levels by envelope sender.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SenderTable {
    entries: HashMap<String, TlsLevel>,
}

impl SenderTable {
    /// Some entry asks for `level`.
    pub fn uses(&self, level: TlsLevel) -> bool {
        self.entries.values().any(|l| *l == level)
    }

    /// The level for `sender`: the address's own entry, else its `@domain` entry. The null
    /// sender (bounces) has none.
    pub fn lookup(&self, sender: &str) -> Option<TlsLevel> {
        if sender.is_empty() {
            return None;
        }
        let sender = address_key(sender);
        if let Some(level) = self.entries.get(&sender) {
            return Some(*level);
        }
        let (_, domain) = sender.rsplit_once('@')?;
        self.entries.get(&format!("@{domain}")).copied()
    }
}

/// A table parsed from text; the two kinds differ only in which keys they accept.
pub trait Table: Sized + Default + Send + Sync + 'static {
    /// Checks a (normalized) key; the reason when it is not one of this table's.
    fn check_key(key: &str) -> Result<(), String>;
    /// The key as lookups see it: lower case, domains as A-labels, no trailing dot.
    fn normalize_key(key: &str) -> String;
    fn from_entries(entries: HashMap<String, TlsLevel>) -> Self;

    /// Parses the text of a table file; an error carries the 1-based line and the reason.
    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or_default();
            let mut fields = content.split_whitespace();
            let Some(key) = fields.next() else {
                continue;
            };
            let line = index + 1;
            let level = fields
                .next()
                .ok_or_else(|| (line, format!("{key}: no level")))?
                .parse::<TlsLevel>()
                .map_err(|e| (line, e))?;
            if let Some(extra) = fields.next() {
                return Err((line, format!("unexpected {extra:?} after the level")));
            }
            let key = Self::normalize_key(key);
            Self::check_key(&key).map_err(|e| (line, e))?;
            if entries.insert(key.clone(), level).is_some() {
                return Err((line, format!("{key} appears twice")));
            }
        }
        Ok(Self::from_entries(entries))
    }

    fn load(path: &Path) -> Result<Self, TableError> {
        let text = std::fs::read_to_string(path).map_err(|source| TableError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| TableError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }
}

/// A domain as tables compare it: IDNA A-labels (RFC 5890), lower case, no trailing dot; as
/// given (lower-cased) when it is no valid IDN, which then matches nothing but itself.
fn a_labels(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    idna::domain_to_ascii(domain)
        .map(|d| d.to_ascii_lowercase())
        .unwrap_or_else(|_| domain.to_lowercase())
}

/// An address (or `@domain`) as the sender table compares it: the local part in ASCII lower
/// case, the domain as A-labels.
fn address_key(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{}@{}", local.to_ascii_lowercase(), a_labels(domain)),
        None => address.to_ascii_lowercase(),
    }
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Table for DestinationTable {
    fn check_key(key: &str) -> Result<(), String> {
        if is_domain(key.strip_prefix('.').unwrap_or(key)) {
            Ok(())
        } else {
            Err(format!("{key:?} is not a domain or .domain"))
        }
    }

    fn from_entries(entries: HashMap<String, TlsLevel>) -> Self {
        DestinationTable { entries }
    }

    fn normalize_key(key: &str) -> String {
        match key.strip_prefix('.') {
            Some(parent) => format!(".{}", a_labels(parent)),
            None => a_labels(key),
        }
    }
}

impl Table for SenderTable {
    fn check_key(key: &str) -> Result<(), String> {
        match key.rsplit_once('@') {
            Some((_, domain)) if is_domain(domain) => Ok(()),
            _ => Err(format!("{key:?} is not an address or @domain")),
        }
    }

    fn from_entries(entries: HashMap<String, TlsLevel>) -> Self {
        SenderTable { entries }
    }

    fn normalize_key(key: &str) -> String {
        address_key(key)
    }
}

/// A table file, read again when it changes or on demand (SIGHUP), so that an operator edits
/// it without a restart. A file that no longer parses leaves the previous table in force, and
/// says so in the log.
///
/// A change is taken at once when the file was replaced whole (a new inode: written aside and
/// renamed into place, as postmap and careful tools do). A file changed in place is taken only
/// once it has stayed the same for a whole check interval: a generator still writing it must
/// not leave the forced senders without their level half-way.
pub struct ReloadingTable<T> {
    path: PathBuf,
    current: RwLock<(Option<Stamp>, Arc<T>)>,
    /// An in-place change seen at the last check, waiting to be seen unchanged once more.
    pending: Mutex<Option<Stamp>>,
}

/// What tells one version of the file from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    modified: Option<SystemTime>,
}

impl<T: Table> ReloadingTable<T> {
    /// Reads the table; an error stops start-up.
    pub fn open(path: &Path) -> Result<ReloadingTable<T>, TableError> {
        let stamp = stamp(path);
        let table = T::load(path)?;
        Ok(ReloadingTable {
            path: path.to_path_buf(),
            current: RwLock::new((stamp, Arc::new(table))),
            pending: Mutex::new(None),
        })
    }

    /// The table in force.
    pub fn current(&self) -> Arc<T> {
        match self.current.read() {
            Ok(guard) => guard.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Called every check interval: reads the file again when it was replaced whole, or
    /// changed in place and then left alone for one interval; `true` when a new table is in
    /// force.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        let known = match self.current.read() {
            Ok(guard) => guard.0,
            Err(poisoned) => poisoned.into_inner().0,
        };
        let mut pending = match self.pending.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if now == known {
            *pending = None;
            return false;
        }
        let replaced = match (now, known) {
            (Some(a), Some(b)) => a.inode != b.inode,
            _ => true,
        };
        if replaced || *pending == now {
            *pending = None;
            drop(pending);
            return self.reload_with(now);
        }
        *pending = now;
        false
    }

    /// Reads the file again, whatever it looks like (SIGHUP).
    pub fn reload(&self) -> bool {
        self.reload_with(stamp(&self.path))
    }

    fn reload_with(&self, stamp: Option<Stamp>) -> bool {
        let loaded = T::load(&self.path);
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Remember the version even on failure, so a broken file is reported once, not on
        // every check; the next edit is tried again.
        guard.0 = stamp;
        match loaded {
            Ok(table) => {
                guard.1 = Arc::new(table);
                tracing::info!("TLS policy table {} reloaded", self.path.display());
                true
            }
            Err(e) => {
                tracing::error!("TLS policy table not reloaded, the previous one stays: {e}");
                false
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: meta.ino(),
        modified: meta.modified().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TlsLevel::{DaneOnly, Encrypt, Secure, Verify};

    #[test]
    fn destinations_match_exactly_then_by_nearest_parent() {
        let t = DestinationTable::parse(
            "# comment\nexample.net encrypt\n.example.net verify # subdomains\n\
             .deep.example.net  dane-only\nPartner.TEST. secure\n",
        )
        .unwrap();
        assert_eq!(t.lookup("example.net"), Some(Encrypt));
        assert_eq!(t.lookup("EXAMPLE.NET."), Some(Encrypt));
        assert_eq!(t.lookup("mail.example.net"), Some(Verify));
        assert_eq!(t.lookup("a.deep.example.net"), Some(DaneOnly));
        assert_eq!(t.lookup("deep.example.net"), Some(Verify));
        assert_eq!(t.lookup("partner.test"), Some(Secure));
        assert_eq!(t.lookup("sub.partner.test"), None, "no .partner.test entry");
        assert_eq!(t.lookup("example.org"), None);
        assert_eq!(t.lookup("notexample.net"), None);
    }

    #[test]
    fn senders_match_the_address_then_its_domain() {
        let t =
            SenderTable::parse("Alice@Example.org encrypt\n@legal.example.org verify\n").unwrap();
        assert_eq!(t.lookup("alice@example.org"), Some(Encrypt));
        assert_eq!(t.lookup("bob@example.org"), None);
        assert_eq!(t.lookup("carol@LEGAL.example.org"), Some(Verify));
        assert_eq!(t.lookup("carol@sub.legal.example.org"), None);
        assert_eq!(t.lookup(""), None, "bounces have no sender level");
    }

    #[test]
    fn bad_lines_are_named() {
        let err = |text: &str| DestinationTable::parse(text).unwrap_err();
        assert_eq!(err("ok.test may\nbad.test\n").0, 2);
        assert!(err("a.test fortress").1.contains("unknown TLS level"));
        assert!(err("a.test may extra").1.contains("unexpected"));
        assert!(err("a..test may").1.contains("not a domain"));
        assert!(err("a.test may\nA.test encrypt").1.contains("twice"));
        assert!(SenderTable::parse("example.org encrypt")
            .unwrap_err()
            .1
            .contains("not an address"));
        assert!(DestinationTable::parse("\n# only comments\n\n").is_ok());
    }

    #[test]
    fn reloads_on_change_and_keeps_the_old_table_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("senders");
        std::fs::write(&path, "alice@example.org encrypt\n").unwrap();
        let table = ReloadingTable::<SenderTable>::open(&path).unwrap();
        assert_eq!(table.current().lookup("alice@example.org"), Some(Encrypt));
        assert!(!table.reload_if_changed(), "unchanged");

        std::fs::write(&path, "alice@example.org verify\n").unwrap();
        assert!(table.reload(), "forced reload (SIGHUP)");
        assert_eq!(table.current().lookup("alice@example.org"), Some(Verify));

        std::fs::write(&path, "alice@example.org fortress\n").unwrap();
        assert!(!table.reload());
        assert_eq!(table.current().lookup("alice@example.org"), Some(Verify));
    }
}
