//! Queue ids: short, unique, sortable by arrival, safe as file names (upper-case hex, as
//! Postfix's short ids look).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    /// Microseconds since the epoch, then a per-process counter: unique within a process and,
    /// because a restart takes longer than a microsecond, across restarts too. The spool still
    /// creates files with `create_new`, so a clash is an error, never an overwrite.
    pub fn generate() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        QueueId(format!("{micros:013X}{n:04X}"))
    }

    /// Accepts only what `generate` makes, so a stray file in the spool is never mistaken for mail.
    pub fn parse(text: &str) -> Option<QueueId> {
        (text.len() == 17
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
        .then(|| QueueId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_and_parseable() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert_ne!(a, b);
        assert_eq!(QueueId::parse(a.as_str()), Some(a));
        assert_eq!(QueueId::parse("../etc/passwd"), None);
        assert_eq!(QueueId::parse("0123456789abcdef0"), None);
    }
}
